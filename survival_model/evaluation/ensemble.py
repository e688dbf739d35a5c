"""The fold ensemble scored once on the locked test set: the last step, and the key, of the training stage.

:class:`ScoreEnsemble` (a :class:`survival_model.stage.Stage`) loads the trained folds
(``survival_model.training.folds.TrainFold``), averages their raw outputs on the test patients
(``survival_model.training.stage.ensemble_outputs``) into one risk score, and reports Harrell's C-index on
the test patients with a bootstrap interval, the oracle's C-index on the same patients when ground truth
exists, the validation C-index of every fold (mean and SD) and the test C-index per site. The test set is
used here and nowhere else. Its folder ``<work_dir>/training/runs/<key[:16]>/`` holds the
:class:`survival_model.training.stage.TrainingResult` (``predictions.parquet``, ``metrics.json``,
``learning_curves.png``, ``result.json``).

Its key is the whole training stage's: the feature table's key, every patient's image-input key (for a
network with an image branch), the splits, the settings that decide what the folds learn, the scoring
settings, the oracle's scores and the code of training and of this module. :func:`training_stage` makes
the whole stage reusable under that key; :func:`training_outputs` lists what its reuse needs, from the
stages' own outputs.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from survival_model.config import EvaluationParams, TrainingParams
from survival_model.features.stage import FeatureTable
from survival_model.fingerprint import code_version, stable_hash
from survival_model.imageio import read_json, write_json, write_parquet
from survival_model.metrics import bootstrap_c, harrell_c
from survival_model.models.inputs import ImageInput
from survival_model.stage import Stage, WholeStage, run
from survival_model.training.arrays import stack_images
from survival_model.training.folds import (
    STAGE,
    FoldResult,
    TrainFold,
    TrainingError,
    input_paths,
    learning_params,
    training_code_version,
    uses_images,
)
from survival_model.training.plots import learning_curves
from survival_model.training.splits import Splits
from survival_model.training.stage import IMAGE_TERM_FLAGS, TrainingResult, ensemble_outputs, load_result

log = logging.getLogger(__name__)

#: The files a finished run folder holds.
FILES = ("result.json", "metrics.json", "predictions.parquet", "learning_curves.png")


def oracle_digest(oracle: pd.Series | None) -> str | None:
    """The oracle's scores as part of a key (None without ground truth)."""
    return stable_hash(sorted(oracle.items())) if oracle is not None else None


@dataclass(frozen=True)
class ScoreEnsemble(Stage[TrainingResult]):
    """The ensemble of ``folds`` scored on ``splits.test`` into ``<work_dir>/training/runs/<key[:16]>/``.

    ``table``, ``images`` and ``training`` are the folds' own; ``oracle`` is the ground truth's risk by case
    id (None without ground truth)."""

    name: ClassVar[str] = "evaluate-ensemble"
    folds: tuple[TrainFold, ...]
    table: FeatureTable
    images: Mapping[str, ImageInput]
    splits: Splits
    splits_path: Path
    training: TrainingParams
    evaluation: EvaluationParams
    oracle: pd.Series | None
    work_dir: Path

    def make_key(self) -> str:
        images = sorted(s.key() for s in self.images.values()) if uses_images(self.training.network) else []
        return stable_hash(STAGE, "stage", training_code_version(), code_version(__name__), self.table.folder.name,
                           images, self.splits.fingerprint, learning_params(self.training),
                           self.evaluation.model_dump(mode="json", include={"bootstrap", "confidence", "seed"}),
                           oracle_digest(self.oracle))

    def place(self) -> tuple[str, ...]:
        return (STAGE, "runs")

    def outputs(self, folder: Path) -> list[Path]:
        return [folder / name for name in FILES]

    def load(self, folder: Path) -> TrainingResult | None:
        return load_result(folder)

    def compute(self, tmp: Path) -> None:
        if not self.folds:
            raise TrainingError("no trained fold to ensemble")
        folds = [run(f) for f in self.folds]  # trained by their own tasks: loaded here
        predictions, metrics = score_ensemble(folds, pd.read_parquet(self.table.table_path), self.splits,
                                              self._test_images(), self.training, self.evaluation, self.oracle)
        write_parquet(predictions, tmp / "predictions.parquet")
        write_json(metrics, tmp / "metrics.json")
        learning_curves(folds, tmp / "learning_curves.png")
        write_json({"key": self.key(), "splits": str(self.splits_path.relative_to(self.work_dir)),
                    "folds": [str(f.folder.relative_to(self.work_dir)) for f in folds]}, tmp / "result.json")
        test = metrics["test"]["cindex"]
        log.info("ensemble of %d folds: test C-index %.3f [%.3f, %.3f]", len(folds), test["value"], test["low"],
                 test["high"])

    def _test_images(self) -> np.ndarray | None:
        if not uses_images(self.training.network) or not self.images:
            return None
        return stack_images(input_paths(self.images, self.splits.test), self.splits.test)


