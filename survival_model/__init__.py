"""survival_model: the pure library of the brain-metastasis survival pipeline.

It never imports Prefect and reads no environment variables; ``tasks/`` and ``flows/`` wrap it.
"""

__version__ = "0.1.0"
