"""Processes the benchmark starts on loopback, and stops by itself.

Each returns something with ``stop()``; everything lives in one temp dir.
Ports come from tests/loopback.py (bench/run.py puts tests/ on sys.path).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from loopback import free_port, wait_for_port

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Proc:
    """A child process (group) with its port."""

    name: str
    process: subprocess.Popen[bytes]
    port: int
    log: Path
    children: list[int] = field(default_factory=list)

    def pids(self) -> list[int]:
        """The process and its descendants (worker processes count too)."""
        found = [self.process.pid]
        for pid in list(found):
            found += _descendants(pid)
        return found

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def _descendants(pid: int) -> list[int]:
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    result = [int(c) for c in children]
    for child in list(result):
        result += _descendants(child)
    return result


def spawn(name: str, argv: list[str], port: int, workdir: Path,
          env: Mapping[str, str] | None = None, timeout: float = 30.0) -> Proc:
    log = workdir / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                   env={**os.environ, **(env or {})}, start_new_session=True)
    proc = Proc(name, process, port, log)
    try:
        wait_for_port(port, timeout)
    except TimeoutError as exc:
        proc.stop()
        raise RuntimeError(f"{name} did not start:\n{log.read_text()[-2000:]}") from exc
    return proc


def redis(workdir: Path) -> Proc:
    port = free_port()
    binary = shutil.which("redis-server") or "redis-server"
    return spawn("redis", [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                           "--appendonly", "no", "--dir", str(workdir)], port, workdir)


def nginx(workdir: Path, docroot: Path, workers: int, wrap: Sequence[str] = ()) -> Proc:
    """nginx serving ``docroot``; ``wrap`` (e.g. valgrind) runs it as one process."""
    port = free_port()
    conf = workdir / f"nginx-{port}.conf"
    # Under a wrapper the one process must do the work: no master forking workers.
    processes = "worker_processes 1;\nmaster_process off;" if wrap else (
        f"worker_processes {workers};")
    conf.write_text(f"""
{processes}
daemon off;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {workdir}/nginx-body;
    proxy_temp_path {workdir}/nginx-proxy;
    fastcgi_temp_path {workdir}/nginx-fastcgi;
    uwsgi_temp_path {workdir}/nginx-uwsgi;
    scgi_temp_path {workdir}/nginx-scgi;
    default_type image/jpeg;
    etag on;
    server {{ listen 127.0.0.1:{port}; root {docroot}; }}
}}
""")
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    return spawn(f"nginx-{port}", [*wrap, binary, "-c", str(conf),
                                   "-e", str(workdir / "nginx-error.log")], port, workdir)


def bare(workdir: Path, body_file: Path, workers: int, wrap: Sequence[str] = (),
         redis_url: str | None = None) -> Proc:
    """The bare aiohttp handler (bench/bare.py); with ``redis_url``, one GET per request."""
    port = free_port()
    argv = [*wrap, sys.executable, str(ROOT / "bench" / "bare.py"), str(port), str(body_file),
            str(workers), *([redis_url] if redis_url else [])]
    return spawn(f"bare-{port}", argv, port, workdir)


def service(workdir: Path, name: str, env: Mapping[str, str], workers: int,
            wrap: Sequence[str] = ()) -> Proc:
    port = free_port()
    argv = [*wrap, sys.executable, "-m", "avatarproxy", "serve", "--host", "127.0.0.1",
            "--port", str(port)]
    proc = spawn(name, argv, port, workdir, env, timeout=120 if wrap else 30)
    # The port answers once the first worker listens; connections opened
    # before the others do would all stay (keep-alive) on that one worker.
    deadline = time.monotonic() + 30
    while proc.log.read_text().count("Running on") < workers:
        if time.monotonic() > deadline:
            proc.stop()
            raise RuntimeError(f"{name}: {workers} workers did not all start")
        time.sleep(0.05)
    return proc


def workers(pids: list[int]) -> list[int]:
    """The worker processes among ``pids``: the service's own process when it
    serves alone, else the processes multiprocessing spawned (not its
    resource tracker, not the supervisor that only forwards signals)."""
    spawned = [pid for pid in pids if b"spawn_main" in _cmdline(pid)]
    return spawned or pids[:1]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def rss_bytes(pids: list[int]) -> int:
    """Resident memory summed over processes (VmRSS)."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):  # peak resident set size
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def thread_cpu_seconds(pids: list[int]) -> float:
    """CPU time of the processes' live threads, to the nanosecond (``/proc`` schedstat).

    ``cpu_seconds`` counts in 10 ms ticks: too coarse for a few dozen misses.
    """
    total = 0
    for pid in pids:
        for stat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
            with contextlib.suppress(OSError, IndexError, ValueError):  # a thread ended
                total += int(stat.read_text().split()[0])
    return total / 1e9


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of the processes so far."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks
        except (OSError, IndexError):
            pass
    return total
