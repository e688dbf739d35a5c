"""The synthetic three-institution cohort: formats, ground truth, determinism, survival model."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from sksurv.metrics import concordance_index_censored

from survival_model.synthetic import survival as sv
from survival_model.synthetic.cohort import (
    BAD_PATIENTS,
    GeneratorConfig,
    GeneratorError,
    PatientPlan,
    generate_cohort,
    make_patient,
    plan_cohort,
)
from tests.conftest import tiny_config


def test_three_sites_in_three_formats(tiny_cohort_master: Path) -> None:
    root = tiny_cohort_master
    a = sitk.ReadImage(str(root / "site_a/images/SYN-MET-00001-000/SYN-MET-00001-000-t1c.nii.gz"))
    assert a.GetSize() == (48, 48, 31) and a.GetSpacing() == (5.0, 5.0, 5.0)
    assert a.GetPixelID() == sitk.sitkFloat32

    b = sitk.ReadImage(str(root / "site_b/images/P0001_T1GD.nrrd"))
    assert b.GetSpacing() == pytest.approx((4.5, 4.5, 15.0))
    assert b.GetDirection() == pytest.approx((-1, 0, 0, 0, -1, 0, 0, 0, 1))
    assert b.GetPixelID() == sitk.sitkInt16
    labels_b = np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(root / "site_b/images/P0001_labels.nrrd"))))
    assert set(labels_b) <= {0, 1, 2, 4} and 2 in labels_b  # old BraTS scheme (ET is 4)
    all_b = [np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(p))))
             for p in sorted((root / "site_b/images").glob("P000[1-3]_labels.nrrd"))]
    assert any(4 in values for values in all_b) and not any(3 in values for values in all_b)

    reader = sitk.ImageSeriesReader()
    folder = str(root / "site_c/images/C001/T1C")
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(folder))
    c = reader.Execute()
    assert c.GetSpacing() == pytest.approx((5.0, 5.0, 6.0), abs=1e-3)
    mask_c = sitk.ReadImage(str(root / "site_c/images/C001/seg.nii.gz"))
    assert mask_c.GetSize() == c.GetSize()
    assert mask_c.GetOrigin() == pytest.approx(c.GetOrigin(), abs=1e-3)

    clinical_a = pd.read_csv(root / "site_a/clinical.csv")
    assert {"patient_name", "mrn", "date_of_birth", "os_days", "death"} <= set(clinical_a.columns)
    clinical_b = pd.read_excel(root / "site_b/clinical.xlsx", header=2)
    assert clinical_b["Performance"].str.startswith("KPS ").all()
    assert set(clinical_b["Status"]) <= {"Deceased", "Alive"}
    clinical_c = pd.read_csv(root / "site_c/clinical.csv", sep=";", dtype=str)
    assert clinical_c["date_diagnosis"].str.fullmatch(r"\d\d\.\d\d\.\d{4}").all()


def test_skull_and_bias_where_the_site_is_raw(tiny_cohort_master: Path) -> None:
    truth = pd.read_csv(tiny_cohort_master / "ground_truth/patients.csv")
    assert (truth.loc[truth.site == "site_a", "bias_strength"] == 0).all()
    assert (truth.loc[truth.site != "site_a", "bias_strength"] > 0).all()
    bias = sitk.ReadImage(str(tiny_cohort_master / "ground_truth/bias/site_b/P0001.nii.gz"))
    values = sitk.GetArrayViewFromImage(bias)
    assert 0.6 < values.min() < 1.0 < values.max() < 1.5
    # site A is skull-stripped: everything outside the head's brain is exactly zero
    a = sitk.GetArrayFromImage(sitk.ReadImage(str(
        tiny_cohort_master / "site_a/images/SYN-MET-00001-000/SYN-MET-00001-000-t1n.nii.gz")))
    assert (a == 0).mean() > 0.3
    b = sitk.GetArrayFromImage(sitk.ReadImage(str(tiny_cohort_master / "site_b/images/P0001_T1.nrrd")))
    assert (b == 0).mean() < (a == 0).mean()  # skull and scalp present, Rician floor in air
    assert truth.loc[truth.site == "site_c", "motions"].str.contains("rotation_deg").all()


def test_ground_truth_and_bad_patients(tiny_cohort_master: Path) -> None:
    gt = tiny_cohort_master / "ground_truth"
    truth = pd.read_csv(gt / "patients.csv")
    assert len(truth) == 10 + len(BAD_PATIENTS)
    assert {"true_lp", "gpa", "gpa_class", "event_time_days", "censor_time_days", "img_rim_irregularity"} <= set(
        truth.columns)
    expected = pd.read_csv(gt / "expected_quarantine.csv")
    assert dict(zip(expected["reason"], expected["site"], strict=True)) == BAD_PATIENTS
    lesions = pd.read_csv(gt / "lesions.csv")
    per_patient = lesions.groupby(["site", "source_id"]).size()
    for row in truth.itertuples():
        assert per_patient[(row.site, row.source_id)] == row.clin_n_brain_mets
    assert (truth["time_days"] >= 1).all()
    observed = np.minimum(truth["event_time_days"], truth["censor_time_days"])
    assert np.allclose(truth["time_days"], np.maximum(1, np.ceil(observed)))


def test_generation_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    small = {"patients": {"site_a": 1, "site_b": 1, "site_c": 1}, "bad_patients": False}
    first = generate_cohort(tiny_config(tmp_path / "one", **small))
    second = generate_cohort(tiny_config(tmp_path / "two", **small))
    for relative in ("ground_truth/patients.csv", "site_a/clinical.csv", "site_c/clinical.csv",
                     "site_a/images/SYN-MET-00001-000/SYN-MET-00001-000-t2f.nii.gz"):
        assert (first / relative).read_bytes() == (second / relative).read_bytes(), relative
    third = generate_cohort(GeneratorConfig(**{**tiny_config(tmp_path / "three", **small).__dict__, "seed": 8}))
    assert (first / "ground_truth/patients.csv").read_bytes() != (third / "ground_truth/patients.csv").read_bytes()


def test_regeneration_replaces_and_foreign_folders_are_refused(tmp_path: Path) -> None:
    small = {"patients": {"site_a": 1}, "bad_patients": False}
    out = generate_cohort(tiny_config(tmp_path / "c", **small))
    generate_cohort(tiny_config(tmp_path / "c", **{**small, "patients": {"site_a": 2}}))
    assert len(pd.read_csv(out / "ground_truth/patients.csv")) == 2
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("my data")
    with pytest.raises(GeneratorError, match="is not a generated cohort"):
        generate_cohort(tiny_config(foreign, **small))
    with pytest.raises(GeneratorError, match="no patients requested"):
        plan_cohort(tiny_config(tmp_path / "x", patients={"site_a": 0}))


def test_mask_components_match_the_number_of_metastases(tmp_path: Path) -> None:
    """At the default 2.5 mm grid, connected tumour components equal the clinical count."""
    config = GeneratorConfig(out_dir=tmp_path, seed=3, patients={"site_a": 6}, shape=(96, 96, 62), spacing_mm=2.5)
    agree = 0
    for index in range(1, 7):
        patient = make_patient(config, PatientPlan("site_a", index))
        sid = patient["source_id"]
        seg = sitk.ReadImage(str(tmp_path / "site_a/images" / sid / f"{sid}-seg.nii.gz"))
        tumour = sitk.Cast((seg == 1) | (seg == 3), sitk.sitkUInt8)
        stats = sitk.LabelShapeStatisticsImageFilter()
        stats.Execute(sitk.ConnectedComponent(tumour, True))
        agree += stats.GetNumberOfLabels() == patient["clinical"]["n_brain_mets"]
    assert agree >= 5


def simulated_cohort(n: int, seed: int = 0) -> pd.DataFrame:
    """Clinical draws with imaging covariates at their reference values (no rendering)."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        clinical = sv.sample_clinical(rng)
        imaging = sv.ImagingTruth(et_ml=float(rng.lognormal(math.log(2), 1)), netc_ml=0.5, snfh_ml=3.0,
                                  edema_ratio=float(rng.lognormal(math.log(1.5), 0.5)),
                                  necrosis_fraction=float(rng.uniform(0, 0.6)),
                                  rim_irregularity=float(rng.uniform(0, 0.8)), heterogeneity=0.4,
                                  infratentorial=bool(rng.uniform() < 0.15))
        truth = sv.survival_truth(clinical, imaging, rng)
        rows.append({"gpa_class": truth.gpa_class, "eta": truth.eta, "lp": truth.true_lp,
                     "t": truth.event_time_months, "entry": sv.draw_entry_month(rng)})
    return pd.DataFrame(rows)


