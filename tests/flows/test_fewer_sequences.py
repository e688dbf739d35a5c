"""Institutions that acquire fewer sequences, end to end under a Prefect test harness: site A declares only
T1c (its other files stay on disk, undeclared), site C only T1c and T2w (its T1 and FLAIR series are deleted),
site B all four. Ingestion, imaging, training, evaluation, registry and prediction run; the patients of A and C
are not quarantined for the sequences their site does not declare, their feature columns of those sequences
are NaN (finite for the ones they have), their network input has zero channels for them, and the registered
model predicts them. With T1n declared nowhere, training refuses the network's T1n channel.

Site A is the one-sequence site because it is skull-stripped: on the synthetic heads with skull the
morphological brain mask from T1 alone (``preprocess.ops.compute_brain_mask``) misses the brain volume QC; a
skull site needs T1 and T2w for it (docs/data.md)."""

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
    "institutions.site_c.images.sequences": {"t1c": "{case}/T1C", "t2w": "{case}/T2"},
}
DECLARED: dict[str, set[str]] = {"site_a": {"t1c"}, "site_b": set(SEQUENCES), "site_c": {"t1c", "t2w"}}


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
    for case in (tiny_cohort / "site_c" / "images").iterdir():  # site C's T1 and FLAIR truly absent
        for series in ("T1", "FLAIR"):
            shutil.rmtree(case / series, ignore_errors=True)
    settings = {**PIPELINE_SETTINGS, **FEWER, "evaluation.networks": [], "training.tabular.intensity": True}
    overrides = overrides_for(tiny_cohort, tmp_path / "work", seed=False, **settings)
    cohort = ingest(load_params(REPO / "params.yaml", overrides)).cohort()
    overrides["training.splits.seed"] = seed_for(cohort, settings["training.splits.test_fraction"])

    result = pipeline(str(REPO / "params.yaml"), overrides)

    # ingestion: nobody quarantined for a sequence the site does not declare; which ones each patient has
    reasons = pd.read_parquet(result.all_quarantine)
    assert not reasons["reason"].isin(["missing_sequence", "sequence_grid_mismatch"]).any(), reasons
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
        for index, channel in enumerate(manifest["channels"][:len(SEQUENCES)]):
            present = channel in DECLARED[path.parts[-4]]
            assert bool(np.any(array[:, index] != 0)) == present, (path, channel)
        assert manifest["absent_sequences"] == [s for s in manifest["channels"] if s in SEQUENCES
                                                and s not in DECLARED[path.parts[-4]]]
    # training and evaluation ran (the report notes the absent sequences); the model was registered and predicts
    # every site's patients
    (audit,) = result.evaluation.rglob("audit.json")
    notes = [f["text"] for f in read_json(audit)["findings"] if f["text"].startswith("sequences absent")]
    assert notes and "site_a: t1n, t2w, t2f; site_c: t1n, t2f" in notes[0]
    assert result.registry is not None and result.registry.registered
    predicted = predict(str(REPO / "params.yaml"), overrides, "champion", False)
    predictions = pd.read_csv(predicted.folder / "predictions.csv")
    assert set(DECLARED) <= set(predictions["site"])
    assert set(table["case_id"]) <= set(predictions["case_id"])
    assert np.isfinite(predictions["risk"]).all()

    # site B without T1n too: no patient has it, and the network's T1n channel is refused, naming the fix
    no_t1n = {**overrides, "institutions.site_b.images.sequences": {
        "t1c": "{case}_T1GD.nrrd", "t2w": "{case}_T2.nrrd", "t2f": "{case}_FLAIR.nrrd"}}
    cohort_result = ingest(load_params(REPO / "params.yaml", no_t1n))
    no_t1n["training.splits.seed"] = seed_for(cohort_result.cohort(), settings["training.splits.test_fraction"])
    params = load_params(REPO / "params.yaml", no_t1n)
    table_result = imaging(params, cohort_result)
    assert table_result.table().filter(like="_t1n_").isna().all().all()
    with pytest.raises(ConfigError, match=r"training.inputs.sequences lists t1n, which none of the \d+ patient"):
        training(params, cohort_result, table_result)
