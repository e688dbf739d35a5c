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


def imaging_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """Feature-table counts, preprocessing QC statistics and quarantine by stage, as MLflow metrics."""
    metrics: dict[str, float] = {
        "features.patients": summary["patients"],
        "features.columns": summary["columns"],
        "features.missing_values": summary["missing_feature_values"],
        "qc.patients_preprocessed": summary["qc"]["patients_preprocessed"],
    }
    for family, n in summary["feature_columns"].items():
        metrics[f"features.columns.{family.rstrip('_')}"] = n
    for name, stats in summary["qc"]["stats"].items():
        for stat, value in stats.items():
            metrics[f"qc.{name}.{stat}"] = value
    for stage, n in summary["quarantined_by_stage"].items():
        metrics[f"quarantine.stage.{stage}"] = n
    return metrics


def features_markdown(summary: dict[str, Any], table_path: Any) -> str:
    """A short Markdown digest of the feature table (Prefect UI)."""
    families = ", ".join(f"{n} `{prefix}*`" for prefix, n in summary["feature_columns"].items())
    lines = [
        "# Features",
        "",
        f"**{summary['patients']} patients** x {summary['columns']} columns ({families}); "
        f"{summary['missing_feature_values']} missing feature values; pyradiomics {summary['pyradiomics_version']}.",
        "",
        f"Table: `{table_path}`",
        "",
        "| quarantine stage | patients |",
        "| --- | ---: |",
        *[f"| {stage} | {n} |" for stage, n in summary["quarantined_by_stage"].items()],
    ]
    return "\n".join(lines) + "\n"
