"""Training arrays and augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from survival_model.config import AugmentParams
from survival_model.training.data import SurvivalArrays, SurvivalDataset, augment_sample


def arrays(n: int = 6, mask_channel: bool = True) -> SurvivalArrays:
    rng = np.random.default_rng(0)
    images = rng.standard_normal((n, 3, 2, 16, 16)).astype(np.float32)
    images[:, :, :, :2, :] = 0.0  # outside the brain
    if mask_channel:
        images[:, :, 1] = (rng.random((n, 3, 16, 16)) > 0.5).astype(np.float32)
    return SurvivalArrays(tuple(f"c{i}" for i in range(n)), rng.uniform(10, 900, n), rng.random(n) < 0.7, images,
                          rng.standard_normal((n, 4)).astype(np.float32))


def test_without_augmentation_a_sample_is_the_stored_input() -> None:
    data = arrays()
    sample = SurvivalDataset(data)[2]
    assert torch.equal(sample["images"], torch.from_numpy(data.images[2]))  # type: ignore[index]
    assert sample["time"].item() == pytest.approx(data.time_days[2])
    assert set(sample) == {"images", "tabular", "time", "event", "index"}


def test_augmentation_keeps_shapes_and_masks_binary_and_is_repeatable_per_epoch() -> None:
    data = arrays()
    dataset = SurvivalDataset(data, AugmentParams(rotation_degrees=20), sequence_channels=1, seed=3)
    dataset.set_epoch(1)
    a, b = dataset[0]["images"], dataset[0]["images"]
    assert torch.equal(a, b) and a.shape == (3, 2, 16, 16)
    assert set(torch.unique(a[:, 1]).tolist()) <= {0.0, 1.0}
    dataset.set_epoch(2)
    assert not torch.equal(dataset[0]["images"], a)
    assert not torch.equal(a, torch.from_numpy(data.images[0]))  # type: ignore[index]


def test_a_certain_flip_mirrors_left_right_and_jitter_leaves_the_background() -> None:
    image = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).reshape(2, 1, 4, 4)
    flipped = augment_sample(image, AugmentParams(flip_probability=1.0, rotation_degrees=0, intensity_scale=0,
                                                  intensity_shift=0), 1, torch.Generator().manual_seed(0))
    assert torch.equal(flipped, torch.flip(image, dims=[-1]))
    jittered = augment_sample(image, AugmentParams(flip_probability=0.0, rotation_degrees=0), 1,
                              torch.Generator().manual_seed(0))
    assert jittered[0, 0, 0, 0] == 0.0 and not torch.equal(jittered, image)


def test_misaligned_arrays_and_non_positive_times_are_rejected() -> None:
    with pytest.raises(ValueError, match="tabular has 2 rows for 3 patients"):
        SurvivalArrays(("a", "b", "c"), np.ones(3), np.ones(3, bool), None, np.zeros((2, 1), np.float32))
    with pytest.raises(ValueError, match="positive"):
        SurvivalArrays(("a",), np.zeros(1), np.ones(1, bool))
