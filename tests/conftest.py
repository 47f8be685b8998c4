"""Shared fixtures: a real Redis, a fake Graph, a fake Entra ID over TLS, and
clients to the service wired to them."""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from aiohttp import web
from appclient import MakeClient, client_factory
from fakeidp import FakeIdP, start_fake_idp
from faultproxy import FaultProxy
from frontstack import MakeStack, stacks
from logwatch import Lines
from loopback import free_port, stop_process
from redisservers import Topology, start_cluster, start_sentinel, start_server, start_tls
from tlsutil import make_server_tls
from yarl import URL

from avatarproxy.demo.contoso import demo_people
from avatarproxy.demo.fakegraph import FakeGraph, start_fake_graph
from avatarproxy.demo.people import FakePerson


@pytest.fixture(autouse=True)
def _no_person_in_logs() -> Iterator[Lines]:
    """Every log line any test produces with ``logging.log_upn`` off (the default)
    names nobody: no UPN or address (at the levels each test logs at)."""
    lines = Lines()
    root = logging.getLogger()
    root.addHandler(lines)
    try:
        yield lines
    finally:
        root.removeHandler(lines)
    named = lines.naming_people()
    if named:
        pytest.fail("log lines name a person while logging.log_upn is off:\n"
                    + "\n".join(named[:10]), pytrace=False)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private redis-server for the whole session; yields ``redis://127.0.0.1:N/0``."""
    server = start_server(tmp_path_factory.mktemp("redis"))
    try:
        yield f"redis://127.0.0.1:{server.port}/0"
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: str) -> Iterator[str]:
    """The session Redis, emptied before the test."""
    client = redis.Redis.from_url(redis_server)
    try:
        client.flushall()
    finally:
        client.close()
    yield redis_server


@dataclass
class RunningGraph:
    graph: FakeGraph
    base_url: str  # http://127.0.0.1:PORT/v1.0
    runner: web.AppRunner

    def find(self, predicate: Callable[[FakePerson], bool]) -> FakePerson:
        return self.graph.find(predicate)


@pytest.fixture
async def fake_graph() -> AsyncIterator[RunningGraph]:
    """A FakeGraph with ``demo_people()``, served on a free loopback port."""
    graph = FakeGraph(demo_people())
    runner, base_url = await start_fake_graph(graph)
    try:
        yield RunningGraph(graph, base_url, runner)
    finally:
        await runner.cleanup()


@pytest.fixture
async def graph_proxy(fake_graph: RunningGraph) -> AsyncIterator[FaultProxy]:
    """A fault proxy (tests/faultproxy.py) in front of the fake Graph; no faults until
    a test sets them. Its base URL: ``http://127.0.0.1:{graph_proxy.port}/v1.0``."""
    proxy = await FaultProxy.start(URL(fake_graph.base_url).port or 0)
    try:
        yield proxy
    finally:
        await proxy.close()


@pytest.fixture
async def redis_proxy(redis_url: str) -> AsyncIterator[FaultProxy]:
    """A fault proxy in front of the session Redis (``redis_url``), no faults yet."""
    proxy = await FaultProxy.start(URL(redis_url).port or 0)
    try:
        yield proxy
    finally:
        await proxy.close()


@pytest.fixture
def prometheus_for(tmp_path: Path) -> Iterator[Callable[[str], str]]:
    """``start(target)``: a real Prometheus (Debian's package) scraping ``host:port``
    every second; returns its URL. Stopped after the test."""
    processes: list[subprocess.Popen[bytes]] = []

    def start(target: str) -> str:
        binary = shutil.which("prometheus")
        if binary is None:
            pytest.fail("prometheus not found: tests/run installs Debian's prometheus package",
                        pytrace=False)
        port = free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
                          "scrape_configs:\n  - job_name: avatarproxy\n"
                          f"    static_configs:\n      - targets: ['{target}']\n")
        processes.append(subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        return f"http://127.0.0.1:{port}"

    try:
        yield start
    finally:
        for process in processes:
            stop_process(process, timeout=20)


@pytest.fixture
async def stack_for(aiohttp_server: Any, fake_graph: RunningGraph, tmp_path: Path
                    ) -> AsyncIterator[MakeStack]:
    """``make(env=None, **settings)``: the service on the fake Graph behind a caching
    front as deployed (tests/frontstack.py)."""
    async with stacks(aiohttp_server, fake_graph.base_url, tmp_path) as make:
        yield make


@pytest.fixture
def tls_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "tls"
    directory.mkdir()
    return directory


@pytest.fixture
async def fake_idp(tls_dir: Path) -> AsyncIterator[FakeIdP]:
    """A FakeIdP (tenant ``contoso-tenant``, default client id and secret) over TLS."""
    idp = await start_fake_idp(tls_dir)
    try:
        yield idp
    finally:
        await idp.close()


@pytest.fixture
def idp_settings(fake_graph: RunningGraph, fake_idp: FakeIdP) -> dict[str, Any]:
    """Settings overrides that send the service to the fake Graph with real msal
    tokens from the fake IdP; the fake Graph then accepts only tokens it issued."""
    fake_graph.graph.accept_token = fake_idp.issued.__contains__
    return {
        "graph.base_url": fake_graph.base_url,
        "auth.tenant_id": fake_idp.tenant, "auth.client_id": fake_idp.client_id,
        "auth.client_secret": fake_idp.client_secret,
        "auth.authority": fake_idp.authority, "auth.ca_file": str(fake_idp.ca_file),
    }


@pytest.fixture
def make_client(aiohttp_client: Any, idp_settings: dict[str, Any],
                redis_url: str) -> MakeClient:
    """``make(**overrides)``: a client to a fresh service process (its own memory
    tier) on the fake Graph, the fake IdP and the shared Redis; see client_factory."""
    return client_factory(aiohttp_client, {**idp_settings, "cache.redis_url": redis_url})


# -- Redis as companies run it (see redisservers.py); started once per session --

@pytest.fixture(scope="session")
def redis_tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    """One Redis over TLS only, with an ACL user whose password is in a file."""
    directory = tmp_path_factory.mktemp("redis-tls")
    with start_tls(directory / "server", make_server_tls(directory / "pki"),
                   directory / "password") as topology:
        yield topology


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    """A Redis Cluster: three masters, one replica each."""
    with start_cluster(tmp_path_factory.mktemp("redis-cluster")) as topology:
        yield topology


@pytest.fixture(scope="session")
def redis_sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    """A master and a replica with a password, and three Sentinels with another."""
    directory = tmp_path_factory.mktemp("redis-sentinel")
    with start_sentinel(directory, directory / "password",
                        directory / "sentinel-password") as topology:
        yield topology
