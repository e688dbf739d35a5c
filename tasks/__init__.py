"""Thin Prefect task adapters around library functions: cache keys, retries, timeouts, tags.

No science lives here; each task is a few lines around a ``survival_model`` call.
"""
