"""Which page is asking, as the browser tells it, and so what an answer may show.

Any website an employee visits can write ``<img src=".../avatar/{anyone}/48">``.
It cannot read the pixels (CORS is off unless ``server.cors_origins`` lists
it), but it sees whether the image loaded, how large it is, and, by loading
it again later, whether the browser still kept it. So what depends on the
person must look the same to such a page: for a browser's cross-site request
(``Sec-Fetch-Site: cross-site``) from a page whose origin is neither in
``server.intranet_origins`` nor in ``server.cors_origins``, and unsigned,
``?fallback=404`` gives initials instead of a 404, and photos and initials
are cached alike. (Sizes are always the size asked: ``sizing.FetchPlan``.)

The page's origin comes from ``Origin`` (CORS requests) or ``Referer`` (what
``<img>`` sends by default, ``strict-origin-when-cross-origin``); a page can
withhold both, never forge them, so a page without either is not listed.
Browsers have sent Fetch Metadata since Chromium 76, Firefox 90 and Safari
16.4; a request without ``Sec-Fetch-Site`` comes from an older browser or
from no browser at all, which sees ``X-Avatar-Source`` anyway.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from multidict import CIMultiDictProxy

from .cache import CacheSettings
from .server import ServerSettings

Headers = CIMultiDictProxy[str]


@dataclass(frozen=True, slots=True)
class Sites:
    """The operator's listed origins, normalised once at start-up."""

    listed: frozenset[str]  # pages of these origins learn what same-site pages do
    anyone: bool  # "*": every site's pages do
    signed: bool  # URL signing on: pages can ask only for the URLs they were given
    foreign_max_age: int  # one max-age for every answer a foreign page gets

    @classmethod
    def from_settings(cls, server: ServerSettings, cache: CacheSettings,
                      signed: bool) -> Sites:
        origins = {o.strip().rstrip("/").lower()
                   for o in (*server.intranet_origins, *server.cors_origins) if o.strip()}
        return cls(frozenset(origins - {"*"}), "*" in origins, signed, cache.initials_max_age)

    @property
    def varies(self) -> bool:
        """Whether answers depend on the page: then they carry ``Vary: Sec-Fetch-Site``,
        so a shared cache never hands a same-site page's answer to another site."""
        return not (self.anyone or self.signed)

    def cross_site(self, headers: Headers) -> bool:
        """A browser asks for a page of another site (listed or not), unsigned."""
        return self.varies and headers.get("Sec-Fetch-Site") == "cross-site"

    def foreign(self, headers: Headers) -> bool:
        """A page of another website, not listed, asks: it must not learn who has a photo."""
        return self.cross_site(headers) and page_origin(headers) not in self.listed

    def cache_control(self, headers: Headers, usual: str) -> str:
        """``Cache-Control`` for a cross-site answer: never in a shared cache (``private``;
        a listed page's answer must not reach another site's), and, for a foreign page,
        the same for photos and initials (else keeping one longer tells which it got)."""
        if self.foreign(headers):
            return f"private, max-age={self.foreign_max_age}"
        return usual.replace("public", "private", 1)


def page_origin(headers: Headers) -> str | None:
    """The origin of the page that asked: ``Origin``, else ``Referer``'s, lower case.
    None when it cannot be told: an opaque ``Origin: null`` or a malformed ``Referer``
    is nobody's listed origin."""
    origin = headers.get("Origin")
    if origin == "null":
        return None  # a sandboxed or privacy-sensitive page: never one we list
    if origin:
        return origin.lower()
    try:
        parts = urlsplit(headers.get("Referer", ""))
    except ValueError:  # "http://[::1/" and the like: the client's mistake
        return None
    if parts.scheme and parts.netloc:
        return f"{parts.scheme}://{parts.netloc}".lower()
    return None
