"""The ``features`` section: volumetric features, per-region intensity statistics and radiomics."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from survival_model.config.base import SEQUENCES, SequenceName, StrictModel

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
