"""App-only tokens for Graph: msal client credentials, run off the event loop.

msal is blocking (requests): building the application performs OpenID
discovery and acquiring a token performs HTTP, so both run in a thread. The
token is kept here as well, so the hot path never hops to a thread.

The identity provider is a dependency like Graph: every request to it has a
timeout, one acquisition runs at a time (callers share it), a failure is
followed by a growing pause instead of a retry per caller, and a token is
renewed early, in the background, so a slow or failing renewal costs nothing
while the current token is still valid.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

import msal
import requests
from cryptography import x509
from msal.exceptions import MsalError

from .. import metrics
from ..errors import AuthError
from .authproblems import as_problem, default_authority, failure, no_answer, refusal
from .settings import AuthSettings

T = TypeVar("T")

# Named as before the move into graph/: the runbooks and operators' log queries use it.
log = logging.getLogger("avatarproxy.auth")

# msal treats tokens with under five minutes left as expired: renew from there.
_EXPIRY_MARGIN = 300.0
# Stop using a token a little before the identity provider's expiry: the
# request carrying it still has to reach Graph.
_VALIDITY_MARGIN = 60.0
# Each request to the authority (discovery, token). msal ignores its own
# `timeout` when given an http_client, as it always is here: the session has it.
TOKEN_TIMEOUT_SECONDS = 10.0
_MICROSOFT_AUTHORITY_HOSTS = frozenset({
    "login.microsoftonline.com", "login.microsoft.com", "login.windows.net",
    "sts.windows.net", "login.microsoftonline.us", "login.partner.microsoftonline.cn",
    "login.chinacloudapi.cn",
})


class TokenProvider(Protocol):
    async def token(self, *, refresh: bool = False, refused: str = "") -> str: ...


class StaticTokenProvider:
    """A fixed bearer token: for the demo tenant, which has no identity provider."""

    def __init__(self, value: str) -> None:
        self._value = value

    async def token(self, *, refresh: bool = False, refused: str = "") -> str:
        return self._value


@dataclass(frozen=True)
class Backoff:
    """Pauses after failed token requests: ``first`` seconds, doubling up to ``cap``.

    Each pause is drawn between half and all of that, so replicas that failed
    together (the identity provider went down for all of them) do not come
    back in step.
    """

    first: float = 1.0
    cap: float = 60.0

    def pause(self, failures: int) -> float:
        ceiling = min(self.cap, self.first * 2 ** min(failures - 1, 30))
        return random.uniform(ceiling / 2, ceiling)  # noqa: S311 (jitter, not a secret)


class _AuthoritySession(requests.Session):
    """msal's HTTP session: a timeout on every request, and with ``ca_file`` that CA only.

    requests has no session-wide timeout and msal passes none. requests also
    lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE override a session's ``verify``,
    so a pinned CA is put back after the environment is merged; proxies from
    the environment are still honoured.
    """

    def __init__(self, timeout: float, ca_file: str = "") -> None:
        super().__init__()
        self.timeout = timeout
        self._pinned = bool(ca_file)
        if ca_file:
            self.verify = ca_file

    def request(self, *args: Any, **kwargs: Any) -> requests.Response:
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.timeout
        return super().request(*args, **kwargs)

    def merge_environment_settings(self, url: Any, proxies: Any, stream: Any, verify: Any,
                                   cert: Any) -> Any:
        settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
        if self._pinned:
            settings["verify"] = self.verify
        return settings


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

    def __init__(self, app: Any, scope: str, auth: AuthSettings | None = None, *,
                 request_timeout: float = TOKEN_TIMEOUT_SECONDS,
                 backoff: Backoff = Backoff()) -> None:
        self._app = app
        self._scope = scope
        self._auth = auth
        self._timeout = request_timeout
        self._backoff = backoff
        self._mounted = _mounted_credential(auth) if auth else ""
        self._token = ""
        # Monotonic times: renew from _renew_at; hand the token out until _valid_until.
        self._renew_at = 0.0
        self._valid_until = 0.0
        self._acquiring: asyncio.Task[str] | None = None
        self._failures = 0
        self._retry_at = 0.0  # no request to the identity provider before this
        self._last_error = ""

    @classmethod
    async def create(cls, auth: AuthSettings, scope: str, *,
                     request_timeout: float = TOKEN_TIMEOUT_SECONDS,
                     backoff: Backoff = Backoff(), strict: bool = False) -> MsalTokenProvider:
        """OpenID discovery happens here, with the session's timeout. An authority
        that refuses the configuration raises ``AuthError``; one that cannot be
        reached (or drips its answer) raises only if ``strict``: otherwise the
        provider starts without msal and sets it up on the first token request
        (start degraded: cached avatars and initials are served meanwhile, and the
        pod does not crash-loop through an identity-provider or egress blip)."""
        try:
            app = await _bounded_thread(request_timeout, "OpenID discovery", auth,
                                        cls._build_app, auth, request_timeout)
        except AuthError as exc:
            if strict or exc.misconfigured:
                raise
            log.warning("no token at start-up, starting degraded: %s; cached avatars and "
                        "initials are served until the authority answers", as_problem(exc))
            app = None
        return cls(app, scope, auth, request_timeout=request_timeout, backoff=backoff)

    @staticmethod
    def _build_app(auth: AuthSettings, request_timeout: float = TOKEN_TIMEOUT_SECONDS) -> Any:
        authority = default_authority(auth)
        try:
            credential = _credential(auth)
            return msal.ConfidentialClientApplication(
                auth.client_id, client_credential=credential, authority=authority,
                http_client=_AuthoritySession(request_timeout, auth.ca_file),
                # Off Microsoft's hosts, msal would otherwise ask
                # login.microsoftonline.com to validate the authority.
                instance_discovery=urlsplit(authority).hostname in _MICROSOFT_AUTHORITY_HOSTS,
            )
        except (OSError, ValueError, requests.RequestException, MsalError) as exc:
            raise failure("OpenID discovery", auth, exc, request_timeout) from exc

    async def token(self, *, refresh: bool = False, refused: str = "") -> str:
        """The current token; ``refresh``: Graph refused ``refused`` (the token it
        was sent), get another, unless another caller already has.

        Callers never queue behind a slow identity provider while a valid
        token exists, and never start a request of their own while one runs
        or while the pause after a failure lasts.
        """
        now = time.monotonic()
        if refresh and (not refused or refused == self._token):
            self._renew_at = self._valid_until = 0.0  # never hand it out again
        elif now < self._renew_at:
            return self._token
        elif now < self._valid_until:
            # Time to renew, but this one still works: renew in the background
            # and keep using it, whatever the identity provider does meanwhile.
            if self._acquiring is None and now >= self._retry_at:
                self._acquisition()
            return self._token
        if self._acquiring is None and now < self._retry_at:
            raise AuthError(f"no token: {self._last_error} (next attempt in "
                            f"{self._retry_at - now:.1f} s)")
        # shield: a caller giving up (its deadline) must not cancel the others' request.
        return await asyncio.shield(self._acquisition())

    def _acquisition(self) -> asyncio.Task[str]:
        """The running request to the identity provider, started if there is none."""
        if self._acquiring is None:
            self._acquiring = asyncio.ensure_future(self._acquire())
            self._acquiring.add_done_callback(self._acquired)
        return self._acquiring

    def _acquired(self, task: asyncio.Task[str]) -> None:
        self._acquiring = None
        if not task.cancelled():
            task.exception()  # retrieved: a background renewal has no waiter

    async def _acquire(self) -> str:
        started = time.monotonic()
        try:
            result = await _bounded_thread(self._timeout, "token request", self._auth,
                                           self._request)
        except AuthError as exc:
            metrics.token_acquired(False)
            self._failures += 1
            pause = self._backoff.pause(self._failures)
            self._retry_at = time.monotonic() + pause
            self._last_error = str(exc)
            left = self._valid_until - time.monotonic()
            log.warning("%s; %s; next attempt in %.1f s", exc,
                        f"keeping the current token ({left:.1f} s left)" if left > 0
                        else "no token meanwhile", pause)
            raise
        metrics.token_acquired(True)
        self._failures, self._retry_at = 0, 0.0
        self._token = str(result["access_token"])
        # From when we asked: the lifetime started no later than that.
        lifetime = float(result.get("expires_in", 3600))
        self._renew_at = started + max(lifetime - _EXPIRY_MARGIN, lifetime / 2)
        self._valid_until = started + lifetime - min(_VALIDITY_MARGIN, lifetime / 4)
        return self._token

    def _request(self) -> Mapping[str, Any]:
        if self._app is None:  # the authority was unreachable at start-up
            assert self._auth is not None  # create() always passes it
            self._app = self._build_app(self._auth, self._timeout)
        else:
            self._reload_if_rotated()
        return _acquire_once(self._app, self._scope, self._auth, self._timeout)

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
            self._app = self._build_app(self._auth, self._timeout)
            self._mounted = current


def _acquire_once(app: Any, scope: str, auth: AuthSettings | None,
                  timeout: float) -> Mapping[str, Any]:
    """One token request (blocking), or ``AuthError`` saying why not."""
    # We ask only when our copy is due or refused; msal's cache holds the
    # same token (and would hand it back until five minutes before expiry).
    app.remove_tokens_for_client()
    try:
        result: Mapping[str, Any] = app.acquire_token_for_client(scopes=[scope])
    # msal raises MsalServiceError for a 5xx from the token endpoint.
    except (OSError, ValueError, requests.RequestException, MsalError) as exc:
        raise failure("token request", auth, exc, timeout) from exc
    if "access_token" not in result:
        raise refusal(auth, result)
    return result


async def fetch_token(auth: AuthSettings, scope: str,
                      request_timeout: float = TOKEN_TIMEOUT_SECONDS) -> str:
    """Discovery and one token request, without metrics or log lines: ``serve``'s
    start-up check and ``doctor``'s. ``AuthError`` says why not."""
    app = await _bounded_thread(request_timeout, "OpenID discovery", auth,
                                MsalTokenProvider._build_app, auth, request_timeout)
    result = await _bounded_thread(request_timeout, "token request", auth,
                                   _acquire_once, app, scope, auth, request_timeout)
    return str(result["access_token"])


