"""Helpers shared by the preprocessing tests: phantom arrays as SimpleITK images, overlap."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from survival_model.synthetic import phantom as ph


def to_image(array: np.ndarray, grid: ph.Grid) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(grid.spacing)
    image.SetOrigin(grid.origin)
    image.SetDirection(grid.direction)
    return image


def grid_of(image: sitk.Image) -> ph.Grid:
    return ph.Grid(image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection())


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return float(2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b)))
