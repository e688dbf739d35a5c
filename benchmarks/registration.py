"""Rigid co-registration on the default cohort's site C geometry: error and time per setting, in one run.

    .venv/bin/python benchmarks/registration.py [--patients 6]

Each patient is a synthetic head rendered (``survival_model.synthetic.phantom``) on site C's grid of the
default cohort (2.5 x 2.5 x 3 mm, as written by the generator) as T1c and as a T2w moved by a random
rigid motion (``sample_motion``: a few degrees and millimetres), both with a bias field, noise and
blur. The T2w is registered to the T1c by :func:`survival_model.preprocess.ops.register_rigid`
(restricted to the head mask, as preprocessing does) with each setting; the error is the mean
distance between where the found and the true transforms send 200 points on a 70 mm sphere around
the centre. Time: mean seconds per registration, single-threaded ITK (as in the pipeline). Nothing is
written; no timing is asserted.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from survival_model.config import RegistrationParams  # noqa: E402
from survival_model.preprocess import ops  # noqa: E402
from survival_model.synthetic import phantom as ph  # noqa: E402
from survival_model.synthetic.sites import SITES, site_grid  # noqa: E402

SETTINGS: dict[str, dict[str, Any]] = {
    "2 mm copies, 50000 samples (library default)": {},
    "3 mm copies, 50000 samples": {"spacing_mm": 3.0},
    "3 mm copies, 10000 samples (params.yaml)": {"spacing_mm": 3.0, "max_samples": 10000},
    "2 mm copies, 10000 samples": {"max_samples": 10000},
    "3 mm copies, levels 2-1": {"spacing_mm": 3.0, "shrink_factors": [2, 1], "smoothing_sigmas_mm": [3.0, 0.0]},
}


def image(volume: np.ndarray, grid: ph.Grid) -> sitk.Image:
    out = sitk.GetImageFromArray(volume.astype(np.float32))
    out.SetSpacing(grid.spacing)
    out.SetOrigin(grid.origin)
    out.SetDirection(grid.direction)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", type=int, default=6)
    args = parser.parse_args()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    grid = site_grid(SITES["site_c"], (96, 96, 62), 2.5)
    cases = []
    for i in range(args.patients):
        head = ph.sample_head(np.random.default_rng(100 + i))
        motion = ph.sample_motion(np.random.default_rng(200 + i))
        volumes = ph.render_case(head, [], grid, sequences=("t1c", "t2w"), motions={"t2w": motion},
                                 bias=dict.fromkeys(("t1c", "t2w"), ph.BiasField(8, 0.25)), seed=3,
                                 noise_sigma=0.03, psf_fwhm_mm=2.5)
        fixed = image(volumes["t1c"], grid)
        cases.append((fixed, image(volumes["t2w"], grid), ops.head_mask(fixed), motion))
    directions = np.random.default_rng(0).standard_normal((200, 3))
    points = 70.0 * directions / np.linalg.norm(directions, axis=1)[:, None]
    print(f"Rigid registration T2w -> T1c on site C's default grid ({'x'.join(map(str, grid.size))} voxels, "
          f"{'x'.join(f'{s:g}' for s in grid.spacing)} mm), {args.patients} patients; SimpleITK "
          f"{sitk.Version.VersionString()}, 1 thread, Python {platform.python_version()}")
    print()
    print("| setting | seconds per registration | mean error (mm) | worst patient (mm) | speed vs first |")
    print("| --- | ---: | ---: | ---: | ---: |")
    base = None
    for name, overrides in SETTINGS.items():
        params = RegistrationParams(**overrides)
        errors, seconds = [], []
        for fixed, moving, head, motion in cases:
            start = time.perf_counter()
            transform, _ = ops.register_rigid(fixed, moving, params, head)
            seconds.append(time.perf_counter() - start)
            found = np.array([transform.TransformPoint(tuple(float(v) for v in p)) for p in points])
            errors.append(float(np.linalg.norm(found - motion.apply(points), axis=1).mean()))
        mean_s = float(np.mean(seconds))
        base = base or mean_s
        print(f"| {name} | {mean_s:.2f} | {np.mean(errors):.3f} | {np.max(errors):.3f} | {base / mean_s:.2f}x |")


if __name__ == "__main__":
    main()
