"""One provider WebSocket serving many TTS generations.

The pieces every streaming TTS client shares, with no provider's wire format in
them (each provider module keeps its own messages, URLs and close codes):

* :class:`ChunkQueue` — the chunks of one generation, from the socket's reader
  to the stream's consumer.  Once cancelled it drops everything, including
  chunks already received but not yet consumed.
* :class:`SocketLink` — one open WebSocket and the one task reading it; every
  frame is handed on with :func:`time.monotonic_ns` of its receipt.
* :func:`connect_ws` — open a WebSocket, retrying with :class:`Backoff`.
* :class:`SocketTiming` — the connect, stall and retry settings every client has.
* :class:`SampleCarry` — whole 16-bit samples out of arbitrary byte runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Mapping
from enum import Enum
from typing import Final, TypeAlias

import aiohttp
import msgspec

from server.providers.base import (
    ConnectionLostError,
    ProviderError,
    ProviderProtocolError,
    ProviderTimeoutError,
    TtsChunk,
)
from server.providers.connect import Backoff, error_for_exception

SUPPORTED_RATES_HZ: Final = (8000, 16000, 24000)
"""Output rates every TTS client here can produce (PCM s16le mono)."""

MAX_FRAME_BYTES: Final = 16 * 1024 * 1024
"""Largest WebSocket frame accepted from a provider (base64 audio in JSON is large)."""

WebSocket: TypeAlias = "aiohttp.ClientWebSocketResponse[bool]"


class SocketTiming(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Client timing (s) of a TTS WebSocket: the base of each provider's settings."""

    connect_timeout_s: float = 5.0
    receive_timeout_s: float = 5.0
    """Stall deadline: longest wait for audio after flush (s)."""
    connect_retries: int = 2
    backoff_base_s: float = 0.1
    backoff_max_s: float = 2.0

    def __post_init__(self) -> None:
        for name in ("connect_timeout_s", "receive_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")
        if self.connect_retries < 0:
            raise ValueError("connect_retries must be >= 0")
        if not 0 < self.backoff_base_s <= self.backoff_max_s:
            raise ValueError("backoff needs 0 < backoff_base_s <= backoff_max_s")

    def backoff(self) -> Backoff | None:
        """A fresh retry schedule for one connection attempt (None: do not retry)."""
        if self.connect_retries == 0:
            return None
        return Backoff(self.backoff_base_s, self.backoff_max_s, self.connect_retries)


def check_rate(provider: str, rate_hz: int) -> None:
    """Raise ``ValueError`` unless ``rate_hz`` is one of :data:`SUPPORTED_RATES_HZ`."""
    if rate_hz not in SUPPORTED_RATES_HZ:
        raise ValueError(f"{provider}: rate_hz must be one of {SUPPORTED_RATES_HZ}, got {rate_hz}")


def ws_base_url(base_url: str) -> str:
    """``base_url`` with ``https``/``http`` as ``wss``/``ws``, without a trailing slash."""
    for http, ws in (("https://", "wss://"), ("http://", "ws://")):
        if base_url.startswith(http):
            base_url = ws + base_url[len(http) :]
    return base_url.rstrip("/")


def pcm_ms(n_bytes: int, rate_hz: int) -> float:
    """Duration (ms) of ``n_bytes`` of 16-bit mono PCM at ``rate_hz``."""
    return n_bytes / 2 * 1000 / rate_hz


# ---------------------------------------------------------------------- queue


class _State(Enum):
    OPEN = "open"
    DONE = "done"
    CANCELLED = "cancelled"
    FAILED = "failed"


_Item: TypeAlias = "TtsChunk | ProviderError | None"


class ChunkQueue:
    """Chunks of one generation in arrival order.

    The socket side calls :meth:`put` and :meth:`fail`; the stream calls
    :meth:`cancel` and iterates :meth:`iterate`.  After :meth:`expect` the
    iterator raises :class:`ProviderTimeoutError` when nothing arrives for
    ``receive_timeout_s`` (the client's stall deadline).
    """

    def __init__(self, provider: str, generation: int) -> None:
        self.provider = provider
        self.generation = generation
        self._items: asyncio.Queue[_Item] = asyncio.Queue()
        self._state = _State.OPEN
        self._timeout_s: float | None = None

    @property
    def open(self) -> bool:
        """True until the ``done`` chunk, a failure or a cancel."""
        return self._state is _State.OPEN

    @property
    def cancelled(self) -> bool:
        return self._state is _State.CANCELLED

    def expect(self, receive_timeout_s: float) -> None:
        """Audio is due now (text was flushed): apply the stall deadline from here on."""
        self._timeout_s = receive_timeout_s

    def put(self, chunk: TtsChunk) -> bool:
        """Queue ``chunk``; False (and dropped) unless the generation is still open."""
        if self._state is not _State.OPEN:
            return False
        self._items.put_nowait(chunk)
        if chunk.done:
            self._state = _State.DONE
        return True

    def fail(self, error: ProviderError) -> None:
        """End the generation with ``error`` (raised by the iterator after queued chunks)."""
        if self._state is _State.OPEN:
            self._state = _State.FAILED
            self._items.put_nowait(error)

    def cancel(self) -> bool:
        """Drop queued chunks and end the iterator; True the first time, False if already ended."""
        if self._state is _State.CANCELLED:
            return False
        first = self._state is _State.OPEN
        self._state = _State.CANCELLED
        while not self._items.empty():
            self._items.get_nowait()
        self._items.put_nowait(None)
        return first

    async def iterate(self) -> AsyncIterator[TtsChunk]:
        """Chunks until the ``done`` one or a cancel; raises the failure, if any."""
        while True:
            try:
                async with asyncio.timeout(self._timeout_s):
                    item = await self._items.get()
            except TimeoutError:
                if self._state is _State.CANCELLED:
                    return
                self._state = _State.FAILED
                raise ProviderTimeoutError(
                    self.provider, f"no audio for {self._timeout_s} s (generation stalled)"
                ) from None
            if item is None:
                return
            if isinstance(item, ProviderError):
                raise item
            yield item
            if item.done:
                return


