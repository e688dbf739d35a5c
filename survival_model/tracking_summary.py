"""What the pipeline records in MLflow: flattened params and ingestion metrics (pure functions)."""

from __future__ import annotations

import re
from typing import Any

import pandas as pd

from survival_model.config import Params
from survival_model.metrics import format_ci


def run_params(params: Params) -> dict[str, Any]:
    """Run parameters worth recording: every section but the synthetic generator's."""
    return params.model_dump(mode="json", exclude={"synthetic"})


def ingestion_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """Cohort counts per site and quarantine counts by reason, as MLflow metrics.

    A count that is None (``events`` of a site whose patients have no outcome) is not logged.
    """
    values: dict[str, Any] = {
        "cohort.patients": summary["patients"],
        "cohort.events": summary["events"],
        "cohort.without_outcome": summary.get("without_outcome"),
        "quarantine.patients": summary["quarantined_patients"],
    }
    for site, s in summary["sites"].items():
        values[f"cohort.{site}.patients"] = s["patients"]
        values[f"cohort.{site}.events"] = s["events"]
        values[f"cohort.{site}.without_outcome"] = s.get("without_outcome")
        values[f"quarantine.{site}.patients"] = s["quarantined"]
    for reason, n in summary["quarantine_by_reason"].items():
        values[f"quarantine.reason.{reason}"] = n
    return {name: float(value) for name, value in values.items() if value is not None}


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


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and value == value and abs(value) != float("inf")


def training_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The ensemble's test C-index (with its interval), the oracle's, the folds' validation summary."""
    out: dict[str, float] = {}
    test = metrics["test"]["cindex"]
    out.update({"test.cindex": test["value"], "test.cindex_low": test["low"], "test.cindex_high": test["high"],
                "test.patients": metrics["test"]["patients"], "test.deaths": metrics["test"]["deaths"]})
    if metrics.get("oracle"):
        oracle = metrics["oracle"]["cindex"]
        out.update({"oracle.cindex": oracle["value"], "oracle.cindex_low": oracle["low"],
                    "oracle.cindex_high": oracle["high"]})
    out["cv.validation_cindex_mean"] = metrics["cv"]["validation_cindex_mean"]
    out["cv.validation_cindex_sd"] = metrics["cv"]["validation_cindex_sd"]
    for site, values in metrics["per_site"].items():
        out[f"test.{site}.cindex"] = values["cindex"]
    return {k: float(v) for k, v in out.items() if _finite(v)}


def fold_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """A fold's final numbers (its best epoch) as MLflow metrics."""
    keys = ("validation_cindex", "stop_cindex", "stop_loss", "train_loss", "best_epoch", "epochs", "tabular_penalty",
            "seconds", "data_wait_share", "patients_per_second", "patients_fit", "patients_stop",
            "patients_validation")
    return {f"final.{k}": float(summary[k]) for k in keys if _finite(summary.get(k))}


def _ci(estimate: dict[str, Any]) -> str:
    return format_ci(estimate.get("value"), estimate.get("low"), estimate.get("high"))


def _gain(gain: dict[str, Any] | None) -> str:
    """A fold's best image epoch against epoch 0 on its stopping patients (additive fusion), or a dash."""
    if not gain:
        return "-"
    verdict = "kept" if gain["kept"] else "not kept"
    honest = gain.get("honest_gain", float("nan"))
    return f"epoch {gain['best_epoch']}: cross-fitted {honest:.4f} (SE {gain['standard_error']:.4f}), {verdict}"


def training_markdown(metrics: dict[str, Any], link: str) -> str:
    """The training result at a glance (Prefect UI)."""
    oracle = metrics.get("oracle")
    lines = [
        "# Training",
        "",
        f"**{metrics['variant']} / {metrics['objective']}** network, backbone `{metrics['backbone']}`: ensemble of "
        f"{len(metrics['cv']['per_fold'])} fold models, scored once on the locked test set.",
        "",
        "| | C-index (95% CI) | patients |",
        "| --- | --- | ---: |",
        f"| ensemble, test set | {_ci(metrics['test']['cindex'])} | {metrics['test']['patients']} |",
    ]
    if oracle:
        lines.append(f"| oracle (true risk), same patients | {_ci(oracle['cindex'])} | {oracle['patients']} |")
    lines += [
        f"| folds, validation (mean ± SD) | {metrics['cv']['validation_cindex_mean']:.3f} ± "
        f"{metrics['cv']['validation_cindex_sd']:.3f} | |",
        "",
        "Each fold's model (epoch, tabular penalty) was chosen on its stopping patients, inside its training set; "
        "its validation patients were scored once, by the model kept.",
        "",
        "| fold | validation C-index | stopping C-index (chose the epoch) | epoch kept | best image epoch: gain "
        "over epoch 0 | epochs | seconds |",
        "| --- | ---: | ---: | ---: | --- | ---: | ---: |",
        *[f"| {name} | {f['validation_cindex']:.3f} | {f['stop_cindex']:.3f} | {f['best_epoch']} | "
          f"{_gain(f.get('image_gain'))} | {f['epochs']} | {f['seconds']:.0f} |"
          for name, f in metrics["cv"]["per_fold"].items()],
        "",
        f"MLflow: {link}",
    ]
    return "\n".join(lines) + "\n"


def _safe(model: object) -> str:
    return re.sub(r"[^\w\-. /:]", "_", str(model))


def cv_metrics(cv: dict[str, dict[str, dict[str, float]]]) -> dict[str, float]:
    """``cv.<model>.<score>_mean`` / ``_sd`` over the cross-validation folds (finite values only)."""
    return {f"cv.{_safe(model)}.{metric}_{stat}": float(values[stat]) for model, scores in cv.items()
            for metric, values in scores.items() for stat in ("mean", "sd") if _finite(values[stat])}


def comparison_metrics(comparison: pd.DataFrame) -> dict[str, float]:
    """``compare.<model>.<score>`` for every finite point estimate (model names made MLflow-safe)."""
    out: dict[str, float] = {}
    for model, row in comparison.iterrows():
        name = _safe(model)
        for metric, value in row.items():
            if not str(metric).endswith(("_low", "_high")) and _finite(value):
                out[f"compare.{name}.{metric}"] = float(value)
    return out
