"""Ingestion facing real public data (../shared/realdata, read in place; skipped where it is absent).

Images: a BraTS-METS case without segmentation, six BraTS 2013 expert cases as a fourth institution
next to the synthetic cohort, TCGA-FG-6692 registered and raw. Clinical: the MOLAB brain-metastasis
sheet (three-row header, one row per lesion, coded categories) and the UCSF-PDGM metadata (censoring).
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import pytest
import SimpleITK as sitk

from survival_model.config import ClinicalSource, IngestParams, Institution
from survival_model.ingest.clinical import HarmoniseClinical, harmonise_table
from survival_model.ingest.cohort import AssembleCohort
from survival_model.ingest.discovery import CaseFiles, discover_cases
from survival_model.ingest.ids import normalise_id
from survival_model.ingest.images import IngestImages, case_id_for
from survival_model.ingest.privacy import Pseudonymiser
from survival_model.patient import PatientOutcome
from survival_model.stage import run
from tasks.privacy import pseudonymiser as resolve_pseudonymiser
from tests.conftest import params_for, realdata_dir

pytestmark = pytest.mark.realdata

PSEUDONYMISER = Pseudonymiser(b"r" * 32)
SEQUENCES = ("t1n", "t1c", "t2w", "t2f")
DURATION = {"kind": "duration", "time_column": "os_days", "event_column": "death"}
BRATS2013_CASES = [f"brats_2013_pat000{i}_1" for i in range(1, 7)]
MOLAB_CLINICAL = "clinical/MOLAB_OpenBTAI_METS_ClinicalData_Nov2023.xlsx"
MOLAB_MORPHOLOGY = "clinical/MOLAB_OpenBTAI_MORPHOLOGICAL_MEASUREMENTS.xlsx"
UCSF = "clinical/UCSF-PDGM-metadata_v2.csv"


@pytest.fixture()
def real() -> Path:
    folder = realdata_dir()
    if folder is None:
        pytest.skip("../shared/realdata is not on this machine")
    return folder


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path.name} is not in the real-data folder")
    return path


def clinical_csv(path: Path, ids: list[str]) -> Path:
    """A small clinical table written by the test (the real image sets have no survival data)."""
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["case", "age", "sex", "os_days", "death"])
        for i, case in enumerate(ids):
            writer.writerow([case, 50 + i, "F" if i % 2 else "M", 100 + 30 * i, i % 2])
    return path


def clinical_decl(path: Path) -> dict[str, Any]:
    return {"path": str(path), "id_column": "case", "columns": {"age": "age", "sex": "sex"}, "survival": DURATION}


def array(path: Path | str) -> npt.NDArray[Any]:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def components(binary: npt.NDArray[np.bool_], like: sitk.Image) -> int:
    """Connected components with full (26-) connectivity, counted by SimpleITK directly."""
    image = sitk.GetImageFromArray(binary.astype(np.uint8))
    image.CopyInformation(like)
    filt = sitk.ConnectedComponentImageFilter()
    filt.FullyConnectedOn()
    filt.Execute(image)
    return int(filt.GetObjectCount())


def ingest_case(case: CaseFiles, institution: Institution, work: Path) -> PatientOutcome:
    """One case's images through the ingestion stage (computed, or read back when its folder exists)."""
    return run(IngestImages(case_id_for(case, institution, PSEUDONYMISER), case, institution, IngestParams(), work))


def ingest_one(site: str, institution: Institution, work: Path) -> PatientOutcome:
    cases = discover_cases(site, institution.images)
    assert len(cases) == 1, [c.source_id for c in cases]
    return ingest_case(cases[0], institution, work)


