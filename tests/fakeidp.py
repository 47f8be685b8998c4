"""A fake Entra ID token endpoint over real TLS, for the real msal to talk to.

It serves the two things msal's client-credentials flow needs: OpenID
discovery (``/{tenant}/v2.0/.well-known/openid-configuration``) and the token
endpoint (``/{tenant}/oauth2/v2.0/token``). Every token request is recorded;
the tokens it issues are kept in ``issued`` so a ``FakeGraph`` can accept
exactly those (``graph.accept_token = idp.issued.__contains__``).

msal is blocking: call it from a thread (``asyncio.to_thread``) while this
server runs on the test's event loop.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import jwt
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from tlsutil import ServerTLS, make_server_tls

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
DEFAULT_CLIENT_ID = "6e2a9c1b-3f4d-4e5a-8b7c-9d0e1f2a3b4c"
DEFAULT_CLIENT_SECRET = "fake~secret.Value-0123456789"

Credential = Literal["secret", "certificate", "assertion", "none"]

_FAILURES = {
    400: ("invalid_request", "AADSTS900144: The request body must contain the following "
                             "parameter: 'grant_type'."),
    401: ("invalid_client", "AADSTS7000215: Invalid client secret provided."),
    403: ("unauthorized_client", "AADSTS700016: Application not found in the directory."),
    429: ("temporarily_unavailable", "AADSTS50196: The server terminated an operation "
                                     "because it encountered a client request loop."),
}
_TRANSIENT = ("temporarily_unavailable", "AADSTS90033: A transient error has occurred. "
                                         "Please try again.")


@dataclass(frozen=True)
class TokenRequest:
    tenant: str
    client_id: str | None
    grant_type: str | None
    credential: Credential
    client_assertion: str | None  # as sent: a JWT (certificate) or a raw federated token
    scope: str | None
    form: Mapping[str, str]

    def assertion_header(self) -> dict[str, Any]:
        """The unverified JWT header of the client assertion (x5t, x5t#S256, alg...)."""
        return dict(jwt.get_unverified_header(self.client_assertion or ""))

    def assertion_claims(self) -> dict[str, Any]:
        return dict(jwt.decode(self.client_assertion or "", options={"verify_signature": False}))


@dataclass
class _Failure:
    status: int
    remaining: int
    headers: Mapping[str, str]


@dataclass
class FakeIdP:
    """An identity provider for one tenant and one app registration.

    Accepted credentials: ``client_secret``; a certificate-signed assertion
    whose thumbprint matches a PEM in ``certificates`` (signature, ``aud``
    and ``iss`` checked like Entra does); a raw assertion in
    ``federated_tokens``. ``accept_assertion``, when set, decides instead.
    """

    tls: ServerTLS
    tenant: str = "contoso-tenant"
    client_id: str = DEFAULT_CLIENT_ID
    client_secret: str | None = DEFAULT_CLIENT_SECRET
    expires_in: int = 3600
    certificates: list[str] = field(default_factory=list)
    federated_tokens: set[str] = field(default_factory=set)
    accept_assertion: Callable[[str], bool] | None = None
    # Seconds between 10-byte pieces of the discovery answer (0: all at once): an
    # authority that drips, each piece in time for a per-read timeout.
    drip: float = 0.0
    issued: set[str] = field(default_factory=set)
    # Application roles granted to the app: set, tokens are JWT-shaped and carry them.
    roles: list[str] | None = None
    token_requests: list[TokenRequest] = field(default_factory=list)
    discovery_requests: int = 0
    port: int = 0
    _failures: list[_Failure] = field(default_factory=list)
    _runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def authority(self) -> str:
        return f"{self.base_url}/{self.tenant}"

    @property
    def token_endpoint(self) -> str:
        return f"{self.authority}/oauth2/v2.0/token"

    @property
    def ca_file(self) -> Path:
        return self.tls.ca_file

    def register_certificate(self, cert_pem: str) -> None:
        self.certificates.append(cert_pem)

    def fail_next(self, status: int, times: int = 1,
                  headers: Mapping[str, str] | None = None) -> None:
        """Answer the next ``times`` token requests with ``status`` and an AAD error body."""
        self._failures.append(_Failure(status, times, dict(headers or {})))

    def revoke_all(self) -> None:
        """Forget every issued token: a FakeGraph using ``issued`` now answers 401."""
        self.issued.clear()

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/{tenant}/v2.0/.well-known/openid-configuration", self._discovery)
        app.router.add_post("/{tenant}/oauth2/v2.0/token", self._token)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port,
                           ssl_context=self.tls.server_context)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def close(self) -> None:
        if self._runner is not None:
            # msal's requests session may still hold a keep-alive TLS connection.
            # A graceful TLS close waits for the client's close_notify, which an
            # idle blocking client never sends, and the socket would outlive the
            # test's event loop (ResourceWarning). Cut such connections instead.
            server = self._runner.server
            for handler in server.connections if server is not None else []:
                if handler.transport is not None:
                    handler.transport.abort()
            await self._runner.cleanup()
            self._runner = None

    async def _discovery(self, request: web.Request) -> web.StreamResponse:
        answer = await self._discovery_answer(request)
        if not self.drip:
            return answer
        body = answer.body if isinstance(answer.body, bytes) else b""
        dripping = web.StreamResponse(status=answer.status, headers={
            "Content-Type": "application/json"})
        await dripping.prepare(request)
        for start in range(0, len(body), 10):
            await dripping.write(body[start:start + 10])
            await asyncio.sleep(self.drip)
        await dripping.write_eof()
        return dripping

    async def _discovery_answer(self, request: web.Request) -> web.Response:
        self.discovery_requests += 1
        tenant = request.match_info["tenant"]
        if tenant.lower() != self.tenant.lower():
            return _aad_error(400, "invalid_tenant", f"AADSTS90002: Tenant '{tenant}' not found.")
        # Absolute URLs under the name the client used (a proxy in front keeps them).
        root = f"https://{request.host}/{self.tenant}"
        return web.json_response({
            "issuer": f"{root}/v2.0",
            "authorization_endpoint": f"{root}/oauth2/v2.0/authorize",
            "token_endpoint": f"{root}/oauth2/v2.0/token",
            "device_authorization_endpoint": f"{root}/oauth2/v2.0/devicecode",
            "end_session_endpoint": f"{root}/oauth2/v2.0/logout",
            "jwks_uri": f"{root}/discovery/v2.0/keys",
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt",
                                                      "client_secret_basic"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "tenant_region_scope": "EU",
            "cloud_instance_name": "microsoftonline.com",
        })

    async def _token(self, request: web.Request) -> web.Response:
        form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
        basic_id, basic_secret = _basic_auth(request.headers.get("Authorization", ""))
        client_id = form.get("client_id") or basic_id
        secret = form.get("client_secret") or basic_secret
        assertion = form.get("client_assertion")
        credential: Credential = "none"
        if secret is not None:
            credential = "secret"
        elif assertion is not None:
            credential = "certificate" if _jwt_thumbprint(assertion) else "assertion"
        self.token_requests.append(TokenRequest(
            request.match_info["tenant"], client_id, form.get("grant_type"), credential,
            assertion, form.get("scope"), form))

        if self._failures:
            failure = self._failures[0]
            failure.remaining -= 1
            if failure.remaining <= 0:
                self._failures.pop(0)
            error, description = _FAILURES.get(failure.status, _TRANSIENT)
            return _aad_error(failure.status, error, description, failure.headers)
        refusal = self._check(request.match_info["tenant"], form, client_id, credential,
                              secret, assertion)
        if refusal is not None:
            return refusal
        token = "fake-at." + secrets.token_urlsafe(32)
        if self.roles is not None:
            claims = {"aud": "https://graph.microsoft.com", "roles": self.roles,
                      "nonce": secrets.token_urlsafe(8)}
            token = ".".join(base64.urlsafe_b64encode(json.dumps(part).encode()).decode()
                             .rstrip("=") for part in ({"alg": "none"}, claims)) + ".fake"
        self.issued.add(token)
        return web.json_response({"token_type": "Bearer", "expires_in": self.expires_in,
                                  "ext_expires_in": self.expires_in, "access_token": token})

    def _check(self, tenant: str, form: Mapping[str, str], client_id: str | None,
               credential: Credential, secret: str | None,
               assertion: str | None) -> web.Response | None:
        if tenant.lower() != self.tenant.lower():
            return _aad_error(400, "invalid_tenant", f"AADSTS90002: Tenant '{tenant}' not found.")
        if form.get("grant_type") != "client_credentials":
            return _aad_error(400, "unsupported_grant_type",
                              "AADSTS70003: The app requested an unsupported grant type.")
        if client_id != self.client_id:
            return _aad_error(400, "unauthorized_client", f"AADSTS700016: Application with "
                              f"identifier '{client_id}' was not found in the directory.")
        scope = form.get("scope", "")
        if not scope.endswith("/.default"):
            return _aad_error(400, "invalid_scope", f"AADSTS1002012: The provided value for "
                              f"scope {scope} is not valid. Client credential flows must have a "
                              "scope value with /.default suffixed to the resource identifier.")
        if credential == "secret":
            if self.client_secret is None or secret != self.client_secret:
                return _aad_error(401, "invalid_client",
                                  "AADSTS7000215: Invalid client secret provided.")
            return None
        if credential == "none" or form.get("client_assertion_type") != JWT_BEARER:
            return _aad_error(401, "invalid_client", "AADSTS7000218: The request body must "
                              "contain 'client_assertion' or 'client_secret'.")
        assert assertion is not None
        if not self._assertion_ok(assertion):
            return _aad_error(401, "invalid_client",
                              "AADSTS700027: Client assertion failed signature validation.")
        return None

    def _assertion_ok(self, assertion: str) -> bool:
        if self.accept_assertion is not None:
            return self.accept_assertion(assertion)
        if assertion in self.federated_tokens:
            return True
        thumbprint = _jwt_thumbprint(assertion)
        for pem in self.certificates:
            cert = x509.load_pem_x509_certificate(pem.encode())
            if thumbprint and thumbprint.rstrip("=") in (
                    _b64(cert.fingerprint(hashes.SHA256())), _b64(cert.fingerprint(hashes.SHA1()))):
                try:
                    jwt.decode(assertion, cert.public_key(),
                               algorithms=["PS256", "RS256"], audience=self.token_endpoint,
                               issuer=self.client_id)
                except jwt.InvalidTokenError:
                    return False
                return True
        return False


