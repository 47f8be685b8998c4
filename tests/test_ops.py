"""What operators see: /metrics, /healthz, /readyz, logs, credential rotation, CPUs."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from appclient import Client, MakeClient
from loopback import free_port
from prometheus_client import REGISTRY, CollectorRegistry, Histogram
from prometheus_client.parser import text_string_to_metric_families

from avatarproxy import logs, metrics
from avatarproxy.lifecycle import usable_cpus
from avatarproxy.logs import LoggingSettings
from avatarproxy.ops import READINESS, metrics_app
from avatarproxy.security import signature

OPERATIONS = Path(__file__).resolve().parent.parent / "docs" / "operations.md"
ADELE = "adele.vance@contoso.com"
ALEX = "alex.wilber@contoso.com"


async def scrape(client: Client) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    async with client.get("/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str,
          **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_a_flushed_tally_is_what_observing_each_value_gives() -> None:
    # Counts are tallied per process and flushed into prometheus-client's own bucket
    # values: the exposition must be what observing every value would have given.
    values = [0.0004, 0.001, 0.0011, 0.004, 0.03, 0.5, 1.0, 2.5, 9.0, 10.5, 60.0]
    for seconds in values:
        metrics.imaging("tally-check", seconds)
    metrics.flush()
    name = "avatarproxy_imaging_duration_seconds"
    got = {(s.name.removeprefix(name), s.labels.get("le")): s.value
           for family in REGISTRY.collect() if family.name == name for s in family.samples
           if s.labels.get("operation") == "tally-check" and not s.name.endswith("_created")}
    bounds = [float(le) for suffix, le in got if suffix == "_bucket" and le != "+Inf"]
    assert len(bounds) > 5
    reference = Histogram("reference", "", buckets=bounds, registry=CollectorRegistry())
    for seconds in values:
        reference.observe(seconds)
    expected = {(s.name.removeprefix("reference"), s.labels.get("le")): s.value
                for s in reference.collect()[0].samples if not s.name.endswith("_created")}
    assert got == expected


async def test_metrics_count_requests_cache_graph_and_tokens_without_naming_people(
        make_client: MakeClient) -> None:
    client = await make_client()
    before = await scrape(client)
    for _ in range(2):
        async with client.get(f"/avatar/{ADELE}/48") as resp:
            assert resp.status == 200
    async with client.get("/avatar/not-a-user!/48") as resp:
        assert resp.status == 400
    after = await scrape(client)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    route = "/avatar/{subject}/{size}"
    assert delta("avatarproxy_requests_total", route=route, method="GET",
                 status_class="2xx", source="photo") == 2
    assert delta("avatarproxy_requests_total", route=route, method="GET",
                 status_class="4xx", source="none") == 1
    assert delta("avatarproxy_request_duration_seconds_count", route=route) == 3
    assert delta("avatarproxy_graph_requests_total", operation="metadata", status="200") == 1
    assert delta("avatarproxy_graph_requests_total", operation="photo", status="200") == 1
    assert delta("avatarproxy_token_acquisitions_total", result="success") == 1
    assert delta("avatarproxy_cache_lookups_total", tier="memory", result="hit") >= 2
    assert delta("avatarproxy_cache_lookups_total", tier="redis", result="miss") >= 1
    assert delta("avatarproxy_imaging_duration_seconds_count", operation="encode") == 1
    assert value(after, "avatarproxy_cache_memory_bytes") > 0
    assert value(after, "avatarproxy_dependency_up", dependency="redis") == 1
    # Declared now, incremented by the throttling work: present from the start.
    assert ("avatarproxy_graph_retry_after_seconds_total", frozenset()) in after
    async with client.get("/metrics") as resp:
        text = await resp.text()
    assert "adele" not in text and "not-a-user" not in text


async def test_a_memory_hit_counts_two_memory_hits_and_nothing_else(
        make_client: MakeClient) -> None:
    client = await make_client()
    async with client.get(f"/avatar/{ADELE}/48") as resp:  # cold: fills the memory tier
        assert resp.status == 200
    before = await scrape(client)
    async with client.get(f"/avatar/{ADELE}/48") as resp:
        assert resp.status == 200
    after = await scrape(client)
    lookups = {key[1]: after[key] - before.get(key, 0.0) for key in after
               if key[0] == "avatarproxy_cache_lookups_total"
               and after[key] != before.get(key, 0.0)}
    # Metadata and image, each found once: no Redis, no double-counted lookups.
    assert lookups == {frozenset({("tier", "memory"), ("result", "hit")}): 2}
    async with client.get(f"/avatar/{ADELE}/40") as resp:  # new size, same 48 px source
        assert resp.status == 200
    later = await scrape(client)
    lookups = {key[1]: later[key] - after.get(key, 0.0) for key in later
               if key[0] == "avatarproxy_cache_lookups_total"
               and later[key] != after.get(key, 0.0)}
    # The fast path gives up on the image; the usual path counts each lookup once:
    # metadata and source found in memory, the 40 px image in neither tier.
    assert lookups == {frozenset({("tier", "memory"), ("result", "hit")}): 2,
                       frozenset({("tier", "memory"), ("result", "miss")}): 1,
                       frozenset({("tier", "redis"), ("result", "miss")}): 1}


async def test_graph_throttling_and_errors_are_counted_by_status(
        make_client: MakeClient, fake_graph: Any) -> None:
    client = await make_client()
    before = await scrape(client)
    fake_graph.graph.inject(429, headers={"Retry-After": "1"})
    async with client.get(f"/avatar/{ADELE}/48") as resp:
        assert resp.headers["X-Avatar-Source"] == "initials"
    after = await scrape(client)
    labels = {"operation": "metadata", "status": "429"}
    assert (value(after, "avatarproxy_graph_throttled_total", **labels)
            - value(before, "avatarproxy_graph_throttled_total", **labels)) == 1
    reason = {"reason": "GraphUnavailable"}
    assert (value(after, "avatarproxy_initials_fallback_total", **reason)
            - value(before, "avatarproxy_initials_fallback_total", **reason)) == 1


async def test_probes_answer_without_calling_graph(make_client: MakeClient,
                                                   fake_graph: Any) -> None:
    client = await make_client()
    async with client.get("/healthz") as resp:
        assert (resp.status, await resp.text()) == (200, "ok\n")
    async with client.get("/readyz") as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body["ready"] is True
    assert set(body["dependencies"]) == {"redis", "token", "graph"}
    assert fake_graph.graph.requests == []


async def test_with_a_metrics_port_metrics_leave_the_avatar_port(
        make_client: MakeClient, aiohttp_client: Any) -> None:
    client = await make_client(server__metrics_port=free_port())
    metrics = await aiohttp_client(metrics_app(client.app[READINESS]))
    before = await scrape(metrics)
    async with client.get(f"/avatar/{ADELE}/48") as resp:
        assert resp.status == 200
    async with client.get("/metrics") as resp:
        assert resp.status == 404  # what the ingress controller forwards has none
    async with client.get("/readyz") as resp:
        assert resp.status == 200  # load balancers probing the serving port still can
    after = await scrape(metrics)
    route = "/avatar/{subject}/{size}"
    assert value(after, "avatarproxy_requests_total", route=route, method="GET",
                 status_class="2xx", source="photo") - value(
        before, "avatarproxy_requests_total", route=route, method="GET",
        status_class="2xx", source="photo") == 1
    for path in ("/healthz", "/readyz"):
        async with metrics.get(path) as resp:
            assert resp.status == 200, path
            assert resp.headers["X-Content-Type-Options"] == "nosniff"
            assert "Server" not in resp.headers
    client.app[READINESS].ready = False  # SIGTERM: the one readiness, on both ports
    async with metrics.get("/readyz") as resp:
        assert resp.status == 503
    async with metrics.get(f"/avatar/{ADELE}/48") as resp:
        assert resp.status == 404


async def test_a_dead_redis_is_reported_but_never_fails_readiness(
        make_client: MakeClient) -> None:
    client = await make_client(**{"cache.redis_url": "redis://127.0.0.1:1/0",
                                  "cache.redis_timeout_seconds": 0.2})
    async with client.get(f"/avatar/{ADELE}/48") as resp:
        assert resp.status == 200  # served from Graph
    async with client.get("/readyz") as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body == {"ready": True, "dependencies": {
        "redis": "failing", "token": "ok", "graph": "ok"}}
    samples = await scrape(client)
    assert value(samples, "avatarproxy_dependency_up", dependency="redis") == 0


@pytest.fixture
def json_logs(capsys: pytest.CaptureFixture[str]) -> Iterator[Callable[..., list[dict[str, Any]]]]:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, logs._settings)

    def configure(**options: Any) -> list[dict[str, Any]]:
        settings = {"format": "json", "level": "info", "access": 1.0, "log_upn": False}
        settings.update(options)
        logs.configure(LoggingSettings(**settings))
        return []

    try:
        yield configure
    finally:
        root.handlers[:], _, logs._settings = saved
        root.setLevel(saved[1])


def lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line]


async def test_access_lines_are_json_with_request_id_and_a_hashed_upn(
        make_client: MakeClient, json_logs: Callable[..., Any],
        capsys: pytest.CaptureFixture[str]) -> None:
    client = await make_client()
    json_logs()
    async with client.get(f"/avatar/{ADELE}/48", headers={"X-Request-Id": "abc-123"}) as resp:
        assert resp.headers["X-Request-Id"] == "abc-123"
    access = [line for line in lines(capsys) if line["logger"] == "avatarproxy.access"]
    assert len(access) == 1
    line = access[0]
    assert line["request_id"] == "abc-123"
    assert (line["route"], line["status"], line["source"]) == (
        "/avatar/{subject}/{size}", 200, "photo")
    assert line["subject"].startswith("sha256:") and "adele" not in json.dumps(line)
    assert isinstance(line["duration_ms"], float) and line["time"].endswith("+00:00")


async def test_log_upn_and_access_sampling_are_options(
        make_client: MakeClient, json_logs: Callable[..., Any],
        capsys: pytest.CaptureFixture[str]) -> None:
    client = await make_client()
    json_logs(log_upn=True)
    async with client.get(f"/avatar/{ADELE}/48"):
        pass
    assert [line["subject"] for line in lines(capsys)
            if line["logger"] == "avatarproxy.access"] == [ADELE]
    json_logs(access=0.0)
    async with client.get(f"/avatar/{ADELE}/48"):
        pass
    assert [line for line in lines(capsys) if line["logger"] == "avatarproxy.access"] == []


async def test_a_rotated_secret_file_is_used_without_a_restart(
        make_client: MakeClient, fake_idp: Any, tmp_path: Path) -> None:
    secret = tmp_path / "client-secret"
    secret.write_text(fake_idp.client_secret + "\n")
    client = await make_client(**{"auth.client_secret": "",
                                  "auth.client_secret_file": str(secret)})
    async with client.get(f"/avatar/{ADELE}/48") as resp:
        assert resp.headers["X-Avatar-Source"] == "photo"
    # Rotation: the IdP accepts only the new secret, old tokens are revoked,
    # and Kubernetes has updated the mounted file.
    fake_idp.client_secret = "rotated-" + fake_idp.client_secret
    fake_idp.revoke_all()
    secret.write_text(fake_idp.client_secret)
    async with client.get(f"/avatar/{ADELE}/64") as resp:
        assert resp.headers["X-Avatar-Source"] == "photo"


@pytest.mark.parametrize(("files", "expected"), [
    ({"cpu.max": "150000 100000\n"}, 2),
    ({"cpu.max": "50000 100000\n"}, 1),
    ({"cpu.max": "max 100000\n"}, None),
    ({"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1),
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
    ({}, None),
])
def test_workers_default_to_the_cpus_the_container_may_use(
        tmp_path: Path, files: dict[str, str], expected: int | None) -> None:
    import os

    for name, text in files.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text)
    affinity = len(os.sched_getaffinity(0))
    assert usable_cpus(tmp_path) == (min(expected, affinity) if expected else affinity)


async def test_rate_limited_answers_are_counted_as_initials_fallbacks(
        make_client: MakeClient) -> None:
    client = await make_client(**{"security.rate_limit_per_second": 0.001,
                                  "security.rate_limit_burst": 1})
    before = await scrape(client)
    sources = []
    for upn in (ADELE, "alex.wilber@contoso.com", "megan.bowen@contoso.com"):
        async with client.get(f"/avatar/{upn}/48") as resp:
            assert resp.status == 200
            sources.append((resp.headers["X-Avatar-Source"], resp.headers["Cache-Control"]))
    after = await scrape(client)
    limited = sources.count(("initials", "no-store"))
    assert limited >= 2  # the bucket held one miss: the later people were refused
    assert value(after, "avatarproxy_initials_fallback_total", reason="rate_limited") - value(
        before, "avatarproxy_initials_fallback_total", reason="rate_limited") == limited


# -- the day-to-day commands, run as operators run them -----------------------------

async def avatarproxy(*args: str, **env: str) -> tuple[int, str, str]:
    """``python -m avatarproxy ARGS`` with only ``env`` configured: status, stdout, stderr."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("AVATARPROXY_", "AZURE_"))}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "avatarproxy", *args, env={**clean, **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_sign_replaces_a_sig_and_refuses_what_the_service_would(
        make_client: MakeClient) -> None:
    keys = {"AVATARPROXY_SECURITY_URL_SIGNING_KEYS": "current-key,retired-key"}
    status, out, err = await avatarproxy(
        "sign", f"https://avatars.intranet/avatar/{ADELE}/48?v=3&sig=stale", **keys)
    assert status == 0, err
    sig = signature("current-key", f"/avatar/{ADELE}/48")
    # One sig, the new one: a second sig makes the service answer 400.
    assert out.strip() == f"https://avatars.intranet/avatar/{ADELE}/48?v=3&sig={sig}"
    client = await make_client(**{"security.url_signing_keys": ["current-key"]})
    async with client.get(out.strip().removeprefix("https://avatars.intranet")) as resp:
        assert (resp.status, resp.headers["X-Avatar-Source"]) == (200, "photo")
    for url, reason in [
            (f"avatar/{ADELE}/48", "not an avatar path"),  # no leading /
            (f"/photos/{ADELE}/48", "not an avatar path"),
            (f"/avatar/{ADELE}/48/extra", "not an avatar path"),
            ("/avatar/not-a-person/48", "not a valid userPrincipalName or object id"),
            ("/avatar/group/not-a-guid/48", "not a valid group object id"),
            (f"/avatar/{ADELE}/99999", "size"),
            (f"/avatar/{ADELE}/48?format=gif", "format must be one of")]:
        status, out, err = await avatarproxy("sign", url, **keys)
        assert (status, out) == (2, ""), (url, out, err)
        assert err.startswith("avatarproxy: sign: URL: ") and reason in err, (url, err)
        assert "Traceback" not in err


