"""Deepgram Aura text-to-speech over the ``/v1/speak`` WebSocket.

Handshake: ``GET /v1/speak?model=<model>&encoding=linear16&sample_rate=<rate>``
with ``Authorization: Token <key>``.  Client messages are JSON text frames:
``{"type": "Speak", "text"}``, ``{"type": "Flush"}`` (synthesise what was sent),
``{"type": "Clear"}`` (drop buffered text and stop audio) and
``{"type": "Close"}``.  The server sends audio as binary frames (raw PCM s16le)
and JSON ``Metadata``, ``Flushed {sequence_id}``, ``Cleared {sequence_id}`` and
``Warning {description, code}`` (for example too many flushes).  Aura gives
no word timings, so chunks carry no words.

Audio frames do not say which request they belong to, so one socket serves
one generation at a time (one socket per output rate, per call):

* a generation owns the socket from :meth:`DeepgramTts.open_stream` to its
  ``Flushed`` (its ``done`` chunk), or to ``Cleared`` after a cancel; audio that
  arrives between our ``Clear`` and ``Cleared`` is dropped;
* a new generation waits for the socket to be free; if the previous owner does
  not hand over within ``handoff_timeout_s`` (no ``Cleared``, a stalled flush)
  the socket is dropped and a fresh one opened — cancel never blocks on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import urllib.parse
from collections.abc import AsyncIterator, Callable
from typing import Final

import aiohttp
import msgspec

from server.providers.base import (
    AuthError,
    ConnectionLostError,
    ProviderError,
    ProviderProtocolError,
    ProviderTimeoutError,
    TtsChunk,
)
from server.providers.ttsmux import (
    ChunkQueue,
    SampleCarry,
    SocketLink,
    SocketTiming,
    WebSocket,
    check_rate,
    connect_ws,
    ws_base_url,
)

NAME: Final = "deepgram_tts"


class DeepgramTtsSettings(SocketTiming, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[providers.deepgram_tts]``: account, voice and protocol options."""

    api_key: str
    base_url: str = "https://api.deepgram.com"
    """The WebSocket URL uses the same host with ``wss://`` (``ws://`` for ``http://``)."""
    model: str = "aura-2-thalia-en"
    speed: float | None = None
    """Speaking rate multiplier; None: the provider's default (1.0)."""
    handoff_timeout_s: float = 2.0
    """Longest wait for the previous generation to free the socket before opening another (s)."""
    prewarm_rate_hz: int = 16000

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.prewarm_rate_hz not in (8000, 16000, 24000):
            raise ValueError("prewarm_rate_hz must be 8000, 16000 or 24000")
        if self.handoff_timeout_s <= 0:
            raise ValueError("handoff_timeout_s must be > 0")
        if self.speed is not None and not 0.5 <= self.speed <= 2.0:
            raise ValueError("speed must be in 0.5..2.0")


# ---------------------------------------------------------------- client -> server


class _ClientMessage(msgspec.Struct, tag_field="type", frozen=True):
    pass


class Speak(_ClientMessage, tag="Speak", frozen=True):
    text: str


class Flush(_ClientMessage, tag="Flush", frozen=True):
    pass


class Clear(_ClientMessage, tag="Clear", frozen=True):
    pass


class Close(_ClientMessage, tag="Close", frozen=True):
    pass


# ---------------------------------------------------------------- server -> client


class _ServerMessage(msgspec.Struct, tag_field="type", frozen=True):
    """Base of the JSON server messages; unknown fields are ignored."""


class Metadata(_ServerMessage, tag="Metadata", frozen=True):
    request_id: str = ""
    model_name: str = ""
    model_version: str = ""
    model_uuid: str = ""


class Flushed(_ServerMessage, tag="Flushed", frozen=True):
    sequence_id: int


class Cleared(_ServerMessage, tag="Cleared", frozen=True):
    sequence_id: int


class WarningMessage(_ServerMessage, tag="Warning", frozen=True):
    description: str = ""
    code: str = ""


ServerMessage = Metadata | Flushed | Cleared | WarningMessage

_encoder = msgspec.json.Encoder()
_decoder: msgspec.json.Decoder[ServerMessage] = msgspec.json.Decoder(ServerMessage)


def decode_message(frame: str) -> ServerMessage:
    """Decode one JSON text frame; ProviderProtocolError if it is not a valid message."""
    try:
        return _decoder.decode(frame)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise ProviderProtocolError(NAME, f"malformed frame: {exc}") from exc


