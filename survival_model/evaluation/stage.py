"""The comparison of the trained networks with clinical baselines and the oracle, on the same splits.

Every model is fitted on the development patients (a network: its folds; a baseline: all development
rows) and scored once on the locked test set with every score of ``survival_model.evaluation.scores``
and its bootstrap interval, plus the paired difference to the GPA. The survival curves a score needs
come from a Breslow baseline on the development patients' risks: for a network its *out-of-fold* risks
(each development patient scored by the fold model that did not train on it), for a baseline its
fitted risks; a network that predicts times itself is scored on them. Every score is also computed per
cross-validation fold (each fold's model fitted on its training rows, its Breslow baseline from them,
scored on its validation rows) and reported as mean ± SD; Harrell's C per site on the test set.
The stage's folder holds ``comparison/`` (written here), ``explanation/`` and ``report/``.
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
from survival_model.evaluation.scores import Outcome, score
from survival_model.fingerprint import code_version, stable_hash
from survival_model.imageio import atomic_directory, read_json, write_json, write_parquet, write_text
from survival_model.training.splits import Splits


def rows(table: pd.DataFrame, ids: Sequence[str]) -> pd.DataFrame:
    """The feature-table rows of ``ids``, in that order."""
    return table.set_index("case_id", drop=False).loc[list(ids)].reset_index(drop=True)


@dataclass(frozen=True)
class NetworkRun:
    """What the comparison needs of one trained network (risks by case id)."""

    name: str
    #: Development patients, each scored by the fold model that did not train on it (out of fold).
    dev: pd.Series
    #: The test patients: the fold ensemble.
    test: pd.Series
    #: The ensemble's own predicted days on the test patients (``mse``, ``weibull``), else None.
    test_days: pd.Series | None
    #: Per fold: the fold model's risks on its training rows and on its validation rows.
    folds: tuple[tuple[pd.Series, pd.Series], ...]


def _cv(per_fold: Sequence[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Mean ± SD over the folds of every score (folds where a score is undefined left out)."""
    out = {}
    for metric in per_fold[0] if per_fold else []:
        values = np.array([f[metric] for f in per_fold], dtype=float)
        finite = values[np.isfinite(values)]
        out[metric] = {"mean": float(finite.mean()) if len(finite) else float("nan"),
                       "sd": float(finite.std(ddof=1)) if len(finite) > 1 else float("nan"), "folds": len(finite)}
    return out


def _fold_scores(train: pd.DataFrame, train_risk: np.ndarray, validation: pd.DataFrame, val_risk: np.ndarray,
                 tau: float) -> dict[str, float]:
    scores = score(np.asarray(train_risk, dtype=float), Outcome.of_frame(train), np.asarray(val_risk, dtype=float),
                   Outcome.of_frame(validation), tau=tau)
    return {k: v for k, v in scores.items() if k != "patients_uncensored"}


def model_risks(table: pd.DataFrame, splits: Splits, networks: Sequence[NetworkRun], clinical: list[str],
                evaluation: EvaluationParams, oracle: pd.Series | None,
                ) -> tuple[dict[str, ModelRisks], dict[str, dict[str, dict[str, float]]]]:
    """Risks of every model on the development and test patients, and every score of each model over the
    cross-validation folds (fitted on each fold's training rows, scored on its validation rows)."""
    dev, test = rows(table, splits.development), rows(table, splits.test)
    models: dict[str, ModelRisks] = {}
    cv: dict[str, dict[str, dict[str, float]]] = {}
    for net in networks:
        days = net.test_days.reindex(test["case_id"]).to_numpy(dtype=float) if net.test_days is not None else None
        models[net.name] = ModelRisks(net.dev.reindex(dev["case_id"]).to_numpy(dtype=float),
                                      net.test.reindex(test["case_id"]).to_numpy(dtype=float), days)
        per_fold = []
        for train_risk, val_risk in net.folds:
            train, validation = rows(table, list(train_risk.index)), rows(table, list(val_risk.index))
            per_fold.append(_fold_scores(train, train_risk.to_numpy(), validation, val_risk.to_numpy(),
                                         evaluation.tau_days))
        cv[net.name] = _cv(per_fold)
    for name in evaluation.baselines:
        baseline = baselines(clinical)[name]
        fitted = fit_baseline(baseline, dev, evaluation.seed)
        models[name] = ModelRisks(fitted.risk(dev), fitted.risk(test))
        per_fold = []
        for fold in splits.folds:
            train, validation = rows(table, fold.train), rows(table, fold.validation)
            model = fit_baseline(baseline, train, evaluation.seed)
            per_fold.append(_fold_scores(train, model.risk(train), validation, model.risk(validation),
                                         evaluation.tau_days))
        cv[name] = _cv(per_fold)
    if oracle is not None and dev["case_id"].isin(oracle.index).all() and test["case_id"].isin(oracle.index).all():
        models["oracle"] = ModelRisks(oracle.reindex(dev["case_id"]).to_numpy(dtype=float),
                                      oracle.reindex(test["case_id"]).to_numpy(dtype=float))
    return models, cv


