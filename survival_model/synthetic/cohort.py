"""Generate the synthetic three-institution cohort with its ground truth.

``generate_cohort(GeneratorConfig(...))`` writes, under ``out_dir``::

    site_a/images/<case>/<case>-{t1n,t1c,t2w,t2f,seg}.nii.gz   site_a/clinical.csv
    site_b/images/P0001_{T1,T1GD,T2,FLAIR,labels}.nrrd          site_b/clinical.xlsx
    site_c/images/C001/{T1,T1C,T2,FLAIR}/IM*.dcm + seg.nii.gz   site_c/clinical.csv
    ground_truth/   patients.csv (true linear predictor, GPA, latent times, imaging covariates),
                    lesions.csv, bias/<site>/<case>.nii.gz (true bias fields, 4x coarser grid) and
                    the exact analytic specs in patients.csv, expected_quarantine.csv,
                    generative_model.json, README.md
    manifest.json   the generator settings (written last: its presence marks a complete cohort)

The pipeline never reads ``ground_truth/``. Everything is deterministic for ``seed``: each patient
draws from its own ``numpy`` generator seeded by (seed, site, index), so patients can be rendered in
parallel processes in any order. The image-only contrast-enhancement latent ``z`` (see
``survival.py``) has a stream of its own, (seed, site, index, ``ENHANCEMENT_STREAM``), so adding it
changed no other draw. It is rendered whatever ``image_effect`` is, so cohorts that differ only in
``image_effect`` have identical images and differ only in survival (true_lp, event and observed
times, and the censoring rate calibrated on them).

Deliberately bad patients (``bad_patients=True``) are extra patients, one per quarantine reason that
bad input can produce, spread over the sites; ``expected_quarantine.csv`` says which is which.
"""

from __future__ import annotations

import concurrent.futures as cf
import datetime as dt
import json
import logging
import math
import multiprocessing
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import SimpleITK as sitk

from survival_model.errors import SurvivalModelError
from survival_model.imageio import write_image, write_json, write_text
from survival_model.synthetic import phantom, sites
from survival_model.synthetic import survival as sv

log = logging.getLogger(__name__)

GENERATOR_VERSION = 3  # bump when the same settings would produce different data
#: log hazard ratio per SD of the contrast-enhancement latent; explains ~12 % of true_lp's variance
#: on the default cohort (0.75, "strong": ~38 %; 0: exactly the survival model of version 2)
DEFAULT_IMAGE_EFFECT = 0.6
ENHANCEMENT_STREAM = 5  # the 4th seed word of the enhancement latent's own random stream
ENHANCEMENT_CLIP = 2.5  # |z| is clipped here (the phantom accepts up to 3)
SITE_ORDER = ("site_a", "site_b", "site_c")

#: quarantine reason -> site that produces it (when bad patients are switched on).
BAD_PATIENTS: dict[str, str] = {
    "missing_sequence": "site_a",
    "missing_segmentation": "site_a",
    "empty_mask": "site_a",
    "non_finite": "site_a",
    "missing_clinical": "site_a",
    "unknown_label": "site_b",
    "mask_grid_mismatch": "site_b",
    "missing_images": "site_b",
    "clinical_out_of_range": "site_b",
    "duplicate_clinical_row": "site_b",
    "unreadable_image": "site_c",
    "death_before_diagnosis": "site_c",
    "missing_survival": "site_c",
}


class GeneratorError(SurvivalModelError):
    """The synthetic cohort cannot be generated as asked."""


@dataclass(frozen=True)
class GeneratorConfig:
    """What to generate. ``shape``/``spacing_mm`` are site A's grid; other sites derive theirs."""

    out_dir: Path
    seed: int = 20250515
    patients: dict[str, int] = field(default_factory=lambda: {"site_a": 60, "site_b": 50, "site_c": 38})
    shape: tuple[int, int, int] = (96, 96, 62)
    spacing_mm: float = 2.5
    bad_patients: bool = True
    censor_fraction: float = 0.28
    workers: int = 1
    image_effect: float = DEFAULT_IMAGE_EFFECT

    def identity(self) -> dict[str, Any]:
        """The settings that define the data (not where it is or how many workers made it)."""
        return {
            "generator_version": GENERATOR_VERSION,
            "seed": self.seed,
            "patients": dict(sorted(self.patients.items())),
            "shape": list(self.shape),
            "spacing_mm": self.spacing_mm,
            "bad_patients": self.bad_patients,
            "censor_fraction": self.censor_fraction,
            "image_effect": self.image_effect,
        }


