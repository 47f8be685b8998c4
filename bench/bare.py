"""The framework floor: a bare aiohttp handler returning the same bytes.

Usage: bare.py PORT BODY_FILE WORKERS. Same loop and process model as the
service, so the difference is the cost of avatarproxy's own code.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from pathlib import Path

from aiohttp import web

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is optional
    uvloop = None


def main() -> None:
    port, body_file, workers = int(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    body = body_file.read_bytes()
    headers = {"Content-Type": "image/jpeg", "ETag": '"bare"',
               "Cache-Control": "public, max-age=3600"}

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body, headers=headers)

    app = web.Application()
    app.router.add_get("/avatar/{subject}/{size}", handler)
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
