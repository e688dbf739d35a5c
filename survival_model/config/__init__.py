"""The run configuration: ``params.yaml`` parsed once into validated, typed, frozen models.

This package is the only place that parses YAML (:mod:`~survival_model.config.loading`). Unknown keys and bad
values are errors that name the key (``institutions.site_b.clinical.survival.duration.time_unit: ...``).
Relative paths are resolved against the folder that holds the params file, so a run does not depend on the
current directory.

The models are split along the sections of ``params.yaml``; import them from here:

- :mod:`~survival_model.config.base`: the strict base model, the MRI sequences, regions and label schemes;
- :mod:`~survival_model.config.institutions`: ``institutions`` (images, clinical table, acquisition);
- :mod:`~survival_model.config.ingest`, :mod:`~survival_model.config.preprocess`,
  :mod:`~survival_model.config.features`, :mod:`~survival_model.config.training`,
  :mod:`~survival_model.config.evaluation`, :mod:`~survival_model.config.registry`: the pipeline's stages;
- :mod:`~survival_model.config.runtime`: ``synthetic``, ``privacy``, ``tracking``, ``orchestration``,
  ``servers``;
- :mod:`~survival_model.config.params`: :class:`Params`, the whole configuration;
- :mod:`~survival_model.config.loading`: reading params, catalog, overlay and services files, and overrides.
"""

from survival_model.config.base import (
    CANONICAL_LABELS,
    LABEL_SCHEMES,
    SEQUENCES,
    RegionName,
    SequenceName,
    StrictModel,
)
from survival_model.config.evaluation import BaselineName, EvaluationParams, GroundTruthParams, NetworkVariant
from survival_model.config.features import FeaturesParams, RadiomicsParams, RegionKey
from survival_model.config.ingest import IngestParams
from survival_model.config.institutions import (
    Acquisition,
    AgeFromDates,
    ClinicalField,
    ClinicalSource,
    ColumnRef,
    DatesSurvival,
    DurationSurvival,
    IdStep,
    ImageSource,
    Institution,
    TimeUnit,
)
from survival_model.config.loading import (
    REALISTIC_OVERLAY,
    ServiceSpec,
    ServicesSpec,
    load_params,
    load_services,
    overlay_overrides,
    parse_override,
    parse_params,
    read_catalog,
    resolve_paths,
)
from survival_model.config.params import Params
from survival_model.config.preprocess import (
    BrainMaskParams,
    N4Params,
    PreprocessParams,
    PreprocessQC,
    RegistrationParams,
)
from survival_model.config.registry import GateParams, RegistryParams, ScheduleParams
from survival_model.config.runtime import (
    OrchestrationParams,
    PrivacyParams,
    ServerParams,
    SyntheticParams,
    TrackingParams,
)
from survival_model.config.training import (
    AugmentParams,
    FitParams,
    ImageInputParams,
    MaskChannel,
    NetworkParams,
    SplitParams,
    TabularParams,
    TrainingParams,
)

__all__ = [
    "CANONICAL_LABELS",
    "LABEL_SCHEMES",
    "REALISTIC_OVERLAY",
    "SEQUENCES",
    "Acquisition",
    "AgeFromDates",
    "AugmentParams",
    "BaselineName",
    "BrainMaskParams",
    "ClinicalField",
    "ClinicalSource",
    "ColumnRef",
    "DatesSurvival",
    "DurationSurvival",
    "EvaluationParams",
    "FeaturesParams",
    "FitParams",
    "GateParams",
    "GroundTruthParams",
    "IdStep",
    "ImageInputParams",
    "ImageSource",
    "IngestParams",
    "Institution",
    "MaskChannel",
    "N4Params",
    "NetworkParams",
    "NetworkVariant",
    "OrchestrationParams",
    "Params",
    "PreprocessParams",
    "PreprocessQC",
    "PrivacyParams",
    "RadiomicsParams",
    "RegionKey",
    "RegionName",
    "RegistrationParams",
    "RegistryParams",
    "ScheduleParams",
    "SequenceName",
    "ServerParams",
    "ServiceSpec",
    "ServicesSpec",
    "SplitParams",
    "StrictModel",
    "SyntheticParams",
    "TabularParams",
    "TimeUnit",
    "TrackingParams",
    "TrainingParams",
    "load_params",
    "load_services",
    "overlay_overrides",
    "parse_override",
    "parse_params",
    "read_catalog",
    "resolve_paths",
]
