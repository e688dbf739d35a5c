"""Ingestion of the default cohort, cold and warm, with and without Prefect: a table of ratios.

    .venv/bin/python benchmarks/ingest_cold_warm.py [--params params.yaml] [--set key=value ...]

Measured in one process, one run each, in this order:

1. library only, cold  - the ingestion functions called directly (one case after another) into an
                         empty work directory;
2. flow, cold          - the Prefect ingestion flow into another empty work directory;
3. flow, warm          - the same flow again over unchanged data (every task should be Cached);
4. library only, warm  - the library again (content-keyed outputs reused).

Prefect's temporary API server is started before the clock runs (it is a one-off cost of 10-35 s
here, reported separately). The default synthetic cohort is generated first if it is missing. The
table is printed and written between the markers of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="bench-prefect-home-"))

from flows.cli import ensure_synthetic_cohort  # noqa: E402
from survival_model.config import Params, load_params, parse_override  # noqa: E402
from survival_model.ingest.cohort import run_ingestion  # noqa: E402
from tasks.privacy import pseudonymiser as resolve_pseudonymiser  # noqa: E402


def library_ingest(params: Params) -> dict[str, Any]:
    return run_ingestion(params, resolve_pseudonymiser(params.privacy)).summary


def flow_ingest(params: Params) -> dict[str, Any]:
    from flows.ingest import ingest
    from flows.runners import task_runner_for

    return ingest.with_options(task_runner=task_runner_for(params))(params).summary


def timed(fn: Callable[[Params], dict[str, Any]], params: Params) -> tuple[float, dict[str, Any]]:
    start = time.perf_counter()
    summary = fn(params)
    return time.perf_counter() - start, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=str(REPO / "params.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--no-record", action="store_true", help="print only; do not update RESULTS.md")
    args = parser.parse_args()
    overrides = dict(parse_override(o) for o in args.overrides)
    base = load_params(args.params, overrides)
    ensure_synthetic_cohort(base)
    scratch = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    lib_params = load_params(args.params, {**overrides, "work_dir": str(scratch / "lib")})
    flow_params = load_params(args.params, {**overrides, "work_dir": str(scratch / "flow")})

    from prefect import flow

    @flow(name="benchmark-warm-up")
    def warm_up() -> None:
        return None

    start = time.perf_counter()
    warm_up()  # starts Prefect's temporary server outside the timed runs
    server_start = time.perf_counter() - start

    lib_cold, summary = timed(library_ingest, lib_params)
    flow_cold, flow_summary = timed(flow_ingest, flow_params)
    flow_warm, _ = timed(flow_ingest, flow_params)
    lib_warm, _ = timed(library_ingest, lib_params)
    if flow_summary["fingerprint"] != summary["fingerprint"]:
        raise SystemExit("flow and library produced different cohorts")
    shutil.rmtree(scratch, ignore_errors=True)

    n_cases = summary["patients"] + summary["quarantined_patients"]
    rows = [
        ("library, cold", lib_cold, lib_cold / lib_cold),
        ("flow, cold", flow_cold, flow_cold / lib_cold),
        ("flow, warm (all Cached)", flow_warm, flow_warm / lib_cold),
        ("library, warm (outputs reused)", lib_warm, lib_warm / lib_cold),
    ]
    lines = [
        f"Ingestion of the default cohort ({summary['patients']} patients in the cohort, "
        f"{summary['quarantined_patients']} quarantined, {n_cases} cases; "
        f"shape {list(base.synthetic.shape)} at {base.synthetic.spacing_mm} mm for site A), "
        f"{base.orchestration.task_runner} x {base.orchestration.max_workers}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}, {datetime.now(UTC):%Y-%m-%d}.",
        "",
        "| run | seconds | ratio to library cold |",
        "| --- | ---: | ---: |",
        *[f"| {name} | {seconds:.1f} | {ratio:.3f} |" for name, seconds, ratio in rows],
        "",
        f"Warm / cold (flow): **{flow_warm / flow_cold:.3f}**. The library runs the cases one after "
        f"another; the flow runs them on the task runner ({base.orchestration.max_workers} "
        f"{base.orchestration.task_runner}), so flow / library cold ({flow_cold / lib_cold:.2f}) is "
        f"parallelism net of Prefect's per-task cost. Prefect's temporary server start (not in the "
        f"table): {server_start:.1f} s.",
        "",
        f"Command: `.venv/bin/python benchmarks/ingest_cold_warm.py {' '.join(sys.argv[1:])}`".rstrip() + "",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_record:
        record(text)


def record(text: str) -> None:
    from benchmarks.results import record_block

    print(f"\nrecorded in {record_block('ingest-benchmark', '## Ingestion, cold and warm', text)}")


if __name__ == "__main__":
    main()
