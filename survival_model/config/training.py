"""The ``training`` section: splits, the image input, the tabular pipeline, the network, augmentation and
the optimisation."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, NonNegativeFloat, model_validator

from survival_model.config.base import SEQUENCES, SequenceName, StrictModel


class SplitParams(StrictModel):
    """Patient-level splits: a locked test set first, then cross-validation folds on the rest.

    A patient is in the test set iff a number drawn from SHA-256 of (``seed``, its source-image digest)
    is below ``test_fraction``: the same cohort and seed give the same test set on every machine, whatever
    the pseudonymisation key, and no patient changes set when the cohort grows. The test count is
    therefore about, not exactly, ``test_fraction`` of the patients (fewer than 2, or no death, is an
    error asking for another seed or fraction). The folds are stratified by event, survival-time band
    (quantiles of the time among all patients) and site over a seeded digest order; strata too small for
    the split are merged step by step (band first, then site), and the coarsening used is recorded.
    """

    #: Expected share of the patients in the locked test set (each patient independently).
    test_fraction: float = Field(0.2, gt=0, lt=0.5)
    folds: int = Field(5, ge=2, le=20)
    #: ``kfold``: stratified K-fold on the non-test patients; ``leave_one_site_out``: one fold per
    #: site (validation = that site's non-test patients), to see how a model travels.
    scheme: Literal["kfold", "leave_one_site_out"] = "kfold"
    time_bands: int = Field(3, ge=1, le=10)
    #: Share of each fold's training patients (per event value, in a seeded digest order) kept aside as its
    #: stopping patients, on which every training choice (penalty, epoch) is made; 0: none.
    stop_fraction: float = Field(0.2, ge=0, lt=0.5)
    seed: int = 20250515


MaskChannel = Literal["et", "netc", "snfh", "tc", "wt"]


def _mask_channels(*names: MaskChannel) -> list[MaskChannel]:
    return list(names)


class ImageInputParams(StrictModel):
    """The network's image input per patient: K axial slices, an S x S in-plane crop
    (``survival_model.models.inputs``)."""

    #: K: slices through the largest lesion's centre, spread across its extent (``roi: lesion``) or the
    #: whole tumour's (``roi: tumour``).
    slices: int = Field(8, ge=1, le=64)
    #: S: the in-plane crop resized to S x S pixels.
    size: int = Field(32, ge=16, le=512)
    #: ``lesion``: a fixed ``window_mm`` square centred on the largest lesion (one scale for every patient);
    #: ``tumour``: the bounding box of all lesions plus ``roi_margin_mm``, made square and stretched to S.
    roi: Literal["lesion", "tumour"] = "lesion"
    window_mm: float = Field(80.0, gt=0, le=400)
    roi_margin_mm: float = Field(15.0, ge=0)
    #: Image channels, in this order; a sequence a patient lacks (its site does not declare it) is a channel of
    #: zeros (z-score 0: the brain's mean), listed in its input's manifest; a sequence no development patient has
    #: is an error at training (a channel of zeros for everyone cannot be learned): leave it out here.
    sequences: list[SequenceName] = Field(default_factory=lambda: list(SEQUENCES))
    #: Region masks appended as extra 0/1 channels (optional).
    mask_channels: list[MaskChannel] = Field(default_factory=lambda: _mask_channels("et", "netc", "snfh"))

    @model_validator(mode="after")
    def _some_channel(self) -> ImageInputParams:
        if not self.sequences and not self.mask_channels:
            raise ValueError("give at least one of sequences, mask_channels")
        return self


class TabularParams(StrictModel):
    """The tabular vector: clinical fields and imaging features through a pipeline fitted per fold."""

    #: Canonical clinical fields used (categorical ones are one-hot encoded, missing values imputed).
    clinical: list[str] = Field(default_factory=lambda: [
        "age", "sex", "kps", "primary", "extracranial", "n_brain_mets",
        "egfr_mutant", "alk_positive", "her2_positive", "hr_positive", "braf_mutant"])
    volumetric: bool = True
    intensity: bool = False
    #: Published clinical scores added as features (computed per row, nothing fitted): ``gpa`` (Sperduto
    #: 2008), ``ds_gpa`` (Sperduto 2012).
    scores: list[Literal["gpa", "ds_gpa"]] = Field(default_factory=lambda: ["gpa"])  # type: ignore[arg-type]
    #: Columns (shell patterns) entered as log1p of their value: volumes span orders of magnitude.
    log_columns: list[str] = Field(default_factory=lambda: ["vol_*_mm3", "vol_edema_tumour_ratio"])
    #: ``rad_*`` columns kept, ranked on the training rows by univariate concordance with survival.
    radiomics_k: int = Field(0, ge=0)
    #: ComBat site harmonisation of the imaging features, fitted on the training rows.
    harmonise: bool = False


class NetworkParams(StrictModel):
    """The hybrid network: a 2D timm backbone over K slices, pooled, and a tabular branch
    (``survival_model.models.network``)."""

    #: Any timm model name; the default is small and fast on a CPU (``resnet50`` and ``efficientnet_b0`` are the
    #: paper's: ``survival-model run --backbone resnet50``, a GPU is advised).
    backbone: str = "mobilenetv3_small_050"
    #: Pretrained weights from a local file only (safetensors or a PyTorch state dict for this
    #: backbone, any number of input channels: timm adapts the first convolution); null: random init.
    pretrained_weights: Path | None = None
    #: ``regions``: feature maps of the backbone's early ``feature_stages`` averaged inside each region mask of
    #: the input (``training.inputs.mask_channels``) and over the whole window, area-weighted over the slices
    #: (a lesion's contrast, rim and surroundings are a few pooled features away); ``global``: the backbone's
    #: globally pooled output per slice, pooled over the slices by ``pooling``.
    image_features: Literal["regions", "global"] = "regions"
    feature_stages: list[Annotated[int, Field(ge=0, le=6)]] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    #: ``regions`` image features: the input sequences' own mean intensities inside each region mask and over the
    #: window join the backbone's pooled feature maps (a lesion's enhancement is one feature away, not a property
    #: a backbone trained from scratch must first learn to compute).
    region_intensities: bool = True
    #: ``global`` image features: how per-slice embeddings become one image embedding: their mean, or attention.
    pooling: Literal["mean", "attention"] = "mean"
    #: ``additive``: a tabular term (linear unless ``tabular_hidden``) plus an image term through a narrow
    #: bottleneck, fitted in that order; ``concat``: image and tabular embeddings into a head MLP, jointly.
    fusion: Literal["additive", "concat"] = "additive"
    #: Width of the additive image term's bottleneck.
    image_bottleneck: int = Field(8, ge=1, le=1024)
    #: Additive image term: its input features standardised over the training patients (a batch norm without
    #: affine parameters over the full-batch step; prediction uses the last step's statistics), so that every
    #: pooled feature is on one scale whatever its units.
    image_standardise: bool = True
    #: Additive image term: a linear path from the (standardised) features beside the bottleneck, starting at
    #: zero: a risk that is linear in a pooled feature (a lesion's enhancement) is found without the bottleneck.
    image_linear: bool = False
    #: Hidden layers of the tabular branch (additive: [] is a linear term; concat: the embedding MLP).
    tabular_hidden: list[int] = Field(default_factory=list)
    #: Hidden layers of the concat fusion's head.
    head_hidden: list[int] = Field(default_factory=lambda: [64])
    dropout: float = Field(0.2, ge=0, lt=1)
    #: ``hybrid``: image + tabular; ``tabular`` / ``image``: one branch only (ablations).
    variant: Literal["hybrid", "tabular", "image"] = "hybrid"
    #: ``cox``: a risk score (partial likelihood); ``mse``: survival time (the paper's regression);
    #: ``weibull``: a parametric survival distribution (log scale and log shape per patient).
    objective: Literal["cox", "mse", "weibull"] = "cox"


class AugmentParams(StrictModel):
    """Training-time augmentation of the image input (never applied to validation or test patients)."""

    #: Probability of a left-right mirror of the whole patient (all slices and channels together).
    flip_probability: float = Field(0.5, ge=0, le=1)
    #: In-plane rotation drawn uniformly from +-rotation_degrees (bilinear; masks nearest).
    rotation_degrees: float = Field(10.0, ge=0, le=45)
    #: Per sequence channel: x (1 + U(-scale, scale)) + U(-shift, shift), on the z-scored intensities.
    intensity_scale: float = Field(0.1, ge=0, lt=1)
    intensity_shift: float = Field(0.1, ge=0, lt=1)


class FitParams(StrictModel):
    """The optimisation of one fold's model (``survival_model.training.loop``): every step is full-batch (exact
    Cox risk sets); every choice is made on the fold's stopping patients, never on its validation patients."""

    #: Full-batch steps of the image phase (one per epoch). 60 kept late image epochs that passed the epoch rule
    #: on the stopping patients and lost on validation (benchmarks/RESULTS.md, validity); 30 bounds that.
    epochs: int = Field(30, ge=1, le=5000)
    #: Patients per forward chunk: memory only, the gradient is always the whole training set's.
    chunk_size: int = Field(512, ge=1, le=100_000)
    learning_rate: float = Field(3e-3, gt=0, le=1)
    weight_decay: float = Field(1e-4, ge=0)
    #: ``cosine``: linear warm-up for ``warmup_epochs`` then cosine decay to 0; ``constant``: warm-up only.
    schedule: Literal["cosine", "constant"] = "cosine"
    warmup_epochs: int = Field(3, ge=0)
    #: Early stopping on the stopping patients: ``loss`` (lower is better) or ``cindex`` (Harrell's C).
    monitor: Literal["cindex", "loss"] = "loss"
    patience: int = Field(10, ge=1)
    min_epochs: int = Field(3, ge=1)
    #: Additive fusion: the best image epoch is kept only when the cross-fitted gain of choosing an epoch over
    #: epoch 0 (the tabular term alone) exceeds this many of its bootstrap standard errors (each half of the
    #: stopping patients scores the epoch the other half chose; ``training.loop.image_gain``); otherwise epoch 0
    #: is kept. 0 (default): kept whenever that gain is positive; 1 reverted 4 of 5 folds at 600 patients whose
    #: images carry 29 % of the risk and lost the image gain (benchmarks/RESULTS.md, validity).
    image_gain_se: float = Field(0.0, ge=0)
    #: Bootstrap draws for that standard error.
    image_gain_resamples: int = Field(200, ge=20, le=100_000)
    #: Additive fusion: L2 penalties of the tabular term tried, chosen by cross-validation (the
    #: cross-validated partial likelihood) inside the fold's training patients.
    tabular_penalties: list[NonNegativeFloat] = Field(
        default_factory=lambda: [0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0], min_length=1)
    #: Inner folds of that cross-validation.
    tabular_cv_folds: int = Field(5, ge=2, le=20)
    #: L-BFGS iterations per penalty (the tabular term is fitted to convergence).
    tabular_iterations: int = Field(200, ge=1, le=10_000)
    #: ``mse`` objective: how censored patients enter the loss (see survival_model/models/losses.py).
    censored: Literal["hinge", "drop", "naive"] = "hinge"
    #: ``cox`` objective: tied event times.
    ties: Literal["efron", "breslow"] = "efron"
    #: ``auto``: CUDA when present, else CPU.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    #: ``auto``: bf16 autocast on a CUDA device that supports it, else fp32.
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    #: Torch threads on CPU; null: every core (torch's default).
    threads: int | None = Field(None, ge=1)
    seed: int = 20250515
    #: Deterministic algorithms (bit-for-bit repeatable on CPU; slower on CUDA).
    deterministic: bool = True
    #: Several CUDA devices: folds train in parallel, one per device (a lock per GPU); one device or CPU: one
    #: fold at a time. On Dask every fold is submitted at once and each worker claims a GPU of its own host.
    parallel_folds: bool = True


class TrainingParams(StrictModel):
    """Model training: splits, inputs, the tabular pipeline, the network and its optimisation."""

    splits: SplitParams = Field(default_factory=lambda: SplitParams())
    inputs: ImageInputParams = Field(default_factory=lambda: ImageInputParams())
    tabular: TabularParams = Field(default_factory=lambda: TabularParams())
    network: NetworkParams = Field(default_factory=lambda: NetworkParams())
    augment: AugmentParams = Field(default_factory=lambda: AugmentParams())
    fit: FitParams = Field(default_factory=lambda: FitParams())

    @model_validator(mode="after")
    def _chunks_for_standardising(self) -> TrainingParams:
        if self.network.image_standardise and self.fit.chunk_size < 2:
            raise ValueError("network.image_standardise standardises the image features over each forward chunk of "
                             "patients: fit.chunk_size must be at least 2")
        return self
