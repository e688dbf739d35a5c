"""The evaluation flow: the trained networks beside the clinical baselines and the oracle, the main
network explained (permutation importance, Grad-CAM), and the report."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from flows.progress import StageProgress
from flows.training import any_images, oracle_scores
from survival_model.config import Params
from survival_model.evaluation.stage import (
    Evaluate,
    EvaluationImages,
    EvaluationResult,
    evaluation_files,
    evaluation_stage,
)
from survival_model.features.stage import FeatureTable
from survival_model.ingest.cohort import CohortResult
from survival_model.models.inputs import ImageInput
from survival_model.patient import Patient
from survival_model.preprocess.stage import preprocessed_patients
from survival_model.registry.gate import fingerprint_test_set
from survival_model.training.splits import Splits
from survival_model.training.stage import TrainingResult
from tasks import evaluation as t
from tasks.common import configure
from tasks.registry import registry
from tasks.stage import StageTasks


def stored_inputs(patients: Mapping[str, Patient], params: Params) -> dict[str, Path]:
    """The image inputs the training stage built, found through their content keys (never built here)."""
    stages = {c: ImageInput(p, params.training.inputs, params.work_dir) for c, p in patients.items()}
    paths = {c: s.load(s.folder()) for c, s in stages.items()}
    missing = [c for c, path in paths.items() if path is None]
    if missing:
        raise FileNotFoundError(f"{len(missing)} image input(s) are not built (run the training stage first), "
                                f"e.g. {stages[missing[0]].folder()}")
    return {c: path for c, path in paths.items() if path is not None}


def evaluation_images(params: Params, cohort: CohortResult, table: FeatureTable) -> EvaluationImages:
    """The feature-table patients' image inputs (built by the training stage) and label maps."""
    rows: list[dict[str, Any]] = [{str(k): v for k, v in r.items()} for r in cohort.cohort().to_dict("records")]
    in_table = set(table.table()["case_id"])
    patients = {c: p for c, p in preprocessed_patients(rows, params).items() if c in in_table}
    return EvaluationImages(stored_inputs(patients, params), {c: p.mask for c, p in patients.items()},
                            params.training.inputs)


def gate_decisions_served(params: Params, trained: TrainingResult) -> int | None:
    """How many promotion-gate decisions this run's locked test set served before (None without a registry)."""
    if not params.registry.enabled:
        return None
    return registry(params).test_set_decisions(fingerprint_test_set(Splits.load(trained.splits_path).test))


@flow(name="evaluation", flow_run_name="evaluation")
def evaluation(params: Params, cohort: CohortResult, table: FeatureTable,
               trained: Sequence[TrainingResult]) -> EvaluationResult:
    """One comparison of every network with the baselines and the oracle, out of fold on the development
    patients and on the locked test set (the first network is the main one, explained and reported), reused
    whole when nothing it reads changed; the report is re-rendered (seconds) when the number of gate decisions
    the test set has served changed."""
    logger = get_run_logger()
    stage = Evaluate(tuple(trained), table, tuple(params.training.tabular.clinical), params.evaluation,
                     oracle_scores(params), params.work_dir)
    whole = evaluation_stage(stage)
    decisions = gate_decisions_served(params, trained[0])
    key_print = cohort.summary.get("pseudonym_key_fingerprint")
    report = configure(t.write_report, params)
    progress = StageProgress("evaluation", 2, "steps")
    if params.orchestration.reuse_unchanged_stages and (reused := whole.load()) is not None:
        logger.info("evaluation unchanged (stage key %s): reusing %s", whole.key()[:12], reused.folder)
        if not reused.reports(decisions):
            logger.info("the locked test set has served %s gate decision(s) since: re-rendering the report",
                        decisions)
            report(stage, reused, decisions, key_print)
        progress.finish()
        return reused
    if any_images(params):
        stage = stage.with_images(evaluation_images(params, cohort, table))
    result = StageTasks(params)(stage)
    progress.advance()
    if not result.reports(decisions):
        report(stage, result, decisions, key_print)
    progress.advance()
    whole.save(result.folder, evaluation_files(result.folder, report=True))
    logger.info("report: %s", result.report_html)
    return result
