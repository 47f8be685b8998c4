"""The caching front (issue 15) before the real service: what it caches, under
which key, and what it never caches; each rule of
deploy/kubernetes/base/front/avatarproxy.vcl is a test here or in
tests/test_front_operations.py. The front runs as deployed (tests/front.py:
the pod's arguments, environment and VCL), on loopback, before the service
in-process on the fake Graph; what reaches the service is recorded as it
arrives (tests/frontstack.py). Waits are for time the rules define (a copy's
age), never for the machine. The format classifier is checked against
negotiation.py in tests/test_front_accept.py."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from frontstack import (
    ADELE,
    CHROME,
    FIREFOX,
    IE_11,
    PATH,
    SAFARI_15,
    MakeStack,
    until_age,
    vary,
)

from avatarproxy.security import sign_url

# -- what is cached, under which key ------------------------------------------

async def test_repeated_requests_are_answered_by_the_front_with_the_services_headers(
        stack_for: MakeStack) -> None:
    s = await stack_for()
    first = await s.get(PATH, Accept=CHROME)
    # Another browser, the same class; cookies of a page on the same host.
    second = await s.get(PATH, Accept=FIREFOX, Cookie="session=1", X_Request_Id="ingress-7")
    assert first.status == second.status == 200
    assert second.body == first.body
    assert len(s.reached(PATH)) == 1
    # The request id is this request's, not the one the service gave the first.
    assert second.headers["X-Request-Id"] == "ingress-7"
    assert "X-Request-Id" not in (await s.get(PATH, Accept=CHROME)).headers
    for name in ("Content-Type", "Content-Length", "ETag", "Cache-Control", "X-Avatar-Source",
                 "X-Content-Type-Options", "Cross-Origin-Resource-Policy"):
        assert second.headers[name] == first.headers[name], name
    # Browsers still learn the answer depends on Accept; the max-age is the service's.
    assert "accept" in vary(second)
    assert second.headers["Cache-Control"].startswith("public, max-age=3600")
    assert not {"Via", "X-Varnish", "Server"} & set(second.headers)
    assert not [h for h in second.headers if h.lower().startswith("x-front-")]  # the front's own
    # The service got the class's one canonical Accept, and the client's address.
    asked = s.reached(PATH)[0]
    assert asked.headers["Accept"] == "image/avif,image/webp,*/*"
    assert asked.headers["X-Forwarded-For"] == "127.0.0.1"


async def test_each_format_class_has_its_own_copy_and_no_browser_gets_what_it_cannot_read(
        stack_for: MakeStack) -> None:
    s = await stack_for()
    path = f"/avatar/{ADELE}/200"  # AVIF from 160 px for browsers that take both
    expected = [(CHROME, "image/avif"), (FIREFOX, "image/avif"), (SAFARI_15, "image/webp"),
                ("image/avif,image/*;q=0.8", "image/avif"), (IE_11, "image/jpeg"),
                ("image/avif;q=0,image/webp", "image/webp"), ("", "image/jpeg")]
    for _ in range(2):  # then each from the copy of its class
        for accept, content_type in expected:
            answer = await s.get(path, Accept=accept)
            assert answer.headers["Content-Type"] == content_type, accept
    # Four classes: AVIF and WebP, WebP, AVIF, neither.
    assert len(s.reached(path)) == 4
    # ?format= forces one format: one copy, whoever asks, no Vary: Accept.
    forced = f"/avatar/{ADELE}/200?format=jpeg"
    for accept in (CHROME, SAFARI_15, IE_11):
        answer = await s.get(forced, Accept=accept)
        assert answer.headers["Content-Type"] == "image/jpeg"
        assert "accept" not in vary(answer)
    assert len(s.reached(forced)) == 1


async def test_svg_initials_and_photos_asked_as_svg_keep_their_classes(
        stack_for: MakeStack, fake_graph: Any) -> None:
    s = await stack_for()
    nobody = fake_graph.find(lambda p: p.photo is None and not p.placeholder).upn
    svg = f"/avatar/{nobody}/96?format=svg"
    photo = f"/avatar/{ADELE}/96?format=svg"  # a photo is never drawn as SVG
    for _ in range(2):
        for accept in (CHROME, IE_11):
            assert (await s.get(svg, Accept=accept)).headers["Content-Type"] == "image/svg+xml"
        assert (await s.get(photo, Accept=CHROME)).headers["Content-Type"] == "image/webp"
        assert (await s.get(photo, Accept=IE_11)).headers["Content-Type"] == "image/jpeg"
    assert len(s.reached(svg)) == 2 and len(s.reached(photo)) == 2


async def test_cache_busters_and_signatures_are_part_of_the_key(stack_for: MakeStack) -> None:
    s = await stack_for(security__url_signing_keys=["k1"])
    signed = sign_url("k1", PATH)
    busted = signed + "&v=3"
    for url in (signed, busted):
        for _ in range(2):
            assert (await s.get(url)).status == 200
        assert len(s.reached(url)) == 1, url
    # Never answered from the cache: each asks the service, which refuses it.
    another_paths = sign_url("k1", f"/avatar/{ADELE}/96").split("?")[1]
    for url in (PATH, f"{PATH}?v=3", f"{PATH}?sig={'A' * 43}", f"{PATH}?{another_paths}"):
        for _ in range(2):
            answer = await s.get(url)
            assert answer.status == 403, url
            assert answer.headers["Cache-Control"] == "no-store"
        assert len(s.reached(url)) == 2, url


async def test_answers_for_another_sites_pages_are_never_shared(stack_for: MakeStack) -> None:
    # Unsigned and no origin listed: answers vary by Sec-Fetch-Site, and a page
    # of another site gets private ones (docs/security.md).
    s = await stack_for()
    foreign = {"Sec_Fetch_Site": "cross-site", "Referer": "https://elsewhere.example/"}
    for _ in range(2):
        answer = await s.get(PATH, **foreign)
        assert answer.headers["Cache-Control"].startswith("private"), answer.headers
    assert len(s.reached(PATH)) == 2
    for _ in range(2):
        answer = await s.get(PATH, Sec_Fetch_Site="same-site")
        assert answer.headers["Cache-Control"].startswith("public")
    assert (await s.get(PATH, **foreign)).headers["Cache-Control"].startswith("private")


async def test_cors_and_corp_headers_pass_through_for_each_origin(stack_for: MakeStack) -> None:
    listed = ["https://intranet.contoso.com", "https://wiki.contoso.com"]
    # The front learns server.cors_origins from its environment, as deployed.
    s = await stack_for({"AVATARPROXY_EDGE_CORS_ORIGINS": ", ".join(listed)},
                        server__cors_origins=listed,
                        server__cross_origin_resource_policy="same-site")
    for _ in range(2):  # then from the front's copy for that origin
        for origin in [*listed, "https://elsewhere.example", None]:
            answer = await s.get(PATH, **({"Origin": origin} if origin else {}))
            assert answer.status == 200
            assert answer.headers.get("Access-Control-Allow-Origin") == (
                origin if origin in listed else None), origin
            assert answer.headers["Cross-Origin-Resource-Policy"] == "same-site"
            assert "origin" in vary(answer)
    # Origin is part of the key: a copy per listed origin, one for every other and none.
    assert len(s.reached(PATH)) == 3


async def test_header_values_the_service_does_not_tell_apart_share_one_copy(
        stack_for: MakeStack) -> None:
    # Answers vary by Sec-Fetch-Site and Origin, but the service tells apart only
    # "cross-site" and the listed origins: a client inventing other values must not
    # fill the front with copies (each slows every lookup of the URL).
    listed = "https://intranet.contoso.com"
    s = await stack_for({"AVATARPROXY_EDGE_CORS_ORIGINS": listed}, server__cors_origins=[listed])
    first = await s.get(PATH)
    for n in range(20):
        invented = await s.get(PATH, Sec_Fetch_Site=f"x{n}", Origin=f"https://x{n}.example")
        assert (invented.headers["ETag"], invented.body) == (first.headers["ETag"], first.body)
        assert "Access-Control-Allow-Origin" not in invented.headers
    for value in ("same-origin", "same-site", "none", "Cross-Site"):
        await s.get(PATH, Sec_Fetch_Site=value)
    # An origin glued to a listed one is not listed.
    await s.get(PATH, Origin=f"{listed},https://x.example")
    assert len(s.reached(PATH)) == 1
    assert "Origin" not in s.reached(PATH)[0].headers
    # What the service tells apart still reaches it.
    foreign = await s.get(PATH, Sec_Fetch_Site="cross-site", Referer="https://x.example/")
    assert foreign.headers["Cache-Control"].startswith("private")
    cors = await s.get(PATH, Origin=listed)
    assert cors.headers["Access-Control-Allow-Origin"] == listed
    assert [r.headers.get("Sec-Fetch-Site") for r in s.reached(PATH)] == [
        None, "cross-site", None]


async def test_only_avatars_are_cached(stack_for: MakeStack) -> None:
    s = await stack_for()  # /metrics on the serving port (server.metrics_port = 0)
    for path in ("/healthz", "/readyz", "/metrics"):
        for _ in range(2):
            assert (await s.get(path)).status == 200, path
        assert len(s.reached(path)) == 2, path
    # CORS preflights pass too (and the front never caches them).
    for _ in range(2):
        await s.get(PATH, "OPTIONS", Origin="https://intranet.contoso.com",
                    Access_Control_Request_Method="GET")
    assert [r.method for r in s.reached(PATH)] == ["OPTIONS", "OPTIONS"]


async def test_a_copy_carries_the_ingress_request_id_only_if_the_service_would_keep_it(
        stack_for: MakeStack) -> None:
    # The service keeps up to 64 of [A-Za-z0-9._:-] (ops.py); the front echoes no other.
    s = await stack_for()
    await s.get(PATH)
    for sent, kept in (("ingress-7", True), ("a" * 64, True), ("a.b:c_d-E", True),
                       ("a" * 65, False), ("<script>", False), ("a b", False), ("", False)):
        answer = await s.get(PATH, X_Request_Id=sent)
        assert answer.headers.get("X-Request-Id") == (sent if kept else None), sent
    assert len(s.reached(PATH)) == 1


async def test_browsers_revalidate_and_ask_for_headers_against_the_front(
        stack_for: MakeStack) -> None:
    s = await stack_for()
    first = await s.get(PATH)
    again = await s.get(PATH, If_None_Match=first.headers["ETag"])
    assert (again.status, again.body) == (304, b"")
    assert again.headers["ETag"] == first.headers["ETag"]
    head = await s.get(PATH, "HEAD")
    assert (head.status, head.body) == (200, b"")
    assert head.headers["Content-Length"] == first.headers["Content-Length"]
    assert len(s.reached(PATH)) == 1


# -- what is never cached -------------------------------------------------------

async def test_errors_are_never_cached_and_a_4xx_replaces_the_copy(
        stack_for: MakeStack, fake_graph: Any) -> None:
    # No memory tier: the service asks Graph each time the front asks it.
    s = await stack_for({"AVATARPROXY_EDGE_MAX_AGE_SECONDS": "1"}, cache__memory_max_bytes=0)
    path = f"/avatar/{ADELE}/48?fallback=404"
    assert (await s.get(path)).status == 200
    started = time.monotonic()  # the front's copy is at least this old
    fake_graph.graph.set_photo(ADELE, None)  # deleted: with ?fallback=404, a 404
    await until_age(started, 1.2)
    # The front's own marker, sent by a client, changes nothing.
    for marker in ({}, {"X_Front_Keep": "1"}):
        answer = await s.get(path, **marker)
        assert answer.status == 404, "the front served the photo it held"
        assert answer.headers["Cache-Control"] == "no-store"
    assert [r.status for r in s.reached(path)] == [200, 404, 404]
    assert s.reached(path)[1].headers["If-None-Match"]  # asked as a revalidation


async def test_no_request_makes_the_front_drop_its_copy(stack_for: MakeStack) -> None:
    # A revalidation the service refused (a 400 from its parser) would replace the copy
    # the front holds, as a 4xx does: a client could drop copies at will. Whatever a
    # client sends near the header limits of either, the next request finds the copy.
    s = await stack_for({"AVATARPROXY_EDGE_MAX_AGE_SECONDS": "0"})  # each request revalidates
    first = await s.get(PATH)
    asks: list[dict[str, str]] = [{"X-Forwarded-For": "1" * n}
                                  for n in (8000, 8150, 8165, 8175, 8178, 8185, 8190)]
    asks += [{f"X-H{i}": "v" for i in range(n)} for n in (40, 52, 53, 54, 55, 56, 60)]
    asks += [{"X-A": "a" * 8000, "X-B": "b" * 8000, "X-C": "c" * 8000, "X-D": "d" * 8000}]
    statuses = set()
    for headers in asks:
        await asyncio.sleep(0.01)  # past the copy's millisecond
        async with s.http.get(s.front.base_url + PATH, headers=headers) as resp:
            statuses.add(resp.status)  # 400 or 500: the front's, for this client alone
        await asyncio.sleep(0.01)
        before = len(s.reached(PATH))
        after = await s.get(PATH)
        assert (after.status, after.headers["ETag"]) == (200, first.headers["ETag"])
        revalidation = s.reached(PATH)[before]
        assert (revalidation.status, revalidation.headers["If-None-Match"]) == (
            304, first.headers["ETag"]), list(headers)[:2]
    assert {200, 400} <= statuses
    assert {r.status for r in s.reached(PATH)} <= {200, 304}  # the service refused nothing


async def test_clients_cannot_purge_or_ban_the_fronts_copies(stack_for: MakeStack) -> None:
    s = await stack_for()
    first = await s.get(PATH)
    for method in ("PURGE", "BAN"):
        answer = await s.get(PATH, method)
        assert answer.status >= 400, method
    again = await s.get(PATH)
    assert (again.status, again.headers["ETag"]) == (200, first.headers["ETag"])
    assert [r.method for r in s.reached(PATH) if r.method == "GET"] == ["GET"]


async def test_stand_ins_are_never_cached_and_never_replace_the_photo_the_front_holds(
        stack_for: MakeStack, fake_graph: Any) -> None:
    # No memory tier and Graph past the service's deadline: the service
    # answers stand-in initials with no-store, as when it is overloaded.
    s = await stack_for({"AVATARPROXY_EDGE_MAX_AGE_SECONDS": "1"}, cache__memory_max_bytes=0,
                        server__request_deadline_seconds=0.5)
    photo = await s.get(PATH, Accept=CHROME)
    started = time.monotonic()
    assert photo.headers["X-Avatar-Source"] == "photo"
    fake_graph.graph.latency = 3.0
    try:
        await until_age(started, 1.2)
        # Browsers at once: all get the photo the front holds.
        answers = await asyncio.gather(*(s.get(PATH, Accept=CHROME) for _ in range(5)))
        for answer in answers:
            assert answer.status == 200
            assert answer.headers["X-Avatar-Source"] == "photo"
            assert answer.headers["ETag"] == photo.headers["ETag"]
            assert answer.body == photo.body
        asked = s.reached(PATH)[1]
        assert asked.headers["If-None-Match"] == photo.headers["ETag"]
        assert (asked.status, asked.cache_control) == (200, "no-store")  # the stand-in
        # Where the front holds nothing, the stand-in passes, and is asked for again.
        cold = f"/avatar/{ADELE}/64"
        for _ in range(2):
            answer = await s.get(cold, Accept=CHROME)
            assert answer.headers["X-Avatar-Source"] == "initials"
            assert answer.headers["Cache-Control"] == "no-store"
        assert len(s.reached(cold)) == 2
    finally:
        fake_graph.graph.latency = 0.0
