"""Volumes: our ``vol_*`` (numpy / SimpleITK) against pyradiomics' shape VoxelVolume and MeshVolume.

    .venv/bin/python benchmarks/volumetric_vs_pyradiomics.py [--patients 5] [--seed 0]

Part 1, on phantom label maps rendered on the BraTS grid (240x240x155, 1 mm): per patient and region
(ET, NETC, SNFH, TC, WT), our volume, pyradiomics' VoxelVolume and MeshVolume and their relative
differences; then the time of our whole ``volumetric_from_image`` (five volumes, ratios, lesion
components and the largest lesion's Feret diameter) against pyradiomics' shape class for the five
regions, both on images already in memory, as pyradiomics is normally run (full image and mask).

Part 2, on the default grid of the pipeline (96x96x62, 2.5 mm; z-scored images, as preprocessing writes
them): the time of each feature family of :func:`survival_model.features.table.feature_row` with the
repository's default parameters (regions wt, et; sequences t1c, t2f; radiomics.yaml), per patient.

Prints tables only (one run, this machine; ratios are what carry over).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from survival_model.config import SEQUENCES, FeaturesParams  # noqa: E402
from survival_model.features.radiomics import (  # noqa: E402
    pyradiomics_version,
    radiomics_columns,
    radiomics_from_images,
    resolve_params_file,
)
from survival_model.features.volumetric import (  # noqa: E402
    REGION_LABELS,
    intensity_from_images,
    read_label_map,
    read_sequence,
    volumetric_from_image,
)
from survival_model.synthetic.phantom import (  # noqa: E402
    Grid,
    brain_mask,
    render_case,
    render_labels,
    sample_head,
    sample_lesions,
)

REGIONS = ("et", "netc", "snfh", "tc", "wt")


def _image(array: np.ndarray, grid: Grid) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(grid.spacing)
    image.SetOrigin(grid.origin)
    return image


def _patient(seed: int) -> tuple[object, list[object]]:
    rng = np.random.default_rng(seed)
    head = sample_head(rng)
    lesions = sample_lesions(head, int(rng.integers(1, 6)), rng)
    return head, lesions


def part1(n: int, seed: int) -> None:
    from radiomics import featureextractor

    logging.getLogger("radiomics").setLevel(logging.ERROR)
    grid = Grid.centred((240, 240, 155), (1.0, 1.0, 1.0))
    extractor = featureextractor.RadiomicsFeatureExtractor(additionalInfo=False)
    extractor.disableAllFeatures()
    extractor.enableFeatureClassByName("shape")
    params = FeaturesParams()
    print(f"Part 1: volumes on {grid.size} at 1 mm, {n} phantom patients; pyradiomics {pyradiomics_version()}")
    print(f"{'patient':>7} {'region':>6} {'ours mm3':>11} {'VoxelVolume':>11} {'MeshVolume':>11} "
          f"{'voxel/ours-1':>12} {'mesh/ours-1':>11}")
    ours_s: list[float] = []
    pyrad_s: list[float] = []
    mesh_diffs: dict[str, list[float]] = {r: [] for r in REGIONS}
    for p in range(n):
        head, lesions = _patient(seed + p)
        labels = _image(render_labels(head, lesions, grid), grid)  # type: ignore[arg-type]
        t0 = time.perf_counter()
        ours = volumetric_from_image(labels, params)
        ours_s.append(time.perf_counter() - t0)
        array = sitk.GetArrayViewFromImage(labels)
        t_pyrad = 0.0
        for region in REGIONS:
            mask = _image(np.isin(array, REGION_LABELS[region]).astype(np.uint8), grid)
            ref = ours[f"vol_{region}_mm3"]
            if ref == 0:
                print(f"{p:>7} {region:>6} {0.0:>11.1f} {'(empty)':>11}")
                continue
            t0 = time.perf_counter()
            result = extractor.execute(sitk.Cast(mask, sitk.sitkFloat32), mask, label=1)
            t_pyrad += time.perf_counter() - t0
            voxel = float(result["original_shape_VoxelVolume"])
            mesh = float(result["original_shape_MeshVolume"])
            mesh_diffs[region].append(mesh / ref - 1)
            print(f"{p:>7} {region:>6} {ref:>11.1f} {voxel:>11.1f} {mesh:>11.1f} {voxel / ref - 1:>12.2e} "
                  f"{mesh / ref - 1:>11.2%}")
        pyrad_s.append(t_pyrad)
    print()
    print("MeshVolume vs ours, median relative difference per region: "
          + ", ".join(f"{r} {statistics.median(d):+.2%}" for r, d in mesh_diffs.items() if d))
    print(f"{'':>7} {'ours: all vol_* (s)':>20} {'pyradiomics shape, 5 regions (s)':>33} {'ratio':>7}")
    for p, (a, b) in enumerate(zip(ours_s, pyrad_s, strict=True)):
        print(f"{p:>7} {a:>20.3f} {b:>33.3f} {b / a:>7.1f}")
    print(f"{'median':>7} {statistics.median(ours_s):>20.3f} {statistics.median(pyrad_s):>33.3f} "
          f"{statistics.median(pyrad_s) / statistics.median(ours_s):>7.1f}")


def part2(n: int, seed: int) -> None:
    params = FeaturesParams()
    grid = Grid.centred((96, 96, 62), (2.5, 2.5, 2.5))
    print()
    print(f"Part 2: default feature_row families on {grid.size} at 2.5 mm, {n} patients "
          f"(radiomics: {resolve_params_file(params.radiomics.params_file).name}, regions "
          f"{params.radiomics.regions}, sequences {params.radiomics.sequences})")
    print(f"{'patient':>7} {'WT ml':>7} {'read (s)':>9} {'vol_* (s)':>10} {'int_* (s)':>10} {'rad_* (s)':>10}")
    columns: dict[str, list[float]] = {"read": [], "vol": [], "int": [], "rad": []}
    radiomics_columns(params.radiomics)  # parse the YAML once, outside the clock
    with tempfile.TemporaryDirectory() as tmp:
        for p in range(n):
            head, lesions = _patient(1000 + seed + p)
            case = render_case(head, lesions, grid, seed=p, skull_stripped=True)  # type: ignore[arg-type]
            brain = brain_mask(head, grid)  # type: ignore[arg-type]
            folder = Path(tmp) / f"p{p}"
            folder.mkdir()
            for seq in SEQUENCES:
                values = case[seq].astype(np.float64)
                z = np.zeros(values.shape, np.float32)
                z[brain] = (values[brain] - values[brain].mean()) / values[brain].std()
                sitk.WriteImage(_image(z, grid), str(folder / f"{seq}.nii.gz"))
            sitk.WriteImage(_image(case["seg"], grid), str(folder / "seg.nii.gz"))
            t0 = time.perf_counter()
            labels = read_label_map(folder / "seg.nii.gz")
            images = {s: read_sequence(folder / f"{s}.nii.gz", labels, s) for s in SEQUENCES}
            t1 = time.perf_counter()
            vol = volumetric_from_image(labels, params)
            t2 = time.perf_counter()
            intensity_from_images(images, labels, params)
            t3 = time.perf_counter()
            radiomics_from_images(images, labels, params.radiomics)
            t4 = time.perf_counter()
            for key, value in zip(columns, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                columns[key].append(value)
            print(f"{p:>7} {vol['vol_wt_mm3'] / 1000:>7.1f} {t1 - t0:>9.3f} {t2 - t1:>10.3f} {t3 - t2:>10.3f} "
                  f"{t4 - t3:>10.3f}")
    print(f"{'median':>7} {'':>7} " + " ".join(f"{statistics.median(v):>{w}.3f}"
                                                for v, w in zip(columns.values(), (9, 10, 10, 10), strict=True)))
    print(f"{'mean':>7} {'':>7} " + " ".join(f"{statistics.mean(v):>{w}.3f}"
                                              for v, w in zip(columns.values(), (9, 10, 10, 10), strict=True)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", type=int, default=5)
    parser.add_argument("--default-grid-patients", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    part1(args.patients, args.seed)
    part2(args.default_grid_patients, args.seed)


if __name__ == "__main__":
    main()
