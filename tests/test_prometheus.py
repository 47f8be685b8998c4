"""A real Prometheus (Debian's package) scrapes the service on loopback."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from avatarproxy.app import create_app
from avatarproxy.config import load_settings
from avatarproxy.graph.auth import StaticTokenProvider

ADELE = "adele.vance@contoso.com"


def binary(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found: tests/run installs Debian's prometheus package",
                    pytrace=False)
    return found


async def query(http: aiohttp.ClientSession, prometheus: str, promql: str) -> float | None:
    try:
        async with http.get(f"{prometheus}/api/v1/query", params={"query": promql}) as resp:
            result = (await resp.json())["data"]["result"]
    except aiohttp.ClientConnectionError:
        return None  # still starting
    return float(result[0]["value"][1]) if result else None


async def until(http: aiohttp.ClientSession, prometheus: str, promql: str,
                check: Any) -> float:
    # Prometheus is another process with no event to await: poll its API. A
    # loaded 2-core machine can take tens of seconds to start it and scrape.
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        value = await query(http, prometheus, promql)
        if value is not None and check(value):
            return value
        await asyncio.sleep(0.2)
    raise AssertionError(f"{promql} never satisfied the check in 90 s")


async def test_prometheus_scrapes_the_service_and_sees_the_request_counter_grow(
        aiohttp_server: Any, fake_graph: Any, prometheus_for: Any, tmp_path: Path) -> None:
    settings = load_settings(env={}, overrides={"graph.base_url": fake_graph.base_url})
    server = await aiohttp_server(create_app(settings, tokens=StaticTokenProvider("t")))
    base = f"http://127.0.0.1:{server.port}"
    prometheus = prometheus_for(f"127.0.0.1:{server.port}")
    total = 'sum(avatarproxy_requests_total{route="/avatar/{subject}/{size}"}) or vector(0)'
    async with aiohttp.ClientSession() as http:
        await until(http, prometheus, 'up{job="avatarproxy"}', lambda v: v == 1)
        before = await until(http, prometheus, total, lambda v: True)
        for size in (48, 64, 96):
            async with http.get(f"{base}/avatar/{ADELE}/{size}") as resp:
                assert resp.status == 200
        await until(http, prometheus, total, lambda v: v >= before + 3)
        async with http.get(f"{base}/metrics") as resp:
            exposition = await resp.read()
    check = await asyncio.create_subprocess_exec(
        binary("promtool"), "check", "metrics", stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    output, _ = await asyncio.wait_for(check.communicate(exposition), timeout=60)
    assert check.returncode == 0, output