def link_files(folder: Path, names: dict[str, Path]) -> Path:
    """Copy real files under new names into a folder of the test's tmp_path (never into the repository). Not
    symbolic links: ingestion refuses a link that leads outside the institution's image folder
    (``outside_source``), as it would a user's."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, target in names.items():
        shutil.copy2(target, folder / name)
    return folder


# --------------------------------------------------------------------------------------------------
# a. BraTS-METS case without segmentation
# --------------------------------------------------------------------------------------------------


def test_brats_mets_case_without_segmentation_is_quarantined(real: Path, tmp_path: Path) -> None:
    root = need(real / "brats_met_00110")
    case = "BraTS-MET-00110-000"
    institution = Institution.model_validate(
        {
            "images": {
                "layout": "pattern",
                "root": str(root),
                "sequences": {s: f"{{case}}-{s}.nii.gz" for s in SEQUENCES},
                "mask": "{case}-seg.nii.gz",
            },
            "clinical": clinical_decl(clinical_csv(tmp_path / "clinical.csv", [case])),
        }
    )
    cases = discover_cases("mets", institution.images)
    assert [c.source_id for c in cases] == [case]
    assert all(p is not None for p in cases[0].sequences.values()) and cases[0].mask is None

    work = tmp_path / "work"
    outcome = ingest_case(cases[0], institution, work)
    case_id = PSEUDONYMISER.case_id("mets", case)
    assert not outcome.ok and outcome.case_id == case_id
    assert [(q.reason, q.stage) for q in outcome.quarantine] == [("missing_segmentation", "images")]
    assert case not in outcome.quarantine[0].message and "{case}-seg.nii.gz" in outcome.quarantine[0].message
    # the quarantine is itself cached: a second call reads it back
    assert ingest_case(cases[0], institution, work) == outcome

    clinical = run(HarmoniseClinical("mets", institution, IngestParams(), PSEUDONYMISER, work))
    cohort = run(AssembleCohort((outcome,), (clinical,), IngestParams(), work))
    assert cohort.cohort().empty
    quarantine = cohort.quarantine()
    assert set(zip(quarantine["case_id"], quarantine["reason"], strict=True)) == {(case_id, "missing_segmentation")}
    assert cohort.summary["quarantine_by_reason"] == {"missing_segmentation": 1}


# --------------------------------------------------------------------------------------------------
# b. BraTS 2013 expert cases as a fourth institution, through the ingest flow
# --------------------------------------------------------------------------------------------------


def test_brats2013_expert_cases_as_a_fourth_institution(
    real: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    root = need(real / "brats2013_expert")
    # requested here, after the skip: no Prefect server or synthetic cohort without the real data
    request.getfixturevalue("prefect_harness")
    tiny_cohort_master: Path = request.getfixturevalue("tiny_cohort_master")
    from flows.ingest import ingest

    brats2013 = {
        "images": {
            "layout": "pattern",
            "root": str(root),
            "sequences": {"t1c": "{case}/T1c_subtrMeanDivStd.nii.gz", "t2f": "{case}/Flair_subtrMeanDivStd.nii.gz"},
            "mask": "{case}/OTMultiClass.nii.gz",
            "brain_mask": "{case}/brainmask.nii.gz",
        },
        "labels": "brats2013",
        "acquisition": {"skull_stripped": True, "bias_corrected": True, "co_registered": True},
        "clinical": clinical_decl(clinical_csv(tmp_path / "brats2013.csv", BRATS2013_CASES)),
    }
    params = params_for(tiny_cohort_master, tmp_path / "work", **{"institutions.brats2013": brats2013})
    assert list(params.institutions) == ["site_a", "site_b", "site_c", "brats2013"]
    result = ingest(params)
    cohort = result.cohort()
    quarantine = result.quarantine()
    pseudonymiser = resolve_pseudonymiser(params.privacy)

    real_rows = cohort[cohort["site"] == "brats2013"].set_index("case_id")
    expected_ids = {pseudonymiser.case_id("brats2013", c): c for c in BRATS2013_CASES}
    assert set(real_rows.index) == set(expected_ids)
    assert (quarantine["site"] == "brats2013").sum() == 0
    assert real_rows["path_t1n"].isna().all() and real_rows["path_t2w"].isna().all()
    assert real_rows["path_brain_mask"].notna().all()
    # the synthetic cohort is untouched by the extra institution
    assert len(cohort[cohort["site"] != "brats2013"]) == 10
    assert result.summary["patients"] == 16 and result.summary["sites"]["brats2013"]["patients"] == 6

    for case_id, source_id in expected_ids.items():
        row = real_rows.loc[case_id]
        source_mask_image = sitk.ReadImage(str(root / source_id / "OTMultiClass.nii.gz"))
        source = sitk.GetArrayFromImage(source_mask_image).astype(np.int64)
        seg = array(row["path_mask"])
        assert set(np.unique(seg).tolist()) <= {0, 1, 2, 3}
        assert int((seg == 3).sum()) == int((source == 4).sum()) > 0
        assert int((seg == 1).sum()) == int(np.isin(source, (1, 3)).sum())
        assert int((seg == 2).sum()) == int((source == 2).sum())
        assert np.array_equal(seg == 3, source == 4)  # voxel by voxel, not only counts
        tumour = np.isin(source, (1, 3, 4))
        expected_components = components(tumour, source_mask_image)
        assert int(row["qc_tumour_components"]) == expected_components >= 1, source_id

        brain = array(row["path_brain_mask"])
        assert set(np.unique(brain).tolist()) == {0, 1}
        assert np.array_equal(brain > 0, array(root / source_id / "brainmask.nii.gz") > 0)
        # z-scored intensities (negative background) are accepted and kept as they are
        t1c = array(row["path_t1c"])
        assert t1c.min() < 0
        assert np.array_equal(t1c, array(root / source_id / "T1c_subtrMeanDivStd.nii.gz"))
        assert Path(row["path_t2f"]).is_file()


# --------------------------------------------------------------------------------------------------
# c. TCGA-FG-6692 registered: other naming, old BraTS labels
# --------------------------------------------------------------------------------------------------


def test_tcga_registered_case_with_old_brats_labels(real: Path, tmp_path: Path) -> None:
    folder = need(real / "tcga_fg_6692" / "registered")
    case = "OtherEXampleFromTCIA"
    names = {f"{case}_{tag}_bet.nii.gz": folder / f"{case}_{tag}_bet.nii.gz" for tag in ("t1", "t1c", "t2", "fla")}
    names["segmentation_fused_mav.nii.gz"] = folder / "segmentation_fused_mav.nii.gz"
    root = tmp_path / "images"
    link_files(root / case, names)
    institution = Institution.model_validate(
        {
            "images": {
                "layout": "pattern",
                "root": str(root),
                "sequences": {
                    "t1n": "{case}/{case}_t1_bet.nii.gz",
                    "t1c": "{case}/{case}_t1c_bet.nii.gz",
                    "t2w": "{case}/{case}_t2_bet.nii.gz",
                    "t2f": "{case}/{case}_fla_bet.nii.gz",
                },
                "mask": "{case}/segmentation_fused_mav.nii.gz",
            },
            "labels": "brats_glioma",
            "clinical": clinical_decl(clinical_csv(tmp_path / "clinical.csv", [case])),
        }
    )
    outcome = ingest_one("tcga", institution, tmp_path / "work")
    assert outcome.ok, outcome.quarantine
    assert outcome.patient is not None
    source = array(folder / "segmentation_fused_mav.nii.gz")
    assert set(np.unique(source).tolist()) == {0, 1, 2, 4}
    seg = array(outcome.patient.mask)
    assert set(np.unique(seg).tolist()) == {0, 1, 2, 3}
    assert int((seg == 3).sum()) == int((source == 4).sum()) > 0
    assert outcome.patient.qc["label_voxels"] == {
        "netc": int((source == 1).sum()),
        "snfh": int((source == 2).sum()),
        "et": int((source == 4).sum()),
    }
    assert outcome.patient.qc["tumour_components"] == components(
        np.isin(source, (1, 4)), sitk.ReadImage(str(folder / "segmentation_fused_mav.nii.gz"))
    )
    t1c = array(outcome.patient.images["t1c"])
    assert np.array_equal(t1c, array(folder / f"{case}_t1c_bet.nii.gz")) and t1c.min() < 0


# --------------------------------------------------------------------------------------------------
# d. TCGA-FG-6692 raw: thick slices, a field of view per sequence
# --------------------------------------------------------------------------------------------------


def raw_tcga(real: Path, tmp_path: Path) -> tuple[Path, dict[str, Path]]:
    """The raw series linked as <root>/TCGA-FG-6692/{t1n,t1c,t2w,t2f}.nii.gz plus a mask on the T1c grid."""
    folder = need(real / "tcga_fg_6692" / "raw")
    suffix = {"t1": "t1n", "t1c": "t1c", "t2": "t2w", "fla": "t2f"}
    files = {suffix[p.name.removesuffix(".nii.gz").rsplit("_", 1)[1]]: p for p in sorted(folder.glob("*.nii.gz"))}
    assert sorted(files) == sorted(SEQUENCES)
    root = tmp_path / "images"
    case_dir = link_files(root / "TCGA-FG-6692", {f"{s}.nii.gz": p for s, p in files.items()})
    t1c = sitk.ReadImage(str(files["t1c"]))
    labels = np.zeros(sitk.GetArrayViewFromImage(t1c).shape, np.uint8)
    labels[12:15, 100:110, 120:130] = 3  # z, y, x: 3 x 10 x 10 voxels of ET
    mask = sitk.GetImageFromArray(labels)
    mask.CopyInformation(t1c)
    sitk.WriteImage(mask, str(case_dir / "seg.nii.gz"))
    return root, files


def raw_institution(root: Path, tmp_path: Path, co_registered: bool) -> Institution:
    return Institution.model_validate(
        {
            "images": {
                "layout": "pattern",
                "root": str(root),
                "sequences": {s: f"{{case}}/{s}.nii.gz" for s in SEQUENCES},
                "mask": "{case}/seg.nii.gz",
            },
            "acquisition": {"skull_stripped": False, "bias_corrected": False, "co_registered": co_registered},
            "clinical": clinical_decl(tmp_path / "clinical.csv"),
        }
    )


def test_tcga_raw_declared_co_registered_is_a_grid_mismatch(real: Path, tmp_path: Path) -> None:
    root, _ = raw_tcga(real, tmp_path)
    outcome = ingest_one("tcga", raw_institution(root, tmp_path, co_registered=True), tmp_path / "work")
    assert not outcome.ok
    assert [q.reason for q in outcome.quarantine] == ["sequence_grid_mismatch"]
    message = outcome.quarantine[0].message
    assert "co_registered: false" in message and "TCGA-FG-6692" not in message


def test_tcga_raw_not_co_registered_keeps_each_sequence_on_its_grid(real: Path, tmp_path: Path) -> None:
    root, files = raw_tcga(real, tmp_path)
    outcome = ingest_one("tcga", raw_institution(root, tmp_path, co_registered=False), tmp_path / "work")
    assert outcome.ok, outcome.quarantine
    assert outcome.patient is not None
    geometry = outcome.patient.qc["geometry"]
    for seq, path in files.items():
        source = sitk.ReadImage(str(path))
        assert geometry[seq]["size"] == list(source.GetSize())
        assert sitk.ReadImage(str(outcome.patient.images[seq])).GetSize() == source.GetSize()
        assert geometry[seq]["spacing"][2] == pytest.approx(5.5, abs=1e-3)
    assert len({tuple(geometry[s]["size"]) for s in SEQUENCES}) == 3  # t1n and t1c share one field of view
    assert geometry["t2w"]["origin"] != geometry["t1c"]["origin"]
    assert outcome.patient.qc["label_voxels"] == {"netc": 0, "snfh": 0, "et": 300}
    assert outcome.patient.qc["tumour_components"] == 1


# --------------------------------------------------------------------------------------------------
# e. MOLAB: a real brain-metastasis clinical sheet
# --------------------------------------------------------------------------------------------------

MOLAB_PRIMARY = {
    1: "breast",
    2: "lung",
    3: "lung",
    4: "melanoma",
    5: "renal",
    6: "gi",
    **{code: "other" for code in range(7, 13)},
}
MOLAB_STEPS = ["strip", "int_like", "strip_leading_zeros"]


def molab_source(path: Path, **changes: Any) -> ClinicalSource:
    return ClinicalSource.model_validate(
        {
            "path": str(path),
            "header_rows": [12, 13, 14],
            "id_column": "Patient ID",
            "id_normalise": MOLAB_STEPS,
            "rows_per_patient": "many",
            "count_rows_as": "n_brain_mets",
            "merge_rules": {"age": "min"},
            "columns": {"age": "Age at RM1", "sex": "Sex", "gpa": "GPA", "primary": "PRIMARY TUMOR / Type"},
            "values": {"sex": {1: "female", 2: "male"}, "primary": MOLAB_PRIMARY},
            "survival": {
                "kind": "duration",
                "time_column": "Death / Time",
                "time_unit": "days",
                "event_column": "Ocurrence",
            },
            **changes,
        }
    )


def molab_raw(path: Path) -> pd.DataFrame:
    """The data rows of the sheet read directly: id (col 0), GPA (3), primary (5), occurrence (71), time (72)."""
    raw = pd.read_excel(path, header=None, dtype=object).iloc[15:]
    raw = raw[raw[0].notna()]
    return pd.DataFrame(
        {
            "id": [normalise_id(v, MOLAB_STEPS) for v in raw[0]],
            "gpa": raw[3].to_numpy(),
            "primary": raw[5].to_numpy(),
            "event": raw[71].to_numpy(),
            "time": raw[72].to_numpy(),
        }
    )


def test_molab_clinical_sheet(real: Path) -> None:
    path = need(real / MOLAB_CLINICAL)
    frame, quarantine, report = harmonise_table("molab", molab_source(path), IngestParams(), PSEUDONYMISER)
    raw = molab_raw(path)
    ids = {PSEUDONYMISER.case_id("molab", i): i for i in raw["id"]}
    by_reason: dict[str, set[str]] = {}
    for q in quarantine:
        by_reason.setdefault(q.reason, set()).add(q.case_id)

    assert len(frame) >= 70
    assert len(frame) + report["quarantined"] == report["patients"] == len(ids)
    assert (frame["event"] == 1).all()  # MOLAB has no censoring
    assert (frame["time_days"] > 0).all()
    assert (frame["n_brain_mets"] >= 1).all()
    gpa = frame["gpa"].dropna()
    assert len(gpa) >= 60 and gpa.between(0, 4).all()
    assert set(frame["sex"]) == {"female", "male"}
    assert set(frame["primary"]) <= {"lung", "breast", "melanoma", "gi", "renal", "other"}
    assert report["primary_mapped_to_other"] == {}  # every code is declared

    # independently from the sheet: the lesion count and the primary code of every harmonised patient
    rows = raw.groupby("id")
    for case_id, n, primary in frame[["case_id", "n_brain_mets", "primary"]].itertuples(index=False):
        source = rows.get_group(ids[case_id])
        assert n == len(source)
        assert primary == MOLAB_PRIMARY[int(source["primary"].iloc[0])]

    # patients without a death time: none of the 75 numbered patients, only the two free-text notes
    # under the table ("Segmentation available", "Times are displayed in days since MR1")
    no_time = {PSEUDONYMISER.case_id("molab", i) for i, g in rows if g["time"].isna().all()}
    assert by_reason["missing_survival"] == no_time
    assert all(not ids[c].isdigit() for c in no_time) and len(no_time) == 2
    # some patients have a different GPA on different lesion rows
    gpa_disagree = {PSEUDONYMISER.case_id("molab", i) for i, g in rows if g["gpa"].dropna().nunique() > 1}
    assert by_reason.get("inconsistent_rows", set()) == gpa_disagree
    assert set(by_reason) <= {"missing_survival", "inconsistent_rows"}

    # declaring how to merge GPA harmonises every numbered patient
    frame_all, quarantine_all, _ = harmonise_table(
        "molab", molab_source(path, merge_rules={"age": "min", "gpa": "min"}), IngestParams(), PSEUDONYMISER
    )
    numbered = {c for c, i in ids.items() if i.isdigit()}
    assert set(frame_all["case_id"]) == numbered and len(numbered) >= 75
    assert {q.reason for q in quarantine_all} == {"missing_survival"}

    # and an id pattern keeps the notes under the table out of the patients altogether
    frame_clean, quarantine_clean, report_clean = harmonise_table(
        "molab", molab_source(path, merge_rules={"age": "min", "gpa": "min"}, id_pattern=r"\d+"),
        IngestParams(), PSEUDONYMISER,
    )
    assert quarantine_clean == [] and set(frame_clean["case_id"]) == numbered
    assert report_clean["rows_skipped_by_id_pattern"] == 2


def test_molab_morphology_ids_meet_the_clinical_ids(real: Path) -> None:
    clinical_path = need(real / MOLAB_CLINICAL)
    morphology = pd.read_excel(need(real / MOLAB_MORPHOLOGY), dtype={"PATIENT": float})
    assert morphology["PATIENT"].iloc[0] == 10005.0
    clinical_ids = {i for i in molab_raw(clinical_path)["id"] if i.isdigit()}
    raw_clinical = pd.read_excel(clinical_path, header=None, dtype=object).iloc[15:, 0].dropna()
    assert any(str(v).startswith("0") for v in raw_clinical)  # "010005" here, 10005.0 there

    def case_ids(values: Any, steps: list[Any]) -> set[str]:
        return {PSEUDONYMISER.case_id("molab", normalise_id(v, steps) or "") for v in values}

    clinical = case_ids(clinical_ids, MOLAB_STEPS)
    from_float = case_ids(morphology["PATIENT"].unique(), MOLAB_STEPS)
    from_text = case_ids({str(v) for v in morphology["PATIENT"].unique()}, MOLAB_STEPS)  # "10005.0"
    assert from_float == from_text
    assert len(from_float & clinical) >= 70
    # without the normalisation the two files do not meet at all
    assert not case_ids(raw_clinical[raw_clinical.astype(str).str.isdigit()], ["strip"]) & case_ids(
        {str(v) for v in morphology["PATIENT"].unique()}, ["strip"]
    )


# --------------------------------------------------------------------------------------------------
# f. UCSF-PDGM metadata: real censoring
# --------------------------------------------------------------------------------------------------


def test_ucsf_pdgm_metadata(real: Path, tmp_path: Path) -> None:
    path = need(real / UCSF)
    src = ClinicalSource.model_validate(
        {
            "path": str(path),
            "id_column": "ID",
            "columns": {"sex": "Sex", "age": "Age at MRI"},
            "values": {"sex": {"M": "male", "F": "female"}},
            "survival": {
                "kind": "duration",
                "time_column": "OS",
                "time_unit": "days",
                "event_column": "1-dead 0-alive",
            },
            "extra_columns": {"who_grade": "WHO CNS Grade", "idh": "IDH", "mgmt": "MGMT status"},
        }
    )
    frame, quarantine, report = harmonise_table("ucsf", src, IngestParams(), PSEUDONYMISER)

    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    case = {r: PSEUDONYMISER.case_id("ucsf", r) for r in raw["ID"]}
    no_survival = raw["OS"].str.strip().eq("") | raw["1-dead 0-alive"].str.strip().eq("")
    too_young = ~no_survival & (pd.to_numeric(raw["Age at MRI"]) < 18)
    expected = {case[r]: "missing_survival" for r in raw.loc[no_survival, "ID"]}
    expected |= {case[r]: "clinical_out_of_range" for r in raw.loc[too_young, "ID"]}
    assert no_survival.sum() >= 1
    assert {q.case_id: q.reason for q in quarantine} == expected

    assert len(frame) > 400 and len(frame) == len(raw) - len(expected) == report["harmonised"]
    censored = float((frame["event"] == 0).mean())
    assert 0.3 < censored < 0.7
    kept = raw[~raw["ID"].map(case).isin(expected)]
    assert censored == pytest.approx((kept["1-dead 0-alive"] == "0").mean())
    assert frame["time_days"].sum() == pytest.approx(pd.to_numeric(kept["OS"]).sum())
    assert set(frame["sex"]) == {"female", "male"}

    assert {"extra_who_grade", "extra_idh", "extra_mgmt"} <= set(frame.columns)
    assert frame["extra_who_grade"].dtype == "Float64" and set(frame["extra_who_grade"].dropna()) == {2.0, 3.0, 4.0}
    assert frame["extra_idh"].dtype == "string" and "wildtype" in set(frame["extra_idh"].dropna())
    assert set(frame["extra_mgmt"].dropna()) == {"positive", "negative", "indeterminate"}
    assert frame["extra_mgmt"].isna().sum() == (kept["MGMT status"] == "").sum()


def test_molab_baselines_through_the_evaluation_module(real: Path) -> None:
    """The clinical sheet through the declared ingestion, joined with the lesion volumes per patient, and
    GPA / Cox baselines scored with bootstrap intervals (the numbers are in benchmarks/RESULTS.md)."""
    from sksurv.linear_model import CoxPHSurvivalAnalysis

    from survival_model.config import TabularParams
    from survival_model.evaluation.baselines import Baseline, cross_validated_risk
    from survival_model.ingest.molab import load_molab
    from survival_model.metrics import bootstrap_c

    cohort = load_molab(need(real / MOLAB_CLINICAL), need(real / MOLAB_MORPHOLOGY), PSEUDONYMISER)
    frame = cohort.patients
    assert len(frame) >= 75 and cohort.quarantined == 0 and cohort.without_volume == 0
    assert frame["case_id"].is_unique and (frame["event"] == 1).all()
    # the volume comes from the first segmented MRI, usually months after MR1: its own time origin
    assert (frame["landmark_days"] > 0).all() and frame["segmented_day"].median() > 100
    assert (frame["total_ml"] >= frame["enhancing_ml"]).all() and (frame["n_lesions"] >= 1).all()
    with_gpa = frame[frame["gpa"].notna()].assign(time_days=lambda f: f["landmark_days"]).reset_index(drop=True)
    gpa = bootstrap_c(-with_gpa["gpa"].to_numpy(float), with_gpa["time_days"], with_gpa["event"], resamples=200)
    volumes = Baseline("cox_volumes", "Cox: log volumes", TabularParams(clinical=[], volumetric=True, scores=[]),
                       lambda seed: CoxPHSurvivalAnalysis(alpha=0.1))
    risk = cross_validated_risk(volumes, with_gpa, folds=5, repeats=2)
    cox = bootstrap_c(risk, with_gpa["time_days"], with_gpa["event"], resamples=200)
    for estimate in (gpa, cox):
        assert 0.2 < estimate.value < 0.8 and estimate.low < estimate.value < estimate.high
