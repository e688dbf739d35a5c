"""The library's typed exception hierarchy.

Every error a user can cause derives from :class:`SurvivalModelError`. Messages name the patient or
file, say what is wrong and what to do. Patient-level data problems are usually *not* raised to the
caller: ingestion turns them into quarantine records (see :mod:`survival_model.quarantine`),
so one bad patient never stops a run. They are raised inside the library as :class:`PatientDataError`
subclasses carrying a machine-readable reason code.
"""

from __future__ import annotations


class SurvivalModelError(Exception):
    """Base class of every error raised on purpose by this library."""


class ConfigError(SurvivalModelError):
    """The run configuration (``params.yaml``) is missing, malformed or inconsistent."""


class DataSourceError(SurvivalModelError):
    """A declared institution's data cannot be used at all (missing folder, unreadable table)."""


class PatientDataError(SurvivalModelError):
    """One patient's data failed validation; the patient is quarantined, the run goes on.

    ``reason`` is a stable machine-readable code (see ``survival_model.quarantine.REASONS``); the message is
    the human sentence shown in the quarantine table. It must never contain identifying values.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class TrackingError(SurvivalModelError):
    """The experiment tracker (MLflow) could not be reached or refused a write."""


class TransientIOError(SurvivalModelError, OSError):
    """An I/O failure that may succeed when retried (network file system, busy file)."""
