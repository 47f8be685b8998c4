"""The demo's ``GET /``: every demo person at several sizes, photo or initials.

It is how a newcomer sees the service work, and what the real-browser test
loads. Plain HTML and CSS, no script; every name is HTML-escaped and every
UPN percent-encoded (guests' ``#`` must not become a fragment). With a
configuration (``avatarproxy demo --config``) the page follows it: URLs are
signed with the first ``security.url_signing_keys``, and the captions say what
``security.blocked``, ``allowed_domains`` and ``allow_guests`` make of each person.
With ``directory.gravatar`` (the demo's default unless URLs are signed) a last
column asks for each person as a tool would, by the MD5 of their address.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Sequence
from html import escape
from urllib.parse import quote

from aiohttp import web

from ..errors import NotFound
from ..models import Subject
from ..security import Policy, signature
from ..web import HANDLING
from .people import FakePerson

SIZES = (32, 48, 96, 160)
SRCSET_SIZE = 48  # shown with 1x/2x/3x candidates
SVG_SIZE = 96  # shown with ?format=svg: vector initials, photos stay photos
GRAVATAR_SIZE = 48  # the Gravatar URL column
PAGE_POLICY = "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'"

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; }
table { border-collapse: collapse; }
td, th { padding: 8px 12px; border-bottom: 1px solid #ddd; text-align: center; }
td.who { text-align: left; }
figure { margin: 0; }
img { border-radius: 50%; display: block; margin: 0 auto 4px; }
figcaption { font-size: 11px; color: #666; }
code { font-size: 12px; color: #555; }
"""


def expected_source(person: FakePerson, policy: Policy | None = None) -> str:
    """What the service should serve for this demo person: photo, initials, or
    (another domain, a refused guest) a 404."""
    if policy is not None:
        subject = Subject(person.upn.lower())
        try:
            policy.check_subject(subject)
        except NotFound:
            return "not served"
        if policy.is_blocked(subject):
            return "initials"
    return "photo" if person.photo is not None and not person.placeholder else "initials"


def avatar_path(person: FakePerson, size: int) -> str:
    return f"/avatar/{quote(person.upn, safe='@')}/{size}"


def gravatar_path(person: FakePerson, size: int) -> str:
    """What GitLab or Redmine would ask for this person: the MD5 of the address."""
    digest = hashlib.md5(person.upn.strip().lower().encode(), usedforsecurity=False)
    return f"/avatar/{digest.hexdigest()}?s={size}&d=initials"


def expected_gravatar_source(person: FakePerson, policy: Policy | None = None) -> str:
    """What the Gravatar column should show: a person the rules refuse looks like a
    hash nobody has, the default picture."""
    source = expected_source(person, policy)
    return "default" if source == "not served" else source


class _Page:
    """The page as the configuration has it: who is served how, and signed URLs."""

    def __init__(self, policy: Policy | None, key: str | None) -> None:
        self.policy = policy
        self.key = key

    def url(self, person: FakePerson, size: int, query: str = "") -> str:
        if self.key is not None:  # signed over the path as written, before encoding
            sig = signature(self.key, f"/avatar/{person.upn}/{size}")
            query = f"{query}&sig={sig}" if query else f"?sig={sig}"
        return escape(avatar_path(person, size) + query)


def _figure(page: _Page, person: FakePerson, size: int, *, srcset: bool = False,
            query: str = "") -> str:
    src = page.url(person, size, query)
    extra = ""
    if srcset:
        candidates = ", ".join(f"{page.url(person, size * d)} {d}x" for d in (1, 2, 3))
        extra = f' srcset="{candidates}"'
    source = expected_source(person, page.policy)
    return (f'<figure><img src="{src}"{extra} width="{size}" height="{size}" alt="" '
            f'data-upn="{escape(person.upn)}" data-size="{size}" data-source="{source}"'
            f'{" data-svg" if query else ""}'
            f'{" data-srcset" if srcset else ""}>'
            f"<figcaption>{source}</figcaption></figure>")


def _gravatar_figure(page: _Page, person: FakePerson) -> str:
    source = expected_gravatar_source(person, page.policy)
    return (f'<figure><img src="{escape(gravatar_path(person, GRAVATAR_SIZE))}" '
            f'width="{GRAVATAR_SIZE}" height="{GRAVATAR_SIZE}" alt="" '
            f'data-upn="{escape(person.upn)}" data-size="{GRAVATAR_SIZE}" '
            f'data-source="{source}" data-gravatar><figcaption>{source}</figcaption></figure>')


def render(people: Sequence[FakePerson], policy: Policy | None = None,
           key: str | None = None, *, gravatar: bool = False) -> str:
    page = _Page(policy, key)
    head = "".join(f"<th>{s} px</th>" for s in SIZES)
    rows = []
    for person in people:
        cells = "".join(f"<td>{_figure(page, person, s)}</td>" for s in SIZES)
        cells += f"<td>{_figure(page, person, SRCSET_SIZE, srcset=True)}</td>"
        cells += f"<td>{_figure(page, person, SVG_SIZE, query='?format=svg')}</td>"
        if gravatar:
            cells += f"<td>{_gravatar_figure(page, person)}</td>"
        rows.append(f'<tr><td class="who">{escape(person.display_name)}<br>'
                    f"<code>{escape(person.upn)}</code></td>{cells}</tr>")
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        "<title>avatarproxy demo</title>"
        f"<style>{_STYLE}</style></head><body>"
        "<h1>avatarproxy demo tenant</h1>"
        f"<p>{len(people)} people from the built-in fake Graph. Each image is an "
        "<code>&lt;img&gt;</code> pointing at <code>/avatar/{upn}/{size}</code>; the caption "
        "says whether the person has a photo or gets initials. The next-to-last "
        "column uses <code>srcset</code> with 1x/2x/3x candidates; the last asks for "
        "<code>?format=svg</code>: vector initials, while people with a photo still get "
        "their photo."
        + (" The last column is a Gravatar URL, as GitLab, Gitea or Redmine write it: "
           "<code>/avatar/{MD5 of the address}?s=48&amp;d=initials</code>, answered "
           "from the index of every user's addresses." if gravatar else "")
        + "</p>"
        f"<table><thead><tr><th>person</th>{head}<th>{SRCSET_SIZE} px, srcset</th>"
        f"<th>{SVG_SIZE} px, svg</th>"
        + (f"<th>{GRAVATAR_SIZE} px, Gravatar URL</th>" if gravatar else "")
        + "</tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table></body></html>\n"
    )


def page_handler(people: Sequence[FakePerson], key: str | None = None, *,
                 gravatar: bool = False) -> Callable[[web.Request], Awaitable[web.Response]]:
    """``GET /``; ``key`` signs the avatar URLs (the first ``security.url_signing_keys``);
    ``gravatar``: a column of Gravatar URLs (``directory.gravatar``)."""

    async def page(request: web.Request) -> web.Response:
        # Drawn per request: the blocked list resolves after start-up.
        body = render(people, request.app[HANDLING].policy, key, gravatar=gravatar)
        return web.Response(text=body, content_type="text/html", headers={
            "Cache-Control": "no-cache", "Content-Security-Policy": PAGE_POLICY,
            "X-Content-Type-Options": "nosniff"})

    return page
