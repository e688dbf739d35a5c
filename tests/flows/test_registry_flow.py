"""The registry end to end on the tiny cohort, under a Prefect test harness and a temporary SQLite MLflow
store: the pipeline packages, registers (``challenger``) and gates its model, counting the decision on its
test set; an unchanged second run registers nothing; a deliberately worse model is refused and a better one
promoted; promotion by hand and rollback; the pyfunc model round-trips; the prediction flow predicts new
patients and reports bad ones.

On 4-5 test patients the default gate (a one-sided 95 % paired bootstrap bound) can never show anything, so
these tests make it permissive (confidence 0.5: the median of the paired bootstrap difference; the Brier part
left out, since a few test patients censored at the short development follow-up leave no times to integrate
over) and check what must hold whatever the rule: the worse of two models is never promoted, and the
decisions, reasons and tags say why."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from flows.cli import INPUT_SITE, input_institution
from flows.pipeline import pipeline
from flows.predict import predict
from flows.registry import gate, model_rows
from survival_model.config import Params
from survival_model.errors import ConfigError
from survival_model.evaluation.stage import rows
from survival_model.imageio import read_json, write_json
from survival_model.registry import package as package_lib
from survival_model.registry.registry import CHALLENGER, CHAMPION, Registry
from survival_model.synthetic.cohort import GeneratorConfig, generate_cohort
from survival_model.tracking import Tracker
from survival_model.training.splits import Splits
from survival_model.training.stage import load_result
from tasks import registry as t
from tests.conftest import PIPELINE_SETTINGS, REPO, TINY, PipelineRun, overrides_for

pytestmark = pytest.mark.usefixtures("prefect_harness")

FIRST = PIPELINE_SETTINGS
Run = PipelineRun


@pytest.fixture()
def first_run(pipeline_run: PipelineRun) -> PipelineRun:
    """The session's pipeline run (``tests.conftest.pipeline_run``): its first registered model."""
    return pipeline_run


def test_the_pipeline_registers_a_challenger_and_gates_it(first_run: Run) -> None:
    registered = first_run.result.registry
    assert registered is not None and registered.registered and registered.version == 1
    reg = first_run.registry()
    version = reg.version(1)
    assert set(version.aliases) == {CHALLENGER, CHAMPION}  # the first model, promoted (no baseline asked for)
    for tag in ("data_fingerprint", "params_hash", "code_version", "package_key", "package_identity",
                "test.harrell_c", "gate.decision", "gate.challenger.uno_c", "gate.test_set"):
        assert tag in version.tags, tag
    assert version.tags["gate.decision"] == "promoted" and version.run_id == first_run.result.mlflow_run_id
    assert version.tags["gate.test_set_decisions"] == "1"  # the first decision on this test set
    assert reg.test_set_decisions(version.tags["gate.test_set"]) == 1
    run = Tracker.from_params(first_run.params).client.get_run(first_run.result.mlflow_run_id)
    assert run.data.tags["registry.version"] == "1" and run.data.tags["registry.gate"] == "promoted"
    assert run.data.tags["gate.test_set"] == version.tags["gate.test_set"]
    assert run.data.tags["gate.test_set_decisions"] == "1"
    from tasks.privacy import pseudonymiser

    info = package_lib.read_info(registered.package)
    assert info["pseudonym_key_fingerprint"] == pseudonymiser(first_run.params.privacy).fingerprint
    assert reg.history()[-1]["version"] == 1 and reg.history()[-1]["by"] == "promotion gate"


def test_an_unchanged_second_run_registers_nothing_new(first_run: Run) -> None:
    again = pipeline(str(REPO / "params.yaml"), first_run.overrides)
    assert again.registry is not None and not again.registry.registered and again.registry.decision is None
    assert [v.version for v in first_run.registry().versions()] == [1]
    assert "nothing new to register" in again.registry.markdown


