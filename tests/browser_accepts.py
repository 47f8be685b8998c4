"""``Accept`` headers real browsers and clients send, for tests/test_front_accept.py.

Gathered from the browsers' sources and MDN's "List of default Accept values":
Chromium's image and navigation headers since 2013 (Chrome, Edge, Opera,
Brave, Samsung Internet, Android WebView and Electron apps such as Teams send
the same), Firefox's ``image.http.accept`` and ``network.http.accept`` defaults
since version 3, WebKit's (Safari on macOS and iOS, every iOS browser),
Internet Explorer's and legacy Edge's, Opera Presto's, and common non-browser
clients. ``variants`` spells each the ways a header may also arrive (spacing,
case, explicit q values) and adds the q=0 refusals negotiation.py honours.
"""

from __future__ import annotations

IMAGES = (
    # Chromium 85+ (AVIF), 76-84, 61-75 (APNG), 32-60, ~30
    "image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8",
    "image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8",
    "image/webp,image/apng,image/*,*/*;q=0.8",
    "image/webp,image/*,*/*;q=0.8",
    "image/webp,*/*;q=0.8",
    # Firefox 128+, 93-127, 65-92, 47-64, up to 46
    "image/avif,image/webp,image/png,image/svg+xml,image/*;q=0.8,*/*;q=0.5",
    "image/avif,image/webp,*/*",
    "image/webp,*/*",
    "*/*",
    "image/png,image/*;q=0.8,*/*;q=0.5",
    # Safari 17+ (JPEG XL, HEIC), 16 (AVIF), 14-15 (WebP), 11-13, up to 10
    "image/webp,image/avif,image/jxl,image/heic,image/heic-sequence,video/*;q=0.8,"
    "image/png,image/svg+xml,image/*;q=0.8,*/*;q=0.5",
    "image/webp,image/avif,video/*;q=0.8,image/png,image/svg+xml,image/*;q=0.8,*/*;q=0.5",
    "image/webp,image/png,image/svg+xml,image/*;q=0.8,video/*;q=0.8,*/*;q=0.5",
    "image/png,image/svg+xml,image/*;q=0.8,video/*;q=0.8,*/*;q=0.5",
    "image/png,image/svg+xml,image/*;q=0.8,*/*;q=0.5",
    # Internet Explorer 9-11 (JPEG XR on Windows 8+), legacy Edge (EdgeHTML)
    "image/png, image/svg+xml, image/*;q=0.8, */*;q=0.5",
    "image/png, image/svg+xml, image/jxr, image/*;q=0.8, */*;q=0.5",
    "image/png, image/svg+xml, image/jxr, image/*; q=0.8, */*; q=0.5",
    # Opera Presto (up to 12)
    "text/html, application/xml;q=0.9, application/xhtml+xml, image/png, image/webp, "
    "image/jpeg, image/gif, image/x-xbitmap, */*;q=0.1",
)

NAVIGATIONS = (  # an avatar URL opened in a tab
    # Chromium 120+, 85-119, 76-84, 61-75
    "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,"
    "*/*;q=0.8,application/signed-exchange;v=b3;q=0.7",
    "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,"
    "*/*;q=0.8,application/signed-exchange;v=b3;q=0.9",
    "text/html,application/xhtml+xml,application/xml;q=0.9,image/webp,image/apng,*/*;q=0.8,"
    "application/signed-exchange;v=b3",
    "text/html,application/xhtml+xml,application/xml;q=0.9,image/webp,image/apng,*/*;q=0.8",
    # Firefox 128+, 92-127, 72-91, 66-71, 65
    "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8",
    "text/html,application/xhtml+xml,application/xml;q=0.9,image/webp,*/*;q=0.8",
    # Safari, legacy Edge, Internet Explorer 8, old Android browser
    "text/html,application/xhtml+xml,application/xml;q=0.9,image/webp,*/*;q=0.8",
    "text/html, application/xhtml+xml, image/jxr, */*",
    "image/jpeg, application/x-ms-application, image/gif, application/xaml+xml, image/pjpeg, "
    "application/x-ms-xbap, application/x-shockwave-flash, application/msword, */*",
    "application/xml,application/xhtml+xml,text/html;q=0.9,text/plain;q=0.8,image/png,*/*;q=0.5",
)

CLIENTS = (  # fetch() and XHR, curl, wget, requests, Java, Go (none), a CDN's normalisation
    "*/*",
    "",
    "text/html, image/gif, image/jpeg, *; q=.2, */*; q=.2",
    "image/*",
    "image/webp",
    "image/avif",
    "image/jpeg",
    "application/json, text/plain, */*",
)

REAL = IMAGES + NAVIGATIONS + CLIENTS


def variants(accept: str) -> list[str]:
    """``accept`` as it may also arrive, and with each modern format refused or weighed."""
    items = [i.strip() for i in accept.split(",") if i.strip()]
    spellings = {
        accept,
        ", ".join(items),
        ",".join(items),
        accept.upper(),
        accept.replace("image/avif", "IMAGE/AVIF").replace("image/webp", "Image/WebP"),
        accept.replace(";q=", "; q=").replace(",", " , "),
        accept.replace(";q=", " ;Q = "),
        " " + accept + " ",
    }
    for fmt in ("image/avif", "image/webp"):
        if fmt in accept:
            for q in ("0", "0.0", "0.000", "0.001", "0.5", "1", "1.0", "1.000", ".5", "0 "):
                spellings.add(accept.replace(fmt, f"{fmt};q={q}", 1))
            spellings.add(accept.replace(fmt, f"{fmt};level=1;q=0", 1))
            spellings.add(accept.replace(fmt, f"{fmt} ;q=0.9", 1))
            spellings.add(accept.replace(fmt, "", 1).replace(",,", ",").strip(","))
        else:
            spellings.add(f"{accept},{fmt};q=0" if accept else f"{fmt};q=0")
            spellings.add(f"{fmt},{accept}" if accept else fmt)
    return sorted(spellings)


def corpus() -> list[str]:
    """Every real header and its variants, once each."""
    return sorted({v for accept in REAL for v in variants(accept)})
