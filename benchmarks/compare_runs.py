"""Do two runs of the main command give the same outputs? Compares two work directories artefact by artefact.

Made for "behaviour unchanged" after a refactoring: run the main command on the code before and after (each in
its own clone, so each has its own work directory), then

    .venv/bin/python benchmarks/compare_runs.py BEFORE/work AFTER/work [--record "what changed"]

Content keys may differ between the two (a changed code version gives new folder names), so artefacts are
found by what they are, not by their folder: the feature table (bytes and values), the cohort (values, without
the absolute paths of the work directory), every trained network's metrics and test-set predictions, the
evaluation's comparison, out-of-fold and CV tables, and the package's settings and gate decision. Exit status 1
when anything differs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.results import record_block

HEADING = "## Refactorings: the main command's outputs before and after"


def only(work: Path, pattern: str) -> Path:
    """The one file matching ``pattern`` under ``work`` (the newest when a re-run left several)."""
    found = sorted(work.glob(pattern), key=lambda p: p.stat().st_mtime)
    if not found:
        raise SystemExit(f"{work}: no {pattern}")
    return found[-1]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def frames_equal(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    try:
        pd.testing.assert_frame_equal(a, b, check_exact=True)
    except AssertionError:
        return False
    return True


def runs_by_network(work: Path) -> dict[str, Path]:
    """Each trained network's run folder, by the network named in its ``metrics.json`` (the newest per network)."""
    runs: dict[str, Path] = {}
    for metrics in sorted(work.glob("training/runs/*/metrics.json"), key=lambda p: p.stat().st_mtime):
        data = json.loads(metrics.read_text())
        runs[json.dumps({k: data.get(k) for k in ("variant", "objective", "backbone", "fusion")}, sort_keys=True)] = \
            metrics.parent
    return runs


def compare(before: Path, after: Path) -> list[tuple[str, str, str, bool]]:
    """(artefact, before, after, same) rows."""
    rows: list[tuple[str, str, str, bool]] = []

    def add(name: str, a: Path, b: Path, same_values: Callable[[Path, Path], bool]) -> None:
        identical = sha(a) == sha(b)
        same = identical or same_values(a, b)
        rows.append((name, sha(a), sha(b) if not identical else "identical bytes", same))

    table = "features/table/*/features.parquet"
    add("feature table", only(before, table), only(after, table),
        lambda a, b: frames_equal(pd.read_parquet(a), pd.read_parquet(b)))
    cohort = "ingest/cohort/*/cohort.parquet"

    def cohort_values(a: Path, b: Path) -> bool:
        def load(p: Path) -> pd.DataFrame:
            frame = pd.read_parquet(p)
            return frame.drop(columns=[c for c in frame.columns if c.startswith("path_")])

        return frames_equal(load(a), load(b))

    add("cohort (without the work directory's paths)", only(before, cohort), only(after, cohort), cohort_values)
    rows[-1] = (rows[-1][0], rows[-1][1], "same values" if rows[-1][3] else rows[-1][2], rows[-1][3])
    first, second = runs_by_network(before), runs_by_network(after)
    for label in sorted(set(first) | set(second)):
        if label not in first or label not in second:
            rows.append((f"network {label}", str(label in first), str(label in second), False))
            continue
        for name in ("metrics.json", "predictions.parquet"):
            add(f"{json.loads(label)['variant']} network: {name}", first[label] / name, second[label] / name,
                lambda a, b: a.suffix == ".json" and json.loads(a.read_text()) == json.loads(b.read_text()))
    for name in ("comparison.csv", "oof.csv", "cv.json", "oof_risks.parquet", "risks.parquet"):
        add(f"evaluation: {name}", only(before, f"evaluation/*/comparison/{name}"),
            only(after, f"evaluation/*/comparison/{name}"),
            lambda a, b: a.suffix == ".parquet" and frames_equal(pd.read_parquet(a), pd.read_parquet(b)))
    return rows


def package_settings(work: Path) -> dict[str, Any]:
    info = json.loads(only(work, "registry/packages/*/package.json").read_text())
    # everything but what names the code or the folders it was built from (a refactoring changes those)
    return {k: v for k, v in info.items() if k not in {"code_version", "training_key", "folds"}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--record", metavar="WHAT", help="record the result in RESULTS.md, saying what changed")
    args = parser.parse_args()
    rows = compare(args.before, args.after)
    same_package = package_settings(args.before) == package_settings(args.after)
    rows.append(("package.json (without code version, training key, fold folders)", "",
                 "same" if same_package else "differs", same_package))
    lines = ["| artefact | before | after | same |", "| --- | --- | --- | --- |"]
    lines += [f"| {name} | {a} | {b} | {'yes' if same else '**no**'} |" for name, a, b, same in rows]
    text = "\n".join(lines)
    print(text)
    if args.record:
        verdict = "every artefact the same" if all(r[3] for r in rows) else "**differences above**"
        record_block("compare-runs", HEADING,
                     f"{args.record}: {verdict}.\n\n`python benchmarks/compare_runs.py BEFORE/work AFTER/work`\n\n"
                     + text)
    sys.exit(0 if all(r[3] for r in rows) else 1)


if __name__ == "__main__":
    main()
