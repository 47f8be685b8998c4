"""A real ``avatarproxy serve`` (one worker or two), stopped with a real SIGTERM."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from cryptography import x509
from faultproxy import NONE, FaultProxy, Faults
from loopback import free_port
from tlsutil import make_client_certificate

from avatarproxy.cache import AvatarCache
from avatarproxy.config import load_settings
from avatarproxy.demo.photos import portrait
from avatarproxy.models import Subject

ADELE = "adele.vance@contoso.com"
ALEX = "alex.wilber@contoso.com"
LYNNE = "lynne.robbins@contoso.com"
KEYS = AvatarCache(load_settings(env={}).cache, [])  # key names only


@dataclass
class Server:
    process: asyncio.subprocess.Process
    base: str
    output: list[dict[str, Any]]
    stopping: asyncio.Queue[None]


async def _read_lines(stream: asyncio.StreamReader, output: list[dict[str, Any]],
                      listening: asyncio.Queue[None], stopping: asyncio.Queue[None]) -> None:
    while line := await stream.readline():
        try:
            record = json.loads(line)
        except ValueError:
            record = {"message": line.decode(errors="replace").rstrip()}
        output.append(record)
        if str(record.get("message", "")).startswith("Running on"):
            listening.put_nowait(None)
        if str(record.get("message", "")).startswith("stopping"):
            stopping.put_nowait(None)


def serve_env(fake_graph: Any, fake_idp: Any, port: int, workers: int,
              **settings: str) -> dict[str, str]:
    """The environment of ``avatarproxy serve`` on the fakes; ``settings`` as
    ``section_key=value`` (``AZURE_...`` and ``PROMETHEUS_...`` names are taken as they are)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AVATARPROXY_", "AZURE_"))}
    env.update({
        "AVATARPROXY_SERVER_HOST": "127.0.0.1", "AVATARPROXY_SERVER_PORT": str(port),
        "AVATARPROXY_SERVER_WORKERS": str(workers),
        "AVATARPROXY_GRAPH_BASE_URL": fake_graph.base_url,
        "AZURE_TENANT_ID": fake_idp.tenant, "AZURE_CLIENT_ID": fake_idp.client_id,
        "AZURE_CLIENT_SECRET": fake_idp.client_secret,
        "AVATARPROXY_AUTH_AUTHORITY": fake_idp.authority,
        "AVATARPROXY_AUTH_CA_FILE": str(fake_idp.ca_file),
        **{k if k.startswith(("AZURE_", "PROMETHEUS_")) else f"AVATARPROXY_{k.upper()}": v
           for k, v in settings.items()},
    })
    return env


@asynccontextmanager
async def serve(fake_graph: Any, fake_idp: Any, workers: int,
                **settings: str) -> AsyncIterator[Server]:
    """``avatarproxy serve`` in a subprocess, yielded once every worker listens."""
    port = free_port()
    env = serve_env(fake_graph, fake_idp, port, workers, **settings)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "avatarproxy", "serve", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        start_new_session=True)
    assert process.stdout is not None
    output: list[dict[str, Any]] = []
    listening: asyncio.Queue[None] = asyncio.Queue()
    stopping: asyncio.Queue[None] = asyncio.Queue()
    reader = asyncio.create_task(_read_lines(process.stdout, output, listening, stopping))
    try:
        for _ in range(workers):
            await asyncio.wait_for(listening.get(), timeout=30)
        yield Server(process, f"http://127.0.0.1:{port}", output, stopping)
    finally:
        if process.returncode is None:
            os.killpg(process.pid, signal.SIGKILL)  # the workers too: they hold stdout
            await process.wait()
        await reader