async def test_purge_names_a_bad_argument_and_purges_the_others(
        make_client: MakeClient, redis_url: str) -> None:
    client = await make_client()
    for upn in (ADELE, ALEX):
        async with client.get(f"/avatar/{upn}/48") as resp:
            assert resp.headers["X-Avatar-Source"] == "photo"
    status, out, err = await avatarproxy("purge", ADELE, "adele vance", ALEX,
                                         AVATARPROXY_CACHE_REDIS_URL=redis_url)
    assert status == 1  # not everything asked for was done
    assert err.splitlines() == [
        "avatarproxy: purge: 'adele vance': not a valid userPrincipalName or object id"]
    assert "config" not in err  # an argument, not the configuration
    assert [line.split(":")[0] for line in out.splitlines()] == [ADELE, ALEX]
    store = aioredis.Redis.from_url(redis_url)
    try:
        left = [key async for key in store.scan_iter(match="*")]
    finally:
        await store.aclose()
    assert not any(ADELE.encode() in key or ALEX.encode() in key for key in left)


async def test_purge_help_says_who_is_told_and_who_keeps_a_copy() -> None:
    status, out, _ = await avatarproxy("purge", "--help")
    text = " ".join(out.split())
    assert status == 0
    assert "tells the running replicas" in text
    assert "browsers and proxies keep theirs until cache.browser_max_age" in text


