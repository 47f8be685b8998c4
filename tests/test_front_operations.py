"""The caching front and the service over time: how long the front keeps an
avatar, how a purge reaches it, what it serves while the service is slow or
down, that concurrent misses reach the service once, that the service still
tells clients apart, and what Prometheus sees. As in tests/test_front.py, the
front runs as deployed before the real service (tests/frontstack.py)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from front import BASE, container, start_exporter
from frontstack import ADELE, CHROME, PATH, MakeStack, until_age
from PIL import Image
from test_prometheus import until

# -- freshness, purge, outages -----------------------------------------------------

async def test_the_front_keeps_an_avatar_at_most_edge_max_age_then_revalidates(
        stack_for: MakeStack) -> None:
    s = await stack_for({"AVATARPROXY_EDGE_MAX_AGE_SECONDS": "2"})
    asked = time.monotonic()  # the copy is younger than the time since
    first = await s.get(PATH)
    started = time.monotonic()  # and older than the time since
    await s.get(PATH)
    if time.monotonic() - asked < 1.5:  # else the machine was too slow to tell
        assert len(s.reached(PATH)) == 1
    await until_age(started, 2.5)
    later = await s.get(PATH)
    assert (later.status, later.body) == (200, first.body)
    assert later.headers["Cache-Control"] == first.headers["Cache-Control"]  # the browser's
    revalidation = s.reached(PATH)[-1]
    assert revalidation.headers["If-None-Match"] == first.headers["ETag"]
    assert revalidation.status == 304  # from the service's memory


async def test_a_purge_reaches_the_front_within_edge_max_age(
        stack_for: MakeStack, fake_graph: Any, redis_url: str) -> None:
    s = await stack_for({"AVATARPROXY_EDGE_MAX_AGE_SECONDS": "1"}, cache__redis_url=redis_url,
                        cache__metadata_ttl_seconds=3600)
    first = await s.get(PATH)
    fake_graph.graph.set_photo(ADELE, Image.new("RGB", (648, 648), "#c00000"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AVATARPROXY_", "AZURE_"))}
    purge = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "avatarproxy", "purge", ADELE,
        env={**env, "AVATARPROXY_CACHE_REDIS_URL": redis_url},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    output, _ = await asyncio.wait_for(purge.communicate(), timeout=60)
    assert purge.returncode == 0, output
    # The front's copy is at most 1 s old: the new photo comes long before the
    # deadline (a front that kept the browser's hour would never show it).
    deadline = time.monotonic() + 30
    while (answer := await s.get(PATH)).headers["ETag"] == first.headers["ETag"]:
        assert time.monotonic() < deadline, "the purge never reached the front"
        await asyncio.sleep(0.2)
    assert answer.body != first.body


async def test_the_front_serves_what_it_holds_while_the_service_is_down(
        stack_for: MakeStack) -> None:
    s = await stack_for({"AVATARPROXY_EDGE_MAX_AGE_SECONDS": "1"})
    first = await s.get(PATH)
    started = time.monotonic()
    await s.server.close()
    await until_age(started, 1.2)
    for _ in range(3):
        answer = await s.get(PATH)
        assert (answer.status, answer.headers["ETag"]) == (200, first.headers["ETag"])
    cold = await s.get(f"/avatar/{ADELE}/64")
    assert cold.status == 503 and cold.headers["Cache-Control"] == "no-store"


async def test_the_front_serves_a_copy_at_most_stale_if_error_seconds_after_it_went_stale(
        stack_for: MakeStack) -> None:
    s = await stack_for({"AVATARPROXY_EDGE_MAX_AGE_SECONDS": "1",
                         "AVATARPROXY_EDGE_STALE_IF_ERROR_SECONDS": "3"})
    asked = time.monotonic()  # the copy is younger than the time since
    first = await s.get(PATH)
    made = time.monotonic()  # and older than the time since: stale 1 s later
    await s.server.close()
    if made - asked < 1.0:  # else the machine was too slow to tell
        for at in (1.2, 2.5):  # each fallback to the kept copy must not restart its clock
            await until_age(made, at)
            kept = await s.get(PATH)
            assert (kept.status, kept.headers["ETag"]) == (200, first.headers["ETag"])
            # Its age since the service made it, not since the front kept it.
            assert int(kept.headers["Age"]) >= int(at), (at, kept.headers["Age"])
            assert kept.headers["Date"] == first.headers["Date"]
            assert not [h for h in kept.headers if h.lower().startswith("x-front-")]
    # 1 s fresh, then 3 s of stale-if-error: gone, whatever the fallbacks.
    await until_age(made, 4.3)
    gone = await s.get(PATH)
    assert (gone.status, gone.headers["Cache-Control"]) == (503, "no-store")


async def test_a_client_over_its_rate_gets_its_stand_in_alone_and_leaves_the_copy_as_it_was(
        stack_for: MakeStack, fake_graph: Any) -> None:
    # No memory tier: the service asks Graph each time, so a new photo is what it
    # answers next (as after `avatarproxy purge`).
    s = await stack_for({"AVATARPROXY_EDGE_MAX_AGE_SECONDS": "1"}, cache__memory_max_bytes=0,
                        security__rate_limit_per_second=0.01, security__rate_limit_burst=4)
    first = await s.get(PATH, Accept=CHROME, X_Forwarded_For="198.51.100.1")
    started = time.monotonic()
    over = "203.0.113.66"  # spends its bucket, each size a render
    for size in range(40, 60):
        answer = await s.get(f"/avatar/{ADELE}/{size}", Accept=CHROME, X_Forwarded_For=over)
        if answer.headers["Cache-Control"] == "no-store":
            break
    else:
        raise AssertionError("the client was never limited")
    fake_graph.graph.set_photo(ADELE, Image.new("RGB", (648, 648), "#c00000"))
    await until_age(started, 1.2)
    # The copy is stale: the front asks the service about it, which limits this client.
    # Its stand-in is for it alone: not the copy (which it would keep for everyone).
    for _ in range(2):
        mine = await s.get(PATH, Accept=CHROME, X_Forwarded_For=over)
        assert (mine.status, mine.headers["X-Avatar-Source"], mine.headers["Cache-Control"]) == (
            200, "initials", "no-store")
        assert "X-Avatar-Stand-In" not in mine.headers  # the front's business
    # The next browser's request asks about the copy again: the new photo.
    other = await s.get(PATH, Accept=CHROME, X_Forwarded_For="198.51.100.2")
    assert (other.headers["X-Avatar-Source"], other.status) == ("photo", 200)
    assert other.headers["ETag"] != first.headers["ETag"]
    asked = [(r.status, r.cache_control, r.headers.get("If-None-Match")) for r in s.reached(PATH)]
    copy = first.headers["ETag"]
    assert asked == [(200, first.headers["Cache-Control"], None),
                     *[(200, "no-store", copy), (200, "no-store", None)] * 2,
                     (200, first.headers["Cache-Control"], copy)]


async def test_a_client_never_gets_a_304_the_service_did_not_give(
        stack_for: MakeStack) -> None:
    # The front holds nothing for what it passes, nor for an avatar it lacks: the
    # If-None-Match is the client's, and while the service is down it gets a 503.
    s = await stack_for()
    await s.server.close()
    for path, method in (("/readyz", "GET"), ("/", "GET"), (PATH, "OPTIONS"), (PATH, "GET")):
        answer = await s.get(path, method, If_None_Match='"x"')
        assert (answer.status, answer.headers["Cache-Control"]) == (503, "no-store"), path


async def test_concurrent_misses_for_one_url_reach_the_service_once(
        stack_for: MakeStack, fake_graph: Any) -> None:
    s = await stack_for()
    fake_graph.graph.latency = 0.3  # every request arrives while the first is answered
    try:
        answers = await asyncio.gather(*(s.get(PATH, Accept=CHROME) for _ in range(20)))
    finally:
        fake_graph.graph.latency = 0.0
    assert {(a.status, a.headers["ETag"]) for a in answers} == {(200, answers[0].headers["ETag"])}
    assert len(s.reached(PATH)) == 1


# -- clients stay distinguishable ----------------------------------------------------

async def test_the_service_tells_clients_apart_behind_the_front(stack_for: MakeStack) -> None:
    # What the ingress controller sends: the client's address in X-Forwarded-For.
    # The front appends the controller's (here loopback), the shipped
    # server.trusted_proxies believes both hops, so each client has its bucket.
    s = await stack_for(security__rate_limit_per_second=0.01, security__rate_limit_burst=4)
    limited = None
    for size in range(40, 60):  # each size a render: a token of client A's bucket
        answer = await s.get(f"/avatar/{ADELE}/{size}", X_Forwarded_For="203.0.113.1")
        if answer.headers["Cache-Control"] == "no-store":
            limited = size
            break
    assert limited is not None, "client A was never limited"
    assert s.reached(f"/avatar/{ADELE}/{limited}")[0].headers["X-Forwarded-For"] == (
        "203.0.113.1, 127.0.0.1")
    other = await s.get(f"/avatar/{ADELE}/{limited + 1}", X_Forwarded_For="203.0.113.2")
    assert other.headers["X-Avatar-Source"] == "photo", "client B shared A's bucket"


async def test_idle_connections_outlive_the_ingress_keepalive(stack_for: MakeStack) -> None:
    # ingress-nginx keeps idle connections to a backend 60 s (upstream-keepalive-timeout):
    # were the front to close one first, the ingress could send on it as it closes, a 502.
    args = container("front")["args"]
    idle = next(int(a.split("=", 1)[1]) for a in args if a.startswith("timeout_idle="))
    assert idle > 60
    s = await stack_for()
    reader, writer = await asyncio.open_connection("127.0.0.1", s.front.port)
    try:
        for pause in (0.0, 6.0):  # past Varnish's default of 5 s
            await asyncio.sleep(pause)
            writer.write(b"GET /front/healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert head.startswith(b"HTTP/1.1 200"), head
            length = re.search(rb"(?i)\r\nContent-Length: *(\d+)", head)
            assert length is not None
            await reader.readexactly(int(length.group(1)))
    finally:
        writer.close()


# -- metrics ----------------------------------------------------------------------

KEEP = 'varnish_backend_req{backend=~"(.+\\\\.)?keep"}'  # the front asking itself: stale kept


async def test_prometheus_sees_the_fronts_hits_misses_revalidations_and_stale_answers(
        stack_for: MakeStack, prometheus_for: Any, tmp_path: Path) -> None:
    s = await stack_for({"AVATARPROXY_EDGE_MAX_AGE_SECONDS": "1"})
    exporter = await asyncio.to_thread(start_exporter, s.front, tmp_path)
    try:
        prometheus = prometheus_for(f"127.0.0.1:{exporter.port}")
        await s.get(PATH)  # a miss
        started = time.monotonic()
        await s.get(PATH)  # a hit
        await until_age(started, 1.2)
        await s.get(PATH)  # revalidated: a 304 from the service
        await s.server.close()
        await until_age(time.monotonic(), 1.2)
        assert (await s.get(PATH)).status == 200  # stale: the service is down
        # What the dashboard's "answers by outcome" panel adds up (without rate()).
        outcomes = {"varnish_main_cache_hit": 1, "varnish_main_cache_miss": 2,
                    f'sum(varnish_main_fetch{{type="304"}}) - sum({KEEP})': 1,
                    f"sum({KEEP}) + sum(varnish_main_cache_hit_grace)": 1}
        async with aiohttp.ClientSession() as http:
            await until(http, prometheus, 'up{job="avatarproxy"}', lambda v: v == 1)
            for promql, least in outcomes.items():
                await until(http, prometheus, promql, lambda v, least=least: v >= least)
            async with http.get(f"http://127.0.0.1:{exporter.port}/metrics") as resp:
                exported = set(re.findall(r"^(varnish_\w+)", await resp.text(), re.MULTILINE))
    finally:
        await asyncio.to_thread(exporter.stop)
    # The dashboard and the alert rules ask only for what the exporter exports.
    dashboard = json.loads((BASE.parent.parent / "grafana" / "avatarproxy.json").read_text())
    rules = yaml.safe_load((BASE / "prometheusrule.yaml").read_text())
    queries = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    queries += [r["expr"] for g in rules["spec"]["groups"] for r in g["rules"]]
    queried = {name for q in queries for name in re.findall(r"varnish_\w+", q)}
    assert queried and queried <= exported, queried - exported


async def test_a_max_age_of_zero_revalidates_every_request(stack_for: MakeStack) -> None:
    # Caching off, the front kept: each request asks the service (a 304 for its copy).
    # (The copy lives a millisecond: a TTL of 0 would hide it from revalidation.)
    s = await stack_for({"AVATARPROXY_EDGE_MAX_AGE_SECONDS": "0"})
    first = await s.get(PATH)
    for _ in range(2):
        await asyncio.sleep(0.01)
        assert (await s.get(PATH)).body == first.body
    assert [r.status for r in s.reached(PATH)] == [200, 304, 304]
