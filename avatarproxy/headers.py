"""The headers of an avatar answer, and of a CORS preflight.

Pure. The same hot avatars are asked for request after request, so an
answer's whole header list is prepared once per (avatar, format's ``Vary``,
allowed origin) and reused (``answer_headers``): a hit only copies it (a
multidict copies another faster than it builds itself from pairs).
"""

from __future__ import annotations

import functools

from multidict import CIMultiDict, CIMultiDictProxy

from .models import StandIn

Pairs = tuple[tuple[str, str], ...]

# Request headers a script may send beyond the CORS-safelisted ones.
PREFLIGHT_HEADERS = "Accept, If-None-Match, X-Request-Id"

# An SVG opened directly is a document: no scripts, no external loads, no forms.
SVG_POLICY = "default-src 'none'; style-src 'unsafe-inline'; sandbox"


def allowed_origin(cors_origins: tuple[str, ...], origin: str | None) -> str | None:
    """``Access-Control-Allow-Origin`` for a request from ``origin``: None if not listed."""
    if "*" in cors_origins:
        return "*"
    return origin if origin in cors_origins else None


def cors_headers(cors_origins: tuple[str, ...], origin: str | None) -> Pairs:
    """``Vary: Origin`` when CORS is on, and ``Access-Control-Allow-Origin`` for a
    listed origin."""
    if not cors_origins:
        return ()
    allowed = allowed_origin(cors_origins, origin)
    vary = (("Vary", "Origin"),)
    return vary if allowed is None else (*vary, ("Access-Control-Allow-Origin", allowed))


@functools.lru_cache(maxsize=4096)  # the same hot avatars, request after request
def answer_headers(content_type: str, etag: str, source: str, max_age: int,
                   stale_while_revalidate: int, stand_in: StandIn | None,
                   resource_policy: str, cors_on: bool, allowed: str | None,
                   varies_on_accept: bool, varies_on_site: bool) -> CIMultiDictProxy[str]:
    """Every header of an avatar answer, in order; ``allowed`` from ``allowed_origin``."""
    cache_control = f"public, max-age={max_age}"
    if stale_while_revalidate:
        cache_control += f", stale-while-revalidate={stale_while_revalidate}"
    headers: Pairs = (
        ("Content-Type", content_type),
        ("ETag", etag),
        ("Cache-Control", "no-store" if stand_in else cache_control),
        ("X-Avatar-Source", source),
        ("X-Content-Type-Options", "nosniff"),
        ("Cross-Origin-Resource-Policy", resource_policy),
    )
    if content_type == "image/svg+xml":
        headers += (("Content-Security-Policy", SVG_POLICY),)
    if stand_in:
        # Why: a cache in front keeps its copy for our trouble, never for a client's
        # rate (models.StandIn). Nothing about the person asked for.
        headers += (("X-Avatar-Stand-In", stand_in),)
    if cors_on:
        headers += (("Vary", "Origin"),)
    if allowed is not None:
        headers += (("Access-Control-Allow-Origin", allowed),
                    ("Access-Control-Expose-Headers", "ETag, X-Avatar-Source"))
    if varies_on_accept:
        headers += (("Vary", "Accept"),)
    if varies_on_site:
        headers += (("Vary", "Sec-Fetch-Site"),)
    return CIMultiDictProxy(CIMultiDict(headers))
