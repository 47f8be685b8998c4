"""Why no token could be had, in an operator's words: ``AuthError`` from msal's failures.

msal and requests report a refused connection as three chained exceptions
whose first line stops before the cause; an identity provider's refusal comes
back as an OAuth error code. Each becomes one message with the root cause
whole, the setting to look at (``AuthError.key``) and whether it is a
misconfiguration (waiting will not help: ``serve`` refuses to start) or an
outage (``serve`` starts degraded and keeps asking).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

import requests
from msal.exceptions import MsalError

from ..errors import AuthError
from .settings import AuthSettings

# OAuth error codes that a retry cannot fix, and the setting each points at
# ("" : the credential in use).
_REFUSALS: Mapping[str, tuple[str, str]] = {
    "invalid_client": ("", "compare it with the app registration's credentials in Entra ID "
                           "(a secret's value, not its id; not expired)"),
    "unauthorized_client": ("auth.client_id", "the application (client) id must be registered "
                                              "in the tenant of auth.authority"),
    "invalid_tenant": ("auth.tenant_id", "no such tenant at the authority"),
    "invalid_scope": ("graph.base_url", "the token scope is <root of graph.base_url>/.default"),
    "unsupported_grant_type": ("auth.authority", "the authority does not issue client "
                                                 "credentials tokens"),
    "invalid_request": ("", "the identity provider refused the request"),
}
_DISCOVERY_REFUSED = re.compile(r"HTTP status: (\d+), Error: (.*)", re.DOTALL)
_TENANT_CODES = ("AADSTS90002", "AADSTS900023", "AADSTS90013")


def credential_key(auth: AuthSettings | None) -> str:
    """The setting holding the credential msal is given (the order ``auth`` uses)."""
    for key in ("federated_token_file", "certificate_path", "client_secret_file"):
        if auth is not None and getattr(auth, key):
            return f"auth.{key}"
    return "auth.client_secret"


def as_problem(exc: AuthError) -> str:
    """One configuration line: the key, what happened, what to do."""
    line = f"{exc.key}: {exc}" if exc.key else str(exc)
    return f"{line.rstrip('.')}; {exc.hint}" if exc.hint else line


def refusal(auth: AuthSettings | None, result: Mapping[str, Any]) -> AuthError:
    """The identity provider answered a token request without a token."""
    error = str(result.get("error") or "unknown error")
    description = _first_line(str(result.get("error_description") or ""))
    message = f"token request refused: {error}: {description}".rstrip(": ")
    if error not in _REFUSALS:  # temporarily_unavailable, server_error...
        return AuthError(message, key="auth.authority",
                         hint="the identity provider is failing; it is asked again after a "
                              "pause")
    key, hint = _REFUSALS[error]
    if description.startswith(_TENANT_CODES):
        key, hint = "auth.tenant_id", "no such tenant at the authority"
    return AuthError(message, key=key or credential_key(auth), hint=hint, misconfigured=True)


def no_answer(step: str, auth: AuthSettings | None, seconds: float) -> AuthError:
    """``step`` got no whole answer in ``seconds`` (stalled, or dripping it)."""
    authority, where = _authority(auth)
    return AuthError(f"{step} at {authority} failed: no answer in {seconds:.0f} s",
                     key="auth.authority", hint=_egress(where))


def default_authority(auth: AuthSettings) -> str:
    """``auth.authority``, else Entra ID's for ``auth.tenant_id``."""
    return auth.authority or f"https://login.microsoftonline.com/{auth.tenant_id}"


def _authority(auth: AuthSettings | None) -> tuple[str, str]:
    """The authority URL and its host:port."""
    authority = default_authority(auth) if auth is not None else (
        "https://login.microsoftonline.com/")
    parts = urlsplit(authority)
    return authority, f"{parts.hostname}:{parts.port or 443}"


def _egress(where: str) -> str:
    return (f"check auth.authority and egress to {where}, and HTTPS_PROXY and NO_PROXY if "
            "egress goes through a proxy")


def failure(step: str, auth: AuthSettings | None, exc: BaseException,
            timeout: float) -> AuthError:
    """``step`` (OpenID discovery, token request) raised ``exc``."""
    authority, where = _authority(auth)
    chain = list(_chain(exc))
    cause = _describe(chain[-1])
    if any(isinstance(e, requests.RequestException) for e in chain):
        if "CERTIFICATE_VERIFY_FAILED" in cause:
            return AuthError(f"{step} to {where}: its certificate is not trusted: {cause}",
                             key="auth.ca_file", misconfigured=True,
                             hint="set auth.ca_file to the CA bundle that issued it")
        if any(isinstance(e, requests.Timeout) for e in chain):
            cause = f"no answer within {timeout:g} s ({cause})"
        return AuthError(f"{step} at {authority} failed: {cause}", key="auth.authority",
                         hint=_egress(where))
    if isinstance(exc, MsalError):  # a 5xx from the authority
        return AuthError(f"{step} at {authority} failed: {cause}", key="auth.authority",
                         hint="the identity provider is failing; it is asked again after a "
                              "pause")
    if isinstance(exc, OSError):  # reading the credential file
        key = credential_key(auth)
        return AuthError(f"cannot read it: {cause}", key=key, misconfigured=True)
    return _value_error(step, auth, authority, chain)


def _value_error(step: str, auth: AuthSettings | None, authority: str,
                 chain: list[BaseException]) -> AuthError:
    for link in chain:
        refused = _DISCOVERY_REFUSED.search(str(link))
        if refused:
            status, body = refused.groups()
            return AuthError(f"{step}: {authority} answered {status}: {_aad_message(body)}",
                             key="auth.authority", misconfigured=True,
                             hint="check auth.tenant_id and auth.authority")
    if any(isinstance(e, json.JSONDecodeError) for e in chain):
        return AuthError(f"{step}: {authority} did not answer OpenID configuration (JSON)",
                         key="auth.authority", misconfigured=True,
                         hint="the authority is https://<host>/<tenant id>")
    cause = _describe(chain[-1])
    if "should consist of" in cause:  # msal's words for an authority it cannot parse
        return AuthError(f"not an authority URL: {authority}", key="auth.authority",
                         misconfigured=True, hint="https://<host>/<tenant id>")
    return AuthError(f"{step}: {cause}", key=credential_key(auth), misconfigured=True)


def _aad_message(body: str) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        return _first_line(body)
    if isinstance(data, dict) and data.get("error_description"):
        return _first_line(str(data["error_description"]))
    return _first_line(body)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and its causes, outermost first."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _describe(exc: BaseException) -> str:
    return _first_line(str(exc)) or type(exc).__name__


def _first_line(text: str) -> str:
    """The first line, whole (Entra appends trace and correlation ids on later lines)."""
    return text.strip().splitlines()[0].strip() if text.strip() else ""
