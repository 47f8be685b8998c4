"""Processes and shutdown: workers sharing the port, readiness, SIGTERM draining.

One worker runs in the main process. Several are spawned processes that
each bind the port with SO_REUSEPORT (the kernel spreads connections) and
share metrics through prometheus-client's multiprocess directory (each flushes
its counts there once a second and when it stops: ``metrics.flush``); the main
process only forwards signals and waits. If a worker dies, the others are
stopped and the exit status is non-zero, so Kubernetes restarts the pod.

On SIGTERM (or SIGINT) a worker turns unready, keeps accepting for
``server.drain_seconds`` (endpoints take a few seconds to drop a pod), stops
listening, gives in-flight requests and the Graph fetches still running
(``AvatarService.drain``, called by the app's clean-up) ``server.grace_seconds``
together, cuts what is left, closes Redis and Graph sessions, and exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import math
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

from aiohttp import web

from . import metrics
from .config import Settings
from .errors import ConfigError
from .ops import READINESS, metrics_app
from .server import ServerSettings

log = logging.getLogger(__name__)
AppFactory = Callable[[], Awaitable[web.Application]]
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def usable_cpus(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """CPUs this process may use: affinity, capped by a cgroup CPU quota (v2 or v1)."""
    cpus = len(os.sched_getaffinity(0))
    quota = _cgroup_quota(cgroup_root)
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)


def _cgroup_quota(root: Path) -> float | None:
    try:
        limit, period = (root / "cpu.max").read_text().split()[:2]  # v2: "max 100000"
        return None if limit == "max" else int(limit) / int(period)
    except (OSError, ValueError):
        pass
    try:
        limit = (root / "cpu" / "cpu.cfs_quota_us").read_text().strip()  # v1: -1 unlimited
        period = (root / "cpu" / "cpu.cfs_period_us").read_text().strip()
        return None if int(limit) <= 0 else int(limit) / int(period)
    except (OSError, ValueError):
        return None


async def serve_until_stopped(make_app: AppFactory, server: ServerSettings, *,
                              reuse_port: bool = False) -> None:
    """Serve one process until SIGTERM/SIGINT, then drain and shut down gracefully."""
    app = await make_app()
    runner = web.AppRunner(app, handle_signals=False, access_log=None,
                           shutdown_timeout=server.grace_seconds)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in _STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    metrics_runner: web.AppRunner | None = None
    flushing = asyncio.create_task(metrics.flushing())  # this worker's counts, once a second
    try:
        # First, so whoever waits for "Running on" finds /metrics answering too.
        try:
            metrics_runner = await _metrics_listener(app, server, reuse_port)
        except OSError as exc:  # taken since serve checked it
            raise _cannot_listen("server.metrics_port", server.host, server.metrics_port,
                                 exc) from exc
        site = web.TCPSite(runner, server.host, server.port, reuse_port=reuse_port or None)
        try:
            await site.start()
        except OSError as exc:
            raise _cannot_listen("server.port", server.host, server.port, exc) from exc
        log.info("Running on http://%s:%d (pid %d)", server.host, server.port, os.getpid())
        await stop.wait()
        app[READINESS].ready = False
        log.info("stopping: unready, draining for %gs", server.drain_seconds)
        await asyncio.sleep(server.drain_seconds)
    finally:
        await _shut_down(runner, flushing, metrics_runner, loop)
    log.info("stopped")


async def _shut_down(runner: web.AppRunner, flushing: asyncio.Task[None],
                     metrics_runner: web.AppRunner | None,
                     loop: asyncio.AbstractEventLoop) -> None:
    """The steps of a stop, each taken even if one before it raised (the error is
    raised after them all): a clean-up that fails must not lose the last counts."""
    async with contextlib.AsyncExitStack() as steps:  # run last registered first
        for sig in _STOP_SIGNALS:
            steps.callback(loop.remove_signal_handler, sig)
        if metrics_runner is not None:  # scrapeable until the very end
            steps.push_async_callback(metrics_runner.cleanup)
        steps.callback(metrics.flush)  # what the last requests and fetches counted
        steps.callback(flushing.cancel)
        # Stops listening, waits up to grace_seconds for in-flight requests
        # (then cancels them), then runs clean-up: the rest of the grace for
        # Graph fetches still running, then Redis, Graph session, executor.
        steps.push_async_callback(runner.cleanup)


def _cannot_listen(key: str, host: str, port: int, exc: OSError) -> ConfigError:
    return ConfigError([f"{key}: cannot listen on {host}:{port}: {exc.strerror}"])


def worker_count(server: ServerSettings) -> int:
    return server.workers or usable_cpus()


async def _metrics_listener(app: web.Application, server: ServerSettings,
                            reuse_port: bool) -> web.AppRunner | None:
    """``server.metrics_port``'s listener, if set. Each worker binds it too
    (SO_REUSEPORT): whichever answers reports the sum of all (multiprocess mode)."""
    if not server.metrics_port:
        return None
    runner = web.AppRunner(metrics_app(app[READINESS]), handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, server.host, server.metrics_port, reuse_port=reuse_port or None)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    log.info("metrics on http://%s:%d/metrics", server.host, server.metrics_port)
    return runner


def run(settings: Settings, make_app: AppFactory) -> int:
    """``avatarproxy serve``: one worker in this process, or several spawned ones."""
    workers = worker_count(settings.server)
    if workers == 1:
        run_loop(serve_until_stopped(make_app, settings.server))
        return 0
    return _supervise(settings, workers)


def _supervise(settings: Settings, workers: int) -> int:
    own_dir = "PROMETHEUS_MULTIPROC_DIR" not in os.environ
    if own_dir:
        # Under readOnlyRootFilesystem, TMPDIR (an emptyDir) must be writable.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="avatarproxy-metrics-")
    # A stop signal only wakes the wait below (exec resets handlers in workers).
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    for sig in _STOP_SIGNALS:
        signal.signal(sig, lambda *_: None)
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_worker, args=(settings,), name=f"worker-{n}")
                 for n in range(workers)]
    try:
        for process in processes:
            process.start()
        log.info("started %d workers", workers)
        status = _wait_for_stop(processes, wake_read)
        for process in processes:
            if process.is_alive():
                process.terminate()  # SIGTERM: each drains on its own
        deadline = time.monotonic() + settings.server.drain_seconds \
            + settings.server.grace_seconds + 5
        while (alive := [p.sentinel for p in processes if p.is_alive()]) \
                and time.monotonic() < deadline:
            wait(alive, timeout=deadline - time.monotonic())  # returns as each one exits
        for process in processes:
            if process.is_alive():
                process.kill()
            process.join()
            if process.pid is not None:
                metrics.process_exited(process.pid)
            status = status or (process.exitcode != 0)
        return int(status)
    finally:
        signal.set_wakeup_fd(-1)
        os.close(wake_read)
        os.close(wake_write)
        if own_dir:
            shutil.rmtree(os.environ.pop("PROMETHEUS_MULTIPROC_DIR"), ignore_errors=True)


def _wait_for_stop(processes: Sequence[multiprocessing.process.BaseProcess],
                   wake: int) -> bool:
    """Block until a stop signal (False) or a worker's death (True: a failure)."""
    ready = wait([wake, *(p.sentinel for p in processes)])
    if wake in ready:
        return False
    log.error("a worker exited unexpectedly: stopping the others")
    return True


def _worker(settings: Settings) -> None:
    # If the supervisor dies without stopping us (SIGKILL), drain and exit too.
    _PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    from .app import configure_logging, create_app

    configure_logging(settings)

    async def make_app() -> web.Application:
        return create_app(settings)

    try:
        run_loop(serve_until_stopped(make_app, settings.server, reuse_port=True))
    except ConfigError as exc:
        # One line, like serve's own (serve checks these first: this is a race).
        for problem in exc.problems:
            print(f"avatarproxy: config: {problem}", file=sys.stderr)
        sys.exit(2)
    sys.exit(0)


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run on uvloop where installed: its libuv loop answers hits ~25 % faster
    than asyncio's (measured in bench/); asyncio's own loop otherwise."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    uvloop.run(main)
