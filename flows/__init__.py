"""Prefect flows composing the tasks: ingestion today, later preprocessing, features, training ..."""
