"""``avatarproxy warm``: batches, rate cap, throttling, interruption and re-run."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp.test_utils import TestClient

from avatarproxy.app import create_app
from avatarproxy.config import Settings, load_settings
from avatarproxy.demo.people import FakePerson
from avatarproxy.demo.photos import portrait
from avatarproxy.errors import GraphUnavailable
from avatarproxy.models import Subject
from avatarproxy.warm import (
    BROWSER_ACCEPT,
    Pacer,
    WarmStats,
    all_users,
    listed,
    open_warmer,
)

SIZES = (48, 96)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


async def test_pacer_caps_the_rate_and_pauses_on_throttling() -> None:
    clock = FakeClock()
    pacer = Pacer(10, clock=clock, sleep=clock.sleep)
    for _ in range(30):
        await pacer.wait(1)
    assert clock.now == pytest.approx(2.0)  # a burst of 10, then 10 a second
    pacer.throttled(2.5)
    before = clock.now
    await pacer.wait(1)
    assert clock.now - before >= 2.5
    await pacer.wait(20)  # a whole batch counts as 20 requests
    before = clock.now
    await pacer.wait(1)
    assert clock.now - before >= 1.0
    pacer.throttled(None)
    pacer.throttled(None)  # no Retry-After: the pause grows
    before = clock.now
    await pacer.wait(1)
    assert clock.now - before >= 2.0
    assert pacer.requests == 53 and pacer.throttles == 3


@pytest.fixture
def tenant(fake_graph: Any, fake_idp: Any) -> Any:
    """The demo people plus 40 more with small photos, behind real msal tokens."""
    fake_graph.graph.accept_token = fake_idp.issued.__contains__
    photo = portrait(96, 96, "#224466", "#88aacc", "#eeddcc")
    for n in range(40):
        fake_graph.graph.add(FakePerson(f"user{n:02d}@contoso.com",
                                        f"00000000-0000-4000-8000-{n:012d}", f"User {n:02d}",
                                        photo=photo if n % 4 else None))
    return fake_graph


@pytest.fixture
def settings(tenant: Any, idp_settings: dict[str, Any], redis_url: str) -> Settings:
    return load_settings(env={}, overrides={**idp_settings, "cache.redis_url": redis_url})


def everyone(tenant: Any) -> list[Subject]:
    return [Subject(p.upn.lower()) for p in tenant.graph.people]


async def warm(settings: Settings, subjects: list[Subject] | None = None,
               progress: Callable[[WarmStats], None] = lambda s: None,
               stats: WarmStats | None = None) -> tuple[WarmStats, Pacer]:
    pacer = Pacer(10_000)
    stats = stats or WarmStats()
    async with open_warmer(settings, SIZES, pacer) as warmer:
        source = listed(subjects) if subjects is not None else all_users(warmer.graph)
        await warmer.run(source, stats, progress)
    return stats, pacer


def batches(tenant: Any) -> int:
    return tenant.graph.count(lambda r: r.method == "POST" and r.path.endswith("/$batch"))


async def test_warm_batches_metadata_and_fills_the_cache_the_service_reads(
        tenant: Any, settings: Settings, aiohttp_client: Any) -> None:
    people = everyone(tenant)
    with_photo = sum(p.photo is not None for p in tenant.graph.people)
    stats, _ = await warm(settings, people)
    assert (stats.photos, stats.initials, stats.failed) == (with_photo, len(people) - with_photo,
                                                            0)
    # Metadata only ever went in batches of up to 20: no single /photo GETs.
    assert not tenant.graph.count(lambda r: not r.batched and r.path.endswith("/photo"))
    assert batches(tenant) <= 2 * -(-len(people) // 20)
    tenant.graph.reset_requests()
    client: TestClient[Any, Any] = await aiohttp_client(create_app(settings))
    for person in tenant.graph.people:
        for size in SIZES:
            for accept in ("*/*", BROWSER_ACCEPT):
                async with client.get(f"/avatar/{person.upn.replace('#', '%23')}/{size}",
                                      headers={"Accept": accept}) as resp:
                    assert resp.status == 200
                    source = "photo" if person.photo is not None else "initials"
                    assert resp.headers["X-Avatar-Source"] == source
    # Every avatar, JPEG or what a browser negotiates, came from the warmed Redis.
    assert tenant.graph.requests == []


async def test_interrupted_warm_continues_where_it_stopped(
        tenant: Any, settings: Settings) -> None:
    people = everyone(tenant)
    stats = WarmStats()
    halfway = asyncio.Event()

    def progress(stats: WarmStats) -> None:
        if stats.done >= 25:
            halfway.set()

    task = asyncio.ensure_future(warm(settings, people, progress, stats))
    await halfway.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    first = {r.path for r in tenant.graph.requests if r.path.endswith("$value")}
    done_before = stats.photos + stats.initials
    assert 25 <= stats.done < len(people)

    tenant.graph.reset_requests()
    again, _ = await warm(settings, people)
    assert again.failed == 0
    assert again.cached >= done_before  # finished people are skipped, not refetched
    second = {r.path for r in tenant.graph.requests if r.path.endswith("$value")}
    # Photos fetched before the interruption are not fetched again (at most the few
    # people in flight at that moment get their remaining sizes).
    assert first and second and len(first & second) <= 4

    tenant.graph.reset_requests()
    third, _ = await warm(settings, people)
    assert third.cached == len(people)
    assert tenant.graph.requests == []  # all fresh and cached: not one Graph call


async def test_throttling_inside_a_batch_is_honoured_and_retried(
        tenant: Any, settings: Settings) -> None:
    people = everyone(tenant)[:20]
    tenant.graph.inject(429, times=3, headers={"Retry-After": "0.05"}, path_contains="/photo")
    stats, pacer = await warm(settings, people)
    assert stats.failed == 0 and stats.photos + stats.initials == 20
    assert pacer.throttles >= 1


async def test_all_follows_paging_and_skips_disabled_accounts(
        tenant: Any, settings: Settings) -> None:
    tenant.graph.page_size = 7
    tenant.graph.person("user01@contoso.com").account_enabled = False
    stats, _ = await warm(settings)
    assert stats.seen == len(tenant.graph.people) - 1
    assert tenant.graph.count("skiptoken=") >= 2
    assert tenant.graph.count("accountEnabled") >= 1


async def test_all_without_user_read_all_warms_everyone_and_says_so(
        tenant: Any, settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    tenant.graph.denied = {"User.Read.All"}
    tenant.graph.person("user01@contoso.com").account_enabled = False
    with caplog.at_level(logging.WARNING):
        stats, _ = await warm(settings)
    assert stats.seen == len(tenant.graph.people)
    assert any("needs User.Read.All" in r.getMessage() for r in caplog.records)


async def run_warm(tenant: Any, fake_idp: Any, redis_url: str, tmp_path: Path,
                   users: Path) -> tuple[int, str, str]:
    """The real command on ``users``: its status, stdout and stderr."""
    config = tmp_path / "c.toml"
    config.write_text(
        f'[graph]\nbase_url = "{tenant.base_url}"\n'
        f'[auth]\ntenant_id = "{fake_idp.tenant}"\nclient_id = "{fake_idp.client_id}"\n'
        f'client_secret = "{fake_idp.client_secret}"\nauthority = "{fake_idp.authority}"\n'
        f'ca_file = "{fake_idp.ca_file}"\n[cache]\nredis_url = "{redis_url}"\n')
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "avatarproxy", "warm", "--config", str(config),
        "--users", str(users), "--sizes", "48", "--formats", "jpeg", "--rate", "100",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_cli_prints_a_summary_and_exits_zero(
        tenant: Any, fake_idp: Any, redis_url: str, tmp_path: Path) -> None:
    users = tmp_path / "users.txt"
    users.write_text("# launch list\nadele.vance@contoso.com\n\nuser01@contoso.com\n"
                     "john_fabrikam.com#EXT#@contoso.onmicrosoft.com\n")
    status, out, err = await run_warm(tenant, fake_idp, redis_url, tmp_path, users)
    assert status == 0, err
    assert "warm: 3 people: 3 photos cached, 0 initials, 0 already cached, 0 failed" in out
    assert "[" in err and "3/3" in err  # the progress bar


async def test_a_refused_batch_falls_back_to_one_request_each_and_everyone_is_counted(
        tenant: Any, fake_idp: Any, redis_url: str, tmp_path: Path) -> None:
    # Graph (or a proxy before it) refuses every $batch with a 400.
    tenant.graph.inject(400, times=10**6, path_contains="/$batch")
    users = tmp_path / "launch.txt"
    users.write_text("adele.vance@contoso.com\nuser01@contoso.com\nuser00@contoso.com\n"
                     "adele.vance@contoso.com\n"  # listed twice: one person
                     "adele.vanse@contoso.com\n"  # a typo
                     "0badc0de-0000-4000-8000-000000000000\n"  # an object id nobody has
                     "not a upn!\n")
    status, out, err = await run_warm(tenant, fake_idp, redis_url, tmp_path, users)
    assert status == 1, err
    # 6 people, each in one count: 2 photos + 1 initials + 1 failed + 2 unknown.
    assert ("warm: 6 people: 2 photos cached, 1 initials, 0 already cached, 1 failed, "
            "2 unknown, 0 refused by the security policy") in out
    assert ("Graph refused $batch (batch: Graph 400 BadRequest: Bad request.): asking person "
            "by person") in err  # once, with Graph's own message
    assert err.count("Graph refused $batch") == 1
    for line in (5, 6):
        assert (f"avatarproxy: warm: {users}:{line}: unknown: no user has this "
                "userPrincipalName, object id or e-mail address") in err
    assert f"avatarproxy: warm: {users}:7: not a valid userPrincipalName" in err
    # Metadata and names were asked one by one (paced), then the photos fetched.
    assert tenant.graph.count(lambda r: not r.batched and r.path.endswith("/photo")) >= 5
    assert tenant.graph.count(lambda r: r.path.endswith("/$value")) >= 2


async def test_warm_applies_the_serving_policy_to_domains_guests_and_blocked_people(
        tenant: Any, idp_settings: dict[str, Any], redis_url: str) -> None:
    adele = tenant.graph.person("adele.vance@contoso.com")
    guest = tenant.find(lambda p: "#EXT#" in p.upn)
    pradeep = tenant.graph.add(FakePerson(
        "pradeep.gupta@contoso.com", "6d5c4b3a-2918-4776-8554-433221100fed", "Pradeep Gupta",
        photo=portrait(96, 96, "#222", "#999", "#c96"),
        proxy_addresses=("SMTP:pradeep.gupta@contoso.com", "smtp:pradeep@contoso.com")))
    kim = tenant.graph.add(FakePerson(
        "kim.akers@fabrikam.com", "2c3d4e5f-6a7b-4c8d-9e0f-1a2b3c4d5e6f", "Kim Akers",
        photo=portrait(96, 96, "#531", "#975", "#db9")))
    settings = load_settings(env={}, overrides={
        **idp_settings, "cache.redis_url": redis_url,
        "security.allowed_domains": ["contoso.com", "contoso.onmicrosoft.com"],
        "security.allow_guests": False,
        # Adele by object id, Pradeep by UPN: each is warmed below by another name.
        "security.blocked": [adele.object_id, "pradeep.gupta@contoso.com"]})
    names = ["adele.vance@contoso.com", guest.upn, "pradeep@contoso.com",
             "kim.akers@fabrikam.com", "alex.wilber@contoso.com"]
    stats, _ = await warm(settings, [Subject(n.lower()) for n in names])
    for person in (adele, guest, pradeep, kim):  # never fetched, so never cached
        assert not tenant.graph.count(lambda r, p=person: "/photo" in r.path and (
            p.object_id in r.path or quote(p.upn, safe="@") in r.path)), person.upn
    assert (stats.refused, stats.photos, stats.failed) == (4, 1, 0)
    assert tenant.graph.count("alex.wilber") >= 1


async def test_warm_refuses_an_object_id_whose_owner_the_rules_refuse(
        tenant: Any, idp_settings: dict[str, Any], redis_url: str) -> None:
    guest = tenant.find(lambda p: "#EXT#" in p.upn)
    alex = tenant.graph.person("alex.wilber@contoso.com")
    settings = load_settings(env={}, overrides={
        **idp_settings, "cache.redis_url": redis_url, "security.allow_guests": False})
    stats, _ = await warm(settings, [Subject(guest.object_id), Subject(alex.object_id)])
    assert (stats.refused, stats.photos, stats.failed) == (1, 1, 0)
    assert not tenant.graph.count(f"/users/{guest.object_id}/photos/")  # no download


async def test_warm_fetches_nothing_while_the_blocked_list_cannot_be_resolved(
        tenant: Any, idp_settings: dict[str, Any], redis_url: str) -> None:
    tenant.graph.inject(503, times=10**6, path_contains="mail,proxyAddresses")
    settings = load_settings(env={}, overrides={
        **idp_settings, "cache.redis_url": redis_url, "graph.retry_max_wait_seconds": 0.01,
        "security.blocked": ["87d349ed-44d7-43e1-9a83-5f2406dee5bd"]})
    with pytest.raises(GraphUnavailable, match=r"security\.blocked"):
        await warm(settings, everyone(tenant))
    assert not tenant.graph.count("/photo")


async def test_an_unknown_upn_is_counted_as_unknown_not_as_initials(
        tenant: Any, settings: Settings) -> None:
    known = [Subject("adele.vance@contoso.com"), Subject("user00@contoso.com")]
    stats, _ = await warm(settings, [*known, Subject("nobody.here@contoso.com")])
    assert (stats.photos, stats.initials, stats.unknown, stats.failed) == (1, 1, 1, 0)
    assert stats.unknown_keys == ["nobody.here@contoso.com"]
    assert stats.done == stats.seen == 3
