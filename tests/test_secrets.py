"""Secrets stay secret: not in logs (every level, every library), not in error
messages, not in ``repr()`` of the configuration."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from appclient import Client, MakeClient

from avatarproxy.config import load_settings
from avatarproxy.errors import ConfigError

ADELE = "adele.vance@contoso.com"


def _everything_logged(caplog: pytest.LogCaptureFixture) -> str:
    """Formatted lines, tracebacks, and every attribute of every record."""
    return caplog.text + "\n".join(repr(vars(record)) for record in caplog.records)


async def test_logs_of_a_full_run_never_hold_the_secret_or_a_token(
        make_client: MakeClient, fake_graph: Any, fake_idp: Any,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)  # the root logger: msal, aiohttp, redis, ours
    client = await make_client()
    wrong_secret = "wrong-" + fake_idp.client_secret[::-1]
    wrong = await make_client(auth__client_secret=wrong_secret)
    tokens: set[str] = set()

    async def fetch(c: Client, path: str) -> bytes:
        async with c.get(path) as resp:
            assert resp.status < 500
            tokens.update(fake_idp.issued)
            return await resp.read()

    bodies = [await fetch(client, f"/avatar/{ADELE}/48")]  # token acquisition
    fake_idp.revoke_all()  # Graph 401, then a refresh
    bodies.append(await fetch(client, f"/avatar/{ADELE}/64"))
    for status in (500, 403, 429):  # Graph errors
        fake_graph.graph.inject(status, times=3)
        bodies.append(await fetch(client, f"/avatar/nobody{status}@contoso.com/48"))
    fake_idp.revoke_all()
    fake_idp.fail_next(500, times=5)  # the identity provider failing
    bodies.append(await fetch(client, f"/avatar/{ADELE}/96"))
    bodies.append(await fetch(wrong, f"/avatar/{ADELE}/120"))  # a rejected secret
    bodies.append(await fetch(client, "/avatar/not a upn/48"))

    assert len(tokens) >= 2 and len(fake_idp.token_requests) >= 3
    logged = _everything_logged(caplog)
    assert "Graph 500" in logged and "token request" in logged  # the run did log its errors
    for secret in (fake_idp.client_secret, wrong_secret, *tokens):
        assert secret not in logged
        assert not any(secret.encode() in body for body in bodies)


def test_repr_of_the_settings_masks_secret_options(tmp_path: Path) -> None:
    settings = load_settings(env={"AZURE_CLIENT_SECRET": "s3cr3t-value"}, overrides={
        "security.url_signing_keys": ["sign-key-1", "sign-key-2"]})
    text = repr(settings)
    assert "s3cr3t-value" not in text and "sign-key-1" not in text
    assert "client_secret='***'" in text and "url_signing_keys='***'" in text
    assert "client_id=''" in text  # the rest stays readable
    assert "s3cr3t-value" not in repr(settings.auth) and "s3cr3t-value" not in str(settings)


def test_config_errors_never_echo_a_secret_value(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("[security]\nurl_signing_keys = 8675309123\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_settings(config, env={})
    assert "security.url_signing_keys" in str(caught.value)
    assert "8675309123" not in str(caught.value)
