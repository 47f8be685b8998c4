"""``avatarproxy doctor``: small checks of a deployment, each returning findings.

Configuration, fonts and codecs, Redis reachability and latency, a token
(and the application permissions in it), then real Graph calls for a given
user, group or team, through the Graph client serving builds (``app.Builder``),
and a warning if serving's policy would not show them. A failing check never
stops the others unless they depend on it (no token: no Graph calls). Any
``fail`` makes the command exit non-zero.
"""

from __future__ import annotations

import base64
import io
import json
import statistics
import time
from collections.abc import Iterable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any, Literal

from PIL import Image, features

from . import imaging, preflight
from .app import Builder
from .config import Settings, load_settings
from .errors import (
    AuthError,
    ConfigError,
    GraphError,
    GraphPermissionDenied,
    InvalidImage,
    NotFound,
)
from .graph.auth import StaticTokenProvider, TokenProvider, fetch_token, scope_for
from .graph.authproblems import as_problem, default_authority
from .graph.client import GraphClient
from .graph.settings import check_credentials
from .initials import InitialsRenderer
from .models import Subject
from .redis import connection
from .redis.settings import RedisSettings
from .security import Policy

Status = Literal["pass", "warn", "fail"]


@dataclass(frozen=True, slots=True)
class Finding:
    check: str
    status: Status
    detail: str


# Application permission -> the app roles that grant it (any one suffices).
REQUIRED_ROLES: Mapping[str, tuple[str, ...]] = {
    "ProfilePhoto.Read.All": ("ProfilePhoto.Read.All", "User.Read.All", "User.ReadWrite.All"),
    "User.ReadBasic.All": ("User.ReadBasic.All", "User.Read.All", "User.ReadWrite.All",
                           "Directory.Read.All"),
}
OPTIONAL_ROLES: Mapping[str, tuple[tuple[str, ...], str]] = {
    "Group.Read.All or GroupMember.Read.All": (
        ("Group.Read.All", "GroupMember.Read.All", "Directory.Read.All"),
        "group names for initials"),
    "Team.ReadBasic.All": (("Team.ReadBasic.All",), "team photos and names"),
    "User.Read.All": (("User.Read.All", "User.ReadWrite.All", "Directory.Read.All"),
                      "`warm --all` skipping disabled accounts and directory.gravatar"),
}

# Grants of Entra ID with no mailbox scope: the contacts route's permission is to be
# given in Exchange, scoped to its mailboxes (docs/contacts.md).
UNSCOPED_ROLES = ("Contacts.Read", "Contacts.ReadWrite")


async def diagnose(config_path: str | None, subjects: Iterable[Subject] = (),
                   env: Mapping[str, str] | None = None) -> list[Finding]:
    """Run every check; ``subjects`` get a real Graph photo call each."""
    try:
        settings = load_settings(config_path, env=env)
    except ConfigError as exc:
        return [Finding("config", "fail", problem) for problem in exc.problems]
    findings = [*check_config(settings, config_path), *check_imaging(settings)]
    findings += await check_redis(settings.redis)
    if any(f.check == "config" and f.status == "fail" for f in findings):
        return findings
    tokens, token_findings = await check_token(settings)
    findings += token_findings
    if tokens is not None:
        findings += await check_graph(settings, tokens, subjects)
    return findings


def check_config(settings: Settings, path: str | None) -> list[Finding]:
    problems = check_credentials(settings.auth) + preflight.file_problems(settings)
    warnings = [Finding("config", "warn", text) for text in preflight.warnings(settings)]
    if problems:
        return [Finding("config", "fail", problem) for problem in problems] + warnings
    return [Finding("config", "pass", f"{path or 'defaults and environment'}: Graph "
                    f"{settings.graph.base_url}, authority {default_authority(settings.auth)}"),
            *warnings]


