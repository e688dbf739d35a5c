"""The synthetic cohort's clinical model and survival generative model (the ground truth).

Clinical variables
------------------
Primary (lung 45 %, breast 20 %, melanoma 12 %, GI 8 %, renal 7 %, other 8 %); sex (breast 99 %
female, otherwise 50 %); age ~ N(62, 11) years (breast 5 and melanoma 3 years younger), clipped to
28-88; KPS in {50..100} with weights 5/10/20/30/25/10 %; extracranial metastases 60 %; number of
brain metastases 1..10 (38 % single); molecular markers where they apply (lung: EGFR mutant 15 %,
ALK positive 5 %; breast: HER2 positive 30 %, hormone-receptor positive 65 %; melanoma: BRAF mutant
45 %), missing (not applicable) otherwise. The number of metastases is the number of lesions drawn
in the mask.

Survival
--------
Weibull proportional hazards, time in months: ``S(t) = exp(-(t / lambda_gpa)^k * exp(eta))`` with
shape ``k = 1.3``. The baseline scale follows the patient's GPA class (Sperduto et al., IJROBP
2008;70:510-514: GPA 0-1 median 2.6 months, 1.5-2.5 3.8, 3 6.9, 3.5-4 11.0), so a patient with
``eta = 0`` has the published median of their class. GPA points: age < 50: 1, 50-60: 0.5; KPS 90-100:
1, 70-80: 0.5; no extracranial metastases: 1; one brain metastasis: 1, two or three: 0.5 (0-4 in all).

``eta`` adds effects the GPA does not contain (log hazard ratios, each centred near the cohort mean):

=========================================  ===========================================
term                                       coefficient
=========================================  ===========================================
primary: breast / melanoma / GI / renal /   -0.25 / +0.25 / +0.15 / -0.05 / +0.10
other (lung = 0)
targeted marker: lung EGFR or ALK; breast   -0.40; -0.30; -0.20
HER2; melanoma BRAF
enhancing volume: log2(ET ml / 2)          +0.20 per doubling
edema-to-tumour ratio: ln(SNFH / TC / 1.5)  +0.35
necrosis fraction NETC / TC - 0.3          +0.80
rim irregularity (tumour-volume-weighted)   +1.00 per unit (0..1), centred at 0.4
  - not captured by volumes
infratentorial lesion present - 0.15       +0.35
contrast enhancement z (image only, below)  ``image_effect`` per SD (default 0.6)
=========================================  ===========================================

The true linear predictor (the oracle's risk score, higher = worse) is
``lp = eta - k * ln(lambda_gpa)``: the log hazard relative to a baseline with unit scale.

Image-only effect with a declared strength
------------------------------------------
Rim irregularity and infratentorial location are the only other effects that only the images carry,
and they explain little (about 4 % and 3 % of ``lp``'s variance) through ~1 mm details. So each patient
also has a latent contrast enhancement ``z ~ N(0, 1)`` clipped to +-2.5, drawn from its own random
stream (so no other draw changes with it) and rendered whatever the strength: the enhancing tumour's
t1c intensity is multiplied by ``1 + 0.15 z`` (``phantom.ENHANCEMENT_AMPLITUDE``; 1.40 -> 0.98-1.82 at
+-2 SD, white matter 0.90). It adds ``image_effect * z`` to ``eta`` (a log hazard ratio per SD; the
setting ``synthetic.image_effect``). Its share of ``lp``'s variance, ``var(s z) / var(lp)``, measured
on 3000 patients drawn with the cohort's own clinical and lesion samplers (``var(lp)`` at strength 0 is
0.92, ``var(z)`` 0.96; rim irregularity explains 3.6 % of it, infratentorial location 3.1 %): 0 gives
exactly the model above (the enhancement is then rendered but not prognostic); 0.35 explains 11.6 %;
0.5 21 %; 0.6 (the default) 28 %; 0.75 38 %; 1.0 ("strong") about 51 %. In C-index terms (600 patients of
the benchmark cohort at 0.35) the true risk with the image term reaches 0.679, without it 0.672: a share
of variance buys little concordance, which is why the default is 0.6 and not less (``benchmarks/validity.py``
measures what a model can show at each strength). A 150-patient cohort's own share scatters around these
(it is recorded in ``generative_model.json``). Visibility at the default 2.5 mm grid (20 site-A
patients): the ET's mean t1c, z-scored inside the brain, correlates 0.98 with ``z`` (0.85 brain SD per
SD of ``z``); clipping at the brain's 99.5th percentile first had left 0.30 (the enhancing tumour is most
of the brain's brightest 0.5 % on t1c), which is why the preprocessing now takes its clip limits from
the normal-appearing brain and keeps the lesions' enhancement (``preprocess.ops.normalise``).

Censoring: accrual uniform over 36 months, study closes at month 48 (administrative censoring at
``48 - entry``), plus exponential loss to follow-up whose rate is solved (bisection on this cohort's
own draws) so that the censored fraction is ``censor_fraction`` (default 0.28). Observed time is
``min(T, C)`` in days (months x 365.25 / 12), rounded up to whole days (at least 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

PRIMARIES = ("lung", "breast", "melanoma", "gi", "renal", "other")
PRIMARY_WEIGHTS = (0.45, 0.20, 0.12, 0.08, 0.07, 0.08)
KPS_VALUES = (50, 60, 70, 80, 90, 100)
KPS_WEIGHTS = (0.05, 0.10, 0.20, 0.30, 0.25, 0.10)
N_METS_WEIGHTS = (0.38, 0.17, 0.12, 0.08, 0.07, 0.06, 0.05, 0.03, 0.02, 0.02)  # 1..10

WEIBULL_SHAPE = 1.3
GPA_CLASS_MEDIAN_MONTHS = {"0-1": 2.6, "1.5-2.5": 3.8, "3": 6.9, "3.5-4": 11.0}
DAYS_PER_MONTH = 365.25 / 12

PRIMARY_EFFECT = {"lung": 0.0, "breast": -0.25, "melanoma": 0.25, "gi": 0.15, "renal": -0.05, "other": 0.10}
COEFFICIENTS = {
    "marker_lung_egfr_alk": -0.40,
    "marker_breast_her2": -0.30,
    "marker_melanoma_braf": -0.20,
    "log2_et_ml_over_2": 0.20,
    "ln_edema_ratio_over_1_5": 0.35,
    "necrosis_fraction_minus_0_3": 0.80,
    "rim_irregularity_minus_0_4": 1.00,
    "infratentorial_minus_0_15": 0.35,
}


@dataclass(frozen=True)
class ClinicalDraw:
    """One synthetic patient's clinical truth (before any site writes it in its own format)."""

    age: float
    sex: str
    kps: int
    primary: str
    extracranial: bool
    n_brain_mets: int
    egfr_mutant: bool | None
    alk_positive: bool | None
    her2_positive: bool | None
    hr_positive: bool | None
    braf_mutant: bool | None


