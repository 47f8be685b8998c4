"""The fakes behave as the Graph and Entra ID docs say, and real msal works against FakeIdP."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import msal
import pytest
import redis
import requests
from conftest import RunningGraph
from fakeidp import FakeIdP
from PIL import Image
from tlsutil import make_client_certificate, ssl_client_context
from yarl import URL

from avatarproxy.demo.contoso import demo_people
from avatarproxy.demo.fakegraph import FakeGraph
from avatarproxy.demo.graphanswers import ONE_PIXEL_GIF
from avatarproxy.demo.photos import portrait

SCOPE = "https://graph.microsoft.com/.default"
ADELE = "87d349ed-44d7-43e1-9a83-5f2406dee5bd"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def fetch(http: aiohttp.ClientSession, fg: RunningGraph, path: str,
                token: str | None = "any-token", method: str = "GET") -> tuple[int, Any, bytes]:
    """GET an already-encoded path; returns status, headers, body."""
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    url = URL(fg.base_url + path, encoded=True)  # encoded=True: send the path byte for byte
    async with http.request(method, url, headers=headers) as resp:
        return resp.status, resp.headers, await resp.read()


async def fetch_json(http: aiohttp.ClientSession, fg: RunningGraph,
                     path: str) -> tuple[int, dict[str, Any]]:
    status, _, body = await fetch(http, fg, path)
    return status, json.loads(body)


def image_size(body: bytes) -> tuple[str | None, tuple[int, int]]:
    with Image.open(io.BytesIO(body)) as image:
        return image.format, image.size


# --- FakeGraph -------------------------------------------------------------------------


async def test_metadata_spells_ids_with_capital_or_lowercase_x(http, fake_graph):
    status, adele = await fetch_json(http, fake_graph, "/users/adele.vance@contoso.com/photo")
    assert status == 200
    assert adele["id"] == "648X648" and (adele["width"], adele["height"]) == (648, 648)
    assert adele["@odata.mediaContentType"] == "image/jpeg"
    assert adele["@odata.mediaEtag"].startswith('"') and len(adele["@odata.mediaEtag"]) == 10
    status, alex = await fetch_json(http, fake_graph, "/users/alex.wilber@contoso.com/photo")
    assert (status, alex["id"], alex["width"]) == (200, "240x240", 240)


async def test_entra_only_photo_reports_its_own_dimensions_and_no_hd_size(http, fake_graph):
    _, meta = await fetch_json(http, fake_graph, "/users/lee.gu@contoso.com/photo")
    assert (meta["id"], meta["width"], meta["height"]) == ("300x200", 300, 200)
    _, sized = await fetch_json(http, fake_graph, "/users/lee.gu@contoso.com/photos/96x96")
    assert (sized["id"], sized["width"], sized["height"]) == ("1x1", 1, 1)
    status, headers, body = await fetch(http, fake_graph, "/users/lee.gu@contoso.com/photo/$value")
    assert status == 200 and headers["Content-Type"] == "image/jpeg"
    assert image_size(body) == ("JPEG", (300, 200))


async def test_smaller_hd_sizes_are_resized_from_the_master(http, fake_graph):
    status, headers, body = await fetch(
        http, fake_graph, "/users/megan.bowen@contoso.com/photos/48X48/$value")
    assert status == 200 and headers["Content-Type"] == "image/jpeg"
    assert image_size(body) == ("JPEG", (48, 48))
    _, listing = await fetch_json(http, fake_graph, "/users/megan.bowen@contoso.com/photos")
    assert [p["id"] for p in listing["value"]] == ["48X48", "64X64", "96X96"]


async def test_unavailable_size_answers_1x1_metadata_and_a_1x1_gif(http, fake_graph):
    path = "/users/megan.bowen@contoso.com/photos/240x240"
    status, meta = await fetch_json(http, fake_graph, path)
    assert status == 200
    assert (meta["id"].lower(), meta["width"], meta["height"]) == ("1x1", 1, 1)
    status, headers, body = await fetch(http, fake_graph, path + "/$value")
    assert (status, headers["Content-Type"], body) == (200, "image/gif", ONE_PIXEL_GIF)
    assert image_size(body) == ("GIF", (1, 1))


async def test_no_photo_is_404_image_not_found_everywhere(http, fake_graph):
    upn = "diego.siciliani@contoso.com"
    for suffix in ("/photo", "/photo/$value", "/photos", "/photos/48x48", "/photos/48x48/$value"):
        status, body = await fetch_json(http, fake_graph, f"/users/{upn}{suffix}")
        assert (status, body["error"]["code"]) == (404, "ImageNotFound"), suffix


async def test_placeholder_person_gets_the_documented_1x1_json(http, fake_graph):
    status, meta = await fetch_json(http, fake_graph, "/users/isaiah.langer@contoso.com/photo")
    assert status == 200
    assert meta["@odata.mediaContentType"] == "image/gif"
    assert (meta["@odata.mediaEtag"], meta["id"]) == ("", "1x1")
    assert (meta["width"], meta["height"]) == (1, 1)
    status, _, _ = await fetch(http, fake_graph, "/users/isaiah.langer@contoso.com/photo/$value")
    assert status == 404


async def test_odata_key_form_with_doubled_quotes_finds_the_user(http, fake_graph):
    for path in ("/users('o''brien@contoso.com')/photo", "/users('o%27%27brien@contoso.com')/photo",
                 "/users/o'brien@contoso.com/photo", "/users('%24admin@contoso.com')/photo",
                 "/users('$admin@contoso.com')/photo"):
        status, _ = await fetch_json(http, fake_graph, path)
        assert status == 200, path
    status, body = await fetch_json(http, fake_graph, "/users('o'brien@contoso.com')")
    assert (status, body["error"]["code"]) == (400, "BadRequest")


async def test_plain_dollar_segment_is_a_400(http, fake_graph):
    status, body = await fetch_json(http, fake_graph, "/users/$admin@contoso.com/photo")
    assert (status, body["error"]["code"]) == (400, "BadRequest")


async def test_guest_upn_is_found_only_with_percent_encoded_hash(http, fake_graph):
    encoded = "/users/john_fabrikam.com%23EXT%23@contoso.onmicrosoft.com/photo"
    status, meta = await fetch_json(http, fake_graph, encoded)
    assert (status, meta["id"]) == (200, "120x120")
    assert fake_graph.graph.requests[-1].raw_path == "/v1.0" + encoded
    # Unencoded, the client cuts '#EXT#...' off as a fragment: nobody by that name.
    status, body = await fetch_json(http, fake_graph, "/users/john_fabrikam.com#EXT#@x/photo")
    assert (status, body["error"]["code"]) == (404, "Request_ResourceNotFound")
    assert fake_graph.graph.requests[-1].raw_path == "/v1.0/users/john_fabrikam.com"


async def test_users_are_found_by_object_id_or_upn_in_any_case_under_beta_too(http, fake_graph):
    upper = fake_graph.base_url.replace("/v1.0", "/beta")
    beta = RunningGraph(fake_graph.graph, upper, fake_graph.runner)
    for fg, path in ((fake_graph, f"/users/{ADELE.upper()}/photo"),
                     (beta, "/users/Adele.Vance@Contoso.COM/photo")):
        status, meta = await fetch_json(http, fg, path)
        assert (status, meta["id"]) == (200, "648X648")
    status, body = await fetch_json(http, fake_graph, "/users/nobody@contoso.com/photo")
    assert (status, body["error"]["code"]) == (404, "Request_ResourceNotFound")


async def test_user_json_honours_select(http, fake_graph):
    status, user = await fetch_json(http, fake_graph, "/users/elodie.dupre@contoso.com")
    assert status == 200
    assert user["displayName"] == "Élodie Dupré" and user["givenName"] == "Élodie"
    status, user = await fetch_json(
        http, fake_graph, f"/users/{ADELE}?$select=displayName,surname")
    assert {k for k in user if not k.startswith("@")} == {"displayName", "surname"}
    status, user = await fetch_json(http, fake_graph, f"/users/{ADELE}?%24select=bogus")
    assert status == 400


async def test_requests_without_an_accepted_token_are_401_and_recorded(http, fake_graph):
    graph: FakeGraph = fake_graph.graph
    status, _, body = await fetch(http, fake_graph, f"/users/{ADELE}/photo", token=None)
    assert status == 401 and b"InvalidAuthenticationToken" in body
    graph.accept_token = {"good"}.__contains__
    assert (await fetch(http, fake_graph, f"/users/{ADELE}/photo", token="bad"))[0] == 401
    assert (await fetch(http, fake_graph, f"/users/{ADELE}/photo", token="good"))[0] == 200
    assert [r.authorization for r in graph.requests] == [None, "Bearer bad", "Bearer good"]


async def test_only_get_and_head_are_allowed(http, fake_graph):
    assert (await fetch(http, fake_graph, f"/users/{ADELE}/photo", method="HEAD"))[0] == 200
    assert (await fetch(http, fake_graph, f"/users/{ADELE}/photo", method="POST"))[0] == 405


async def test_injected_429_carries_retry_after_then_recovers(http, fake_graph):
    graph: FakeGraph = fake_graph.graph
    graph.inject(429, times=2, headers={"Retry-After": "2.128"}, path_contains="/photo/$value")
    path = f"/users/{ADELE}/photo/$value"
    assert (await fetch(http, fake_graph, f"/users/{ADELE}/photo"))[0] == 200  # not matched
    for _ in range(2):
        status, headers, body = await fetch(http, fake_graph, path)
        assert (status, headers["Retry-After"]) == (429, "2.128")
        assert b'"TooManyRequests"' in body
    assert (await fetch(http, fake_graph, path))[0] == 200
    assert graph.count("/photo/$value") == 3
    assert graph.count(lambda r: r.method == "GET") == graph.count() == 4
    graph.reset_requests()
    assert graph.count() == 0


async def test_set_photo_changes_the_etag_and_the_bytes(http, fake_graph):
    graph: FakeGraph = fake_graph.graph
    _, before = await fetch_json(http, fake_graph, "/users/alex.wilber@contoso.com/photo")
    etag = graph.set_photo("alex.wilber@contoso.com", portrait(504, 504, "red", "blue", "green"))
    _, after = await fetch_json(http, fake_graph, "/users/alex.wilber@contoso.com/photo")
    assert after["@odata.mediaEtag"] == etag != before["@odata.mediaEtag"]
    assert after["id"] == "504x504"
    graph.set_photo("alex.wilber@contoso.com", None)
    assert (await fetch(http, fake_graph, "/users/alex.wilber@contoso.com/photo"))[0] == 404


async def test_latency_delays_answers(http, fake_graph):
    fake_graph.graph.latency = 0.2
    loop = asyncio.get_running_loop()
    started = loop.time()
    await fetch(http, fake_graph, f"/users/{ADELE}/photo")
    assert loop.time() - started >= 0.2


def test_demo_people_are_deterministic():
    first, second = demo_people(), demo_people()
    assert [p.media_etag for p in first] == [p.media_etag for p in second]
    assert all(a.photo.tobytes() == b.photo.tobytes() for a, b in zip(first, second, strict=True)
               if a.photo is not None and b.photo is not None)
    assert len({p.object_id for p in first}) == len(first) >= 12


def test_people_can_be_found_by_predicate():
    graph = FakeGraph(demo_people())
    assert graph.find(lambda p: p.placeholder).upn == "isaiah.langer@contoso.com"
    assert graph.person(ADELE.upper()).upn == "adele.vance@contoso.com"
    assert len(graph.people) == len(demo_people())
    with pytest.raises(LookupError):
        graph.find(lambda p: p.upn == "nobody")


# --- FakeIdP with the real msal --------------------------------------------------------


class PinnedCASession(requests.Session):
    """Trusts exactly ``verify``: REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE would override it."""

    def merge_environment_settings(self, url, proxies, stream, verify, cert):
        settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
        settings["verify"] = self.verify
        return settings


def acquire(idp: FakeIdP, credential: Any, *, calls: int = 1,
            client_id: str | None = None) -> list[dict[str, Any]]:
    """Build an msal app against ``idp`` and acquire ``calls`` times (blocking: run in a thread)."""
    with PinnedCASession() as session:
        session.verify = str(idp.ca_file)
        app = msal.ConfidentialClientApplication(
            client_id or idp.client_id, client_credential=credential, authority=idp.authority,
            instance_discovery=False, http_client=session)
        return [app.acquire_token_for_client(scopes=[SCOPE]) for _ in range(calls)]


async def test_msal_gets_a_token_with_a_client_secret(fake_idp, fake_graph, http):
    [result] = await asyncio.to_thread(acquire, fake_idp, fake_idp.client_secret)
    assert result["token_type"] == "Bearer" and result["expires_in"] > 3000
    assert result["access_token"] in fake_idp.issued
    [request] = fake_idp.token_requests
    assert (request.credential, request.grant_type, request.scope) == (
        "secret", "client_credentials", SCOPE)
    assert fake_idp.discovery_requests == 1
    fake_graph.graph.accept_token = fake_idp.issued.__contains__
    assert (await fetch(http, fake_graph, f"/users/{ADELE}/photo",
                        token=result["access_token"]))[0] == 200
    fake_idp.revoke_all()
    assert (await fetch(http, fake_graph, f"/users/{ADELE}/photo",
                        token=result["access_token"]))[0] == 401


async def test_msal_serves_a_second_call_from_its_token_cache(fake_idp):
    first, second = await asyncio.to_thread(acquire, fake_idp, fake_idp.client_secret, calls=2)
    assert first["access_token"] == second["access_token"]
    assert second["token_source"] == "cache" and len(fake_idp.token_requests) == 1


async def test_wrong_secret_is_invalid_client(fake_idp):
    [result] = await asyncio.to_thread(acquire, fake_idp, "wrong")
    assert result["error"] == "invalid_client"
    assert "AADSTS7000215" in result["error_description"]
    assert not fake_idp.issued


@pytest.mark.parametrize(("credential_for", "alg", "cert_header"), [
    pytest.param(lambda cert: {"private_key": cert.key_pem, "public_certificate": cert.cert_pem},
                 "PS256", "x5t#S256", id="certificate"),
    pytest.param(lambda cert: {"private_key": cert.combined_file.read_text(),
                               "public_certificate": cert.combined_file.read_text()},
                 "PS256", "x5t#S256", id="one-pem-holding-key-and-certificate"),
    pytest.param(lambda cert: {"private_key": cert.key_pem, "thumbprint": cert.sha1_thumbprint},
                 "RS256", "x5t", id="sha1-thumbprint"),
])
async def test_msal_gets_a_token_with_a_registered_certificate(
        fake_idp, tls_dir, credential_for, alg, cert_header):
    cert = make_client_certificate(tls_dir)
    fake_idp.register_certificate(cert.cert_pem)
    [result] = await asyncio.to_thread(acquire, fake_idp, credential_for(cert))
    assert result["access_token"] in fake_idp.issued
    [request] = fake_idp.token_requests
    assert request.credential == "certificate"
    assert request.assertion_header()["alg"] == alg and cert_header in request.assertion_header()
    assert request.assertion_claims()["aud"] == fake_idp.token_endpoint


async def test_an_unregistered_certificate_is_refused(fake_idp, tls_dir):
    cert = make_client_certificate(tls_dir, "stranger")
    credential = {"private_key": cert.key_pem, "public_certificate": cert.cert_pem}
    [result] = await asyncio.to_thread(acquire, fake_idp, credential)
    assert result["error"] == "invalid_client" and "AADSTS700027" in result["error_description"]


async def test_msal_sends_a_federated_token_read_by_a_callable(fake_idp, tmp_path):
    token_file = tmp_path / "azure-identity-token"
    token_file.write_text("projected-service-account-token-1\n")
    fake_idp.federated_tokens.add("projected-service-account-token-1")

    def read() -> str:  # Kubernetes rotates the file: read it on every request
        return token_file.read_text().strip()

    [result] = await asyncio.to_thread(acquire, fake_idp, {"client_assertion": read})
    assert result["access_token"] in fake_idp.issued
    [request] = fake_idp.token_requests
    assert (request.credential, request.client_assertion) == (
        "assertion", "projected-service-account-token-1")
    assert request.form["client_assertion_type"] == (
        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer")


def acquire_twice_raising(idp: FakeIdP) -> list[str]:
    """Like ``acquire``, but records the exception each call raises."""
    errors = []
    with PinnedCASession() as session:
        session.verify = str(idp.ca_file)
        app = msal.ConfidentialClientApplication(
            idp.client_id, client_credential=idp.client_secret, authority=idp.authority,
            instance_discovery=False, http_client=session)
        for _ in range(2):
            with pytest.raises(msal.exceptions.MsalServiceError) as caught:
                app.acquire_token_for_client(scopes=[SCOPE])
            errors.append(str(caught.value))
    return errors


async def test_msal_raises_on_a_5xx_and_replays_it_without_asking_again(fake_idp):
    # A 5xx from the token endpoint is an exception (MsalServiceError), not an
    # error dict. msal also remembers a 429/5xx per app instance (Retry-After,
    # default 5 s) and replays it without calling the IdP; a new app starts clean.
    fake_idp.fail_next(503)
    errors = await asyncio.to_thread(acquire_twice_raising, fake_idp)
    assert errors == ["HTTP Error: 503", "HTTP Error: 503"]
    assert len(fake_idp.token_requests) == 1
    [result] = await asyncio.to_thread(acquire, fake_idp, fake_idp.client_secret)
    assert "access_token" in result


async def test_msal_returns_a_429_as_an_error_dict_and_replays_it(fake_idp):
    fake_idp.fail_next(429, headers={"Retry-After": "30"})
    first, second = await asyncio.to_thread(acquire, fake_idp, fake_idp.client_secret, calls=2)
    assert first["error"] == second["error"] == "temporarily_unavailable"
    assert len(fake_idp.token_requests) == 1


async def test_unknown_client_id_is_refused(fake_idp):
    [result] = await asyncio.to_thread(acquire, fake_idp, fake_idp.client_secret,
                                       client_id="00000000-0000-0000-0000-000000000000")
    assert result["error"] == "unauthorized_client"


async def test_idp_close_cuts_keep_alive_connections_msal_still_holds(fake_idp):
    # A service keeps its msal session open past the IdP fixture. A graceful TLS
    # close would wait for the idle client's close_notify and leave the server
    # socket open beyond the test's loop (ResourceWarning): close() aborts instead.
    with PinnedCASession() as session:
        session.verify = str(fake_idp.ca_file)

        def build_and_acquire() -> dict[str, Any]:
            app = msal.ConfidentialClientApplication(
                fake_idp.client_id, client_credential=fake_idp.client_secret,
                authority=fake_idp.authority, instance_discovery=False, http_client=session)
            return app.acquire_token_for_client(scopes=[SCOPE])

        assert "access_token" in await asyncio.to_thread(build_and_acquire)
        connections = fake_idp._runner.server.connections
        sockets = [h.transport.get_extra_info("socket") for h in connections]
        assert sockets  # msal's keep-alive connection is still open
        await fake_idp.close()
        assert all(sock.fileno() == -1 for sock in sockets)


async def test_idp_is_only_trusted_through_its_ca(fake_idp):
    async with aiohttp.ClientSession() as session:
        url = fake_idp.authority + "/v2.0/.well-known/openid-configuration"
        async with session.get(url, ssl=ssl_client_context(fake_idp.ca_file)) as resp:
            config = await resp.json()
        assert config["token_endpoint"] == fake_idp.token_endpoint
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            async with session.get(url):  # the system store does not know our CA
                pass


def test_client_certificate_files(tmp_path: Path):
    cert = make_client_certificate(tmp_path)
    assert cert.cert_file.read_text() == cert.cert_pem
    assert len(cert.sha1_thumbprint) == 40 and len(cert.sha256_thumbprint) == 64


# --- Redis ---------------------------------------------------------------------------


def test_redis_url_is_a_private_server_emptied_before_each_test(redis_url):
    assert not redis_url.startswith("redis://127.0.0.1:6379/")
    with redis.Redis.from_url(redis_url) as client:
        assert client.dbsize() == 0
        client.set("left-behind", "1")


def test_redis_url_flushes_what_the_previous_test_left(redis_url):
    with redis.Redis.from_url(redis_url) as client:
        assert client.get("left-behind") is None
