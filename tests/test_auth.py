"""Real msal against the fake identity provider over TLS."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any

import certifi
import pytest
from tlsutil import make_client_certificate

from avatarproxy.auth import MsalTokenProvider, scope_for
from avatarproxy.config import AuthSettings, load_settings
from avatarproxy.errors import AuthError

SCOPE = "https://graph.microsoft.com/.default"


def auth_settings(idp: Any, **changes: Any) -> AuthSettings:
    base = replace(load_settings(env={}).auth, tenant_id=idp.tenant, client_id=idp.client_id,
                   client_secret=idp.client_secret, authority=idp.authority,
                   ca_file=str(idp.ca_file))
    return replace(base, **changes)


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
    await asyncio.sleep(1.2)  # half the lifetime: we renew early
    assert await provider.token() != first
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