def test_class_medians_follow_the_published_gpa_classes() -> None:
    rng = np.random.default_rng(1)
    for klass, median in sv.GPA_CLASS_MEDIAN_MONTHS.items():
        scale = median / math.log(2) ** (1 / sv.WEIBULL_SHAPE)
        lp = -sv.WEIBULL_SHAPE * math.log(scale)
        times = [sv.draw_event_time(lp, rng) for _ in range(20000)]
        assert np.median(times) == pytest.approx(median, rel=0.03), klass
    cohort = simulated_cohort(3000)
    assert abs(cohort["eta"].mean()) < 0.3  # effects are centred near the cohort mean
    ordered = cohort.groupby("gpa_class")["t"].median().reindex(["0-1", "1.5-2.5", "3", "3.5-4"])
    assert ordered.is_monotonic_increasing


def test_censoring_hits_the_target_and_the_oracle_ranks_well() -> None:
    cohort = simulated_cohort(1500)
    rng = np.random.default_rng(2)
    censoring = sv.censor(cohort["t"].to_numpy(), cohort["entry"].to_numpy(), rng, target_fraction=0.28)
    observed = [sv.observed(t, c) for t, c in zip(cohort["t"], censoring.censor_months, strict=True)]
    time = np.array([o[0] for o in observed], dtype=float)
    event = np.array([o[1] for o in observed], dtype=bool)
    assert 1 - event.mean() == pytest.approx(0.28, abs=0.01)
    harrell = concordance_index_censored(event, time, cohort["lp"].to_numpy())[0]
    assert 0.65 < harrell < 0.85
    with pytest.raises(ValueError, match="censor fraction"):
        sv.censor(cohort["t"].to_numpy(), cohort["entry"].to_numpy(), rng, target_fraction=1.2)


def test_gpa_score_follows_sperduto_2008() -> None:
    assert sv.gpa_score(45, 90, False, 1) == 4.0
    assert sv.gpa_score(65, 60, True, 5) == 0.0
    assert sv.gpa_score(55, 80, True, 2) == 1.5
    assert sv.gpa_score(60, 70, False, 3) == 2.5
    assert sv.gpa_class(2.0) == "1.5-2.5" and sv.gpa_class(3.5) == "3.5-4"