@dataclass(frozen=True)
class PatientPlan:
    site: str
    index: int
    bad: str | None = None


def plan_cohort(config: GeneratorConfig) -> list[PatientPlan]:
    if not (math.isfinite(config.image_effect) and abs(config.image_effect) <= 3.0):
        raise GeneratorError(f"image_effect must be a log hazard ratio in [-3, 3], got {config.image_effect!r}")
    plans = []
    for site in SITE_ORDER:
        n = config.patients.get(site, 0)
        if n < 0:
            raise GeneratorError(f"negative patient count for {site}")
        plans += [PatientPlan(site, i) for i in range(1, n + 1)]
        if config.bad_patients and n > 0:
            bad = [reason for reason, s in BAD_PATIENTS.items() if s == site]
            plans += [PatientPlan(site, n + 1 + j, reason) for j, reason in enumerate(bad)]
    if not plans:
        raise GeneratorError("no patients requested")
    return plans


def existing_cohort(out_dir: Path) -> dict[str, Any] | None:
    """The manifest of a complete generated cohort in ``out_dir``, or None."""
    manifest = Path(out_dir) / "manifest.json"
    if not manifest.is_file():
        return None
    data: dict[str, Any] = json.loads(manifest.read_text(encoding="utf-8"))
    return data


# --------------------------------------------------------------------------------------------------
# One patient (runs in a worker process)
# --------------------------------------------------------------------------------------------------


def _patient_rng(config: GeneratorConfig, plan: PatientPlan) -> np.random.Generator:
    return np.random.default_rng([config.seed, SITE_ORDER.index(plan.site), plan.index])


def draw_enhancement(config: GeneratorConfig, plan: PatientPlan) -> float:
    """The patient's contrast-enhancement latent z ~ N(0, 1) clipped to +-2.5, from its own stream."""
    rng = np.random.default_rng([config.seed, SITE_ORDER.index(plan.site), plan.index, ENHANCEMENT_STREAM])
    return float(np.clip(rng.standard_normal(), -ENHANCEMENT_CLIP, ENHANCEMENT_CLIP))


def _identity(rng: np.random.Generator, age: float, entry_months: float) -> dict[str, str]:
    diagnosis = dt.date(2016, 1, 4) + dt.timedelta(days=int(entry_months * sv.DAYS_PER_MONTH))
    birth = diagnosis - dt.timedelta(days=round(age * 365.25))
    return {
        "name": f"{rng.choice(sites.FIRST_NAMES)} {rng.choice(sites.LAST_NAMES)}",
        "mrn": f"{int(rng.integers(10_000_000, 99_999_999))}",
        "birth_date": birth.isoformat(),
        "diagnosis_date": diagnosis.isoformat(),
    }


def _imaging_truth(head: phantom.Head, lesions: list[phantom.Lesion],
                   enhancement: float = 0.0) -> tuple[sv.ImagingTruth, list[dict[str, Any]]]:
    # Tumour volumes are analytic (exact); edema follows white matter, so it is rendered - at 2 mm,
    # which is plenty for a patient-level covariate and 8x cheaper than 1 mm.
    summaries = phantom.lesion_summaries(head, lesions, n_directions=1024)
    snfh = phantom.region_volumes(head, lesions, resolution_mm=2.0)["SNFH"]
    tumour = np.array([s.tumour_mm3 for s in summaries])
    weights = tumour / tumour.sum()
    et = float(sum(s.et_mm3 for s in summaries))
    netc = float(sum(s.netc_mm3 for s in summaries))
    tc = max(et + netc, 1e-6)
    truth = sv.ImagingTruth(
        et_ml=et / 1000,
        netc_ml=netc / 1000,
        snfh_ml=snfh / 1000,
        edema_ratio=snfh / tc,
        necrosis_fraction=netc / tc,
        rim_irregularity=float(np.dot(weights, [les.rim_irregularity for les in lesions])),
        heterogeneity=float(np.dot(weights, [les.heterogeneity for les in lesions])),
        infratentorial=any(s.infratentorial for s in summaries),
        enhancement=enhancement,
    )
    rows = [
        {**asdict(les), "index": s.index, "tumour_mm3": s.tumour_mm3, "et_mm3": s.et_mm3,
         "netc_mm3": s.netc_mm3, "infratentorial": s.infratentorial}
        for les, s in zip(lesions, summaries, strict=True)
    ]
    return truth, rows


