"""Real msal against the fake identity provider over TLS."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import certifi
import pytest
from appclient import client_factory, get
from faultproxy import NONE, FaultProxy, Faults
from tlsutil import make_client_certificate

from avatarproxy.config import load_settings
from avatarproxy.errors import AuthError
from avatarproxy.graph.auth import Backoff, MsalTokenProvider, scope_for
from avatarproxy.graph.settings import AuthSettings

SCOPE = "https://graph.microsoft.com/.default"
STALL = Faults(stall=True)


def auth_settings(idp: Any, **changes: Any) -> AuthSettings:
    base = replace(load_settings(env={}).auth, tenant_id=idp.tenant, client_id=idp.client_id,
                   client_secret=idp.client_secret, authority=idp.authority,
                   ca_file=str(idp.ca_file))
    return replace(base, **changes)


@pytest.fixture
async def idp_proxy(fake_idp: Any) -> AsyncIterator[FaultProxy]:
    """A fault proxy in front of the fake IdP (no faults until a test sets them)."""
    proxy = await FaultProxy.start(fake_idp.port)
    try:
        yield proxy
    finally:
        await proxy.close()  # a stalled request ends with its connection


def via(proxy: FaultProxy, idp: Any) -> AuthSettings:
    # The fake IdP names its endpoints by the host asked: the token endpoint
    # found by discovery through the proxy stays on the proxy.
    return auth_settings(idp, authority=f"https://127.0.0.1:{proxy.port}/{idp.tenant}")


def stall(proxy: FaultProxy) -> None:
    proxy.faults = STALL
    proxy.cut()  # msal's pooled keep-alive connection too


async def until(condition: Callable[[], bool], within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def eventually(provider: MsalTokenProvider, ok: Callable[[str], bool],
                     within: float = 20.0) -> str:
    """The first token ``ok`` accepts, asking every 20 ms (failures included)."""
    async with asyncio.timeout(within):
        while True:
            try:
                token = await provider.token()
                if ok(token):
                    return token
            except AuthError:
                pass
            await asyncio.sleep(0.02)


async def test_secret_token_is_acquired_once_and_reused(fake_idp: Any) -> None:
    provider = await MsalTokenProvider.create(auth_settings(fake_idp), SCOPE)
    first = await provider.token()
    assert first in fake_idp.issued
    assert await provider.token() == first
    assert len(fake_idp.token_requests) == 1
    request = fake_idp.token_requests[0]
    assert (request.credential, request.grant_type, request.scope) == (
        "secret", "client_credentials", SCOPE)


async def test_refresh_asks_the_identity_provider_again(fake_idp: Any) -> None:
    provider = await MsalTokenProvider.create(auth_settings(fake_idp), SCOPE)
    first = await provider.token()
    second = await provider.token(refresh=True)
    assert second != first and second in fake_idp.issued
    assert len(fake_idp.token_requests) == 2


async def test_short_lived_tokens_are_renewed_before_they_expire(fake_idp: Any) -> None:
    fake_idp.expires_in = 2  # under msal's and our five-minute margin
    provider = await MsalTokenProvider.create(auth_settings(fake_idp), SCOPE)
    first = await provider.token()
    assert await provider.token() == first
    await asyncio.sleep(1.05)  # half the lifetime: we renew early (in the background)
    assert await eventually(provider, lambda token: token != first) in fake_idp.issued
    assert len(fake_idp.token_requests) == 2


async def test_secret_file_is_read(fake_idp: Any, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text(fake_idp.client_secret + "\n")
    provider = await MsalTokenProvider.create(
        auth_settings(fake_idp, client_secret="", client_secret_file=str(secret)), SCOPE)
    assert await provider.token() in fake_idp.issued


async def test_certificate_credential_signs_an_assertion(fake_idp: Any, tmp_path: Path) -> None:
    cert = make_client_certificate(tmp_path, "avatarproxy")
    fake_idp.register_certificate(cert.cert_pem)
    provider = await MsalTokenProvider.create(
        auth_settings(fake_idp, client_secret="", certificate_path=str(cert.combined_file)),
        SCOPE)
    assert await provider.token() in fake_idp.issued
    assert fake_idp.token_requests[-1].credential == "certificate"


async def test_federated_token_file_is_reread_for_each_token(fake_idp: Any,
                                                             tmp_path: Path) -> None:
    token_file = tmp_path / "azure-identity-token"
    token_file.write_text("projected-token-1")
    fake_idp.federated_tokens.update({"projected-token-1", "projected-token-2"})
    provider = await MsalTokenProvider.create(
        auth_settings(fake_idp, client_secret="", federated_token_file=str(token_file)), SCOPE)
    await provider.token()
    token_file.write_text("projected-token-2")  # kubelet rotated it
    await provider.token(refresh=True)
    assert [r.client_assertion for r in fake_idp.token_requests] == [
        "projected-token-1", "projected-token-2"]
    assert {r.credential for r in fake_idp.token_requests} == {"assertion"}


async def test_wrong_secret_is_an_auth_error_without_the_secret(fake_idp: Any) -> None:
    wrong = "not-the-secret-Zq81"
    provider = await MsalTokenProvider.create(auth_settings(fake_idp, client_secret=wrong),
                                              SCOPE)
    with pytest.raises(AuthError) as info:
        await provider.token()
    assert "invalid_client" in str(info.value)
    assert wrong not in str(info.value)


async def test_identity_provider_outage_is_an_auth_error(fake_idp: Any) -> None:
    provider = await MsalTokenProvider.create(auth_settings(fake_idp), SCOPE)
    fake_idp.fail_next(503)
    with pytest.raises(AuthError):
        await provider.token()


async def test_pinned_ca_wins_over_requests_ca_bundle(fake_idp: Any,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # The machine's REQUESTS_CA_BUNDLE would make requests ignore our ca_file.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", certifi.where())
    monkeypatch.setenv("CURL_CA_BUNDLE", certifi.where())
    provider = await MsalTokenProvider.create(auth_settings(fake_idp), SCOPE)
    assert await provider.token() in fake_idp.issued


async def test_untrusted_authority_certificate_is_refused(fake_idp: Any) -> None:
    with pytest.raises(AuthError):
        provider = await MsalTokenProvider.create(
            auth_settings(fake_idp, ca_file=certifi.where()), SCOPE)
        await provider.token()
    assert fake_idp.token_requests == []


@pytest.mark.parametrize(("base", "scope"), [
    ("https://graph.microsoft.com/v1.0", "https://graph.microsoft.com/.default"),
    ("https://graph.microsoft.us/beta", "https://graph.microsoft.us/.default"),
    ("https://microsoftgraph.chinacloudapi.cn/v1.0/",
     "https://microsoftgraph.chinacloudapi.cn/.default"),
])
def test_scope_is_the_graph_root_default(base: str, scope: str) -> None:
    assert scope_for(base) == scope


# -- an identity provider that stalls, then recovers ------------------------------

async def test_a_stalled_authority_is_an_outage_at_start_up_not_a_hang_or_a_crash(
        fake_idp: Any, idp_proxy: FaultProxy, caplog: pytest.LogCaptureFixture) -> None:
    idp_proxy.faults = STALL  # OpenID discovery, at start-up, gets no answer
    began = time.monotonic()
    async with asyncio.timeout(60):  # the default timeout, with room for a loaded machine
        with pytest.raises(AuthError, match=r"failed: no answer within 10 s") as info:
            await MsalTokenProvider.create(via(idp_proxy, fake_idp), SCOPE, strict=True)
        assert time.monotonic() - began >= 5  # the default timeout, not an immediate failure
        assert (info.value.key, info.value.misconfigured) == ("auth.authority", False)
        # Not strict (the service): it starts degraded instead of crash-looping...
        provider = await MsalTokenProvider.create(via(idp_proxy, fake_idp), SCOPE,
                                                  request_timeout=1.0,
                                                  backoff=Backoff(first=0.2, cap=0.5))
    assert "starting degraded" in caplog.text
    assert fake_idp.discovery_requests == 0
    # ...and sets msal up once the authority answers.
    idp_proxy.faults = NONE
    assert await eventually(provider, lambda token: True) in fake_idp.issued
    assert fake_idp.discovery_requests == 1


async def test_a_stalled_token_request_times_out_once_for_all_callers_then_recovers(
        fake_idp: Any, idp_proxy: FaultProxy) -> None:
    provider = await MsalTokenProvider.create(via(idp_proxy, fake_idp), SCOPE, request_timeout=1.0,
                                              backoff=Backoff(first=0.5, cap=2.0))
    stall(idp_proxy)  # after discovery, before the first token
    before = idp_proxy.accepted
    async with asyncio.timeout(30):  # without a timeout, forever
        results = await asyncio.gather(*(provider.token() for _ in range(20)),
                                       return_exceptions=True)
    assert all(isinstance(r, AuthError) for r in results), results
    assert idp_proxy.accepted == before + 1  # twenty callers, one request
    # Right after a failure: an immediate answer, and the identity provider left alone.
    for _ in range(20):
        with pytest.raises(AuthError, match="next attempt in"):
            await provider.token()
    assert idp_proxy.accepted == before + 1
    idp_proxy.faults = NONE
    token = await eventually(provider, lambda token: True)  # asks 50 times a second
    assert token in fake_idp.issued
    assert idp_proxy.accepted - before <= 3  # after a pause, not once per caller
    assert len(fake_idp.token_requests) == 1


async def test_a_failing_early_renewal_keeps_the_valid_token_in_use(
        fake_idp: Any, idp_proxy: FaultProxy, caplog: pytest.LogCaptureFixture) -> None:
    fake_idp.expires_in = 10  # renewal due after 5 s; usable for 7.5 s
    provider = await MsalTokenProvider.create(via(idp_proxy, fake_idp), SCOPE, request_timeout=0.5,
                                              backoff=Backoff(first=0.5, cap=2.0))
    first = await provider.token()
    stall(idp_proxy)
    await asyncio.sleep(5.1)  # renewal is due
    async with asyncio.timeout(2):  # no caller waits for the stalled renewal
        assert await asyncio.gather(*(provider.token() for _ in range(20))) == [first] * 20
    await until(lambda: "keeping the current token" in caplog.text)  # it timed out
    assert await provider.token() == first  # not discarded: still valid
    idp_proxy.faults = NONE
    renewed = await eventually(provider, lambda token: token != first)
    assert renewed in fake_idp.issued and len(fake_idp.token_requests) == 2


async def test_while_the_identity_provider_stalls_cached_avatars_are_served(
        aiohttp_client: Any, idp_settings: dict[str, Any], redis_url: str, fake_idp: Any,
        fake_graph: Any, idp_proxy: FaultProxy) -> None:
    provider = await MsalTokenProvider.create(via(idp_proxy, fake_idp), SCOPE, request_timeout=0.5,
                                              backoff=Backoff(first=0.5, cap=2.0))
    make = client_factory(aiohttp_client, {**idp_settings, "cache.redis_url": redis_url},
                          tokens=provider)
    client = await make()
    adele, others = "adele.vance@contoso.com", [
        p.upn for p in fake_graph.graph.people if p.upn.startswith(("alex", "megan", "lynne"))]
    _, headers, photo = await get(client, f"/avatar/{adele}/48")
    assert headers["X-Avatar-Source"] == "photo"
    stall(idp_proxy)
    fake_idp.revoke_all()  # Graph refuses the token now: a new one is needed
    before = idp_proxy.accepted
    answers = await asyncio.gather(*(get(client, f"/avatar/{upn}/48") for upn in others * 4))
    for status, headers, _ in answers:
        assert (status, headers["X-Avatar-Source"]) == (200, "initials")
        assert headers["Cache-Control"] == "public, max-age=60"  # the timeout beat the deadline
    assert idp_proxy.accepted - before <= 2  # twelve requests, not twelve token requests
    began = time.monotonic()
    status, headers, body = await get(client, f"/avatar/{adele}/48")
    assert (status, headers["X-Avatar-Source"], body) == (200, "photo", photo)
    assert time.monotonic() - began < 2
    idp_proxy.faults = NONE
    deadline = time.monotonic() + 20
    while (await get(client, f"/avatar/{others[0]}/48"))[1]["X-Avatar-Source"] != "photo":
        assert time.monotonic() < deadline, "no photo after the identity provider recovered"
        await asyncio.sleep(0.1)


async def test_an_authority_that_drips_its_answer_fails_within_two_timeouts(
        fake_idp: Any) -> None:
    # Each read gets 10 bytes in time, so a per-read timeout alone never fires.
    fake_idp.drip = 0.1
    started = time.monotonic()
    with pytest.raises(AuthError, match="no answer in 1 s") as info:
        await MsalTokenProvider.create(auth_settings(fake_idp), SCOPE, request_timeout=0.5,
                                       strict=True)
    assert time.monotonic() - started < 20  # not the minutes the drip would take
    assert not info.value.misconfigured  # an outage: the service starts degraded through it


async def test_a_401_for_a_token_already_replaced_keeps_the_new_one(fake_idp: Any) -> None:
    provider = await MsalTokenProvider.create(auth_settings(fake_idp), SCOPE)
    first = await provider.token()
    # Two Graph calls went out with the first token and both were refused (401). The
    # first refresh replaces it; the second, still naming the first, must not throw
    # the new one away (with many concurrent 401s: one token request each).
    second = await provider.token(refresh=True, refused=first)
    assert await provider.token(refresh=True, refused=first) == second != first
    assert len(fake_idp.token_requests) == 2
    # Graph refusing the current token does get a new one.
    assert await provider.token(refresh=True, refused=second) not in (first, second)
    assert len(fake_idp.token_requests) == 3