def compare(table: pd.DataFrame, splits: Splits, models: dict[str, ModelRisks],
            evaluation: EvaluationParams) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The comparison table (model x score with intervals and the difference to the GPA) and Harrell's C
    per site on the test set (model x site)."""
    dev, test = rows(table, splits.development), rows(table, splits.test)
    reference = "gpa" if "gpa" in models else None
    comparison = comparison_table(models, Outcome.of_frame(dev), Outcome.of_frame(test), tau=evaluation.tau_days,
                                  reference=reference, resamples=evaluation.score_resamples,
                                  confidence=evaluation.confidence, seed=evaluation.seed)
    per_site = pd.DataFrame({
        name: {str(site): harrell_c(risks.test[group.index], group["time_days"], group["event"])
               for site, group in test.groupby("site", sort=True)}
        for name, risks in models.items()}).T
    return comparison, per_site


STAGE = "evaluation"
#: The comparison's files, in ``<stage folder>/comparison/``.
FILES = ("comparison.csv", "comparison.json", "per_site.csv", "cv.json", "cv.csv", "risks.parquet", "table.md")


@dataclass(frozen=True)
class EvaluationResult:
    """Where an evaluation's files are (comparison, explanation, report), and the comparison itself."""

    folder: Path
    comparison: pd.DataFrame
    per_site: pd.DataFrame
    cv: dict[str, dict[str, dict[str, float]]]

    @property
    def comparison_folder(self) -> Path:
        return self.folder / "comparison"

    def files(self) -> list[Path]:
        return sorted(p for p in self.folder.rglob("*") if p.is_file())

    @property
    def report_html(self) -> Path:
        return self.folder / "report" / "report.html"

    @property
    def summary_markdown(self) -> str:
        summary = self.folder / "report" / "summary.md"
        return (summary if summary.is_file() else self.comparison_folder / "table.md").read_text(encoding="utf-8")

    def risks(self) -> pd.DataFrame:
        return pd.read_parquet(self.comparison_folder / "risks.parquet")


def evaluation_key(training_keys: Sequence[str], table_key: str, clinical: Sequence[str],
                   evaluation: EvaluationParams, oracle_digest: str | None) -> str:
    known = list(evaluation.ground_truth.known_effects) if evaluation.ground_truth is not None else []
    return stable_hash(STAGE, code_version("survival_model.evaluation"), list(training_keys), table_key,
                       list(clinical), evaluation.model_dump(mode="json", exclude={"ground_truth"}), oracle_digest,
                       known)


def evaluation_folder(work_dir: Path, key: str) -> Path:
    return work_dir / STAGE / key[:16]


def load_comparison(folder: Path) -> EvaluationResult | None:
    """The comparison in the stage ``folder`` (explanation and report may still be missing)."""
    part = folder / "comparison"
    if not all((part / name).is_file() for name in FILES):
        return None
    return EvaluationResult(folder, pd.read_csv(part / "comparison.csv", index_col="model"),
                            pd.read_csv(part / "per_site.csv", index_col=0), read_json(part / "cv.json"))


