"""Photos like people's photos, generated (no downloads): the fake Graph's
single-colour portraits are a few hundred bytes, real ones tens of KB.

Each keeps the fake's per-person colours (``fakegraph.portrait``), so a test
can still tell whose photo it got, and adds what makes a photograph heavy to
encode and to send: fine grain over the whole frame.
"""

from __future__ import annotations

import random

from PIL import Image, ImageFilter

from avatarproxy.fakegraph import portrait


def realistic_portrait(width: int, height: int, top: str, bottom: str, accent: str,
                       seed: int = 0) -> Image.Image:
    """``fakegraph.portrait`` with grain and blur: at 240 px about 30 KB as JPEG q90."""
    base = portrait(width, height, top, bottom, accent).filter(ImageFilter.GaussianBlur(1))
    rng = random.Random(seed)
    grain = Image.frombytes("L", (width, height), rng.randbytes(width * height))
    return Image.blend(base, Image.merge("RGB", (grain, grain, grain)), 0.12)
