"""Log lines: JSON objects to stdout (or text for humans), a request id, access lines.

Every line carries the request id of the request it was written for (a
context variable set by ``ops.observe``). Access lines are sampled
(``logging.access``; off by default, since the ingress logs requests) and
name the route and a short hash of the person, never the raw path: UPNs are
personal data unless ``logging.log_upn`` says otherwise. Nothing here ever
sees a token: Graph requests are not logged and our exceptions carry none.

Client mistakes (``client_error``) are not our errors: INFO, no traceback, and
at most a line per interval, so a client sending them by the thousand cannot
flood the log.

Python's logging is process-wide (the root logger's handlers, one logger per
name), and so is what this module keeps: the ``logging`` settings lines follow
(``_settings``, read by ``subject_ref`` from every layer that names a person,
so that no component needs them passed in) and the client-mistake reporter.
Nothing is chosen on import: the composition root applies the configuration
once per process (``app.configure_logging`` calls ``configure`` or ``adopt``);
until then, lines follow the safe defaults (people hashed, no access lines).
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import json
import logging
import math
import random
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from aiohttp.http_exceptions import HttpProcessingError

from .options import option, settings


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

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")
ACCESS = logging.getLogger("avatarproxy.access")
CLIENT = logging.getLogger("avatarproxy.client")
_EXTRA_FIELDS = ("route", "method", "status", "duration_ms", "subject", "source", "reason")
# Until configure or adopt: the defaults of logging.*, whatever writes the first lines.
_settings = LoggingSettings(format="json", level="info", access=0.0, log_upn=False)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = REQUEST_ID.get()
        if request_id:
            line["request_id"] = request_id
        for name in _EXTRA_FIELDS:
            if hasattr(record, name):
                line[name] = getattr(record, name)
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        request_id = REQUEST_ID.get()
        return f"{text} [{request_id}]" if request_id else text


class _UnparseableRequests(logging.Filter):
    """aiohttp logs a request it cannot parse with the raw request line, which may
    name a person; unless ``log_upn``, the line keeps what was wrong, not the data."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError) and not _settings.log_upn:
            record.msg = f"{record.msg}: {type(exc).__name__} {exc.code} (request withheld)"
            record.exc_info = record.exc_text = None
        return True


_UNPARSEABLE = _UnparseableRequests()


def guard_library_lines() -> None:
    """Hold the web server's own log lines to ``logging.log_upn`` too (idempotent)."""
    logging.getLogger("aiohttp.server").addFilter(_UNPARSEABLE)


def adopt(settings: LoggingSettings) -> None:
    """What log lines say (``log_upn``, access sampling), leaving handlers alone."""
    global _settings
    _settings = settings


def configure(settings: LoggingSettings) -> None:
    """Replace the root handlers with one stdout handler in the chosen format."""
    adopt(settings)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter() if settings.format == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.level.upper())
    # aiohttp's own access log is replaced by ours (sampled, no raw paths).
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    guard_library_lines()


def subject_ref(key: str) -> str:
    """What logs call a person: a short hash unless ``logging.log_upn`` is set.

    The one place that decides: every log line naming a person (a UPN, an
    address, a throttled mailbox) goes through here.
    """
    if _settings.log_upn:
        return key
    return "sha256:" + hashlib.sha256(key.lower().encode("utf-8")).hexdigest()[:12]


def wants_access_line() -> bool:
    rate = _settings.access
    # Not a security decision: sampling needs no cryptographic randomness.
    return rate >= 1.0 or (rate > 0.0 and random.random() < rate)  # noqa: S311


def access(route: str, method: str, status: int, seconds: float, subject: str | None,
           source: str, reason: str | None = None) -> None:
    """One access line; ``reason``: what was wrong with a refused request (our public text)."""
    ACCESS.info("%s %s %d%s", method, route, status, f": {reason}" if reason else "", extra={
        "route": route, "method": method, "status": status,
        "duration_ms": round(seconds * 1000, 2),
        "subject": subject_ref(subject) if subject else None, "source": source,
        "reason": reason})


class ClientErrors:
    """Client mistakes, reported at INFO without tracebacks: the first at once,
    then, while more keep coming, one summary line per ``interval`` counting
    them by kind. ``what`` is one of a bounded set (a status and our public
    reason, never the request's own text), so the counts stay small too."""

    def __init__(self, interval: float = 60.0) -> None:
        self.interval = interval
        self._counts: Counter[str] = Counter()
        self._until = -math.inf
        self._timer: asyncio.TimerHandle | None = None

    @property
    def counting(self) -> bool:
        """Whether a mistake now would be counted for a summary, not logged at once."""
        return time.monotonic() < self._until

    def note(self, what: str) -> None:
        if self.counting:
            self._counts[what] += 1
            return
        if self._counts:  # a window ended with no loop to time its summary
            self.flush()
            self._counts[what] += 1
            return
        CLIENT.info("client error: %s (more are summed up every %g s)", what, self.interval)
        self._open_window()

    def flush(self) -> None:
        """The summary of the interval now ending; the window stays open while
        mistakes keep coming, so a steady flood costs one line per interval."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._counts:
            self._until = -math.inf
            return
        kinds = ", ".join(f"{what}: {n}" for what, n in self._counts.most_common(10))
        CLIENT.info("client errors in the last %g s: %d more (%s)", self.interval,
                    sum(self._counts.values()), kinds)
        self._counts.clear()
        self._open_window()

    def _open_window(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._until = time.monotonic() + self.interval
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (a thread): the next mistake after the window reports
        self._timer = loop.call_later(self.interval, self.flush)


CLIENT_ERRORS = ClientErrors()


def client_error(what: str) -> None:
    """Report a client's mistake: ``"400 size must be ..."``, ``"403 bad signature"``."""
    CLIENT_ERRORS.note(what)
