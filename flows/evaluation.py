"""The evaluation flow: the trained network beside the clinical baselines and the oracle."""

from __future__ import annotations

from prefect import flow, get_run_logger

from flows.training import oracle_scores
from survival_model import stages
from survival_model.config import Params
from survival_model.evaluation import stage as lib
from survival_model.features.stage import FeatureTable
from survival_model.fingerprint import stable_hash
from survival_model.training.stage import TrainingResult
from tasks import evaluation as t
from tasks.common import configure


@flow(name="evaluation", flow_run_name="evaluation")
def evaluation(params: Params, table: FeatureTable, trained: TrainingResult) -> lib.EvaluationResult:
    """One comparison table on the locked test set (reused whole when nothing it reads changed)."""
    logger = get_run_logger()
    oracle = oracle_scores(params)
    clinical = list(params.training.tabular.clinical)
    key = lib.evaluation_key(trained.folder.name, table.folder.name, clinical, params.evaluation,
                             stable_hash(sorted(oracle.items())) if oracle is not None else None)
    if params.orchestration.reuse_unchanged_stages:
        reused = stages.reuse(params.work_dir, lib.STAGE, key, lib.load_evaluation)
        if reused is not None:
            logger.info("evaluation unchanged (stage key %s): reusing %s", key[:12], reused.folder)
            return reused
    result = configure(t.compare_models, params, t.compare_key)(
        table.table_path, trained, clinical, params.evaluation, oracle, params.work_dir, key)
    stages.save_stage(params.work_dir, lib.STAGE, key, result.folder, result.files())
    return result
