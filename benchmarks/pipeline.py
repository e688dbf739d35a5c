"""The pipeline on the default cohort: per-stage times, memory, scaling and cache ratios, in one run.

    .venv/bin/python benchmarks/pipeline.py [--params params.yaml] [--set key=value ...] [--no-record]

Measured in this order (the default synthetic cohort is generated first if it is missing; Prefect's
temporary server is started before any clock runs):

1. per patient, serially, without Prefect: time of preprocessing and of features for every cohort
   patient (mean per site) and the process's peak memory after 10 patients and after all of them, in a
   child process each (peak memory must not grow with the number of patients: patients are streamed);
2. the pipeline flow (ingestion -> preprocessing -> features) cold with 1 worker, cold with 2 workers,
   cold with the configured runner, each into a fresh work directory; then warm in the last one twice:
   as configured (unchanged stages reused whole) and with ``reuse_unchanged_stages: false`` (every
   per-patient task Cached).

The table is printed and written between the markers of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="bench-prefect-home-"))

from survival_model.config import Params, load_params, parse_override  # noqa: E402

PIPELINE_HEADING = "## Preprocessing and features: stages, memory, scaling, cache"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def serial_child(params_path: str, overrides: dict[str, Any], limit: int) -> dict[str, Any]:
    """Ingest (library), then preprocess + features for the first ``limit`` patients, serially."""
    from survival_model.features.stage import Features
    from survival_model.ingest.cohort import run_ingestion
    from survival_model.preprocess.stage import Preprocess, ingested_patient, site_imaging
    from survival_model.stage import run
    from tasks.privacy import pseudonymiser as resolve_pseudonymiser

    params = load_params(params_path, overrides)
    cohort = run_ingestion(params, resolve_pseudonymiser(params.privacy)).cohort()
    rows = cohort.to_dict("records")[:limit]
    times: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        start = time.perf_counter()
        pre = run(Preprocess(ingested_patient(row), site_imaging(params.institutions[row["site"]]),
                             params.preprocess, params.work_dir))
        middle = time.perf_counter()
        if pre.patient is not None:
            run(Features(pre.patient, params.features, params.work_dir))
        times.setdefault(row["site"], []).append((middle - start, time.perf_counter() - middle))
    return {"patients": len(rows), "peak_rss_mb": peak_rss_mb(), "times": times}


def run_child(args: argparse.Namespace, overrides: dict[str, Any], limit: int, work: Path) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", str(limit), "--params", args.params,
               "--overrides-json", json.dumps({**overrides, "work_dir": str(work)})]
    out = subprocess.run(command, check=True, capture_output=True, encoding="utf-8").stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def timed_pipeline(params: Params) -> tuple[float, float, float]:
    """(total, ingestion, imaging) seconds of the flows."""
    from flows.imaging import imaging
    from flows.ingest import ingest
    from flows.runners import task_runner_for

    start = time.perf_counter()
    cohort = ingest.with_options(task_runner=task_runner_for(params))(params)
    middle = time.perf_counter()
    imaging.with_options(task_runner=task_runner_for(params))(params, cohort)
    end = time.perf_counter()
    return end - start, middle - start, end - middle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=str(REPO / "params.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--no-record", action="store_true")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--overrides-json", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(serial_child(args.params, json.loads(args.overrides_json), args.child)))
        return

    from flows.cli import ensure_synthetic_cohort

    overrides = dict(parse_override(o) for o in args.overrides)
    base = load_params(args.params, overrides)
    ensure_synthetic_cohort(base)
    scratch = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))

    small = run_child(args, overrides, 10, scratch / "serial-10")
    full = run_child(args, overrides, 10_000, scratch / "serial-all")

    from prefect import flow

    @flow(name="benchmark-warm-up")
    def warm_up() -> None:
        return None

    warm_up()
    runs = {}
    settings = (("1 worker", {"orchestration.max_workers": 1}), ("2 workers", {"orchestration.max_workers": 2}),
                ("default", {}))
    for name, extra in settings:
        params = load_params(args.params, {**overrides, **extra, "work_dir": str(scratch / name.replace(" ", "-"))})
        runs[name] = timed_pipeline(params)
    default = load_params(args.params, {**overrides, "work_dir": str(scratch / "default")})
    runs["warm"] = timed_pipeline(default)
    per_task = load_params(args.params, {**overrides, "work_dir": str(scratch / "default"),
                                         "orchestration.reuse_unchanged_stages": False})
    runs["warm, per task"] = timed_pipeline(per_task)
    shutil.rmtree(scratch, ignore_errors=True)

    text = render(base, small, full, runs)
    print(text)
    if not args.no_record:
        record(text)


def render(base: Params, small: dict[str, Any], full: dict[str, Any],
           runs: dict[str, tuple[float, float, float]]) -> str:
    o = base.orchestration
    lines = [
        f"Default cohort, shape {list(base.synthetic.shape)} at {base.synthetic.spacing_mm} mm (site A), preprocessed "
        f"at {list(base.preprocess.target_spacing_mm)} mm; radiomics {base.features.radiomics.regions} x "
        f"{base.features.radiomics.sequences}; {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"{datetime.now(UTC):%Y-%m-%d}.",
        "",
        "Per patient, serially, no Prefect (seconds, mean over the site's patients):",
        "",
        "| site | patients | preprocessing | features |",
        "| --- | ---: | ---: | ---: |",
    ]
    for site, values in sorted(full["times"].items()):
        pre = sum(v[0] for v in values) / len(values)
        feat = sum(v[1] for v in values) / len(values)
        lines.append(f"| {site} | {len(values)} | {pre:.2f} | {feat:.2f} |")
    lines += [
        "",
        f"Peak memory of the serial run: {small['peak_rss_mb']:.0f} MB after {small['patients']} patients, "
        f"{full['peak_rss_mb']:.0f} MB after {full['patients']} "
        f"(ratio {full['peak_rss_mb'] / small['peak_rss_mb']:.2f}).",
        "",
        "The pipeline flow (ingestion -> preprocessing -> features), fresh work directory each except warm:",
        "",
        "| run | total s | ingestion s | imaging s | ratio to 1 worker |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    one = runs["1 worker"][0]
    labels = {"default": f"cold, default ({o.max_workers} {o.task_runner})",
              "warm": "warm (unchanged stages reused whole)",
              "warm, per task": "warm, stage reuse off (every per-patient task Cached)"}
    for name, (total, ingest_s, imaging_s) in runs.items():
        lines.append(f"| {labels.get(name, 'cold, ' + name)} | {total:.1f} | {ingest_s:.1f} | {imaging_s:.1f} | "
                     f"{total / one:.3f} |")
    lines += [
        "",
        f"Scaling 2 workers / 1 worker: **{runs['2 workers'][0] / one:.2f}**. Warm / cold (default): "
        f"**{runs['warm'][0] / runs['default'][0]:.3f}** (per-task cache only: "
        f"{runs['warm, per task'][0] / runs['default'][0]:.3f}). Flows only: the command adds Python start-up, "
        "the Prefect server and MLflow (see the main command above).",
        "",
        "Command: `.venv/bin/python benchmarks/pipeline.py`",
    ]
    return "\n".join(lines)


def record(text: str) -> None:
    from benchmarks.results import record_block

    print(f"\nrecorded in {record_block('pipeline-benchmark', PIPELINE_HEADING, text)}")


if __name__ == "__main__":
    main()
