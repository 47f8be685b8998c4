"""The fake Graph's groups, teams, /users listing, $filter, $batch and permission switches
answer as the Graph documentation describes."""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import aiohttp
from PIL import Image
from yarl import URL

from avatarproxy.demo.contoso import demo_groups

TEAM, GROUP, BARE_TEAM = demo_groups()


async def call(fake_graph: Any, path: str, payload: Any = None) -> tuple[int, Any]:
    url = URL(fake_graph.base_url + path, encoded=True)
    async with aiohttp.ClientSession() as http, http.request(
            "POST" if payload is not None else "GET", url, json=payload,
            headers={"Authorization": "Bearer t"}) as resp:
        body = await resp.read()
        return resp.status, json.loads(body) if resp.content_type.endswith("json") else body


def with_groups(fake_graph: Any) -> Any:
    for group in demo_groups():
        fake_graph.graph.add_group(group)
    return fake_graph


async def test_teams_expose_only_their_largest_photo(fake_graph: Any) -> None:
    fg = with_groups(fake_graph)
    status, meta = await call(fg, f"/teams/{TEAM.object_id}/photo")
    assert status == 200 and (meta["width"], meta["height"]) == (648, 648)
    assert (await call(fg, f"/teams/{TEAM.object_id}/photos/48x48/$value"))[0] == 400
    assert (await call(fg, f"/groups/{TEAM.object_id}/photos/48x48"))[0] == 200
    assert (await call(fg, f"/teams/{GROUP.object_id}/photo"))[0] == 404  # not a team
    status, named = await call(fg, f"/groups/{GROUP.object_id}?$select=id,displayName")
    assert named["displayName"] == "Retail Managers"


async def test_permission_switches_answer_403(fake_graph: Any) -> None:
    fg = with_groups(fake_graph)
    fg.graph.denied = {"Team.ReadBasic.All", "Group.Read.All"}
    assert (await call(fg, f"/teams/{TEAM.object_id}/photo"))[0] == 403
    assert (await call(fg, f"/groups/{GROUP.object_id}"))[0] == 200  # GroupMember.Read.All
    fg.graph.denied.add("GroupMember.Read.All")
    assert (await call(fg, f"/groups/{GROUP.object_id}"))[0] == 403
    assert (await call(fg, f"/groups/{GROUP.object_id}/photo"))[0] == 200


async def test_users_listing_pages_and_filters(fake_graph: Any) -> None:
    fake_graph.graph.page_size = 5
    fake_graph.graph.person("lee.gu@contoso.com").mail = "lee@contoso.com"
    fake_graph.graph.person("megan.bowen@contoso.com").proxy_addresses = ("smtp:mb@contoso.com",)
    seen: list[str] = []
    path = "/users?$select=userPrincipalName"
    while path:
        status, page = await call(fake_graph, path)
        assert status == 200 and len(page["value"]) <= 5
        seen += [u["userPrincipalName"] for u in page["value"]]
        path = page.get("@odata.nextLink", "").removeprefix(fake_graph.base_url)
    assert sorted(seen) == sorted(p.upn for p in fake_graph.graph.people)
    query = ("$select=id&$filter=mail%20eq%20%27LEE%40contoso.com%27%20or%20proxyAddresses/"
             "any(a:a%20eq%20%27smtp:mb%40contoso.com%27)")
    status, found = await call(fake_graph, "/users?" + query)
    assert {u["id"] for u in found["value"]} == {
        fake_graph.graph.person("lee.gu@contoso.com").object_id,
        fake_graph.graph.person("megan.bowen@contoso.com").object_id}
    assert (await call(fake_graph, "/users?$filter=startswith(mail,'a')"))[0] == 400


async def test_batch_answers_each_request_alone_with_binary_bodies_in_base64(
        fake_graph: Any) -> None:
    fake_graph.graph.inject(429, headers={"Retry-After": "2.5"}, path_contains="alex.wilber")
    requests = [{"id": "1", "method": "GET", "url": "/users/adele.vance@contoso.com/photo"},
                {"id": "2", "method": "GET", "url": "/users/alex.wilber@contoso.com/photo"},
                {"id": "3", "method": "GET",
                 "url": "/users/megan.bowen@contoso.com/photos/48x48/$value"}]
    status, body = await call(fake_graph, "/$batch", {"requests": requests})
    assert status == 200
    answers = {r["id"]: r for r in body["responses"]}
    assert answers["1"]["status"] == 200 and answers["1"]["body"]["width"] == 648
    assert answers["2"]["status"] == 429 and answers["2"]["headers"]["Retry-After"] == "2.5"
    image = Image.open(io.BytesIO(base64.b64decode(answers["3"]["body"])))
    assert image.size == (48, 48)
    assert fake_graph.graph.count(lambda r: r.batched) == 3
    too_many = [dict(requests[0], id=str(n)) for n in range(21)]
    assert (await call(fake_graph, "/$batch", {"requests": too_many}))[0] == 400
