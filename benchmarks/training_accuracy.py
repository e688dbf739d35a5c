"""Accuracy on the default synthetic cohort: the test C-index of each model beside the oracle's, in one run.

    .venv/bin/python benchmarks/training_accuracy.py [--weibull] [--scratch /tmp/training-accuracy]
        [--cohort work/ingest/cohort/<key>] [--table work/features/table/<key>] [--set key=value ...]

Reads the pipeline's cached cohort and feature table from the work directory of ``params.yaml``
(default: the newest complete folder of each; run ``bash scripts/run.sh`` first) and the preprocessed
patients through their content keys, as ``flows/training.py`` does; nothing is written there. The
patients with a preprocessed image are split once (``make_splits`` with ``training.splits``: locked
test set + 5 folds), and every model uses these same splits and the same image inputs (read from the
work directory where they exist, else built into the scratch directory). Per model, the 5 folds are
trained with :func:`survival_model.training.folds.train_fold` and the fold ensemble is scored on the
test set by :func:`survival_model.training.stage.evaluate_ensemble` (Harrell's C with a bootstrap
interval), into ``--scratch``, where a finished fold or ensemble is reused on a second run. Models:
hybrid-cox (params.yaml), hybrid-mse, tabular-cox, image-cox and with ``--weibull`` hybrid-weibull; all
other settings from params.yaml. The oracle row is the ground truth's risk on the same test patients
(``evaluation.ground_truth``), the best any model can do. Training seconds: the folds' epochs, summed.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

from flows.training import oracle_scores, persist_splits  # noqa: E402
from survival_model.config import load_params, parse_override  # noqa: E402
from survival_model.features.stage import load_table  # noqa: E402
from survival_model.fingerprint import stable_hash  # noqa: E402
from survival_model.ingest.cohort import load_cohort  # noqa: E402
from survival_model.models.inputs import (  # noqa: E402
    INPUT_FILE,
    input_folder,
    input_key,
    preprocessed_patients,
    store_image_input,
)
from survival_model.training import folds as folds_lib  # noqa: E402
from survival_model.training import stage as stage_lib  # noqa: E402
from survival_model.training.loop import choose_device  # noqa: E402
from survival_model.training.splits import make_splits  # noqa: E402

MODELS: dict[str, dict[str, Any]] = {
    "hybrid-cox": {},
    "hybrid-mse": {"training.network.objective": "mse"},
    "tabular-cox": {"training.network.variant": "tabular"},
    "image-cox": {"training.network.variant": "image"},
}
WEIBULL = {"hybrid-weibull": {"training.network.objective": "weibull"}}


def newest(parent: Path) -> Path:
    """The most recently written folder under ``parent`` with a ``summary.json``."""
    found = sorted((p.parent for p in parent.glob("*/summary.json")), key=lambda p: p.stat().st_mtime)
    if not found:
        raise SystemExit(f"no finished result under {parent}: run the pipeline first (bash scripts/run.sh)")
    return found[-1]


def interval(c: dict[str, Any]) -> str:
    return f"{c['value']:.3f} [{c['low']:.3f}, {c['high']:.3f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default=str(REPO / "params.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/training-accuracy"))
    parser.add_argument("--cohort", type=Path, help="a cohort folder (default: the newest)")
    parser.add_argument("--table", type=Path, help="a feature table folder (default: the newest)")
    parser.add_argument("--weibull", action="store_true", help="also hybrid-weibull")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", force=True)
    overrides = dict(parse_override(o) for o in args.overrides)
    params = load_params(args.params, overrides)
    scratch = args.scratch.resolve()
    cohort = load_cohort(args.cohort or newest(params.work_dir / "ingest" / "cohort"))
    table = load_table(args.table or newest(params.work_dir / "features" / "table"))
    if cohort is None or table is None:
        raise SystemExit("--cohort / --table: not a finished cohort or feature table folder")
    full = table.table()
    rows = [{str(k): v for k, v in r.items()} for r in cohort.cohort().to_dict("records")]
    if not set(full["case_id"]) <= {str(r["case_id"]) for r in rows}:
        raise SystemExit(f"{table.folder} has patients that are not in {cohort.folder}: pass matching folders")
    patients = {c: p for c, p in preprocessed_patients(rows, params).items() if c in set(full["case_id"])}
    frame = full[full["case_id"].isin(patients)].reset_index(drop=True)
    splits = make_splits(frame, params.training.splits)
    splits_path = persist_splits(splits, frame, scratch)
    inputs = params.training.inputs
    input_keys = {c: input_key(p, inputs) for c, p in patients.items()}
    image_paths = {}
    for c, p in patients.items():
        cached = input_folder(params.work_dir, p.site, c, input_keys[c]) / INPUT_FILE
        image_paths[c] = cached if cached.is_file() else store_image_input(p, inputs, scratch)
    oracle = oracle_scores(params)
    oracle_digest = stable_hash(sorted(oracle.items())) if oracle is not None else None

    load = os.getloadavg()[0]
    results: dict[str, dict[str, Any]] = {}
    for name, extra in {**MODELS, **(WEIBULL if args.weibull else {})}.items():
        tp = load_params(args.params, {**overrides, **extra}).training
        choice = choose_device(tp.fit)
        images = image_paths if folds_lib.uses_images(tp.network) else None
        start = time.perf_counter()
        folds = [folds_lib.train_fold(f, full, images, tp, scratch,
                                      folds_lib.fold_key(f, table.folder.name, input_keys, tp), choice=choice)
                 for f in splits.folds]
        key = stage_lib.stage_key(table.folder.name, input_keys, splits, tp, params.evaluation, oracle_digest)
        result = stage_lib.evaluate_ensemble(folds, full, splits, splits_path, images, tp, params.evaluation,
                                             oracle, scratch, key)
        wall = time.perf_counter() - start
        results[name] = {**result.metrics, "wall": wall, "device": choice.describe(),
                         "seconds": sum(float(f.summary["seconds"]) for f in folds),
                         "epochs": [int(f.summary["epochs"]) for f in folds]}
        logging.info("%s: test C-index %.3f (%.0f s)", name, result.metrics["test"]["cindex"]["value"], wall)

    first = next(iter(results.values()))
    test = first["test"]
    print()
    print(f"Default synthetic cohort ({len(frame)} patients with images; cohort {cohort.folder.name}, table "
          f"{table.folder.name}): locked test set of {test['patients']} patients ({test['deaths']} deaths), "
          f"{len(splits.folds)} folds on {len(splits.development)} development patients (splits "
          f"{splits.fingerprint[:12]}); backbone {params.training.network.backbone}, inputs {inputs.slices} x "
          f"{len(inputs.sequences) + len(inputs.mask_channels)} x {inputs.size}^2, up to "
          f"{params.training.fit.epochs} epochs (patience {params.training.fit.patience}); {first['device']}, "
          f"{os.cpu_count()} CPUs (load average {load:.1f} at the start), Python {platform.python_version()}. "
          f"Test C-index: the fold ensemble, 95% "
          f"bootstrap interval ({params.evaluation.bootstrap} resamples).")
    print()
    print("| model | test C-index [95% CI] | CV validation C-index (mean ± SD) | epochs per fold | training s |")
    print("| --- | --- | --- | --- | ---: |")
    for name, m in results.items():
        cv = m["cv"]
        print(f"| {name} | {interval(m['test']['cindex'])} | {cv['val_cindex_mean']:.3f} ± {cv['val_cindex_sd']:.3f} "
              f"| {', '.join(map(str, m['epochs']))} | {m['seconds']:.1f} |")
    if first["oracle"] is not None:
        print(f"| oracle (true risk) | {interval(first['oracle']['cindex'])} | — | — | — |")
    print()
    print(f"Results (folds, predictions, learning curves) in {scratch}/training; a second run reuses them.")
    print()
    print(f"Command: `{' '.join(['.venv/bin/python benchmarks/training_accuracy.py', *sys.argv[1:]])}`")


if __name__ == "__main__":
    main()