def _corrupt(plan: PatientPlan, volumes: dict[str, np.ndarray]) -> None:
    """Apply a bad patient's image defect in place (the clinical defects are applied later)."""
    if plan.bad == "missing_sequence":
        del volumes["t2w"]
    elif plan.bad == "missing_segmentation":
        del volumes["seg"]
    elif plan.bad == "empty_mask":
        volumes["seg"][...] = 0
    elif plan.bad == "non_finite":
        t1n = volumes["t1n"].astype(np.float32)
        z = t1n.shape[0] // 2
        t1n[z, :4, :4] = np.nan
        volumes["t1n"] = t1n


def make_patient(config: GeneratorConfig, plan: PatientPlan) -> dict[str, Any]:
    """Sample one patient, render and write its images in its site's format; return its truth."""
    rng = _patient_rng(config, plan)
    spec = sites.SITES[plan.site]
    clinical = sv.sample_clinical(rng)
    head = phantom.sample_head(rng)
    enhancement = draw_enhancement(config, plan)  # own stream: every draw of ``rng`` is as before
    lesions = [replace(les, enhancement=enhancement)
               for les in phantom.sample_lesions(head, clinical.n_brain_mets, rng)]
    imaging, lesion_rows = _imaging_truth(head, lesions, enhancement)
    truth = sv.survival_truth(clinical, imaging, rng, config.image_effect)
    entry = sv.draw_entry_month(rng)
    identity = _identity(rng, clinical.age, entry)
    grid = sites.site_grid(spec, config.shape, config.spacing_mm)
    bias = phantom.sample_bias_field(rng, spec.bias_strength) if spec.bias_strength > 0 else None
    motions = {s: phantom.sample_motion(rng) for s in ("t1n", "t2w", "t2f")} if spec.motion else {}
    render_seed = int(rng.integers(0, 2**31 - 1))
    sid = sites.source_id(plan.site, plan.index)
    root = config.out_dir / plan.site

    if plan.bad != "missing_images":
        volumes: dict[str, np.ndarray] = dict(phantom.render_case(
            head, lesions, grid, motions=motions, bias=dict.fromkeys(phantom.SEQUENCES, bias) if bias else None,
            noise_sigma=spec.noise_sigma, seed=render_seed, skull_stripped=spec.skull_stripped,
            scale=spec.intensity_scale,
            # a point spread about one base voxel wide: partial volume as a real acquisition at this
            # resolution shows it, instead of the staircase edges of point sampling
            psf_fwhm_mm=max(1.0, config.spacing_mm),
        ))
        _corrupt(plan, volumes)
        if plan.site == "site_a":
            sites.write_site_a(root, sid, volumes, grid)
        elif plan.site == "site_b":
            if "seg" in volumes:  # old BraTS glioma scheme: ET is 4 (the bad patient keeps a 3)
                seg = volumes["seg"]
                volumes["seg"] = seg if plan.bad == "unknown_label" else np.where(seg == 3, 4, seg).astype(np.uint8)
            mask_grid = None
            if plan.bad == "mask_grid_mismatch":
                shifted = tuple(o + 10.0 for o in grid.origin)
                mask_grid = phantom.Grid(grid.size, grid.spacing, (shifted[0], shifted[1], shifted[2]), grid.direction)
            sites.write_site_b(root, sid, volumes, grid, mask_grid)
        else:
            sites.write_site_c(root, sid, volumes, grid, identity, config.seed)
            if plan.bad == "unreadable_image":
                for dcm in (sites.site_c_paths(root, sid)["t2w"]).glob("*.dcm"):
                    dcm.write_bytes(dcm.read_bytes()[:128])
    if bias is not None:
        coarse = phantom.Grid.centred(
            tuple(max(2, math.ceil(n / 4)) for n in grid.size),  # type: ignore[arg-type]
            tuple(s * 4 for s in grid.spacing),  # type: ignore[arg-type]
            grid.direction,
        )
        write_image(sites.to_image(bias.evaluate(coarse), coarse, sitk.sitkFloat32),
                    config.out_dir / "ground_truth" / "bias" / plan.site / f"{sid}.nii.gz")
    return {
        "site": plan.site,
        "index": plan.index,
        "source_id": sid,
        "patient_key": sites.patient_key(plan.site, plan.index),
        "bad": plan.bad,
        "clinical": asdict(clinical),
        "imaging": asdict(imaging),
        "truth": asdict(truth),
        "entry_months": entry,
        "identity": identity,
        "lesions": lesion_rows,
        "grid": asdict(grid),
        "bias": asdict(bias) if bias is not None else None,
        "motions": {k: asdict(v) for k, v in motions.items()},
    }


