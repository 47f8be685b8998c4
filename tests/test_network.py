"""The service over a network, not loopback: Graph's answers pass through a
fault proxy (tests/faultproxy.py) that splits them into TCP segments, delays,
resets and stalls them."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from typing import Any

import pytest
from appclient import MakeClient, get
from faultproxy import INTERNET, FaultProxy
from photos import realistic_portrait
from PIL import Image, ImageStat
from yarl import URL

ALEX = "alex.wilber@contoso.com"  # 240x240 photo in the demo tenant
ALEX_COLOURS = ("#38761d", "#b6d7a8", "#e0ac69")


@pytest.fixture
async def graph_proxy(fake_graph: Any) -> AsyncIterator[FaultProxy]:
    """A fault proxy in front of the fake Graph (no faults until a test sets them)."""
    proxy = await FaultProxy.start(URL(fake_graph.base_url).port or 0)
    try:
        yield proxy
    finally:
        await proxy.close()


@pytest.fixture
def via_proxy(make_client: MakeClient, graph_proxy: FaultProxy) -> MakeClient:
    """``make_client`` whose Graph calls go through ``graph_proxy``."""
    base = f"http://127.0.0.1:{graph_proxy.port}/v1.0"

    async def make(**overrides: Any) -> Any:
        return await make_client(graph__base_url=base, **overrides)

    return make


def mean_colour(body: bytes) -> tuple[float, ...]:
    return tuple(ImageStat.Stat(Image.open(io.BytesIO(body)).convert("RGB")).mean)


@pytest.mark.parametrize("size", [240, 96])
async def test_a_real_sized_photo_arriving_in_tcp_segments_is_served_as_the_photo(
        via_proxy: MakeClient, graph_proxy: FaultProxy, fake_graph: Any, size: int) -> None:
    # A 240 px portrait of tens of KB, sent in 1,400-byte segments a few ms apart:
    # reading "what has arrived so far" would cut it after the first segment.
    master = realistic_portrait(240, 240, *ALEX_COLOURS)
    fake_graph.graph.set_photo(ALEX, master)
    graph_proxy.faults = INTERNET
    client = await via_proxy()
    status, headers, body = await get(client, f"/avatar/{ALEX}/{size}",
                                      headers={"Accept": "image/jpeg"})
    assert (status, headers["X-Avatar-Source"]) == (200, "photo")
    assert Image.open(io.BytesIO(body)).size == (size, size)
    expected = mean_colour(_jpeg(master.resize((size, size))))
    assert all(abs(a - b) < 12 for a, b in zip(mean_colour(body), expected, strict=True))
    downloads = [r for r in fake_graph.graph.requests if r.raw_path.endswith("/$value")]
    assert len(downloads) == 1
    assert graph_proxy.accepted >= 1


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()
