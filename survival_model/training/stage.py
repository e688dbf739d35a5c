"""The training stage's result: the fold ensemble, scored once on the locked test set.

The final model is the ensemble of the fold models (``survival_model.training.folds``): every fold's
network (with its own tabular pipeline) predicts and their raw outputs are averaged
(:func:`ensemble_outputs`), then turned into one risk score (``survival_model.models.losses.risk_score``).
The ensemble is scored on the test set by ``survival_model.evaluation.ensemble`` (the stage that writes the
result and whose key is the whole training stage's); :class:`TrainingResult` is what it wrote, in
``<work_dir>/training/runs/<stage key>/``: ``predictions.parquet`` (test patients: outcome, ensemble risk,
each fold's risk, predicted days where the objective gives them, oracle risk), ``metrics.json``,
``learning_curves.png`` and ``result.json`` (the key, the splits and the folds it used).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from survival_model.config import NetworkParams
from survival_model.imageio import read_json
from survival_model.training.folds import FoldResult, TrainingError, fold_outputs, load_fold, load_fold_model

if TYPE_CHECKING:  # torch loads only where the ensemble predicts (see survival_model.training.folds)
    from survival_model.models.losses import Objective
    from survival_model.training.loop import DeviceChoice

#: The image term's switches recorded in a run's metrics and named in its table name where they differ from
#: their defaults (``+linear``, ``-intensities``): the default network's name stays short.
IMAGE_TERM_FLAGS = (("region_intensities", "intensities"), ("image_standardise", "standardised"),
                    ("image_linear", "linear"))


@dataclass(frozen=True)
class TrainingResult:
    """Where a training stage's results are."""

    folder: Path
    splits_path: Path
    folds: tuple[FoldResult, ...]
    metrics: dict[str, Any]

    @property
    def predictions_path(self) -> Path:
        return self.folder / "predictions.parquet"

    def predictions(self) -> pd.DataFrame:
        return pd.read_parquet(self.predictions_path)

    def out_of_fold(self) -> pd.Series:
        """Each development patient's risk from the fold model that did not train on it."""
        frames = [pd.read_parquet(f.folder / "validation.parquet", columns=["case_id", "risk"]) for f in self.folds]
        return pd.concat(frames).set_index("case_id")["risk"]

    @property
    def name(self) -> str:
        """``variant-objective [fusion] [pooling] [+/-flags] (backbone)`` for tables: the fusion named when it is
        not additive, the image features when they are pooled over the whole input instead of per region, and the
        image term's switches (:data:`IMAGE_TERM_FLAGS`) that differ from their defaults."""
        m = self.metrics
        if m["variant"] == "tabular":
            return f"tabular-{m['objective']}"
        fusion = "" if m.get("fusion", "additive") == "additive" or m["variant"] != "hybrid" else f" {m['fusion']}"
        pooled = " global" if m.get("image_features") == "global" else ""
        defaults = NetworkParams()
        extras = "".join(f" {'+' if m[key] else '-'}{label}" for key, label in IMAGE_TERM_FLAGS
                         if key in m and m[key] != getattr(defaults, key))
        return f"{m['variant']}-{m['objective']}{fusion}{pooled}{extras} ({m['backbone']})"

    def files(self) -> list[Path]:
        return [self.folder / "metrics.json", self.predictions_path, self.folder / "result.json",
                self.folder / "learning_curves.png", self.splits_path]


def load_result(folder: Path) -> TrainingResult | None:
    """The result recorded in ``folder``, or None when it (or one of its folds) is incomplete."""
    if not (folder / "result.json").is_file():
        return None
    record = read_json(folder / "result.json")
    work_dir = folder.parents[2]
    folds = [load_fold(work_dir / p) for p in record["folds"]]
    if any(f is None for f in folds):
        return None
    return TrainingResult(folder, work_dir / record["splits"], tuple(f for f in folds if f is not None),
                          read_json(folder / "metrics.json"))


def ensemble_outputs(folds: Sequence[FoldResult], frame: pd.DataFrame, images: np.ndarray | None,
                     choice: DeviceChoice | None = None) -> tuple[np.ndarray, list[np.ndarray], Objective]:
    """Mean raw output over the fold models, each fold's outputs, and the objective."""
    per_fold, objectives = [], set()
    for fold in folds:
        model = load_fold_model(fold)
        objectives.add(model.objective)
        per_fold.append(fold_outputs(model, frame, images, choice))
    if len(objectives) != 1:
        raise TrainingError(f"the folds were trained with different objectives: {sorted(objectives)}")
    objective: Objective = objectives.pop()  # type: ignore[assignment]
    return np.mean(per_fold, axis=0), per_fold, objective