# The session's timeout bounds each read, not a whole exchange: an authority that
# drips its answer a byte at a time would hold a token request for ever. Past
# this many timeouts the caller gives up (the thread is left to finish alone).
_TOTAL_TIMEOUTS = 2


async def _bounded_thread(read_timeout: float, step: str, auth: AuthSettings | None,
                          func: Callable[..., T], *args: Any) -> T:
    """``func(*args)`` in a thread; ``AuthError`` (an outage) past ``_TOTAL_TIMEOUTS``."""
    seconds = _TOTAL_TIMEOUTS * read_timeout
    try:
        async with asyncio.timeout(seconds):
            return await _daemon_thread(func, *args)
    except TimeoutError as exc:
        raise no_answer(step, auth, seconds) from exc


async def _daemon_thread(func: Callable[..., T], *args: Any) -> T:
    """``func(*args)`` in a daemon thread of its own. Not the loop's executor: at exit,
    ``asyncio.run`` (and the interpreter) join its threads, so one an authority keeps
    dripping into would hold the process long after we gave up on it."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(outcome: Callable[[], None]) -> None:
        if not future.done():
            outcome()

    def run() -> None:
        try:
            result = func(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
            report = functools.partial(settle, functools.partial(future.set_exception, exc))
        else:
            report = functools.partial(settle, functools.partial(future.set_result, result))
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits
            loop.call_soon_threadsafe(report)

    threading.Thread(target=run, name="authority", daemon=True).start()
    return await future
