"""Bad input: the corpus of broken files, tables and folders through ingestion, kind by kind.

    .venv/bin/python benchmarks/bad_inputs.py [--flow] [--no-record]

Builds the corpus (``survival_model/synthetic/bad_inputs.py``: one institution holding every kind confined to one
patient, a patient each, and a site for each kind that needs a format, a declaration or a whole table of its
own), checksums every input file, runs ingestion - its library stages in this process, or with ``--flow`` the
Prefect ingestion flow on Prefect's temporary server, as ``survival-model run`` does - and prints
``kinds: N, handled as expected: M``, a table of the misses, whether the inputs are byte-identical afterwards, and
the time. The block is recorded in ``benchmarks/RESULTS.md`` unless ``--no-record``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="bench-prefect-home-"))

from survival_model.config import Params, load_params  # noqa: E402
from survival_model.ingest.cohort import CohortResult, run_ingestion  # noqa: E402
from survival_model.ingest.privacy import Pseudonymiser  # noqa: E402
from survival_model.synthetic.bad_inputs import KINDS, build_corpus, evaluate, input_checksums, summary_table  # noqa: E402

KEY = b"bench-bad-inputs-0123456789abcdef0123456789"  # the key file the flow reads holds the same bytes
PSEUDONYMISER = Pseudonymiser(KEY)


def flow_ingest(params: Params) -> CohortResult:
    from flows.ingest import ingest
    from flows.runners import task_runner_for

    return ingest.with_options(task_runner=task_runner_for(params))(params)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flow", action="store_true", help="run the Prefect ingestion flow, not the library stages")
    parser.add_argument("--no-record", action="store_true", help="print only; do not update RESULTS.md")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="bench-bad-inputs-"))
    try:
        corpus = build_corpus(scratch / "corpus")
        before = input_checksums(corpus.root)
        overrides = {"work_dir": str(scratch / "work"), "privacy.key_file": str(scratch / "pseudonym.key")}
        params = load_params(corpus.params_path, overrides)
        start = time.perf_counter()
        if args.flow:
            (scratch / "pseudonym.key").write_bytes(KEY)
            result = flow_ingest(params)
        else:
            result = run_ingestion(params, PSEUDONYMISER)
        seconds = time.perf_counter() - start
        unchanged = input_checksums(corpus.root) == before
        results = evaluate(corpus, result.cohort(), result.quarantine(), PSEUDONYMISER.case_id)
        summary = result.summary
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    how = "the Prefect ingestion flow" if args.flow else "ingestion's library stages in one process"
    lines = [
        summary_table(results),
        "",
        f"Inputs byte-identical afterwards (SHA-256 of {len(before)} files and links): {'yes' if unchanged else 'NO'}. "
        f"Cohort: {summary['patients']} patients, {summary['quarantined_patients']} quarantined, over "
        f"{len(summary['sites'])} institutions; {how}, {seconds:.1f} s, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, {datetime.now(UTC):%Y-%m-%d}.",
        "",
        "Command: `.venv/bin/python benchmarks/bad_inputs.py"
        + "".join(f" {a}" for a in sys.argv[1:] if a != "--no-record") + "`",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_record:
        from benchmarks.results import record_block

        print(f"\nrecorded in {record_block('bad-inputs', '## Bad input: the corpus through ingestion', text)}")
    if len(results) != len(KINDS) or not unchanged:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
