"""Format choice from ?format= and Accept, and If-None-Match matching: pure tables."""

from __future__ import annotations

import pytest

from avatarproxy.conditional import none_match
from avatarproxy.errors import BadRequest
from avatarproxy.negotiation import AVIF_MIN_SIZE, OutputFormats, choose, parse_format

CHROME = "image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8"
FIREFOX = "image/avif,image/webp,image/png,image/svg+xml,image/*;q=0.8,*/*;q=0.5"
SAFARI_15 = "image/webp,image/png,image/svg+xml,image/*;q=0.8,video/*;q=0.8,*/*;q=0.5"
OLD = "image/png,image/*;q=0.8,*/*;q=0.5"


@pytest.mark.parametrize(("accept", "size", "photo", "initials"), [
    (CHROME, 48, "webp", "webp"),  # small: WebP is as small as AVIF and cheaper
    (CHROME, AVIF_MIN_SIZE - 1, "webp", "webp"),
    (CHROME, AVIF_MIN_SIZE, "avif", "webp"),
    (FIREFOX, 240, "avif", "webp"),
    (SAFARI_15, 240, "webp", "webp"),
    (OLD, 240, "jpeg", "png"),
    ("", 96, "jpeg", "png"),
    ("*/*", 96, "jpeg", "png"),
    ("image/avif", 48, "avif", "png"),  # AVIF only: better than JPEG at any size
    ("image/avif;q=0, image/webp", 240, "webp", "webp"),
    ("IMAGE/WEBP ; Q=0.5", 96, "webp", "webp"),
    ("image/webp;q=0", 96, "jpeg", "png"),
    ("image/webp;q=nonsense", 96, "jpeg", "png"),
])
def test_accept_picks_the_photo_and_initials_formats(
        accept: str, size: int, photo: str, initials: str) -> None:
    assert choose(None, accept, size, "jpeg") == OutputFormats(photo, initials, varies=True)


@pytest.mark.parametrize(("forced", "photo", "initials", "varies"), [
    ("jpeg", "jpeg", "png", False),  # initials never lossy
    ("avif", "avif", "png", False),
    ("webp", "webp", "webp", False),
    ("png", "png", "png", False),
    ("svg", "avif", "svg", True),  # a photo cannot be SVG: it is negotiated instead
])
def test_format_query_forces_a_format_but_initials_stay_lossless(
        forced: str, photo: str, initials: str, varies: bool) -> None:
    assert choose(forced, CHROME, 240, "jpeg") == OutputFormats(photo, initials, varies)


def test_default_format_serves_clients_that_list_no_modern_format() -> None:
    assert choose(None, OLD, 96, "png").photo == "png"


@pytest.mark.parametrize(("value", "expected"), [
    (None, None), ("jpeg", "jpeg"), ("JPG", "jpeg"), ("svg", "svg"), ("avif", "avif")])
def test_format_parameter_values(value: str | None, expected: str | None) -> None:
    assert parse_format(value) == expected


@pytest.mark.parametrize("value", ["gif", "", "svg+xml", "jpeg "])
def test_unknown_format_is_a_bad_request(value: str) -> None:
    with pytest.raises(BadRequest):
        parse_format(value)


ETAG = '"abc123"'


@pytest.mark.parametrize(("headers", "matches"), [
    ([], False),
    (['"abc123"'], True),
    (['W/"abc123"'], True),  # If-None-Match compares weakly
    (['"other"'], False),
    (['"x", "abc123"'], True),
    (['"x",W/"y" , "abc123"  '], True),
    (['"x"', '"abc123"'], True),  # the header repeated
    (["*"], True),
    ([" * "], True),
    (["abc123"], False),  # unquoted: malformed, never a wrong 304
    (['"x" junk, "abc123"'], False),
    (['"abc12"'], False),
    ([""], False),
])
def test_if_none_match(headers: list[str], matches: bool) -> None:
    assert none_match(headers, ETAG) is matches