async def start_fake_idp(tmpdir: Path, tenant: str = "contoso-tenant",
                         client_id: str = DEFAULT_CLIENT_ID,
                         client_secret: str | None = DEFAULT_CLIENT_SECRET,
                         expires_in: int = 3600) -> FakeIdP:
    """Make a CA and server certificate in ``tmpdir`` and serve a FakeIdP over TLS."""
    idp = FakeIdP(make_server_tls(Path(tmpdir)), tenant=tenant, client_id=client_id,
                  client_secret=client_secret, expires_in=expires_in)
    await idp.start()
    return idp


def _aad_error(status: int, error: str, description: str,
               headers: Mapping[str, str] | None = None) -> web.Response:
    return web.json_response({"error": error, "error_description": description,
                              "error_codes": [int(description[6:description.index(":")])]
                              if description.startswith("AADSTS") else [],
                              "trace_id": secrets.token_hex(8)},
                             status=status, headers=headers)


def _jwt_thumbprint(assertion: str) -> str | None:
    """x5t#S256 (or x5t) from a JWT header; None if it is not a certificate JWT."""
    try:
        header = jwt.get_unverified_header(assertion)
    except jwt.InvalidTokenError:
        return None
    value = header.get("x5t#S256") or header.get("x5t")
    return value if isinstance(value, str) else None


def _b64(digest: bytes) -> str:
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def _basic_auth(header: str) -> tuple[str | None, str | None]:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None, None
    try:
        user, _, password = base64.b64decode(value).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None, None
    return user, password
