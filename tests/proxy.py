"""A TCP proxy of our own between a client and Redis, for network faults a real network makes.

- ``lose_reply_of(marker)``: the next request that contains ``marker`` reaches Redis and runs, but
  its reply never comes back; the client's connection is cut instead. That is the fault a retry
  must survive: the command ran, and the caller cannot know.
- ``cut_all()``: every open connection is dropped at once (a proxy or load balancer restart).
- ``half_open(True)``: requests still reach Redis and run, but no reply comes back and nothing is
  closed, so clients learn of it only by their own timeouts; ``half_open(False)`` drops those
  connections (a half-open connection never recovers) and new ones work again.
- ``latency_s``: every reply is held that long before it is passed on.

Connections made while Redis is down are closed at once, as a refused connection would be.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field


@dataclass
class Proxy:
    target_port: int
    port: int = 0
    replies_lost: int = 0
    connections_cut: int = 0
    latency_s: float = 0.0
    _marker: bytes | None = None
    _server: asyncio.Server | None = None
    _pumps: set[asyncio.Task[None]] = field(default_factory=set)
    _open: set[asyncio.Task[None]] = field(default_factory=set)  # one task per connection
    _replies_flow: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self._replies_flow.set()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> Proxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def lose_reply_of(self, marker: bytes | None) -> None:
        """Arm (or, with ``None``, disarm) the loss of one reply."""
        self._marker = marker

    def cut_all(self) -> int:
        """Drop every open connection now; return how many there were."""
        tasks = list(self._open)
        for task in tasks:
            task.cancel()
        self.connections_cut += len(tasks)
        return len(tasks)

    def half_open(self, on: bool) -> None:
        if on:
            self._replies_flow.clear()
        else:
            stalled = list(self._open)
            self._replies_flow.set()
            for task in stalled:
                task.cancel()
            self.connections_cut += len(stalled)

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
        self._replies_flow.set()
        for task in list(self._pumps | self._open):
            task.cancel()
        await asyncio.gather(*self._pumps, *self._open, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):  # 3.12+ waits for every connection to go
                    await self._server.wait_closed()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_w.close()
            return
        lose = asyncio.Event()  # set when this connection's next reply is to be lost

        async def upstream() -> None:
            while data := await client_r.read(65536):
                if self._marker is not None and self._marker in data:
                    self._marker = None
                    lose.set()
                server_w.write(data)
                await server_w.drain()

        async def downstream() -> None:
            while data := await server_r.read(65536):
                if not self._replies_flow.is_set():
                    await asyncio.Future()  # half-open: hold on until half_open(False) cuts us
                if lose.is_set():
                    self.replies_lost += 1
                    return  # the reply goes nowhere; the connection is cut below
                if self.latency_s:
                    await asyncio.sleep(self.latency_s)
                client_w.write(data)
                await client_w.drain()

        pumps = [asyncio.create_task(upstream()), asyncio.create_task(downstream())]
        self._pumps.update(pumps)
        me = asyncio.current_task()
        assert me is not None
        self._open.add(me)
        try:
            # A cut (cancel) ends the connection as an ordinary return would: the stream server's
            # callback would otherwise log every cut connection as an unhandled exception.
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._open.discard(me)
            for task in pumps:
                task.cancel()
                self._pumps.discard(task)
            # Abort, not close: close() waits to flush what a peer that stopped reading never
            # takes, and a cut connection must not hold up the proxy's own shutdown.
            for writer in (client_w, server_w):
                writer.transport.abort()
