"""The ``evaluation`` section: scoring on the locked test set, the baselines and network variants compared,
the ground truth and the leakage audit."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from survival_model.config.base import StrictModel
from survival_model.config.training import NetworkParams

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
    #: The default: the tabular-only network, the reference of "does the image add?".
    networks: list[NetworkVariant] = Field(default_factory=lambda: [NetworkVariant(variant="tabular")])
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
