"""The whole run configuration: one model holding every section."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import Field, field_validator

from survival_model.config.base import StrictModel
from survival_model.config.evaluation import EvaluationParams
from survival_model.config.features import FeaturesParams
from survival_model.config.ingest import IngestParams
from survival_model.config.institutions import Institution
from survival_model.config.preprocess import PreprocessParams
from survival_model.config.registry import RegistryParams
from survival_model.config.runtime import (
    OrchestrationParams,
    PrivacyParams,
    ServerParams,
    SyntheticParams,
    TrackingParams,
)
from survival_model.config.training import TrainingParams

_SITE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


def is_remote_tracking(uri: str) -> bool:
    """Whether an MLflow tracking URI names a server (``http(s)://``, ``databricks``) rather than a local store."""
    return uri.split(":", 1)[0].lower() in {"http", "https", "databricks"}


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

    @property
    def mlflow_local_artifact_root(self) -> Path | None:
        """Where a new experiment's artifacts go when the store is local (the embedded SQLite file or a
        ``sqlite:``/``file:`` URI); ``None`` for a tracking server, whose own artifact configuration
        (``--artifacts-destination``, proxied) decides, so a team's artifacts never land on whichever
        machine created the experiment first."""
        return None if is_remote_tracking(self.mlflow_uri) else self.mlflow_artifact_root
