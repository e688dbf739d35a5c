"""The evaluation flow: the trained networks beside the clinical baselines and the oracle, the main
network explained (permutation importance, Grad-CAM), and the report."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from flows.progress import StageProgress
from flows.training import any_images, oracle_scores
from survival_model import stages
from survival_model.config import Params
from survival_model.evaluation import stage as lib
from survival_model.features.stage import FeatureTable
from survival_model.fingerprint import stable_hash
from survival_model.ingest.cohort import CohortResult
from survival_model.models import inputs as inputs_lib
from survival_model.models.inputs import preprocessed_patients
from survival_model.preprocess.stage import PreprocessedPatient
from survival_model.training.stage import TrainingResult
from tasks import evaluation as t
from tasks.common import configure


def stored_inputs(patients: Mapping[str, PreprocessedPatient], params: Params) -> dict[str, Path]:
    """The image inputs the training stage built, found through their content keys (never built here)."""
    paths = {c: inputs_lib.input_folder(params.work_dir, p.site, c, inputs_lib.input_key(p, params.training.inputs))
             / inputs_lib.INPUT_FILE for c, p in patients.items()}
    missing = [c for c, path in paths.items() if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} image input(s) are not built (run the training stage first), "
                                f"e.g. {paths[missing[0]]}")
    return paths


def gate_decisions_served(params: Params, trained: TrainingResult) -> int | None:
    """How many promotion-gate decisions this run's locked test set served before (None without a registry)."""
    if not params.registry.enabled:
        return None
    from survival_model.registry.gate import fingerprint_test_set
    from survival_model.training.splits import Splits
    from tasks.registry import registry

    return registry(params).test_set_decisions(fingerprint_test_set(Splits.load(trained.splits_path).test))


@flow(name="evaluation", flow_run_name="evaluation")
def evaluation(params: Params, cohort: CohortResult, table: FeatureTable,
               trained: Sequence[TrainingResult]) -> lib.EvaluationResult:
    """One comparison of every network with the baselines and the oracle, out of fold on the development
    patients and on the locked test set (the first network is the main one, explained and reported), reused
    whole when nothing it reads changed; the report is re-rendered (seconds) when the number of gate decisions
    the test set has served changed."""
    logger = get_run_logger()
    oracle = oracle_scores(params)
    clinical = list(params.training.tabular.clinical)
    decisions = gate_decisions_served(params, trained[0])
    key_print = cohort.summary.get("pseudonym_key_fingerprint")
    truth = params.evaluation.ground_truth
    known = list(truth.known_effects) if truth is not None and oracle is not None else []
    key = lib.evaluation_key([r.folder.name for r in trained], table.folder.name, clinical, params.evaluation,
                             stable_hash(sorted(oracle.items())) if oracle is not None else None)
    progress = StageProgress("evaluation", 3, "steps")
    if params.orchestration.reuse_unchanged_stages:
        reused = stages.reuse(params.work_dir, lib.STAGE, key, lib.load_evaluation)
        if reused is not None:
            logger.info("evaluation unchanged (stage key %s): reusing %s", key[:12], reused.folder)
            if reused.report_decisions() != decisions:
                logger.info("the locked test set has served %s gate decision(s) since: re-rendering the report",
                            decisions)
                configure(t.report, params, t.report_key)(
                    table.table_path, reused, trained[0], reused.folder / "explanation", params.evaluation, known,
                    reused.folder, decisions, key_print)
            progress.finish()
            return reused
    folder = lib.evaluation_folder(params.work_dir, key)
    image_paths = seg_paths = None
    if any_images(params):
        rows: list[dict[str, Any]] = [{str(k): v for k, v in r.items()} for r in cohort.cohort().to_dict("records")]
        in_table = set(table.table()["case_id"])
        patients = {c: p for c, p in preprocessed_patients(rows, params).items() if c in in_table}
        image_paths = stored_inputs(patients, params)
        seg_paths = {c: p.mask for c, p in patients.items()}
    compared = configure(t.compare_models, params, t.compare_key)(
        table.table_path, list(trained), image_paths, clinical, params.evaluation, oracle, folder)
    progress.advance()
    explanation = configure(t.explain_models, params, t.explain_key)(
        table.table_path, list(trained), image_paths, seg_paths, params.training.inputs, params.evaluation, folder)
    progress.advance()
    configure(t.report, params, t.report_key)(
        table.table_path, compared, trained[0], explanation, params.evaluation, known, folder, decisions, key_print)
    progress.advance()
    result = lib.load_evaluation(folder)
    if result is None:  # pragma: no cover - every part was written above
        raise FileNotFoundError(folder / "report" / "report.html")
    stages.save_stage(params.work_dir, lib.STAGE, key, result.folder, result.files())
    logger.info("report: %s", result.report_html)
    return result
