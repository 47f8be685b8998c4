"""The HTTP server's options (``[server]``), declared once here (see ``options``).

Read by ``lifecycle`` (where to listen, worker processes, draining), ``web`` and
``sites`` (origins, CORS, CORP), ``limits`` (caps, the deadline) and
``security`` (trusted proxies): a leaf module, so each can import it.
"""

from __future__ import annotations

from .options import option, settings


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
