"""The comparison of the trained networks with clinical baselines and the oracle, on the same splits.

Every model is fitted on the development patients (a network: its folds; a baseline: all development
rows) and scored once on the locked test set with every score of ``survival_model.evaluation.scores``
and its bootstrap interval, plus the paired difference to the GPA. The survival curves a score needs
come from a Breslow baseline on the development patients' risks: for a network its *out-of-fold* risks
(each development patient scored by the fold model that did not train on it), for a baseline its
fitted risks; a network that predicts times itself is scored on them. Every score is also computed per
cross-validation fold (each fold's model fitted on its training rows, its Breslow baseline from them,
scored on its validation rows) and reported as mean ± SD; Harrell's C per site on the test set.

The stage (:class:`Evaluate`) writes ``<work_dir>/evaluation/<key[:16]>/`` with ``comparison/`` and
``explanation/``; :func:`render_report` writes ``report/`` into it (re-rendered when the registry's count of
gate decisions on the test set changes); :func:`evaluation_stage` reuses all three as one whole stage.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd

from survival_model.config import EvaluationParams, ImageInputParams
from survival_model.evaluation.baselines import baselines, fit_baseline, pooling_scale
from survival_model.evaluation.compare import ModelRisks, comparison_table
from survival_model.evaluation.oof import OutOfFold, centre_on, compare_out_of_fold
from survival_model.evaluation.scores import Outcome, score
from survival_model.fingerprint import code_version, stable_hash
from survival_model.imageio import atomic_directory, read_json, write_json, write_parquet, write_text
from survival_model.metrics import format_ci, harrell_c
from survival_model.stage import Stage, WholeStage
from survival_model.training.arrays import stack_images
from survival_model.training.splits import Splits

if TYPE_CHECKING:
    from survival_model.features.stage import FeatureTable
    from survival_model.training.stage import TrainingResult

log = logging.getLogger(__name__)


def rows(table: pd.DataFrame, ids: Sequence[str]) -> pd.DataFrame:
    """The feature-table rows of ``ids``, in that order."""
    return table.set_index("case_id", drop=False).loc[list(ids)].reset_index(drop=True)


@dataclass(frozen=True)
class NetworkRun:
    """What the comparison needs of one trained network (risks by case id)."""

    name: str
    #: Development patients, each scored by the fold model that did not train on it (out of fold). A cox
    #: network's are taken from ``folds`` instead, centred there (:func:`network_out_of_fold`); these serve
    #: patients no fold validated.
    dev: pd.Series
    #: The test patients: the fold ensemble (mean of the folds' centred risks).
    test: pd.Series
    #: The ensemble's own predicted days on the test patients (``mse``, ``weibull``), else None (a ``cox``
    #: network: a risk defined up to a constant, see :attr:`cox`).
    test_days: pd.Series | None
    #: Per fold: the fold model's risks on its own training rows and on its validation rows.
    folds: tuple[tuple[pd.Series, pd.Series], ...]
    #: Each fold model's risks on the test patients (columns in fold order), for the ensemble's mixture of
    #: survival curves; None to score the mean risk alone.
    test_folds: pd.DataFrame | None = None
    #: The variant of the network (``hybrid``, ``tabular``, ``image``).
    variant: str = "hybrid"

    @property
    def cox(self) -> bool:
        """A ``cox`` network: it predicts no days of its own, its risk is a log-hazard defined up to a constant."""
        return self.test_days is None


def network_out_of_fold(net: NetworkRun, ids: Sequence[str]) -> np.ndarray:
    """The network's out-of-fold risks of ``ids``: a ``cox`` network's validation risks of each fold centred on
    that fold's training risks (:func:`centre_on`, as the baselines'; a no-op on folds already centred upstream
    by ``output_offset``), so the pooled folds are on one scale whatever the training did; other objectives'
    (and patients no fold validated) as ``net.dev`` gives them."""
    given = net.dev.reindex(list(ids)).astype(float)
    if not net.cox or not net.folds:
        return given.to_numpy(dtype=float)
    centred = pd.concat([pd.Series(centre_on(train_risk.to_numpy(dtype=float), val_risk.to_numpy(dtype=float)),
                                   index=val_risk.index) for train_risk, val_risk in net.folds])
    pooled = centred[~centred.index.duplicated()].reindex(list(ids)).combine_first(given)
    return pooled.to_numpy(dtype=float)


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
                ) -> tuple[dict[str, ModelRisks], dict[str, dict[str, dict[str, float]]], OutOfFold]:
    """Risks of every model on the development and test patients, every score of each model over the
    cross-validation folds (fitted on each fold's training rows, scored on its validation rows), and every
    model's out-of-fold risks on the development patients (fitted models, cox networks included, centred on
    their fold's training rows)."""
    dev, test = rows(table, splits.development), rows(table, splits.test)
    fold_of = {c: k for k, fold in enumerate(splits.folds) for c in fold.validation}
    dev_ids = list(dev["case_id"])
    models: dict[str, ModelRisks] = {}
    cv: dict[str, dict[str, dict[str, float]]] = {}
    oof: dict[str, np.ndarray] = {}
    for net in networks:
        days = net.test_days.reindex(test["case_id"]).to_numpy(dtype=float) if net.test_days is not None else None
        members = net.test_folds.reindex(test["case_id"]).to_numpy(dtype=float) if net.test_folds is not None \
            else None
        dev_risk = network_out_of_fold(net, dev_ids)
        models[net.name] = ModelRisks(dev_risk, net.test.reindex(test["case_id"]).to_numpy(dtype=float), days, members)
        oof[net.name] = dev_risk
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
        pooled = pd.Series(np.nan, index=dev_ids)
        for fold in splits.folds:
            train, validation = rows(table, fold.train), rows(table, fold.validation)
            model = fit_baseline(baseline, train, evaluation.seed)
            fold_train, fold_val = model.risk(train), model.risk(validation)
            per_fold.append(_fold_scores(train, fold_train, validation, fold_val, evaluation.tau_days))
            pooled[list(validation["case_id"])] = pooling_scale(baseline, fold_train, fold_val)
        cv[name] = _cv(per_fold)
        oof[name] = pooled.to_numpy(dtype=float)
    if oracle is not None and dev["case_id"].isin(oracle.index).all() and test["case_id"].isin(oracle.index).all():
        models["oracle"] = ModelRisks(oracle.reindex(dev["case_id"]).to_numpy(dtype=float),
                                      oracle.reindex(test["case_id"]).to_numpy(dtype=float))
        oof["oracle"] = models["oracle"].train
    folds = np.array([fold_of.get(c, -1) for c in dev_ids], dtype=np.int64)
    return models, cv, OutOfFold(tuple(dev_ids), Outcome.of_frame(dev), folds, oof)


def references(networks: Sequence[NetworkRun], models: Mapping[str, object]) -> dict[str, str]:
    """The paired comparison's references present: the oracle, the first tabular-only network, the GPA."""
    out = {"oracle": "oracle"} if "oracle" in models else {}
    tabular = [n.name for n in networks if n.variant == "tabular"]
    if tabular:
        out["tabular"] = tabular[0]
    if "gpa" in models:
        out["gpa"] = "gpa"
    return out


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
FILES = ("comparison.csv", "comparison.json", "per_site.csv", "cv.json", "cv.csv", "risks.parquet", "table.md",
         "oof.csv", "oof.json", "oof_calibration.csv", "oof_risks.parquet")
#: The main network's explanation, in ``<stage folder>/explanation/`` (Grad-CAM's files beside it when asked for).
EXPLANATION_FILES = ("importance.csv", "importance.png")
#: The report, in ``<stage folder>/report/`` (figures in ``report/figures/``).
REPORT_FILES = ("report.html", "summary.md", "audit.json")


@dataclass(frozen=True)
class EvaluationResult:
    """Where an evaluation's files are (comparison, explanation, report), and the comparison itself: on the
    out-of-fold predictions of the development patients (``oof``, the comparison) and on the locked test set
    (``comparison``, the confirmation)."""

    folder: Path
    comparison: pd.DataFrame
    per_site: pd.DataFrame
    cv: dict[str, dict[str, dict[str, float]]]
    oof: pd.DataFrame

    @property
    def comparison_folder(self) -> Path:
        return self.folder / "comparison"

    def files(self) -> list[Path]:
        return sorted(p for p in self.folder.rglob("*") if p.is_file())

    @property
    def report_html(self) -> Path:
        return self.folder / "report" / "report.html"

    def report_decisions(self) -> int | None:
        """The number of gate decisions on the test set the report names (``audit.json``; None: none named)."""
        audit = self.folder / "report" / "audit.json"
        if not audit.is_file():
            return None
        value = read_json(audit).get("test_set_decisions")
        return int(value) if value is not None else None

    def reports(self, test_set_decisions: int | None) -> bool:
        """Whether the report is written and names ``test_set_decisions`` (else it is rendered again)."""
        return (all((self.folder / "report" / n).is_file() for n in REPORT_FILES)
                and self.report_decisions() == test_set_decisions)

    @property
    def summary_markdown(self) -> str:
        summary = self.folder / "report" / "summary.md"
        return (summary if summary.is_file() else self.comparison_folder / "table.md").read_text(encoding="utf-8")

    def risks(self) -> pd.DataFrame:
        return pd.read_parquet(self.comparison_folder / "risks.parquet")

    def oof_risks(self) -> pd.DataFrame:
        """Every model's out-of-fold risks on the development patients: ``model, case_id, fold, risk``."""
        return pd.read_parquet(self.comparison_folder / "oof_risks.parquet")

    def oof_calibration(self) -> pd.DataFrame:
        """The cross-fitted calibration tables of the out-of-fold risks (``model, months, group, ...``)."""
        return pd.read_csv(self.comparison_folder / "oof_calibration.csv")


def format_interval(value: Any, low: Any = None, high: Any = None) -> str:
    """``0.685 [0.549, 0.846]``; ``0.685 [undefined]`` when the interval is NaN (too few resamples where the score,
    or both scores of a difference, are defined: ``paired.MIN_FINITE``); the bare value when no interval was
    computed (``low`` and ``high`` None); ``-`` without a value."""
    if low is None and high is None:
        return format_ci(value)
    if not finite(value):
        return "-"
    return format_ci(value, low, high) if finite(low) and finite(high) else f"{float(value):.3f} [undefined]"


def finite(x: Any) -> bool:
    """A value that is there and finite (None and NaN are not)."""
    return x is not None and bool(np.isfinite(x))


def level(confidence: float) -> str:
    """The configured confidence as a percentage (``95%``, ``97.5%``)."""
    return f"{confidence * 100:g}%"


def _ci(row: pd.Series, metric: str) -> str:
    return format_interval(row.get(metric), row.get(f"{metric}_low"), row.get(f"{metric}_high"))


def oof_markdown(oof: pd.DataFrame, references: Mapping[str, str], patients: int, deaths: int,
                 confidence: float) -> str:
    """The out-of-fold comparison as a Markdown table."""
    roles = [r for r in ("oracle", "tabular", "gpa") if r in references]
    heads = {"oracle": "ΔC vs oracle", "tabular": f"ΔC vs {references.get('tabular', 'tabular')}", "gpa": "ΔC vs GPA"}
    lines = [
        f"**Out of fold, all {patients} development patients ({deaths} deaths)**: each patient scored by the model "
        "of the fold that validated it (fitted, and every choice made, without it). "
        f"{level(confidence)} bootstrap intervals over patients; Δ: Harrell's C minus the reference's, paired on the "
        "same resamples; headroom: (C − 0.5) / (C_oracle − 0.5). Calibration (integrated Brier) from "
        "Breslow baselines cross-fitted on the other folds.", "",
        "| model | Harrell's C | Uno's C | integrated Brier | headroom | " + " | ".join(heads[r] for r in roles) + " |",
        "| --- | --- | --- | --- | --- | " + " | ".join("---" for _ in roles) + " |",
    ]
    for name, row in oof.iterrows():
        deltas = [_ci(row, f"vs_{r}_harrell_c") if references.get(r) != name else "(reference)" for r in roles]
        lines.append(f"| {name} | {_ci(row, 'harrell_c')} | {_ci(row, 'uno_c')} | {_ci(row, 'integrated_brier')} | "
                     f"{_ci(row, 'headroom')} | " + " | ".join(deltas) + " |")
    return "\n".join(lines) + "\n"


def table_markdown(comparison: pd.DataFrame, cv: dict[str, dict[str, dict[str, float]]], test_patients: int,
                   confidence: float) -> str:
    """The locked test set's comparison as a Markdown table (Prefect UI, MLflow, the CLI)."""
    lines = [
        f"**Locked test set, {test_patients} patients (confirmation)**: {level(confidence)} bootstrap intervals; "
        "difference to the GPA paired on the same resamples; CV: mean ± SD over the development folds' validation "
        "patients. R2 / MAE / RMSE (days) use uncensored patients only, with each model's predicted time (the median "
        "of its Breslow survival curve for risk scores).", "",
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
    models, cv, oof = model_risks(table, splits, networks, clinical, evaluation, oracle)
    comparison, per_site = compare(table, splits, models, evaluation)
    refs = references(networks, models)
    out_of_fold = compare_out_of_fold(oof, refs, tau=evaluation.tau_days, resamples=evaluation.bootstrap,
                                      confidence=evaluation.confidence, seed=evaluation.seed)
    calibration = pd.concat([t.assign(model=name) for name, t in out_of_fold.calibration.items() if len(t)],
                            ignore_index=True) if any(len(t) for t in out_of_fold.calibration.values()) \
        else pd.DataFrame(columns=["model", "months", "group", "patients", "deaths", "predicted", "observed"])
    with atomic_directory(folder / "comparison") as tmp:
        write_text(comparison.reset_index().to_csv(index=False), tmp / "comparison.csv")
        write_json(json.loads(comparison.reset_index().to_json(orient="records")), tmp / "comparison.json")
        write_text(per_site.to_csv(), tmp / "per_site.csv")
        write_json(cv, tmp / "cv.json")
        write_text(cv_frame(cv).to_csv(index=False), tmp / "cv.csv")
        write_parquet(risks_frame(models, splits), tmp / "risks.parquet")
        write_text(out_of_fold.table.reset_index().to_csv(index=False), tmp / "oof.csv")
        write_json({"references": out_of_fold.references, "patients": out_of_fold.patients,
                    "deaths": out_of_fold.deaths, "resamples": out_of_fold.resamples,
                    "table": json.loads(out_of_fold.table.reset_index().to_json(orient="records"))}, tmp / "oof.json")
        write_text(calibration.to_csv(index=False), tmp / "oof_calibration.csv")
        write_parquet(oof.frame(), tmp / "oof_risks.parquet")
        write_text(oof_markdown(out_of_fold.table, out_of_fold.references, out_of_fold.patients, out_of_fold.deaths,
                                evaluation.confidence) + "\n"
                   + table_markdown(comparison, cv, len(splits.test), evaluation.confidence),
                   tmp / "table.md")
    result = load_comparison(folder)
    if result is None:  # pragma: no cover - written atomically just above
        raise FileNotFoundError(folder / "comparison" / "comparison.csv")
    return result


# --------------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvaluationImages:
    """What the networks with an image branch need: every patient's image input (built by the training stage),
    its label map (Grad-CAM's regions) and the image-input settings."""

    image_paths: Mapping[str, Path]
    seg_paths: Mapping[str, Path]
    inputs: ImageInputParams


@dataclass(frozen=True)
class Evaluate(Stage[EvaluationResult]):
    """Every network beside the baselines and the oracle (``comparison/``) and every network explained
    (``explanation/``: the main, first, network with Grad-CAM; the others in ``explanation/models/<n>/``), in
    ``<work_dir>/evaluation/<key[:16]>/``.

    The key is made of the training runs' and the feature table's keys, the clinical columns, the evaluation
    settings (the ground truth's known effects, not its path), the oracle's risks and the code version.
    ``images`` is not part of it: the training runs' keys hold the image inputs' keys and their settings, the
    table's key the label maps. The report (``report/``) is written into the finished folder by
    :func:`render_report`: it names how many gate decisions the registry counted on the test set, which no key
    holds, so it is re-rendered when that number changes."""

    name: ClassVar[str] = STAGE
    #: The networks to compare; the first is the main one (explained with Grad-CAM, reported).
    trained: tuple[TrainingResult, ...]
    table: FeatureTable
    clinical: tuple[str, ...]
    evaluation: EvaluationParams
    #: The ground truth's risk by case id (None without one). Left out of equality: the key identifies a stage.
    oracle: pd.Series | None = field(compare=False)
    work_dir: Path
    images: EvaluationImages | None = None

    def make_key(self) -> str:
        truth = self.evaluation.ground_truth
        known = list(truth.known_effects) if truth is not None else []
        oracle = stable_hash(sorted(self.oracle.items())) if self.oracle is not None else None
        return stable_hash(STAGE, code_version("survival_model.evaluation", "survival_model.metrics"),
                           [r.folder.name for r in self.trained], self.table.folder.name, list(self.clinical),
                           self.evaluation.model_dump(mode="json", exclude={"ground_truth"}), oracle, known)

    def with_images(self, images: EvaluationImages | None) -> Evaluate:
        """This stage with the image inputs it needs to compute (the key is the same)."""
        return dataclasses.replace(self, images=images)

    def outputs(self, folder: Path) -> list[Path]:
        return evaluation_files(folder)

    def load(self, folder: Path) -> EvaluationResult | None:
        if not all(p.is_file() for p in self.outputs(folder)):
            return None
        return load_comparison(folder)

    def known_effects(self) -> list[str]:
        """The ground truth's known effects the report checks (none without an oracle)."""
        truth = self.evaluation.ground_truth
        return list(truth.known_effects) if truth is not None and self.oracle is not None else []

    def splits(self) -> Splits:
        """The splits every network was trained on (one for all: the comparison is paired)."""
        splits = Splits.load(self.trained[0].splits_path)
        if any((other.fingerprint, other.ids_digest) != (splits.fingerprint, splits.ids_digest)
               for other in (Splits.load(t.splits_path) for t in self.trained)):
            raise ValueError("the networks to compare were trained on different splits")
        return splits

    def compute(self, tmp: Path) -> None:
        """Fit the baselines on the development patients, score every model once on the test set (and per
        cross-validation fold, and out of fold), then explain every network on the test patients."""
        from survival_model.evaluation.networks import network_run  # torch: only when the stage computes

        table = self.table.table()
        splits = self.splits()
        image_paths = self.images.image_paths if self.images is not None else None
        networks = [network_run(t, table, image_paths) for t in self.trained]
        seen: set[str] = set()
        for i, (net, result) in enumerate(zip(networks, self.trained, strict=True)):  # e.g. two poolings: one name
            if net.name in seen:
                networks[i] = dataclasses.replace(net, name=f"{net.name} [{result.folder.name[:8]}]")
            seen.add(networks[i].name)
        log.info("scoring %s, %s%s on %d test patients (%d bootstrap resamples)",
                 ", ".join(n.name for n in networks), ", ".join(self.evaluation.baselines),
                 " and the oracle" if self.oracle is not None else "", len(splits.test),
                 self.evaluation.score_resamples)
        run_comparison(table, splits, networks, list(self.clinical), self.evaluation, self.oracle, tmp)
        self._explain(table, splits, tmp / "explanation")

    def _explain(self, table: pd.DataFrame, splits: Splits, target: Path) -> None:
        """Permutation importance of every network on the test patients, and Grad-CAM of the main one:
        ``explanation/`` for the main network, ``explanation/models/<n>/`` for the others."""
        from survival_model.evaluation.explain import run_explanation  # torch: only when the stage computes
        from survival_model.evaluation.networks import explainer, has_images  # torch: only when the stage computes

        frame = rows(table, splits.test)
        images = stack_images(self.images.image_paths, splits.test) if self.images is not None else None
        seg_paths = self.images.seg_paths if self.images is not None else None
        inputs = self.images.inputs if self.images is not None else ImageInputParams()
        for index, result in enumerate(self.trained):
            main = index == 0
            with_images = images if has_images(result) else None
            log.info("explaining %s on %d test patients: permutation importance (%d repeats)%s", result.name,
                     len(frame), self.evaluation.importance_repeats,
                     ", Grad-CAM" if main and with_images is not None and self.evaluation.gradcam else "")
            run_explanation(explainer(result), frame, with_images, seg_paths, inputs, name=result.name,
                            repeats=self.evaluation.importance_repeats, seed=self.evaluation.seed,
                            gradcam=main and self.evaluation.gradcam, panel_patients=self.evaluation.gradcam_panel,
                            folder=target if main else target / "models" / str(index), progress=log.info)


def evaluation_files(folder: Path, report: bool = False) -> list[Path]:
    """The files whose presence means the evaluation in ``folder`` finished: the comparison's and the main
    network's explanation (``report``: and the report's)."""
    return [*(folder / "comparison" / n for n in FILES), *(folder / "explanation" / n for n in EXPLANATION_FILES),
            *((folder / "report" / n for n in REPORT_FILES) if report else ())]


def load_comparison(folder: Path) -> EvaluationResult | None:
    """The comparison in the stage ``folder`` (explanation and report may still be missing)."""
    part = folder / "comparison"
    if not all((part / name).is_file() for name in FILES):
        return None
    return EvaluationResult(folder, pd.read_csv(part / "comparison.csv", index_col="model"),
                            pd.read_csv(part / "per_site.csv", index_col=0), read_json(part / "cv.json"),
                            pd.read_csv(part / "oof.csv", index_col="model"))


def load_evaluation(folder: Path) -> EvaluationResult | None:
    """The whole evaluation in ``folder`` (comparison, explanation and report), or None."""
    if not all(p.is_file() for p in evaluation_files(folder, report=True)):
        return None
    return load_comparison(folder)


def evaluation_stage(stage: Evaluate) -> WholeStage[EvaluationResult]:
    """The whole evaluation (comparison, explanation, report) as one reusable unit, under the stage's key: a
    run whose networks, table and settings are unchanged reuses it without a task (the report re-rendered
    when it names another number of gate decisions, :meth:`EvaluationResult.reports`)."""
    return WholeStage(STAGE, stage.key(), stage.work_dir, load_evaluation)


def render_report(stage: Evaluate, result: EvaluationResult, test_set_decisions: int | None = None,
                  key_fingerprint: str | None = None) -> Path:
    """Write (or replace) the HTML report and the Markdown summary of the main network in
    ``<result.folder>/report/`` (``test_set_decisions``: gate decisions the locked test set served before, from
    the registry; ``key_fingerprint``: the pseudonym key's the case ids were made with)."""
    from survival_model.evaluation.report import ReportData, write_report  # matplotlib: only when a report is made

    trained = stage.trained[0]
    splits = Splits.load(trained.splits_path)
    table_md = (result.comparison_folder / "table.md").read_text(encoding="utf-8")
    members = trained.predictions().set_index("case_id")[[f"risk_{f.name}" for f in trained.folds]]
    data = ReportData(result.oof_risks(), result.oof_calibration(), members)
    target = result.folder / "report"
    with atomic_directory(target, replace=True) as tmp:
        write_report(tmp, table=stage.table.table(), splits=splits, comparison=result.comparison,
                     per_site=result.per_site, cv=result.cv, risks=result.risks(), oof=result.oof, data=data,
                     table_md=table_md, network=trained.name, baselines=stage.evaluation.baselines,
                     evaluation=stage.evaluation, learning_curves=trained.folder / "learning_curves.png",
                     explanation=result.folder / "explanation", known_effects=stage.known_effects(),
                     fold_summaries=[{"fold": f.name, **f.summary} for f in trained.folds],
                     test_set_decisions=test_set_decisions, key_fingerprint=key_fingerprint)
    return target / "report.html"