async def test_two_workers_share_the_port_and_drain_in_flight_requests_on_sigterm(
        fake_graph: Any, fake_idp: Any) -> None:
    fake_graph.graph.accept_token = fake_idp.issued.__contains__
    async with serve(fake_graph, fake_idp, workers=2, server_drain_seconds="1.0",
                     server_grace_seconds="10") as server, aiohttp.ClientSession() as http:
        async with http.get(server.base + "/readyz") as resp:
            assert resp.status == 200
        # Two workers share the port and answer /metrics for both.
        for _ in range(20):
            # A fresh connection each time, so the kernel may pick either worker.
            async with http.get(f"{server.base}/avatar/{ADELE}/48",
                                headers={"Connection": "close"}) as resp:
                assert resp.status == 200
        await _until_answered(http, server.base, 20)  # summed over both workers
        people = [p.upn for p in fake_graph.graph.people
                  if p.upn.replace(".", "").replace("@", "").isalpha()][:6]
        assert len(people) >= 4
        fake_graph.graph.reset_requests()
        fake_graph.graph.latency = 1.5  # every Graph call is now slow
        in_flight = [asyncio.create_task(http.get(f"{server.base}/avatar/{upn}/48"))
                     for upn in people]
        graph = fake_graph.graph
        async with asyncio.timeout(20), graph.arrived:  # they all reached Graph
            await graph.arrived.wait_for(lambda: len(graph.requests) >= len(people))
        server.process.send_signal(signal.SIGTERM)
        for _ in range(2):
            await asyncio.wait_for(server.stopping.get(), timeout=10)
        # Draining: still answering, but unready so endpoints drop the pod.
        async with http.get(server.base + "/readyz") as resp:
            assert resp.status == 503
            assert (await resp.json())["ready"] is False
        responses = await asyncio.gather(*in_flight)
        assert [r.status for r in responses] == [200] * len(people)
        assert all(r.headers["X-Avatar-Source"] in ("photo", "initials") for r in responses)
        for response in responses:
            response.release()
        assert await asyncio.wait_for(server.process.wait(), timeout=30) == 0
    messages = [str(line.get("message")) for line in server.output]
    assert messages.count("stopped") == 2, messages


async def test_two_workers_share_the_metrics_port_and_the_avatar_port_has_none(
        fake_graph: Any, fake_idp: Any) -> None:
    fake_graph.graph.accept_token = fake_idp.issued.__contains__
    metrics_port = free_port()
    async with serve(fake_graph, fake_idp, workers=2, server_drain_seconds="0.2",
                     server_metrics_port=str(metrics_port)) as server, \
            aiohttp.ClientSession() as http:
        for _ in range(10):
            async with http.get(f"{server.base}/avatar/{ADELE}/48",
                                headers={"Connection": "close"}) as resp:
                assert resp.status == 200
        async with http.get(server.base + "/metrics") as resp:
            assert resp.status == 404
        metrics = f"http://127.0.0.1:{metrics_port}"
        await _until_answered(http, metrics, 10)  # both workers' counts, once flushed
        for _ in range(6):  # fresh connections: the kernel spreads them over both workers
            async with http.get(metrics + "/metrics", headers={"Connection": "close"}) as resp:
                assert resp.status == 200
                text = await resp.text()
            assert _answered(text) == (10, 10)  # whichever worker answered
        async with http.get(metrics + "/readyz") as resp:
            assert resp.status == 200
        server.process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(server.process.wait(), timeout=30) == 0


async def _arrived(graph: Any, *who: str) -> None:
    """Until Graph has seen a request for each of ``who``."""
    async with asyncio.timeout(20), graph.arrived:
        await graph.arrived.wait_for(lambda: all(graph.count(upn) for upn in who))


async def test_in_flight_requests_finish_inside_the_grace_period_and_are_cut_after_it(
        fake_graph: Any, fake_idp: Any) -> None:
    graph = fake_graph.graph
    graph.accept_token = fake_idp.issued.__contains__
    drain, grace = 0.5, 2.0
    async with serve(fake_graph, fake_idp, workers=1, server_drain_seconds=str(drain),
                     server_grace_seconds=str(grace), server_request_deadline_seconds="60",
                     graph_timeout_seconds="60") as server, aiohttp.ClientSession() as http:
        # Graph answers Adele after 1.5 s (inside the grace period), Alex after 6 s.
        graph.fault("slow", path_contains=ADELE, delay=1.5)
        graph.fault("slow", path_contains=ALEX, delay=6)
        quick = asyncio.ensure_future(http.get(f"{server.base}/avatar/{ADELE}/48"))
        slow = asyncio.ensure_future(http.get(f"{server.base}/avatar/{ALEX}/48"))
        await _arrived(graph, ADELE, ALEX)
        server.process.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        response = await quick
        assert (response.status, response.headers["X-Avatar-Source"]) == (200, "photo")
        response.release()
        try:
            cut = await slow
        except aiohttp.ClientError:
            pass  # the connection closed with no answer: cut
        else:
            raise AssertionError(f"answered {cut.status} after the grace period")
        waited = time.monotonic() - sent
        assert drain + grace - 0.3 <= waited < 5.5, waited  # at the end of grace, not at 6 s
        assert await asyncio.wait_for(server.process.wait(), timeout=20) == 0


