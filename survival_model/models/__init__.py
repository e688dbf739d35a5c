"""Survival models: the hybrid CNN + tabular network (``network``); losses and training follow."""
