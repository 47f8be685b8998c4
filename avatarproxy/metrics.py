"""Prometheus metrics and the last known state of each shared dependency.

Other modules record through the small functions here, one line each, and
never see prometheus-client. Label values are bounded sets (route templates,
tiers, operations, status codes or classes): never a UPN or a raw path.

With several worker processes per pod, prometheus-client's multiprocess mode
is used (``PROMETHEUS_MULTIPROC_DIR``, set by ``lifecycle`` before the
workers start): each process writes its samples to a memory-mapped file and
``/metrics``, whichever worker answers, sums them. One process per pod would
need no such files but would leave every CPU but one idle.

Writing those files costs more than the rest of a memory hit, so counts and
observations are tallied in plain per-process dicts and ``flush`` moves them
into prometheus-client: ``flushing`` does so every ``FLUSH_SECONDS`` and
once more at shutdown, and ``exposition`` first flushes the answering
process. A scrape may lag the other workers by up to ``FLUSH_SECONDS``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import threading
import time
from bisect import bisect_left
from typing import Final, Literal

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

log = logging.getLogger(__name__)
CONTENT_TYPE: Final = CONTENT_TYPE_LATEST
_FAST = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

REQUESTS = Counter("avatarproxy_requests_total", "HTTP requests answered.",
                   ["route", "method", "status_class", "source"])
REQUEST_SECONDS = Histogram("avatarproxy_request_duration_seconds",
                            "Time to answer an HTTP request.", ["route"], buckets=_FAST)
IN_FLIGHT = Gauge("avatarproxy_requests_in_flight", "HTTP requests being answered.",
                  multiprocess_mode="livesum")
CACHE_LOOKUPS = Counter("avatarproxy_cache_lookups_total", "Cache lookups by tier and result.",
                        ["tier", "result"])
MEMORY_BYTES = Gauge("avatarproxy_cache_memory_bytes", "Bytes held in the in-process cache tier.",
                     multiprocess_mode="livesum")
GRAPH_REQUESTS = Counter("avatarproxy_graph_requests_total",
                         "Microsoft Graph requests by operation and HTTP status "
                         "(\"error\": no answer).", ["operation", "status"])
GRAPH_SECONDS = Histogram("avatarproxy_graph_request_duration_seconds",
                          "Microsoft Graph request latency.", ["operation"], buckets=_FAST)
GRAPH_THROTTLED = Counter("avatarproxy_graph_throttled_total",
                          "Graph 429/503 answers (throttling).", ["operation", "status"])
RETRY_AFTER_SECONDS = Counter("avatarproxy_graph_retry_after_seconds_total",
                              "Time spent honouring Graph's Retry-After.")
TOKENS = Counter("avatarproxy_token_acquisitions_total",
                 "Token requests to the identity provider by result.", ["result"])
IMAGING_SECONDS = Histogram("avatarproxy_imaging_duration_seconds",
                            "Image processing time by operation.", ["operation"],
                            buckets=_FAST)
CACHE_WRITES_REFUSED = Counter("avatarproxy_cache_writes_refused_total",
                               "Redis writes refused for lack of memory (value not cached).")
FALLBACKS = Counter("avatarproxy_initials_fallback_total",
                    "Initials served because of an error rather than a missing photo.",
                    ["reason"])
DEPENDENCY_UP = Gauge("avatarproxy_dependency_up",
                      "1 if the last use of a shared dependency succeeded, else 0.",
                      ["dependency"], multiprocess_mode="livemin")


class GaugeOnFirstUse:
    """A gauge that is not exported at all until it is first set.

    prometheus-client exports a gauge without labels as 0 from the moment it
    is declared (in multiprocess mode, in every worker's file). For these
    a 0 would be a lie an alert acts on: an expiry in 1970 for a deployment
    that uses a client secret, a purge subscription "down" where Redis is not
    configured at all, a hash index never synced where there is none. So each
    exists only in the processes that use it.
    """

    def __init__(self, name: str, documentation: str,
                 multiprocess_mode: Literal["livemin", "livemax", "livesum"]) -> None:
        self.name = name
        self._documentation = documentation
        self._mode = multiprocess_mode
        self._gauge: Gauge | None = None
        self._lock = threading.Lock()  # the certificate is read in msal's thread

    def set(self, value: float) -> None:
        with self._lock:
            if self._gauge is None:
                self._gauge = Gauge(self.name, self._documentation,
                                    multiprocess_mode=self._mode)
        self._gauge.set(value)


# livemin: the pod shows the earliest expiry any live worker holds (during a
# rotation, the older certificate until every worker has the new one).
CREDENTIAL_EXPIRY = GaugeOnFirstUse("avatarproxy_credential_expiry_timestamp_seconds",
                                    "When the client certificate expires (Unix time); "
                                    "absent unless a certificate is used.", "livemin")
# livemin: every worker holds a subscription of its own (and a memory tier it
# purges); the pod shows 0 while any live worker has none.
PURGE_SUBSCRIBED = GaugeOnFirstUse("avatarproxy_purge_subscribed",
                                   "1 while this process is subscribed to the purge channel; "
                                   "absent when Redis is not configured.", "livemin")
# livemin: with Redis every worker reads the shared index's last round; without, each
# keeps its own index: the pod shows its stalest worker.
HASH_INDEX_SYNCED = GaugeOnFirstUse("avatarproxy_hash_index_last_sync_timestamp_seconds",
                                    "When the Gravatar hash index's last round ended (Unix "
                                    "time; 0: none yet); absent unless directory.gravatar.",
                                    "livemin")

# Readiness never depends on these; they are reported in /readyz.
_states: dict[str, str] = {}


def _dependency(name: str, ok: bool) -> None:
    state = "ok" if ok else "failing"
    if _states.get(name) != state:
        _states[name] = state
        DEPENDENCY_UP.labels(name).set(1 if ok else 0)


def dependency_states() -> dict[str, str]:
    return dict(_states)


FLUSH_SECONDS: Final = 1.0

# Since the last flush: counter increments and histogram tallies (a count per
# bucket of _FAST, the overflow bucket, then the sum), by metric and labels.
# The image pool's and msal's threads record too, hence the lock.
_lock = threading.Lock()
_counts: dict[tuple[Counter, tuple[str, ...]], float] = {}
_tallies: dict[tuple[Histogram, tuple[str, ...]], list[float]] = {}
_in_flight = 0


def _count(metric: Counter, labels: tuple[str, ...], amount: float = 1.0) -> None:
    key = (metric, labels)
    with _lock:
        _counts[key] = _counts.get(key, 0.0) + amount


def _observe(metric: Histogram, labels: tuple[str, ...], value: float) -> None:
    with _lock:
        _tally(metric, labels, value)


def _tally(metric: Histogram, labels: tuple[str, ...], value: float) -> None:
    """``_observe`` for a caller holding ``_lock``."""
    key = (metric, labels)
    tally = _tallies.get(key)
    if tally is None:
        tally = _tallies[key] = [0.0] * (len(_FAST) + 2)
    tally[bisect_left(_FAST, value)] += 1  # the first bucket whose bound is >= value
    tally[-1] += value


def flush() -> None:
    """Move this process's tallies into prometheus-client (its files, with workers)."""
    global _counts, _tallies
    with _lock:
        counts, _counts = _counts, {}
        tallies, _tallies = _tallies, {}
    for (counter, labels), amount in counts.items():
        (counter.labels(*labels) if labels else counter).inc(amount)
    for (histogram, labels), tally in tallies.items():
        child = histogram.labels(*labels)
        # observe() takes one value; these are its own per-bucket values.
        for bucket, count in zip(child._buckets, tally, strict=False):
            if count:
                bucket.inc(count)
        child._sum.inc(tally[-1])
    IN_FLIGHT.set(_in_flight)


async def flushing(every: float = FLUSH_SECONDS) -> None:
    """Flush every ``every`` seconds until cancelled (the caller flushes once more). A
    flush that fails is logged, once a minute at most, and the next one is tried:
    one bad tally must not stop this process's counts for good."""
    logged = -math.inf
    while True:
        await asyncio.sleep(every)
        try:
            flush()
        except Exception:
            if time.monotonic() - logged >= 60:
                logged = time.monotonic()
                log.exception("flushing the metrics failed (logged once a minute at most)")


def request_started() -> None:
    global _in_flight
    _in_flight += 1  # on the event loop only


def request_done(route: str, method: str, status: int, source: str, seconds: float) -> None:
    global _in_flight
    _in_flight -= 1
    key = (REQUESTS, (route, method, f"{status // 100}xx", source))
    with _lock:  # once for both: every request passes here
        _counts[key] = _counts.get(key, 0.0) + 1
        _tally(REQUEST_SECONDS, (route,), seconds)


def cache_lookup(tier: str, result: str) -> None:
    """``result``: hit, miss or error."""
    _count(CACHE_LOOKUPS, (tier, result))
    if tier != "memory":
        _dependency(tier, result != "error")


def memory_bytes(size: int) -> None:
    MEMORY_BYTES.set(size)


def graph_request(operation: str, status: int | None, seconds: float) -> None:
    """``status`` None: no HTTP answer (timeout, connection refused)."""
    _count(GRAPH_REQUESTS, (operation, str(status) if status else "error"))
    _observe(GRAPH_SECONDS, (operation,), seconds)
    if status in (429, 503):
        _count(GRAPH_THROTTLED, (operation, str(status)))
    _dependency("graph", status is not None and status < 500 and status != 429)


def retry_after_honoured(seconds: float) -> None:
    _count(RETRY_AFTER_SECONDS, (), seconds)


def token_acquired(ok: bool) -> None:
    _count(TOKENS, ("success" if ok else "failure",))
    _dependency("token", ok)


def credential_expires(timestamp: float) -> None:
    CREDENTIAL_EXPIRY.set(timestamp)


def purge_subscribed(subscribed: bool) -> None:
    PURGE_SUBSCRIBED.set(1 if subscribed else 0)


def hash_index_synced(timestamp: float) -> None:
    HASH_INDEX_SYNCED.set(timestamp)


def imaging(operation: str, seconds: float) -> None:
    """``operation``: decode, resize, encode or initials."""
    _observe(IMAGING_SECONDS, (operation,), seconds)


def cache_write_refused() -> None:
    _count(CACHE_WRITES_REFUSED, ())


def initials_fallback(reason: str) -> None:
    """``reason``: one of our error type names, or overloaded, deadline, rate_limited."""
    _count(FALLBACKS, (reason,))


def since(start: float) -> float:
    return time.perf_counter() - start


def exposition() -> bytes:
    """The text format of every metric, summed over worker processes if there are several."""
    flush()
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest(REGISTRY)


def process_exited(pid: int) -> None:
    """Drop a dead worker's live gauges (multiprocess mode only)."""
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
