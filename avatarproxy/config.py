"""The one place that reads configuration: TOML file, environment, flags.

Each component declares its options once, as the fields of its settings class
(``options.settings``); this module only loads, merges and reports them.
``OPTIONS`` lists the declarations, from which ``config.example.toml`` and
docs/configuration.md are generated (tests keep the committed copies identical).
Precedence, lowest first: defaults, the file, ``AZURE_*`` (Azure SDK /
workload-identity conventions), ``AVATARPROXY_<SECTION>_<KEY>``, command-line flags.
Every problem is reported at once, one line each, naming the key.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_type_hints
from urllib.parse import urlsplit

from .errors import ConfigError
from .graph.clouds import API_VERSIONS, CLOUDS, authority, graph_base_url
from .options import Option, declared, option, settings

_MiB = 1024 * 1024


@settings("server")
class ServerSettings:
    host: str = option("0.0.0.0", "Address to listen on.")  # noqa: S104
    port: int = option(8080, "TCP port to listen on.", minimum=1)
    metrics_port: int = option(
        0,
        "TCP port serving /metrics (and /healthz, /readyz) alone, so a NetworkPolicy can "
        "open it to Prometheus only; 0: /metrics is served on server.port.", minimum=0)
    workers: int = option(
        0,
        "Worker processes sharing the port; 0: the CPUs this container may use (cgroup "
        "quota and CPU affinity).", minimum=0)
    drain_seconds: float = option(
        5.0,
        "After SIGTERM: seconds to keep accepting while unready, so endpoints drop the pod.",
        minimum=0)
    grace_seconds: float = option(
        20.0,
        "After draining: seconds in-flight requests and the Graph fetches still running "
        "get to finish.", minimum=0.1)
    cors_origins: tuple[str, ...] = option(
        (),
        "Origins allowed to read avatars from scripts (canvas, fetch), e.g. "
        "https://intranet.contoso.com; \"*\" for any; empty: CORS off.")
    intranet_origins: tuple[str, ...] = option(
        (),
        "Origins of pages on other sites that show avatars, as browsers send them "
        "(https://intranet.contoso.com): they get ?fallback=404 and the usual caching, as "
        "same-site pages do. Other websites' pages get initials for ?fallback=404 and "
        "photos cached like initials, so they cannot tell who has a photo; \"*\": every "
        "site. Origins in cors_origins count as listed.")
    cross_origin_resource_policy: str = option(
        "cross-origin",
        "Cross-Origin-Resource-Policy of avatars: which sites may embed them.",
        choices=("cross-origin", "same-site", "same-origin"))
    request_deadline_seconds: float = option(
        3.0,
        "Longest a request waits for Graph; past it the answer is initials with no-store.",
        minimum=0.05)
    max_inflight: int = option(
        512,
        "Avatar requests waiting on Graph, Redis or images at once per process; past it: "
        "initials with no-store (avatars the process holds are still served).", minimum=1)
    max_queued_images: int = option(
        64,
        "Image jobs (decode, resize, encode) queued at once; past it: initials, no-store.",
        minimum=1)
    trusted_proxies: tuple[str, ...] = option(
        (),
        "Addresses or CIDR networks of reverse proxies whose X-Forwarded-For is believed.")


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


@settings("cache")
class CacheSettings:
    redis_url: str = option(
        "",
        "Shared Redis: redis://, rediss:// (TLS) or unix://, user:password@ allowed; "
        "cluster mode: any one node; sentinel mode: scheme, user and db only (host "
        "ignored). Empty (standalone): in-process memory only.")
    redis_timeout_seconds: float = option(
        0.5,
        "Timeout of one Redis command; a slow Redis counts as a miss.", minimum=0.01)
    redis_mode: str = option(
        "standalone",
        "How redis_url is reached: one server, a Sentinel-managed master, or a Cluster.",
        choices=("standalone", "sentinel", "cluster"))
    redis_password_file: str = option(
        "",
        "File holding the Redis password (re-read on each new connection); the user name "
        "stays in redis_url.")
    redis_ca_file: str = option(
        "",
        "CA bundle to trust for rediss:// (private PKI); empty: system trust.")
    redis_sentinels: tuple[str, ...] = option((), "Sentinel mode: the Sentinels, as host:port.")
    redis_sentinel_master: str = option(
        "mymaster",
        "Sentinel mode: the name the Sentinels monitor the master under.")
    redis_sentinel_password_file: str = option(
        "",
        "Sentinel mode: file holding the Sentinels' own password, if they require one.")
    key_prefix: str = option(
        "avatarproxy:",
        "Prefix of every Redis key, so deployments can share one Redis.")
    redis_retry_seconds: float = option(
        1.0,
        "After a Redis failure, how long to skip Redis before trying it again.", minimum=0.01)
    purge_ping_seconds: float = option(
        30.0,
        "Purge subscription: PING it after this long without traffic, and subscribe again "
        "if no PONG comes within as long again (a NAT may drop idle flows silently).", minimum=0.1)
    coalesce_wait_seconds: float = option(
        2.0,
        "How long a replica waits for another replica's download of the same image.", minimum=0)
    memory_max_bytes: int = option(
        64 * _MiB,
        "Size of the in-process cache tier in bytes, per worker process.", minimum=0)
    metadata_ttl_seconds: int = option(
        3600,
        "How long photo metadata (sizes, mediaEtag) is fresh.", minimum=1)
    negative_ttl_seconds: int = option(900, "How long a \"no photo\" answer is fresh.", minimum=1)
    stale_ttl_seconds: int = option(
        7 * 86400,
        "How long metadata is kept for serving stale.", minimum=1)
    image_ttl_seconds: int = option(
        30 * 86400,
        "How long encoded images are kept (they are immutable).", minimum=1)
    browser_max_age: int = option(3600, "Cache-Control max-age for photos, in seconds.", minimum=0)
    stale_while_revalidate: int = option(
        86400,
        "Cache-Control stale-while-revalidate for photos: how long a browser may show an "
        "expired photo while it revalidates; 0: off.", minimum=0)
    initials_max_age: int = option(
        300,
        "Cache-Control max-age for initials (the person may upload a photo).", minimum=0)


@settings("avatar")
class AvatarSettings:
    max_size: int = option(1024, "Largest size a client may request, in pixels.", minimum=1)
    default_format: str = option(
        "jpeg",
        "Format of photos for clients whose Accept lists neither AVIF nor WebP.",
        choices=("jpeg", "png", "webp", "avif"))
    extra_fonts: tuple[str, ...] = option(
        (),
        "Font files for initials in scripts the bundled font lacks (CJK, Thai...).")
    svg_title: bool = option(
        False,
        "Write the display name into the <title> of SVG initials (read by screen readers); "
        "false: the initials. Anyone who can reach the service (unsigned URLs) can then "
        "turn addresses into names.")


@settings("logging")
class LoggingSettings:
    format: str = option(
        "json",
        "json (one object per line) or text (for humans).", choices=("json", "text"))
    level: str = option(
        "info",
        "Lowest level logged.", choices=("debug", "info", "warning", "error"))
    access: float = option(
        0.0,
        "Share of requests given an access line: 0 off (the ingress logs them), 1 all.", minimum=0)
    log_upn: bool = option(
        False,
        "Log UPNs in clear; false: a short hash (UPNs are personal data).")


@settings("security")
class SecuritySettings:
    allowed_domains: tuple[str, ...] = option(
        (),
        "UPN domains served (an object id: its owner's UPN); empty: every domain.")
    allow_guests: bool = option(
        True,
        "Serve guests (#EXT# UPNs); false: they get 404, by UPN without a Graph call.")
    url_signing_keys: tuple[str, ...] = option(
        (),
        "HMAC keys; when set, every request needs ?sig= made with one of them (the first "
        "signs, all verify).", secret=True)
    blocked: tuple[str, ...] = option(
        (),
        "UPNs or object ids that always get initials, never their photo.")
    rate_limit_per_second: float = option(
        50.0,
        "Graph calls and renders per second allowed per client address (0: no limit).", minimum=0)
    rate_limit_burst: int = option(
        500,
        "Graph calls and renders a client address may cause at once before the rate "
        "applies.", minimum=1)


# Azure SDK environment conventions (also what the workload-identity webhook injects).
AZURE_ENV: Mapping[str, tuple[str, str]] = {
    "AZURE_TENANT_ID": ("auth", "tenant_id"),
    "AZURE_CLIENT_ID": ("auth", "client_id"),
    "AZURE_CLIENT_SECRET": ("auth", "client_secret"),
    "AZURE_CLIENT_CERTIFICATE_PATH": ("auth", "certificate_path"),
    "AZURE_FEDERATED_TOKEN_FILE": ("auth", "federated_token_file"),
}


@dataclass(frozen=True, slots=True)
class Settings:
    """Every component's settings: ``settings.<attribute>`` as in ``SECTIONS``."""

    server: ServerSettings
    graph: GraphSettings
    auth: AuthSettings
    cache: CacheSettings
    avatar: AvatarSettings
    logging: LoggingSettings
    security: SecuritySettings