def check_imaging(settings: Settings) -> list[Finding]:
    findings: list[Finding] = []
    try:
        renderer = InitialsRenderer.from_settings(settings.avatar)
        names = ", ".join(p.name for p in renderer.font_paths)
        cjk = ("" if renderer.draws_cjk else "; none covers Chinese, Japanese and Korean: "
               "such names get the UPN's letters (avatar.cjk_font)")
        findings.append(Finding("fonts", "pass", f"loaded {names}{cjk}"))
    except ConfigError as exc:
        findings += [Finding("fonts", "fail", problem) for problem in exc.problems]
    if features.check("raqm"):
        versions = ", ".join(f"{name} {features.version(name)}" for name in ("fribidi", "harfbuzz")
                             if features.version(name))
        findings.append(Finding("layout", "pass", f"raqm {features.version('raqm')} ({versions}): "
                                "Arabic and Hebrew initials are shaped, right to left"))
    else:
        findings.append(Finding("layout", "warn", "no raqm layout (libraqm/libfribidi): Arabic "
                                "and Hebrew initials are drawn unshaped"))
    for fmt in ("jpeg", "png", "webp", "avif"):
        try:
            Image.new("RGB", (8, 8)).save(io.BytesIO(), fmt.upper())
        except (OSError, KeyError, ValueError) as exc:
            status: Status = "fail" if fmt == settings.avatar.default_format else "warn"
            findings.append(Finding("codecs", status, f"cannot encode {fmt}: {exc}"))
    if not any(f.check == "codecs" for f in findings):
        findings.append(Finding("codecs", "pass", "jpeg, png, webp and avif encode"))
    return findings


async def check_redis(cache: RedisSettings) -> list[Finding]:
    if not connection.enabled(cache):
        return [Finding("redis", "pass", "not configured: in-process memory cache only")]
    problems = connection.check(cache)
    if problems:
        return [Finding("redis", "fail", problem) for problem in problems]
    timings = []
    try:
        # The service's own client (single server, Sentinel or Cluster).
        redis = connection.connect(cache)
        try:
            for _ in range(5):
                started = time.perf_counter()
                await redis.run(redis.client.ping())
                timings.append((time.perf_counter() - started) * 1000)
        finally:
            await redis.aclose()
    except connection.REDIS_FAILURES as exc:  # a Cluster's unreachable error included
        problem = preflight.explain_redis(cache, exc)
        policy = ("serve refuses to start" if problem.misconfigured else
                  "serve starts on the memory tier and uses Redis once it answers")
        return [Finding("redis", "fail", f"{problem} ({policy})")]
    median = statistics.median(timings)
    status: Status = "warn" if median > cache.redis_timeout_seconds * 500 else "pass"
    return [Finding("redis", status, f"PING median {median:.2f} ms "
                    f"(cache.redis_timeout_seconds {cache.redis_timeout_seconds:g} s)")]


async def check_token(settings: Settings) -> tuple[TokenProvider | None, list[Finding]]:
    try:
        token = await fetch_token(settings.auth, scope_for(settings.graph.base_url))
    except AuthError as exc:
        policy = ("serve refuses to start" if exc.misconfigured else "serve starts degraded: "
                  "cached avatars and initials until the authority answers")
        return None, [Finding("token", "fail", f"{as_problem(exc)} ({policy})")]
    provider = StaticTokenProvider(token)
    roles = token_roles(token)
    if roles is None:
        return provider, [Finding("token", "warn", "acquired, but it is not a readable JWT: "
                                  "permissions are checked by the Graph calls only")]
    findings = [Finding("token", "pass", "acquired; app roles: " + (", ".join(roles) or "none"))]
    for permission, granting in REQUIRED_ROLES.items():
        if not set(granting) & set(roles):
            findings.append(Finding("permission", "fail", f"{permission} is missing: grant the "
                                    "application permission and admin consent"))
    broad = sorted(set(roles) & set(UNSCOPED_ROLES))
    if broad:
        findings.append(Finding("permission", "warn", (
            f"{' and '.join(broad)} granted in Entra ID reaches every mailbox of the tenant: "
            "scope it in Exchange with RBAC for Applications instead, or restrict it with an "
            "application access policy (docs/contacts.md)")))
    for permission, (granting, purpose) in OPTIONAL_ROLES.items():
        if not set(granting) & set(roles):
            # The Gravatar index cannot be built without it: no longer optional then.
            needed = permission == "User.Read.All" and settings.directory.gravatar
            findings.append(Finding("permission", "fail" if needed else "warn", (
                f"{permission} is missing: directory.gravatar's index needs it" if needed
                else f"{permission} is missing: needed for {purpose}")))
    return provider, findings


