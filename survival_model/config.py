"""The run configuration: ``params.yaml`` parsed once into validated, typed, frozen models.

This is the only module that parses YAML. Unknown keys and bad values are errors that name the key
(``institutions.site_b.clinical.survival.duration.time_unit: ...``). Relative paths are resolved against the
folder that holds the params file, so a run does not depend on the current directory.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, ValidationError, field_validator, model_validator

from survival_model.errors import ConfigError

SequenceName = Literal["t1n", "t1c", "t2w", "t2f"]
SEQUENCES: tuple[SequenceName, ...] = ("t1n", "t1c", "t2w", "t2f")

RegionName = Literal["netc", "snfh", "et", "background"]
#: Canonical label values of the output label maps (BraTS-METS convention).
CANONICAL_LABELS: dict[str, int] = {"background": 0, "netc": 1, "snfh": 2, "et": 3}

#: Preset label schemes; an institution may instead declare its own ``{value: region}`` mapping.
LABEL_SCHEMES: dict[str, dict[int, RegionName]] = {
    # BraTS-METS 2023+ pre-treatment: 1 NETC, 2 SNFH, 3 ET.
    "brats_mets": {1: "netc", 2: "snfh", 3: "et"},
    # BraTS-METS post-treatment adds 4 = resection cavity, which is not tumour: mapped to background.
    "brats_mets_post": {1: "netc", 2: "snfh", 3: "et", 4: "background"},
    # Old BraTS glioma (2017-2021): 1 NCR/NET, 2 ED, 4 ET.
    "brats_glioma": {1: "netc", 2: "snfh", 4: "et"},
    # BraTS 2013/2015: 1 necrosis, 2 edema, 3 non-enhancing tumour, 4 enhancing tumour.
    # Necrosis and non-enhancing tumour together form BraTS-METS's "non-enhancing tumour core".
    "brats2013": {1: "netc", 2: "snfh", 3: "netc", 4: "et"},
}

ClinicalField = Literal[
    "age",
    "sex",
    "kps",
    "primary",
    "extracranial",
    "n_brain_mets",
    "gpa",
    "egfr_mutant",
    "alk_positive",
    "her2_positive",
    "hr_positive",
    "braf_mutant",
]
IdStep = Literal["strip", "upper", "lower", "strip_leading_zeros", "digits_only", "int_like"]
TimeUnit = Literal["days", "weeks", "months", "years"]
ColumnRef = str | int

_SITE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


class StrictModel(BaseModel):
    """Base: unknown keys are errors, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------------------------------
# Institutions: images
# --------------------------------------------------------------------------------------------------


class ImageSource(StrictModel):
    """Where one institution's images are and how files are named.

    Patterns are relative to ``root`` and contain ``{case}`` where the case identifier appears (it may
    appear several times, e.g. ``{case}/{case}-t1c.nii.gz``). For ``layout: dicom`` a sequence pattern
    names the folder holding that sequence's DICOM series. The mask is a NIfTI/NRRD file in every layout.
    """

    layout: Literal["brats", "pattern", "dicom"]
    root: Path
    sequences: dict[SequenceName, str] = Field(default_factory=dict)
    mask: str | None = None
    brain_mask: str | None = None
    mask_reference: SequenceName = "t1c"
    case_regex: str = r"[^/]+"

    @model_validator(mode="after")
    def _layout_defaults(self) -> ImageSource:
        if self.layout == "brats":
            seqs = self.sequences or {s: f"{{case}}/{{case}}-{s}.nii.gz" for s in SEQUENCES}
            mask = self.mask or "{case}/{case}-seg.nii.gz"
            object.__setattr__(self, "sequences", seqs)
            object.__setattr__(self, "mask", mask)
        if not self.sequences:
            raise ValueError(f"layout '{self.layout}' needs 'sequences': a file pattern per sequence")
        patterns: dict[str, str] = {str(k): v for k, v in self.sequences.items()}
        patterns["mask"] = self.mask or "{case}"
        for name, pattern in patterns.items():
            if "{case}" not in pattern:
                raise ValueError(f"pattern for '{name}' must contain '{{case}}' (got {pattern!r})")
        if self.mask_reference not in self.sequences:
            raise ValueError(
                f"mask_reference '{self.mask_reference}' is not among the declared sequences "
                f"{sorted(self.sequences)}"
            )
        try:
            re.compile(self.case_regex)
        except re.error as exc:
            raise ValueError(f"case_regex is not a valid regular expression: {exc}") from exc
        return self


class Acquisition(StrictModel):
    """What the site's images already are; preprocessing skips what is already done."""

    skull_stripped: bool = False
    bias_corrected: bool = False
    co_registered: bool = True


# --------------------------------------------------------------------------------------------------
# Institutions: clinical table
# --------------------------------------------------------------------------------------------------


