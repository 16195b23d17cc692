"""Evaluation of a trained detector: COCOeval metrics, precision-recall curves, drawn boxes."""