async def test_version_and_every_command_in_the_help_and_the_readme() -> None:
    from avatarproxy import __version__
    from avatarproxy.cli import _parser

    status, out, _ = await avatarproxy("--version")
    assert (status, out.strip()) == (0, f"avatarproxy {__version__}")
    commands = next(action for action in _parser()._actions
                    if isinstance(action, argparse._SubParsersAction)).choices
    status, out, _ = await avatarproxy("--help")
    description = " ".join(out.split()).partition("positional arguments")[0]
    readme = await asyncio.to_thread(OPERATIONS.read_text)
    section = readme.partition("## Operator commands")[2].partition("\n## ")[0]
    for command in commands:
        assert f"({command})" in description, command
        assert f"| `{command}` |" in section, command


async def test_a_flush_that_fails_is_logged_and_the_flushing_goes_on(
        caplog: pytest.LogCaptureFixture) -> None:
    labels = {"tier": "memory", "result": "hit"}
    metrics.flush()
    before = REGISTRY.get_sample_value("avatarproxy_cache_lookups_total", labels) or 0.0
    metrics._count(metrics.CACHE_LOOKUPS, ("memory",))  # a label short: that flush raises
    flushing = asyncio.create_task(metrics.flushing(every=0.01))
    try:
        async with asyncio.timeout(30):  # a log line, then a sample: no event to await
            while True:
                if any(r.message.startswith("flushing the metrics failed")
                       for r in caplog.records):
                    break
                await asyncio.sleep(0.01)
            metrics.cache_lookup("memory", "hit")
            while True:  # flushed by the same task, which went on
                if REGISTRY.get_sample_value("avatarproxy_cache_lookups_total",
                                             labels) == before + 1:
                    break
                await asyncio.sleep(0.01)
        assert not flushing.done()
    finally:
        flushing.cancel()
