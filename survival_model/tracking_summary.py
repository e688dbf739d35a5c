"""What the pipeline records in MLflow: flattened params and ingestion metrics (pure functions)."""

from __future__ import annotations

from typing import Any

from survival_model.config import Params


def run_params(params: Params) -> dict[str, Any]:
    """Run parameters worth recording: every section but the synthetic generator's."""
    return params.model_dump(mode="json", exclude={"synthetic"})


def ingestion_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """Cohort counts per site and quarantine counts by reason, as MLflow metrics."""
    metrics: dict[str, float] = {
        "cohort.patients": summary["patients"],
        "cohort.events": summary["events"],
        "quarantine.patients": summary["quarantined_patients"],
    }
    for site, s in summary["sites"].items():
        metrics[f"cohort.{site}.patients"] = s["patients"]
        metrics[f"cohort.{site}.events"] = s["events"]
        metrics[f"quarantine.{site}.patients"] = s["quarantined"]
    for reason, n in summary["quarantine_by_reason"].items():
        metrics[f"quarantine.reason.{reason}"] = n
    return metrics
