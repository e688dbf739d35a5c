"""The ``preprocess`` section: reorientation, co-registration, N4, resampling, cropping, normalisation and
the quality-control thresholds."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from survival_model.config.base import SequenceName, StrictModel


class N4Params(StrictModel):
    """SimpleITK N4 bias-field correction, fitted on a shrunk image, applied at full resolution.

    Defaults from ``benchmarks/n4.py`` (240x240x155 at 1 mm, 2 threads): shrink 8 with 3 levels of
    30 iterations is 4.7-6.6x faster than SimpleITK's defaults at shrink 4 (4 levels of 50) and its
    white-matter CV after correction is within 2% of the shrink-2 reference.
    """

    #: The field is fitted on the image shrunk by this factor along its finest axis (coarser axes are
    #: shrunk towards isotropic voxels) ...
    shrink_factor: int = Field(8, ge=1, le=16)
    #: ... but never to voxels coarser than this (mm), so the same factor suits 1 mm and 2.5 mm images.
    #: (10 mm, one level of 30 iterations on 7 points: chosen on the 2.5 mm default cohort, benchmarks/n4_cohort.py;
    #: the 1 mm overlay uses 8 mm, 3 x 30 on 4 points, benchmarks/n4.py.)
    max_shrunk_spacing_mm: float = Field(10.0, gt=0)
    #: Iterations per fitting level (the number of levels is the length of this list).
    iterations: list[int] = Field(default_factory=lambda: [30], min_length=1, max_length=8)
    convergence_threshold: float = Field(0.001, gt=0)
    control_points: int = Field(7, ge=4, le=32)
    spline_order: int = Field(3, ge=1, le=5)
    bias_field_fwhm: float = Field(0.15, gt=0)


class RegistrationParams(StrictModel):
    """Rigid (Euler 3D) co-registration of each sequence to the reference, Mattes mutual information."""

    histogram_bins: int = Field(32, ge=8, le=256)
    sampling_fraction: float = Field(0.2, gt=0, le=1)
    shrink_factors: list[int] = Field(default_factory=lambda: [4, 2, 1], min_length=1)
    smoothing_sigmas_mm: list[float] = Field(default_factory=lambda: [4.0, 2.0, 0.0], min_length=1)
    iterations: int = Field(100, ge=1, le=10000)
    learning_rate: float = Field(1.0, gt=0)
    seed: int = 20250515
    #: Regular-step gradient descent: ``learning_rate`` is the first step (about mm, with scales from
    #: physical shift); the step is multiplied by ``relaxation_factor`` whenever the gradient turns
    #: and a level ends when it falls below ``min_step``.
    min_step: float = Field(0.01, gt=0)
    relaxation_factor: float = Field(0.5, gt=0, lt=1)
    #: Register copies of both images resampled to this isotropic spacing (mm) where their voxels are
    #: finer (the pyramid's shrink factors then apply to it); 0 = on the native grids. The transform
    #: is physical, so it is applied to the full-resolution images all the same.
    #: (3 mm and 10000 samples: 0.26 mm mean error on the default cohort, 1.7x faster than 2 mm / 50000,
    #: benchmarks/registration.py; the 1 mm overlay registers on 2 mm copies with 20000 samples.)
    spacing_mm: float = Field(3.0, ge=0)
    #: At most this many metric samples per pyramid level (the sampling fraction is lowered on large
    #: levels, so a 1 mm level costs no more than a coarse one; 0 = no cap).
    max_samples: int = Field(10_000, ge=0)

    @model_validator(mode="after")
    def _pyramid(self) -> RegistrationParams:
        if len(self.shrink_factors) != len(self.smoothing_sigmas_mm):
            raise ValueError("shrink_factors and smoothing_sigmas_mm must have the same length")
        return self


class PreprocessQC(StrictModel):
    """Thresholds: a patient outside them is quarantined with the reason, the others continue."""

    brain_volume_ml: tuple[float, float] = (700.0, 2200.0)
    #: Resampling the label map onto the target grid (``qc_resampling``) may change the whole-tumour
    #: volume by up to the largest of: this fraction of the native volume (what limits large tumours),
    #: ``tumour_volume_band_voxels`` target voxels, and ``tumour_surface_band`` x the native surface area x
    #: the target spacing (the partial-volume band: small and irregular lesions). A whole tumour that
    #: vanishes on the target grid is always quarantined (lesions lost between target voxels are restored
    #: as one voxel, so that only happens to a label map off its images). ``benchmarks/small_lesions.py``
    #: measured the defaults: no phantom lesion of 30 ml down to 30 mm3 exceeds them.
    max_tumour_volume_change: float = Field(0.35, gt=0)
    #: See ``max_tumour_volume_change``: an absolute allowance in voxels of the target grid.
    tumour_volume_band_voxels: float = Field(6.0, ge=0)
    #: See ``max_tumour_volume_change``: the share of the surface band (native surface area x the largest
    #: target spacing) a resampled label map may gain or lose.
    tumour_surface_band: float = Field(0.4, ge=0, le=2)
    #: Registration must end with a Mattes mutual information at most this (lower is better; 0 = none).
    max_registration_metric: float = Field(-0.05, le=0)
    #: Smallest share of the whole tumour (on the target grid) that a made or given brain mask must hold:
    #: a mask that misses the tumour is a failed mask, not a brain (the tumour is then unioned in).
    min_tumour_in_brain: float = Field(0.9, ge=0, le=1)


class BrainMaskParams(StrictModel):
    """How the brain mask of a site with skull is made. A site's own brain masks (``images.brain_mask``) are
    always used when given, and a skull-stripped site's mask is its images' non-zero support; this section
    chooses for the others."""

    #: ``deepbet``: a trained extractor (MIT; its models ship inside the wheel, nothing is downloaded): Dice
    #: 0.96-0.98 on BraTS-MET-00110 from any one sequence, 0.91 on the raw TCGA case from T1c alone, about
    #: 2 s a volume on 2 CPU cores.
    #: ``morphological``: the hand-written strip of T1 (+ the registered T2w) on a working grid of
    #: ``brain_mask_spacing_mm`` (Dice 0.90 on the raw TCGA case with T1c and T2; it fails on T1c alone).
    #: Measured side by side by ``benchmarks/brain_extraction.py`` (benchmarks/RESULTS.md).
    method: Literal["deepbet", "morphological"] = "deepbet"
    #: The sequences the trained extractor may read, in order of preference: it reads the first one the
    #: patient has (a sequence other than the reference is mapped through its registration transform).
    #: (T1 first: the model was trained on T1-weighted images; T1 without contrast scored highest on the raw
    #: TCGA case, T2-weighted lowest on BraTS-MET-00110.)
    sequences: list[SequenceName] = Field(default_factory=lambda: ["t1n", "t1c", "t2f", "t2w"])  # type: ignore[arg-type]
    #: The isotropic grid (mm) the trained extractor reads, the sequence interpolated linearly onto it: thick
    #: slices read better interpolated than as the network's own nearest-neighbour resize of them (Dice 0.911
    #: against 0.904 on the raw TCGA T1c's 5.5 mm slices).
    extractor_spacing_mm: float = Field(1.0, gt=0, le=3)
    #: The trained extractor's threshold on its brain probability.
    threshold: float = Field(0.5, gt=0, lt=1)
    #: Where the trained extractor runs: ``cpu`` (the default: the same masks on every machine) or ``cuda``.
    device: Literal["cpu", "cuda"] = "cpu"

    @field_validator("sequences")
    @classmethod
    def _some(cls, value: list[str]) -> list[str]:
        if not value or len(set(value)) != len(value):
            raise ValueError("brain_mask.sequences must name at least one sequence, each once")
        return value


class PreprocessParams(StrictModel):
    """Reorientation, co-registration, N4, resampling, cropping, normalisation (per patient)."""

    #: ITK threads per patient. ITK's multi-threaded filters (N4, registration metrics, statistics)
    #: sum partial results in thread order, so their last bits depend on the thread count; with 1
    #: thread every run and every task runner gives identical images. Patients run in parallel on
    #: the task runner instead. Raise it to speed up one patient on many cores (results then vary
    #: in the last bits).
    itk_threads: int = Field(1, ge=1, le=256)
    #: gzip the preprocessed images (``.nii.gz``); false writes ``.nii``: several times faster to
    #: write and read, about 3x the disk (the default; the BraTS-size overlay gzips).
    compress_images: bool = False
    orientation: str = "LPS"
    #: The grid every patient is resampled to: 2.5 mm suits the default synthetic cohort and the CPU; the
    #: BraTS-size overlay (``--realistic``) uses 1 mm.
    target_spacing_mm: tuple[float, float, float] = (2.5, 2.5, 2.5)
    image_interpolator: Literal["linear", "bspline"] = "linear"
    label_interpolator: Literal["nearest", "label_gaussian"] = "nearest"
    crop_margin_mm: float = Field(10.0, ge=0)
    #: Percentiles of the normal-appearing brain (the brain without the segmented lesions) its intensities are
    #: clipped to before the z-score; lesion voxels are not clipped (an enhancing tumour is the brightest tissue).
    clip_percentiles: tuple[float, float] | None = (0.5, 99.5)
    #: Isotropic spacing (mm) of the grid the skull strip runs on (sites with skull); the mask is then
    #: interpolated onto every grid that needs it (N4 on each native grid, the output grid).
    brain_mask_spacing_mm: float = Field(2.0, gt=0, le=5)
    brain_mask: BrainMaskParams = Field(default_factory=lambda: BrainMaskParams())
    n4: N4Params = Field(default_factory=lambda: N4Params())
    registration: RegistrationParams = Field(default_factory=lambda: RegistrationParams())
    qc: PreprocessQC = Field(default_factory=lambda: PreprocessQC())

    @field_validator("orientation")
    @classmethod
    def _orientation(cls, value: str) -> str:
        value = value.upper()
        axes = {"L": "x", "R": "x", "P": "y", "A": "y", "S": "z", "I": "z"}
        if len(value) != 3 or any(c not in axes for c in value) or len({axes[c] for c in value}) != 3:
            raise ValueError(f"orientation {value!r} must be three letters, one of L/R, P/A, S/I each (e.g. LPS)")
        return value

    @field_validator("target_spacing_mm")
    @classmethod
    def _spacing(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(s <= 0 for s in value):
            raise ValueError("target_spacing_mm must be positive")
        return value