def score_ensemble(folds: Sequence[FoldResult], table: pd.DataFrame, splits: Splits, images: np.ndarray | None,
                   training: TrainingParams, evaluation: EvaluationParams,
                   oracle: pd.Series | None) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The test patients' predictions and the metrics of the ensemble of ``folds`` (the module docstring);
    ``images``: the test patients' stacked image inputs, in ``splits.test`` order."""
    import torch  # torch: only when the ensemble is scored (the stage's key and reuse need none)

    from survival_model.models.losses import ensemble_centre, predicted_days, risk_score  # torch: only when scored

    test = table.set_index("case_id", drop=False).loc[list(splits.test)].reset_index(drop=True)
    mean_output, per_fold, objective = ensemble_outputs(folds, test, images)
    mean_t = torch.from_numpy(mean_output)
    centres = [float(read_json(f.folder / "config.json")["centre"]) for f in folds]
    centre = ensemble_centre(objective, centres)
    risk = risk_score(objective, mean_t, centre).numpy().astype(float)
    days = predicted_days(objective, mean_t, centre)
    predictions = pd.DataFrame({"case_id": test["case_id"], "site": test["site"],
                                "time_days": test["time_days"].astype(float), "event": test["event"].astype(int),
                                "risk": risk})
    for fold, out, own in zip(folds, per_fold, centres, strict=True):
        predictions[f"risk_{fold.name}"] = risk_score(objective, torch.from_numpy(out), own).numpy().astype(float)
    if days is not None:
        predictions["predicted_days"] = days.numpy().astype(float)
    time, event = predictions["time_days"].to_numpy(), predictions["event"].to_numpy() == 1

    def boot(r: np.ndarray, t: np.ndarray, e: np.ndarray) -> dict[str, Any]:
        return bootstrap_c(r, t, e, resamples=evaluation.bootstrap, confidence=evaluation.confidence,
                           seed=evaluation.seed).as_dict()

    metrics: dict[str, Any] = {
        "objective": objective, "variant": training.network.variant, "backbone": training.network.backbone,
        "fusion": training.network.fusion,
        "image_features": training.network.image_features,
        **{key: getattr(training.network, key) for key, _ in IMAGE_TERM_FLAGS},
        "test": {"patients": len(test), "deaths": int(event.sum()), "cindex": boot(risk, time, event)},
        "cv": _cv_summary(folds),
        "per_site": {str(site): {"patients": len(g), "cindex": harrell_c(g["risk"], g["time_days"], g["event"])}
                     for site, g in predictions.groupby("site", sort=True)},
        "oracle": None,
    }
    if oracle is not None:
        matched = predictions["case_id"].map(oracle)
        predictions["oracle_risk"] = matched.astype(float)
        seen = matched.notna().to_numpy()
        if seen.any():
            metrics["oracle"] = {"patients": int(seen.sum()),
                                 "cindex": boot(matched.to_numpy(dtype=float)[seen], time[seen], event[seen])}
    return predictions, metrics


def _cv_summary(folds: Sequence[FoldResult]) -> dict[str, Any]:
    """Every fold's validation C-index (its validation patients scored once by the kept model: honest) as mean
    ± SD, and the C-index on the stopping patients that chose the model (selection-biased, for the record)."""
    def mean_sd(key: str) -> tuple[float, float]:
        finite = [v for v in (float(f.summary[key]) for f in folds) if np.isfinite(v)]
        return (float(np.mean(finite)) if finite else float("nan"),
                float(np.std(finite, ddof=1)) if len(finite) > 1 else float("nan"))

    (val_mean, val_sd), (stop_mean, stop_sd) = mean_sd("validation_cindex"), mean_sd("stop_cindex")
    return {
        "validation_cindex_mean": val_mean, "validation_cindex_sd": val_sd,
        "stop_cindex_mean": stop_mean, "stop_cindex_sd": stop_sd,
        "per_fold": {f.name: {k: f.summary.get(k) for k in ("validation_cindex", "stop_cindex", "best_epoch", "epochs",
                                                            "tabular_penalty", "seconds", "image_gain")}
                     for f in folds},
    }


# --------------------------------------------------------------------------------------------------
# The whole training stage
# --------------------------------------------------------------------------------------------------


def training_stage(score: ScoreEnsemble) -> WholeStage[TrainingResult]:
    """The whole training stage (image inputs, folds, the scored ensemble), reusable under the key of its last
    step: ``score``'s key holds everything the inputs and the folds are made of."""
    return WholeStage(STAGE, score.key(), score.work_dir, load_result)


def training_outputs(score: ScoreEnsemble) -> list[Path]:
    """The files a reuse of the training stage needs: the run's, every fold's, the image inputs the folds read
    and the splits the run refers to."""
    stages: list[Stage[Any]] = [score, *score.folds]
    if uses_images(score.training.network):
        stages += list(score.images.values())
    return [*(p for s in stages for p in s.outputs(s.folder())), score.splits_path]
