"""A TCP fault proxy on loopback: the network between the service and a dependency.

Loopback delivers every answer in one piece, at once; the internet does not.
Put a ``FaultProxy`` in front of the fake Graph, the fake identity provider or
Redis and set its ``faults`` to make each new connection see what a real
network does: writes split into small segments with pauses, latency each way,
a bandwidth cap, a reset or a clean close after N bytes of the answer, or a
stall (accepted, never answered). ``cut()`` resets every open connection, as a
NAT or a load balancer dropping idle flows would.

Faults apply per connection, read when it is accepted; change them between
requests. Nothing here knows HTTP or RESP: it moves bytes, and records what
clients sent, one entry per round trip (``requests``).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from dataclasses import dataclass, replace


@dataclass(frozen=True, slots=True)
class Faults:
    segment: int = 0  # split writes to the client into pieces of this many bytes (0: as read)
    pause: float = 0.0  # seconds between those pieces
    latency: float = 0.0  # seconds added before each chunk is forwarded, each way
    bandwidth: int = 0  # bytes per second to the client (0: no cap)
    reset_after: int = -1  # bytes to the client, then a TCP reset (RST) both ways
    close_after: int = -1  # bytes to the client, then a clean close (FIN) both ways
    # (set one of reset_after and close_after; with both, the larger count and a reset)
    stall: bool = False  # accept, read and discard, never connect upstream or answer


NONE = Faults()
# A photo over the internet: 1,400-byte TCP segments a few milliseconds apart.
INTERNET = Faults(segment=1400, pause=0.002)


class FaultProxy:
    """``await FaultProxy.start(port)`` forwards ``127.0.0.1:proxy.port`` to ``port``."""

    def __init__(self, target_port: int, faults: Faults = NONE) -> None:
        self.target_port = target_port
        self.faults = faults
        self.accepted = 0  # connections accepted so far
        # What clients sent, one entry per round trip: the bytes a client sent before
        # the server next answered on that connection (pipelined commands share one).
        self.requests: list[bytes] = []
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._silenced: set[asyncio.StreamWriter] = set()

    @classmethod
    async def start(cls, target_port: int, faults: Faults = NONE) -> FaultProxy:
        proxy = cls(target_port, faults)
        proxy._server = await asyncio.start_server(proxy._accept, "127.0.0.1", 0)
        return proxy

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    def set(self, **changes: object) -> None:
        """Change some faults for the connections accepted from now on."""
        self.faults = replace(self.faults, **changes)  # type: ignore[arg-type]

    def cut(self) -> None:
        """Reset every open connection, both sides."""
        for writer in list(self._writers):
            _reset(writer)

    def silence(self) -> None:
        """Drop every byte of the connections open now, both ways, and tell nobody:
        what a NAT or a load balancer does to a flow it has forgotten."""
        self._silenced.update(self._writers)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self.cut()  # every handler sees its connections end and returns
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=5)
        for task in list(self._tasks):
            task.cancel()  # a handler stuck anyway; _accept swallows this
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.accepted += 1
        faults = self.faults
        _no_delay(writer)
        try:
            if faults.stall:
                while await reader.read(65536):
                    pass
                return
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
            except OSError:
                _reset(writer)
                return
            self._writers.add(up_writer)
            _no_delay(up_writer)
            turn = _Turn()
            to_server = asyncio.create_task(
                self._to_server(reader, up_writer, faults.latency, turn))
            try:
                outcome = await self._to_client(up_reader, writer, faults, turn)
            except OSError:
                outcome = "reset"
            to_server.cancel()
            await asyncio.gather(to_server, return_exceptions=True)
            if outcome == "silent":  # the client must not learn the server has gone
                await _drain_until_closed(reader)
            if outcome == "reset":
                _reset(writer)
                _reset(up_writer)
            _close(up_writer)
            self._writers.discard(up_writer)
            self._silenced.discard(up_writer)
        except (OSError, asyncio.CancelledError):
            # Cancelled only by close(): asyncio's server logs a handler that
            # ends cancelled as an error, so end it normally.
            pass
        finally:
            _close(writer)
            self._writers.discard(writer)
            self._silenced.discard(writer)
            self._tasks.discard(task)

    async def _to_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                         faults: Faults, turn: _Turn) -> str:
        """Copy the server's bytes to the client with the faults; how it ended:
        ``eof`` (the server closed), ``gone`` (the client did), ``reset`` or ``close``."""
        budget = _Budget(faults)
        while True:
            data = await reader.read(65536)
            if not data:
                return "silent" if writer in self._silenced else "eof"
            turn.entry = -1  # the server answered: the client's next bytes are a new request
            if faults.latency:
                await asyncio.sleep(faults.latency)
            if writer in self._silenced:
                continue
            data, end = budget.take(data)
            step = faults.segment or len(data) or 1
            for start in range(0, len(data), step):
                piece = data[start:start + step]
                if writer.is_closing():  # uvloop raises RuntimeError writing to it
                    return "gone"
                writer.write(piece)
                await writer.drain()
                if faults.bandwidth:
                    await asyncio.sleep(len(piece) / faults.bandwidth)
                if faults.pause:
                    await asyncio.sleep(faults.pause)
            if end:
                return end


    async def _to_server(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                         latency: float, turn: _Turn) -> None:
        """Copy the client's bytes to the server; a half-close is passed on."""
        try:
            while data := await reader.read(65536):
                if turn.entry < 0:
                    turn.entry = len(self.requests)
                    self.requests.append(b"")
                self.requests[turn.entry] += data
                if latency:
                    await asyncio.sleep(latency)
                if writer not in self._silenced:
                    writer.write(data)
                    await writer.drain()
            if writer not in self._silenced and writer.can_write_eof() \
                    and not writer.is_closing():
                writer.write_eof()
        except OSError:
            _reset(writer)


class _Turn:
    """Which entry of ``FaultProxy.requests`` a connection's client bytes go to (-1: a new one)."""

    def __init__(self) -> None:
        self.entry = -1


class _Budget:
    """Bytes the client may still get before a reset or a close."""

    def __init__(self, faults: Faults) -> None:
        self.left = max(faults.reset_after, faults.close_after)
        self.end = ("reset" if faults.reset_after >= 0
                    else "close" if faults.close_after >= 0 else "")

    def take(self, data: bytes) -> tuple[bytes, str]:
        if not self.end:
            return data, ""
        if len(data) < self.left:
            self.left -= len(data)
            return data, ""
        return data[: self.left], self.end


async def _drain_until_closed(reader: asyncio.StreamReader) -> None:
    """Swallow what the client still sends until it gives up (or ``cut``/``close``)."""
    with contextlib.suppress(OSError):
        while await reader.read(65536):
            pass


def _no_delay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST, not FIN: SO_LINGER 0, then abort."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        # ValueError: uvloop's stand-in for the socket of a transport already closed
        with contextlib.suppress(OSError, ValueError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def _close(writer: asyncio.StreamWriter) -> None:
    if not writer.is_closing():
        writer.close()