class DurationSurvival(StrictModel):
    """Survival given as a duration and an event flag."""

    kind: Literal["duration"] = "duration"
    time_column: ColumnRef
    time_unit: TimeUnit = "days"
    event_column: ColumnRef
    #: How raw event values (compared as normalised lower-case strings) map to 1 (death) / 0 (censored).
    event_values: dict[str, Literal[0, 1]] = Field(
        default_factory=lambda: {  # type: ignore[arg-type]
            "1": 1, "1.0": 1, "0": 0, "0.0": 0, "dead": 1, "deceased": 1, "death": 1, "died": 1,
            "yes": 1, "true": 1, "alive": 0, "censored": 0, "no": 0, "false": 0,
        }
    )


class DatesSurvival(StrictModel):
    """Survival derived from dates: start (e.g. diagnosis), last contact, death (empty if alive)."""

    kind: Literal["dates"] = "dates"
    start_column: ColumnRef
    last_contact_column: ColumnRef
    death_column: ColumnRef


class AgeFromDates(StrictModel):
    """Age in years at a reference date (e.g. diagnosis) computed from a date of birth."""

    birth_column: ColumnRef
    reference_column: ColumnRef


class ClinicalSource(StrictModel):
    """How to read and harmonise one institution's clinical table (CSV or XLSX).

    Only the columns named here are read into the cohort: everything else (names, MRNs, dates of
    birth, free text) is dropped at the door. Columns are referred to by header text or by 0-based
    position (an integer).
    """

    path: Path
    sheet: str | int = 0
    header_rows: list[int] = Field(default_factory=lambda: [0])
    first_data_row: int | None = None
    delimiter: str | None = None
    encoding: str = "utf-8"
    id_column: ColumnRef
    id_normalise: list[IdStep] = Field(default_factory=lambda: ["strip"])  # type: ignore[arg-type]
    #: Rows whose normalised id does not fully match this regular expression are not patients
    #: (notes or totals under a table) and are skipped, counted in the harmonisation report.
    id_pattern: str | None = None
    #: The decimal mark of numbers written as text: "." (then "," groups thousands) or ",".
    decimal: Literal[".", ","] = "."
    image_id_normalise: list[IdStep] | None = None
    rows_per_patient: Literal["one", "many"] = "one"
    count_rows_as: ClinicalField | None = None
    #: With many rows per patient, fields must agree across rows unless a rule says how to merge them
    #: (e.g. ``age: min`` when later rows repeat the age at a later visit).
    merge_rules: dict[ClinicalField, Literal["agree", "first", "min", "max"]] = Field(default_factory=dict)
    columns: dict[ClinicalField, ColumnRef] = Field(default_factory=dict)
    values: dict[ClinicalField, dict[str, Any]] = Field(default_factory=dict)
    missing_values: list[str] = Field(
        default_factory=lambda: [
            "", "na", "n/a", "nan", "none", "null", "not available", "unknown", "-", "?", "nd",
        ]
    )
    #: How time and event are read. Null (omitted) means the table has no outcome: its patients are
    #: to be predicted, not trained on (their ``time_days`` and ``event`` are missing in the cohort).
    survival: DurationSurvival | DatesSurvival | None = Field(None, discriminator="kind")
    age_from_dates: AgeFromDates | None = None
    date_format: str | None = None
    dayfirst: bool = False
    extra_columns: dict[str, ColumnRef] = Field(default_factory=dict)

    @field_validator("values", mode="before")
    @classmethod
    def _string_keys(cls, value: Any) -> Any:
        # YAML reads `1: female` with an integer key; raw cells are compared as normalised strings.
        if isinstance(value, dict):
            return {
                field: {str(k).strip().lower(): v for k, v in mapping.items()}
                if isinstance(mapping, dict) else mapping
                for field, mapping in value.items()
            }
        return value

    @field_validator("missing_values")
    @classmethod
    def _lower(cls, value: list[str]) -> list[str]:
        return [v.strip().lower() for v in value]

    @model_validator(mode="after")
    def _consistent(self) -> ClinicalSource:
        if not self.header_rows or sorted(self.header_rows) != self.header_rows:
            raise ValueError("header_rows must be a non-empty increasing list of 0-based row numbers")
        if self.id_pattern is not None:
            try:
                re.compile(self.id_pattern)
            except re.error as exc:
                raise ValueError(f"id_pattern is not a valid regular expression: {exc}") from None
        if self.first_data_row is not None and self.first_data_row <= self.header_rows[-1]:
            raise ValueError("first_data_row must come after the last header row")
        if self.count_rows_as is not None and self.rows_per_patient != "many":
            raise ValueError("count_rows_as needs rows_per_patient: many")
        if self.merge_rules and self.rows_per_patient != "many":
            raise ValueError("merge_rules needs rows_per_patient: many")
        if self.age_from_dates is not None and "age" in self.columns:
            raise ValueError("declare age either in 'columns' or in 'age_from_dates', not both")
        if self.count_rows_as is not None and self.count_rows_as in self.columns:
            raise ValueError(f"'{self.count_rows_as}' is both a column and count_rows_as")
        unknown = set(self.values) - set(self.columns)
        if unknown:
            raise ValueError(f"'values' maps fields that are not in 'columns': {sorted(unknown)}")
        for name in self.extra_columns:
            if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
                raise ValueError(f"extra column name {name!r} must be lower_snake_case")
        return self

    @property
    def image_id_steps(self) -> list[IdStep]:
        return self.image_id_normalise if self.image_id_normalise is not None else self.id_normalise


