"""The comparison of the trained network with clinical baselines and the oracle, on the same splits.

Every model is fitted on the development patients (the network: its folds; the baselines: all
development rows) and scored once on the locked test set with every score of
``survival_model.evaluation.scores`` and its bootstrap interval, plus the paired difference to the GPA.
The survival curves a score needs come from a Breslow baseline on the development patients' risks:
for the network its *out-of-fold* risks (each development patient scored by the fold model that did not
train on it), for a baseline its fitted risks. The cross-validated Harrell's C of each model (fitted on
each fold's training rows, scored on its validation rows) is reported as mean ± SD, and Harrell's C
per site on the test set.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from survival_model.config import EvaluationParams
from survival_model.evaluation.baselines import baselines, fit_baseline
from survival_model.evaluation.compare import ModelRisks, comparison_table
from survival_model.evaluation.metrics import format_ci, harrell_c
from survival_model.evaluation.scores import Outcome
from survival_model.fingerprint import code_version, stable_hash
from survival_model.imageio import atomic_directory, read_json, write_json, write_text
from survival_model.training.splits import Splits


def _rows(table: pd.DataFrame, ids: Sequence[str]) -> pd.DataFrame:
    return table.set_index("case_id", drop=False).loc[list(ids)].reset_index(drop=True)


def _outcome(frame: pd.DataFrame) -> Outcome:
    return Outcome.of(frame["time_days"].to_numpy(dtype=float), frame["event"].astype(int).to_numpy() == 1)


def model_risks(table: pd.DataFrame, splits: Splits, network_dev: pd.Series, network_test: pd.Series,
                clinical: list[str], evaluation: EvaluationParams, oracle: pd.Series | None,
                network_name: str = "network") -> tuple[dict[str, ModelRisks], dict[str, dict[str, float]]]:
    """Risks of every model on the development and test patients, and each model's cross-validated C."""
    dev, test = _rows(table, splits.development), _rows(table, splits.test)
    models = {network_name: ModelRisks(network_dev.reindex(dev["case_id"]).to_numpy(dtype=float),
                                       network_test.reindex(test["case_id"]).to_numpy(dtype=float))}
    cv: dict[str, dict[str, float]] = {}
    for name in evaluation.baselines:
        baseline = baselines(clinical)[name]
        fitted = fit_baseline(baseline, dev, evaluation.seed)
        models[name] = ModelRisks(fitted.risk(dev), fitted.risk(test))
        values = []
        for fold in splits.folds:
            train, validation = _rows(table, fold.train), _rows(table, fold.validation)
            risk = fit_baseline(baseline, train, evaluation.seed).risk(validation)
            values.append(harrell_c(risk, validation["time_days"], validation["event"]))
        cv[name] = {"mean": float(np.nanmean(values)), "sd": float(np.nanstd(values, ddof=1))}
    if oracle is not None and dev["case_id"].isin(oracle.index).all() and test["case_id"].isin(oracle.index).all():
        models["oracle"] = ModelRisks(oracle.reindex(dev["case_id"]).to_numpy(dtype=float),
                                      oracle.reindex(test["case_id"]).to_numpy(dtype=float))
    return models, cv


def compare(table: pd.DataFrame, splits: Splits, models: dict[str, ModelRisks],
            evaluation: EvaluationParams) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The comparison table (model x score with intervals and the difference to the GPA) and Harrell's C
    per site on the test set (model x site)."""
    dev, test = _rows(table, splits.development), _rows(table, splits.test)
    reference = "gpa" if "gpa" in models else None
    comparison = comparison_table(models, _outcome(dev), _outcome(test), tau=evaluation.tau_days, reference=reference,
                                  resamples=evaluation.score_resamples, confidence=evaluation.confidence,
                                  seed=evaluation.seed)
    per_site = pd.DataFrame({
        name: {str(site): harrell_c(risks.test[group.index], group["time_days"], group["event"])
               for site, group in test.groupby("site", sort=True)}
        for name, risks in models.items()}).T
    return comparison, per_site


STAGE = "evaluation"
FILES = ("comparison.csv", "comparison.json", "per_site.csv", "cv.json", "summary.md")


@dataclass(frozen=True)
class EvaluationResult:
    """Where a comparison's files are, and the table itself."""

    folder: Path
    comparison: pd.DataFrame
    per_site: pd.DataFrame
    cv: dict[str, dict[str, float]]

    def files(self) -> list[Path]:
        return [self.folder / name for name in FILES]

    @property
    def summary_markdown(self) -> str:
        return (self.folder / "summary.md").read_text(encoding="utf-8")