# Settings' attributes and the settings class each holds (a TOML section may be
# declared by more than one component: each declares the keys it uses).
SECTIONS: tuple[tuple[str, type], ...] = tuple(get_type_hints(Settings).items())
OPTIONS: tuple[Option, ...] = tuple(o for _, cls in SECTIONS for o in declared(cls))
_BY_NAME = {(o.section, o.key): o for o in OPTIONS}
_SECTION_NAMES = {o.section for o in OPTIONS}


def _convert(option: Option, raw: Any, origin: str, problems: list[str]) -> Any:
    """Coerce a TOML value or an environment string; None and a problem if it won't
    or is out of bounds."""
    name = f"{option.section}.{option.key}"
    shown = "'***'" if option.secret else repr(raw)
    try:
        value = _coerce(option.kind, raw)
    except (TypeError, ValueError):
        kinds = {str: "a string", int: "an integer", float: "a number",
                 bool: "true or false", list: "a list of strings (comma-separated in env)"}
        problems.append(f"{name}: expected {kinds[option.kind]}, got {shown} ({origin})")
        return None
    if option.minimum is not None and value < option.minimum:
        problems.append(f"{name}: must be at least {option.minimum:g}, got {value!r} ({origin})")
        return None
    if option.choices and value not in option.choices:
        problems.append(f"{name}: must be one of {', '.join(option.choices)}, "
                        f"got {value!r} ({origin})")
        return None
    return value


