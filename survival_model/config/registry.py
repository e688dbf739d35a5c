"""The ``registry`` section: the packaged model, the promotion gate, risk groups and the retraining schedule."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from survival_model.config.base import StrictModel

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