@dataclass(frozen=True)
class ImagingTruth:
    """Patient-level imaging covariates of the generative model, from the analytic lesions."""

    et_ml: float
    netc_ml: float
    snfh_ml: float
    edema_ratio: float
    necrosis_fraction: float
    rim_irregularity: float
    heterogeneity: float
    infratentorial: bool
    enhancement: float = 0.0  # the contrast-enhancement latent z (SD units; image only)


@dataclass(frozen=True)
class SurvivalTruth:
    gpa: float
    gpa_class: str
    eta: float
    true_lp: float
    event_time_months: float
    image_effect_lp: float = 0.0  # image_effect * z, included in eta and true_lp


def sample_clinical(rng: np.random.Generator) -> ClinicalDraw:
    primary = str(rng.choice(PRIMARIES, p=PRIMARY_WEIGHTS))
    female_p = 0.99 if primary == "breast" else 0.5
    sex = "female" if rng.uniform() < female_p else "male"
    age_shift = {"breast": -5.0, "melanoma": -3.0}.get(primary, 0.0)
    age = float(np.clip(rng.normal(62.0 + age_shift, 11.0), 28.0, 88.0))
    kps = int(rng.choice(KPS_VALUES, p=KPS_WEIGHTS))
    extracranial = bool(rng.uniform() < 0.6)
    n_mets = int(rng.choice(np.arange(1, 11), p=N_METS_WEIGHTS))
    lung, breast, melanoma = primary == "lung", primary == "breast", primary == "melanoma"
    return ClinicalDraw(
        age=round(age, 1),
        sex=sex,
        kps=kps,
        primary=primary,
        extracranial=extracranial,
        n_brain_mets=n_mets,
        egfr_mutant=bool(rng.uniform() < 0.15) if lung else None,
        alk_positive=bool(rng.uniform() < 0.05) if lung else None,
        her2_positive=bool(rng.uniform() < 0.30) if breast else None,
        hr_positive=bool(rng.uniform() < 0.65) if breast else None,
        braf_mutant=bool(rng.uniform() < 0.45) if melanoma else None,
    )


