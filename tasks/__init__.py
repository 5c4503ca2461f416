"""The study's Prefect tasks: thin wrappers over the domain code in forgetting/ that add what orchestration
needs (assets and their lineage, retries, artifacts) and log to MLflow (tasks/tracking.py)."""
