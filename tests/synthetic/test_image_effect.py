"""The image-only effect with a declared strength: contrast enhancement of the ET on t1c (issue 13)."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from survival_model.config import SyntheticParams
from survival_model.errors import ConfigError
from survival_model.synthetic import phantom
from survival_model.synthetic import survival as sv
from survival_model.synthetic.cohort import (
    DEFAULT_IMAGE_EFFECT,
    GeneratorConfig,
    GeneratorError,
    PatientPlan,
    draw_enhancement,
    make_patient,
    plan_cohort,
)

#: What generator version 2 (before the enhancement latent existed) drew for these patients of the
#: default seed: the enhancement has a stream of its own, so all of it must stay exactly as it was.
#: Lesions: centre x, y, z, radius, necrosis, rim irregularity, heterogeneity, edema, shape seed.
BEFORE: list[dict[str, Any]] = [
    {"plan": ("site_a", 1),
     "clinical": {"age": 56.6, "sex": "female", "kps": 70, "primary": "breast", "extracranial": False,
                  "n_brain_mets": 7, "egfr_mutant": None, "alk_positive": None, "her2_positive": False,
                  "hr_positive": False, "braf_mutant": None},
     "lesions": [(-23.83975644647011, 11.07144776278191, 12.429550959747424, 16.4021000700382,
                  0.3041396595674187, 0.6888992654300535, 0.5893798928986883, 18.899445745839024, 942980144),
                 (10.40400975204399, -31.548099329554816, 10.966626461596192, 11.925983765423991,
                  0.6079616464652428, 0.5924998736455138, 0.3672782966300343, 27.851967530847983, 1987105217)],
     "eta": 1.0040998382648072, "true_lp": -1.0979144690688993, "event_time_months": 0.08934097990284728,
     "entry_months": 28.347116846465713, "mrn": "20714335", "bias_seed": None},
    {"plan": ("site_b", 3),
     "clinical": {"age": 73.3, "sex": "female", "kps": 70, "primary": "breast", "extracranial": False,
                  "n_brain_mets": 5, "egfr_mutant": None, "alk_positive": None, "her2_positive": False,
                  "hr_positive": False, "braf_mutant": None},
     "lesions": [(-49.706540577474826, -17.372105843260577, -12.462362810081057, 10.562278652479797, 0.0,
                  0.3438589064872753, 0.2588340203851971, 21.70629831931863, 791852684),
                 (-33.548823946347866, -37.71592774890425, -3.103447135596372, 6.496418271895736, 0.0,
                  0.702793730396517, 0.3387442448950027, 15.245882653312052, 331186781)],
     "eta": 0.6777748073528663, "true_lp": -1.4242394999808403, "event_time_months": 1.1547096718731518,
     "entry_months": 9.570044093902926, "mrn": "33540310", "bias_seed": 738322210},
    {"plan": ("site_c", 1),
     "clinical": {"age": 74.5, "sex": "male", "kps": 90, "primary": "lung", "extracranial": True,
                  "n_brain_mets": 5, "egfr_mutant": False, "alk_positive": False, "her2_positive": None,
                  "hr_positive": None, "braf_mutant": None},
     "lesions": [(2.5538361491654555, 43.08646001680552, 11.071890082545384, 23.232819918103583,
                  0.7312999023595537, 0.6183846675025065, 0.18968763871174898, 30.0, 1375877470),
                 (48.222780616607416, 6.730299261026471, 32.9717012763301, 7.822083225788856, 0.0,
                  0.7599684660804376, 0.17618155604047836, 8.007783401621365, 293420751)],
     "eta": 1.3660383604071173, "true_lp": -0.24263943871021443, "event_time_months": 2.2003871629201273,
     "entry_months": 1.6102615180520616, "mrn": "43965866", "bias_seed": 22267760},
]
LESION_KEYS = ("radius_mm", "necrosis_fraction", "rim_irregularity", "heterogeneity", "edema_mm", "shape_seed")
#: tiny grid: the draws do not depend on it, and rendering costs little
TINY_GRID: dict[str, Any] = {"shape": (32, 32, 20), "spacing_mm": 7.5}


def _config(out_dir: Path, strength: float) -> GeneratorConfig:
    return GeneratorConfig(out_dir=out_dir, image_effect=strength, **TINY_GRID)


def _site_files(root: Path) -> dict[str, bytes]:
    """Every file's bytes; a DICOM file's pixels only (GDCM stamps the time of writing in it)."""
    return {str(p.relative_to(root)): sitk.GetArrayFromImage(sitk.ReadImage(str(p))).tobytes()
            if p.suffix == ".dcm" else p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_other_draws_are_those_of_the_previous_generator_and_strength_0_is_its_survival_model(
        tmp_path: Path) -> None:
    for before in BEFORE:
        site, index = before["plan"]
        plan = PatientPlan(site, index)
        zero = make_patient(_config(tmp_path / "zero", 0.0), plan)
        assert zero["clinical"] == before["clinical"]
        assert len(zero["lesions"]) == before["clinical"]["n_brain_mets"]
        for row, expected in zip(zero["lesions"], before["lesions"], strict=False):
            assert list(row["centre_mm"]) == pytest.approx(expected[:3], rel=1e-12)
            assert [row[k] for k in LESION_KEYS] == pytest.approx(expected[3:], rel=1e-12)
        assert zero["entry_months"] == pytest.approx(before["entry_months"], rel=1e-12)
        assert zero["identity"]["mrn"] == before["mrn"]
        assert (zero["bias"]["seed"] if zero["bias"] else None) == before["bias_seed"]
        # strength 0: the survival model of generator version 2 (to 1e-8: its volume terms' last bits moved by
        # 1e-10 between numpy/SimpleITK builds; a changed model would move them by far more)
        assert zero["truth"]["eta"] == pytest.approx(before["eta"], rel=1e-8)
        assert zero["truth"]["true_lp"] == pytest.approx(before["true_lp"], rel=1e-8)
        assert zero["truth"]["event_time_months"] == pytest.approx(before["event_time_months"], rel=1e-8)
        assert zero["truth"]["image_effect_lp"] == 0.0
        # ... and the enhancement is there anyway (rendered, recorded, not prognostic)
        z = draw_enhancement(_config(tmp_path, 0.0), plan)
        assert zero["imaging"]["enhancement"] == z != 0.0
        assert all(row["enhancement"] == z for row in zero["lesions"])


def test_two_strengths_give_identical_images_and_differ_only_through_the_effect(tmp_path: Path) -> None:
    strong = 0.8
    for site, index in (("site_a", 1), ("site_b", 3)):
        plan = PatientPlan(site, index)
        a = make_patient(_config(tmp_path / "zero", 0.0), plan)
        b = make_patient(_config(tmp_path / "strong", strong), plan)
        z = a["imaging"]["enhancement"]
        assert b["imaging"] == a["imaging"] and b["clinical"] == a["clinical"] and b["lesions"] == a["lesions"]
        assert b["truth"]["image_effect_lp"] == pytest.approx(strong * z)
        assert b["truth"]["true_lp"] - a["truth"]["true_lp"] == pytest.approx(strong * z, abs=1e-12)
        assert b["truth"]["eta"] - a["truth"]["eta"] == pytest.approx(strong * z, abs=1e-12)
        # the same uniform: t = (-ln U exp(-lp))^(1/k), so t scales by exp(-strength z / k)
        ratio = b["truth"]["event_time_months"] / a["truth"]["event_time_months"]
        assert ratio == pytest.approx(math.exp(-strong * z / sv.WEIBULL_SHAPE), rel=1e-9)
        assert b["entry_months"] == a["entry_months"] and b["identity"] == a["identity"]
    zero, strong_files = _site_files(tmp_path / "zero"), _site_files(tmp_path / "strong")
    assert zero.keys() == strong_files.keys() and len(zero) > 10
    assert all(zero[name] == strong_files[name] for name in zero)


def _one_lesion_renders(z_values: tuple[float, ...]) -> tuple[np.ndarray, dict[float, dict[str, np.ndarray]]]:
    head = phantom.sample_head(np.random.default_rng(3))
    lesion = phantom.Lesion((30.0, -10.0, 20.0), 9.0, necrosis_fraction=0.5, rim_irregularity=0.3,
                            heterogeneity=0.5, edema_mm=6.0, shape_seed=11)
    grid = phantom.Grid.centred((64, 64, 48), (2.5, 2.5, 2.5))
    renders = {z: phantom.render_case(head, [replace(lesion, enhancement=z)], grid, noise_sigma=0.0, psf_fwhm_mm=0.0)
               for z in z_values}
    return renders[z_values[0]]["seg"], renders


def test_enhancement_scales_the_et_on_t1c_and_nothing_else() -> None:
    seg, renders = _one_lesion_renders((-2.0, 0.0, 2.0))
    et = seg == phantom.LABEL_ET
    assert et.sum() > 50
    reference = renders[0.0]
    for z, images in renders.items():
        assert np.array_equal(images["seg"], reference["seg"])
        for sequence in ("t1n", "t2w", "t2f"):
            assert np.array_equal(images[sequence], reference[sequence]), (z, sequence)
        assert np.array_equal(images["t1c"][~et], reference["t1c"][~et])
        gain = images["t1c"][et] / reference["t1c"][et]
        assert gain == pytest.approx(1.0 + phantom.ENHANCEMENT_AMPLITUDE * z, rel=1e-5)
    means = [float(renders[z]["t1c"][et].mean()) for z in (-2.0, 0.0, 2.0)]
    assert means[0] < means[1] < means[2]
    white_matter = 0.90 * 1000.0
    assert white_matter < means[0] and means[2] < 2.0 * 1000.0  # physiological: still enhancing, not absurd


def test_et_t1c_intensity_follows_the_latent_across_patients(tmp_path: Path) -> None:
    config = GeneratorConfig(out_dir=tmp_path, patients={"site_a": 6}, shape=(64, 64, 42), spacing_mm=3.75)
    z, et_t1c = [], []
    for index in range(1, 7):
        plan = PatientPlan("site_a", index)
        rng = np.random.default_rng([config.seed, 0, index])
        clinical = sv.sample_clinical(rng)
        head = phantom.sample_head(rng)
        enhancement = draw_enhancement(config, plan)
        lesions = [replace(les, enhancement=enhancement)
                   for les in phantom.sample_lesions(head, clinical.n_brain_mets, rng)]
        grid = phantom.Grid.centred(config.shape, (config.spacing_mm,) * 3)
        images = phantom.render_case(head, lesions, grid, sequences=("t1c",), seed=index,
                                     psf_fwhm_mm=config.spacing_mm)
        brain = phantom.brain_mask(head, grid)
        t1c = images["t1c"]
        normalised = (t1c - t1c[brain].mean()) / t1c[brain].std()
        z.append(enhancement)
        et_t1c.append(float(normalised[images["seg"] == phantom.LABEL_ET].mean()))
    assert np.corrcoef(z, et_t1c)[0, 1] > 0.8


def test_ground_truth_records_the_effect_and_its_variance_share(tiny_cohort_master: Path) -> None:
    gt = tiny_cohort_master / "ground_truth"
    truth = pd.read_csv(gt / "patients.csv", keep_default_na=False, na_values=[""])
    model = json.loads((gt / "generative_model.json").read_text())["image_effect"]
    assert model["strength"] == DEFAULT_IMAGE_EFFECT and model["amplitude"] == phantom.ENHANCEMENT_AMPLITUDE
    assert np.allclose(truth["image_effect_lp"], model["strength"] * truth["img_enhancement"], atol=1e-12)
    assert truth["img_enhancement"].abs().max() <= 2.5 and truth["img_enhancement"].std() > 0.3
    good = truth[truth["bad_reason"].isna()]
    assert len(good) == model["patients"] == 10
    lp, image = good["true_lp"].to_numpy(), good["image_effect_lp"].to_numpy()
    assert model["variance_share"] == pytest.approx(np.var(image) / np.var(lp), rel=1e-9)
    rest = lp - image
    assert model["partial_share"] == pytest.approx(1 - np.corrcoef(lp, rest)[0, 1] ** 2, rel=1e-9)
    lesions = pd.read_csv(gt / "lesions.csv")
    per_patient = lesions.groupby(["site", "source_id"])["enhancement"].agg(["min", "max"])
    merged = per_patient.join(truth.set_index(["site", "source_id"])["img_enhancement"])
    assert np.allclose(merged["min"], merged["img_enhancement"])
    assert np.allclose(merged["max"], merged["img_enhancement"])


def test_variance_shares() -> None:
    rng = np.random.default_rng(0)
    rest, z = rng.normal(0, 1.0, 20000), rng.normal(0, 1, 20000)
    shares = sv.variance_shares(rest + 0.5 * z, 0.5 * z)
    assert shares["variance_share"] == pytest.approx(0.2, abs=0.01)
    assert shares["partial_share"] == pytest.approx(0.2, abs=0.01)
    assert sv.variance_shares(rest, 0.0 * z) == {"variance_share": 0.0, "partial_share": 0.0}


def test_the_setting_reaches_the_generator() -> None:
    from flows.cli import _generator_config
    from survival_model.config import load_params

    assert SyntheticParams().image_effect == DEFAULT_IMAGE_EFFECT
    repo = Path(__file__).resolve().parents[2]
    params = load_params(repo / "params.yaml", {"synthetic.image_effect": 0.6})
    config = _generator_config(params, workers=1)
    assert config.image_effect == 0.6 and config.identity()["image_effect"] == 0.6
    assert load_params(repo / "params.yaml").synthetic.image_effect == DEFAULT_IMAGE_EFFECT
    with pytest.raises(ConfigError, match=r"synthetic\.image_effect"):
        load_params(repo / "params.yaml", {"synthetic.image_effect": 5})


def test_bad_strengths_and_enhancements_are_refused(tmp_path: Path) -> None:
    with pytest.raises(GeneratorError, match="image_effect"):
        plan_cohort(GeneratorConfig(out_dir=tmp_path, image_effect=float("nan")))
    with pytest.raises(ValueError, match="enhancement"):
        phantom.Lesion((0.0, 0.0, 0.0), 5.0, enhancement=3.5)
