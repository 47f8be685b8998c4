"""App-only tokens for Graph: msal client credentials, run off the event loop.

msal is blocking (requests): building the application performs OpenID
discovery and acquiring a token performs HTTP, so both run in a thread. The
token is kept here as well, so the hot path never hops to a thread.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import msal
import requests
from cryptography import x509
from msal.exceptions import MsalError

from . import metrics
from .config import AuthSettings
from .errors import AuthError

log = logging.getLogger(__name__)

# msal treats tokens with under five minutes left as expired; so do we.
_EXPIRY_MARGIN = 300.0
_MICROSOFT_AUTHORITY_HOSTS = frozenset({
    "login.microsoftonline.com", "login.microsoft.com", "login.windows.net",
    "sts.windows.net", "login.microsoftonline.us", "login.partner.microsoftonline.cn",
    "login.chinacloudapi.cn",
})


class TokenProvider(Protocol):
    async def token(self, *, refresh: bool = False) -> str: ...


class StaticTokenProvider:
    """A fixed bearer token: for the demo tenant, which has no identity provider."""

    def __init__(self, value: str) -> None:
        self._value = value

    async def token(self, *, refresh: bool = False) -> str:
        return self._value


class _PinnedCASession(requests.Session):
    """A session that trusts exactly ``verify``.

    requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE override a session's
    ``verify``; proxies from the environment are still honoured.
    """

    def merge_environment_settings(self, url: Any, proxies: Any, stream: Any, verify: Any,
                                   cert: Any) -> Any:
        settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
        settings["verify"] = self.verify
        return settings


def default_authority(auth: AuthSettings) -> str:
    return auth.authority or f"https://login.microsoftonline.com/{auth.tenant_id}"


def scope_for(graph_base_url: str) -> str:
    """``https://graph.microsoft.com/v1.0`` -> ``https://graph.microsoft.com/.default``."""
    parts = urlsplit(graph_base_url)
    return f"{parts.scheme}://{parts.netloc}/.default"


def _credential(auth: AuthSettings) -> str | Mapping[str, Any]:
    if auth.federated_token_file:
        path = Path(auth.federated_token_file)
        # Kubernetes rotates the projected token: read it on every request.
        read: Callable[[], str] = lambda: path.read_text(encoding="utf-8").strip()  # noqa: E731
        return {"client_assertion": read}
    if auth.certificate_path:
        pem = Path(auth.certificate_path).read_text(encoding="utf-8")
        _note_expiry(pem)
        # msal computes the SHA-256 thumbprint from the public certificate.
        return {"private_key": pem, "public_certificate": pem}
    if auth.client_secret_file:
        return Path(auth.client_secret_file).read_text(encoding="utf-8").strip()
    return auth.client_secret


def _mounted_credential(auth: AuthSettings) -> str:
    """The content of a secret or certificate file ("" for other credentials).

    Kubernetes updates a mounted Secret in place: a changed content means a
    rotated credential, and msal is rebuilt with it; no restart needed.
    """
    path = auth.certificate_path or auth.client_secret_file
    return Path(path).read_text(encoding="utf-8") if path and not auth.federated_token_file else ""


def _note_expiry(pem: str) -> None:
    """Export the certificate's notAfter, so an alert fires before it lapses."""
    try:
        cert = x509.load_pem_x509_certificate(pem.encode("ascii"))
    except ValueError:
        return  # msal reports an unusable certificate itself
    metrics.credential_expires(cert.not_valid_after_utc.timestamp())


class MsalTokenProvider:
    """Client-credentials tokens from Entra ID (or any OpenID provider msal accepts)."""

    def __init__(self, app: Any, scope: str, auth: AuthSettings | None = None) -> None:
        self._app = app
        self._scope = scope
        self._auth = auth
        self._mounted = _mounted_credential(auth) if auth else ""
        self._token = ""
        self._expires_at = 0.0
        self._lock = asyncio.Lock()

    @classmethod
    async def create(cls, auth: AuthSettings, scope: str) -> MsalTokenProvider:
        return cls(await asyncio.to_thread(cls._build_app, auth), scope, auth)

    @staticmethod
    def _build_app(auth: AuthSettings) -> Any:
        authority = default_authority(auth)
        http_client = None
        if auth.ca_file:
            http_client = _PinnedCASession()
            http_client.verify = auth.ca_file
        try:
            credential = _credential(auth)
            return msal.ConfidentialClientApplication(
                auth.client_id, client_credential=credential, authority=authority,
                http_client=http_client,
                # Off Microsoft's hosts, msal would otherwise ask
                # login.microsoftonline.com to validate the authority.
                instance_discovery=urlsplit(authority).hostname in _MICROSOFT_AUTHORITY_HOSTS,
            )
        except (OSError, ValueError, requests.RequestException, MsalError) as exc:
            raise AuthError(f"cannot set up msal for {authority}: {type(exc).__name__}: "
                            f"{_safe(exc)}") from exc

    async def token(self, *, refresh: bool = False) -> str:
        if not refresh and time.monotonic() < self._expires_at:
            return self._token
        stale = self._token
        async with self._lock:
            # Someone else may have refreshed while we waited.
            if self._token != stale and time.monotonic() < self._expires_at:
                return self._token
            try:
                result = await asyncio.to_thread(self._acquire, refresh)
            except AuthError:
                metrics.token_acquired(False)
                raise
            metrics.token_acquired(True)
            self._token = str(result["access_token"])
            lifetime = float(result.get("expires_in", 3600))
            self._expires_at = time.monotonic() + max(lifetime - _EXPIRY_MARGIN, lifetime / 2)
            return self._token

    def _acquire(self, refresh: bool) -> Mapping[str, Any]:
        self._reload_if_rotated()
        if refresh:
            self._app.remove_tokens_for_client()
        try:
            result: Mapping[str, Any] = self._app.acquire_token_for_client(scopes=[self._scope])
        # msal raises MsalServiceError for a 5xx from the token endpoint.
        except (OSError, ValueError, requests.RequestException, MsalError) as exc:
            raise AuthError(f"token request failed: {type(exc).__name__}: {_safe(exc)}") from exc
        if "access_token" not in result:
            raise AuthError(f"token request refused: {result.get('error', 'unknown error')}: "
                            f"{str(result.get('error_description', ''))[:200]}")
        return result

    def _reload_if_rotated(self) -> None:
        if self._auth is None:
            return
        try:
            current = _mounted_credential(self._auth)
        except OSError as exc:
            # Mid-rotation (the symlink swap) or gone: keep the app we have.
            log.warning("cannot re-read the credential file: %s", exc.strerror)
            return
        if current != self._mounted:
            log.info("credential file changed: rebuilding the msal application")
            self._app = self._build_app(self._auth)
            self._mounted = current


def _safe(exc: BaseException) -> str:
    """An exception's message, short; never carries a credential (msal doesn't echo them)."""
    return str(exc).splitlines()[0][:200] if str(exc) else ""
