"""N4 on the default synthetic cohort's raw sites: time and residual bias per setting, in one run.

    .venv/bin/python benchmarks/n4_cohort.py [--patients 8] [--setting MM/ITERATIONS/CONTROL_POINTS ...]

For the first ``--patients`` patients of site B (NRRD, 2.25 x 2.25 x 7.5 mm) and site C (DICOM,
2.5 x 2.5 x 3 mm) of ``data/synthetic`` (made by the main command), the T1c as the site wrote it is
corrected by :func:`survival_model.preprocess.ops.n4_correct` inside the brain mask that preprocessing
computes (skull strip on a 2 mm working grid), once per setting: ``n4.max_shrunk_spacing_mm``, the
iterations per fitting level (their number is the number of levels) and the control points of the
first level, e.g. ``10/30,30,30/4`` (shrink factor 8, as the library default). Scored against the true field the
generator saved (``ground_truth/bias/<site>/<case>.nii.gz``, resampled linearly onto the image):
residual log bias = the standard deviation, inside the brain, of ``log(estimated) - log(true)`` after
removing its mean (0: perfect up to scale). Time: one run each, single-threaded ITK (as in the
pipeline, one patient per thread). Nothing is written; no timing is asserted.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from survival_model.config import N4Params  # noqa: E402
from survival_model.preprocess import ops  # noqa: E402

DATA = REPO / "data" / "synthetic"


def read_t1c(site: str, index: int) -> tuple[str, sitk.Image]:
    if site == "site_b":
        case = f"P{index:04d}"
        image = sitk.ReadImage(str(DATA / site / "images" / f"{case}_T1GD.nrrd"))
    else:
        case = f"C{index:03d}"
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(DATA / site / "images" / case / "T1C")))
        image = reader.Execute()
    return case, ops.reorient(sitk.Cast(image, sitk.sitkFloat32), "LPS")


DEFAULT_SETTINGS = ["8/30,30,30/4", "10/30,30,30/4", "12/30,30,30/4", "10/5,5,30/4", "10/20,20,20/4",
                    "10/30/7", "10/50/6"]


def parse_setting(text: str) -> tuple[str, N4Params]:
    """``"10/30,30,30/4"`` -> N4 params (max shrunk voxel mm / iterations per level / control points)."""
    mm, iterations, points = text.split("/")
    return text, N4Params(max_shrunk_spacing_mm=float(mm), iterations=[int(i) for i in iterations.split(",")],
                          control_points=int(points))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", type=int, default=8, help="per site")
    parser.add_argument("--setting", action="append", default=[],
                        help=f"MM/ITERATIONS/CONTROL_POINTS (default: {' '.join(DEFAULT_SETTINGS)})")
    args = parser.parse_args()
    settings = [parse_setting(t) for t in (args.setting or DEFAULT_SETTINGS)]
    if not (DATA / "ground_truth" / "bias").is_dir():
        raise SystemExit(f"{DATA} has no ground-truth bias fields: run `bash scripts/run.sh` "
                         "(or `survival-model generate`)")
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    rows: dict[tuple[str, str], list[tuple[float, float]]] = {}
    before: dict[str, list[float]] = {}
    for site in ("site_b", "site_c"):
        for index in range(1, args.patients + 1):
            case, image = read_t1c(site, index)
            truth = sitk.ReadImage(str(DATA / "ground_truth" / "bias" / site / f"{case}.nii.gz"))
            true_log = np.log(sitk.GetArrayFromImage(
                sitk.Resample(truth, image, sitk.Transform(), sitk.sitkLinear, 1.0)).astype(np.float64))
            work = ops.target_grid(image, (2.0, 2.0, 2.0), "LPS")
            brain = ops.resample_mask(ops.compute_brain_mask(ops.resample_onto(image, work)), image)
            inside = sitk.GetArrayViewFromImage(brain) > 0
            before.setdefault(site, []).append(float(np.std(true_log[inside])))
            for name, params in settings:
                start = time.perf_counter()
                result = ops.n4_correct(image, brain, params)
                seconds = time.perf_counter() - start
                error = sitk.GetArrayViewFromImage(result.log_field)[inside] - true_log[inside]
                rows.setdefault((site, name), []).append((seconds, float(np.std(error - error.mean()))))
    print(f"N4 on the default cohort's T1c, {args.patients} patients per raw site; SimpleITK "
          f"{sitk.Version.VersionString()}, 1 thread, Python {platform.python_version()}")
    print()
    print("| site | max shrunk voxel mm / iterations per level / control points | seconds per image "
          "| residual log bias | before correction | speed vs first |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for site in ("site_b", "site_c"):
        base = float(np.mean([t for t, _ in rows[(site, settings[0][0])]]))
        for name, _ in settings:
            values = rows[(site, name)]
            seconds = float(np.mean([t for t, _ in values]))
            residual = float(np.mean([r for _, r in values]))
            print(f"| {site} | {name} | {seconds:.2f} | {residual:.4f} | {np.mean(before[site]):.4f} | "
                  f"{base / seconds:.2f}x |")


if __name__ == "__main__":
    main()
