"""The framework floor: a bare aiohttp handler returning the same bytes.

Usage: bare.py PORT BODY_FILE WORKERS [REDIS_URL]. Same loop and process model
as the service, so the difference is the cost of avatarproxy's own code. With
REDIS_URL, each request reads the bytes from that Redis with one redis-py GET
(stored there at start-up): the floor of any handler answering from Redis.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web
from redis.asyncio import Redis

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is optional
    uvloop = None

KEY = "bench:bare"
CLIENT = web.AppKey("client", Redis)


def main() -> None:
    port, body_file, workers = int(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    redis_url = sys.argv[4] if len(sys.argv) > 4 else None
    body = body_file.read_bytes()
    headers = {"Content-Type": "image/jpeg", "ETag": '"bare"',
               "Cache-Control": "public, max-age=3600"}

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body, headers=headers)

    async def from_redis(request: web.Request) -> web.Response:
        return web.Response(body=await request.app[CLIENT].get(KEY), headers=headers)

    async def connect(app: web.Application) -> AsyncIterator[None]:
        assert redis_url is not None
        app[CLIENT] = Redis.from_url(redis_url)
        await app[CLIENT].set(KEY, body)
        yield
        await app[CLIENT].aclose()

    app = web.Application()
    app.router.add_get("/avatar/{subject}/{size}", handler if redis_url is None else from_redis)
    if redis_url is not None:
        app.cleanup_ctx.append(connect)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    for _ in range(workers - 1):
        if os.fork() == 0:
            break
    if uvloop is not None:
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    web.run_app(app, sock=sock, access_log=None, print=None)


if __name__ == "__main__":
    main()