def gpa_score(age: float, kps: float, extracranial: bool, n_brain_mets: int) -> float:
    """Sperduto 2008 Graded Prognostic Assessment (0-4, higher = better prognosis)."""
    score = 1.0 if age < 50 else 0.5 if age <= 60 else 0.0
    score += 1.0 if kps >= 90 else 0.5 if kps >= 70 else 0.0
    score += 0.0 if extracranial else 1.0
    score += 1.0 if n_brain_mets == 1 else 0.5 if n_brain_mets <= 3 else 0.0
    return score


def gpa_class(score: float) -> str:
    if score <= 1.0:
        return "0-1"
    if score <= 2.5:
        return "1.5-2.5"
    if score <= 3.0:
        return "3"
    return "3.5-4"


def linear_predictor(clinical: ClinicalDraw, imaging: ImagingTruth,
                     image_effect: float = 0.0) -> tuple[float, float, str, float]:
    """(gpa, eta, gpa_class, true_lp) for a patient; see the module docstring for the model.

    ``image_effect`` is the log hazard ratio per SD of ``imaging.enhancement`` (0: no effect).
    """
    eta = PRIMARY_EFFECT[clinical.primary]
    c = COEFFICIENTS
    if clinical.egfr_mutant or clinical.alk_positive:
        eta += c["marker_lung_egfr_alk"]
    if clinical.her2_positive:
        eta += c["marker_breast_her2"]
    if clinical.braf_mutant:
        eta += c["marker_melanoma_braf"]
    eta += c["log2_et_ml_over_2"] * math.log2(max(imaging.et_ml, 0.01) / 2.0)
    eta += c["ln_edema_ratio_over_1_5"] * math.log(max(imaging.edema_ratio, 0.05) / 1.5)
    eta += c["necrosis_fraction_minus_0_3"] * (imaging.necrosis_fraction - 0.3)
    eta += c["rim_irregularity_minus_0_4"] * (imaging.rim_irregularity - 0.4)
    eta += c["infratentorial_minus_0_15"] * (float(imaging.infratentorial) - 0.15)
    eta += image_effect * imaging.enhancement
    score = gpa_score(clinical.age, clinical.kps, clinical.extracranial, clinical.n_brain_mets)
    klass = gpa_class(score)
    scale = GPA_CLASS_MEDIAN_MONTHS[klass] / math.log(2.0) ** (1.0 / WEIBULL_SHAPE)
    true_lp = eta - WEIBULL_SHAPE * math.log(scale)
    return score, eta, klass, true_lp


def draw_event_time(true_lp: float, rng: np.random.Generator) -> float:
    """Weibull PH event time in months: S(t) = exp(-t^k exp(lp)) -> t = (-ln U exp(-lp))^(1/k)."""
    u = rng.uniform(1e-12, 1.0)
    return float((-math.log(u) * math.exp(-true_lp)) ** (1.0 / WEIBULL_SHAPE))


def survival_truth(clinical: ClinicalDraw, imaging: ImagingTruth, rng: np.random.Generator,
                   image_effect: float = 0.0) -> SurvivalTruth:
    """The patient's survival truth; one uniform from ``rng`` whatever ``image_effect`` is."""
    score, eta, klass, lp = linear_predictor(clinical, imaging, image_effect)
    return SurvivalTruth(score, klass, eta, lp, draw_event_time(lp, rng), image_effect * imaging.enhancement)