def token_roles(token: str) -> list[str] | None:
    """The ``roles`` claim of a JWT access token, read without verifying it."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims: Any = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except ValueError:
        return None
    roles = claims.get("roles", []) if isinstance(claims, dict) else None
    if not isinstance(roles, list):
        return None
    return sorted(str(role) for role in roles)


async def check_graph(settings: Settings, tokens: TokenProvider,
                      subjects: Iterable[Subject]) -> list[Finding]:
    """Each subject's name and photo, through the client serving builds (``app.Builder``);
    and whether serving's policy would show them."""
    findings: list[Finding] = []
    builder = Builder(settings, tokens=tokens)
    async with AsyncExitStack() as stack:
        # Throttling pauses stay in this process: the doctor asks Graph itself.
        graph = await builder.open_graph(stack)
        subjects = list(subjects)
        if subjects and builder.policy.blocked.entries:
            await builder.policy.blocked.resolve(graph)  # every name of the blocked people
        for subject in subjects:
            findings += await _check_subject(graph, subject)
            findings += _check_policy(builder.policy, subject)
    return findings


def _check_policy(policy: Policy, subject: Subject) -> list[Finding]:
    """What serving would refuse this subject, though Graph has it: a warning."""
    name = f"graph {subject.kind} {subject.key}"
    try:
        policy.check_subject(subject)
    except NotFound:
        return [Finding(name, "warn", "serve answers 404: security.allowed_domains or "
                        "security.allow_guests refuses it")]
    if policy.is_blocked(subject):
        return [Finding(name, "warn", "serve answers initials, never the photo: "
                        "security.blocked names it")]
    return []


async def _check_subject(graph: GraphClient, subject: Subject) -> list[Finding]:
    name = f"graph {subject.kind} {subject.key}"
    try:
        profile = await graph.profile(subject)
        if profile is None:
            return [Finding(name, "warn", "not found in the directory")]
        named = Finding(name, "pass", f"name {profile.display_name!r}")
    except GraphError as exc:
        named = _graph_failure(name, exc)
    try:
        meta = await graph.photo_meta(subject)
        if not meta.has_photo:
            return [named, Finding(name, "pass", "no photo: initials will be served")]
        width, height = imaging.image_dimensions(await graph.photo_bytes(subject, None))
    except (GraphError, InvalidImage) as exc:
        return [named, _graph_failure(name, exc)]
    return [named, Finding(name, "pass", f"photo {width}x{height}, "
                           f"mediaEtag {meta.media_etag}")]


def _graph_failure(name: str, exc: Exception) -> Finding:
    if isinstance(exc, GraphPermissionDenied):
        return Finding(name, "fail", f"Graph 403: grant the application permission "
                       f"{exc.permission}")
    return Finding(name, "fail", str(exc))


def render(findings: list[Finding]) -> str:
    lines = [f"{f.status.upper():<4}  {f.check}: {f.detail}" for f in findings]
    failures = sum(f.status == "fail" for f in findings)
    warnings = sum(f.status == "warn" for f in findings)
    lines.append(f"doctor: {failures} failed, {warnings} warnings, "
                 f"{len(findings) - failures - warnings} passed")
    return "\n".join(lines) + "\n"


def exit_code(findings: list[Finding]) -> int:
    return 1 if any(f.status == "fail" for f in findings) else 0
