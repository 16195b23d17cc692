"""Loom orchestration: the stage runner, MLflow tracking and the Prefect flow over dvc.yaml."""
