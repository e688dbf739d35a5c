"""The synthetic generator's cost per patient: one ``render_case`` (four sequences and the labels) on the default
grid, with one pose and with a motion per sequence (which resamples three sequences), best of ``--repeats``; and the
phantom's other costly calls: ``render_case`` on thick slices and on the BraTS 1 mm grid, ``region_volumes`` at 2 mm
(as the cohort's truth uses it) and 0.5 mm, ``sample_lesions`` of 15 lesions (these were the timing report of
``python -m survival_model.synthetic.phantom``).

    .venv/bin/python benchmarks/phantom_render.py [--repeats 3] [--no-record]

Printed, and written between the ``phantom-render`` markers of ``benchmarks/RESULTS.md`` with the command.
(Moved here from the test suite, where it printed a time and asserted nothing about it.)
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.results import record_block  # noqa: E402
from survival_model.synthetic import phantom as ph  # noqa: E402

SHAPE, SPACING = (96, 96, 62), 2.5  # the default cohort's grid (params.yaml: synthetic)
THICK_SHAPE, THICK_SPACING = (240, 240, 31), (1.0, 1.0, 5.0)
BRATS_SHAPE, BRATS_SPACING = (240, 240, 155), (1.0, 1.0, 1.0)


def best_of(repeats: int, run: Callable[[], object]) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    rng = np.random.default_rng(29)
    head = ph.sample_head(rng)
    lesions = ph.sample_lesions(head, 5, rng)
    grid = ph.Grid.centred(SHAPE, (SPACING,) * 3)
    bias = {s: ph.sample_bias_field(rng) for s in ph.SEQUENCES}
    motions = {s: ph.sample_motion(rng) for s in ("t1n", "t2w", "t2f")}
    ph.render_case(head, lesions, grid, seed=0)  # warm-up (imports, caches)
    plain = best_of(args.repeats, lambda: ph.render_case(head, lesions, grid, seed=0, bias=bias))
    moving = best_of(args.repeats, lambda: ph.render_case(head, lesions, grid, seed=0, bias=bias, motions=motions))
    thick_grid = ph.Grid.centred(THICK_SHAPE, THICK_SPACING)
    thick = best_of(args.repeats, lambda: ph.render_case(head, lesions, thick_grid, seed=0, bias=bias))
    brats_grid = ph.Grid.centred(BRATS_SHAPE, BRATS_SPACING)
    brats = best_of(args.repeats, lambda: ph.render_case(head, lesions, brats_grid, seed=0, bias=bias))
    volumes_2mm = best_of(args.repeats, lambda: ph.region_volumes(head, lesions, resolution_mm=2.0))
    volumes_half_mm = best_of(args.repeats, lambda: ph.region_volumes(head, lesions, resolution_mm=0.5))
    placing = best_of(args.repeats, lambda: ph.sample_lesions(head, 15, np.random.default_rng(1)))
    text = (f"`render_case` on {SHAPE} at {SPACING} mm, 5 lesions, bias fields, best of {args.repeats}: "
            f"**{plain:.3f} s** with one pose, **{moving:.3f} s** with a motion per sequence (ratio "
            f"{moving / plain:.2f}); {os.cpu_count()} CPUs, Python {platform.python_version()}, "
            f"{time.strftime('%Y-%m-%d')}.\n\n"
            f"Same patient, one pose: `render_case` on thick slices {THICK_SHAPE} at {THICK_SPACING} mm "
            f"**{thick:.3f} s**, on the BraTS grid {BRATS_SHAPE} at 1 mm **{brats:.3f} s**; `region_volumes` of "
            f"the 5 lesions at 2 mm (the cohort's truth) **{volumes_2mm:.3f} s**, at 0.5 mm "
            f"**{volumes_half_mm:.3f} s**; `sample_lesions` of 15 lesions **{placing:.3f} s**.")
    print(text)
    if not args.no_record:
        record_block("phantom-render", "## Synthetic generator: one patient",
                     f"{text}\n\nCommand: `.venv/bin/python benchmarks/phantom_render.py`")


if __name__ == "__main__":
    main()