# --------------------------------------------------------------------------------------------------
# The cohort
# --------------------------------------------------------------------------------------------------


def _render_all(config: GeneratorConfig, plans: list[PatientPlan],
                progress: Callable[[int, int], None] | None) -> list[dict[str, Any]]:
    results: dict[tuple[str, int], dict[str, Any]] = {}
    total = len(plans)
    if config.workers <= 1:
        for done, plan in enumerate(plans, start=1):
            results[(plan.site, plan.index)] = make_patient(config, plan)
            if progress:
                progress(done, total)
    else:
        # spawn, not fork: the caller may hold threads (a Prefect flow, a test harness)
        context = multiprocessing.get_context("spawn")
        with cf.ProcessPoolExecutor(max_workers=config.workers, mp_context=context) as pool:
            futures = {pool.submit(make_patient, config, plan): plan for plan in plans}
            for done, future in enumerate(cf.as_completed(futures), start=1):
                plan = futures[future]
                results[(plan.site, plan.index)] = future.result()
                if progress:
                    progress(done, total)
    return [results[(p.site, p.index)] for p in plans]


def _apply_censoring(config: GeneratorConfig, patients: list[dict[str, Any]]) -> None:
    rng = np.random.default_rng([config.seed, 99])
    event_months = np.array([p["truth"]["event_time_months"] for p in patients])
    entry = np.array([p["entry_months"] for p in patients])
    cens = sv.censor(event_months, entry, rng, config.censor_fraction)
    for p, c in zip(patients, cens.censor_months, strict=True):
        p["censor_months"] = float(c)
        p["time_days"], p["event"] = sv.observed(p["truth"]["event_time_months"], float(c))
    log.info("censoring: %.1f%% censored (dropout rate %.4f / month)",
             100 * (1 - np.mean([p["event"] for p in patients])), cens.dropout_rate_per_month)


def _clinical_tables(config: GeneratorConfig, patients: list[dict[str, Any]], root: Path) -> None:
    rng = np.random.default_rng([config.seed, 77])
    by_site: dict[str, list[dict[str, Any]]] = {s: [] for s in SITE_ORDER}
    for p in patients:
        if p["bad"] == "missing_clinical":
            continue
        if p["site"] == "site_a":
            rows = [sites.site_a_row(p)]
        elif p["site"] == "site_b":
            row = sites.site_b_row(p, rng)
            if p["bad"] == "clinical_out_of_range":
                row["Performance"] = "KPS 120"
            rows = [row, dict(row)] if p["bad"] == "duplicate_clinical_row" else [row]
        else:
            row = sites.site_c_row(p, rng)
            if p["bad"] == "death_before_diagnosis":
                diagnosis = dt.date.fromisoformat(p["identity"]["diagnosis_date"])
                row["date_death"] = (diagnosis - dt.timedelta(days=30)).strftime("%d.%m.%Y")
                row["date_last_contact"] = row["date_death"]
            if p["bad"] == "missing_survival":
                row["date_last_contact"] = ""
                row["date_death"] = ""
            rows = [row]
        by_site[p["site"]].extend(rows)
    writers = {"site_a": sites.write_clinical_a, "site_b": sites.write_clinical_b, "site_c": sites.write_clinical_c}
    for site, rows in by_site.items():
        if config.patients.get(site, 0) > 0:
            writers[site](root / site, rows)


