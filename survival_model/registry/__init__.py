"""The packaged model, the MLflow model registry with its aliases and promotion gate, and predictions."""