def ws_url(settings: DeepgramTtsSettings, rate_hz: int) -> str:
    query: dict[str, str] = {
        "model": settings.model,
        "encoding": "linear16",
        "sample_rate": str(rate_hz),
    }
    if settings.speed is not None:
        query["speed"] = f"{settings.speed:g}"
    return f"{ws_base_url(settings.base_url)}/v1/speak?{urllib.parse.urlencode(query)}"


def _close_error(code: int | None, reason: str) -> ProviderError:
    text = f"socket closed (code {code}: {reason or 'no reason'})"
    if code == 1008 and "auth" in reason.lower():
        return AuthError(NAME, text)
    return ConnectionLostError(NAME, text)


# ------------------------------------------------------------------- routing


class SpeakState:
    """Who owns one Aura socket's audio (no I/O).

    At most one generation is current; after a Clear, audio and ``Flushed``
    are dropped (and counted in :attr:`dropped`) until ``Cleared``.
    ``on_free`` is called whenever the socket becomes free for the next generation.
    """

    def __init__(self, on_free: Callable[[], None] = lambda: None) -> None:
        self.dropped = 0
        self.warnings: list[str] = []
        self.request_id = ""
        self._on_free = on_free
        self._queue: ChunkQueue | None = None
        self._carry = SampleCarry()
        self._clearing = False

    @property
    def free(self) -> bool:
        return self._queue is None and not self._clearing

    def begin(self, generation: int) -> ChunkQueue:
        """Make ``generation`` the owner of the socket's audio."""
        if not self.free:
            raise RuntimeError("the socket still serves another generation")
        self._queue = ChunkQueue(NAME, generation)
        self._carry = SampleCarry()
        return self._queue

    def clearing(self, queue: ChunkQueue) -> None:
        """``queue``'s generation sent Clear: drop everything until ``Cleared``."""
        if self._queue is queue:
            self._queue = None
            self._clearing = True

    def release(self, queue: ChunkQueue) -> None:
        """``queue``'s generation ends without anything to clear (nothing was sent)."""
        if self._queue is queue:
            self._queue = None
            self._on_free()

    def fail_all(self, error: ProviderError) -> None:
        if self._queue is not None:
            self._queue.fail(error)
        self._queue = None
        self._clearing = False
        self._on_free()

    def handle(self, frame: str | bytes, received_ns: int) -> None:
        """Route one server frame; raises ProviderProtocolError on a malformed one."""
        queue = self._queue
        if isinstance(frame, bytes):
            if queue is None or not queue.open:
                self.dropped += 1
                return
            pcm = self._carry.take(frame)
            if pcm:
                queue.put(TtsChunk(queue.generation, received_ns, pcm))
            return
        message = decode_message(frame)
        if isinstance(message, Flushed):
            if queue is None:
                self.dropped += 1
                return
            self._queue = None
            queue.put(TtsChunk(queue.generation, received_ns, done=True))
            self._on_free()
        elif isinstance(message, Cleared):
            if self._clearing:
                self._clearing = False
                self._on_free()
        elif isinstance(message, WarningMessage):
            self.warnings.append(f"{message.code}: {message.description}")
            del self.warnings[:-20]
        else:
            self.request_id = message.request_id


# -------------------------------------------------------------------- client


class _Socket:
    """One Aura socket and the generation it serves."""

    def __init__(self, ws: WebSocket, settings: DeepgramTtsSettings) -> None:
        self.settings = settings
        self._free = asyncio.Event()
        self.state = SpeakState(on_free=self._free.set)
        self.link = SocketLink(
            NAME,
            ws,
            on_frame=self.state.handle,
            on_end=self.state.fail_all,
            close_error=_close_error,
        )

    async def acquire(self, generation: int) -> ChunkQueue | None:
        """Wait for the socket to be free and take it; None if it did not free up or died."""
        try:
            async with asyncio.timeout(self.settings.handoff_timeout_s):
                while not self.state.free:
                    self._free.clear()
                    await self._free.wait()
        except TimeoutError:
            return None
        if not self.link.alive:
            return None
        return self.state.begin(generation)

    async def send(self, message: _ClientMessage) -> None:
        await self.link.send_text(_encoder.encode(message))

    async def aclose(self, error: ProviderError | None = None) -> None:
        await self.link.aclose(error, last=_encoder.encode(Close()))


