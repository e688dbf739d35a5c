"""The training stage's result: the fold ensemble scored once on the locked test set.

The final model is the ensemble of the fold models: every fold's network (with its own tabular
pipeline) predicts the test patients and their raw outputs are averaged, then turned into one risk
score (``survival_model.models.losses.risk_score``). The test set is used here and nowhere else.
Reported: Harrell's C-index on the test patients with a bootstrap interval, the oracle's C-index on the
same patients when ground truth exists, the validation C-index of every fold (mean and SD), and the
test C-index per site. The result lives in ``<work_dir>/training/runs/<stage key>/``:
``predictions.parquet`` (test patients: outcome, ensemble risk, each fold's risk, predicted days where
the objective gives them, oracle risk), ``metrics.json``, ``learning_curves.png`` and ``result.json``
(the splits and folds it used).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from survival_model.config import EvaluationParams, NetworkParams, TrainingParams
from survival_model.fingerprint import stable_hash
from survival_model.imageio import atomic_directory, read_json, write_json, write_parquet
from survival_model.training.folds import (
    STAGE,
    FoldResult,
    TrainingError,
    fold_outputs,
    learning_params,
    load_fold,
    load_fold_model,
    training_code_version,
    uses_images,
)
from survival_model.training.splits import Splits

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


def stage_key(table_key: str, input_keys: Mapping[str, str], splits: Splits, training: TrainingParams,
              evaluation: EvaluationParams, oracle_digest: str | None) -> str:
    """Key of the whole training stage: the data, the splits, every setting and the code."""
    images = sorted(input_keys.values()) if uses_images(training.network) else []
    return stable_hash(STAGE, "stage", training_code_version(), table_key, images, splits.fingerprint,
                       learning_params(training), evaluation.model_dump(mode="json", include={"bootstrap", "confidence",
                                                                                              "seed"}),
                       oracle_digest)


def run_folder(work_dir: Path, key: str) -> Path:
    return work_dir / STAGE / "runs" / key[:16]


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


def evaluate_ensemble(folds: Sequence[FoldResult], table: pd.DataFrame, splits: Splits, splits_path: Path,
                      image_paths: Mapping[str, Path] | None, training: TrainingParams, evaluation: EvaluationParams,
                      oracle: pd.Series | None, work_dir: Path, key: str) -> TrainingResult:
    """Score the fold ensemble once on the locked test set (see the module docstring)."""
    import torch

    from survival_model.metrics import bootstrap_c, harrell_c
    from survival_model.models.losses import ensemble_centre, predicted_days, risk_score
    from survival_model.training.data import stack_images
    from survival_model.training.plots import learning_curves

    folder = run_folder(work_dir, key)
    existing = load_result(folder)
    if existing is not None:
        return existing
    if not folds:
        raise TrainingError("no trained fold to ensemble")
    test = table.set_index("case_id", drop=False).loc[list(splits.test)].reset_index(drop=True)
    images = stack_images(image_paths, splits.test) if uses_images(training.network) and image_paths else None
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
    with atomic_directory(folder) as tmp:
        write_parquet(predictions, tmp / "predictions.parquet")
        write_json(metrics, tmp / "metrics.json")
        learning_curves(folds, tmp / "learning_curves.png")
        write_json({"key": key, "splits": str(splits_path.relative_to(work_dir)),
                    "folds": [str(f.folder.relative_to(work_dir)) for f in folds]}, tmp / "result.json")
    result = load_result(folder)
    if result is None:  # pragma: no cover - written atomically just above
        raise TrainingError(f"training result missing in {folder}")
    return result
