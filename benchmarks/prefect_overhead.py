"""Prefect's own cost per task run, against a real Prefect server: the number the scale model in
``docs/scale.md`` multiplies by the task runs per patient.

    .venv/bin/python benchmarks/prefect_overhead.py [--tasks 200] [--api-url URL] [--record]

Without ``--api-url`` it starts ``prefect server start`` on SQLite in a temporary ``PREFECT_HOME`` on a free
loopback port (the server is not timed). Then, in this process, one flow each, in this order:

1. an empty flow, once untimed (the process's first flow run pays its set-up), then three times: the fastest is
   the flow run's own cost, subtracted below;
2. N no-op tasks, submitted on 8 threads, no caching;
3. N no-op tasks with a cache key (first run: computed and recorded);
4. the same again (every task Cached: what an unchanged patient costs).

Per task run: (flow wall - empty flow wall) / N, in milliseconds, and the task runs per second one flow
sustains against the server. What the flow waits for: a plain task run reports its states to the server in
the background (events), so its cost here is mostly the client's; a cache hit reads its cached result record
before it can finish, so it waits on storage and the API.
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(home: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED": "false"}
    server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                               "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                              start_new_session=True)
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return server, url
        except OSError:
            time.sleep(0.5)
    server.terminate()
    raise SystemExit("the Prefect server did not answer within 240 s")


def measure(tasks: int) -> dict[str, float]:
    from prefect import flow, task
    from prefect.cache_policies import INPUTS
    from prefect.task_runners import ThreadPoolTaskRunner

    @task
    def noop(i: int) -> int:
        return i

    @task(cache_policy=INPUTS, persist_result=True)
    def cached_noop(i: int, salt: str) -> int:
        return i

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=8))
    def empty() -> None:
        return None

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=8))
    def many(n: int) -> None:
        for future in [noop.submit(i) for i in range(n)]:
            future.result()

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=8))
    def many_cached(n: int, salt: str) -> None:
        for future in [cached_noop.submit(i, salt) for i in range(n)]:
            future.result()

    def wall(fn: Any, *args: Any) -> float:
        start = time.perf_counter()
        fn(*args)
        return time.perf_counter() - start

    salt = str(time.time_ns())
    wall(empty)  # the first flow run of a process pays for imports and the client's set-up: not timed
    base = min(wall(empty) for _ in range(3))
    return {"empty": base, "plain": wall(many, tasks), "cold": wall(many_cached, tasks, salt),
            "cached": wall(many_cached, tasks, salt)}


def report(times: dict[str, float], tasks: int, api: str) -> str:
    def per_task(name: str) -> float:
        return 1000 * (times[name] - times["empty"]) / tasks

    rows = [("no-op task, no cache", "plain"), ("no-op task, cache key, first run", "cold"),
            ("no-op task, cache hit (Cached)", "cached")]
    lines = [f"Prefect's cost per task run: {tasks} no-op tasks in one flow on 8 threads, against {api}; "
             f"{os.cpu_count()} CPUs, Python {platform.python_version()}, "
             f"load average {os.getloadavg()[0]:.1f} at the end, {datetime.now(UTC):%Y-%m-%d}.", "",
             "| task runs | flow s | ms per task run | task runs / s |", "| --- | ---: | ---: | ---: |"]
    for label, name in rows:
        lines.append(f"| {label} | {times[name]:.1f} | {per_task(name):.1f} | "
                     f"{tasks / max(times[name] - times['empty'], 1e-9):.0f} |")
    lines += ["", f"An empty flow run: {times['empty']:.2f} s (subtracted). A plain task run reports its states in the "
              "background; a cache hit waits for its result record.", "",
              "Command: `.venv/bin/python benchmarks/prefect_overhead.py --record`"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--api-url", help="a running Prefect server's API (default: start one on SQLite)")
    parser.add_argument("--record", action="store_true", help="write the block into benchmarks/RESULTS.md")
    args = parser.parse_args()
    server = None
    home = Path(tempfile.mkdtemp(prefix="prefect-overhead-"))
    api = args.api_url
    if api is None:
        server, api = start_server(home / "server")
    os.environ.update({"PREFECT_API_URL": api, "PREFECT_HOME": str(home / "client"),
                       "PREFECT_LOGGING_LEVEL": "WARNING",
                       "PREFECT_LOCAL_STORAGE_PATH": str(home / "results")})
    try:
        times = measure(args.tasks)
    finally:
        if server is not None:
            server.terminate()
            server.wait(30)
    text = report(times, args.tasks, "a Prefect server on SQLite (loopback)" if server else api)
    print(text)
    if args.record:
        from benchmarks.results import record_block

        record_block("prefect-overhead", "## Prefect's cost per task run (the scale model's input)", text)


if __name__ == "__main__":
    main()