async def test_background_refreshes_finish_inside_the_grace_period_and_stop_after_it(
        fake_graph: Any, fake_idp: Any, redis_url: str) -> None:
    graph = fake_graph.graph
    graph.accept_token = fake_idp.issued.__contains__
    async with serve(fake_graph, fake_idp, workers=1, server_drain_seconds="0.2",
                     server_grace_seconds="2", cache_redis_url=redis_url,
                     cache_metadata_ttl_seconds="1") as server, aiohttp.ClientSession() as http:
        for upn in (ALEX, LYNNE):
            async with http.get(f"{server.base}/avatar/{upn}/48") as resp:
                assert resp.headers["X-Avatar-Source"] == "photo"
        await asyncio.sleep(1.1)  # both metadata entries go stale
        new_etag = graph.set_photo(ALEX, portrait(240, 240, "#222222", "#dddddd", "#aa3333"))
        # The refreshes: Alex's takes 1 s (inside the grace period), Lynne's 6 s.
        graph.fault("slow", path_contains=f"{ALEX}/photo", delay=1.0)
        graph.fault("slow", path_contains=f"{LYNNE}/photo", delay=6)
        graph.reset_requests()
        for upn in (ALEX, LYNNE):  # stale: served at once, refreshed in the background
            async with http.get(f"{server.base}/avatar/{upn}/48") as resp:
                assert resp.headers["X-Avatar-Source"] == "photo"
        await _arrived(graph, ALEX, LYNNE)
        server.process.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        assert await asyncio.wait_for(server.process.wait(), timeout=20) == 0
        assert time.monotonic() - sent < 5.5  # Lynne's refresh was not waited for
    store = aioredis.Redis.from_url(redis_url)
    try:
        raw = await store.get(KEYS.meta_key(Subject(ALEX)))
    finally:
        await store.aclose()
    assert raw is not None and json.loads(raw)["media_etag"] == new_etag  # it landed
    messages = " ".join(str(line.get("message")) for line in server.output)
    assert "cancelled 1 Graph fetches" in messages, messages


# -- the metrics the alerts read, as two workers export them -------------------------

def _answered(exposition: str) -> tuple[float, float]:
    """Of the avatar route: ``avatarproxy_requests_total`` with a 2xx status, and the
    duration histogram's count."""
    def total(prefix: str) -> float:
        return sum(float(line.rsplit(" ", 1)[1]) for line in exposition.splitlines()
                   if line.startswith(prefix) and 'route="/avatar/{subject}/{size}"' in line
                   and ('status_class="2xx"' in line or "requests_total" not in line))
    return (total("avatarproxy_requests_total{"),
            total("avatarproxy_request_duration_seconds_count{"))


async def _until_answered(http: aiohttp.ClientSession, base: str, count: int) -> None:
    """Until a scrape shows ``count`` answered requests: each worker flushes its
    counts once a second, so one answering a scrape sees the other's by then."""
    deadline = time.monotonic() + 30
    while True:
        async with http.get(base + "/metrics", headers={"Connection": "close"}) as resp:
            answered = _answered(await resp.text())
        assert answered[0] <= count and answered[1] <= count  # never counted twice
        if answered == (count, count):
            return
        assert time.monotonic() < deadline, f"{answered} after 30 s, not {count}"
        await asyncio.sleep(0.1)


async def _from_both_workers(http: aiohttp.ClientSession, base: str) -> int:
    """Requests on fresh connections until both workers have answered some (their
    request ids start with a prefix of their own); how many were sent."""
    prefixes: set[str] = set()
    sent = 0
    while len(prefixes) < 2:
        assert sent < 500, "one worker answered every connection"
        async with http.get(f"{base}/avatar/{ADELE}/48", headers={"Connection": "close"}) as resp:
            assert resp.status == 200
            prefixes.add(resp.headers["X-Request-Id"][:8])
        sent += 1
    return sent