class DeepgramTtsStream:
    """One generation on an Aura socket it owns until ``Flushed`` or ``Cleared``."""

    def __init__(self, socket: _Socket, queue: ChunkQueue, *, rate_hz: int) -> None:
        self.generation = queue.generation
        self.rate_hz = rate_hz
        self._socket = socket
        self._queue = queue
        self._flushed = False
        self._spoke = False

    async def push_text(self, text: str) -> None:
        """Send text (ignored after cancel; an error after flush)."""
        if self._flushed:
            raise RuntimeError("push_text after flush")
        if text and self._queue.open:
            self._spoke = True
            await self._socket.send(Speak(text=text))

    async def flush(self) -> None:
        """Synthesise what was sent; the ``done`` chunk comes with ``Flushed``."""
        if self._flushed or not self._queue.open:
            return
        self._flushed = True
        await self._socket.send(Flush())
        self._queue.expect(self._socket.settings.receive_timeout_s)

    async def cancel(self) -> None:
        """Drop this generation's audio; Clear the socket if it may still produce some."""
        if not self._queue.cancel():
            return
        if not (self._spoke or self._flushed):
            self._socket.state.release(self._queue)
            return
        self._socket.state.clearing(self._queue)
        with contextlib.suppress(ProviderError):
            await self._socket.send(Clear())

    async def chunks(self) -> AsyncIterator[TtsChunk]:
        """Audio until ``done``; a stall closes the socket (it is not reused)."""
        try:
            async for chunk in self._queue.iterate():
                yield chunk
        except ProviderTimeoutError as error:
            await self._socket.aclose(error)
            raise


class DeepgramTts:
    """Deepgram Aura over ``/v1/speak``; create one per call."""

    name = NAME

    def __init__(
        self, settings: DeepgramTtsSettings, *, session: aiohttp.ClientSession | None = None
    ) -> None:
        self.settings = settings
        self._session = session
        self._owns_session = session is None
        self._sockets: dict[int, _Socket] = {}
        self._retired_dropped = 0
        self._lock = asyncio.Lock()

    @property
    def dropped_frames(self) -> int:
        """Frames of cleared generations dropped so far, over every socket."""
        current = sum(s.state.dropped for s in self._sockets.values())
        return self._retired_dropped + current

    @property
    def warnings(self) -> list[str]:
        """Recent ``Warning`` messages of the open sockets (``code: description``)."""
        return [w for s in self._sockets.values() for w in s.state.warnings]

    async def prewarm(self) -> None:
        """Open the socket for ``settings.prewarm_rate_hz`` now."""
        await self._socket(self.settings.prewarm_rate_hz)

    async def open_stream(self, *, generation: int, rate_hz: int) -> DeepgramTtsStream:
        """Take the socket for ``rate_hz`` (waiting for the previous generation); ProviderError."""
        check_rate(NAME, rate_hz)
        for _ in range(2):
            socket = await self._socket(rate_hz)
            queue = await socket.acquire(generation)
            if queue is not None:
                return DeepgramTtsStream(socket, queue, rate_hz=rate_hz)
            await self._discard(
                rate_hz, socket, ProviderTimeoutError(NAME, "socket not handed over in time")
            )
        raise ConnectionLostError(NAME, "no socket could be taken")

    async def aclose(self) -> None:
        """Send Close and close every socket; open generations fail with ConnectionLostError."""
        async with self._lock:
            sockets = list(self._sockets.items())
        for rate_hz, socket in sockets:
            await self._discard(rate_hz, socket, None)
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def _discard(self, rate_hz: int, socket: _Socket, error: ProviderError | None) -> None:
        await socket.aclose(error)
        if self._sockets.get(rate_hz) is socket:
            del self._sockets[rate_hz]
            self._retired_dropped += socket.state.dropped

    async def _socket(self, rate_hz: int) -> _Socket:
        async with self._lock:
            socket = self._sockets.get(rate_hz)
            if socket is not None and socket.link.alive:
                return socket
            if socket is not None:
                await self._discard(rate_hz, socket, None)
            if self._session is None:
                self._session = aiohttp.ClientSession()
            ws = await connect_ws(
                self._session,
                ws_url(self.settings, rate_hz),
                provider=NAME,
                headers={"Authorization": f"Token {self.settings.api_key}"},
                timeout_s=self.settings.connect_timeout_s,
                backoff=self.settings.backoff(),
            )
            socket = _Socket(ws, self.settings)
            self._sockets[rate_hz] = socket
            return socket
