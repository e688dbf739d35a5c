"""Scoring survival predictions on held-out patients (metrics, confidence intervals, the oracle)."""