async def test_a_scrape_shows_every_count_of_both_workers_within_the_flush_interval(
        fake_graph: Any, fake_idp: Any) -> None:
    async with serve(fake_graph, fake_idp, workers=2, server_drain_seconds="0") as server, \
            aiohttp.ClientSession() as http:
        sent = await _from_both_workers(http, server.base)
        await _until_answered(http, server.base, sent)
        # Whichever worker answers the next scrapes, they agree.
        for _ in range(4):
            async with http.get(server.base + "/metrics",
                                headers={"Connection": "close"}) as resp:
                assert _answered(await resp.text()) == (sent, sent)


async def test_counts_since_the_last_flush_survive_a_graceful_stop(
        fake_graph: Any, fake_idp: Any, tmp_path: Path) -> None:
    from prometheus_client import CollectorRegistry, generate_latest, multiprocess

    # The workers' files in a directory the supervisor does not remove when it exits.
    files = tmp_path / "metrics"
    files.mkdir()
    async with serve(fake_graph, fake_idp, workers=2, server_drain_seconds="0",
                     PROMETHEUS_MULTIPROC_DIR=str(files)) as server, \
            aiohttp.ClientSession() as http:
        sent = await _from_both_workers(http, server.base)
        server.process.send_signal(signal.SIGTERM)  # at once: well within a flush interval
        assert await asyncio.wait_for(server.process.wait(), timeout=30) == 0
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(files))  # type: ignore[no-untyped-call]
    assert _answered(generate_latest(registry).decode()) == (sent, sent)

async def _gauges(http: aiohttp.ClientSession, base: str) -> dict[str, float]:
    """The unlabelled avatarproxy samples of /metrics (summed over the workers' files)."""
    async with http.get(base + "/metrics", headers={"Connection": "close"}) as resp:
        text = await resp.text()
    return {name: float(value) for name, _, value in
            (line.partition(" ") for line in text.splitlines())
            if name.startswith("avatarproxy_") and "{" not in name}


async def _until_gauge(http: aiohttp.ClientSession, base: str, name: str,
                       value: float) -> dict[str, float]:
    deadline = time.monotonic() + 30
    while (gauges := await _gauges(http, base)).get(name) != value:
        assert time.monotonic() < deadline, f"{name} never {value}: {gauges.get(name)}"
        await asyncio.sleep(0.1)
    return gauges


async def test_with_a_secret_no_expiry_is_exported_and_the_purge_subscription_is(
        fake_graph: Any, fake_idp: Any, redis_proxy: FaultProxy) -> None:
    async with serve(fake_graph, fake_idp, workers=2, server_drain_seconds="0",
                     cache_redis_url=f"redis://127.0.0.1:{redis_proxy.port}/0") as server, \
            aiohttp.ClientSession() as http:
        gauges = await _until_gauge(http, server.base, "avatarproxy_purge_subscribed", 1)
        # A client secret has no expiry: nothing for the certificate alert to read.
        assert "avatarproxy_credential_expiry_timestamp_seconds" not in gauges
        # Redis goes away: each worker loses its subscription, and the pod says so.
        redis_proxy.target_port = free_port()
        redis_proxy.cut()
        await _until_gauge(http, server.base, "avatarproxy_purge_subscribed", 0)


async def test_with_a_certificate_its_expiry_is_exported_and_without_redis_no_subscription(
        fake_graph: Any, fake_idp: Any, tmp_path: Path) -> None:
    cert = make_client_certificate(tmp_path, "avatarproxy")
    fake_idp.register_certificate(cert.cert_pem)
    expiry = x509.load_pem_x509_certificate(cert.cert_pem.encode()).not_valid_after_utc
    async with serve(fake_graph, fake_idp, workers=2, server_drain_seconds="0",
                     auth_client_secret="", auth_certificate_path=str(cert.combined_file),
                     ) as server, aiohttp.ClientSession() as http:
        gauges = await _until_gauge(http, server.base,
                                    "avatarproxy_credential_expiry_timestamp_seconds",
                                    expiry.timestamp())
        assert "avatarproxy_purge_subscribed" not in gauges  # no Redis, no purge channel