def _coerce(kind: type, raw: Any) -> Any:
    if isinstance(raw, str) and kind is not str:
        text = raw.strip()
        if kind is bool:
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(raw)
            return text.lower() in ("true", "1", "yes")
        if kind is list:
            return tuple(p.strip() for p in text.split(",") if p.strip())
        return kind(text)
    if kind is list:
        if not isinstance(raw, list) or not all(isinstance(p, str) for p in raw):
            raise TypeError(raw)
        return tuple(raw)
    if kind is float and isinstance(raw, int) and not isinstance(raw, bool):
        return float(raw)
    if not isinstance(raw, kind) or (kind is int and isinstance(raw, bool)):
        raise TypeError(raw)
    return raw


def _read_file(path: Path, problems: list[str]) -> dict[tuple[str, str], Any]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        problems.append(f"--config: cannot read {path}: {exc.strerror}")
        return {}
    except tomllib.TOMLDecodeError as exc:
        problems.append(f"--config: {path} is not valid TOML: {exc}")
        return {}
    values: dict[tuple[str, str], Any] = {}
    for section, table in data.items():
        if section not in _SECTION_NAMES or not isinstance(table, dict):
            problems.append(f"[{section}]: unknown section in {path}")
            continue
        for key, raw in table.items():
            if (section, key) not in _BY_NAME:
                problems.append(f"{section}.{key}: unknown key in {path}")
                continue
            values[(section, key)] = raw
    return values


