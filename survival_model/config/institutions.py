"""The ``institutions`` section: each data source's images, label scheme, clinical table and acquisition
facts."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from survival_model.config.base import CANONICAL_LABELS, LABEL_SCHEMES, SEQUENCES, RegionName, SequenceName, StrictModel

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
