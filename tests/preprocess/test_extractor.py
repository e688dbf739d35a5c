"""The trained brain extractor's adapter (survival_model.preprocess.extractor) on phantom heads."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from survival_model.preprocess import extractor, ops
from survival_model.synthetic import phantom as ph
from survival_model.synthetic.sites import SITES, site_grid
from tests.preprocess.images import dice, to_image


def site_b_head(seed: int) -> tuple[sitk.Image, np.ndarray]:
    """A T1c with skull, bias and site B's RAS-flipped 2.25 x 2.25 x 7.5 mm grid, and the true brain on it."""
    rng = np.random.default_rng(seed)
    head = ph.sample_head(rng)
    spec = SITES["site_b"]
    grid = site_grid(spec, (96, 96, 62), 2.5)
    volume = ph.render_case(head, ph.sample_lesions(head, 2, rng), grid, sequences=("t1c",), seed=seed,
                            noise_sigma=spec.noise_sigma, bias={"t1c": ph.BiasField(6, spec.bias_strength)},
                            scale=spec.intensity_scale, psf_fwhm_mm=2.5)["t1c"]
    return to_image(volume.astype(np.float32), grid), ph.brain_mask(head, grid)


def test_deepbet_mask_is_on_the_input_grid_and_finds_the_brain() -> None:
    image, truth = site_b_head(5)
    assert image.GetDirection()[0] == -1  # not the network's RAS order: the adapter reorients and back
    mask = extractor.deepbet_mask(image)
    assert mask.GetPixelID() == sitk.sitkUInt8 and ops.same_grid(mask, image, tolerance=0.0)
    assert dice(sitk.GetArrayViewFromImage(mask), truth) > 0.9


def test_deepbet_mask_on_an_isotropic_copy_lands_on_the_brain_of_the_thick_slices() -> None:
    """How the pipeline runs it: the sequence interpolated onto 1.5 mm, the mask mapped back."""
    image, truth = site_b_head(6)
    iso = ops.target_grid(image, (1.5, 1.5, 1.5), "LPS")
    mask = ops.resample_mask(extractor.deepbet_mask(ops.resample_onto(image, iso)), image)
    assert dice(sitk.GetArrayViewFromImage(mask), truth) > 0.9


def test_deepbet_refuses_an_image_without_a_head() -> None:
    empty = sitk.Image(64, 64, 40, sitk.sitkFloat32)
    with pytest.raises(extractor.BrainExtractionError, match="deepbet found no brain"):
        extractor.deepbet_mask(empty)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_cuda_without_a_gpu_is_a_clear_error() -> None:
    image, _ = site_b_head(5)
    with pytest.raises(extractor.BrainExtractionError, match="device is cuda but PyTorch sees no GPU"):
        extractor.deepbet_mask(image, device="cuda")


def test_the_fingerprint_names_the_version_and_both_models() -> None:
    fingerprint = extractor.deepbet_fingerprint()
    assert fingerprint.startswith("deepbet==")
    assert "bbox_model.pt:" in fingerprint and ";model.pt:" in fingerprint


def test_deepbet_reads_no_network_and_writes_nothing_in_home(tmp_path: Path) -> None:
    """In a fresh interpreter, every socket call is refused (an audit hook) and HOME is an empty folder: the
    import and an extraction succeed, and HOME stays empty (the models come from the installed wheel)."""
    home = tmp_path / "home"
    home.mkdir()
    script = textwrap.dedent("""
        import sys
        def refuse(event, args):
            if event.startswith("socket.") and event not in ("socket.__new__",):
                raise RuntimeError(f"network use: {event} {args}")
        sys.addaudithook(refuse)
        import numpy as np, SimpleITK as sitk
        from survival_model.preprocess.extractor import deepbet_mask
        from tests.preprocess.test_extractor import site_b_head
        image, truth = site_b_head(5)
        mask = sitk.GetArrayViewFromImage(deepbet_mask(image)) > 0
        print("overlap", 2 * np.count_nonzero(mask & truth) / (mask.sum() + truth.sum()))
    """)
    env = {**os.environ, "HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache"),
           "XDG_DATA_HOME": str(home / ".local" / "share")}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, encoding="utf-8",
                            env=env, cwd=Path(__file__).resolve().parents[2], timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert float(result.stdout.split("overlap")[1]) > 0.9
    assert not any(home.iterdir()), sorted(str(p) for p in home.rglob("*"))
