"""Synthetic data: an analytic MRI head phantom with brain metastases and a synthetic cohort."""
