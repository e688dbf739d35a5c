"""Registry tasks: the MLflow operations of ``survival_model.registry`` (register a package as ``challenger``,
fetch a registered one, the promotion gate, aliases, the result on the run and in the Prefect UI).

Building the package and predicting for new patients are content-keyed stages
(``survival_model.registry.package.BuildPackage``, ``survival_model.registry.predict.Predict``), run by
``tasks.stage.StageTasks``; what is here reads or changes the registry, which no content key describes."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from survival_model.config import Params
from survival_model.imageio import atomic_directory
from survival_model.patient import Patient
from survival_model.registry import gate as gate_lib
from survival_model.registry import package as package_lib
from survival_model.registry import predict as predict_lib
from survival_model.registry.registry import (
    ALREADY_CHAMPION,
    IDENTITY_TAG,
    Registry,
    Version,
    log_model,
    package_identity,
)
from survival_model.tracking import Tracker
from tasks.tracking import table_rows


def registry(params: Params) -> Registry:
    return Registry(Tracker.from_params(params).client, params.registry.model_name)


@task(name="register-model", task_run_name="register-model", retries=2, retry_delay_seconds=[2, 10])
def register_model(params: Params, run_id: str, run_link: str, package: Path, key: str, tags: dict[str, Any],
                   example: pd.DataFrame) -> tuple[Version, bool]:
    """A new registered version aliased ``challenger`` (logged as a pyfunc model in the pipeline's MLflow
    run), or the version already registered from a package with the same content (its identity: weights,
    fitted pipelines, settings; not the code version): ``(version, newly registered)``."""
    logger = get_run_logger()
    reg = registry(params)
    identity = package_identity(package)
    existing = reg.find_version(identity)
    if existing is not None:
        logger.info("%s version %d was registered from this package's content already (identity %s): nothing new "
                    "to register", reg.name, existing.version, identity[:12])
        return existing, False
    model = package_lib.PackagedModel.load(package)
    uri = log_model(reg.client, run_id, package, example, model.predict(example))
    version = reg.register(uri, run_id, {**tags, "package_key": key, IDENTITY_TAG: identity}, run_link=run_link)
    logger.info("%s version %d registered with alias challenger (%s)", reg.name, version.version, uri)
    return version, True


@task(name="fetch-model", task_run_name="fetch-model-{reference}", retries=2, retry_delay_seconds=[2, 10])
def fetch_model(params: Params, reference: str) -> tuple[Version, Path]:
    """A registered version's package, downloaded once to ``<work_dir>/registry/models/<name>/<version>``.
    ``reference``: an alias (``champion``, ``challenger``) or a version number."""
    import mlflow.artifacts  # mlflow: loaded with the client (registry()), not with the flows importing this module

    reg = registry(params)
    if reference.isdigit():
        version = reg.version(int(reference))
    else:
        found = reg.alias(reference)
        if found is None:
            raise package_lib.PackageError(f"model {reg.name!r} has no version with the alias {reference!r} "
                                           "(run the pipeline first, or promote a version by hand)")
        version = found
    # keyed by version and run: a registry rebuilt from scratch reuses version numbers
    target = params.work_dir / "registry" / "models" / reg.name / f"{version.version}-{(version.run_id or '')[:12]}"
    if not any(target.rglob(package_lib.PACKAGE_FILE)):
        source = reg.client.get_model_version_download_uri(reg.name, str(version.version))
        with atomic_directory(target) as tmp:
            mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(tmp),
                                                tracking_uri=Tracker.from_params(params).tracking_uri)
    packages = sorted(target.rglob(package_lib.PACKAGE_FILE))
    if not packages:
        raise package_lib.PackageError(f"{reg.name} version {version.version} holds no model package")
    return version, packages[0].parent


@task(name="package-inputs", task_run_name="package-inputs")
def package_inputs(package: Path, patients: Mapping[str, Patient],
                   work_dir: Path) -> tuple[dict[str, Path], list[dict[str, str]]]:
    """The patients' image inputs as this package's model needs them (content-keyed, reused)."""
    info = package_lib.read_info(package)  # the settings only: no network is loaded
    params = package_lib.package_settings(info, package)[2] if info["uses_images"] else None
    return predict_lib.image_inputs(patients, params, work_dir)


@task(name="promotion-gate", task_run_name="promotion-gate-v{version.version}")
def promotion_gate(params: Params, version: Version, challenger: Path, challenger_rows: pd.DataFrame,
                   champion: tuple[Version, Path] | None, champion_rows: pd.DataFrame | None,
                   development: pd.DataFrame, test: pd.DataFrame, excluded: int,
                   locked_test_set: list[str]) -> gate_lib.Decision:
    """Score the challenger and the champion on the same test patients, decide, count the decision on the
    locked test set (``locked_test_set``: its case ids, whatever part of it ``test`` holds), record, move the
    alias.

    ``*_rows``: each model's prediction inputs for the rows of ``test`` (same order); ``excluded``: locked test
    patients left out because the champion trained on them."""
    logger = get_run_logger()
    reg = registry(params)
    load = package_lib.PackagedModel.load
    decision = gate_lib.judge(
        load(challenger), challenger_rows,
        (f"champion v{champion[0].version}", load(champion[1]), champion_rows)
        if champion is not None and champion_rows is not None else None,
        development, test, params.registry.gate, tau=params.evaluation.tau_days, excluded=excluded,
        locked_test_set=locked_test_set)
    if decision.read_test_set:  # no patient scored: no outcome was read, nothing to count
        decision = decision.counted(reg.record_test_set_decision(decision.test_set))
    reg.tag_version(version.version, decision.tags())
    if decision.promote:
        reg.set_champion(version.version, reason=decision.reason, by="promotion gate")
    logger.info("promotion gate for %s version %d: %s (%s); test set %s: decision %d on it", reg.name,
                version.version, decision.outcome, decision.reason, decision.test_set, decision.test_set_decisions)
    return decision


@task(name="record-already-champion", task_run_name="record-already-champion-v{version.version}")
def record_already_champion(params: Params, version: Version) -> None:
    """Tag a version that holds ``champion`` before any gate decision (promoted by hand, e.g. after a
    ``PseudonymKeyError``) ``gate.decision: already champion``, and do not gate it: against the GPA as a first
    model it would read (and count) the locked test set for nothing, and could tag the champion ``refused``."""
    reg = registry(params)
    how = f"{version.tags.get('champion.by', 'by hand')}: {version.tags.get('champion.reason', 'no reason recorded')}"
    reason = (f"version {version.version} held the champion alias before any gate decision ({how}); it is not "
              "gated: the locked test set was not read and no decision was counted")
    reg.tag_version(version.version, {"gate.decision": ALREADY_CHAMPION, "gate.reason": reason[:4000]})
    get_run_logger().info("%s version %d: %s", reg.name, version.version, reason)


@task(name="publish-promotion")
def publish_promotion(params: Params, run_id: str, result: Any) -> None:
    """The registry flow's result (``flows.registry.RegistryResult``) on the MLflow run (tags,
    ``registry/decision.json``) and in the Prefect UI (the decision, the versions table)."""
    tracker = Tracker.from_params(params)
    decision = result.decision
    tags = {"registry.model": result.model_name, "registry.version": str(result.version),
            "registry.new_version": str(result.registered).lower()}
    if decision is not None:
        tags["registry.gate"] = str(decision["outcome"])
        tags["gate.test_set"] = str(decision["test_set"])
        tags["gate.test_set_decisions"] = str(decision["test_set_decisions"])
    tracker.set_tags(run_id, tags)
    tracker.log_dict(run_id, {"version": result.version, "registered_now": result.registered, "decision": decision,
                              "champion": result.champion}, "registry/decision.json")
    create_markdown_artifact(result.markdown, key="promotion-decision",
                             description=f"{result.model_name}: registration and the promotion gate")
    create_table_artifact(table_rows(registry(params).table()), key="model-versions",
                          description=f"{result.model_name}: versions, aliases")


@task(name="log-predictions", retries=2, retry_delay_seconds=[2, 10])
def log_predictions(params: Params, run_id: str, folder: Path, info: Mapping[str, Any]) -> tuple[str, int, int]:
    """The predictions on their MLflow run and as Prefect table artifacts: ``(run link, patients predicted,
    patients not predicted)``."""
    tracker = Tracker.from_params(params)
    predictions = pd.read_parquet(folder / "predictions.parquet")
    not_predicted = pd.read_csv(folder / "not_predicted.csv")
    tracker.set_tags(run_id, {k: str(v) for k, v in info.items() if k in ("model", "version", "model_uri")})
    tracker.log_metrics(run_id, {"patients_predicted": len(predictions), "patients_not_predicted": len(not_predicted)})
    tracker.log_folder(run_id, folder, artifact_path="predictions")
    create_table_artifact(table_rows(predictions.round(4)), key="predictions",
                          description=f"{info.get('model')} v{info.get('version')}: per-patient predictions")
    if len(not_predicted):
        create_table_artifact(table_rows(not_predicted.fillna("")), key="not-predicted",
                              description="Patients not predicted, with the reason")
    return tracker.run_url(run_id), len(predictions), len(not_predicted)
