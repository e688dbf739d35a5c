"""The registry flow: package the main network, register it as ``challenger`` (unless a version with the same
content is registered already), and gate it against the ``champion`` on the locked test set, once the
champion is known to share this run's pseudonym key (a version that holds ``champion`` already, promoted by
hand before it was gated, is not gated); plus :func:`model_rows`, the inputs a packaged model needs for a set of
cohort patients (shared with the prediction flow).

Registering and gating run under the registry's file lock (``survival_model.registry.registry.registry_lock``):
two runs on this machine with this work directory take turns there."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow, get_run_logger

from flows.imaging import imaging
from flows.progress import StageProgress
from flows.runners import task_runner_for
from survival_model.config import Params
from survival_model.evaluation.stage import EvaluationResult, rows
from survival_model.features.stage import FeatureTable
from survival_model.fingerprint import stable_hash
from survival_model.ingest.cohort import CohortResult
from survival_model.preprocess.stage import preprocessed_patients
from survival_model.registry import gate as gate_lib
from survival_model.registry import package as package_lib
from survival_model.registry.registry import (
    CHAMPION,
    Version,
    lock_file,
    registration_markdown,
    registry_lock,
)
from survival_model.training.splits import Splits
from survival_model.training.stage import TrainingResult
from tasks import registry as t
from tasks.common import configure
from tasks.privacy import pseudonymiser
from tasks.stage import StageTasks


@dataclass(frozen=True)
class RegistryResult:
    """What the registry flow did: the version, whether it is new, and the gate's decision (None when the
    version was registered and gated before)."""

    model_name: str
    version: int
    registered: bool
    package: Path
    decision: dict[str, Any] | None
    champion: int | None
    markdown: str


@dataclass(frozen=True)
class ModelRows:
    """A packaged model's prediction inputs for some patients, and the feature table they came from."""

    frame: pd.DataFrame
    table: FeatureTable
    failed: list[dict[str, str]]
    image_paths: dict[str, Path]
    seg_paths: dict[str, Path]


def model_rows(params: Params, cohort: CohortResult, table: FeatureTable | None, package: Path,
               case_ids: list[str] | None = None) -> ModelRows:
    """The inputs of the package's model for ``case_ids`` (default: every patient of the feature table),
    computed with the package's own preprocessing, feature and image-input settings: ``table`` is used as is
    when those equal the run's, else the imaging stages run again with the package's settings (cached)."""
    if table is None or not package_lib.same_inputs(params, package):
        params = package_lib.package_params(params, package)
        table = imaging.with_options(task_runner=task_runner_for(params))(params, cohort)
    frame = table.table()
    if case_ids is not None:
        present = set(frame["case_id"])
        frame = rows(frame, [c for c in case_ids if c in present])
    records: list[dict[str, Any]] = [{str(k): v for k, v in r.items()} for r in cohort.cohort().to_dict("records")]
    wanted = set(frame["case_id"])
    patients = {c: p for c, p in preprocessed_patients(records, params).items() if c in wanted}
    image_paths, failed = configure(t.package_inputs, params)(package, patients, params.work_dir)
    info = package_lib.read_info(package)
    return ModelRows(package_lib.model_input(info, frame, image_paths), table, failed, image_paths,
                     {c: p.mask for c, p in patients.items()})


def key_fingerprint(params: Params, cohort: CohortResult) -> str:
    """The fingerprint of the pseudonym key this run's case ids were made with (the cohort records it)."""
    recorded = cohort.summary.get("pseudonym_key_fingerprint")
    if recorded:
        return str(recorded)
    return pseudonymiser(params.privacy).fingerprint


def locked_test_scores(compared: EvaluationResult, name: str) -> dict[str, float]:
    """The main network's scores on the locked test set, from the evaluation's comparison table."""
    if name not in compared.comparison.index:
        return {}
    row = compared.comparison.loc[name].to_dict()
    return {f"test.{k}": float(row[k]) for k in ("harrell_c", "uno_c", "integrated_brier", "auc_12m")
            if k in row}  # NaN (undefined on this test set) is recorded as such


