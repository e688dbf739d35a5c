"""Training tasks: image inputs, one task per fold, the ensemble on the locked test set.

Each key function mirrors the library's content key (``survival_model.training``); a fold's key is
computed once in the flow and passed in, so the cache and the fold's folder always agree.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from prefect import get_run_logger, task
from prefect.concurrency.sync import concurrency

from survival_model.config import EvaluationParams, ImageInputParams, TrainingParams
from survival_model.fingerprint import stable_hash
from survival_model.models import inputs as inputs_lib
from survival_model.preprocess.stage import PreprocessedPatient
from survival_model.training import folds as folds_lib
from survival_model.training import stage as stage_lib
from survival_model.training.devices import claim_cuda_device
from survival_model.training.splits import Fold, Splits

if TYPE_CHECKING:
    from survival_model.training.loop import EpochRecord

#: The Prefect global concurrency limit that lets one fold per CUDA device run at a time.
GPU_LIMIT = "survival-model-gpu"


def inputs_key(inputs: dict[str, Any]) -> tuple[str, list[Path]]:
    patients: Mapping[str, PreprocessedPatient] = inputs["patients"]
    params: ImageInputParams = inputs["params"]
    keys = {c: inputs_lib.input_key(p, params) for c, p in patients.items()}
    paths = [inputs_lib.input_folder(inputs["work_dir"], p.site, c, keys[c]) / inputs_lib.INPUT_FILE
             for c, p in patients.items()]
    return stable_hash("inputs-stage", sorted(keys.values())), paths


@task(name="image-inputs", task_run_name="image-inputs")
def image_inputs(patients: Mapping[str, PreprocessedPatient], params: ImageInputParams,
                 work_dir: Path) -> dict[str, Path]:
    """Every patient's ``(K, C, S, S)`` network input, built once per content key."""
    logger = get_run_logger()
    paths = {}
    for i, (case_id, patient) in enumerate(sorted(patients.items()), start=1):
        paths[case_id] = inputs_lib.store_image_input(patient, params, work_dir)
        if i % 50 == 0 or i == len(patients):
            logger.info("image inputs: %d/%d patients", i, len(patients))
    return paths


def fold_task_key(inputs: dict[str, Any]) -> tuple[str, list[Path]]:
    fold: Fold = inputs["fold"]
    folder = folds_lib.fold_folder(inputs["work_dir"], fold.name, inputs["key"])
    return str(inputs["key"]), [folder / name for name in folds_lib.FILES]


@task(name="train-fold", task_run_name="train-{fold.name}")
def train_fold(fold: Fold, table_path: Path, image_paths: Mapping[str, Path] | None, training: TrainingParams,
               work_dir: Path, key: str, devices: int = 0) -> folds_lib.FoldResult:
    """Train one fold (see ``survival_model.training.folds``); with ``devices`` > 1 CUDA devices, under
    the GPU concurrency limit on a device no other fold holds."""
    from survival_model.training.loop import choose_device  # torch: only when a fold trains

    logger = get_run_logger()
    table = pd.read_parquet(table_path)

    def progress(r: EpochRecord) -> None:
        logger.info("%s epoch %d/%d: train loss %.4f, stopping loss %.4f, C-index %.3f (%.1f s)", fold.name,
                    r.epoch, training.fit.epochs, r.train_loss, r.stop_loss, r.stop_cindex, r.seconds)

    if devices > 1:
        with concurrency(GPU_LIMIT, occupy=1, strict=True), \
                claim_cuda_device(work_dir / "cache" / "gpu-locks", devices) as index:
            choice = choose_device(training.fit, index)
            logger.info("%s trains on %s", fold.name, choice.describe())
            return folds_lib.train_fold(fold, table, image_paths, training, work_dir, key, choice=choice,
                                        progress=progress)
    choice = choose_device(training.fit)
    logger.info("%s trains on %s", fold.name, choice.describe())
    return folds_lib.train_fold(fold, table, image_paths, training, work_dir, key, choice=choice, progress=progress)


def ensemble_key(inputs: dict[str, Any]) -> tuple[str, list[Path]]:
    folder = stage_lib.run_folder(inputs["work_dir"], inputs["key"])
    return inputs["key"], [folder / "result.json", folder / "metrics.json", folder / "predictions.parquet"]


@task(name="evaluate-ensemble", task_run_name="evaluate-ensemble")
def evaluate_ensemble(folds: list[folds_lib.FoldResult], table_path: Path, splits: Splits, splits_path: Path,
                      image_paths: Mapping[str, Path] | None, training: TrainingParams, evaluation: EvaluationParams,
                      oracle: pd.Series | None, work_dir: Path, key: str) -> stage_lib.TrainingResult:
    """The fold ensemble scored once on the locked test set."""
    result = stage_lib.evaluate_ensemble(folds, pd.read_parquet(table_path), splits, splits_path, image_paths,
                                         training, evaluation, oracle, work_dir, key)
    test = result.metrics["test"]["cindex"]
    get_run_logger().info("ensemble of %d folds: test C-index %.3f [%.3f, %.3f]", len(folds), test["value"],
                          test["low"], test["high"])
    return result