class Institution(StrictModel):
    """One data source: its images, label scheme, clinical table and acquisition facts."""

    images: ImageSource
    labels: str | dict[int, RegionName] = "brats_mets"
    clinical: ClinicalSource
    acquisition: Acquisition = Field(default_factory=lambda: Acquisition())

    @field_validator("labels")
    @classmethod
    def _known_scheme(cls, value: str | dict[int, RegionName]) -> str | dict[int, RegionName]:
        if isinstance(value, str) and value not in LABEL_SCHEMES:
            raise ValueError(f"unknown label scheme {value!r}; use one of {sorted(LABEL_SCHEMES)} "
                             "or a mapping {{value: netc|snfh|et|background}}")
        if isinstance(value, dict) and 0 in value:
            raise ValueError("label 0 is always background; do not map it")
        return value

    @property
    def label_map(self) -> dict[int, int]:
        """Source label value -> canonical label value (0 stays 0)."""
        scheme = LABEL_SCHEMES[self.labels] if isinstance(self.labels, str) else self.labels
        return {0: 0, **{int(k): CANONICAL_LABELS[v] for k, v in scheme.items()}}


# --------------------------------------------------------------------------------------------------
# Stages
# --------------------------------------------------------------------------------------------------


class IngestParams(StrictModel):
    """Validation thresholds and output settings of ingestion."""

    age_range: tuple[float, float] = (18.0, 110.0)
    kps_range: tuple[float, float] = (0.0, 100.0)
    gpa_range: tuple[float, float] = (0.0, 4.0)
    max_time_days: float = 36500.0
    #: Image and mask count as the same grid if origins differ by at most this (mm) and directions by
    #: at most ``direction_tolerance`` per matrix entry; within it the mask takes the image's geometry.
    grid_tolerance_mm: float = Field(0.05, ge=0)
    direction_tolerance: float = Field(1e-3, ge=0)
    compress_images: bool = True
    #: Check the clinical number of brain metastases against connected components of the tumour mask.
    check_lesion_count: bool = False

    @model_validator(mode="after")
    def _ranges(self) -> IngestParams:
        for name in ("age_range", "kps_range", "gpa_range"):
            lo, hi = getattr(self, name)
            if lo >= hi:
                raise ValueError(f"{name}: lower bound {lo} must be below upper bound {hi}")
        return self


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
    max_shrunk_spacing_mm: float = Field(8.0, gt=0)
    #: Iterations per fitting level (the number of levels is the length of this list).
    iterations: list[int] = Field(default_factory=lambda: [30, 30, 30], min_length=1, max_length=8)
    convergence_threshold: float = Field(0.001, gt=0)
    control_points: int = Field(4, ge=4, le=32)
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
    spacing_mm: float = Field(2.0, ge=0)
    #: At most this many metric samples per pyramid level (the sampling fraction is lowered on large
    #: levels, so a 1 mm level costs no more than a coarse one; 0 = no cap).
    max_samples: int = Field(50_000, ge=0)

    @model_validator(mode="after")
    def _pyramid(self) -> RegistrationParams:
        if len(self.shrink_factors) != len(self.smoothing_sigmas_mm):
            raise ValueError("shrink_factors and smoothing_sigmas_mm must have the same length")
        return self


class PreprocessQC(StrictModel):
    """Thresholds: a patient outside them is quarantined with the reason, the others continue."""

    brain_volume_ml: tuple[float, float] = (700.0, 2200.0)
    #: Largest relative change of the whole-tumour volume from resampling the label map.
    max_tumour_volume_change: float = Field(0.35, gt=0)
    #: Registration must end with a Mattes mutual information at most this (lower is better; 0 = none).
    max_registration_metric: float = Field(-0.05, le=0)


