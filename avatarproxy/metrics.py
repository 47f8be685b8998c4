"""Prometheus metrics and the last known state of each shared dependency.

Other modules record through the small functions here, one line each, and
never see prometheus-client. Label values are bounded sets (route templates,
tiers, operations, status codes or classes): never a UPN or a raw path.

With several worker processes per pod, prometheus-client's multiprocess mode
is used (``PROMETHEUS_MULTIPROC_DIR``, set by ``lifecycle`` before the
workers start): each process writes its samples to a memory-mapped file and
``/metrics``, whichever worker answers, sums them. One process per pod would
need no such files but would leave every CPU but one idle.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Final, Literal

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


# labels() validates and locks on every call; the label sets on the request
# path are few (bounded, see above), so their children are looked up once.
_children: dict[tuple[Counter | Histogram, tuple[str, ...]], Any] = {}


def _child(metric: Counter | Histogram, *labels: str) -> Any:
    key = (metric, labels)
    child = _children.get(key)
    if child is None:
        child = _children[key] = metric.labels(*labels)
    return child


def request_done(route: str, method: str, status: int, source: str, seconds: float) -> None:
    _child(REQUESTS, route, method, f"{status // 100}xx", source).inc()
    _child(REQUEST_SECONDS, route).observe(seconds)


def cache_lookup(tier: str, result: str) -> None:
    """``result``: hit, miss or error."""
    _child(CACHE_LOOKUPS, tier, result).inc()
    if tier != "memory":
        _dependency(tier, result != "error")


def memory_bytes(size: int) -> None:
    MEMORY_BYTES.set(size)


def graph_request(operation: str, status: int | None, seconds: float) -> None:
    """``status`` None: no HTTP answer (timeout, connection refused)."""
    GRAPH_REQUESTS.labels(operation, str(status) if status else "error").inc()
    GRAPH_SECONDS.labels(operation).observe(seconds)
    if status in (429, 503):
        GRAPH_THROTTLED.labels(operation, str(status)).inc()
    _dependency("graph", status is not None and status < 500 and status != 429)


def retry_after_honoured(seconds: float) -> None:
    RETRY_AFTER_SECONDS.inc(seconds)


def token_acquired(ok: bool) -> None:
    TOKENS.labels("success" if ok else "failure").inc()
    _dependency("token", ok)


def credential_expires(timestamp: float) -> None:
    CREDENTIAL_EXPIRY.set(timestamp)


def purge_subscribed(subscribed: bool) -> None:
    PURGE_SUBSCRIBED.set(1 if subscribed else 0)


def hash_index_synced(timestamp: float) -> None:
    HASH_INDEX_SYNCED.set(timestamp)


def imaging(operation: str, seconds: float) -> None:
    """``operation``: decode, resize, encode or initials."""
    IMAGING_SECONDS.labels(operation).observe(seconds)


def cache_write_refused() -> None:
    CACHE_WRITES_REFUSED.inc()


def initials_fallback(reason: str) -> None:
    """``reason``: one of our error type names, or overloaded, deadline, rate_limited."""
    FALLBACKS.labels(reason).inc()


def since(start: float) -> float:
    return time.perf_counter() - start


def exposition() -> bytes:
    """The text format of every metric, summed over worker processes if there are several."""
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest(REGISTRY)


def process_exited(pid: int) -> None:
    """Drop a dead worker's live gauges (multiprocess mode only)."""
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
