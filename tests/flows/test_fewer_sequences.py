"""Institutions that acquire fewer sequences, end to end under a Prefect test harness: site A (skull-stripped)
declares only T1c (its other files stay on disk, undeclared), site B (skull on, thick slices) only T1c too: the
real user's case, whose brain the trained extractor finds from T1c alone; site C (skull on, motion between
sequences) only T1c and FLAIR (its T1 and T2 series are deleted). Ingestion, imaging, training, evaluation,
registry and prediction run; no patient is quarantined for the sequences its site does not declare, the brain
masks are anatomical, the feature columns of absent sequences are NaN (finite for present ones), the network
input has zero channels for them, and the registered model predicts every site. With the network asked for a
sequence no site declares (T1n), training refuses it, naming the fix."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from flows.imaging import imaging
from flows.ingest import ingest
from flows.pipeline import pipeline
from flows.predict import predict
from flows.training import training
from survival_model.config import SEQUENCES, load_params
from survival_model.errors import ConfigError
from survival_model.imageio import read_json
from survival_model.training.splits import in_test_set
from tests.conftest import PIPELINE_SETTINGS, REPO, overrides_for

pytestmark = pytest.mark.usefixtures("prefect_harness")

#: The declared sequences per site (site B keeps the four of params.yaml).
FEWER: dict[str, Any] = {
    "institutions.site_a.images.sequences": {"t1c": "{case}/{case}-t1c.nii.gz"},
    "institutions.site_a.images.mask_reference": "t1c",
    "institutions.site_b.images.sequences": {"t1c": "{case}_T1GD.nrrd"},
    "institutions.site_c.images.sequences": {"t1c": "{case}/T1C", "t2f": "{case}/FLAIR"},
    "training.inputs.sequences": ["t1c", "t2f"],
}
DECLARED: dict[str, set[str]] = {"site_a": {"t1c"}, "site_b": {"t1c"}, "site_c": {"t1c", "t2f"}}


def seed_for(cohort: pd.DataFrame, fraction: float, folds: int = 2) -> int:
    """The first split seed giving the ingested cohort a test set with a death and ``2 * folds`` development
    patients (the split draws from the source digests, which depend on the declared files)."""
    rows = cohort[cohort["event"].notna()]
    for seed in range(20250515, 20251015):
        test = [int(e) for d, e in zip(rows["source_digest"], rows["event"], strict=True)
                if in_test_set(seed, fraction, str(d))]
        if len(test) >= 2 and sum(test) >= 1 and len(rows) - len(test) >= 2 * folds:
            return seed
    raise AssertionError("no split seed suits the cohort")


def test_sites_with_one_and_two_sequences_run_end_to_end(tiny_cohort: Path, tmp_path: Path) -> None:
    for case in (tiny_cohort / "site_c" / "images").iterdir():  # site C's T1 and T2 truly absent
        for series in ("T1", "T2"):
            shutil.rmtree(case / series, ignore_errors=True)
    settings = {**PIPELINE_SETTINGS, **FEWER, "evaluation.networks": [], "training.tabular.intensity": True}
    overrides = overrides_for(tiny_cohort, tmp_path / "work", seed=False, **settings)
    cohort = ingest(load_params(REPO / "params.yaml", overrides)).cohort()
    overrides["training.splits.seed"] = seed_for(cohort, settings["training.splits.test_fraction"])

    result = pipeline(str(REPO / "params.yaml"), overrides)

    # ingestion: nobody quarantined for a sequence the site does not declare; which ones each patient has
    reasons = pd.read_parquet(result.all_quarantine)
    assert not reasons["reason"].isin(["missing_sequence", "sequence_grid_mismatch"]).any(), reasons
    assert not reasons["reason"].str.startswith("qc_brain").any(), reasons
    cohort = pd.read_parquet(result.cohort)
    assert {"site_a", "site_b", "site_c"} <= set(cohort["site"])
    for row in cohort.itertuples():
        assert set(str(row.qc_sequences).split("+")) == DECLARED[str(row.site)]
    counts = result.summary["sequences"]
    assert counts["site_a"]["t1c"] == result.summary["sites"]["site_a"]["patients"] > counts["site_a"]["t2f"] == 0
    # features: NaN for the sequences a patient lacks, finite values for those it has
    table = pd.read_parquet(result.features)
    for site, declared in DECLARED.items():
        rows = table[table["site"] == site]
        assert len(rows), site
        for seq in SEQUENCES:
            values = rows[f"int_wt_{seq}_mean"]
            assert (np.isfinite(values).all() if seq in declared else values.isna().all()), (site, seq)
    # the network input: zero channels for the absent sequences, image content for the present ones
    inputs = sorted((result.work_dir / "inputs").glob("site_*/*/*/input.npy"))
    assert {p.parts[-4] for p in inputs} == set(DECLARED)
    for path in inputs:
        manifest = read_json(path.parent / "manifest.json")
        array = np.load(path)
        for index, channel in enumerate(manifest["channels"]):
            if channel not in SEQUENCES:
                continue  # a region mask channel
            present = channel in DECLARED[path.parts[-4]]
            assert bool(np.any(array[:, index] != 0)) == present, (path, channel)
        assert manifest["absent_sequences"] == [s for s in manifest["channels"] if s in SEQUENCES
                                                and s not in DECLARED[path.parts[-4]]]
    # training and evaluation ran (the report notes the absent sequences); the model was registered and predicts
    # every site's patients
    (audit,) = result.evaluation.rglob("audit.json")
    notes = [f["text"] for f in read_json(audit)["findings"] if f["text"].startswith("sequences absent")]
    assert notes and "site_a: t1n, t2w, t2f; site_b: t1n, t2w, t2f; site_c: t1n, t2w" in notes[0]
    assert result.registry is not None and result.registry.registered
    predicted = predict(str(REPO / "params.yaml"), overrides, "champion", False)
    predictions = pd.read_csv(predicted.folder / "predictions.csv")
    assert set(DECLARED) <= set(predictions["site"])
    assert set(table["case_id"]) <= set(predictions["case_id"])
    assert np.isfinite(predictions["risk"]).all()

    # the network asked for T1n, which no site declares: refused, naming the fix
    params = load_params(REPO / "params.yaml", {**overrides, "training.inputs.sequences": ["t1n", "t1c", "t2f"]})
    cohort_result = ingest(params)
    table_result = imaging(params, cohort_result)
    assert table_result.table().filter(like="_t1n_").isna().all().all()
    with pytest.raises(ConfigError, match=r"training.inputs.sequences lists t1n, which none of the \d+ patient"):
        training(params, cohort_result, table_result)