class PreprocessParams(StrictModel):
    """Reorientation, co-registration, N4, resampling, cropping, normalisation (per patient)."""

    #: ITK threads per patient. ITK's multi-threaded filters (N4, registration metrics, statistics)
    #: sum partial results in thread order, so their last bits depend on the thread count; with 1
    #: thread every run and every task runner gives identical images. Patients run in parallel on
    #: the task runner instead. Raise it to speed up one patient on many cores (results then vary
    #: in the last bits).
    itk_threads: int = Field(1, ge=1, le=256)
    #: gzip the preprocessed images (``.nii.gz``); false writes ``.nii``: several times faster to
    #: write and read, about 3x the disk.
    compress_images: bool = True
    orientation: str = "LPS"
    target_spacing_mm: tuple[float, float, float] = (1.0, 1.0, 1.0)
    image_interpolator: Literal["linear", "bspline"] = "linear"
    label_interpolator: Literal["nearest", "label_gaussian"] = "nearest"
    crop_margin_mm: float = Field(10.0, ge=0)
    #: Percentiles of the normal-appearing brain (the brain without the segmented lesions) its intensities are
    #: clipped to before the z-score; lesion voxels are not clipped (an enhancing tumour is the brightest tissue).
    clip_percentiles: tuple[float, float] | None = (0.5, 99.5)
    #: Isotropic spacing (mm) of the grid the skull strip runs on (sites with skull); the mask is then
    #: interpolated onto every grid that needs it (N4 on each native grid, the output grid).
    brain_mask_spacing_mm: float = Field(2.0, gt=0, le=5)
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


RegionKey = Literal["et", "netc", "snfh", "tc", "wt"]


class RadiomicsParams(StrictModel):
    """pyradiomics per region and sequence, driven by a parameter file kept in the repository."""

    enabled: bool = True
    #: The pyradiomics parameter file; null means the one shipped with the package
    #: (``survival_model/resources/radiomics.yaml``). A relative path is relative to params.yaml.
    params_file: Path | None = None
    regions: list[RegionKey] = Field(default_factory=lambda: ["wt", "et"])  # type: ignore[arg-type]
    sequences: list[SequenceName] = Field(default_factory=lambda: ["t1c", "t2f"])  # type: ignore[arg-type]


class FeaturesParams(StrictModel):
    """Volumetric features, per-region intensity statistics and radiomics."""

    #: Lesions are connected components of the tumour core (NETC + ET) with this connectivity
    #: (26: faces, edges and corners; 6: faces only) and at least this volume.
    lesion_connectivity: Literal[6, 26] = 26
    min_lesion_mm3: float = Field(10.0, ge=0)
    intensity_regions: list[RegionKey] = Field(default_factory=lambda: ["et", "netc", "snfh", "wt"])  # type: ignore[arg-type]
    intensity_sequences: list[SequenceName] = Field(default_factory=lambda: list(SEQUENCES))
    radiomics: RadiomicsParams = Field(default_factory=lambda: RadiomicsParams())


class SyntheticParams(StrictModel):
    """The default synthetic cohort the main command makes when it is missing."""

    out_dir: Path = Path("data/synthetic")
    seed: int = 20250515
    patients: dict[str, int] = Field(default_factory=lambda: {"site_a": 60, "site_b": 50, "site_c": 38})
    shape: tuple[int, int, int] = (96, 96, 62)
    spacing_mm: float = Field(2.5, gt=0)
    bad_patients: bool = True
    # log hazard ratio per SD of the image-only contrast-enhancement latent (survival_model/synthetic/
    # survival.py); same default as GeneratorConfig.image_effect; 1.0 is the "strong" setting
    image_effect: float = Field(0.6, ge=-3.0, le=3.0)

    @field_validator("patients")
    @classmethod
    def _known_sites(cls, value: dict[str, int]) -> dict[str, int]:
        allowed = {"site_a", "site_b", "site_c"}
        if not value or set(value) - allowed:
            raise ValueError(f"synthetic sites must be among {sorted(allowed)} (got {sorted(value)})")
        if any(n < 0 for n in value.values()):
            raise ValueError("patient counts must be >= 0")
        return value


