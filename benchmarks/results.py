"""The one place a benchmark writes its result block into ``benchmarks/RESULTS.md``.

A block lies between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->``; a run replaces its own block and leaves
the rest of the file (the prose around it) alone; the first run appends it under ``heading``.
"""

from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def record_block(name: str, heading: str, text: str) -> Path:
    """Write ``text`` as the block ``name`` of RESULTS.md (under ``heading`` when the block is new)."""
    begin, end = markers(name)
    current = RESULTS.read_text(encoding="utf-8") if RESULTS.is_file() else "# Benchmark results\n"
    block = f"{begin}\n{text}\n{end}"
    if begin in current and end in current:
        head, rest = current.split(begin, 1)
        current = head + block + rest.split(end, 1)[1]
    else:
        current = current.rstrip("\n") + f"\n\n{heading}\n\n{block}\n"
    RESULTS.write_text(current, encoding="utf-8")
    return RESULTS
