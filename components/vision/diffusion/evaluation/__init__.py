"""Scoring a diffusion model's samples with Loom's own models (stage "vision.evaluate_diffusion").

frechet.py        the Fréchet distance between two feature sets
compositional.py  GenEval-style scoring of generated shapes images by a trained DETR:
                  object count, each object's shape and colour, the prompt's relation
config.py         the stage's section
stage.py          the stage: samples per guidance scale -> FD, prompt accuracy,
                  compositional accuracy on held-out combinations
"""