class PrivacyParams(StrictModel):
    """Pseudonymisation: case ids are a keyed hash of (site, source id); the key lives outside the repo.

    Where the key comes from, first match wins (resolved by the flows layer, ``tasks.privacy``):

    1. ``key_secret_block``: a Prefect Secret block of that name (``Secret.load(name).get()``); when set,
       it must exist: nothing else is tried;
    2. ``key_env``: an environment variable of that name, when it is set and not empty;
    3. ``key_file``: a file, when it exists;
    4. otherwise a random key is created at ``key_file`` only when ``create_key_if_missing`` is true and
       the run is not from a Prefect deployment (the one-command local run); anywhere else a missing key
       is a ``ConfigError`` saying where it was looked for.

    The key is the text of the secret, variable or file (stripped), at least 16 characters: the same
    text gives the same ids from any source. Only its fingerprint is ever written or logged.
    """

    key_file: Path = Path("~/.config/survival-model/pseudonym.key")
    #: Name of an environment variable holding the key (read at run time by the flows, never on import).
    key_env: str | None = "SURVIVAL_MODEL_PSEUDONYM_KEY"
    #: Name of a Prefect Secret block holding the key (for deployments).
    key_secret_block: str | None = None
    #: Create a missing key at ``key_file``: the local default run only, never in a deployment.
    create_key_if_missing: bool = True

    @field_validator("key_env", "key_secret_block")
    @classmethod
    def _no_blank_name(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must be a name or null, not blank")
        return value


class TrackingParams(StrictModel):
    """MLflow. ``tracking_uri: null`` means an embedded SQLite file under the work directory."""

    tracking_uri: str | None = None
    experiment: str = "brain-mets-survival"
    ui_url: str | None = None


class OrchestrationParams(StrictModel):
    """Prefect: task runner, retries, result persistence and cache isolation."""

    task_runner: Literal["threads", "processes", "dask"] = "threads"
    max_workers: int = Field(2, ge=1, le=256)
    #: Dask scheduler address for ``task_runner: dask``; null starts a LocalCluster of
    #: ``max_workers`` single-threaded worker processes.
    dask_address: str | None = None
    retries: int = Field(2, ge=0, le=10)
    retry_delay_seconds: float = Field(2.0, ge=0)
    #: Serialise concurrent computations of the same cache key with file locks.
    cache_isolation: Literal["read_committed", "serializable"] = "serializable"
    #: Per-task timeout. Prefect can only enforce it in a process pool (a thread cannot be
    #: interrupted mid-I/O), so it is applied with ``task_runner: processes`` only.
    task_timeout_seconds: float | None = Field(None, gt=0)
    #: A stage (ingestion, imaging) none of whose inputs changed since a recorded run returns that
    #: run's result without submitting its per-patient tasks (``survival_model.stages``); false
    #: always goes through the per-patient tasks (each still cached).
    reuse_unchanged_stages: bool = True


class ServerParams(StrictModel):
    """The local long-lived Prefect server and MLflow UI (``survival-model ui start``)."""

    host: str = "127.0.0.1"
    prefect_port: int = Field(4200, ge=1, le=65535)
    mlflow_port: int = Field(5000, ge=1, le=65535)
    startup_timeout_seconds: float = Field(120.0, gt=0)
    #: The local servers' own folder (per user, like Prefect's default ``~/.prefect``): the Prefect
    #: database (``prefect/``), the servers' logs and which ones are running (``state.json``). Outside
    #: the work directory, so deleting a work directory neither breaks a running server nor makes
    #: the next run rebuild Prefect's database (~10 s).
    home: Path = Path("~/.cache/survival-model/servers")
    #: Where ``survival-model run`` reports its flow runs: ``local`` - the local Prefect server of
    #: ``ui start``, started (and left running, for the UI and the next run) when it is not up;
    #: ``temporary`` - Prefect's temporary server, started and stopped by every run (10-30 s each).
    prefect_api: Literal["local", "temporary"] = "local"


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


class ImageInputParams(StrictModel):
    """The network's image input per patient: K axial slices, an S x S in-plane crop
    (``survival_model.models.inputs``)."""

    #: K: slices through the largest lesion's centre, spread across its extent (``roi: lesion``) or the
    #: whole tumour's (``roi: tumour``).
    slices: int = Field(8, ge=1, le=64)
    #: S: the in-plane crop resized to S x S pixels.
    size: int = Field(96, ge=16, le=512)
    #: ``lesion``: a fixed ``window_mm`` square centred on the largest lesion (one scale for every patient);
    #: ``tumour``: the bounding box of all lesions plus ``roi_margin_mm``, made square and stretched to S.
    roi: Literal["lesion", "tumour"] = "lesion"
    window_mm: float = Field(80.0, gt=0, le=400)
    roi_margin_mm: float = Field(15.0, ge=0)
    #: Image channels, in this order; a sequence a patient lacks is a channel of zeros (z-score 0).
    sequences: list[SequenceName] = Field(default_factory=lambda: list(SEQUENCES))
    #: Region masks appended as extra 0/1 channels (optional).
    mask_channels: list[Literal["et", "netc", "snfh", "tc", "wt"]] = Field(default_factory=list)

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

    #: Any timm model name (``resnet50`` and ``efficientnet_b0`` are the paper's).
    backbone: str = "resnet50"
    #: Pretrained weights from a local file only (safetensors or a PyTorch state dict for this
    #: backbone, any number of input channels: timm adapts the first convolution); null: random init.
    pretrained_weights: Path | None = None
    #: ``regions``: feature maps of the backbone's early ``feature_stages`` averaged inside each region mask of
    #: the input (``training.inputs.mask_channels``) and over the whole window, area-weighted over the slices
    #: (a lesion's contrast, rim and surroundings are a few pooled features away); ``global``: the backbone's
    #: globally pooled output per slice, pooled over the slices by ``pooling``. (``params.yaml`` uses ``regions``
    #: with its mask channels; here ``global``, which needs none.)
    image_features: Literal["regions", "global"] = "global"
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
    #: Several CUDA devices: folds train in parallel, one per device (a Prefect concurrency limit);
    #: one device or CPU: one fold at a time.
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


BaselineName = Literal["gpa", "ds_gpa", "cox_clinical", "coxnet_clinical_volumetric", "rsf"]


def _all_baselines() -> list[BaselineName]:
    return ["gpa", "ds_gpa", "cox_clinical", "coxnet_clinical_volumetric", "rsf"]


class GroundTruthParams(StrictModel):
    """A table of true risk scores (the synthetic cohort's oracle), for the ceiling beside every model."""

    path: Path
    site_column: str = "site"
    #: The id the site's images and clinical rows normalise to (pseudonymised like them).
    id_column: str = "patient_key"
    #: The true risk (higher = earlier death), e.g. the simulation's linear predictor.
    risk_column: str = "true_lp"
    #: Inputs (feature-table columns) the ground truth is known to depend on: the report says where
    #: each lands in the permutation importance ranking.
    known_effects: list[str] = Field(default_factory=list)


class NetworkVariant(StrictModel):
    """A further network trained on the same splits for the comparison: overrides of ``training.network``."""

    backbone: str | None = None
    variant: Literal["hybrid", "tabular", "image"] | None = None
    objective: Literal["cox", "mse", "weibull"] | None = None
    pooling: Literal["mean", "attention"] | None = None
    fusion: Literal["additive", "concat"] | None = None
    #: concat fusion: the tabular embedding MLP (the additive fusion's linear term has none).
    tabular_hidden: list[int] | None = None
    image_features: Literal["regions", "global"] | None = None
    region_intensities: bool | None = None
    image_standardise: bool | None = None
    image_linear: bool | None = None
    image_bottleneck: int | None = None

    def apply(self, network: NetworkParams) -> NetworkParams:
        return network.model_copy(update=self.model_dump(exclude_none=True))


class EvaluationParams(StrictModel):
    """Scoring on the locked test set."""

    #: Bootstrap resamples for confidence intervals, and their level.
    bootstrap: int = Field(1000, ge=0, le=100000)
    confidence: float = Field(0.95, gt=0.5, lt=1)
    seed: int = 20250515
    #: Optional oracle risk scores; skipped with a note when the file does not exist.
    ground_truth: GroundTruthParams | None = None
    #: Horizon of Uno's C-index (days).
    tau_days: float = Field(730.0, gt=0)
    #: Bootstrap resamples for the full comparison table (every score of every model; ~30 ms each).
    score_resamples: int = Field(200, ge=0, le=10000)
    #: Clinical baselines fitted on the same development patients and scored on the same test set.
    baselines: list[BaselineName] = Field(default_factory=lambda: _all_baselines())
    #: Further networks (variants of ``training.network``) trained on the same splits and compared; each
    #: is a training stage of its own (cached like the main one). E.g. the paper's backbones and objectives,
    #: tabular-only and image-only ablations.
    networks: list[NetworkVariant] = Field(default_factory=list)
    #: Permutation importance on the test set: shuffles per input (tabular column or image channel).
    importance_repeats: int = Field(10, ge=1, le=1000)
    #: Grad-CAM for every test patient (networks with an image branch), and how many in the panel.
    gradcam: bool = True
    gradcam_panel: int = Field(6, ge=1, le=32)
    #: The report's leakage audit: a C-index or an R2 on days above these is flagged as implausible;
    #: a test set smaller than this is flagged as small.
    audit_max_cindex: float = Field(0.9, gt=0.5, le=1)
    audit_max_r2: float = Field(0.9, gt=0, le=1)
    audit_min_test_patients: int = Field(50, ge=0)
    audit_min_test_deaths: int = Field(20, ge=0)


_CRON = re.compile(r"^\S+( \S+){4,5}$")


class GateParams(StrictModel):
    """The promotion gate (``survival_model.registry.gate``): the challenger takes the ``champion`` alias only
    when a one-sided paired bootstrap over the locked test patients shows it better on ``metric`` at
    ``confidence`` (lower bound of challenger - reference above ``margin``) and not worse in the integrated
    Brier score by ``ibs_margin`` or more (upper bound below it). Error rates measured in ``benchmarks/gate.py``."""

    #: The primary score, computed on the locked test set for the challenger and the re-scored champion.
    metric: Literal["uno_c", "harrell_c"] = "uno_c"
    #: One-sided confidence of both bounds (0.95: a truly worse challenger is promoted at most ~5 % of the time).
    confidence: float = Field(0.95, ge=0.5, lt=1)
    #: The lower bound of the difference in ``metric`` must exceed this (0: better at all, with confidence).
    margin: float = Field(0.0, ge=0, lt=0.5)
    #: Non-inferiority margin of the integrated Brier score: the upper bound of its difference must be below it.
    #: ``null`` gates on the C-index alone (for test sets too short in follow-up to integrate a Brier score).
    ibs_margin: float | None = Field(0.02, gt=0, lt=1)
    #: Paired bootstrap resamples of the locked test patients, and their seed (same data, same decision).
    resamples: int = Field(2000, ge=200, le=100_000)
    seed: int = 0
    #: The share of resamples in which both models' scores must be defined; fewer: the decision is undefined.
    min_finite: float = Field(0.9, gt=0, le=1)
    #: The first model must beat this baseline to become champion (``none``: the first model is promoted).
    first_model_baseline: Literal["gpa", "none"] = "gpa"

    @model_validator(mode="before")
    @classmethod
    def _replaced(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "ibs_tolerance" in data:
            raise ValueError("ibs_tolerance (a tolerance on point estimates) was replaced by ibs_margin, a "
                             "non-inferiority margin on the one-sided upper bound of the integrated Brier score "
                             "difference: set registry.gate.ibs_margin instead")
        return data


class ScheduleParams(StrictModel):
    """The retraining deployment's schedule (``survival-model serve``, ``prefect.yaml``)."""

    cron: str = "0 3 * * 1"
    timezone: str = "UTC"
    active: bool = True

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        value = " ".join(value.split())
        if not _CRON.match(value):
            raise ValueError(f"{value!r} is not a cron expression (5 fields: minute hour day month weekday)")
        return value


class RegistryParams(StrictModel):
    """The packaged model, the MLflow registry with its aliases, the promotion gate and predictions."""

    #: Package, register and gate the main network after every pipeline run.
    enabled: bool = True
    #: The registered model's name; versions carry the aliases ``challenger`` and ``champion``.
    model_name: str = Field("brain-mets-survival", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
    gate: GateParams = Field(default_factory=lambda: GateParams())
    #: Risk groups of a prediction: quantiles of the development patients' out-of-fold risks.
    risk_groups: int = Field(3, ge=2, le=10)
    #: Survival probabilities reported per patient at these months.
    horizons_months: list[float] = Field(default_factory=lambda: [6.0, 12.0, 24.0], min_length=1)
    schedule: ScheduleParams = Field(default_factory=lambda: ScheduleParams())


class Params(StrictModel):
    """The whole run configuration."""

    work_dir: Path = Path("work")
    privacy: PrivacyParams = Field(default_factory=lambda: PrivacyParams())
    tracking: TrackingParams = Field(default_factory=lambda: TrackingParams())
    orchestration: OrchestrationParams = Field(default_factory=lambda: OrchestrationParams())
    servers: ServerParams = Field(default_factory=lambda: ServerParams())
    synthetic: SyntheticParams = Field(default_factory=lambda: SyntheticParams())
    institutions: dict[str, Institution]
    ingest: IngestParams = Field(default_factory=lambda: IngestParams())
    preprocess: PreprocessParams = Field(default_factory=lambda: PreprocessParams())
    features: FeaturesParams = Field(default_factory=lambda: FeaturesParams())
    training: TrainingParams = Field(default_factory=lambda: TrainingParams())
    evaluation: EvaluationParams = Field(default_factory=lambda: EvaluationParams())
    registry: RegistryParams = Field(default_factory=lambda: RegistryParams())

    @field_validator("institutions")
    @classmethod
    def _site_names(cls, value: dict[str, Institution]) -> dict[str, Institution]:
        if not value:
            raise ValueError("declare at least one institution")
        for name in value:
            if not _SITE_NAME.match(name):
                raise ValueError(f"institution name {name!r} must match {_SITE_NAME.pattern}")
        return value

    @property
    def mlflow_uri(self) -> str:
        if self.tracking.tracking_uri:
            return self.tracking.tracking_uri
        return f"sqlite:///{(self.work_dir / 'mlflow' / 'mlflow.db').as_posix()}"

    @property
    def mlflow_artifact_root(self) -> Path:
        return self.work_dir / "mlflow" / "artifacts"


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


def _format_validation_error(exc: ValidationError, source: str) -> str:
    lines = [f"{source}: {exc.error_count()} invalid setting(s):"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-after"))
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check its spelling and the section it is in)"
        elif "input" in err and not isinstance(err["input"], dict | list):
            msg = f"{msg} (got {err['input']!r})"
        lines.append(f"  - {loc or '<top level>'}: {msg}")
    return "\n".join(lines)


def _resolve(base: Path, path: Path) -> Path:
    path = path.expanduser()
    return path if path.is_absolute() else (base / path).resolve()


def resolve_paths(params: Params, base: Path) -> Params:
    """Return a copy of ``params`` with every relative path made absolute against ``base``."""
    institutions = {}
    for name, inst in params.institutions.items():
        images = inst.images.model_copy(update={"root": _resolve(base, inst.images.root)})
        clinical = inst.clinical.model_copy(update={"path": _resolve(base, inst.clinical.path)})
        institutions[name] = inst.model_copy(update={"images": images, "clinical": clinical})
    radiomics = params.features.radiomics
    features = params.features.model_copy(update={
        "radiomics": radiomics.model_copy(update={
            "params_file": _resolve(base, radiomics.params_file) if radiomics.params_file is not None else None})})
    return params.model_copy(
        update={
            "features": features,
            "work_dir": _resolve(base, params.work_dir),
            "privacy": params.privacy.model_copy(
                update={"key_file": _resolve(base, params.privacy.key_file)}
            ),
            "synthetic": params.synthetic.model_copy(
                update={"out_dir": _resolve(base, params.synthetic.out_dir)}
            ),
            "servers": params.servers.model_copy(update={"home": _resolve(base, params.servers.home)}),
            "evaluation": _resolve_evaluation(params.evaluation, base),
            "training": _resolve_training(params.training, base),
            "institutions": institutions,
        }
    )


def _resolve_training(training: TrainingParams, base: Path) -> TrainingParams:
    weights = training.network.pretrained_weights
    if weights is None:
        return training
    network = training.network.model_copy(update={"pretrained_weights": _resolve(base, weights)})
    return training.model_copy(update={"network": network})


def _resolve_evaluation(evaluation: EvaluationParams, base: Path) -> EvaluationParams:
    truth = evaluation.ground_truth
    if truth is None:
        return evaluation
    return evaluation.model_copy(update={"ground_truth": truth.model_copy(update={"path": _resolve(base, truth.path)})})


def parse_params(data: Mapping[str, Any], *, base_dir: Path, source: str = "params") -> Params:
    """Validate a parsed mapping into :class:`Params`, resolving relative paths against ``base_dir``."""
    try:
        params = Params.model_validate(dict(data))
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, source)) from None
    return resolve_paths(params, base_dir)


def load_params(path: Path | str, overrides: Mapping[str, Any] | None = None) -> Params:
    """Read ``params.yaml`` once into validated models.

    ``overrides`` are dotted keys (``{"work_dir": "/tmp/w", "synthetic.shape": [48, 48, 31]}``)
    applied before validation, so they are validated like the file itself.
    """
    path = Path(path)
    data = _read_sections(path, "params file", " (pass --params or create it from the README)")
    for dotted, value in (overrides or {}).items():
        _set_dotted(data, dotted, value)
    return parse_params(data, base_dir=path.resolve().parent, source=str(path))


def _read_sections(path: Path, what: str, hint: str = "") -> dict[str, Any]:
    """A YAML file whose top level is a mapping of sections (a params file or an overlay)."""
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}{hint}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return data


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted!r}: {key!r} is not a section")
        node = child
    node[keys[-1]] = value


