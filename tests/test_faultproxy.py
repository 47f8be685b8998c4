"""The fault proxy itself: a client that goes away mid-answer is no error of the proxy."""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import Any

import uvloop
from faultproxy import FaultProxy, Faults

ANSWER = b"x" * 1000


def test_a_client_gone_mid_answer_ends_its_connection_quietly() -> None:
    # The answer goes out 10 bytes at a time; the client reads the first piece and
    # resets. uvloop raises RuntimeError ("the handler is closed") writing to the
    # closed transport: before, it escaped the handler and the loop logged
    # "Unhandled exception in client_connected_cb".
    errors: list[dict[str, Any]] = []

    async def scenario() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _, context: errors.append(context))

        async def answer(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(ANSWER)
            await writer.drain()
            writer.close()

        upstream = await asyncio.start_server(answer, "127.0.0.1", 0)
        try:
            proxy = await FaultProxy.start(upstream.sockets[0].getsockname()[1],
                                           Faults(segment=10, pause=0.005))
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            assert await reader.readexactly(10) == ANSWER[:10]
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()  # a reset, the rest of the answer unread
            await proxy.close()
        finally:
            upstream.close()
            await upstream.wait_closed()

    uvloop.run(scenario())
    assert errors == []
