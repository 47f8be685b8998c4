"""The answers the service hands back, as ``models.Avatar`` values, and how each is named.

The service decides which answer a request gets; this module owns what each
one looks like: its cache key, ETag, content type and caching. A photo is
kept for ``cache.browser_max_age``; initials for ``cache.initials_max_age``,
or at most ``TRANSIENT_MAX_AGE`` when Graph could not say whether a photo
exists; the cheap answers past a cap or a client's rate (``stand_in``,
``limited``) are never stored. Which letters, colour and language a subject's
initials get is decided here too (``initials_look``), once per name.
"""

from __future__ import annotations

import functools
import hashlib
from typing import NamedTuple

from . import imaging, svg, tiles
from .cache import AvatarCache, CacheSettings
from .cjk import CHINESE_GLYPHS
from .imaging import AvatarSettings
from .initials import InitialsRenderer, text_colour
from .models import Avatar, PhotoMeta, Profile, StandIn, Subject
from .negotiation import OutputFormats
from .sizing import FetchPlan, background_for, name_initials, xml_text

# Initials served because Graph could not answer are re-asked soon.
TRANSIENT_MAX_AGE = 60
# Largest stand-in drawn with letters: 0.4 ms of the event loop at 160 px on the
# 2-core machine, about what serving the request costs; 1.6 ms at 512, 5.5 at
# 1024, so a flood of large sizes (or of names) would stall every request.
STAND_IN_TEXT_MAX = 160


class Look(NamedTuple):
    """A subject's initials: the texts to try, best first, the background colour, and
    the language whose glyph forms Chinese, Japanese or Korean ones take ("" for none)."""

    texts: tuple[str, ...]
    colour: tuple[int, int, int]
    lang: str = ""


@functools.lru_cache(maxsize=4096)
def initials_look(subject: Subject, profile: Profile | None, han_names: str = "auto",
                  chinese_glyphs: str = "mainland") -> Look:
    """How ``subject``'s initials look (pure, memoised); ``han_names`` and
    ``chinese_glyphs`` as ``avatar.han_names`` and ``avatar.chinese_glyphs``."""
    colour = background_for((profile.object_id if profile else None) or subject.key)
    texts, lang = name_initials(profile, subject, han_names)
    if lang == "zh":  # "zh" (mainland) as before: the same keys, the same bytes
        lang = CHINESE_GLYPHS[chinese_glyphs]
    return Look(tuple(texts), colour, lang)


@functools.lru_cache(maxsize=8192)  # hit after hit for the same photos
def _etag(*parts: str) -> str:
    return '"' + hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()[:27] + '"'


class Answers:
    """Builds every ``Avatar``; ``imaging.RENDERER_VERSION`` is read at each call."""

    def __init__(self, initials: InitialsRenderer, cache: AvatarCache,
                 cache_settings: CacheSettings, avatar_settings: AvatarSettings) -> None:
        self._initials = initials
        self._cache = cache
        self._ttl = cache_settings
        self._avatar = avatar_settings
        # At most ~4 MB even if every entry were 1024 px (~15 KB); most are far smaller.
        self._stand_ins = functools.lru_cache(maxsize=256)(initials.twin().render_quick)

    def photo_key(self, subject: Subject, media_etag: str, target: int, fmt: str) -> str:
        return self._cache.photo_key(subject, media_etag, target, fmt, imaging.RENDERER_VERSION)

    def photo(self, body: bytes, meta: PhotoMeta, plan: FetchPlan, fmt: str) -> Avatar:
        etag = _etag("photo", meta.media_etag, str(plan.target), fmt, imaging.RENDERER_VERSION)
        return Avatar(body, imaging.CONTENT_TYPES[fmt], etag, "photo", self._ttl.browser_max_age,
                      self._ttl.stale_while_revalidate)

    def look(self, subject: Subject, profile: Profile | None) -> Look:
        """``initials_look`` under this service's ``avatar.han_names`` and ``chinese_glyphs``."""
        return initials_look(subject, profile, self._avatar.han_names,
                             self._avatar.chinese_glyphs)

    def initials_key(self, look: Look, size: int, fmt: str) -> str:
        # The language picks glyph forms, the fonts which names are drawn at all.
        texts = (*look.texts, f"lang={look.lang}") if look.lang else look.texts
        return self._cache.initials_key(texts, look.colour, size, fmt, self._renderer())

    def _renderer(self) -> str:
        fonts = self._initials.fonts_id
        return f"{imaging.RENDERER_VERSION}/{fonts}" if fonts else imaging.RENDERER_VERSION

    def initials(self, body: bytes, key: str, fmt: str, meta: PhotoMeta | None) -> Avatar:
        # meta None: Graph could not say whether a photo exists; ask again soon.
        max_age = self._ttl.initials_max_age if meta is not None else min(
            TRANSIENT_MAX_AGE, self._ttl.initials_max_age)
        return Avatar(body, imaging.CONTENT_TYPES[fmt], _etag("initials", key), "initials",
                      max_age)

    def svg(self, subject: Subject, profile: Profile | None, size: int) -> tuple[str, bytes]:
        """SVG initials and the key their ETag is made from."""
        look = self.look(subject, profile)
        text = self._initials.first_covered(look.texts)
        # The name only if the operator asked: unsigned, anyone could turn
        # addresses into names (avatar.svg_title).
        name = profile.display_name if profile and self._avatar.svg_title else None
        title = xml_text(name or "") or text
        key = self._cache.initials_key([text, title, look.lang], look.colour, size, "svg",
                                       self._renderer())
        return key, svg.render(text, title, look.colour, text_colour(look.colour), size,
                               look.lang)

    def limited(self, subject: Subject, size: int, formats: OutputFormats) -> Avatar:
        """The answer to a client over its rate: nothing it would have to pay for.

        Initials from the name the page used, as for overload (SVG when asked:
        free), never stored; no Graph, Redis or image pool.
        """
        if formats.initials != "svg":
            return self.stand_in(subject, size, "rate-limited")
        key, body = self.svg(subject, None, size)
        return Avatar(body, imaging.CONTENT_TYPES["svg"], _etag("initials", key), "initials", 0,
                      stand_in="rate-limited")

    def stand_in(self, subject: Subject, size: int, why: StandIn) -> Avatar:
        """Initials from the UPN alone at exactly ``size``, not to be stored: the
        answer when this process is past a cap or cannot answer properly now
        (``why``), or when the client is over its rate.

        Drawn here, on the event loop, with faces of its own: no Graph, Redis,
        image pool or pool lock to wait on (the pool is busy exactly when this
        is needed). A burst repeats the same few, so recent ones are kept.
        Above ``STAND_IN_TEXT_MAX`` a plain tile in the same colour: drawing
        letters there costs the loop more than the request itself.
        """
        texts, colour, _ = initials_look(subject, None)  # the UPN's letters: no language
        body = (self._stand_ins(texts, colour, size) if size <= STAND_IN_TEXT_MAX
                else tiles.png(size, colour))
        return Avatar(body, imaging.CONTENT_TYPES["png"], _etag("busy", subject.key, str(size)),
                      "initials", 0, stand_in=why)
