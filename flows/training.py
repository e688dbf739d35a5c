"""The training flow: splits, image inputs, one task per fold, the ensemble on the locked test set."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow, get_run_logger
from prefect.client.orchestration import get_client
from prefect.runtime import flow_run

from flows.progress import StageProgress, tracked
from survival_model import stages
from survival_model.config import NetworkVariant, Params
from survival_model.evaluation.oracle import oracle_risk
from survival_model.features.stage import FeatureTable
from survival_model.fingerprint import stable_hash
from survival_model.imageio import write_text
from survival_model.ingest.cohort import CohortResult
from survival_model.models.inputs import input_key, preprocessed_patients
from survival_model.training import folds as folds_lib
from survival_model.training import stage as stage_lib
from survival_model.training.devices import cuda_devices
from survival_model.training.splits import Splits, make_splits, with_source_digests
from tasks import privacy
from tasks import training as t
from tasks.common import configure


def persist_splits(splits: Splits, frame: pd.DataFrame, work_dir: Path) -> Path:
    """``<work_dir>/training/splits/<fingerprint>-<ids digest>/splits.json`` (+ a per-set, per-site summary
    CSV). The fingerprint does not depend on the pseudonymisation key; the ids digest does, so two keys
    never share (and overwrite or misread) one file."""
    folder = work_dir / folds_lib.STAGE / "splits" / f"{splits.fingerprint[:16]}-{splits.ids_digest[:8]}"
    path = folder / "splits.json"
    if not path.is_file():
        write_text(splits.summary(frame).to_csv(index=False), folder / "summary.csv")
        splits.save(path)
    return path


def parallel_devices(params: Params) -> int:
    """CUDA devices folds run in parallel on (0: one fold at a time)."""
    fit = params.training.fit
    count = cuda_devices() if fit.device != "cpu" else 0
    return count if fit.parallel_folds and count > 1 else 0


@flow(name="training", flow_run_name="training")
def training(params: Params, cohort: CohortResult, table: FeatureTable) -> stage_lib.TrainingResult:
    """Train the configured network per cross-validation fold and score the fold ensemble on the test set.

    When neither the data nor any training setting changed since a recorded run, that run's result is
    returned without a task (``survival_model.stages``); otherwise every fold is still cached on its own.
    """
    logger = get_run_logger()
    tp = params.training
    rows: list[dict[str, Any]] = [{str(k): v for k, v in r.items()} for r in cohort.cohort().to_dict("records")]
    frame = table.table()
    in_table = set(frame["case_id"])
    patients = {c: p for c, p in preprocessed_patients(rows, params).items() if c in in_table}
    if any_images(params):  # every network compared in this run is trained and tested on the same patients
        frame = frame[frame["case_id"].isin(patients)].reset_index(drop=True)
    splits = make_splits(with_source_digests(frame, cohort.cohort()), tp.splits,
                         pseudonym_key_fingerprint=cohort.summary.get("pseudonym_key_fingerprint"))
    splits_path = persist_splits(splits, frame, params.work_dir)
    logger.info("splits %s (%s): %d test patients (%.1f%%, %d deaths), %d development patients in %d folds (%s)",
                splits.fingerprint[:12], splits.rule, len(splits.test), 100 * splits.strata["test"]["fraction"],
                splits.strata["test"]["events"], len(splits.development), len(splits.folds), splits_path)
    input_keys = {c: input_key(p, tp.inputs) for c, p in patients.items()}
    oracle = oracle_scores(params)
    oracle_digest = stable_hash(sorted(oracle.items())) if oracle is not None else None
    key = stage_lib.stage_key(table.folder.name, input_keys, splits, tp, params.evaluation, oracle_digest)
    progress = StageProgress(flow_run.get_name() or "training", len(splits.folds), "folds")
    if params.orchestration.reuse_unchanged_stages:
        reused = stages.reuse(params.work_dir, folds_lib.STAGE, key, stage_lib.load_result)
        if reused is not None:
            progress.finish()
            logger.info("training unchanged (stage key %s): reusing %s", key[:12], reused.folder)
            return reused

    image_paths = None
    if folds_lib.uses_images(tp.network):
        image_paths = configure(t.image_inputs, params, t.inputs_key)(patients, tp.inputs, params.work_dir)
    fold_task = configure(t.train_fold, params, t.fold_task_key)
    devices = parallel_devices(params)
    keys = {f.name: folds_lib.fold_key(f, table.folder.name, input_keys, tp) for f in splits.folds}
    if devices:
        ensure_gpu_limit(devices)
        futures = [fold_task.submit(f, table.table_path, image_paths, tp, params.work_dir, keys[f.name], devices)
                   for f in splits.folds]
        for _ in tracked(futures, progress):
            pass
        folds = [future.result() for future in futures]
    else:  # one device or CPU: one fold at a time, each using every core
        folds = []
        for f in splits.folds:
            folds.append(fold_task(f, table.table_path, image_paths, tp, params.work_dir, keys[f.name]))
            progress.advance()
    result = configure(t.evaluate_ensemble, params, t.ensemble_key)(
        folds, table.table_path, splits, splits_path, image_paths, tp, params.evaluation, oracle, params.work_dir,
        key)
    outputs = [*result.files(), *(p for f in folds for p in f.files()), *(image_paths or {}).values()]
    stages.save_stage(params.work_dir, folds_lib.STAGE, key, result.folder, outputs)
    return result


def any_images(params: Params) -> bool:
    """Whether the main network or one compared with it has an image branch."""
    return any(folds_lib.uses_images(v.apply(params.training.network))
               for v in [NetworkVariant(), *params.evaluation.networks])


def variant_params(params: Params, variant: NetworkVariant) -> Params:
    """``params`` with ``training.network`` overridden by ``variant``."""
    network = variant.apply(params.training.network)
    return params.model_copy(update={"training": params.training.model_copy(update={"network": network})})


def oracle_scores(params: Params) -> pd.Series | None:
    """The ground truth's risk by case id, when ``evaluation.ground_truth`` names an existing table."""
    truth = params.evaluation.ground_truth
    if truth is None or not truth.path.is_file():
        return None
    return oracle_risk(truth, privacy.pseudonymiser(params.privacy))


def ensure_gpu_limit(devices: int) -> None:
    """The Prefect global concurrency limit allowing one fold per CUDA device."""
    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(t.GPU_LIMIT, devices)

