"""Security behaviour, end to end over HTTP against the fake Graph and a real Redis:
signed URLs, allowed domains and guests, blocked people, the per-client limit
on cache misses, takedown with ``avatarproxy purge``, headers, strict options."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import logging
import socket
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from appclient import MakeClient as Serve
from appclient import client_factory, get
from loopback import free_port
from PIL import Image
from redisservers import OTHER_PREFIX, Topology

from avatarproxy.app import create_app
from avatarproxy.cache import SCHEMA_VERSION
from avatarproxy.cli import main
from avatarproxy.config import load_settings
from avatarproxy.graph.auth import StaticTokenProvider
from avatarproxy.purge import LISTENER
from avatarproxy.ratelimit import RateLimiter
from avatarproxy.redis.coordination import Coordination
from avatarproxy.security import ClientAddress, Policy, sign_url, signature

ADELE = "adele.vance@contoso.com"  # has a photo
ALEX = "alex.wilber@contoso.com"  # has a photo
KEY, OLD_KEY = "k1-" + "x" * 29, "k0-" + "y" * 29


@pytest.fixture
def serve(aiohttp_client: Any, fake_graph: Any, redis_url: str) -> Serve:
    """A client to a fresh service on the fake Graph and the shared Redis."""
    return client_factory(aiohttp_client, {"graph.base_url": fake_graph.base_url,
                                           "cache.redis_url": redis_url},
                          tokens=StaticTokenProvider("static-token"))


async def redis_keys(url: str) -> set[str]:
    client = aioredis.Redis.from_url(url)
    try:
        return {k.decode() for k in await client.keys("*")}
    finally:
        await client.aclose()


# -- signed URLs -----------------------------------------------------------------

def test_signature_is_urlsafe_base64_of_hmac_sha256_over_the_path() -> None:
    sig = signature("secret", "/avatar/adele.vance@contoso.com/48")
    assert len(sig) == 43 and "=" not in sig and "+" not in sig and "/" not in sig
    assert sig != signature("secret", "/avatar/adele.vance@contoso.com/96")
    assert sig != signature("other", "/avatar/adele.vance@contoso.com/48")


async def test_unsigned_or_badly_signed_requests_get_403_without_cache_or_graph(
        serve: Serve, fake_graph: Any, redis_url: str) -> None:
    client = await serve(security__url_signing_keys=[KEY])
    good = sign_url(KEY, f"/avatar/{ADELE}/48")
    assert (await get(client, good))[0] == 200  # cached now, in memory and Redis
    fake_graph.graph.reset_requests()
    keys = await redis_keys(redis_url)
    wrong = signature(KEY, f"/avatar/{ADELE}/96")
    for path in (f"/avatar/{ADELE}/48", f"/avatar/{ADELE}/48?sig=", f"/avatar/{ADELE}/48?sig=x",
                 f"/avatar/{ADELE}/48?sig={wrong}", f"/avatar/{ADELE}/48?sig={wrong}=",
                 f"/avatar/{ALEX}/48?sig={good.rsplit('=', 1)[1]}",
                 "/avatar/not-a-upn/48"):
        status, headers, body = await get(client, path)
        assert status == 403, path
        assert headers["Content-Type"].startswith("text/plain")
        assert body in (b"signature required\n", b"bad signature\n")
    assert fake_graph.graph.requests == []
    assert await redis_keys(redis_url) == keys


async def test_signed_urls_survive_cache_busters_and_key_rotation(serve: Serve) -> None:
    client = await serve(security__url_signing_keys=[KEY, OLD_KEY])
    for key in (KEY, OLD_KEY):
        status, headers, _ = await get(client, sign_url(key, f"/avatar/{ADELE}/48?v=17"))
        assert status == 200 and headers["X-Avatar-Source"] == "photo"
    assert (await get(client, sign_url("retired", f"/avatar/{ADELE}/48")))[0] == 403


async def test_a_signature_verifies_only_in_its_canonical_spelling(serve: Serve) -> None:
    # 43 base64 characters carry 258 bits for 256: the last one's two low bits
    # are unused, and a "=" is padding. Other spellings decode to the same bytes
    # and used to verify, so one signed URL had several forms.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    path = f"/avatar/{ADELE}/48"
    sig = signature(KEY, path)
    last = alphabet.index(sig[-1])
    others = [sig + "=", *(sig[:-1] + alphabet[last ^ bits] for bits in (1, 2, 3))]
    for other in others:
        assert base64.urlsafe_b64decode(other.rstrip("=") + "=") \
            == base64.urlsafe_b64decode(sig + "=")
    client = await serve(security__url_signing_keys=[KEY])
    assert (await get(client, f"{path}?sig={sig}"))[0] == 200
    for other in others:
        status, _, body = await get(client, f"{path}?sig={other}")
        assert (status, body) == (403, b"bad signature\n"), other


async def test_guest_urls_sign_over_the_decoded_path(serve: Serve, fake_graph: Any) -> None:
    guest = fake_graph.find(lambda p: "#EXT#" in p.upn.upper())
    client = await serve(security__url_signing_keys=[KEY])
    url = sign_url(KEY, f"http://avatars.intranet/avatar/{guest.upn}/48")
    assert url.startswith("http://avatars.intranet/avatar/") and "%23EXT%23" in url
    status, _, _ = await get(client, url.removeprefix("http://avatars.intranet"))
    assert status == 200


def test_sign_command_prints_a_url_the_service_accepts(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AVATARPROXY_SECURITY_URL_SIGNING_KEYS", f"{KEY},{OLD_KEY}")
    assert main(["sign", f"https://avatars.intranet/avatar/{ADELE}/48"]) == 0
    printed = capsys.readouterr().out.strip()
    sig = signature(KEY, f"/avatar/{ADELE}/48")
    assert printed == f"https://avatars.intranet/avatar/{ADELE}/48?sig={sig}"
    Policy.from_settings(load_settings(env={}, overrides={
        "security.url_signing_keys": [OLD_KEY, KEY]}).security).check_signature(
            f"/avatar/{ADELE}/48", sig)


def test_sign_command_without_keys_fails_naming_the_option(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AVATARPROXY_SECURITY_URL_SIGNING_KEYS", raising=False)
    assert main(["sign", f"/avatar/{ADELE}/48"]) == 2
    assert "security.url_signing_keys" in capsys.readouterr().err


# -- allowed domains, guests, blocked people -----------------------------------------

async def test_other_domains_get_404_without_graph_but_object_ids_are_served(
        serve: Serve, fake_graph: Any) -> None:
    client = await serve(security__allowed_domains=["Contoso.com"])
    for upn in ("someone@fabrikam.com", "adele.vance@contoso.com.evil.example",
                "adele.vance@sub.contoso.com"):
        status, headers, _ = await get(client, f"/avatar/{upn}/48")
        assert status == 404 and headers["Content-Type"].startswith("text/plain")
    assert fake_graph.graph.requests == []
    adele = fake_graph.find(lambda p: p.upn == ADELE)
    assert (await get(client, f"/avatar/{ADELE}/48"))[1]["X-Avatar-Source"] == "photo"
    assert (await get(client, f"/avatar/{adele.object_id}/48"))[1]["X-Avatar-Source"] == "photo"


async def test_guests_are_refused_when_allow_guests_is_false(
        serve: Serve, fake_graph: Any) -> None:
    guest = fake_graph.find(lambda p: "#EXT#" in p.upn.upper())
    encoded = guest.upn.replace("#", "%23")
    client = await serve(security__allow_guests=False)
    assert (await get(client, f"/avatar/{encoded}/48"))[0] == 404
    assert fake_graph.graph.requests == []
    allowed = await serve(security__allow_guests=True)
    assert (await get(allowed, f"/avatar/{encoded}/48"))[0] == 200


async def test_blocked_people_get_initials_and_their_photo_is_never_fetched(
        serve: Serve, fake_graph: Any) -> None:
    adele = fake_graph.find(lambda p: p.upn == ADELE)
    client = await serve(security__blocked=[ADELE.upper(), adele.object_id])
    for subject in (ADELE, adele.object_id):
        status, headers, body = await get(client, f"/avatar/{subject}/48")
        assert status == 200 and headers["X-Avatar-Source"] == "initials"
        assert headers["Cache-Control"] == "public, max-age=300"
        assert Image.open(io.BytesIO(body)).size == (48, 48)
        assert (await get(client, f"/avatar/{subject}/48?fallback=404"))[0] == 404
    # Only who she is was asked (at start-up), never her photo.
    assert fake_graph.graph.requests
    assert all("$select=id,userPrincipalName,mail,proxyAddresses" in r.path
               for r in fake_graph.graph.requests)
    # Others are unaffected.
    assert (await get(client, f"/avatar/{ALEX}/48"))[1]["X-Avatar-Source"] == "photo"


# -- rate limiting -----------------------------------------------------------------------

async def test_misses_beyond_the_limit_get_uncached_initials_while_hits_stay_unlimited(
        serve: Serve, fake_graph: Any) -> None:
    client = await serve(security__rate_limit_per_second=0.001, security__rate_limit_burst=3)
    # Three tokens let her in: her metadata (two Graph calls at most), then her photo
    # (a download and a render) with the one left, which puts the bucket in debt.
    assert (await get(client, f"/avatar/{ADELE}/48"))[1]["X-Avatar-Source"] == "photo"
    fake_graph.graph.reset_requests()
    status, headers, body = await get(client, f"/avatar/{ALEX}/48")
    assert status == 200 and headers["X-Avatar-Source"] == "initials"
    assert headers["Cache-Control"] == "no-store"
    # A cache in front must not keep its copy for everyone because of one client's rate.
    assert headers["X-Avatar-Stand-In"] == "rate-limited"
    assert Image.open(io.BytesIO(body)).size == (48, 48)
    assert fake_graph.graph.requests == []
    for _ in range(20):  # hits: never limited
        assert (await get(client, f"/avatar/{ADELE}/48"))[1]["X-Avatar-Source"] == "photo"
    status, headers, _ = await get(client, f"/avatar/{ADELE}/96")  # a new size: a render
    assert headers["Cache-Control"] == "no-store" and headers["X-Avatar-Source"] == "initials"


async def test_the_limit_is_shared_by_replicas_through_redis(serve: Serve) -> None:
    first = await serve(security__rate_limit_per_second=0.001, security__rate_limit_burst=3)
    second = await serve(security__rate_limit_per_second=0.001, security__rate_limit_burst=3)
    assert (await get(first, f"/avatar/{ADELE}/48"))[1]["X-Avatar-Source"] == "photo"
    # Every token spent on the first replica; the second has none left for this client.
    _, headers, _ = await get(second, f"/avatar/{ALEX}/48")
    assert headers["Cache-Control"] == "no-store"


async def test_without_redis_the_limit_holds_per_process(serve: Serve) -> None:
    client = await serve(cache__redis_url=f"redis://127.0.0.1:{free_port()}/0",
                         cache__redis_timeout_seconds=0.2,
                         security__rate_limit_per_second=0.001, security__rate_limit_burst=3)
    assert (await get(client, f"/avatar/{ADELE}/48"))[1]["X-Avatar-Source"] == "photo"
    _, headers, _ = await get(client, f"/avatar/{ALEX}/48")
    assert headers["Cache-Control"] == "no-store"


async def test_forwarded_for_counts_only_behind_a_trusted_proxy(
        serve: Serve, fake_graph: Any) -> None:
    limits = {"security__rate_limit_per_second": 0.001, "security__rate_limit_burst": 1}
    trusting = await serve(cache__redis_url="", server__trusted_proxies=["127.0.0.0/8"], **limits)
    for n, upn in enumerate((ADELE, ALEX)):
        # Each client behind the proxy has its own one token: its metadata call.
        await get(trusting, f"/avatar/{upn}/48", headers={"X-Forwarded-For": f"10.0.0.{n}"})
    assert fake_graph.graph.count(f"{ALEX}/photo") == 1
    fake_graph.graph.reset_requests()
    naive = await serve(cache__redis_url="", **limits)
    await get(naive, f"/avatar/{ADELE}/96", headers={"X-Forwarded-For": "10.0.0.1"})
    _, headers, _ = await get(naive, f"/avatar/{ALEX}/96",
                              headers={"X-Forwarded-For": "10.0.0.2"})
    assert headers["Cache-Control"] == "no-store"
    assert fake_graph.graph.count(ALEX) == 0  # one address, one bucket, already empty


@pytest.mark.parametrize(("remote", "header", "client"), [
    ("10.1.1.1", ["1.2.3.4"], "10.1.1.1"),  # not a proxy: the header is ignored
    ("127.0.0.1", ["1.2.3.4"], "1.2.3.4"),
    ("127.0.0.1", ["6.6.6.6, 1.2.3.4, 192.168.0.7"], "1.2.3.4"),  # proxies skipped from the right
    ("127.0.0.1", ["6.6.6.6", "1.2.3.4"], "1.2.3.4"),  # several header lines
    ("127.0.0.1", ["garbage, 1.2.3.4"], "1.2.3.4"),
    ("127.0.0.1", ["1.2.3.4, garbage"], "127.0.0.1"),  # garbled: stop at the proxy
    ("127.0.0.1", [], "127.0.0.1"),
    ("::ffff:127.0.0.1", ["2001:db8::1"], "2001:db8::1"),
])
def test_client_address(remote: str, header: list[str], client: str) -> None:
    assert ClientAddress(["127.0.0.1", "192.168.0.0/16"]).of(remote, header) == client


def test_bad_trusted_proxy_stops_start_up_naming_the_key() -> None:
    settings = load_settings(env={}, overrides={"server.trusted_proxies": ["10.0.0.0/8", "nope"]})
    with pytest.raises(Exception, match=r"server\.trusted_proxies: .*'nope'"):
        create_app(settings)


# -- takedown -----------------------------------------------------------------------------

async def test_purge_deletes_exactly_the_persons_cached_entries(
        serve: Serve, redis_url: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    client = await serve()
    for path in (f"/avatar/{ADELE}/48", f"/avatar/{ADELE}/96", f"/avatar/{ALEX}/48"):
        assert (await get(client, path))[0] == 200
    before = await redis_keys(redis_url)
    assert sum(ADELE in k for k in before) >= 4  # metadata, two images, the index
    monkeypatch.setenv("AVATARPROXY_CACHE_REDIS_URL", redis_url)
    assert await asyncio.to_thread(main, ["purge", ADELE.upper()]) == 0
    # Metadata, two resized images and the two Graph downloads they came from.
    assert "5 cached entries deleted, 1 running replicas told" in capsys.readouterr().out
    after = await redis_keys(redis_url)
    assert not any(ADELE in k for k in after)
    assert after == {k for k in before if ADELE not in k}  # Alex untouched


def test_purge_refuses_bad_input_and_a_missing_redis(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AVATARPROXY_CACHE_REDIS_URL", raising=False)
    assert main(["purge", ADELE]) == 2
    assert "cache.redis_url" in capsys.readouterr().err
    monkeypatch.setenv("AVATARPROXY_CACHE_REDIS_URL", "redis://127.0.0.1:1/0")
    assert main(["purge", "not a upn"]) == 1  # named; nobody else to purge
    assert "avatarproxy: purge: 'not a upn': not a valid" in capsys.readouterr().err


# -- headers and strict options -------------------------------------------------------------

@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", f"/avatar/{ADELE}/48", 200), ("HEAD", f"/avatar/{ADELE}/48", 200),
    ("GET", "/avatar/nobody@contoso.com/48?fallback=404", 404),
    ("GET", "/avatar/x/48", 400), ("GET", "/nowhere", 404), ("POST", f"/avatar/{ADELE}/48", 405),
])
async def test_every_response_carries_the_security_headers_and_no_banner(
        serve: Serve, method: str, path: str, status: int) -> None:
    client = await serve()
    async with client.request(method, path) as resp:
        assert resp.status == status
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        assert resp.headers["Referrer-Policy"] == "no-referrer"
        assert "Server" not in resp.headers


async def test_a_405_names_the_methods_the_resource_takes(serve: Serve) -> None:
    client = await serve()
    for method in ("POST", "PUT", "DELETE"):
        status, headers, body = await get(client, f"/avatar/{ADELE}/48", method)
        assert (status, body) == (405, b"Method Not Allowed\n"), method
        assert set(headers["Allow"].split(",")) == {"GET", "HEAD", "OPTIONS"}, method
    status, headers, _ = await get(client, "/healthz", "POST")
    assert status == 405 and set(headers["Allow"].split(",")) == {"GET", "HEAD"}


async def test_unknown_parameters_are_ignored_and_known_ones_may_not_repeat(
        serve: Serve, fake_graph: Any) -> None:
    client = await serve()
    status, headers, _ = await get(client, f"/avatar/{ADELE}/48?v=3&_=123&utm_source=weird")
    assert status == 200 and headers["X-Avatar-Source"] == "photo"
    fake_graph.graph.reset_requests()
    status, _, body = await get(client, f"/avatar/{ALEX}/48?fallback=404&fallback=initials")
    assert status == 400 and body == b"fallback given more than once\n"
    assert fake_graph.graph.requests == []


async def test_the_documented_signing_snippet_makes_urls_the_service_accepts(
        serve: Serve, fake_graph: Any) -> None:
    readme = (Path(__file__).parent.parent / "docs" / "security.md").read_text(encoding="utf-8")
    snippet = next(block.split("```", 1)[0] for block in readme.split("```python")[1:]
                   if "def avatar_url" in block)
    assert len(snippet.strip().splitlines()) <= 10
    namespace: dict[str, Any] = {}
    exec(textwrap.dedent(snippet), namespace)
    client = await serve(security__url_signing_keys=[KEY])
    guest = fake_graph.find(lambda p: "#EXT#" in p.upn.upper())
    for upn in (ADELE, guest.upn):
        url = namespace["avatar_url"](KEY, upn, 48)
        status, _, _ = await get(client, url.removeprefix("https://avatars.intranet"))
        assert status == 200, url


async def test_svg_initials_for_blocked_and_limited_clients_keep_their_csp(
        serve: Serve) -> None:
    client = await serve(security__blocked=[ADELE], security__rate_limit_per_second=0.001,
                         security__rate_limit_burst=1)
    await get(client, f"/avatar/{ALEX}/48")  # the one token: Alex's metadata
    for upn in (ADELE, ALEX):  # blocked; then limited (its render has no token left)
        status, headers, body = await get(client, f"/avatar/{upn}/48?format=svg")
        assert status == 200 and headers["Content-Type"] == "image/svg+xml"
        assert "default-src 'none'" in headers["Content-Security-Policy"]
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert body.startswith(b"<svg")


def _toml(settings: dict[str, Any]) -> str:
    """``{"cache.redis_url": ...}`` as TOML (strings, numbers and lists of strings)."""
    sections: dict[str, list[str]] = {}
    for dotted, value in settings.items():
        section, key = dotted.split(".", 1)
        sections.setdefault(section, []).append(f"{key} = {json.dumps(value)}")
    return "".join(f"[{name}]\n" + "\n".join(lines) + "\n" for name, lines in sections.items())


def _deployment(topology: str, request: pytest.FixtureRequest) -> dict[str, Any]:
    """Settings reaching ``topology`` (emptied first); ``redis_tls_prefixed``: the TLS
    Redis as the ACL user of another deployment, with that deployment's key prefix."""
    if topology == "redis_url":  # the plain session Redis, already emptied
        return {"cache.redis_url": request.getfixturevalue("redis_url")}
    redis: Topology = request.getfixturevalue(topology.removesuffix("_prefixed"))
    redis.flush()
    if topology == "redis_tls_prefixed":
        user = OTHER_PREFIX.rstrip(":")
        return {**redis.overrides, "cache.key_prefix": OTHER_PREFIX, "cache.redis_url":
                redis.overrides["cache.redis_url"].replace("avatarproxy@", f"{user}@")}
    return redis.overrides