# ----------------------------------------------------------------------- audio


class SampleCarry:
    """Cuts byte runs into whole 16-bit samples, holding back an odd trailing byte."""

    def __init__(self) -> None:
        self._odd = b""
        self.n_bytes = 0
        """Bytes passed through so far (whole samples only)."""

    def take(self, data: bytes) -> bytes:
        if self._odd:
            data = self._odd + data
        cut = len(data) & ~1
        self._odd = data[cut:]
        out = data[:cut]
        self.n_bytes += len(out)
        return out


# ---------------------------------------------------------------------- socket

OnFrame: TypeAlias = Callable[["str | bytes", int], None]
"""Called with each text or binary frame and its receipt time (monotonic ns);
raises ProviderError (usually ProviderProtocolError) to end the socket."""

OnEnd: TypeAlias = Callable[[ProviderError], None]
"""Called once when the socket ends, with why (a closed socket is ConnectionLostError)."""

CloseError: TypeAlias = Callable[["int | None", str], ProviderError]
"""Maps the provider's close code and reason to the error active generations get."""


async def connect_ws(
    session: aiohttp.ClientSession,
    url: str,
    *,
    provider: str,
    headers: Mapping[str, str],
    timeout_s: float,
    backoff: Backoff | None,
) -> WebSocket:
    """Open a WebSocket; retry refusals ``backoff`` allows (none if None); raise the typed error."""
    while True:
        try:
            async with asyncio.timeout(timeout_s):
                ws = await session.ws_connect(
                    url,
                    headers=headers,
                    autoping=True,
                    max_msg_size=MAX_FRAME_BYTES,
                    timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=timeout_s),
                )
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            error = error_for_exception(provider, exc)
            delay_s = backoff.next_delay_s(error) if backoff is not None else None
            if delay_s is None:
                raise error from exc
            await asyncio.sleep(delay_s)
            continue
        return ws


class SocketLink:
    """One open WebSocket: sends text frames, and one task reads it until it ends.

    ``on_end`` runs exactly once, from the reader task or from :meth:`aclose`.
    A frame handler that raises ends the socket with that error.
    """

    def __init__(
        self,
        provider: str,
        ws: WebSocket,
        *,
        on_frame: OnFrame,
        on_end: OnEnd,
        close_error: CloseError,
    ) -> None:
        self.provider = provider
        self._ws = ws
        self._on_frame = on_frame
        self._on_end = on_end
        self._close_error = close_error
        self._ended = False
        self.opened_s = time.monotonic()
        self.last_sent_s = self.opened_s
        self._task = asyncio.get_running_loop().create_task(self._read())

    @property
    def alive(self) -> bool:
        return not self._ended and not self._ws.closed

    async def send_text(self, payload: bytes) -> None:
        """Send one text frame (UTF-8 JSON); ConnectionLostError if the socket is gone."""
        if not self.alive:
            raise ConnectionLostError(self.provider, "socket closed")
        try:
            await self._ws.send_str(payload.decode())
        except (ConnectionError, aiohttp.ClientError, RuntimeError) as exc:
            error = ConnectionLostError(self.provider, f"send failed: {exc!r}")
            self._end(error)
            raise error from exc
        self.last_sent_s = time.monotonic()

    async def aclose(
        self, error: ProviderError | None = None, *, last: bytes | None = None
    ) -> None:
        """Send ``last`` if given, stop the reader and close; active generations get ``error``."""
        if last is not None and self.alive:
            with contextlib.suppress(ProviderError):
                await self.send_text(last)
        self._end(error or ConnectionLostError(self.provider, "closed by the client"))
        if not self._task.done():
            self._task.cancel()
            await asyncio.wait([self._task])
        with contextlib.suppress(Exception):
            await self._ws.close()

    def _end(self, error: ProviderError) -> None:
        if not self._ended:
            self._ended = True
            self._on_end(error)

    async def _read(self) -> None:
        ws = self._ws
        try:
            while True:
                message = await ws.receive()
                received_ns = time.monotonic_ns()
                kind = message.type
                if kind is aiohttp.WSMsgType.TEXT or kind is aiohttp.WSMsgType.BINARY:
                    self._on_frame(message.data, received_ns)
                elif kind is aiohttp.WSMsgType.ERROR:
                    self._end(error_for_exception(self.provider, message.data))
                    break
                elif kind in (
                    aiohttp.WSMsgType.CLOSE,
                    aiohttp.WSMsgType.CLOSING,
                    aiohttp.WSMsgType.CLOSED,
                ):
                    reason = message.extra if isinstance(message.extra, str) else ""
                    self._end(self._close_error(ws.close_code, reason))
                    break
        except ProviderError as error:
            self._end(error)
        except Exception as exc:  # a bug in a frame handler must not leave generations hanging
            self._end(ProviderProtocolError(self.provider, f"frame handling failed: {exc!r}"))
        with contextlib.suppress(Exception):
            await ws.close()
