"""An asyncio TCP fault proxy (delay, reset, blackhole) between workers and PostgreSQL or the API.

    with FaultProxy("127.0.0.1", 5432) as proxy:
        url = proxy.rewrite(postgres_url)      # the same database, through the proxy
        ... start a worker on `url` ...
        proxy.blackhole()                      # a partition: bytes stop flowing, nothing is closed
        proxy.heal()                           # bytes flow again (held data is delivered, like TCP)
        proxy.delay(0.2)                       # every chunk waits 0.2 s each way
        proxy.reset()                          # abort every open connection (RST), accept new ones

It runs its own event loop on a daemon thread, so it works the same from sync and async tests and
never competes with the test's loop. Debian ships no toxiproxy; this is the part of it we need.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from typing import Any

from sqlalchemy import make_url


class FaultProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.connections = 0
        self._delay = 0.0
        self._flowing: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        self._thread = threading.Thread(target=self._serve, name="fault-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the fault proxy did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None:
            self._call(self._close_all)
            self._call(self._cancel_handlers)
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def rewrite(self, url: str) -> str:
        """`url` with its host and port replaced by the proxy's."""
        parsed = make_url(url).set(host="127.0.0.1", port=self.port)
        return parsed.render_as_string(hide_password=False)

    # --- faults ----------------------------------------------------------------------------------

    def blackhole(self) -> None:
        """Stop forwarding in both directions; connections stay open and silent (a partition)."""
        self._call(lambda: self._event().clear())

    def heal(self) -> None:
        """Forward again, and no more delay."""
        self._delay = 0.0
        self._call(lambda: self._event().set())

    def delay(self, seconds: float) -> None:
        self._delay = seconds

    def reset(self) -> None:
        """Abort every open connection with a TCP RST."""
        self._call(self._close_all)

    # --- internals -------------------------------------------------------------------------------

    def _event(self) -> asyncio.Event:
        assert self._flowing is not None
        return self._flowing

    def _call(self, fn: Any) -> None:
        assert self._loop is not None
        done = threading.Event()

        def run() -> None:
            try:
                fn()
            finally:
                done.set()

        self._loop.call_soon_threadsafe(run)
        done.wait(5)

    def _close_all(self) -> None:
        for writer in list(self._writers):
            sock = writer.get_extra_info("socket")
            if sock is not None:
                # SO_LINGER 0: close() sends RST, not FIN.
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                except OSError:
                    pass
            writer.transport.abort()
        self._writers.clear()

    def _cancel_handlers(self) -> None:
        for task in asyncio.all_tasks(self._loop):
            task.cancel()

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server = loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = int(self._server.sockets[0].getsockname()[1])
        self._ready.set()
        try:
            loop.run_forever()
            # Let the cancelled handlers finish, so nothing is destroyed while pending.
            pending = asyncio.all_tasks(loop)
            if pending:
                loop.run_until_complete(asyncio.wait(pending, timeout=2))
        finally:
            self._server.close()
            loop.close()

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        await self._event().wait()
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            client_writer.transport.abort()
            return
        self._writers.update((client_writer, upstream_writer))
        await asyncio.gather(
            self._pump(client_reader, upstream_writer),
            self._pump(upstream_reader, client_writer),
            return_exceptions=True,
        )
        for writer in (client_writer, upstream_writer):
            self._writers.discard(writer)
            writer.transport.abort()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                await self._event().wait()
                if self._delay:
                    await asyncio.sleep(self._delay)
                await self._event().wait()
                writer.write(data)
                await writer.drain()
        except OSError:
            pass  # either side went away (or was reset by us): end this direction
        finally:
            writer.transport.abort()