@pytest.mark.parametrize("topology", ["redis_url", "redis_tls", "redis_tls_prefixed",
                                      "redis_sentinel", "redis_cluster"])
async def test_purge_reaches_every_replica_whatever_the_redis_deployment(
        topology: str, serve: Serve, fake_graph: Any, tmp_path: Path,
        request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture) -> None:
    # A loaded machine can take longer than the default 0.5 s over TLS: a timeout
    # would log a warning, and this test allows none.
    overrides = {**_deployment(topology, request), "cache.redis_timeout_seconds": 5.0}
    replicas = [await serve(**overrides), await serve(**overrides)]
    for client in replicas:
        assert (await get(client, f"/avatar/{ADELE}/48"))[1]["X-Avatar-Source"] == "photo"
    listeners = [client.server.app[LISTENER] for client in replicas]
    async with asyncio.timeout(10):
        await asyncio.gather(*(listener.subscribed.wait() for listener in listeners))
    fake_graph.graph.set_photo(ADELE, None)  # the takedown in the directory
    config = tmp_path / "avatarproxy.toml"
    config.write_text(_toml(overrides))  # TLS, passwords, Sentinels or Cluster seed
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert await asyncio.to_thread(main, ["purge", "--config", str(config), ADELE]) == 0
    assert "2 running replicas told" in out.getvalue()
    async with asyncio.timeout(10):
        await asyncio.gather(*(listener.handled.wait() for listener in listeners))
    for client in replicas:  # without the announcement, memory would still hold the photo
        assert (await get(client, f"/avatar/{ADELE}/48"))[1]["X-Avatar-Source"] == "initials"
    # Locks, the rate limiter's script, the index sets and the channel all worked,
    # on TLS with the least-privilege ACL user docs/redis.md documents.
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