def evaluation_key(training_key: str, table_key: str, clinical: Sequence[str], evaluation: EvaluationParams,
                   oracle_digest: str | None) -> str:
    return stable_hash(STAGE, code_version("survival_model.evaluation"), training_key, table_key, list(clinical),
                       evaluation.model_dump(mode="json", exclude={"ground_truth"}), oracle_digest)


def evaluation_folder(work_dir: Path, key: str) -> Path:
    return work_dir / STAGE / key[:16]


def load_evaluation(folder: Path) -> EvaluationResult | None:
    if not all((folder / name).is_file() for name in FILES):
        return None
    return EvaluationResult(folder, pd.read_csv(folder / "comparison.csv", index_col="model"),
                            pd.read_csv(folder / "per_site.csv", index_col=0), read_json(folder / "cv.json"))


def _ci(row: pd.Series, metric: str) -> str:
    return format_ci(row.get(metric), row.get(f"{metric}_low"), row.get(f"{metric}_high"))


def summary_markdown(comparison: pd.DataFrame, cv: dict[str, dict[str, float]], test_patients: int) -> str:
    """The comparison as a Markdown table (Prefect UI, MLflow, the CLI)."""
    lines = [
        "# Models on the locked test set", "",
        f"{test_patients} test patients; 95% bootstrap intervals; difference to the GPA paired on the same "
        "resamples. R2 / MAE / RMSE (days) use uncensored patients only, with the median of each model's "
        "Breslow survival curve.", "",
        "| model | Harrell's C | Uno's C | integrated Brier | AUC 12 m | MAE days (deaths) | ΔC vs GPA | CV C |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, row in comparison.iterrows():
        folds = cv.get(str(name))
        cv_text = f"{folds['mean']:.3f} ± {folds['sd']:.3f}" if folds else "-"
        lines.append(f"| {name} | {_ci(row, 'harrell_c')} | {_ci(row, 'uno_c')} | {_ci(row, 'integrated_brier')} | "
                     f"{_ci(row, 'auc_12m')} | {_ci(row, 'mae_days_uncensored')} | {_ci(row, 'delta_harrell_c')} | "
                     f"{cv_text} |")
    return "\n".join(lines) + "\n"


def run_comparison(table: pd.DataFrame, splits: Splits, network_dev: pd.Series, network_test: pd.Series,
                   network_cv: dict[str, float], clinical: list[str], evaluation: EvaluationParams,
                   oracle: pd.Series | None, work_dir: Path, key: str,
                   network_name: str = "network") -> EvaluationResult:
    """Score every model once and write the comparison into its content-keyed folder (reused if there)."""
    folder = evaluation_folder(work_dir, key)
    existing = load_evaluation(folder)
    if existing is not None:
        return existing
    models, cv = model_risks(table, splits, network_dev, network_test, clinical, evaluation, oracle, network_name)
    cv = {network_name: network_cv, **cv}
    comparison, per_site = compare(table, splits, models, evaluation)
    with atomic_directory(folder) as tmp:
        write_text(comparison.reset_index().to_csv(index=False), tmp / "comparison.csv")
        write_json(json.loads(comparison.reset_index().to_json(orient="records")), tmp / "comparison.json")
        write_text(per_site.to_csv(), tmp / "per_site.csv")
        write_json(cv, tmp / "cv.json")
        write_text(summary_markdown(comparison, cv, len(splits.test)), tmp / "summary.md")
    result = load_evaluation(folder)
    if result is None:  # pragma: no cover - written atomically just above
        raise FileNotFoundError(folder / "comparison.csv")
    return result