def load_settings(
    path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build ``Settings``; raise ``ConfigError`` listing every problem.

    ``overrides`` maps ``"section.key"`` to values from command-line flags.
    """
    env = os.environ if env is None else env
    problems: list[str] = []
    raw: dict[tuple[str, str], tuple[Any, str]] = {
        (o.section, o.key): (o.default, "default") for o in OPTIONS
    }
    if path is not None:
        for name, value in _read_file(Path(path), problems).items():
            raw[name] = (value, f"in {path}")
    for var, name in AZURE_ENV.items():
        if env.get(var):
            raw[name] = (env[var], f"from {var}")
    for declared_option in OPTIONS:
        if declared_option.env_name in env:
            var = declared_option.env_name
            raw[(declared_option.section, declared_option.key)] = (env[var], f"from {var}")
    for dotted, value in (overrides or {}).items():
        section, key = dotted.split(".", 1)
        raw[(section, key)] = (value, "from the command line")

    values = {name: _convert(_BY_NAME[name], value, origin, problems)
              for name, (value, origin) in raw.items()}
    origins = {name: origin for name, (_, origin) in raw.items()}
    problems += _cross_field(values, origins) + _url_problems(values, origins)
    authority_host = env.get("AZURE_AUTHORITY_HOST", "").strip().rstrip("/")
    if authority_host and not values[("auth", "authority")] and values[("auth", "tenant_id")]:
        values[("auth", "authority")] = f"{authority_host}/{values[('auth', 'tenant_id')]}"
    if problems:
        raise ConfigError(problems)
    _apply_cloud(values)
    return Settings(**{
        attribute: cls(**{o.key: values[(o.section, o.key)] for o in declared(cls)})
        for attribute, cls in SECTIONS
    })


# (cache.redis_url: redis.connection.check, with advice about passwords.)
_URL_OPTIONS = (("graph", "base_url"), ("auth", "authority"))


def _url_problems(values: Mapping[tuple[str, str], Any],
                  origins: Mapping[tuple[str, str], str]) -> list[str]:
    """URLs that cannot even be split (``https://[::1/t``, a port over 65535): one line
    each, never the URL itself (a Redis URL may hold a password)."""
    problems: list[str] = []
    for name in _URL_OPTIONS:
        value = values.get(name)
        if not value:
            continue
        try:
            _ = urlsplit(value).port
        except ValueError:
            problems.append(f"{name[0]}.{name[1]}: not a valid URL (a bracketed IPv6 address, "
                            f"or a port from 1 to 65535) ({origins[name]})")
    return problems


def _cross_field(values: Mapping[tuple[str, str], Any],
                 origins: Mapping[tuple[str, str], str]) -> list[str]:
    """Problems between options each valid on its own (an invalid one is None: skipped)."""
    problems: list[str] = []
    stale = values[("cache", "stale_ttl_seconds")]
    for key in ("metadata_ttl_seconds", "negative_ttl_seconds"):
        # Metadata is kept for stale_ttl: shorter, it is gone while still fresh.
        fresh = values[("cache", key)]
        if stale is not None and fresh is not None and stale < fresh:
            problems.append(f"cache.stale_ttl_seconds: must be at least cache.{key} ({fresh}), "
                            f"got {stale} ({origins[('cache', 'stale_ttl_seconds')]})")
    port, metrics_port = values[("server", "port")], values[("server", "metrics_port")]
    if metrics_port and metrics_port == port:
        problems.append(f"server.metrics_port: must differ from server.port ({port}), or be 0 "
                        f"to serve /metrics there ({origins[('server', 'metrics_port')]})")
    mode = values[("cache", "redis_mode")]
    if mode == "cluster" and values[("cache", "redis_url")] == "":
        # Without this, an empty URL would quietly mean no Redis at all.
        problems.append("cache.redis_url: cluster mode needs redis:// or rediss://host:port of "
                        "any one node")
    if values[("cache", "redis_sentinels")] and mode not in ("sentinel", None):
        problems.append(f"cache.redis_sentinels: used only when cache.redis_mode is sentinel, "
                        f"which is {mode!r} ({origins[('cache', 'redis_mode')]})")
    return problems


def _apply_cloud(values: dict[tuple[str, str], Any]) -> None:
    """Fill an empty ``graph.base_url`` / ``auth.authority`` from ``graph.cloud``."""
    cloud = values[("graph", "cloud")]
    if not values[("graph", "base_url")]:
        values[("graph", "base_url")] = graph_base_url(cloud, values[("graph", "api_version")])
    tenant = values[("auth", "tenant_id")]
    if not values[("auth", "authority")] and tenant:
        values[("auth", "authority")] = authority(cloud, tenant)


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


def file_problem(key: str, path: str) -> str | None:
    """``key: no such file: path`` (or why it cannot be read); None when readable or unset."""
    if not path:
        return None
    try:
        with open(path, "rb") as handle:
            handle.read(1)
    except FileNotFoundError:
        return f"{key}: no such file: {path}"
    except IsADirectoryError:
        return f"{key}: a directory, not a file: {path}"
    except OSError as exc:
        return f"{key}: cannot read {path}: {exc.strerror}"
    return None


def render_example() -> str:
    """The text of ``config.example.toml``: every option, its default and help."""
    lines = ["# avatarproxy configuration. Every key is shown with its default.",
             "# Each can be overridden by AVATARPROXY_<SECTION>_<KEY> (lists comma-separated).",
             "# Generated by `avatarproxy config-example`; do not edit by hand."]
    for section in dict.fromkeys(o.section for o in OPTIONS):
        lines += ["", f"[{section}]"]
        for declared_option in (o for o in OPTIONS if o.section == section):
            lines.append(f"# {declared_option.help}")
            lines.append(f"{declared_option.key} = {_toml_value(declared_option.default)}")
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)
