"""Do two runs of the main command give the same outputs? Compares two work directories artefact by artefact.

Made for "behaviour unchanged" after a refactoring: run the main command on the code before and after (each in
its own clone, so each has its own work directory), then

    .venv/bin/python benchmarks/compare_runs.py BEFORE/work AFTER/work [--record "what changed"]

Content keys may differ between the two (a changed code version gives new folder names), so artefacts are
found by what they are, not by their folder: the feature table, the cohort (without its content keys and the
work directory's paths), every trained network's metrics (without its timings) and test-set predictions, the
evaluation's comparison, out-of-fold and CV tables and risks, and the package (without its code version and
folder names). Each is reported as identical bytes, identical values, or the largest relative difference of its
numbers; exit status 1 when anything differs by more than ``--rtol`` (default 0: exactly).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.results import record_block

HEADING = "## Refactorings: the main command's outputs before and after"
#: What is expected to differ between two runs of the same computation: content keys (they hash the code
#: version), paths (each run has its own work directory) and timings.
VOLATILE = ("images_key", "seconds", "code_version", "training_key", "folds", "path_")


def only(work: Path, pattern: str) -> Path:
    """The one file matching ``pattern`` under ``work`` (the newest when a re-run left several)."""
    found = sorted(work.glob(pattern), key=lambda p: p.stat().st_mtime)
    if not found:
        raise SystemExit(f"{work}: no {pattern}")
    return found[-1]


def matched(before: Path, after: Path, pattern: str) -> tuple[Path, Path]:
    """The file matching ``pattern`` in each work directory: the newest one whose content-keyed path both have
    (a work directory that later runs wrote more into, e.g. predictions for new patients, still compares the
    same stage), else the newest of each (another code version: other keys)."""
    common = {p.relative_to(before) for p in before.glob(pattern)} & {p.relative_to(after) for p in after.glob(pattern)}
    if common:
        newest = max(common, key=lambda rel: (after / rel).stat().st_mtime)
        return before / newest, after / newest
    return only(before, pattern), only(after, pattern)


def volatile(key: str) -> bool:
    return key in VOLATILE or key.startswith("path_")


def load(path: Path) -> Any:
    """The artefact's values, without its volatile entries (:data:`VOLATILE`)."""
    if path.suffix == ".parquet" or path.suffix == ".csv":
        frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
        return frame.drop(columns=[c for c in frame.columns if volatile(str(c))])

    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if not volatile(str(k))}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    return strip(json.loads(path.read_text()))


def numbers(value: Any) -> list[float]:
    """Every number in a loaded artefact, in a fixed order (NaN kept)."""
    if isinstance(value, pd.DataFrame):
        columns = [c for c in value.columns if pd.api.types.is_numeric_dtype(value[c])]  # missing (pd.NA) as NaN
        return [float(x) for c in columns for x in value[c].to_numpy(dtype=float, na_value=np.nan)]
    if isinstance(value, dict):
        return [x for k in sorted(value) for x in numbers(value[k])]
    if isinstance(value, list):
        return [x for v in value for x in numbers(v)]
    return [float(value)] if isinstance(value, int | float) and not isinstance(value, bool) else []


def same_values(a: Any, b: Any) -> bool:
    if isinstance(a, pd.DataFrame):
        try:
            pd.testing.assert_frame_equal(a, b, check_exact=True)
        except AssertionError:
            return False
        return True
    return bool(json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True))


def text_of(value: Any) -> str:
    """Everything but the numbers, to tell a numeric difference from a structural one."""
    if isinstance(value, pd.DataFrame):
        return json.dumps([list(map(str, value.columns)),
                           value.select_dtypes(exclude="number").astype(str).values.tolist()])
    digits = str.maketrans("", "", "0123456789.e-+")
    return json.dumps(value, sort_keys=True, default=str, allow_nan=True).translate(digits)


def compare(before: Path, after: Path) -> list[tuple[str, str, float]]:
    """(artefact, verdict, largest relative difference) rows; inf where the structure differs."""
    rows: list[tuple[str, str, float]] = []

    def add(name: str, a: Path, b: Path) -> None:
        if hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest():
            rows.append((name, "identical bytes", 0.0))
            return
        x, y = load(a), load(b)
        if same_values(x, y):
            rows.append((name, "identical values", 0.0))
            return
        nx, ny = np.array(numbers(x)), np.array(numbers(y))
        if len(nx) != len(ny) or text_of(x) != text_of(y):
            rows.append((name, "different structure or text", float("inf")))
            return
        both = ~(np.isnan(nx) & np.isnan(ny))
        scale = np.maximum(np.abs(nx[both]), np.abs(ny[both]))
        rel = np.abs(nx[both] - ny[both]) / np.where(scale > 0, scale, 1.0)
        worst = float(np.nanmax(rel)) if rel.size else 0.0
        rows.append((name, f"numbers differ by at most {worst:.1e} (relative)", worst))

    add("feature table", *matched(before, after, "features/table/*/features.parquet"))
    add("cohort (without content keys and paths)", *matched(before, after, "ingest/cohort/*/cohort.parquet"))
    shared = frozenset(p.name for p in before.glob("training/runs/*")) & {p.name for p in after.glob("training/runs/*")}
    first, second = runs_by_network(before, shared), runs_by_network(after, shared)
    for label in sorted(set(first) | set(second)):
        if label not in first or label not in second:
            rows.append((f"network {label}", "trained in one run only", float("inf")))
            continue
        variant = json.loads(label)["variant"]
        for name in ("metrics.json", "predictions.parquet"):
            add(f"{variant} network: {name}", first[label] / name, second[label] / name)
    for name in ("comparison.csv", "oof.csv", "cv.json", "oof_risks.parquet", "risks.parquet"):
        add(f"evaluation: {name}", *matched(before, after, f"evaluation/*/comparison/{name}"))
    add("package.json", *matched(before, after, "registry/packages/*/package.json"))
    return rows


def runs_by_network(work: Path, shared: frozenset[str] = frozenset()) -> dict[str, Path]:
    """Each trained network's run folder, by the network named in its ``metrics.json``: per network the newest
    of the folders named in ``shared`` (content keys both work directories have), else the newest."""
    runs: dict[str, Path] = {}
    ordered = sorted(work.glob("training/runs/*/metrics.json"),
                     key=lambda p: (p.parent.name in shared, p.stat().st_mtime))
    for metrics in ordered:
        data = json.loads(metrics.read_text())
        runs[json.dumps({k: data.get(k) for k in ("variant", "objective", "backbone", "fusion")}, sort_keys=True)] = \
            metrics.parent
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--rtol", type=float, default=0.0, help="largest relative difference that counts as same")
    parser.add_argument("--record", metavar="WHAT", help="record the result in RESULTS.md, saying what changed")
    args = parser.parse_args()
    rows = compare(args.before, args.after)
    lines = ["| artefact | verdict |", "| --- | --- |"] + [f"| {name} | {verdict} |" for name, verdict, _ in rows]
    text = "\n".join(lines)
    print(text)
    ok = all(worst <= args.rtol for _, _, worst in rows)
    if args.record:
        record_block("compare-runs", HEADING, f"{args.record}\n\n`python benchmarks/compare_runs.py BEFORE/work "
                                              f"AFTER/work --rtol {args.rtol:g}`: "
                                              f"{'same' if ok else '**differs**'}\n\n{text}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
