"""Model training: patient-level splits (``splits``); models and per-fold training follow."""
