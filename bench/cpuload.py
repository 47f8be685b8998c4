"""A CPU load generator the benchmark starts, names and stops: one busy process per core.

    with cpuload.saturate(seconds=60):   # every core busy until the block ends
        ...

Each process is named ``avatarproxy-bench-cpuload`` (its argv[0], what
``ps``/``pgrep -f`` show, and its kernel name as far as 15 characters go), so
anyone on the machine can tell what is eating it. It stops by itself: at its
deadline, and when its parent dies (the kernel kills it; it also checks).

Usage as a script (what ``saturate`` runs): cpuload.py SECONDS PARENT_PID.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

NAME = "avatarproxy-bench-cpuload"
_PR_SET_PDEATHSIG, _PR_SET_NAME = 1, 15


def _name_and_tie_to(parent: int) -> None:
    """Our kernel name, and SIGKILL when the parent dies (Linux; elsewhere: the polls)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_NAME, ctypes.c_char_p(NAME.encode()[:15]), 0, 0, 0)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # it died before the tie was made
        sys.exit(0)


def spin(seconds: float, parent: int) -> None:
    """Busy until ``seconds`` have passed or ``parent`` is gone."""
    _name_and_tie_to(parent)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and os.getppid() == parent:
        for _ in range(100_000):
            pass


@contextlib.contextmanager
def saturate(seconds: float, processes: int | None = None) -> Iterator[list[int]]:
    """Every core busy (``processes``: one per core by default) for at most ``seconds``,
    or until the block ends; yields the processes' ids."""
    count = processes or os.cpu_count() or 1
    children = [subprocess.Popen([NAME, str(Path(__file__).resolve()), str(seconds),
                                  str(os.getpid())], executable=sys.executable)
                for _ in range(count)]
    try:
        yield [child.pid for child in children]
    finally:
        for child in children:
            child.kill()
        for child in children:
            child.wait()


if __name__ == "__main__":
    spin(float(sys.argv[1]), int(sys.argv[2]))
