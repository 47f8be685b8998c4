"""The Graph adapter's options: ``[graph]`` (where and how Graph is called) and
``[auth]`` (the app's credential), declared once here (see ``options``)."""

from __future__ import annotations

from ..options import option, settings
from .clouds import API_VERSIONS, CLOUDS


@settings("graph")
class GraphSettings:
    cloud: str = option(
        "global",
        "National cloud: selects the Graph endpoint, the authority host and the token "
        "scope.", choices=tuple(CLOUDS))
    api_version: str = option(
        "v1.0",
        "Graph API version appended to the cloud's endpoint.", choices=API_VERSIONS)
    base_url: str = option(
        "",
        "Microsoft Graph root, API version included; empty: from graph.cloud and "
        "graph.api_version.")
    timeout_seconds: float = option(10.0, "Total timeout of one Graph request.", minimum=0.1)
    max_concurrency: int = option(16, "Graph requests in flight at once, per process.", minimum=1)
    ca_file: str = option(
        "",
        "CA bundle to trust for Graph (private PKI, test servers); empty: system trust.")
    max_retries: int = option(
        2,
        "Retries of a throttled or failed Graph call, if the wait fits "
        "retry_max_wait_seconds.", minimum=0)
    retry_max_wait_seconds: float = option(
        1.0,
        "Longest Retry-After (or backoff) a request waits for before retrying.", minimum=0)
    breaker_threshold: int = option(
        5,
        "Consecutive Graph failures (5xx, timeouts) that open the circuit breaker.", minimum=1)
    breaker_cooldown_seconds: float = option(
        10.0,
        "How long an open circuit breaker stops Graph calls before one probe.", minimum=0.01)


@settings("auth")
class AuthSettings:
    tenant_id: str = option("", "Entra ID tenant (directory) id. AZURE_TENANT_ID.")
    client_id: str = option("", "Application (client) id. AZURE_CLIENT_ID.")
    client_secret: str = option(
        "",
        "Client secret. Prefer client_secret_file. AZURE_CLIENT_SECRET.", secret=True)
    client_secret_file: str = option(
        "",
        "File holding the client secret (a mounted Kubernetes secret).")
    certificate_path: str = option(
        "",
        "PEM file with the certificate and its private key. AZURE_CLIENT_CERTIFICATE_PATH.")
    federated_token_file: str = option(
        "",
        "Workload-identity token file, re-read on each token request. "
        "AZURE_FEDERATED_TOKEN_FILE.")
    authority: str = option(
        "",
        "Token authority; empty: https://login.microsoftonline.com/<tenant_id> "
        "(AZURE_AUTHORITY_HOST replaces the host).")
    ca_file: str = option(
        "",
        "CA bundle to trust for the authority (private PKI, test identity providers).")


def check_credentials(auth: AuthSettings) -> list[str]:
    """Problems that stop ``serve`` (the demo needs no credentials)."""
    problems = [f"auth.{key}: required (or {env})" for key, env in
                (("tenant_id", "AZURE_TENANT_ID"), ("client_id", "AZURE_CLIENT_ID"))
                if not getattr(auth, key)]
    given = [k for k in ("client_secret", "client_secret_file", "certificate_path",
                         "federated_token_file") if getattr(auth, k)]
    if not given:
        problems.append("auth: one of client_secret, client_secret_file, certificate_path, "
                        "federated_token_file is required")
    elif len(given) > 1:
        problems.append(f"auth: set only one credential, got {', '.join(given)}")
    if auth.authority and not auth.authority.startswith("https://"):
        problems.append(f"auth.authority: must be an https:// URL, got {auth.authority!r}")
    return problems
