"""MLflow: runs, their provenance, the registry. Nothing outside imports mlflow (but inference.serving's model)."""