async def test_purge_stays_within_its_deployment_and_reaches_replicas_not_yet_upgraded(
        serve: Serve, fake_graph: Any, redis_url: str, tmp_path: Path) -> None:
    # Two deployments share one Redis, each with its own cache.key_prefix.
    ours, theirs = await serve(cache__key_prefix="a:"), await serve(cache__key_prefix="b:")
    for client in (ours, theirs):
        assert (await get(client, f"/avatar/{ADELE}/48"))[1]["X-Avatar-Source"] == "photo"
    listeners = [client.server.app[LISTENER] for client in (ours, theirs)]
    # A replica of the previous release listens on the old fixed channel.
    old_replica = aioredis.Redis.from_url(redis_url)
    async with old_replica.pubsub() as legacy:
        await legacy.subscribe("avatarproxy:purge")
        async with asyncio.timeout(10):
            await asyncio.gather(*(listener.subscribed.wait() for listener in listeners))
        fake_graph.graph.set_photo(ADELE, None)  # the takedown in the directory
        config = tmp_path / "a.toml"
        config.write_text(_toml({"cache.redis_url": redis_url, "cache.key_prefix": "a:"}))
        with contextlib.redirect_stdout(io.StringIO()) as out:
            assert await asyncio.to_thread(main, ["purge", "--config", str(config), ADELE]) == 0
        assert "2 running replicas told" in out.getvalue()  # ours and the old one
        async with asyncio.timeout(10):
            await listeners[0].handled.wait()
            while (message := await legacy.get_message(ignore_subscribe_messages=True,
                                                       timeout=1)) is None:
                pass
        assert message["data"] == ADELE.encode()
    await old_replica.aclose()
    # Their purge of Alex comes after ours on their subscription: by the time they
    # handled it, they would have handled ours too.
    config.write_text(_toml({"cache.redis_url": redis_url, "cache.key_prefix": "b:"}))
    with contextlib.redirect_stdout(io.StringIO()):
        assert await asyncio.to_thread(main, ["purge", "--config", str(config), ALEX]) == 0
    async with asyncio.timeout(10):
        await listeners[1].handled.wait()
    assert (await get(ours, f"/avatar/{ADELE}/48"))[1]["X-Avatar-Source"] == "initials"
    assert (await get(theirs, f"/avatar/{ADELE}/48"))[1]["X-Avatar-Source"] == "photo"


async def test_a_silent_redis_costs_the_limiter_one_timeout_not_one_per_miss() -> None:
    with socket.socket() as silent:  # the kernel accepts connections; nobody answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        port = silent.getsockname()[1]
        cache = load_settings(env={}, overrides={"cache.redis_url": f"redis://127.0.0.1:{port}/0",
                                                 "cache.redis_timeout_seconds": 0.2}).redis
        limiter = RateLimiter(1000.0, 1000, Coordination.connect(cache, SCHEMA_VERSION).buckets)
        try:
            started = time.monotonic()
            assert all([await limiter.allow("10.0.0.1") for _ in range(20)])
            assert time.monotonic() - started < 1.5  # not 20 timeouts of 0.2 s
        finally:
            await limiter.close()
