"""Load generators: wrk (closed loop) and a paced open-loop client."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp

_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


@dataclass(frozen=True)
class WrkResult:
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


def _seconds(text: str) -> float:
    match = re.fullmatch(r"([0-9.]+)(us|ms|s|m)", text.strip())
    if match is None:
        raise ValueError(text)
    return float(match.group(1)) * _UNITS[match.group(2)]


def wrk(url: str, seconds: float, connections: int = 64, threads: int = 2,
        headers: Sequence[str] = (), script: Path | None = None) -> WrkResult:
    """Closed-loop throughput and latency percentiles from Debian's wrk."""
    binary = shutil.which("wrk")
    if binary is None:
        raise RuntimeError("wrk is not installed (Debian package wrk)")
    argv = [binary, f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s",
            "--latency", "--timeout", "5s"]
    for header in headers:
        argv += ["-H", header]
    if script is not None:
        argv += ["-s", str(script)]
    out = subprocess.run([*argv, url], capture_output=True, text=True, check=True,
                         timeout=seconds + 60).stdout
    percentiles = dict(re.findall(r"^\s+(50|99)%\s+(\S+)\s*$", out, re.MULTILINE))
    if set(percentiles) != {"50", "99"}:
        raise RuntimeError(f"wrk completed no requests against {url}:\n{out}")
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    errors += sum(int(n) for n in re.findall(r"Socket errors:.*timeout (\d+)", out))
    return WrkResult(requests=total,
                     rps=float(re.search(r"Requests/sec:\s+([0-9.]+)", out).group(1)),  # type: ignore[union-attr]
                     p50_ms=_seconds(percentiles["50"]) * 1000,
                     p99_ms=_seconds(percentiles["99"]) * 1000, errors=errors)


def percentile(values: Sequence[float], share: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


async def paced(url: str, rate: float, seconds: float,
                headers: dict[str, str] | None = None) -> tuple[float, float, int]:
    """Open loop: send at a fixed rate whatever the latency; (p50 ms, p99 ms, errors).

    Latency is measured from the scheduled send time, so a stalled server
    shows up as queueing delay instead of silently lowering the rate.
    """
    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=256)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        async def one(scheduled: float) -> None:
            nonlocal errors
            try:
                async with session.get(url) as resp:
                    await resp.read()
                    if resp.status != 200:
                        errors += 1
            except aiohttp.ClientError:
                errors += 1
            latencies.append(time.perf_counter() - scheduled)

        start = time.perf_counter()
        tasks = []
        for i in range(int(rate * seconds)):
            scheduled = start + i / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(scheduled)))
        await asyncio.gather(*tasks)
    return percentile(latencies, 0.5) * 1000, percentile(latencies, 0.99) * 1000, errors
