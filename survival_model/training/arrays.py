"""A fold's patients as arrays: per patient the image input, the tabular vector and the outcome (NumPy only).

``survival_model.training.data`` serves them to torch (:class:`~survival_model.training.data.SurvivalDataset`,
with augmentation); this module holds what the stages that only stack or pass the arrays around need, so that
they check keys and records without importing torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from survival_model.models.inputs import load_image_input

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class SurvivalArrays:
    """Aligned per-patient arrays; ``images`` / ``tabular`` are None for a variant without that branch."""

    case_ids: tuple[str, ...]
    time_days: npt.NDArray[np.float64]
    event: npt.NDArray[np.bool_]
    images: FloatArray | None = None
    tabular: FloatArray | None = None

    def __post_init__(self) -> None:
        n = len(self.case_ids)
        for name, value in (("time_days", self.time_days), ("event", self.event), ("images", self.images),
                            ("tabular", self.tabular)):
            if value is not None and len(value) != n:
                raise ValueError(f"{name} has {len(value)} rows for {n} patients")
        if n and not bool((self.time_days > 0).all()):
            raise ValueError("survival times must be positive")

    def __len__(self) -> int:
        return len(self.case_ids)


def stack_images(paths: Mapping[str, Path], case_ids: Sequence[str]) -> FloatArray:
    """The stored inputs of ``case_ids`` as one ``(N, K, C, S, S)`` array."""
    missing = [c for c in case_ids if c not in paths]
    if missing:
        raise KeyError(f"no image input for {len(missing)} patient(s), e.g. {missing[0]}")
    return np.stack([load_image_input(paths[c]) for c in case_ids]) if case_ids else np.zeros((0,), np.float32)
