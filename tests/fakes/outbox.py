"""The writing side shared by the fake streaming services (Deepgram STT, AssemblyAI).

A session queues its server messages here as it decides them; one task writes
them in order at the :class:`Profile`'s pace (time to first byte, then the
chunk interval), with an explicit delay where the fake models processing time,
and injects the session's mid-stream fault after ``profile.after_chunks``
messages: a stall, a dropped connection, or one ``malformed`` frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tests.fakes.profile import Fault, Profile


@dataclass(frozen=True)
class _Close:
    code: int
    reason: str


@dataclass(frozen=True)
class _Delay:
    ms: float


class PacedOutbox:
    """Server messages of one fake socket; ``record`` is told each frame as it is sent."""

    def __init__(
        self,
        request: web.Request,
        ws: web.WebSocketResponse,
        *,
        profile: Profile,
        fault: Fault,
        malformed: str,
        record: Callable[[str], None],
    ) -> None:
        self._request = request
        self._ws = ws
        self._profile = profile
        self._fault = fault
        self._malformed = malformed
        self._record = record
        self._queue: asyncio.Queue[str | _Close | _Delay] = asyncio.Queue()
        self.closing = False
        """A close was queued: the session stops handling client frames."""
        self._ended = asyncio.Event()

    def send(self, message: dict[str, Any]) -> None:
        self._queue.put_nowait(json.dumps(message))

    def delay(self, ms: float) -> None:
        """Hold the messages queued after this for ``ms``."""
        self._queue.put_nowait(_Delay(ms))

    def close(self, code: int, reason: str) -> None:
        """Close the socket after what is queued."""
        self.closing = True
        self._queue.put_nowait(_Close(code, reason))

    async def run(self, read: Callable[[], Awaitable[None]]) -> None:
        """Write while ``read`` handles the client's frames; then finish writing a close."""
        writer = asyncio.create_task(self._write())
        try:
            await read()
        finally:
            self._ended.set()
            if not self.closing:
                writer.cancel()
            await asyncio.wait({writer})

    async def _write(self) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):  # the client went away
            await self._write_paced()

    async def _write_paced(self) -> None:
        profile = self._profile
        sent = 0
        while True:
            item = await self._queue.get()
            if isinstance(item, _Close):
                await self._ws.close(code=item.code, message=item.reason.encode())
                return
            if isinstance(item, _Delay):
                await asyncio.sleep(item.ms / 1000)
                continue
            if sent == 0:
                await profile.first_byte()
            else:
                await profile.between_chunks()
            if sent == profile.after_chunks:
                if self._fault is Fault.STALL:
                    await self._ended.wait()
                    return
                if self._fault is Fault.DISCONNECT:
                    transport = self._request.transport
                    if transport is not None:
                        transport.abort()
                    return
                if self._fault is Fault.MALFORMED:
                    await self._ws.send_str(self._malformed)
            await self._ws.send_str(item)
            self._record(item)
            sent += 1