def flipped(package: Path, target: Path) -> Path:
    """The same model with its risk negated (every output layer and the offset times -1): deliberately worse."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(package, target)
    for weights in target.glob("folds/*/model.safetensors"):
        state = load_file(str(weights))
        # the last linear layer of each branch that ends in the output: the tabular term, the image term (or
        # the concat head)
        for branch in ("tabular.", "image_head.bottleneck.", "image_head.linear", "head."):
            layers = sorted({k.rsplit(".", 1)[0] for k in state if k.startswith(branch) and k.endswith(".weight")},
                            key=lambda name: [int(p) if p.isdigit() else p for p in name.split(".")])
            if not layers or (branch == "tabular." and any(k.startswith("head.") for k in state)):
                continue  # a concat network's tabular MLP feeds the head: only the head's output is flipped
            for suffix in ("weight", "bias"):
                state[f"{layers[-1]}.{suffix}"] = -state[f"{layers[-1]}.{suffix}"]
        state["output_offset"] = -state["output_offset"]
        save_file(state, str(weights))
    return target


def as_new_package(package: Path, target: Path, horizon: int = 36, **changes: Any) -> Path:
    """A copy of ``package`` that is another model by content (another prediction horizon; ``changes`` to its
    ``package.json``): registering an exact copy finds the version it is already (a version is identified by
    what it is)."""
    copy = shutil.copytree(package, target)
    info = read_json(copy / "package.json")
    write_json({**info, "horizons_months": [*info["horizons_months"], horizon], **changes}, copy / "package.json")
    return copy


def register(run: Run, package: Path, key: str) -> Any:
    """Register ``package`` as a new version and gate it as the registry flow does: ``(decision, version)``."""
    new = registered(run, package, key)
    return new.gate(), new.version


@dataclass
class Registered:
    """A version registered by hand, with what the registry flow's ``gate`` needs to gate it."""

    version: Any
    package: Path
    params: Params
    cohort: Any
    table: Any
    splits: Splits
    challenger: Any

    def gate(self, version: Any = None) -> Any:
        return gate(self.params, self.cohort, self.table, self.splits, version or self.version, self.package,
                    self.challenger)


def registered(run: Run, package: Path, key: str) -> Registered:
    """Register ``package`` as a new version (``challenger``), not gated yet."""
    from prefect.logging import disable_run_logger

    params = run.params
    tracker = Tracker.from_params(params)
    run_id = tracker.start_run(f"manual-{key}")
    trained = load_result(run.result.training)
    assert trained is not None
    splits = Splits.load(trained.splits_path)
    from flows.imaging import imaging
    from flows.ingest import ingest

    cohort = ingest(params)
    table = imaging(params, cohort)
    challenger = model_rows(params, cohort, table, package, list(splits.test))
    with disable_run_logger():
        version, new = t.register_model.fn(params, run_id, "", package, key, {"model": key},
                                           challenger.frame.head(2))
    assert new and CHALLENGER in version.aliases
    return Registered(version, package, params, cohort, table, splits, challenger)


