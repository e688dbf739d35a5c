"""The training flow: splits, one image input per patient, one fold per task, the ensemble on the locked test
set (``survival_model.training.folds``, ``survival_model.evaluation.ensemble``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from flows.progress import StageProgress, tracked
from survival_model.config import NetworkVariant, Params
from survival_model.evaluation.ensemble import ScoreEnsemble, training_outputs, training_stage
from survival_model.evaluation.oracle import oracle_risk
from survival_model.features.stage import FeatureTable
from survival_model.imageio import write_text
from survival_model.ingest.cohort import CohortResult
from survival_model.models.inputs import ImageInput, check_sequences_present
from survival_model.preprocess.stage import preprocessed_patients
from survival_model.training import devices
from survival_model.training.folds import STAGE, TrainFold, uses_images
from survival_model.training.splits import Splits, make_splits, with_source_digests
from survival_model.training.stage import TrainingResult
from tasks import privacy
from tasks.stage import StageTasks


def persist_splits(splits: Splits, frame: pd.DataFrame, work_dir: Path) -> Path:
    """``<work_dir>/training/splits/<fingerprint>-<ids digest>/splits.json`` (+ a per-set, per-site summary
    CSV). The fingerprint does not depend on the pseudonymisation key; the ids digest does, so two keys
    never share (and overwrite or misread) one file."""
    folder = work_dir / STAGE / "splits" / f"{splits.fingerprint[:16]}-{splits.ids_digest[:8]}"
    path = folder / "splits.json"
    if not path.is_file():
        write_text(splits.summary(frame).to_csv(index=False), folder / "summary.csv")
        splits.save(path)
    return path


def on_workers(params: Params) -> bool:
    """Whether the flow's task runner trains folds on other machines (Dask), whose devices the flow cannot see."""
    return params.orchestration.task_runner == "dask"


def folds_at_once(params: Params) -> bool:
    """Whether every fold is submitted at once. On Dask: unless ``training.fit.parallel_folds`` is off (each worker
    takes a free device of its own host as a fold starts, ``survival_model.training.devices``; the flow's host may
    have no GPU at all); otherwise only with several CUDA devices on this host, one fold per device."""
    if on_workers(params):
        return params.training.fit.parallel_folds
    return devices.parallel_devices(params.training.fit) > 0


@flow(name="training", flow_run_name="training")
def training(params: Params, cohort: CohortResult, table: FeatureTable) -> TrainingResult:
    """Train the configured network per cross-validation fold and score the fold ensemble on the test set.

    When neither the data nor any training setting changed since a recorded run, that run's result is
    returned without a task (``survival_model.stage.WholeStage``); otherwise every image input and every fold
    is still cached on its own.
    """
    logger = get_run_logger()
    tp = params.training
    rows: list[dict[str, Any]] = [{str(k): v for k, v in r.items()} for r in cohort.cohort().to_dict("records")]
    frame = table.table()
    in_table = set(frame["case_id"])
    patients = {c: p for c, p in sorted(preprocessed_patients(rows, params).items()) if c in in_table}
    if any_images(params):  # every network compared in this run is trained and tested on the same patients
        frame = frame[frame["case_id"].isin(patients)].reset_index(drop=True)
    splits = make_splits(with_source_digests(frame, cohort.cohort()), tp.splits,
                         pseudonym_key_fingerprint=cohort.summary.get("pseudonym_key_fingerprint"))
    splits_path = persist_splits(splits, frame, params.work_dir)
    logger.info("splits %s (%s): %d test patients (%.1f%%, %d deaths), %d development patients in %d folds (%s)",
                splits.fingerprint[:12], splits.rule, len(splits.test), 100 * splits.strata["test"]["fraction"],
                splits.strata["test"]["events"], len(splits.development), len(splits.folds), splits_path)
    if uses_images(tp.network):  # a sequence channel no development patient has cannot be learned: refused
        present = check_sequences_present(tp.inputs, {c: patients[c].images for c in splits.development})
        logger.info("image channels: development patients with each sequence (zeros where absent): %s",
                    ", ".join(f"{s} {n}/{len(splits.development)}" for s, n in present.items()))
    inputs = {c: ImageInput(p, tp.inputs, params.work_dir) for c, p in patients.items()}
    folds = tuple(TrainFold(f, table, inputs, tp, params.work_dir) for f in splits.folds)
    score = ScoreEnsemble(folds, table, inputs, splits, splits_path, tp, params.evaluation, oracle_scores(params),
                          params.work_dir)
    whole = training_stage(score)
    progress = StageProgress(flow_run.get_name() or "training", len(folds), "folds")
    if params.orchestration.reuse_unchanged_stages and (reused := whole.load()) is not None:
        progress.finish()
        logger.info("training unchanged (stage key %s): reusing %s", whole.key()[:12], reused.folder)
        return reused

    run = StageTasks(params)
    if uses_images(tp.network):
        built = [f.result() for f in [run.submit(s) for s in inputs.values()]]
        logger.info("image inputs: %d patients", len(built))
    if folds_at_once(params):  # one fold per CUDA device at a time (survival_model.training.devices)
        for trained in tracked([run.submit(f) for f in folds], progress):
            trained.result()
    else:  # one device or CPU: one fold at a time, each using every core (on a worker with Dask, never here)
        for f in folds:
            if on_workers(params):
                run.submit(f).result()
            else:
                run(f)
            progress.advance()
    result = run(score)
    whole.save(result.folder, training_outputs(score))
    return result


def any_images(params: Params) -> bool:
    """Whether the main network or one compared with it has an image branch."""
    return any(uses_images(v.apply(params.training.network))
               for v in [NetworkVariant(), *params.evaluation.networks])


def variant_params(params: Params, variant: NetworkVariant) -> Params:
    """``params`` with ``training.network`` overridden by ``variant``."""
    network = variant.apply(params.training.network)
    return params.model_copy(update={"training": params.training.model_copy(update={"network": network})})


def compared_networks(params: Params) -> list[Params]:
    """The params of each further network compared with the main one (``evaluation.networks``)."""
    return [variant_params(params, variant) for variant in params.evaluation.networks]


def network_label(params: Params) -> str:
    """A network's name in flow runs: ``<variant>-<objective>[-<fusion>]-<backbone>`` (``tabular-<objective>``)."""
    net = params.training.network
    if net.variant == "tabular":
        return f"tabular-{net.objective}"
    fusion = f"-{net.fusion}" if net.fusion != "additive" and net.variant == "hybrid" else ""
    return f"{net.variant}-{net.objective}{fusion}-{net.backbone}"


def oracle_scores(params: Params) -> pd.Series | None:
    """The ground truth's risk by case id, when ``evaluation.ground_truth`` names an existing table."""
    truth = params.evaluation.ground_truth
    if truth is None or not truth.path.is_file():
        return None
    return oracle_risk(truth, privacy.pseudonymiser(params.privacy))
