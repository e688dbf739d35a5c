"""Evaluation task: the network, the clinical baselines and the oracle scored on the same test set."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from prefect import get_run_logger, task

from survival_model.config import EvaluationParams
from survival_model.evaluation import stage as lib
from survival_model.training.splits import Splits
from survival_model.training.stage import TrainingResult


def compare_key(inputs: dict[str, Any]) -> tuple[str, list[Path]]:
    folder = lib.evaluation_folder(inputs["work_dir"], inputs["key"])
    return str(inputs["key"]), [folder / name for name in lib.FILES]


@task(name="compare-models", task_run_name="compare-models")
def compare_models(table_path: Path, trained: TrainingResult, clinical: list[str], evaluation: EvaluationParams,
                   oracle: pd.Series | None, work_dir: Path, key: str) -> lib.EvaluationResult:
    """Fit the baselines on the development patients and score every model once on the test set."""
    logger = get_run_logger()
    splits = Splits.load(trained.splits_path)
    predictions = trained.predictions().set_index("case_id")["risk"]
    cv = trained.metrics["cv"]
    logger.info("scoring %s, %s%s on %d test patients (%d bootstrap resamples)", trained.name,
                ", ".join(evaluation.baselines), " and the oracle" if oracle is not None else "", len(splits.test),
                evaluation.score_resamples)
    return lib.run_comparison(pd.read_parquet(table_path), splits, trained.out_of_fold(), predictions,
                              {"mean": cv["val_cindex_mean"], "sd": cv["val_cindex_sd"]}, clinical, evaluation,
                              oracle, work_dir, key, trained.name)