def test_the_gate_refuses_a_worse_model_and_promotes_a_better_one(first_run: Run, tmp_path: Path) -> None:
    reg = first_run.registry()
    package = first_run.result.registry.package  # type: ignore[union-attr]
    flip = flipped(package, tmp_path / "flipped")  # the same network with its risk negated
    test_set = reg.version(1).tags["gate.test_set"]
    start = reg.test_set_decisions(test_set)
    decision, flip_version = register(first_run, flip, "flipped")
    metric = decision.metric
    assert decision.champion is not None and decision.reference == "champion v1"
    assert decision.challenger["harrell_c"] == pytest.approx(1 - decision.champion["harrell_c"])
    assert decision.test_set == test_set and decision.test_set_decisions == start + 1
    delta = decision.difference[metric]
    flip_better = decision.promote
    assert decision.ibs_margin is None and flip_better == (delta["lower"] > decision.margin), decision
    assert reg.alias(CHAMPION).version == (flip_version.version if flip_better else 1)  # type: ignore[union-attr]
    assert reg.version(flip_version.version).tags["gate.decision"] == ("promoted" if flip_better else "refused")

    # deliberately: the worse of the two made champion by hand, then each registered again as a new version
    better, worse = (flip, package) if flip_better else (package, flip)
    worse_version = flip_version.version if not flip_better else 1
    reg.set_champion(worse_version, reason="test: a deliberate mistake", by="tester")
    promoted, better_version = register(first_run, as_new_package(better, tmp_path / "better"), "better-model")
    assert promoted.promote and promoted.reference == f"champion v{worse_version}", promoted
    assert "better with 50% confidence" in promoted.reason and promoted.difference[metric]["value"] > 0
    assert reg.alias(CHAMPION).version == better_version.version  # type: ignore[union-attr]
    refused, worse_again = register(first_run, as_new_package(worse, tmp_path / "worse"), "worse-model")
    assert not refused.promote and "does not beat" in refused.reason, refused
    assert reg.version(worse_again.version).tags["gate.decision"] == "refused"
    assert refused.test_set_decisions == start + 3 == reg.test_set_decisions(test_set)  # every look counted
    assert reg.alias(CHAMPION).version == better_version.version  # type: ignore[union-attr]  # never the worse
    assert reg.alias(CHALLENGER).version == worse_again.version  # type: ignore[union-attr]

    # rollback walks the champion history back: better -> the worse one promoted by hand
    assert reg.rollback(reason="test", by="tester").version == worse_version
    table = reg.table()
    assert list(table["version"]) == [worse_again.version, better_version.version, flip_version.version, 1]
    assert table.set_index("version").loc[worse_again.version, "gate"] == "refused"
    assert "rollback" in reg.history()[-1]["reason"]


def test_rollback_without_history_is_an_error(tmp_path: Path) -> None:
    from survival_model.registry.registry import RegistryError

    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", "e", tmp_path / "artifacts")
    reg = Registry(tracker.client, "nothing")
    with pytest.raises(RegistryError, match="no champion to roll back"):
        reg.rollback(reason="x", by="y")
    with pytest.raises(RegistryError, match="has no version 3"):
        reg.version(3)


def test_the_pyfunc_model_round_trips(first_run: Run) -> None:
    import mlflow.pyfunc

    from survival_model.training.stage import ensemble_outputs

    params = first_run.params
    mlflow.set_tracking_uri(params.mlflow_uri)
    loaded = mlflow.pyfunc.load_model(f"models:/{params.registry.model_name}/1")
    package = first_run.result.registry.package  # type: ignore[union-attr]
    info = package_lib.read_info(package)
    from flows.imaging import imaging
    from flows.ingest import ingest

    cohort = ingest(params)
    table = imaging(params, cohort)
    inputs = model_rows(params, cohort, table, package, info["test_case_ids"] + info["development_case_ids"])
    predicted = loaded.predict(inputs.frame)
    in_memory = package_lib.PackagedModel.load(package).predict(inputs.frame)
    pd.testing.assert_frame_equal(predicted.reset_index(drop=True), in_memory.reset_index(drop=True))

    from survival_model.training.data import stack_images

    trained = load_result(first_run.result.training)
    assert trained is not None
    frame = rows(table.table(), list(inputs.frame["case_id"]))
    mean, _, _ = ensemble_outputs(trained.folds, frame, stack_images(inputs.image_paths, list(frame["case_id"])))
    np.testing.assert_allclose(predicted["risk"].to_numpy(), mean[:, 0], rtol=1e-6)
    assert predicted["risk_group"].between(1, params.registry.risk_groups).all()
    assert (np.diff(predicted[["survival_6m", "survival_12m", "survival_24m"]].to_numpy(), axis=1) <= 0).all()


