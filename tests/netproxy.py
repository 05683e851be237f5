"""A small TCP proxy on loopback that can stall traffic, for network-failure tests.

    proxy = NetProxy(redis_port).start()      # listens on 127.0.0.1:<proxy.port>
    agent talks to proxy.url
    proxy.pause()                             # a stall: bytes are held, in both directions
    proxy.resume()                            # held bytes are delivered, in order, then traffic flows
    proxy.cut()                               # every connection reset (RST)
    proxy.stop()

A pause behaves like a network that stops delivering packets without closing anything: the
sender's writes succeed, nothing arrives, new connections are accepted but carry nothing.
On resume, what was sent during the stall arrives, as TCP would retransmit it, followed by the
close of any side that closed meanwhile. That is the harsh case for a lease: commands written
before the lease expired reach Redis after it expired.

Every proxied byte is counted; ``log_upstream`` keeps what clients sent (``sent_after(t)``
lets a test see which commands reached the server after a moment).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time


class NetProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1", listen_port: int = 0,
                 log_upstream: bool = True) -> None:
        self.target = (target_host, target_port)
        self.port = listen_port
        self.log_upstream = log_upstream
        self.upstream_log: list[tuple[float, bytes]] = []  # (delivery time, bytes) client -> server
        self.bytes = {"up": 0, "down": 0}
        self.connections = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="netproxy")
        self._server: asyncio.AbstractServer | None = None
        self._flowing: asyncio.Event | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task] = set()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _call(self, coro, timeout: float = 10.0):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def start(self) -> NetProxy:
        self._thread.start()

        async def listen() -> None:
            self._flowing = asyncio.Event()
            self._flowing.set()
            self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
            self.port = self._server.sockets[0].getsockname()[1]

        self._call(listen())
        return self

    def pause(self) -> None:
        """Stop delivering bytes (both directions) until ``resume``."""
        assert self._flowing is not None
        self._loop.call_soon_threadsafe(self._flowing.clear)
        time.sleep(0.05)

    def resume(self) -> None:
        assert self._flowing is not None
        self._loop.call_soon_threadsafe(self._flowing.set)

    @property
    def paused(self) -> bool:
        return self._flowing is not None and not self._flowing.is_set()

    def cut(self) -> None:
        """Reset every open connection."""

        async def reset() -> None:
            for writer in list(self._writers):
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                        b"\x01\x00\x00\x00\x00\x00\x00\x00")
                writer.close()

        self._call(reset())

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            for writer in list(self._writers):
                writer.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.sleep(0)

        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                self._call(close())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)

    def sent_after(self, moment: float) -> bytes:
        """Everything clients sent that reached the server after ``moment`` (unix time)."""
        return b"".join(data for at, data in list(self.upstream_log) if at >= moment)

    # -- inside the proxy's loop -----------------------------------------------------------

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            server_reader, server_writer = await asyncio.open_connection(*self.target)
        except OSError:
            client_writer.close()
            return
        self._writers.update((client_writer, server_writer))
        up = asyncio.create_task(self._pipe(client_reader, server_writer, "up"))
        down = asyncio.create_task(self._pipe(server_reader, client_writer, "down"))
        self._tasks.update((up, down))
        await asyncio.gather(up, down, return_exceptions=True)
        self._tasks.difference_update((up, down))
        self._writers.difference_update((client_writer, server_writer))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, direction: str) -> None:
        """Copy one direction. Reading never stops (the sender is not blocked, as on a real
        network); delivery waits while paused, keeping order."""
        assert self._flowing is not None
        held: asyncio.Queue[bytes | None] = asyncio.Queue()

        async def read() -> None:
            try:
                while data := await reader.read(65536):
                    held.put_nowait(data)
            except (ConnectionError, OSError):
                pass
            held.put_nowait(None)

        reading = asyncio.create_task(read())
        try:
            while True:
                data = await held.get()
                await self._flowing.wait()
                if data is None:
                    break
                writer.write(data)
                await writer.drain()
                self.bytes[direction] += len(data)
                if direction == "up" and self.log_upstream:
                    self.upstream_log.append((time.time(), data))
        except (ConnectionError, OSError):
            pass
        finally:
            reading.cancel()
            with contextlib.suppress(Exception):
                if writer.can_write_eof():
                    writer.write_eof()
            writer.close()
