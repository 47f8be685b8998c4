"""The caching front's rows of the hits table (issue 15).

The front runs as deployed (tests/front.py: the pod's arguments and VCL) in
front of the benchmark's service. Two rows, in the same run as nginx:

- hot hits through the front, the browser Accept, the hit working set;
- the same avatars with a cache buster new on every request, so every request
  misses the front and reaches the service (a memory hit there): what the
  service itself costs behind the front, and what a cache-busting client costs.

On a shared machine the load of the others moves from one row to the next, so
the hot row also gets its ratio to nginx from short runs of both, alternated
(``rps_vs_nginx_interleaved``, ``p99_vs_nginx_interleaved``: the medians).
"""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import load
import servers
from front import Front, start_front

HOT = "avatarproxy behind the front (browser Accept)"
BUSTED = "behind the front, cache-busted (every request misses it)"

Measure = Callable[[servers.Proc, Path, tuple[str, ...]], Awaitable[dict[str, Any]]]
Pace = Callable[[servers.Proc, str, tuple[str, ...]], Awaitable[dict[str, Any]]]


@dataclass
class Pod(servers.Proc):
    """The front (varnishd and its child) with the service behind it: the CPU a
    request costs is both's, as in the pod."""

    service: servers.Proc | None = None

    def pids(self) -> list[int]:
        return [*super().pids(), *(self.service.pids() if self.service else [])]


def busting_script(workdir: Path, paths: list[str]) -> Path:
    """A wrk script cycling through ``paths``, each request with a ``?v=`` never sent before."""
    script = workdir / "busted.lua"
    script.write_text("paths = {" + ",".join(f'"{p}"' for p in paths) + "}\n"
                      "i = 0\nn = 0\nrequest = function()\n  i = i % #paths + 1\n"
                      "  n = n + 1\n"
                      "  return wrk.format(nil, paths[i] .. \"?v=\" .. tostring(n) .. \"-\" .."
                      " tostring(math.random(1e9)))\nend\n")
    return script


async def interleaved(front: servers.Proc, nginx: servers.Proc, script: Path,
                      headers: tuple[str, ...], seconds: float,
                      rounds: int = 3) -> dict[str, float]:
    """The front's req/s and p99 against nginx's, from alternated runs: medians."""
    rps: list[float] = []
    p99: list[float] = []
    for _ in range(rounds):
        results = [await asyncio.to_thread(load.wrk, f"http://127.0.0.1:{proc.port}", seconds,
                                           headers=headers, script=script)
                   for proc in (nginx, front)]
        rps.append(results[1].rps / results[0].rps)
        p99.append(results[1].p99_ms / results[0].p99_ms)
    return {"rps_vs_nginx_interleaved": round(statistics.median(rps), 3),
            "p99_vs_nginx_interleaved": round(statistics.median(p99), 3)}


async def rows(workdir: Path, service: servers.Proc, nginx: servers.Proc, paths: list[str],
               script: Path, accept: str, seconds: float, measure: Measure,
               pace: Pace) -> dict[str, dict[str, Any]]:
    """The two rows, measured by ``measure`` (the benchmark's wrk run) and, for hot
    hits, ``pace`` (its open-loop latency at a fixed rate) and ``interleaved``."""
    front: Front = await asyncio.to_thread(start_front, workdir / "front", service.port)
    proc = Pod("front", front.process, front.port, front.log, service=service)
    try:
        async with aiohttp.ClientSession() as session:
            for path in paths:  # warm the front: one miss each
                async with session.get(front.base_url + path,
                                       headers={"Accept": accept}) as resp:
                    await resp.read()
        headers = (f"Accept: {accept}",)
        hot = await measure(proc, script, headers)
        hot.update(await pace(proc, paths[0], headers))
        hot.update(await interleaved(proc, nginx, script, headers, max(1.0, seconds / 2)))
        return {HOT: hot, BUSTED: await measure(proc, busting_script(workdir, paths), headers)}
    finally:
        await asyncio.to_thread(front.stop)
