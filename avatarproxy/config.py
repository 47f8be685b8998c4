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

from . import contacts
from .cache import CacheSettings
from .contacts import ContactSettings
from .errors import ConfigError
from .graph.clouds import authority, graph_base_url
from .graph.settings import AuthSettings, GraphSettings
from .hashindex import DirectorySettings, settings_problems
from .imaging import AvatarSettings
from .logs import LoggingSettings
from .options import Option, declared
from .redis.settings import RedisSettings
from .security import SecuritySettings
from .server import ServerSettings

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
    contacts: ContactSettings  # the [graph] section's contacts route
    auth: AuthSettings
    redis: RedisSettings  # the [cache] section's Redis connection
    cache: CacheSettings
    avatar: AvatarSettings
    logging: LoggingSettings
    security: SecuritySettings
    directory: DirectorySettings


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
    problems += settings_problems(values[("directory", "gravatar")],
                                  values[("directory", "index_key")],
                                  values[("security", "url_signing_keys")])
    if values[("cache", "redis_sentinels")] and mode not in ("sentinel", None):
        problems.append(f"cache.redis_sentinels: used only when cache.redis_mode is sentinel, "
                        f"which is {mode!r} ({origins[('cache', 'redis_mode')]})")
    return problems + _contact_problems(values)


def _contact_problems(values: Mapping[tuple[str, str], Any]) -> list[str]:
    names = (("graph", "contacts"), ("graph", "contact_mailboxes"),
             ("security", "url_signing_keys"), ("security", "allowed_domains"),
             ("security", "allow_guests"))
    if any(values[name] is None for name in names):
        return []  # one of them is invalid, and already reported
    on, mailboxes, keys, domains, guests = (values[name] for name in names)
    return contacts.problems(on, mailboxes, any(keys), domains, guests)


def _apply_cloud(values: dict[tuple[str, str], Any]) -> None:
    """Fill an empty ``graph.base_url`` / ``auth.authority`` from ``graph.cloud``."""
    cloud = values[("graph", "cloud")]
    if not values[("graph", "base_url")]:
        values[("graph", "base_url")] = graph_base_url(cloud, values[("graph", "api_version")])
    tenant = values[("auth", "tenant_id")]
    if not values[("auth", "authority")] and tenant:
        values[("auth", "authority")] = authority(cloud, tenant)


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
