"""Which process owns something a run leaves behind (a temporary folder, an MLflow run), and whether it still lives.

A killed run (``kill -9``, a lost machine) cannot clean up after itself: its temporary folders stay, its MLflow runs
stay ``RUNNING``. The next run may clean them, but only when it knows their owner is gone, never a live concurrent
run's. So every such thing is marked with its owner, :class:`Owner`: the host name, the process id and the
process's start time (a pid alone is reused by the kernel; the start time tells a reused pid from the owner). An
owner on this host is alive when a process with its pid exists and started when the owner did; an owner on another
host is *unknown* (``None``): nothing here can see that host's processes, so its things are left alone.

The start time comes from psutil (``Process.create_time``: the kernel's start time of the process, e.g. from
``/proc/<pid>/stat`` on Linux), in hundredths of a second since the epoch, as the kernel counts it.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

import psutil

log = logging.getLogger(__name__)

#: ``<pid>-<start>@<host>``: the text form of an owner, in file names and MLflow tags (host names hold only
#: letters, digits, dots and hyphens, so neither ``-`` before ``@`` nor ``@`` is ambiguous).
_TAG = re.compile(r"(?P<pid>\d+)-(?P<started>\d+)@(?P<host>[A-Za-z0-9._-]+)")
#: A temporary folder of :func:`owned_prefix`: ``.<name>.<owner>.<random>.tmp`` (``tempfile.mkdtemp``'s random
#: part is 8 characters of ``[a-z0-9_]``).
_TEMPORARY = re.compile(r"\.(?P<owner>\d+-\d+@[A-Za-z0-9._-]+)\.[a-z0-9_]{8}\.tmp$")


@dataclass(frozen=True)
class Owner:
    """A process on a host: ``pid`` started at ``started`` (hundredths of a second since the epoch)."""

    host: str
    pid: int
    started: int

    def tag(self) -> str:
        return f"{self.pid}-{self.started}@{self.host}"

    @classmethod
    def parse(cls, text: str) -> Owner | None:
        """The owner in ``text`` (as :meth:`tag` writes it), or None when it is not one."""
        match = _TAG.fullmatch(text.strip())
        if match is None:
            return None
        return cls(match["host"], int(match["pid"]), int(match["started"]))

    def alive(self) -> bool | None:
        """True while the owner runs, False once it has exited (or its pid is another process's now), None
        when it lives on another host (unknown here)."""
        if self.host != _host():
            return None
        try:
            process = psutil.Process(self.pid)
            if process.status() == psutil.STATUS_ZOMBIE:  # it has exited; only its status waits for its parent
                return False
            # one hundredth either way: the start time is derived from the boot time and clock ticks
            return abs(_hundredths(process.create_time()) - self.started) <= 1
        except psutil.NoSuchProcess:
            return False
        except psutil.AccessDenied:  # it exists and hides its start time: never take a live one for dead
            return True


def _host() -> str:
    return socket.gethostname()


def _hundredths(seconds: float) -> int:
    return round(seconds * 100)


@functools.cache
def _start_of(pid: int) -> int:
    return _hundredths(psutil.Process(pid).create_time())


def current() -> Owner:
    """This process, as an owner (a forked child has its own pid, hence is another owner)."""
    pid = os.getpid()
    return Owner(_host(), pid, _start_of(pid))


def of_process(pid: int) -> Owner:
    """The process ``pid`` of this host, as an owner (e.g. a server this process just started)."""
    return Owner(_host(), pid, _hundredths(psutil.Process(pid).create_time()))


def owned_prefix(name: str) -> str:
    """The prefix of a temporary folder made for ``name`` by this process (``tempfile.mkdtemp(prefix=...,
    suffix=".tmp")``), naming its owner so that :func:`remove_orphans` can tell whether it is abandoned."""
    return f".{name}.{current().tag()}."


def remove_orphans(folder: Path, name: str) -> list[Path]:
    """Remove the temporary folders for ``name`` in ``folder`` whose owner has died on this host (a killed
    run's); a live owner's (a concurrent run's) and another host's are kept. Returns what was removed."""
    prefix = f".{name}."
    removed = []
    try:
        entries = [p for p in folder.iterdir() if p.name.startswith(prefix) and p.name.endswith(".tmp")]
    except FileNotFoundError:
        return []
    for path in entries:
        match = _TEMPORARY.search(path.name[len(prefix) - 1:])
        owner = Owner.parse(match["owner"]) if match else None
        if owner is None or owner.alive() is not False:
            continue
        log.info("removing %s, left by a run that ended without finishing it (process %d on this host)",
                 path.name, owner.pid)
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed
