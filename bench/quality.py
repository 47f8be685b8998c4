"""Did a renderer change lose visible quality? SSIM of each output against today's.

Usage: .venv/bin/python bench/quality.py [--baseline VERSION] [photo ...]

Renders every demo-page size (``demo.page.SIZES`` at 1x, 2x and 3x, as its
``srcset`` asks) and 600 px from the HD size the service would download
(``sizing.plan_fetch``), with this checkout's ``imaging.render_photo`` and
with the renderer of git revision ``--baseline`` (default: ``main``), and
prints the SSIM of the two (1.0: identical) and of each against a reference
drawn from the full-size original (LANCZOS, in one step, never JPEG'd). Without
photo arguments it uses the generated portraits of ``tests/photos.py`` (grain
over the whole frame: the hardest case for a resampling filter). The table in
docs/performance.md ("Quality") comes from here.

SSIM (Wang et al. 2004) on luma, 7x7 uniform windows (scikit-image's
default), constants K1 = 0.01 and K2 = 0.03 for 8-bit data. Pillow only (no
NumPy in the service's environment): window means are sums of shifted crops.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from PIL import Image, ImageMath

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests")]

from avatarproxy import imaging  # noqa: E402
from avatarproxy.demo.page import SIZES as PAGE_SIZES  # noqa: E402
from avatarproxy.models import PhotoMeta  # noqa: E402
from avatarproxy.sizing import plan_fetch  # noqa: E402

WINDOW = 7
_C1, _C2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
Render = Callable[[bytes, int, str], bytes]


def ssim(first: Image.Image, second: Image.Image) -> float:
    """Mean SSIM of two images of the same size, on luma."""
    if first.size != second.size:
        raise ValueError(f"sizes differ: {first.size} and {second.size}")
    x, y = (im.convert("L").convert("F") for im in (first, second))
    mx, my = _window_mean(x), _window_mean(y)
    xx = _window_mean(_math(lambda a: a["x"] * a["x"], x=x))
    yy = _window_mean(_math(lambda a: a["y"] * a["y"], y=y))
    xy = _window_mean(_math(lambda a: a["x"] * a["y"], x=x, y=y))
    index = _math(lambda a: ((2 * a["mx"] * a["my"] + _C1)
                             * (2 * (a["xy"] - a["mx"] * a["my"]) + _C2))
                  / ((a["mx"] * a["mx"] + a["my"] * a["my"] + _C1)
                     * (a["xx"] - a["mx"] * a["mx"] + a["yy"] - a["my"] * a["my"] + _C2)),
                  mx=mx, my=my, xx=xx, yy=yy, xy=xy)
    mean = index.reduce(index.size).getpixel((0, 0))  # one pixel: the mean of all
    assert isinstance(mean, float)
    return mean


def _math(expression: Callable[[dict[str, object]], object], **images: Image.Image) -> Image.Image:
    result = ImageMath.lambda_eval(expression, **images)
    assert isinstance(result, Image.Image)
    return result


def _window_mean(im: Image.Image) -> Image.Image:
    """The mean over every WINDOW x WINDOW square fully inside ``im`` (a float image)."""
    width, height = im.size
    across = _sum_of([im.crop((k, 0, width - WINDOW + 1 + k, height)) for k in range(WINDOW)])
    down = _sum_of([across.crop((0, k, across.width, height - WINDOW + 1 + k))
                    for k in range(WINDOW)])
    return _math(lambda a: a["s"] / (WINDOW * WINDOW), s=down)


def _sum_of(images: list[Image.Image]) -> Image.Image:
    total = images[0]
    for image in images[1:]:
        total = _math(lambda a: a["t"] + a["i"], t=total, i=image)
    return total


def sizes() -> list[int]:
    """Every size the demo page shows (1x, 2x and 3x), and 600 px."""
    return sorted({size * density for size in PAGE_SIZES for density in (1, 2, 3)} | {600})


def baseline_renderer(revision: str, workdir: Path) -> Render:
    """``render_photo`` of ``avatarproxy/imaging.py`` as it is at git ``revision``."""
    source = subprocess.run(["git", "show", f"{revision}:avatarproxy/imaging.py"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout
    path = workdir / "baseline_imaging.py"
    path.write_text(source.replace("from . import", "from avatarproxy import")
                    .replace("from .", "from avatarproxy."))
    spec = importlib.util.spec_from_file_location("baseline_imaging", path)
    assert spec is not None and spec.loader is not None
    module: ModuleType = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    render: Render = module.render_photo
    return render


def originals(paths: list[str]) -> list[tuple[str, Image.Image]]:
    """Full-size originals: the photos given, else the test corpus's portraits."""
    if paths:
        return [(Path(p).name, Image.open(p).convert("RGB")) for p in paths]
    from photos import Look, photo_of

    looks = (Look("#1f4e79", "#9dc3e6", "#c55a11"), Look("#843c0c", "#f8cbad", "#00b0f0"))
    return [(f"grainy portrait {n + 1}", photo_of(look, 1296, seed=n))
            for n, look in enumerate(looks)]


def graph_copy(original: Image.Image, side: int) -> bytes:
    """What Graph keeps at an HD size: the centre square, resized, JPEG (Exchange's
    quality as tests/photos.py has it)."""
    from photos import HD_QUALITY

    out = io.BytesIO()
    _square(original, side).save(out, "JPEG", quality=HD_QUALITY)
    return out.getvalue()


def _square(original: Image.Image, side: int) -> Image.Image:
    edge = min(original.size)
    left, top = (original.width - edge) // 2, (original.height - edge) // 2
    return original.resize((side, side), Image.Resampling.LANCZOS,
                           box=(left, top, left + edge, top + edge))


def compare(original: Image.Image, old: Render,
            fmt: str) -> list[tuple[str, float, float, float]]:
    """Per size: (HD size -> size, SSIM new vs old, old vs reference, new vs reference)."""
    rows = []
    for size in sizes():
        hd = plan_fetch(size, PhotoMeta(has_photo=True, width=648, height=648)).hd_size or 648
        source = graph_copy(original, hd)
        today = Image.open(io.BytesIO(old(source, size, fmt)))
        new = Image.open(io.BytesIO(imaging.render_photo(source, size, fmt)))
        reference = _square(original, size)
        rows.append((f"{hd}->{size}", ssim(new, today), ssim(today, reference),
                     ssim(new, reference)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("photos", nargs="*", help="original photos (default: tests/photos.py)")
    parser.add_argument("--baseline", default="main", help="git revision of today's renderer")
    parser.add_argument("--format", default="jpeg", choices=("jpeg", "webp", "avif"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        old = baseline_renderer(args.baseline, Path(tmp))
        print(f"| photo | HD size -> size | SSIM new vs {args.baseline} | "
              f"{args.baseline} vs reference | new vs reference |")
        print("|---|---|---|---|---|")
        alike: list[float] = []
        for name, original in originals(args.photos):
            for sizes_, both, before, after in compare(original, old, args.format):
                print(f"| {name} | {sizes_} | {both:.4f} | {before:.4f} | {after:.4f} |",
                      flush=True)
                alike.append(both)
        print(f"\n{args.format}: SSIM new vs {args.baseline}: min {min(alike):.4f}, "
              f"median {statistics.median(alike):.4f}")


if __name__ == "__main__":
    main()
