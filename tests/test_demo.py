"""The README's first command: `avatarproxy demo` serves its built-in tenant."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import requests
from loopback import free_port
from PIL import Image

from avatarproxy.fakegraph import demo_groups, demo_people


@pytest.fixture(scope="module")
def demo() -> Iterator[tuple[str, list[str]]]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "avatarproxy", "demo", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert process.stdout is not None
    printed: list[str] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        printed.append(line)
        if "Running on" in line or not line:
            break
    try:
        yield f"http://127.0.0.1:{port}", printed
    finally:
        process.terminate()
        process.wait(timeout=10)
        process.stdout.close()


def test_demo_prints_a_working_url_for_every_person(demo: tuple[str, list[str]]) -> None:
    _, printed = demo
    urls = [m.group(0) for line in printed if (m := re.search(r"http://\S+/avatar/\S+", line))]
    groups = [url for url in urls if re.search(r"/avatar/(group|team)/", url)]
    urls = [url for url in urls if url not in groups]
    assert len(urls) == len(demo_people())
    assert len(groups) == len(demo_groups())
    session = requests.Session()
    session.trust_env = False
    for url, person in zip(urls, demo_people(), strict=True):
        response = session.get(url, timeout=10)
        assert response.status_code == 200, url
        side = min(96, *person.photo.size) if person.photo is not None else 96  # no upscaling
        assert Image.open(io.BytesIO(response.content)).size == (side, side), url
    for url, group in zip(groups, demo_groups(), strict=True):
        response = session.get(url, timeout=10)
        assert response.status_code == 200, url
        expected = "photo" if group.photo is not None else "initials"
        assert response.headers["X-Avatar-Source"] == expected, url


def test_demo_serves_photos_and_initials_as_its_people_have_them(
        demo: tuple[str, list[str]]) -> None:
    base, _ = demo
    session = requests.Session()
    session.trust_env = False
    for person in demo_people():
        upn = person.upn.replace("#", "%23")
        response = session.get(f"{base}/avatar/{upn}/48", timeout=10)
        expected = "photo" if person.photo is not None else "initials"
        assert response.headers["X-Avatar-Source"] == expected, person.upn
