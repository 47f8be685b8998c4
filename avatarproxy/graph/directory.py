"""Directory helpers over ``GraphClient``: JSON batches and the paged user listing.

``$batch`` carries up to 20 requests in one round trip; Graph still throttles
each sub-request on its own (a 429 inside a 200 batch), so every answer comes
back as JSON or as our exception, in request order. ``get_each`` makes the
same requests one by one, for when the batch itself is refused.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

from ..errors import AuthError, BadRequest, GraphError, GraphUnavailable
from ..inputs import parse_subject
from ..models import Subject
from .client import GraphClient
from .replies import check_reply

BATCH_LIMIT = 20  # Graph refuses larger JSON batches


async def batch_get(graph: GraphClient, operation: str,
                    paths: Sequence[str]) -> list[dict[str, Any] | GraphError]:
    """GET each encoded ``path`` (relative to the version root) in one ``$batch``."""
    if not 1 <= len(paths) <= BATCH_LIMIT:
        raise ValueError(f"a batch holds 1 to {BATCH_LIMIT} requests, not {len(paths)}")
    requests = [{"id": str(index), "method": "GET", "url": path}
                for index, path in enumerate(paths)]
    data = await graph.post_json("batch", "/$batch", {"requests": requests}, cost=len(paths))
    answers = {str(r.get("id")): r for r in data.get("responses", []) if isinstance(r, dict)}
    return [_answer(operation, answers.get(str(index))) for index in range(len(paths))]


async def get_each(graph: GraphClient, operation: str, subjects: Sequence[Subject],
                   paths: Sequence[str], concurrency: int = 4) -> list[dict[str, Any] | GraphError]:
    """What ``batch_get`` returns, one GET per path (each paced by the client's rate
    cap, ``concurrency`` at a time). No token (``AuthError``) stops them all."""
    slots = asyncio.Semaphore(concurrency)

    async def one(subject: Subject, path: str) -> dict[str, Any] | GraphError:
        route, _, query = path.partition("?")
        async with slots:
            try:
                return await graph.get_json(operation, subject, route, query)
            except AuthError:
                raise
            except GraphError as exc:
                return exc

    tasks = [asyncio.ensure_future(one(s, p)) for s, p in zip(subjects, paths, strict=True)]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:  # AuthError (or a cancelled run): stop the rest too
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def _answer(operation: str, answer: dict[str, Any] | None) -> dict[str, Any] | GraphError:
    if answer is None:
        return GraphUnavailable(f"{operation}: no answer in the batch")
    status = answer.get("status")
    headers = answer.get("headers")
    body = answer.get("body")
    try:
        check_reply(operation, status if isinstance(status, int) else 0,
                    {str(k): str(v) for k, v in headers.items()}
                    if isinstance(headers, dict) else {},
                    json.dumps(body).encode() if isinstance(body, dict) else b"")
    except GraphError as exc:
        return exc
    return body if isinstance(body, dict) else {}


async def list_users(graph: GraphClient, *, enabled_only: bool) -> AsyncIterator[Subject]:
    """Every user's UPN, following ``@odata.nextLink`` page by page.

    Filtering on ``accountEnabled`` needs User.Read.All (a 403 otherwise).
    """
    path, query = "/users", "$select=id,userPrincipalName&$top=999"
    if enabled_only:
        query += "&$filter=accountEnabled%20eq%20true"
    operation = "list enabled" if enabled_only else "list"
    while True:
        page = await graph.get_json(operation, Subject("/users"), path, query)
        for item in page.get("value", []):
            upn = item.get("userPrincipalName") if isinstance(item, dict) else None
            try:
                yield parse_subject(str(upn))
            except BadRequest:
                continue  # not addressable by a page either
        link = page.get("@odata.nextLink")
        if not isinstance(link, str) or not link:
            return
        # The token goes with the next request: only ever to our own Graph root.
        if not link.startswith(graph.base_url.rstrip("/") + "/"):
            raise GraphUnavailable("Graph sent a nextLink outside its own root")
        path, _, query = link[len(graph.base_url.rstrip("/")):].partition("?")