def test_predict_new_patients_and_report_bad_ones(first_run: Run, tmp_path: Path) -> None:
    new = tmp_path / "new"
    generate_cohort(GeneratorConfig(out_dir=new, seed=99, **{**TINY, "patients": {"site_a": 2, "site_b": 1,
                                                                                  "site_c": 1}}))
    overrides = {**overrides_for(new, first_run.params.work_dir, **FIRST),
                 "institutions.site_a.clinical.survival": None}  # new patients: no outcome yet
    result = predict(str(REPO / "params.yaml"), overrides, "champion", True)
    predictions = pd.read_csv(result.folder / "predictions.csv")
    assert result.predicted == len(predictions) == 4
    assert {"risk", "risk_group", "survival_6m", "survival_12m", "survival_24m", "median_days",
            "interval_low_days", "interval_high_days"} <= set(predictions.columns)
    assert (predictions["interval_low_days"].fillna(0) <= predictions["median_days"].fillna(np.inf)).all()
    missing = pd.read_csv(result.folder / "not_predicted.csv")
    assert result.not_predicted == len(missing) >= 10 and missing["reason"].notna().all()
    assert len(list((result.folder / "gradcam").glob("*.png"))) == 4
    run = Tracker.from_params(first_run.params).client.get_run(result.mlflow_link.split("runs:/")[1].split()[0])
    assert run.data.metrics["patients_predicted"] == 4


def test_predict_a_plain_input_folder(first_run: Run, tmp_path: Path) -> None:
    """`predict --input DIR`: BraTS-METS files per case and a clinical.csv with canonical column names, no
    params file to write (as nnU-Net's users expect)."""
    new = tmp_path / "new"
    generate_cohort(GeneratorConfig(out_dir=new, seed=98, bad_patients=False,
                                    **{**TINY, "patients": {"site_a": 2, "site_b": 0, "site_c": 0}}))
    folder = tmp_path / "input"
    shutil.copytree(new / "site_a" / "images", folder)
    canonical = {"extracranial_mets": "extracranial", "egfr": "egfr_mutant", "alk": "alk_positive",
                 "her2": "her2_positive", "hr": "hr_positive", "braf": "braf_mutant"}
    clinical = pd.read_csv(new / "site_a" / "clinical.csv").rename(columns=canonical)
    clinical.assign(notes="free text never read").to_csv(folder / "clinical.csv", index=False)
    overrides = {**first_run.overrides, "institutions": input_institution(folder)}
    result = predict(str(REPO / "params.yaml"), overrides, "champion", False)
    predictions = pd.read_csv(result.folder / "predictions.csv")
    assert result.predicted == len(predictions) == 2 and set(predictions["site"]) == {INPUT_SITE}
    with pytest.raises(ConfigError, match=r"no clinical\.csv"):
        input_institution(new / "site_a" / "images")


# the gate's guards, through the registry flow's gate (each test gives the champion back as it found it)


def test_a_champion_under_another_key_stops_the_gate_and_a_hand_promoted_version_is_not_gated(
        first_run: Run, tmp_path: Path) -> None:
    from survival_model.registry.gate import PseudonymKeyError
    from survival_model.registry.registry import registration_markdown

    reg = first_run.registry()
    package = first_run.result.registry.package  # type: ignore[union-attr]
    before = reg.alias(CHAMPION).version  # type: ignore[union-attr]
    other_key = registered(first_run, as_new_package(package, tmp_path / "other-key", 48,
                                                     pseudonym_key_fingerprint="0123456789abcdef"), "other-key")
    reg.set_champion(other_key.version.version, reason="test: a champion trained under another key", by="tester")
    try:
        counts = reg.test_sets()
        challenger = registered(first_run, as_new_package(package, tmp_path / "after-key-change", 60),
                                "after-key-change")
        with pytest.raises(PseudonymKeyError, match=r"differs from the one champion v\d+ was trained with "
                                                    r"\(fingerprint 0123456789abcdef\)"):
            challenger.gate()
        assert reg.test_sets() == counts  # stopped before any gate: nothing read, nothing counted
        assert "gate.decision" not in reg.version(challenger.version.version).tags
        assert reg.alias(CHAMPION).version == other_key.version.version  # type: ignore[union-attr]

        # as the error suggests, the version is reviewed and promoted by hand; the next run finds it (no
        # gate.decision yet) holding champion: it is not gated (against the GPA, as a first model)
        reg.set_champion(challenger.version.version, reason="reviewed after the key change", by="tester")
        assert challenger.gate(reg.version(challenger.version.version)) is None
        assert reg.test_sets() == counts  # the locked test set not read, no decision counted
        found = reg.version(challenger.version.version)
        assert found.tags["gate.decision"] == "already champion" and CHAMPION in found.aliases
        assert "tester: reviewed after the key change" in found.tags["gate.reason"]
        assert "is the champion already" in registration_markdown("m", found, None, "")
    finally:
        reg.set_champion(before, reason="test: restored", by="tester")
    from survival_model.registry.registry import lock_file

    assert lock_file(first_run.params.work_dir, first_run.params.registry.model_name).is_file()  # the flow held it