def image_effect_description(config: GeneratorConfig, patients: list[dict[str, Any]]) -> dict[str, Any]:
    """The image-only effect's declaration and its share of ``true_lp``'s variance on the good patients."""
    good = [p for p in patients if not p["bad"]]
    shares = sv.variance_shares(np.array([p["truth"]["true_lp"] for p in good]),
                                np.array([p["truth"]["image_effect_lp"] for p in good]))
    return {
        "property": "contrast enhancement of the enhancing tumour (ET) on t1c: its t1c intensity is "
                    "multiplied by 1 + amplitude * z, z ~ N(0, 1) per patient (patients.csv img_enhancement)",
        "latent": {"distribution": "normal(0, 1)", "clip": ENHANCEMENT_CLIP,
                   "seed": ["seed", "site index", "patient index", ENHANCEMENT_STREAM]},
        "amplitude": phantom.ENHANCEMENT_AMPLITUDE,
        "strength": config.image_effect,
        "term": "eta += strength * z (log hazard ratio per SD; patients.csv image_effect_lp)",
        "patients": len(good),
        **shares,
        "shares": "over the good patients: variance_share = var(image_effect_lp) / var(true_lp); "
                  "partial_share = 1 - corr(true_lp, true_lp - image_effect_lp)^2 (semi-partial R^2)",
    }


def _ground_truth(config: GeneratorConfig, patients: list[dict[str, Any]], root: Path) -> None:
    gt = root / "ground_truth"
    records, lesions = [], []
    for p in patients:
        records.append({
            "site": p["site"], "source_id": p["source_id"], "patient_key": p["patient_key"],
            "bad_reason": p["bad"] or "",
            **{f"clin_{k}": v for k, v in p["clinical"].items()},
            **{f"img_{k}": v for k, v in p["imaging"].items()},
            "gpa": p["truth"]["gpa"], "gpa_class": p["truth"]["gpa_class"], "eta": p["truth"]["eta"],
            "true_lp": p["truth"]["true_lp"], "image_effect_lp": p["truth"]["image_effect_lp"],
            "event_time_days": p["truth"]["event_time_months"] * sv.DAYS_PER_MONTH,
            "censor_time_days": p["censor_months"] * sv.DAYS_PER_MONTH,
            "time_days": p["time_days"], "event": p["event"],
            "bias_seed": p["bias"]["seed"] if p["bias"] else None,
            "bias_strength": p["bias"]["strength"] if p["bias"] else 0.0,
            "motions": json.dumps(p["motions"]) if p["motions"] else "",
            "grid_size": json.dumps(p["grid"]["size"]), "grid_spacing": json.dumps(p["grid"]["spacing"]),
        })
        lesions += [{"site": p["site"], "source_id": p["source_id"], **row} for row in p["lesions"]]
    write_text(pd.DataFrame(records).to_csv(index=False), gt / "patients.csv")
    write_text(pd.DataFrame(lesions).to_csv(index=False), gt / "lesions.csv")
    expected = [{"site": p["site"], "source_id": p["source_id"], "patient_key": p["patient_key"],
                 "reason": p["bad"]} for p in patients if p["bad"]]
    write_text(pd.DataFrame(expected, columns=["site", "source_id", "patient_key", "reason"]).to_csv(index=False),
               gt / "expected_quarantine.csv")
    write_json({**sv.model_description(), "image_effect": image_effect_description(config, patients)},
               gt / "generative_model.json")
    write_text(GROUND_TRUTH_README, gt / "README.md")