def variance_shares(true_lp: np.ndarray, image_effect_lp: np.ndarray) -> dict[str, float]:
    """How much of ``true_lp``'s variance the image effect explains over these patients.

    ``variance_share``: ``var(image_effect_lp) / var(true_lp)``; ``partial_share``: the semi-partial
    R^2, ``1 - corr(true_lp, true_lp - image_effect_lp)^2``, the share the effect explains beyond all
    other terms (the two agree up to the chance correlation of ``z`` with the rest in a finite cohort).
    Both are 0 when the effect is 0 (or there are fewer than two patients).
    """
    lp = np.asarray(true_lp, dtype=float)
    image = np.asarray(image_effect_lp, dtype=float)
    total = float(np.var(lp))
    if lp.size < 2 or total <= 0.0 or float(np.var(image)) == 0.0:
        return {"variance_share": 0.0, "partial_share": 0.0}
    rest = lp - image
    if float(np.var(rest)) == 0.0:
        return {"variance_share": float(np.var(image)) / total, "partial_share": 1.0}
    r = float(np.corrcoef(lp, rest)[0, 1])
    return {"variance_share": float(np.var(image)) / total, "partial_share": 1.0 - r * r}


@dataclass(frozen=True)
class Censoring:
    entry_months: np.ndarray
    admin_months: np.ndarray
    dropout_rate_per_month: float
    censor_months: np.ndarray


ACCRUAL_MONTHS = 36.0
CLOSE_MONTHS = 48.0


def draw_entry_month(rng: np.random.Generator) -> float:
    """When the patient entered the study (uniform accrual), in months after the study opened."""
    return float(rng.uniform(0.0, ACCRUAL_MONTHS))


def censor(event_months: np.ndarray, entry_months: np.ndarray, rng: np.random.Generator,
           target_fraction: float = 0.28) -> Censoring:
    """Administrative + random censoring calibrated to ``target_fraction`` censored (see docstring)."""
    if not 0.0 <= target_fraction < 0.95:
        raise ValueError(f"censor fraction must be in [0, 0.95), got {target_fraction}")
    n = len(event_months)
    entry = np.asarray(entry_months, dtype=float)
    admin = CLOSE_MONTHS - entry
    exp_draws = rng.exponential(1.0, n)

    def fraction(rate: float) -> float:
        dropout = exp_draws / rate if rate > 0 else np.full(n, np.inf)
        return float(np.mean(np.minimum(admin, dropout) < event_months))

    lo, hi = 0.0, 10.0
    if fraction(lo) >= target_fraction:
        rate = 0.0
    else:
        for _ in range(60):
            mid = (lo + hi) / 2
            if fraction(mid) < target_fraction:
                lo = mid
            else:
                hi = mid
        rate = hi
    dropout = exp_draws / rate if rate > 0 else np.full(n, np.inf)
    return Censoring(entry, admin, rate, np.minimum(admin, dropout))


def observed(event_months: float, censor_months: float) -> tuple[int, int]:
    """(time in whole days >= 1, event) from the latent event and censoring times."""
    event = int(event_months <= censor_months)
    months = min(event_months, censor_months)
    return max(1, math.ceil(months * DAYS_PER_MONTH)), event


def model_description() -> dict[str, Any]:
    """The generative model's constants, written to the ground-truth folder."""
    return {
        "weibull_shape": WEIBULL_SHAPE,
        "gpa_class_median_months": GPA_CLASS_MEDIAN_MONTHS,
        "gpa_reference": "Sperduto et al., Int J Radiat Oncol Biol Phys 2008;70(2):510-514",
        "primary_effect": PRIMARY_EFFECT,
        "coefficients": COEFFICIENTS,
        "true_lp": "eta - weibull_shape * ln(scale of the GPA class); hazard = h0(t) * exp(true_lp)",
        "time_unit_of_model": "months",
        "days_per_month": DAYS_PER_MONTH,
    }