def test_the_champions_training_patients_are_left_out_and_the_whole_test_set_is_counted(
        first_run: Run, tmp_path: Path) -> None:
    from survival_model.registry.gate import fingerprint_test_set

    reg = first_run.registry()
    package = first_run.result.registry.package  # type: ignore[union-attr]
    info = package_lib.read_info(package)
    before = reg.alias(CHAMPION).version  # type: ignore[union-attr]
    trained = load_result(first_run.result.training)
    assert trained is not None
    locked = list(Splits.load(trained.splits_path).test)
    whole = fingerprint_test_set(locked)
    assert reg.version(1).tags["gate.test_set"] == whole  # what the evaluation flow reads the count under
    # a champion that trained on one of this run's test patients (e.g. from before a change of split settings)
    overlap = registered(first_run, as_new_package(package, tmp_path / "overlap", 72, development_case_ids=[
        *info["development_case_ids"], locked[0]]), "trained-on-one")
    reg.set_champion(overlap.version.version, reason="test: a champion that trained on a test patient", by="tester")
    try:
        start = reg.test_set_decisions(whole)
        decision, version = register(first_run, as_new_package(package, tmp_path / "next", 84), "next")
        assert decision.reference == f"champion v{overlap.version.version}" and decision.excluded == 1
        # counted on the whole locked test set, not restarted on the subset scored
        assert decision.test_set == whole and decision.test_set_decisions == start + 1 == reg.test_set_decisions(whole)
        assert decision.patients + decision.excluded + decision.unscored == decision.test_set_patients == len(locked)
        tags = reg.version(version.version).tags
        assert tags["gate.excluded"] == "1" and tags["gate.test_set_patients"] == str(len(locked))
        assert tags["gate.patients"] == str(decision.patients) and tags["gate.test_set"] == whole

        # a champion that trained on every test patient: nothing to score, undefined, nothing counted
        everyone = registered(first_run, as_new_package(package, tmp_path / "everyone", 96, development_case_ids=[
            *info["development_case_ids"], *locked]), "trained-on-all")
        reg.set_champion(everyone.version.version, reason="test: trained on every test patient", by="tester")
        nothing, last = register(first_run, as_new_package(package, tmp_path / "last", 108), "last")
        assert nothing.outcome == "undefined" and not nothing.promote and nothing.patients == 0
        assert "no locked test patient is left to score" in nothing.reason and nothing.excluded >= 1
        assert nothing.excluded + nothing.unscored == nothing.test_set_patients == len(locked)
        assert reg.test_set_decisions(whole) == start + 1  # no outcome read
        assert reg.version(last.version).tags["gate.decision"] == "undefined"
        assert reg.alias(CHAMPION).version == everyone.version.version  # type: ignore[union-attr]
    finally:
        reg.set_champion(before, reason="test: restored", by="tester")