GROUND_TRUTH_README = """# Ground truth of the synthetic cohort (never an input of the pipeline)

- `patients.csv`: one row per generated patient (bad ones included, `bad_reason` set). `patient_key`
  is the id that both the image names and the clinical row normalise to under the default
  `params.yaml`; the pipeline's case id is `Pseudonymiser.case_id(site, patient_key)`. `true_lp` is the
  oracle risk score (log hazard, higher = worse); `event_time_days` / `censor_time_days` are the latent
  times; `time_days` / `event` what the sites report. `clin_*` and `img_*` are the true covariates.
  `img_enhancement` is the image-only contrast-enhancement latent z (SD units; the enhancing tumour's
  t1c intensity is multiplied by 1 + 0.15 z, whatever the strength) and `image_effect_lp` its term
  `image_effect * z` in `true_lp` (0 for every patient when `synthetic.image_effect` is 0).
  `bias_seed` / `bias_strength` reproduce the bias field exactly:
  `survival_model.synthetic.phantom.BiasField(seed, strength).evaluate(grid)`; `motions` are the
  rigid movements of t1n/t2w/t2f relative to t1c (site C).
- `bias/<site>/<case>.nii.gz`: the true multiplicative bias field on a 4x coarser grid over the same
  field of view (one per session; all sequences share it).
- `lesions.csv`: every metastasis with its analytic parameters and true volumes (mm3); `enhancement`
  is its patient's z.
- `expected_quarantine.csv`: the deliberately bad patients and the reason ingestion must give.
- `generative_model.json`: the survival model's constants (see `survival_model/synthetic/survival.py`);
  `image_effect`: the image-only effect's property, amplitude, strength and the share of `true_lp`'s
  variance it explains on this cohort's good patients (`variance_share`, `partial_share`).
"""


def generate_cohort(config: GeneratorConfig, progress: Callable[[int, int], None] | None = None) -> Path:
    """Generate the cohort into ``config.out_dir`` (replacing a previously generated one)."""
    out_dir = Path(config.out_dir)
    if out_dir.exists() and existing_cohort(out_dir) is None and any(out_dir.iterdir()):
        raise GeneratorError(f"{out_dir} exists and is not a generated cohort; choose an empty folder")
    plans = plan_cohort(config)
    staging = out_dir.parent / f".{out_dir.name}.generating-{uuid.uuid4().hex[:8]}"
    staging.mkdir(parents=True)
    try:
        staged = GeneratorConfig(**{**asdict(config), "out_dir": staging})
        patients = _render_all(staged, plans, progress)
        _apply_censoring(staged, patients)
        _clinical_tables(staged, patients, staging)
        _ground_truth(config, patients, staging)
        counts = {s: sum(1 for p in patients if p["site"] == s and not p["bad"]) for s in SITE_ORDER}
        write_json({**config.identity(), "good_patients": counts,
                    "bad_patients_generated": sum(1 for p in patients if p["bad"])}, staging / "manifest.json")
        if out_dir.exists():
            trash = out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(out_dir, trash)
            shutil.rmtree(trash, ignore_errors=True)
        os.replace(staging, out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def layout_overrides(data_dir: Path) -> dict[str, str]:
    """The settings (``--set`` keys) that point the three default institutions and the evaluation's ground truth
    at a cohort this generator wrote into ``data_dir`` (the layout of the module docstring)."""
    return {
        "synthetic.out_dir": str(data_dir),
        "institutions.site_a.images.root": str(data_dir / "site_a" / "images"),
        "institutions.site_a.clinical.path": str(data_dir / "site_a" / "clinical.csv"),
        "institutions.site_b.images.root": str(data_dir / "site_b" / "images"),
        "institutions.site_b.clinical.path": str(data_dir / "site_b" / "clinical.xlsx"),
        "institutions.site_c.images.root": str(data_dir / "site_c" / "images"),
        "institutions.site_c.clinical.path": str(data_dir / "site_c" / "clinical.csv"),
        "evaluation.ground_truth.path": str(data_dir / "ground_truth" / "patients.csv"),
    }