# --------------------------------------------------------------------------------------------------
# Local services (infra/local/services.yaml) and command-line overrides
# --------------------------------------------------------------------------------------------------


class ServiceSpec(StrictModel):
    """One long-lived local server: its command line, environment and health-check URL (templates)."""

    command: list[str]
    env: dict[str, str] = Field(default_factory=dict)
    health_url: str
    ui_url: str


class ServicesSpec(StrictModel):
    services: dict[str, ServiceSpec]


def load_services(path: Path) -> ServicesSpec:
    """Read the local services file (``infra/local/services.yaml``)."""
    if not Path(path).is_file():
        raise ConfigError(f"services file not found: {path}")
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        return ServicesSpec.model_validate(data)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, str(path))) from None


#: The BraTS-size preset shipped with the package (``--realistic``): an overlay file like any other.
REALISTIC_OVERLAY = Path(__file__).resolve().parent / "resources" / "realistic.yaml"


def overlay_overrides(path: Path | str) -> dict[str, Any]:
    """A params overlay file (the sections and keys it changes, nested as in ``params.yaml``) as dotted
    overrides: ``{"preprocess": {"n4": {"control_points": 4}}}`` -> ``{"preprocess.n4.control_points": 4}``.
    A mapping is walked down to its leaves, so an overlay changes one key of a section and keeps the rest;
    the keys are validated with the params file they are applied to (an unknown one is an error naming it)."""
    data = _read_sections(Path(path), "overlay file")
    out: dict[str, Any] = {}

    def walk(node: Mapping[str, Any], prefix: str) -> None:
        for key, value in node.items():
            dotted = f"{prefix}{key}"
            if isinstance(value, Mapping) and value:
                walk(value, dotted + ".")
            else:
                out[dotted] = value

    walk(data, "")
    return out


def parse_override(text: str) -> tuple[str, Any]:
    """``"synthetic.shape=[48, 48, 31]"`` -> ``("synthetic.shape", [48, 48, 31])`` (value read as YAML)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} must look like section.key=value")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML: {exc}") from None
    return key.strip(), value
