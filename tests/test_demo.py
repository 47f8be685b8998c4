"""The README's first command: `avatarproxy demo` serves its built-in tenant."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests
from loopback import free_port
from PIL import Image

from avatarproxy.demo.contoso import demo_groups, demo_people
from avatarproxy.security import sign_url


@contextmanager
def running_demo(*args: str, env: dict[str, str] | None = None
                 ) -> Iterator[tuple[str, list[str]]]:
    """``avatarproxy demo ARGS`` on a free port, until its server listens."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "avatarproxy", "demo", "--port", str(port), *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, **(env or {})})
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


@pytest.fixture(scope="module")
def demo() -> Iterator[tuple[str, list[str]]]:
    with running_demo() as running:
        yield running


def test_demo_prints_a_working_url_for_every_person(demo: tuple[str, list[str]]) -> None:
    _, printed = demo
    urls = [m.group(0) for line in printed if (m := re.search(r"http://\S+/avatar/\S+", line))]
    groups = [url for url in urls if re.search(r"/avatar/(group|team)/", url)]
    urls = [url for url in urls if url not in groups]
    assert len(urls) == len(demo_people())
    assert len(groups) == len(demo_groups())
    session = requests.Session()
    session.trust_env = False
    for url in urls:
        response = session.get(url, timeout=10)
        assert response.status_code == 200, url
        assert Image.open(io.BytesIO(response.content)).size == (96, 96), url
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


def test_demo_page_shows_gravatar_urls_working(demo: tuple[str, list[str]]) -> None:
    base, _ = demo
    session = requests.Session()
    session.trust_env = False
    page = session.get(base + "/", timeout=10).text
    images = re.findall(r'<img src="(/avatar/[0-9a-f]{32}\?[^"]+)"[^>]*data-upn="([^"]+)"'
                        r'[^>]*data-source="([^"]+)"[^>]*data-gravatar>', page)
    assert len(images) == len(demo_people())
    for src, upn, source in images:
        response = session.get(base + src.replace("&amp;", "&"), timeout=10)
        assert response.status_code == 200, upn
        assert response.headers["X-Avatar-Source"] == source, upn
        assert Image.open(io.BytesIO(response.content)).size == (48, 48), upn
    assert {source for _, _, source in images} == {"photo", "initials"}


def test_demo_takes_a_config_and_the_environment_but_keeps_its_tenant(tmp_path: Path) -> None:
    # What people try on the demo tenant: signing, domains, the blocked list.
    # A production file's Redis and credentials must not matter: memory only.
    key = "demo-" + "k" * 32
    config = tmp_path / "config.toml"
    config.write_text(f'[security]\nurl_signing_keys = ["{key}"]\n'
                      'allowed_domains = ["contoso.com"]\n'
                      '[cache]\nredis_url = "rediss://redis.example.net:6380/0"\n'
                      'redis_password_file = "/var/run/secrets/avatarproxy/redis-password"\n'
                      '[auth]\nclient_secret_file = "/var/run/secrets/avatarproxy/secret"\n')
    adele, alex = "adele.vance@contoso.com", "alex.wilber@contoso.com"
    with running_demo("--config", str(config),
                      env={"AVATARPROXY_SECURITY_BLOCKED": adele}) as (base, printed):
        session = requests.Session()
        session.trust_env = False

        def fetch(path: str) -> requests.Response:
            return session.get(base + path, timeout=10)

        assert fetch(f"/avatar/{alex}/48").status_code == 403, printed
        answer = fetch(sign_url(key, f"/avatar/{alex}/48"))
        assert (answer.status_code, answer.headers["X-Avatar-Source"]) == (200, "photo")
        answer = fetch(sign_url(key, f"/avatar/{adele}/48"))  # blocked, from the environment
        assert (answer.status_code, answer.headers["X-Avatar-Source"]) == (200, "initials")
        assert fetch(sign_url(key, "/avatar/someone@fabrikam.com/48")).status_code == 404
        assert fetch("/readyz").json()["dependencies"]["redis"] == "disabled"
        page = fetch("/").text  # the page signs its URLs and says who is blocked
        images = re.findall(r'<img src="([^"]+)"[^>]*data-upn="([^"]+)"[^>]*>'
                            r"<figcaption>([^<]+)<", page)
        assert images and all("sig=" in src for src, _, _ in images)
        assert {caption for _, upn, caption in images if upn == adele} == {"initials"}
        src = next(src for src, upn, _ in images if upn == alex).replace("&amp;", "&")
        assert fetch(src).headers["X-Avatar-Source"] == "photo"
