"""Loom components: pure Python/torch building blocks. No Prefect, MLflow or DVC imports."""
