"""Ports and child processes on loopback, for the tests and the benchmark
(bench/run.py puts this folder on sys.path; nothing here imports from bench)."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable

import redis

_SYSTEM_REDIS_PORT = 6379  # a developer's own Redis: never ours


def free_port() -> int:
    """A loopback port nothing listens on now (also what a test uses as a dead address)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port != _SYSTEM_REDIS_PORT:
            return port


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 20) -> None:
    """Poll an external process's state (there is no event to await)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except (redis.RedisError, OSError):
            pass
        time.sleep(0.05)
    raise TimeoutError(f"timed out waiting for {what}")


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    wait_for(lambda: listening(port), f"a listener on 127.0.0.1:{port}", timeout)


def stop_process(process: subprocess.Popen[bytes], timeout: float = 10) -> None:
    """Terminate, and kill what does not exit in ``timeout`` seconds."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
