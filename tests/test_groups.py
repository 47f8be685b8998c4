"""Group and team avatars end to end: real msal against the fake identity
provider, the fake Graph on loopback, a real Redis."""

from __future__ import annotations

import io
import logging
from typing import Any

import pytest
from appclient import MakeClient, get
from PIL import Image

from avatarproxy.demo.contoso import demo_groups
from avatarproxy.demo.people import FakeGroup
from avatarproxy.initials import InitialsRenderer
from avatarproxy.sizing import background_for

TEAM, GROUP, BARE_TEAM = demo_groups()  # team with photo, group with photo, team without


@pytest.fixture(autouse=True)
def _groups(fake_graph: Any) -> None:
    for group in demo_groups():
        fake_graph.graph.add_group(group)


def paths(fake_graph: Any) -> list[str]:
    return [r.path for r in fake_graph.graph.requests]


def size_of(body: bytes) -> tuple[int, int]:
    return Image.open(io.BytesIO(body)).size


def initials_png(letters: str, object_id: str, size: int) -> bytes:
    return InitialsRenderer(()).render([letters], background_for(object_id), size, "png")


async def test_group_photo_uses_the_nearest_hd_size_and_is_cached(
        make_client: MakeClient, fake_graph: Any) -> None:
    client = await make_client()
    status, headers, body = await get(client, f"/avatar/group/{GROUP.object_id}/40")
    assert status == 200 and headers["X-Avatar-Source"] == "photo"
    assert headers["Cache-Control"].startswith("public, max-age=3600")
    assert size_of(body) == (40, 40)
    assert paths(fake_graph) == [f"/v1.0/groups/{GROUP.object_id}/photo",
                                 f"/v1.0/groups/{GROUP.object_id}/photos/48x48/$value"]
    fake_graph.graph.reset_requests()
    again = await make_client()  # a new process: served from Redis
    assert (await get(again, f"/avatar/group/{GROUP.object_id.upper()}/40"))[2] == body
    assert paths(fake_graph) == []


async def test_team_photo_is_always_made_from_the_largest(
        make_client: MakeClient, fake_graph: Any) -> None:
    client = await make_client()
    status, headers, body = await get(client, f"/avatar/team/{TEAM.object_id}/48")
    assert status == 200 and headers["X-Avatar-Source"] == "photo"
    assert size_of(body) == (48, 48)
    assert paths(fake_graph) == [f"/v1.0/teams/{TEAM.object_id}/photo",
                                 f"/v1.0/teams/{TEAM.object_id}/photo/$value"]
    status, _, body = await get(client, f"/avatar/team/{TEAM.object_id}/1000")
    assert size_of(body) == (1000, 1000)  # scaled up, like any photo smaller than asked


async def test_team_and_group_with_one_id_are_cached_apart(
        make_client: MakeClient, fake_graph: Any) -> None:
    client = await make_client()
    await get(client, f"/avatar/team/{TEAM.object_id}/96")
    await get(client, f"/avatar/group/{TEAM.object_id}/96")
    assert paths(fake_graph)[-1] == f"/v1.0/groups/{TEAM.object_id}/photos/96x96/$value"


async def test_no_photo_gives_initials_from_the_display_name(
        make_client: MakeClient, fake_graph: Any) -> None:
    client = await make_client()
    status, headers, body = await get(client, f"/avatar/team/{BARE_TEAM.object_id}/64")
    assert status == 200 and headers["X-Avatar-Source"] == "initials"
    assert headers["Cache-Control"] == "public, max-age=300"
    assert body == initials_png("SM", BARE_TEAM.object_id, 64)  # "Sales and Marketing"
    assert paths(fake_graph)[-1] == f"/v1.0/teams/{BARE_TEAM.object_id}?$select=id,displayName"


async def test_head_answers_like_get_without_a_body(make_client: MakeClient) -> None:
    client = await make_client()
    _, get_headers, _ = await get(client, f"/avatar/group/{GROUP.object_id}/64")
    status, headers, body = await get(client, f"/avatar/group/{GROUP.object_id}/64", "HEAD")
    assert status == 200 and body == b""
    assert headers["ETag"] == get_headers["ETag"]


@pytest.mark.parametrize("path", ["/avatar/group/not-a-guid/48",
                                  "/avatar/team/adele.vance@contoso.com/48",
                                  f"/avatar/group/{GROUP.object_id}/0"])
async def test_bad_ids_or_sizes_are_400_without_a_graph_call(
        make_client: MakeClient, fake_graph: Any, path: str) -> None:
    client = await make_client()
    status, headers, _ = await get(client, path)
    assert status == 400 and headers["Content-Type"].startswith("text/plain")
    assert paths(fake_graph) == []


async def test_unknown_group_gets_initials_not_an_error(make_client: MakeClient) -> None:
    client = await make_client()
    status, headers, _ = await get(client, "/avatar/group/00000000-0000-4000-8000-000000000000/48")
    assert status == 200 and headers["X-Avatar-Source"] == "initials"


@pytest.mark.parametrize(("kind", "denied", "named"), [
    ("team", {"Team.ReadBasic.All"}, "Team.ReadBasic.All"),
    ("group", {"Group.Read.All", "GroupMember.Read.All"},
     "Group.Read.All or GroupMember.Read.All"),
])
async def test_missing_permission_gives_short_lived_initials_and_one_log_line(
        make_client: MakeClient, fake_graph: Any, caplog: pytest.LogCaptureFixture,
        kind: str, denied: set[str], named: str) -> None:
    group = fake_graph.graph.add_group(FakeGroup("3f2e1d0c-9b8a-4765-8432-10fedcba9876",
                                                 "Northwind Traders", team=True))
    fake_graph.graph.denied |= denied
    client = await make_client()
    with caplog.at_level(logging.ERROR):
        for _ in range(2):
            status, headers, _ = await get(client, f"/avatar/{kind}/{group.object_id}/48")
            assert status == 200 and headers["X-Avatar-Source"] == "initials"
            assert headers["Cache-Control"] == "public, max-age=60"
    lines = [r.getMessage() for r in caplog.records if named in r.getMessage()]
    assert len(lines) == 1 and "grant the application permission" in lines[0]


async def test_two_segment_route_stays_the_user_route(make_client: MakeClient) -> None:
    client = await make_client()
    status, headers, _ = await get(client, "/avatar/adele.vance@contoso.com/48")
    assert status == 200 and headers["X-Avatar-Source"] == "photo"
    assert (await get(client, f"/avatar/{GROUP.object_id}/48"))[1]["X-Avatar-Source"] \
        == "initials"  # a group id on the user route is not a user