def load_evaluation(folder: Path) -> EvaluationResult | None:
    """The whole stage (comparison and report), or None."""
    result = load_comparison(folder)
    if result is None or not result.report_html.is_file():
        return None
    return result


def _ci(row: pd.Series, metric: str) -> str:
    return format_ci(row.get(metric), row.get(f"{metric}_low"), row.get(f"{metric}_high"))


def table_markdown(comparison: pd.DataFrame, cv: dict[str, dict[str, dict[str, float]]], test_patients: int) -> str:
    """The comparison as a Markdown table (Prefect UI, MLflow, the CLI)."""
    lines = [
        f"{test_patients} test patients; 95% bootstrap intervals; difference to the GPA paired on the same "
        "resamples; CV: mean ± SD over the development folds. R2 / MAE / RMSE (days) use uncensored patients "
        "only, with each model's predicted time (the median of its Breslow survival curve for risk scores).", "",
        "| model | Harrell's C | Uno's C | integrated Brier | AUC 12 m | MAE days (deaths) | ΔC vs GPA | CV C |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, row in comparison.iterrows():
        folds = cv.get(str(name), {}).get("harrell_c")
        cv_text = f"{folds['mean']:.3f} ± {folds['sd']:.3f}" if folds else "-"
        lines.append(f"| {name} | {_ci(row, 'harrell_c')} | {_ci(row, 'uno_c')} | {_ci(row, 'integrated_brier')} | "
                     f"{_ci(row, 'auc_12m')} | {_ci(row, 'mae_days_uncensored')} | {_ci(row, 'delta_harrell_c')} | "
                     f"{cv_text} |")
    return "\n".join(lines) + "\n"


def cv_frame(cv: dict[str, dict[str, dict[str, float]]]) -> pd.DataFrame:
    """Long table: model, metric, mean, sd, folds."""
    return pd.DataFrame([{"model": model, "metric": metric, **values} for model, metrics in cv.items()
                         for metric, values in metrics.items()], columns=["model", "metric", "mean", "sd", "folds"])


def risks_frame(models: dict[str, ModelRisks], splits: Splits) -> pd.DataFrame:
    """Every model's risk per patient (``set``: development | test), and its own predicted days if any."""
    frames = []
    for name, risks in models.items():
        for part, ids, values, days in (("development", splits.development, risks.train, None),
                                        ("test", splits.test, risks.test, risks.test_days)):
            frames.append(pd.DataFrame({"model": name, "set": part, "case_id": list(ids), "risk": values,
                                        "predicted_days": days if days is not None else np.nan}))
    return pd.concat(frames, ignore_index=True)


def run_comparison(table: pd.DataFrame, splits: Splits, networks: Sequence[NetworkRun], clinical: list[str],
                   evaluation: EvaluationParams, oracle: pd.Series | None, folder: Path) -> EvaluationResult:
    """Score every model once and write the comparison into ``<folder>/comparison`` (reused if there)."""
    existing = load_comparison(folder)
    if existing is not None:
        return existing
    models, cv = model_risks(table, splits, networks, clinical, evaluation, oracle)
    comparison, per_site = compare(table, splits, models, evaluation)
    with atomic_directory(folder / "comparison") as tmp:
        write_text(comparison.reset_index().to_csv(index=False), tmp / "comparison.csv")
        write_json(json.loads(comparison.reset_index().to_json(orient="records")), tmp / "comparison.json")
        write_text(per_site.to_csv(), tmp / "per_site.csv")
        write_json(cv, tmp / "cv.json")
        write_text(cv_frame(cv).to_csv(index=False), tmp / "cv.csv")
        write_parquet(risks_frame(models, splits), tmp / "risks.parquet")
        write_text(table_markdown(comparison, cv, len(splits.test)), tmp / "table.md")
    result = load_comparison(folder)
    if result is None:  # pragma: no cover - written atomically just above
        raise FileNotFoundError(folder / "comparison" / "comparison.csv")
    return result
