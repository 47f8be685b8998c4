"""Initials as SVG: vector, crisp at any size and pixel density.

Every character of the name and of the initials is written as a numeric
character reference, so no display name (``<script>``, ``]]>``, quotes,
bidi controls) can become markup; the web layer also sends a
Content-Security-Policy that forbids scripts in the document.
"""

from __future__ import annotations

from .sizing import xml_text

# The bundled font first, then what the viewer has: an SVG in <img> cannot
# load web fonts, so the glyphs come from the viewing machine (its CJK fonts
# by the browser's fallback, in the forms xml:lang names).
_FONT = "'DejaVu Sans', 'Segoe UI', Arial, sans-serif"


def _reference(text: str) -> str:
    # What XML forbids even as a reference is dropped: the browser would refuse the SVG.
    return "".join(f"&#x{ord(c):x};" for c in xml_text(text))


# What the browser is told of the initials' language: it picks the regional glyph
# forms of Chinese, Japanese and Korean from it. Nothing else reaches the attribute.
_LANGS = {"zh": "zh-Hans", "zh-TW": "zh-Hant-TW", "zh-HK": "zh-Hant-HK", "ja": "ja", "ko": "ko"}


def render(initials: str, title: str, background: tuple[int, int, int],
           foreground: tuple[int, int, int], size: int, lang: str = "") -> bytes:
    """A ``size`` x ``size`` SVG: ``initials`` centred on ``background``; ``lang`` (``zh``,
    ``zh-TW``, ``zh-HK``, ``ja``, ``ko``) is the language of the initials."""
    bg = "#{:02x}{:02x}{:02x}".format(*background)
    fg = "#{:02x}{:02x}{:02x}".format(*foreground)
    tag = f' xml:lang="{_LANGS[lang]}"' if lang in _LANGS else ""
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{size}" height="{size}" '
        f'viewBox="0 0 100 100" role="img">'
        f"<title>{_reference(title)}</title>"
        f'<rect width="100" height="100" fill="{bg}"/>'
        f'<text{tag} x="50" y="50" dy="0.35em" text-anchor="middle" font-family="{_FONT}" '
        f'font-weight="bold" font-size="42" fill="{fg}">{_reference(initials)}</text>'
        "</svg>\n"
    ).encode()