# -- the start-up policy: a misconfiguration stops it, an outage is started through --

async def refused(env: dict[str, str]) -> tuple[int, str, str]:
    """``avatarproxy serve`` that is expected to stop: its status, stdout and stderr."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "avatarproxy", "serve", env=env, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, start_new_session=True)
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    finally:
        if process.returncode is None:  # it started serving: the assertions say so
            os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@pytest.mark.parametrize(("settings", "line"), [
    ({"auth_ca_file": "/nonexistent/ca.pem"}, "auth.ca_file: no such file: /nonexistent/ca.pem"),
    ({"AZURE_CLIENT_SECRET": "", "auth_client_secret_file": "/nonexistent/secret"},
     "auth.client_secret_file: no such file: /nonexistent/secret"),
    ({"cache_redis_url": "redis://:hunter2@127.0.0.1:41089:99/0"},
     "cache.redis_url: not a valid URL (host:port/db, port a number 1-65535): percent-encode "
     "a password's reserved characters, or use cache.redis_password_file"),
    # A password with an unencoded "/" (Azure's keys have them) ends the host early:
    # not a word of it may be shown.
    ({"cache_redis_url": "rediss://:AbC9+dEfXyZ/GhIjsecret@127.0.0.1:6380"},
     "cache.redis_url: not a valid URL (host:port/db, port a number 1-65535): percent-encode "
     "a password's reserved characters, or use cache.redis_password_file"),
])
async def test_a_misconfiguration_stops_start_up_with_one_line_before_any_worker(
        fake_graph: Any, fake_idp: Any, settings: dict[str, str], line: str) -> None:
    # Two workers (the default on two CPUs) used to print a traceback each.
    status, out, err = await refused(serve_env(fake_graph, fake_idp, free_port(), workers=2,
                                               **settings))
    assert (status, err.splitlines()) == (2, [f"avatarproxy: config: {line}"]), out + err
    assert "Traceback" not in out + err and "worker" not in out
    assert "hunter2" not in out + err and "AbC9" not in out + err


async def test_a_credential_the_authority_refuses_stops_start_up_with_one_line(
        fake_graph: Any, fake_idp: Any) -> None:
    env = serve_env(fake_graph, fake_idp, free_port(), workers=2,
                    AZURE_CLIENT_SECRET="not-the-secret-Zq81")
    status, out, err = await refused(env)
    assert status == 2, out + err  # it used to start, silently unable to fetch any photo
    [line] = err.splitlines()
    assert line.startswith("avatarproxy: config: auth.client_secret: token request refused: "
                           "invalid_client: AADSTS7000215: Invalid client secret provided; "
                           "compare it with the app registration"), line
    assert "Zq81" not in out + err and "Traceback" not in out + err


async def test_an_unreachable_authority_starts_degraded_and_serves_what_it_can(
        fake_graph: Any, fake_idp: Any, make_client: Any, redis_url: str) -> None:
    graph = fake_graph.graph
    graph.accept_token = fake_idp.issued.__contains__
    # Another replica cached Adele's photo in Redis earlier.
    async with (await make_client()).get(f"/avatar/{ADELE}/48") as resp:
        assert resp.headers["X-Avatar-Source"] == "photo"
    # The authority resets every connection: an egress or identity-provider blip.
    proxy = await FaultProxy.start(fake_idp.port, Faults(reset_after=0))
    authority = f"127.0.0.1:{proxy.port}"
    try:
        async with serve(fake_graph, fake_idp, workers=2, cache_redis_url=redis_url,
                         auth_authority=f"https://{authority}/{fake_idp.tenant}",
                         server_drain_seconds="0.2") as server, \
                aiohttp.ClientSession() as http:
            async with http.get(server.base + "/readyz") as resp:
                assert resp.status == 200  # initials and cached photos can be served
            graph.reset_requests()
            async with http.get(f"{server.base}/avatar/{ADELE}/48") as resp:
                assert (resp.status, resp.headers["X-Avatar-Source"]) == (200, "photo")
            assert graph.requests == []  # from Redis: no token needed
            async with http.get(f"{server.base}/avatar/{ALEX}/48") as resp:
                assert (resp.status, resp.headers["X-Avatar-Source"]) == (200, "initials")
            proxy.faults = NONE  # the authority answers again: photos, no restart
            deadline = time.monotonic() + 30
            while True:
                async with http.get(f"{server.base}/avatar/{ALEX}/48",
                                    headers={"Connection": "close"}) as resp:
                    if resp.headers["X-Avatar-Source"] == "photo":
                        break
                assert time.monotonic() < deadline, "no photo after the authority recovered"
                await asyncio.sleep(0.2)
            server.process.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(server.process.wait(), timeout=30) == 0
    finally:
        await proxy.close()
    messages = [str(line.get("message")) for line in server.output]
    degraded = [m for m in messages if m.startswith("start-up: degraded: no token: ")]
    assert len(degraded) == 1, messages  # said once, by the main process
    assert (f"auth.authority: OpenID discovery at https://{authority}/{fake_idp.tenant} "
            "failed: ") in degraded[0]
    assert f"check auth.authority and egress to {authority}" in degraded[0]
    assert not any("Traceback" in m for m in messages)
    [summary] = [m for m in messages if m.startswith("start-up: Graph")]
    redis_port = redis_url.rsplit(":", 1)[1].partition("/")[0]
    assert summary == (
        f"start-up: Graph {fake_graph.base_url}, authority {authority}/"
        f"{fake_idp.tenant}, Redis 127.0.0.1:{redis_port}, memory tier 64 MiB per "
        f"worker, 2 workers, listening on {server.base.removeprefix('http://')}")


async def test_a_password_redis_refuses_stops_start_up_with_one_line(
        fake_graph: Any, fake_idp: Any, redis_tls: Any, tmp_path: Path) -> None:
    wrong = tmp_path / "redis-password"
    wrong.write_text("not-the-password-Xy7\n")
    env = serve_env(fake_graph, fake_idp, free_port(), workers=2,
                    cache_redis_url=redis_tls.overrides["cache.redis_url"],
                    cache_redis_ca_file=redis_tls.overrides["cache.redis_ca_file"],
                    cache_redis_password_file=str(wrong))
    status, out, err = await refused(env)
    assert status == 2, out + err  # it used to start, silently without its shared cache
    [line] = err.splitlines()
    assert line.startswith("avatarproxy: config: cache.redis_password_file: authentication "
                           "failed ("), line
    assert "Xy7" not in out + err and "Traceback" not in out + err


async def test_a_clean_up_that_raises_at_stop_still_flushes_the_last_counts(
        caplog: pytest.LogCaptureFixture) -> None:
    from aiohttp import web
    from prometheus_client import REGISTRY

    from avatarproxy import metrics, ops
    from avatarproxy.lifecycle import serve_until_stopped

    labels = {"tier": "memory", "result": "miss"}
    metrics.flush()
    before = REGISTRY.get_sample_value("avatarproxy_cache_lookups_total", labels) or 0.0

    async def make_app() -> web.Application:
        app = web.Application()
        ops.add_routes(app, redis_configured=False)

        async def closes_badly(app: web.Application) -> AsyncIterator[None]:
            yield
            metrics.cache_lookup("memory", "miss")  # counted by the last clean-up
            raise RuntimeError("closing Redis failed")

        app.cleanup_ctx.append(closes_badly)
        return app

    settings = load_settings(env={}, overrides={
        "server.host": "127.0.0.1", "server.port": free_port(),
        "server.metrics_port": free_port(), "server.drain_seconds": 0})
    with caplog.at_level(logging.INFO, logger="avatarproxy.lifecycle"):
        serving = asyncio.create_task(serve_until_stopped(make_app, settings.server))
        while True:  # a log line, no event to await
            if any(r.message.startswith("Running on") for r in caplog.records):
                break
            await asyncio.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)  # to the loop's handler: a stop, not a kill
        with pytest.raises(RuntimeError, match="closing Redis failed"):
            await serving
    assert REGISTRY.get_sample_value("avatarproxy_cache_lookups_total", labels) == before + 1
    # Every other step too: the metrics port closed, the stop signals given back.
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", settings.server.metrics_port)
    assert not asyncio.get_running_loop().remove_signal_handler(signal.SIGTERM)
