"""Training data in memory: per patient the image input, the tabular vector and the outcome.

A cohort is small (hundreds of patients) and one input is ``K x C x S x S`` float32 (8 x 4 x 64 x 64 =
0.5 MB by default), so a fold's arrays (``survival_model.training.arrays.SurvivalArrays``, NumPy only) are held
in memory and a :class:`SurvivalDataset` serves them, with augmentation for training patients only:

- a left-right mirror of the whole patient (every slice and channel together);
- one in-plane rotation for all slices (``torch.nn.functional.affine_grid`` / ``grid_sample``;
  bilinear for sequences, nearest for mask channels, zero = the brain's mean outside the field);
- per sequence channel an intensity scale and shift applied inside the brain (non-zero voxels).

The random draws of a sample depend only on ``(seed, epoch, index)``, never on which DataLoader worker
serves it, so an epoch is the same with 0 or 4 workers.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import Dataset

from survival_model.config import AugmentParams

# re-exported: they lived here before survival_model.training.arrays (tests, benchmarks import them from here)
from survival_model.training.arrays import SurvivalArrays as SurvivalArrays
from survival_model.training.arrays import stack_images as stack_images

Sample = dict[str, torch.Tensor]


def augment_sample(images: torch.Tensor, params: AugmentParams, sequence_channels: int,
                   generator: torch.Generator) -> torch.Tensor:
    """One training patient's ``(K, C, S, S)`` input, mirrored, rotated and intensity-jittered."""
    out = images
    draws = torch.rand(5, generator=generator)
    if float(draws[0]) < params.flip_probability:
        out = torch.flip(out, dims=[-1])
    if params.rotation_degrees > 0:
        angle = math.radians((float(draws[1]) * 2 - 1) * params.rotation_degrees)
        cos, sin = math.cos(angle), math.sin(angle)
        theta = torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0]], dtype=out.dtype).expand(out.shape[0], 2, 3)
        grid = torch.nn.functional.affine_grid(theta, list(out.shape), align_corners=False)
        rotated = torch.nn.functional.grid_sample(out[:, :sequence_channels], grid, mode="bilinear",
                                                  padding_mode="zeros", align_corners=False)
        if out.shape[1] > sequence_channels:  # region masks stay 0/1
            masks = torch.nn.functional.grid_sample(out[:, sequence_channels:], grid, mode="nearest",
                                                    padding_mode="zeros", align_corners=False)
            rotated = torch.cat([rotated, masks], dim=1)
        out = rotated
    if sequence_channels and (params.intensity_scale > 0 or params.intensity_shift > 0):
        channel = torch.rand((2, sequence_channels), generator=generator) * 2 - 1
        scale = (1 + channel[0] * params.intensity_scale).view(1, -1, 1, 1)
        shift = (channel[1] * params.intensity_shift).view(1, -1, 1, 1)
        seq = out[:, :sequence_channels]
        inside = seq != 0
        seq = torch.where(inside, seq * scale + shift, seq)
        out = torch.cat([seq, out[:, sequence_channels:]], dim=1)
    return out


class SurvivalDataset(Dataset[Sample]):
    """Samples ``{"images", "tabular", "time", "event", "index"}`` (absent branches are omitted)."""

    def __init__(self, arrays: SurvivalArrays, augment: AugmentParams | None = None, sequence_channels: int = 0,
                 seed: int = 0) -> None:
        self.arrays = arrays
        self.augment = augment
        self.sequence_channels = sequence_channels
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Augmentation draws differ per epoch (call before iterating an epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.arrays)

    def __getitem__(self, index: int) -> Sample:
        a = self.arrays
        sample: Sample = {
            "time": torch.tensor(float(a.time_days[index]), dtype=torch.float32),
            "event": torch.tensor(bool(a.event[index])),
            "index": torch.tensor(index),
        }
        if a.images is not None:
            images = torch.from_numpy(np.array(a.images[index], dtype=np.float32, copy=True))
            if self.augment is not None:
                state = int(np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1)[0])
                generator = torch.Generator().manual_seed(state)
                images = augment_sample(images, self.augment, self.sequence_channels, generator)
            sample["images"] = images
        if a.tabular is not None:
            sample["tabular"] = torch.from_numpy(np.asarray(a.tabular[index], dtype=np.float32))
        return sample
