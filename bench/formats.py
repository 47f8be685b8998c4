"""Measure encoded size and encode time of each photo format at avatar sizes.

Usage: .venv/bin/python bench/formats.py [photo.jpg ...]
Without arguments it uses the demo tenant's portraits. The README's choice of
AVIF, then WebP, then JPEG rests on these numbers (docs/performance.md, "Why
WebP for small sizes").
"""

from __future__ import annotations

import io
import statistics
import sys
import time

from avatarproxy import imaging
from avatarproxy.demo.contoso import demo_people

SIZES = (48, 96, 240)
FORMATS = ("jpeg", "webp", "avif")
ROUNDS = 5


def sources(paths: list[str]) -> list[tuple[str, bytes]]:
    if paths:
        return [(p, open(p, "rb").read()) for p in paths]
    out = []
    for person in demo_people()[:3]:
        if person.photo is not None:
            buf = io.BytesIO()
            person.photo.save(buf, "JPEG", quality=90)
            out.append((person.upn, buf.getvalue()))
    return out


def main() -> None:
    header = " ".join(f"{f + ' B':>8} {f + ' ms':>8}" for f in FORMATS)
    print(f"{'source':40} {'size':>4} " + header)
    for name, data in sources(sys.argv[1:]):
        for size in SIZES:
            cells = []
            for fmt in FORMATS:
                times, body = [], b""
                for _ in range(ROUNDS):
                    start = time.perf_counter()
                    body = imaging.render_photo(data, size, fmt)
                    times.append((time.perf_counter() - start) * 1000)
                cells.append(f"{len(body):>8} {statistics.median(times):>8.1f}")
            print(f"{name[:40]:40} {size:>4} " + " ".join(cells))


if __name__ == "__main__":
    main()
