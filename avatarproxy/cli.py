"""Command line: ``avatarproxy serve | demo | config-example | doctor | warm | sign | purge``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from . import __version__, lifecycle, logs
from .config import Settings, load_settings, render_example
from .errors import AuthError, BadRequest, ConfigError, GraphError
from .graph.authproblems import as_problem
from .graph.settings import check_credentials

if TYPE_CHECKING:  # imported where used: each command loads only what it needs
    from .models import Subject
    from .warm import Pacer, WarmStats

log = logging.getLogger("avatarproxy.serve")

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="avatarproxy", description="Microsoft 365 profile photos for <img> tags: serve "
        "them (serve), try the demo (demo), print the sample configuration (config-example), "
        "check a deployment (doctor), pre-fill the cache (warm), sign URLs (sign), take a "
        "person's cached photo down (purge).")
    parser.add_argument("--version", action="version", version=f"avatarproxy {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve avatars from Microsoft Graph")
    serve.add_argument("--config", metavar="PATH", help="TOML configuration file")
    serve.add_argument("--host", help="override server.host")
    serve.add_argument("--port", type=int, help="override server.port")
    demo = commands.add_parser("demo", help="serve a built-in demo tenant (no Graph needed)")
    demo.add_argument("--config", metavar="PATH",
                      help="TOML configuration file (Graph, credentials and Redis are ignored)")
    demo.add_argument("--host", default="127.0.0.1", help="address to listen on")
    demo.add_argument("--port", type=int, default=8080, help="port to listen on")
    commands.add_parser("config-example", help="print config.example.toml")
    _add_doctor(commands)
    _add_warm(commands)
    sign = commands.add_parser("sign", help="print URL with its ?sig= (security.url_signing_keys)")
    sign.add_argument("--config", metavar="PATH", help="TOML configuration file")
    sign.add_argument("url", help="an avatar URL or path, e.g. /avatar/adele@contoso.com/48")
    purge = commands.add_parser(
        "purge", help="delete a person's cached metadata and images",
        description="Deletes each person's cached metadata and images from Redis, then tells "
        "the running replicas (through Redis) to drop them from their memory too. A replica "
        "cut off from Redis keeps its copy until cache.metadata_ttl_seconds; browsers and "
        "proxies keep theirs until cache.browser_max_age: nothing the server does recalls "
        "those. Remove or replace the photo in Entra ID first. Exits 1 if any argument is "
        "not a UPN, object id or contact (the others are purged) or Redis fails.")
    purge.add_argument("--config", metavar="PATH", help="TOML configuration file")
    purge.add_argument("subjects", nargs="+", metavar="UPN",
                       help="userPrincipalName or object id (give both to cover both forms), "
                       "or an Outlook contact: contact/<mailbox>/<contact id>, the mailbox as "
                       "its URLs write it")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if args.command == "config-example":
        sys.stdout.write(render_example())
        return 0
    if args.command == "doctor":
        return _doctor(args)
    try:
        if args.command == "demo":
            from .demo.serve import run_demo  # the demo's fake tenant stays out of serve

            run_demo(args.host, args.port, args.config)
            return 0
        if args.command == "warm":
            return _warm(args)
        if args.command == "sign":
            return _sign(args)
        if args.command == "purge":
            return asyncio.run(_purge(args))
        return _serve(args)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"avatarproxy: config: {problem}", file=sys.stderr)
        return 2
    except AuthError as exc:  # warm without a token
        print(f"avatarproxy: auth: {as_problem(exc)}", file=sys.stderr)
        return 1


def _serve(args: argparse.Namespace) -> int:
    from . import preflight
    from .app import configure_logging, create_app, startup_problems

    overrides: dict[str, Any] = {}
    if args.host is not None:
        overrides["server.host"] = args.host
    if args.port is not None:
        overrides["server.port"] = args.port
    settings = load_settings(args.config, overrides=overrides)
    # Here, not in a worker: several workers would each die with a traceback.
    problems = check_credentials(settings.auth) + startup_problems(settings)
    if problems:
        raise ConfigError(problems)
    configure_logging(settings)
    # The start-up policy: what the authority or Redis refuse stops start-up;
    # what cannot be reached now is an outage the service starts through.
    report = asyncio.run(preflight.probe(settings))
    if report.problems:
        raise ConfigError(report.problems)
    log.info("%s", preflight.summary(settings, lifecycle.worker_count(settings.server)))
    for warning in preflight.warnings(settings):
        log.warning("start-up: %s", warning)
    for outage in report.degraded:
        log.warning("start-up: degraded: %s", outage)

    async def make_app() -> web.Application:
        return create_app(settings)

    return lifecycle.run(settings, make_app)


def _sign(args: argparse.Namespace) -> int:
    from .contacts import sign_warnings
    from .security import sign_url

    settings = load_settings(args.config)
    keys = settings.security.url_signing_keys
    if not keys:
        raise ConfigError(["security.url_signing_keys: empty, nothing to sign with"])
    try:
        print(sign_url(keys[0], args.url, settings.avatar.max_size))
    except BadRequest as exc:  # the service would answer 400: a signature would not help
        print(f"avatarproxy: sign: URL: {exc.public}", file=sys.stderr)
        return 2
    for warning in sign_warnings(args.url, settings.contacts):
        print(f"avatarproxy: sign: warning: {warning}", file=sys.stderr)
    return 0


async def _purge(args: argparse.Namespace) -> int:
    from .cache import AvatarCache, RedisTier
    from .preflight import explain_redis
    from .purge import parse_target, target_text
    from .redis import connection
    from .redis.link import RedisLink
    from .redis.purgechannel import announce

    settings = load_settings(args.config)
    if not connection.enabled(settings.redis):
        raise ConfigError(["cache.redis_url: empty; each process's memory tier is private: "
                           "restart the service to forget cached photos"])
    problems = connection.check(settings.redis)
    if problems:
        raise ConfigError(problems)
    subjects = []
    for text in args.subjects:  # a bad one is named; the others are still purged
        try:
            subjects.append(parse_target(text))
        except BadRequest as exc:
            print(f"avatarproxy: purge: {text!r}: {exc.public}", file=sys.stderr)
    cache = AvatarCache(settings.cache, [RedisTier(RedisLink(connection.connect(settings.redis)))],
                        settings.redis.key_prefix)
    # Where the replicas listen (in a Cluster, the node they subscribed on).
    channel = connection.subscriber(settings.redis)
    try:
        for subject in subjects:
            deleted = await cache.purge(subject)
            named = target_text(subject)
            replicas = await announce(channel, settings.redis.key_prefix, named)
            print(f"{named}: {deleted} cached entries deleted, "
                  f"{replicas} running replicas told")
    except connection.REDIS_FAILURES as exc:  # a Cluster's unreachable error included
        print(f"avatarproxy: purge: {explain_redis(settings.redis, exc)}", file=sys.stderr)
        return 1
    finally:
        await cache.close()
        await channel.aclose()
    return 0 if len(subjects) == len(args.subjects) else 1


def _add_doctor(commands: Any) -> None:
    doctor = commands.add_parser(
        "doctor", help="check configuration, Redis, token, permissions, fonts and Graph",
        description="Prints a pass/warn/fail list; exits 1 if anything failed.")
    doctor.add_argument("--config", metavar="PATH", help="TOML configuration file")
    doctor.add_argument("--upn", action="append", default=[], metavar="UPN",
                        help="fetch this user's name and photo from Graph (repeatable)")
    doctor.add_argument("--group", action="append", default=[], metavar="ID",
                        help="fetch this group's name and photo (repeatable)")
    doctor.add_argument("--team", action="append", default=[], metavar="ID",
                        help="fetch this team's name and photo (repeatable)")


def _doctor(args: argparse.Namespace) -> int:
    from .doctor import diagnose, exit_code, render
    from .inputs import parse_object_id, parse_subject

    try:
        subjects = [*(parse_subject(u) for u in args.upn),
                    *(parse_object_id(g, "group") for g in args.group),
                    *(parse_object_id(t, "team") for t in args.team)]
    except BadRequest as exc:
        print(f"avatarproxy: doctor: {exc.public}", file=sys.stderr)
        return 2
    findings = asyncio.run(diagnose(args.config, subjects))
    sys.stdout.write(render(findings))
    return exit_code(findings)


def _add_warm(commands: Any) -> None:
    warm = commands.add_parser(
        "warm", help="pre-fill the shared Redis cache for a list of users or the whole tenant",
        description="Safe to interrupt and re-run: what is cached under the current mediaEtag "
                    "is skipped. Exits 1 if any person failed or is unknown.")
    warm.add_argument("--config", metavar="PATH", help="TOML configuration file")
    who = warm.add_mutually_exclusive_group(required=True)
    who.add_argument("--users", metavar="FILE",
                     help="UPNs or object ids, one a line (blank lines and # comments skipped)")
    who.add_argument("--all", action="store_true",
                     help="every enabled user (every user without User.Read.All)")
    warm.add_argument("--sizes", default="48,96", help="comma-separated sizes (default 48,96)")
    warm.add_argument("--formats", default="",
                      help="comma-separated photo formats (jpeg, png, webp, avif); default: "
                           "avatar.default_format and what browsers negotiate at each size")
    warm.add_argument("--rate", type=float, default=10.0,
                      help="at most this many Graph requests a second (default 10)")


def _warm_options(args: argparse.Namespace, settings: Settings) -> tuple[list[int], list[str]]:
    """``--sizes`` and ``--formats``; ``ConfigError`` with every problem (and the config's)."""
    from .inputs import parse_size

    problems = check_credentials(settings.auth)
    if args.rate <= 0:
        problems.append(f"--rate: must be above 0, got {args.rate:g}")
    sizes: list[int] = []
    try:
        sizes = [parse_size(p.strip(), settings.avatar.max_size) for p in args.sizes.split(",")]
    except BadRequest as exc:
        problems.append(f"--sizes: {exc.public}")
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    problems += [f"--formats: {f!r} is not one of jpeg, png, webp, avif" for f in formats
                 if f not in ("jpeg", "png", "webp", "avif")]
    if problems:
        raise ConfigError(problems)
    return sizes, formats


def _warm(args: argparse.Namespace) -> int:
    from .app import configure_logging
    from .warm import Pacer, WarmStats, summary

    settings = load_settings(args.config)
    sizes, formats = _warm_options(args, settings)
    configure_logging(settings, output=False)  # log_upn; warm's lines stay plain text on stderr
    stats = WarmStats()
    where: dict[str, str] = {}  # subject key -> file:line, to point at what went wrong
    subjects = _read_users(args.users, stats, where) if args.users else None
    pacer = Pacer(args.rate)
    started = time.monotonic()
    try:
        asyncio.run(_run_warm(settings, sizes, formats, pacer, subjects, stats))
    except KeyboardInterrupt:
        print("\nwarm: interrupted; what finished is cached, re-run to continue",
              file=sys.stderr)
        print(summary(stats, pacer, time.monotonic() - started))
        return 130
    except GraphError as exc:
        if isinstance(exc, AuthError):
            raise
        # The /users listing failed (a page refused or unreachable): stop, keep what is done.
        detail = f": {exc.detail}" if exc.detail else ""
        print(f"\navatarproxy: warm: {exc}{detail}", file=sys.stderr)
        print(summary(stats, pacer, time.monotonic() - started))
        return 1
    if sys.stderr.isatty():
        print(file=sys.stderr)
    _print_people(stats, where)
    print(summary(stats, pacer, time.monotonic() - started))
    return 1 if stats.failed or stats.unknown else 0


async def _run_warm(settings: Settings, sizes: list[int], formats: list[str], pacer: Pacer,
                    subjects: list[Subject] | None, stats: WarmStats) -> None:
    """Warm ``subjects`` (None: every user), printing progress to stderr."""
    from .warm import all_users, listed, open_warmer

    # Lines of --users that did not parse already count as failed.
    progress = _progress_printer(len(subjects) + stats.failed if subjects is not None else None)
    async with open_warmer(settings, sizes, pacer, formats=formats) as warmer:
        source = listed(subjects) if subjects is not None else all_users(warmer.graph)
        await warmer.run(source, stats, progress)


def _progress_printer(total: int | None) -> Callable[[WarmStats], None]:
    """One line rewritten in place on a terminal; a line per 100 people in a log."""
    from .warm import progress_line

    tty = sys.stderr.isatty()

    def progress(stats: WarmStats) -> None:
        if tty:
            print("\r" + progress_line(stats, total), end="", file=sys.stderr, flush=True)
        elif stats.done % 100 == 0 or stats.done == total:
            print(progress_line(stats, total), file=sys.stderr, flush=True)

    return progress


def _print_people(stats: Any, where: dict[str, str]) -> None:
    """Who failed or is unknown, by the line of --users that named them (else as logs
    name people), so a typo in a launch list can be found."""
    for key, reason in stats.failures:
        print(f"avatarproxy: warm: {where.get(key) or logs.subject_ref(key)}: {reason}",
              file=sys.stderr)
    for key in stats.unknown_keys:
        print(f"avatarproxy: warm: {where.get(key) or logs.subject_ref(key)}: unknown: no "
              "user has this userPrincipalName, object id or e-mail address", file=sys.stderr)


def _read_users(path: str, stats: Any, where: dict[str, str]) -> list[Any]:
    from .inputs import parse_subject

    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError([f"--users: cannot read {path}: {exc.strerror}"]) from exc
    subjects = []
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):  # a guest's #EXT# is mid-line
            continue
        try:
            subject = parse_subject(text)
        except BadRequest as exc:
            stats.seen += 1  # a person meant, and one count: failed
            stats.failed += 1
            print(f"avatarproxy: warm: {path}:{number}: {exc.public}", file=sys.stderr)
            continue
        if subject.key not in where:  # listed twice: warmed (and counted) once
            where[subject.key] = f"{path}:{number}"
            subjects.append(subject)
    return subjects