@flow(name="registry", flow_run_name="registry")
def registry(params: Params, cohort: CohortResult, table: FeatureTable, trained: TrainingResult,
             compared: EvaluationResult, run_id: str, run_link: str) -> RegistryResult:
    """Package -> register (``challenger``) -> promotion gate (``champion``, the decision tagged on the version).
    A package with the content of a registered version (same weights, fitted pipelines and settings, whatever
    the code version) finds that version: nothing new is registered or gated.
    The caller publishes the result on its MLflow run and Prefect flow run (``tasks.registry.publish_promotion``)."""
    logger = get_run_logger()
    build = package_lib.BuildPackage.of(trained, table, params, cohort.fingerprint, key_fingerprint(params, cohort))
    training_key = package_lib.training_key(trained)
    progress = StageProgress("registry", 3, "steps")
    package = StageTasks(params)(build)
    progress.advance()
    splits = Splits.load(trained.splits_path)
    challenger = model_rows(params, cohort, table, package, list(splits.test))
    tags = {"model": trained.name, "data_fingerprint": cohort.fingerprint, "training_key": training_key,
            "feature_table": table.folder.name, "splits": splits.fingerprint,
            "params_hash": stable_hash(params.model_dump(mode="json", include={
                "ingest", "preprocess", "features", "training", "evaluation", "registry"})),
            "code_version": package_lib.package_code_version(),
            **locked_test_scores(compared, trained.name)}
    lock = lock_file(params.work_dir, params.registry.model_name)

    def waiting(holder: str) -> None:
        logger.info("another registry run (%s) holds %s: waiting for it to finish", holder, lock)

    with registry_lock(lock, waiting):
        version, registered = t.register_model(params, run_id, run_link, package, build.key(), tags,
                                               challenger.frame.head(2))
        progress.advance()
        decision: gate_lib.Decision | None = None
        if registered or "gate.decision" not in version.tags:
            decision = gate(params, cohort, table, splits, version, package, challenger)
            if decision is None:  # it held champion already: tagged so
                version = t.registry(params).version(version.version)
        champion = t.registry(params).alias(CHAMPION)
    progress.advance()
    markdown = registration_markdown(params.registry.model_name, version, decision, run_link)
    logger.info("%s: version %d (%s); champion: %s", params.registry.model_name, version.version,
                "new" if registered else "registered before", f"v{champion.version}" if champion else "none")
    return RegistryResult(params.registry.model_name, version.version, registered, package,
                          decision.as_dict() if decision else None, champion.version if champion else None, markdown)


def gate(params: Params, cohort: CohortResult, table: FeatureTable, splits: Splits, version: Version,
         package: Path, challenger: ModelRows) -> gate_lib.Decision | None:
    """The challenger and the re-scored champion on the same locked test patients; a champion trained under
    another pseudonym key stops it (``gate_lib.PseudonymKeyError``: its training patients cannot be told).
    The decision is counted on the whole locked test set (``splits.test``), whichever of its patients were
    scored. None when ``version`` holds ``champion`` already (``tasks.registry.record_already_champion``): not
    gated."""
    current = t.registry(params).alias(CHAMPION)
    if current is not None and current.version == version.version:
        t.record_already_champion(params, current)
        return None
    champion = None
    test_ids = list(challenger.frame["case_id"])
    excluded = 0
    champion_rows = None
    if current is not None:
        champion = t.fetch_model(params, CHAMPION)
        info = package_lib.read_info(champion[1])
        gate_lib.check_pseudonym_key(info, key_fingerprint(params, cohort), f"champion v{champion[0].version}")
        test_ids, excluded = gate_lib.locked_patients(test_ids, list(info["development_case_ids"]))
        champion_rows = challenger.frame.iloc[:0]  # nobody left to score: the gate's decision is undefined
        if test_ids:
            # a patient whose image input failed under the champion's settings is left unscored (gate.unscored)
            champion_rows = package_lib.scorable_rows(model_rows(params, cohort, table, champion[1], test_ids).frame)
            scored = set(champion_rows["case_id"])
            test_ids = [c for c in test_ids if c in scored]
            champion_rows = champion_rows.set_index("case_id", drop=False).loc[test_ids].reset_index(drop=True)
    frame = table.table()
    locked = rows(frame, test_ids)
    challenger_rows = challenger.frame.set_index("case_id", drop=False).loc[test_ids].reset_index(drop=True)
    decision: gate_lib.Decision = t.promotion_gate(params, version, package, challenger_rows, champion,
                                                   champion_rows, rows(frame, splits.development), locked, excluded,
                                                   list(splits.test))
    return decision
