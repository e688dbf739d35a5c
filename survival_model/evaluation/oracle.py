"""The oracle: true risk scores of a simulated cohort, matched to the pipeline's pseudonymous case ids.

A ground-truth table (``evaluation.ground_truth``) names each patient by site and the id its images and
clinical rows normalise to; the pipeline's case id is the keyed pseudonym of that pair, so the oracle is
matched through the same :class:`~survival_model.ingest.privacy.Pseudonymiser`. The oracle's C-index on
the test patients is the best any model can do on them (the noise of the simulated survival times).
"""

from __future__ import annotations

import logging

import pandas as pd

from survival_model.config import GroundTruthParams
from survival_model.errors import ConfigError
from survival_model.ingest.privacy import Pseudonymiser

log = logging.getLogger(__name__)


def oracle_risk(truth: GroundTruthParams | None, pseudonymiser: Pseudonymiser) -> pd.Series | None:
    """True risk by case id (higher = earlier death), or None when no ground truth is declared or found."""
    if truth is None:
        return None
    if not truth.path.is_file():
        log.info("no ground truth at %s: the oracle C-index is not reported", truth.path)
        return None
    frame = pd.read_csv(truth.path, dtype={truth.id_column: str, truth.site_column: str})
    missing = [c for c in (truth.site_column, truth.id_column, truth.risk_column) if c not in frame.columns]
    if missing:
        raise ConfigError(f"evaluation.ground_truth: {truth.path} has no column(s) {missing} "
                          f"(columns: {', '.join(map(str, frame.columns[:12]))}, ...)")
    frame = frame.dropna(subset=[truth.risk_column])
    ids = [pseudonymiser.case_id(str(s), str(i)) for s, i in zip(frame[truth.site_column], frame[truth.id_column],
                                                                  strict=True)]
    return pd.Series(frame[truth.risk_column].astype(float).to_numpy(), index=pd.Index(ids, name="case_id"),
                     name="oracle_risk")
