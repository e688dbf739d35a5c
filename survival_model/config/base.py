"""The shared vocabulary of the run configuration: the strict base model, the MRI sequences, the
tumour regions and the label schemes institutions declare their masks in."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

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


class StrictModel(BaseModel):
    """Base: unknown keys are errors, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)
