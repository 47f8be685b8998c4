"""Instructions per request, counted by valgrind's callgrind.

Wall-clock figures on a shared 2-core machine move with whatever else runs;
an instruction count does not (same binary, same inputs, same count). Each
server runs as one process under ``valgrind --tool=callgrind`` with counting
off during start-up and warm-up; counting is switched on for a short wrk run
(one thread, four connections) and the total is divided by the requests wrk
completed. Only user-space instructions of the server process count: the
kernel's share of a request (socket reads and writes) is not in the figure,
which flatters nobody, since nginx and the Python servers make the same
system calls per request.
"""

from __future__ import annotations

import shutil
import subprocess
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import load
import servers


def available() -> bool:
    return shutil.which("valgrind") is not None and shutil.which("callgrind_control") is not None


def wrapper(workdir: Path, name: str) -> list[str]:
    """The argv prefix that runs a server under callgrind, counting nothing yet."""
    return ["valgrind", "--tool=callgrind", "--instr-atstart=no",
            f"--callgrind-out-file={workdir / f'callgrind-{name}.out'}"]


def _control(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, capture_output=True,
                   timeout=120)


def _totals(dump: Path) -> int:
    for line in dump.read_text().splitlines():
        if line.startswith("totals:"):
            return int(line.split()[1])
    raise RuntimeError(f"no totals line in {dump}")


def per_request(proc: servers.Proc, workdir: Path, name: str, path: str, seconds: float,
                headers: Sequence[str] = ()) -> dict[str, float]:
    """Instructions the server executes per request for ``path`` (already warm)."""
    pid = proc.process.pid  # valgrind runs the program in its own process
    url = f"http://127.0.0.1:{proc.port}{path}"
    # Warm: a fresh service process fills its memory tier from Redis first.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    for _ in range(5):
        request = urllib.request.Request(url, headers=dict(h.split(": ", 1) for h in headers))
        with opener.open(request, timeout=120) as response:
            response.read()
    before = set(workdir.glob(f"callgrind-{name}.out*"))
    _control(pid, "--instr=on")
    try:
        result = load.wrk(url, seconds, connections=4,
                          threads=1, headers=headers)
    finally:
        _control(pid, "--dump")
        _control(pid, "--instr=off")
    (dump,) = set(workdir.glob(f"callgrind-{name}.out*")) - before
    instructions = _totals(dump)
    return {"requests": result.requests,
            "instructions_per_request": round(instructions / max(1, result.requests))}


def start_counting(pid: int) -> None:
    """Count from now (a server started with ``wrapper``), until ``stop_counting``."""
    _control(pid, "--instr=on")


def stop_counting(pid: int, workdir: Path, name: str) -> int:
    """Instructions executed since ``start_counting``; counting stops."""
    before = set(workdir.glob(f"callgrind-{name}.out*"))
    try:
        _control(pid, "--dump")
    finally:
        _control(pid, "--instr=off")
    (dump,) = set(workdir.glob(f"callgrind-{name}.out*")) - before
    return _totals(dump)
