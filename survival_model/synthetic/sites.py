"""The three synthetic institutions and how each writes its images and clinical table.

They differ the way real sources do (the default ``params.yaml`` declares each as a user would):

=========  ===================================  ==============================================
site       images                               clinical table
=========  ===================================  ==============================================
site_a     BraTS-METS layout, NIfTI float32,     CSV, survival in days + event 0/1,
           base spacing (1 mm at full size),     sex F/M, yes/no flags
           LPS, skull-stripped, bias-corrected,
           labels 1 NETC / 2 SNFH / 3 ET
site_b     flat folder of NRRD files             XLSX with a title row above the header,
           ``P0042_{T1,T1GD,T2,FLAIR}.nrrd`` +   ids as plain numbers (42), survival in months,
           ``P0042_labels.nrrd``, int16,         "Deceased"/"Alive", "KPS 80", codes NSCLC/RCC/...
           0.9 x 0.9 x 3 x base spacing,
           RAS-flipped direction, skull present,
           bias field, old BraTS labels 1/2/4
site_c     one DICOM series per sequence         CSV with ';' separators and dd.mm.yyyy dates
           (correct geometry tags), mask NIfTI,  (birth, diagnosis, last contact, death) instead
           1 x 1 x 1.2 x base spacing, skull,    of durations; some values missing
           bias field, small rigid motion
           between sequences (mask on T1c)
=========  ===================================  ==============================================

Each real export also carries identifying columns (name, MRN, date of birth); they are written here
so that ingestion has to drop them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import SimpleITK as sitk

from survival_model.imageio import write_image, write_text
from survival_model.synthetic.phantom import SEQUENCES, Grid
from survival_model.synthetic.survival import DAYS_PER_MONTH

FIRST_NAMES = ("Anna", "Ben", "Clara", "David", "Elena", "Farid", "Grete", "Hugo", "Ines", "Jonas",
               "Karin", "Luca", "Maria", "Nils", "Olga", "Pablo", "Rosa", "Sven", "Tara", "Ugo")
LAST_NAMES = ("Almeida", "Berger", "Costa", "Dubois", "Eriksen", "Fischer", "Garcia", "Horvat",
              "Ivanova", "Jansen", "Kowalski", "Larsen", "Moreau", "Novak", "Olsen", "Petrov")


@dataclass(frozen=True)
class SiteSpec:
    """How one synthetic institution acquires and stores its data."""

    name: str
    spacing_factor: tuple[float, float, float]
    direction: tuple[float, ...]
    skull_stripped: bool
    bias_strength: float
    motion: bool
    intensity_scale: float
    noise_sigma: float


SITES: dict[str, SiteSpec] = {
    "site_a": SiteSpec("site_a", (1.0, 1.0, 1.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), True, 0.0, False, 1000.0, 0.025),
    "site_b": SiteSpec("site_b", (0.9, 0.9, 3.0), (-1, 0, 0, 0, -1, 0, 0, 0, 1), False, 0.35, False, 1600.0, 0.035),
    "site_c": SiteSpec("site_c", (1.0, 1.0, 1.2), (1, 0, 0, 0, 1, 0, 0, 0, 1), False, 0.25, True, 1200.0, 0.03),
}


def site_grid(spec: SiteSpec, base_shape: tuple[int, int, int], base_spacing: float) -> Grid:
    """The site's acquisition grid: the base field of view at the site's voxel size and direction."""
    fov = np.array(base_shape, dtype=float) * base_spacing
    spacing = tuple(float(base_spacing * f) for f in spec.spacing_factor)
    size = tuple(max(4, round(fov[i] / spacing[i])) for i in range(3))
    return Grid.centred((size[0], size[1], size[2]), (spacing[0], spacing[1], spacing[2]),
                        tuple(float(d) for d in spec.direction))


def source_id(site: str, index: int) -> str:
    """The identifier a site uses in its file names."""
    return {"site_a": f"SYN-MET-{index:05d}-000", "site_b": f"P{index:04d}", "site_c": f"C{index:03d}"}[site]


def patient_key(site: str, index: int) -> str:
    """The id both image names and clinical rows normalise to under the default params.yaml."""
    return source_id(site, index) if site == "site_a" else str(index)


def to_image(array: np.ndarray, grid: Grid, dtype: int | None = None) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(grid.spacing)
    image.SetOrigin(grid.origin)
    image.SetDirection(grid.direction)
    return image if dtype is None else sitk.Cast(image, dtype)


def as_int16(array: np.ndarray) -> np.ndarray:
    out: np.ndarray = np.clip(np.rint(array), 0, 32767).astype(np.int16)
    return out


# --------------------------------------------------------------------------------------------------
# Image writers
# --------------------------------------------------------------------------------------------------


def site_a_paths(root: Path, sid: str) -> dict[str, Path]:
    folder = root / "images" / sid
    return {**{s: folder / f"{sid}-{s}.nii.gz" for s in SEQUENCES}, "seg": folder / f"{sid}-seg.nii.gz"}


SITE_B_NAMES = {"t1n": "T1", "t1c": "T1GD", "t2w": "T2", "t2f": "FLAIR", "seg": "labels"}
SITE_C_SERIES = {"t1n": "T1", "t1c": "T1C", "t2w": "T2", "t2f": "FLAIR"}


def site_b_paths(root: Path, sid: str) -> dict[str, Path]:
    return {k: root / "images" / f"{sid}_{v}.nrrd" for k, v in SITE_B_NAMES.items()}


def site_c_paths(root: Path, sid: str) -> dict[str, Path]:
    folder = root / "images" / sid
    return {**{s: folder / SITE_C_SERIES[s] for s in SEQUENCES}, "seg": folder / "seg.nii.gz"}


def write_site_a(root: Path, sid: str, volumes: Mapping[str, np.ndarray], grid: Grid) -> None:
    paths = site_a_paths(root, sid)
    for name, array in volumes.items():
        dtype = sitk.sitkUInt8 if name == "seg" else sitk.sitkFloat32
        write_image(to_image(array, grid, dtype), paths[name])


def write_site_b(root: Path, sid: str, volumes: Mapping[str, np.ndarray], grid: Grid,
                 mask_grid: Grid | None = None) -> None:
    paths = site_b_paths(root, sid)
    for name, array in volumes.items():
        if name == "seg":
            write_image(to_image(array.astype(np.uint8), mask_grid or grid), paths[name])
        else:
            write_image(to_image(as_int16(array), grid), paths[name])


def _uid(*parts: object) -> str:
    digits = int(hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()[:24], 16)
    return f"1.2.826.0.1.3680043.8.498.{digits}"[:64]


def write_dicom_series(folder: Path, array: np.ndarray, grid: Grid, tags: Mapping[str, str],
                       series_uid: str, series_number: int, description: str) -> None:
    """One DICOM MR series, one file per slice, with position/orientation tags from the grid."""
    folder.mkdir(parents=True, exist_ok=True)
    pixels = as_int16(array)
    volume = to_image(pixels, grid)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    direction = grid.direction
    orientation = "\\".join(f"{v:.6f}" for v in (direction[0], direction[3], direction[6],
                                                 direction[1], direction[4], direction[7]))
    for k in range(volume.GetDepth()):
        slice_image = sitk.GetImageFromArray(pixels[k])  # faster than slicing the SimpleITK volume
        slice_image.SetSpacing(grid.spacing[:2])
        position = volume.TransformIndexToPhysicalPoint((0, 0, k))
        slice_tags = {
            **tags,
            "0008|0008": "ORIGINAL\\PRIMARY\\M\\ND",
            "0008|0016": "1.2.840.10008.5.1.4.1.1.4",
            "0008|0018": _uid(series_uid, k),
            "0008|0060": "MR",
            "0008|103e": description,
            "0020|000e": series_uid,
            "0020|0011": str(series_number),
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{v:.4f}" for v in position),
            "0020|0037": orientation,
            "0018|0050": f"{grid.spacing[2]:.4f}",
            "0018|0088": f"{grid.spacing[2]:.4f}",
        }
        for key, value in slice_tags.items():
            slice_image.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"IM{k + 1:04d}.dcm"))
        writer.Execute(slice_image)


def write_site_c(root: Path, sid: str, volumes: Mapping[str, np.ndarray], grid: Grid,
                 identity: Mapping[str, str], seed: int) -> None:
    paths = site_c_paths(root, sid)
    study_uid = _uid("study", seed, sid)
    tags = {
        "0010|0010": identity["name"].replace(" ", "^"),
        "0010|0020": identity["mrn"],
        "0010|0030": identity["birth_date"].replace("-", ""),
        "0020|000d": study_uid,
        "0020|0052": _uid("frame", seed, sid),
        # fixed study and instance dates and times: SimpleITK stamps the wall clock otherwise, and the same
        # cohort must be the same bytes on every machine (its content digests decide the splits)
        "0008|0020": "20200101",
        "0008|0030": "120000",
        "0008|0012": "20200101",
        "0008|0013": "120000",
    }
    for number, name in enumerate(SEQUENCES, start=1):
        if name in volumes:
            write_dicom_series(paths[name], volumes[name], grid, tags, _uid("series", seed, sid, name),
                               number, SITE_C_SERIES[name])
    if "seg" in volumes:
        write_image(to_image(volumes["seg"].astype(np.uint8), grid), paths["seg"])


# --------------------------------------------------------------------------------------------------
# Clinical tables
# --------------------------------------------------------------------------------------------------


def _yes_no(value: bool | None, yes: str = "yes", no: str = "no") -> str:
    return "" if value is None else (yes if value else no)


def site_a_row(p: dict[str, Any]) -> dict[str, Any]:
    c = p["clinical"]
    return {
        "case_id": p["source_id"],
        "patient_name": p["identity"]["name"],
        "mrn": p["identity"]["mrn"],
        "date_of_birth": p["identity"]["birth_date"],
        "age": c["age"],
        "sex": "F" if c["sex"] == "female" else "M",
        "kps": c["kps"],
        "primary": c["primary"],
        "extracranial_mets": _yes_no(c["extracranial"]),
        "n_brain_mets": c["n_brain_mets"],
        "egfr": _yes_no(c["egfr_mutant"], "mutant", "wildtype"),
        "alk": _yes_no(c["alk_positive"], "positive", "negative"),
        "her2": _yes_no(c["her2_positive"], "positive", "negative"),
        "hr": _yes_no(c["hr_positive"], "positive", "negative"),
        "braf": _yes_no(c["braf_mutant"], "mutant", "wildtype"),
        "os_days": p["time_days"],
        "death": p["event"],
    }


_SITE_B_PRIMARY = {"lung": ("NSCLC", "SCLC"), "breast": ("Breast Ca",), "melanoma": ("Melanoma",),
                   "gi": ("Colorectal", "Gastric"), "renal": ("RCC",), "other": ("Other", "Thyroid", "Ovary")}


def site_b_row(p: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    c = p["clinical"]
    return {
        "Patient ID": p["index"],
        "Name": p["identity"]["name"],
        "MRN": p["identity"]["mrn"],
        "DOB": p["identity"]["birth_date"],
        "Age at Dx": int(c["age"]),
        "Gender": "F" if c["sex"] == "female" else "M",
        "Performance": f"KPS {c['kps']}",
        "Primary Site": str(rng.choice(_SITE_B_PRIMARY[c["primary"]])),
        "Extracranial mets": _yes_no(c["extracranial"], "Y", "N"),
        "No. brain mets": c["n_brain_mets"],
        "EGFR": _yes_no(c["egfr_mutant"], "Mut", "WT"),
        "ALK": _yes_no(c["alk_positive"], "Pos", "Neg"),
        "HER2": _yes_no(c["her2_positive"], "Pos", "Neg"),
        "HR": _yes_no(c["hr_positive"], "Pos", "Neg"),
        "BRAF": _yes_no(c["braf_mutant"], "Mut", "WT"),
        "OS (months)": round(p["time_days"] / DAYS_PER_MONTH, 2),
        "Status": "Deceased" if p["event"] else "Alive",
    }


def site_c_row(p: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    c = p["clinical"]
    diagnosis = dt.date.fromisoformat(p["identity"]["diagnosis_date"])
    end = diagnosis + dt.timedelta(days=int(p["time_days"]))
    fmt = "%d.%m.%Y"
    missing = rng.uniform(size=4)
    return {
        "pid": f"C-{p['index']:03d}",
        "surname": p["identity"]["name"].split()[-1],
        "first_name": p["identity"]["name"].split()[0],
        "birth_date": dt.date.fromisoformat(p["identity"]["birth_date"]).strftime(fmt),
        "sex": c["sex"],
        "kps": "" if missing[0] < 0.08 else c["kps"],
        "primary": c["primary"],
        "ecm": "" if missing[1] < 0.05 else int(c["extracranial"]),
        "nmets": c["n_brain_mets"],
        "egfr": "" if missing[2] < 0.3 else _yes_no(c["egfr_mutant"], "1", "0"),
        "alk": "" if missing[2] < 0.3 else _yes_no(c["alk_positive"], "1", "0"),
        "her2": _yes_no(c["her2_positive"], "1", "0"),
        "hr": _yes_no(c["hr_positive"], "1", "0"),
        "braf": "" if missing[3] < 0.2 else _yes_no(c["braf_mutant"], "1", "0"),
        "date_diagnosis": diagnosis.strftime(fmt),
        "date_last_contact": end.strftime(fmt),
        "date_death": end.strftime(fmt) if p["event"] else "",
    }


def write_clinical_a(root: Path, rows: list[dict[str, Any]]) -> Path:
    path = root / "clinical.csv"
    write_text(pd.DataFrame(rows).to_csv(index=False), path)
    return path


def write_clinical_b(root: Path, rows: list[dict[str, Any]]) -> Path:
    """XLSX with a title and a blank row above the header (real exports often look like this)."""
    path = root / "clinical.xlsx"
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(rows)
    tmp = path.with_name(f".{path.name}.tmp.xlsx")
    with pd.ExcelWriter(tmp, engine="openpyxl") as writer:
        frame.to_excel(writer, sheet_name="Registry", index=False, startrow=2)
        writer.sheets["Registry"]["A1"] = "Brain metastasis registry - export"
    tmp.replace(path)
    return path


def write_clinical_c(root: Path, rows: list[dict[str, Any]]) -> Path:
    path = root / "clinical.csv"
    write_text(pd.DataFrame(rows).to_csv(index=False, sep=";"), path)
    return path
