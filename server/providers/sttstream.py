"""What every streaming STT client does with its one WebSocket, whatever the protocol.

:class:`SocketSttStream` is the base of the Deepgram and AssemblyAI streams,
and :class:`StreamTiming` the base of their settings.  Nothing here is a
provider's wire format: each provider module keeps its messages, URL, close
codes and event mapping, and gives the base only frame sizes, the text frames
for keep-alive and end-of-stream, and a few hooks.  The base does the rest:

* the send buffer: :meth:`SocketSttStream.push_audio` never blocks; audio goes
  out in binary frames of ``chunk_ms`` from a sender task, and is dropped (and
  counted in ``dropped_ms``) beyond ``max_unsent_ms`` or while reconnecting;
* control text frames queued after the audio so far, a short last audio piece
  padded with silence to ``min_chunk_ms`` first where the protocol needs it;
* the receive loop: every message stamped with :func:`time.monotonic_ns`, the
  stall deadline (no message for ``receive_timeout_ms`` while that much audio
  went out: :class:`ProviderTimeoutError`), close frames to typed errors;
* reconnects with :class:`Backoff` after a drop or a stall, onto a new session
  whose times start at the audio pushed so far;
* flush answers (:class:`FlushAnswers`): every flush ends in exactly one
  END_OF_TURN, from the provider's answer or, when the provider owes none or
  misses ``flush_timeout_ms``, made here;
* :meth:`~SocketSttStream.events`, :meth:`~SocketSttStream.close` and
  :meth:`~SocketSttStream.abort`, leaving no task behind.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import AsyncIterator
from typing import Annotated, ClassVar, Final, TypeAlias

import aiohttp
import msgspec

from server.providers.base import (
    STT_RATE_HZ,
    ConnectionLostError,
    ProviderError,
    ProviderProtocolError,
    ProviderTimeoutError,
    SttEvent,
)
from server.providers.connect import Backoff, error_for_exception
from server.providers.timeline import Timeline

FRAME_BYTES: Final = STT_RATE_HZ * 2 * 20 // 1000
"""One 20 ms frame of 16 kHz int16 PCM (640 bytes)."""
BYTES_PER_MS: Final = STT_RATE_HZ * 2 // 1000
CLOSE_NORMAL: Final = 1000

WebSocket: TypeAlias = aiohttp.ClientWebSocketResponse

_log = logging.getLogger(__name__)


NonNegativeInt: TypeAlias = Annotated[int, msgspec.Meta(ge=0)]
PositiveMs: TypeAlias = Annotated[int, msgspec.Meta(gt=0)]


class StreamTiming(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Client timing (ms) of a streaming STT socket: the base of each provider's settings."""

    max_unsent_ms: PositiveMs = 5000
    """Audio waiting to be sent beyond this is dropped (and counted)."""
    connect_timeout_ms: PositiveMs = 5000
    """Deadline for opening a session (the handshake, and a first message if the
    protocol has one)."""
    receive_timeout_ms: PositiveMs = 5000
    """Stall deadline: no message for this long while this much audio went out (and
    the provider owes one)."""
    close_timeout_ms: PositiveMs = 3000
    """How long ``close()`` waits for the last events and the server's close."""
    flush_timeout_ms: PositiveMs = 1500
    """How long the provider may leave a flush unanswered before the stream ends the
    turn itself."""
    reconnect_attempts: NonNegativeInt = 5
    """Reconnects tried after drops (0: none), counted until a connection stays up
    for ``reconnect_reset_ms``."""
    reconnect_base_ms: PositiveMs = 100
    reconnect_max_ms: PositiveMs = 5000
    reconnect_reset_ms: PositiveMs = 30000

    def __post_init__(self) -> None:
        if self.reconnect_max_ms < self.reconnect_base_ms:
            raise ValueError("reconnect_max_ms must be >= reconnect_base_ms")

    def backoff(self) -> Backoff | None:
        """A fresh reconnect schedule, or ``None`` when reconnects are off."""
        if not self.reconnect_attempts:
            return None
        return Backoff(
            self.reconnect_base_ms / 1000, self.reconnect_max_ms / 1000, self.reconnect_attempts
        )


class HttpSession:
    """A provider's aiohttp session: the one it was given, or one made on first use
    (and closed by :meth:`aclose`)."""

    def __init__(self, session: aiohttp.ClientSession | None) -> None:
        self._session = session
        self._owned = session is None

    def get(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    async def aclose(self) -> None:
        if self._owned and self._session is not None:
            await self._session.close()
            self._session = None


# ------------------------------------------------------------------ flush answers


class PendingFlush(msgspec.Struct, gc=False):
    """One flush waiting for its END_OF_TURN."""

    audio_end_ms: float
    """Stream time (ms) of all audio pushed before the flush."""
    deadline_ns: int
    owed: bool | None
    """The provider will answer (True), will not (False), or it is not known yet
    (None: its control frame has not gone out)."""


class FlushAnswers:
    """Flushes in order, each to be answered by exactly one END_OF_TURN.

    The stream pops an entry when the provider answers the oldest one
    (:meth:`answered`); entries the provider does not owe, and owed ones past
    their deadline, come out of :meth:`due` as soon as they are the oldest.
    """

    def __init__(self, timeout_ms: int) -> None:
        self._timeout_ns = timeout_ms * 1_000_000
        self._pending: collections.deque[PendingFlush] = collections.deque()
        self._answered_early = 0  # flushes answered before their frame went out

    def __len__(self) -> int:
        return len(self._pending)

    @property
    def owed(self) -> bool:
        """Some flush waits for an answer the provider owes."""
        return any(p.owed for p in self._pending)

    def add(self, audio_end_ms: float, now_ns: int, *, owed: bool | None) -> None:
        self._pending.append(PendingFlush(audio_end_ms, now_ns + self._timeout_ns, owed))

    def decide(self, owed: bool) -> None:
        """A flush frame went out: whether the provider owes its flush an answer.

        Frames go out in the order of :meth:`add`; the frame of a flush already
        answered (the provider ended the turn by itself first) decides nothing.
        """
        if self._answered_early:
            self._answered_early -= 1
            return
        for pending in self._pending:
            if pending.owed is None:
                pending.owed = owed
                return

    def answered(self) -> PendingFlush | None:
        """The provider answered: the oldest flush, or ``None`` if none waits."""
        return self._pop() if self._pending else None

    def due(self, now_ns: int) -> list[PendingFlush]:
        """Oldest flushes to answer here: not owed, or owed but past the deadline."""
        out: list[PendingFlush] = []
        while self._pending and (
            self._pending[0].owed is False or self._pending[0].deadline_ns <= now_ns
        ):
            out.append(self._pop())
        return out

    def drain(self) -> list[PendingFlush]:
        """All waiting flushes (the session that owed them is gone, and the frames
        still queued for it with it)."""
        out = list(self._pending)
        self._pending.clear()
        self._answered_early = 0
        return out

    def next_deadline_ns(self) -> int | None:
        return self._pending[0].deadline_ns if self._pending else None

    def _pop(self) -> PendingFlush:
        pending = self._pending.popleft()
        if pending.owed is None:  # its frame, when it goes out, decides nothing
            self._answered_early += 1
        return pending


# ------------------------------------------------------------------------- stream


class _End:
    """Marks the end of the event queue."""


_END: Final = _End()


class SocketSttStream:
    """A reconnecting STT WebSocket stream; provider modules subclass it.

    Subclasses set the class attributes below, implement :meth:`_reopen`,
    :meth:`_timeline`, :meth:`_new_session`, :meth:`_on_text`,
    :meth:`_close_error` and :meth:`_end_turn`, and may override
    :meth:`_stall_possible` and :meth:`_sent_text`.  Audio goes out in binary
    frames of ``chunk_ms`` (at most, or exactly with ``hold_partial``); the
    stream sends ``keepalive_message`` after ``keepalive_interval_ms`` with
    nothing to send (``None``: never).
    """

    provider: ClassVar[str]
    end_message: ClassVar[str]
    """Text frame asking the server to finish; it then closes with 1000."""
    keepalive_message: ClassVar[str]
    hold_partial: ClassVar[bool] = False
    """Keep a piece shorter than ``chunk_ms`` until more audio or a control frame comes."""
    min_chunk_ms: ClassVar[int] = 0
    """Pad a held piece with silence to this before a control frame (0: never)."""

    def __init__(
        self,
        timing: StreamTiming,
        ws: WebSocket,
        backoff: Backoff | None,
        *,
        chunk_ms: int,
        keepalive_interval_ms: int | None,
    ) -> None:
        self._timing = timing
        self._keepalive_s = None if keepalive_interval_ms is None else keepalive_interval_ms / 1000
        self._ws = ws
        self._backoff = backoff
        self._events: asyncio.Queue[SttEvent | ProviderError | _End] = asyncio.Queue()
        self._outbox: collections.deque[bytes | str] = collections.deque()
        self._wake = asyncio.Event()
        self._flushes = FlushAnswers(timing.flush_timeout_ms)
        self._flush_timer: asyncio.TimerHandle | None = None
        self._connected = True
        self._closing = False
        self._failure: ProviderError | None = None
        self._chunk_bytes = chunk_ms * BYTES_PER_MS
        self._max_unsent_bytes = timing.max_unsent_ms * BYTES_PER_MS
        self._pushed_bytes = 0
        self._conn_bytes = 0
        self._unsent_bytes = 0
        self._dropped_bytes = 0
        self._held_bytes = 0
        self._sent_since_receipt_bytes = 0
        self._last_receipt_ns = time.monotonic_ns()
        self._connected_ns = self._last_receipt_ns
        self._reconnects = 0
        self._runner = asyncio.create_task(self._run(), name=f"{self.provider}-stt")

    # ------------------------------------------------------------------ public

    @property
    def dropped_ms(self) -> int:
        """Audio (ms) pushed but never sent: buffer overflow and reconnect gaps."""
        return self._dropped_bytes // BYTES_PER_MS

    @property
    def reconnects(self) -> int:
        return self._reconnects

    def push_audio(self, pcm: bytes) -> None:
        """Queue 16 kHz mono int16 PCM (whole 20 ms frames); never blocks.

        Audio is dropped (and counted) while the socket is down or when more
        than ``max_unsent_ms`` would be waiting; ignored after :meth:`close`.
        """
        if len(pcm) % FRAME_BYTES:
            raise ValueError(f"push_audio takes whole 20 ms frames ({FRAME_BYTES} bytes each)")
        if not pcm or self._closing:
            return
        self._pushed_bytes += len(pcm)
        if not self._connected or self._unsent_bytes + len(pcm) > self._max_unsent_bytes:
            if self._connected:
                if not self._dropped_bytes:
                    _log.warning("%s: send buffer full, dropping audio", self.provider)
                self._timeline().skip(self._conn_bytes / BYTES_PER_MS, len(pcm) / BYTES_PER_MS)
            self._dropped_bytes += len(pcm)
            return
        self._queue_audio(bytes(pcm))

    async def close(self) -> None:
        """Send the end message after the queued audio, wait (``close_timeout_ms``) for
        the last events and the server's close, then release everything.  Idempotent."""
        if not self._closing:
            self._queue_text(self.end_message)
            self._closing = True
        try:
            timeout_s = self._timing.close_timeout_ms / 1000
            done, _ = await asyncio.wait({self._runner}, timeout=timeout_s)
        except asyncio.CancelledError:
            await self.abort()
            raise
        if not done:
            message = f"no close {self._timing.close_timeout_ms} ms after {self.end_message}"
            await self._stop(ProviderTimeoutError(self.provider, message))

    async def abort(self) -> None:
        """Drop the socket at once without waiting for the last events.  Idempotent."""
        self._closing = True
        await self._stop(None)

    async def events(self) -> AsyncIterator[SttEvent]:
        """Events in arrival order; ends after :meth:`close`, raises :class:`ProviderError`."""
        while True:
            item = await self._events.get()
            if isinstance(item, SttEvent):
                yield item
                continue
            self._events.put_nowait(item)  # later readers see the same ending
            if isinstance(item, ProviderError):
                raise item
            return

    # ------------------------------------------------------- for the subclasses

    def _queue_control(self, message: str) -> bool:
        """Queue a text frame after the audio so far; False if the socket is down or
        closing.  Raises the stream's failure."""
        if self._failure is not None:
            raise self._failure
        if self._closing or not self._connected:
            return False
        self._queue_text(message)
        return True

    def _queue_flush(self, message: str, *, owed: bool | None) -> None:
        """Queue the flush frame ``message`` and expect one END_OF_TURN for it.

        ``owed`` says whether the provider answers it (None: decide with
        :meth:`FlushAnswers.decide` once it is sent).  While the socket is
        down the answer is made here at once.  Raises the stream's failure.
        """
        if self._failure is not None:
            raise self._failure
        if self._closing:
            return
        now_ns = time.monotonic_ns()
        audio_end_ms = self._pushed_bytes / BYTES_PER_MS
        if self._connected:
            self._queue_text(message)
            self._flushes.add(audio_end_ms, now_ns, owed=owed)
        else:
            self._flushes.add(audio_end_ms, now_ns, owed=False)
        self._emit(self._flush_ends(now_ns, self._flushes.due(now_ns)))
        if self._flush_timer is None:
            self._arm_flush_timer()

    def _answer_flush(self, received_ns: int, answer: SttEvent | None) -> list[SttEvent]:
        """The provider answered the oldest flush: its END_OF_TURN (``answer``, or one
        made by :meth:`_end_turn` when None), then any answers due behind it."""
        pending = self._flushes.answered()
        if pending is None:
            return [] if answer is None else [answer]
        if answer is None:
            event = self._end_turn(received_ns, pending.audio_end_ms, owed=True)
        else:
            end_ms = max(answer.audio_end_ms or 0.0, pending.audio_end_ms)
            event = msgspec.structs.replace(answer, audio_end_ms=end_ms)
        return [event, *self._flush_ends(received_ns, self._flushes.due(received_ns))]

    def _emit(self, events: list[SttEvent]) -> None:
        for event in events:
            self._events.put_nowait(event)

    # ------------------------------------------------------------------- hooks

    async def _reopen(self) -> WebSocket:
        """Open a new session (one attempt); raises the typed ProviderError."""
        raise NotImplementedError

    def _timeline(self) -> Timeline:
        """The current session's provider-to-stream time map."""
        raise NotImplementedError

    def _new_session(self, origin_ms: float) -> None:
        """A reconnect succeeded: the provider's times now start at ``origin_ms``."""
        raise NotImplementedError

    def _on_text(self, data: str, received_ns: int) -> list[SttEvent]:
        """Decode and map one text frame; raises ProviderError to end the session."""
        raise NotImplementedError

    def _close_error(self, code: int | None, reason: str) -> ProviderError:
        """The typed error for a close frame the client did not ask for."""
        raise NotImplementedError

    def _end_turn(self, received_ns: int, audio_end_ms: float, *, owed: bool) -> SttEvent:
        """The END_OF_TURN answering a flush the provider did not answer (``owed``:
        it should have; else it had nothing to answer)."""
        raise NotImplementedError

    def _stall_possible(self) -> bool:
        """Whether silence from the provider now means a stall."""
        return True

    def _sent_text(self, message: str) -> None:
        """Called after each text frame went out."""

    # ---------------------------------------------------------------- internals

    def _arm_flush_timer(self) -> None:
        """Wake at the oldest flush's deadline.  Deadlines grow in queue order, so a
        timer set for the oldest is never late for whichever flush is oldest then."""
        deadline_ns = self._flushes.next_deadline_ns()
        if deadline_ns is None:
            return
        delay_s = max(0.0, (deadline_ns - time.monotonic_ns()) / 1e9)
        loop = asyncio.get_running_loop()
        self._flush_timer = loop.call_later(delay_s, self._flush_deadline)

    def _flush_deadline(self) -> None:
        self._flush_timer = None
        if self._runner.done():
            return
        now_ns = time.monotonic_ns()
        self._emit(self._flush_ends(now_ns, self._flushes.due(now_ns)))
        self._arm_flush_timer()

    def _flush_ends(self, received_ns: int, flushes: list[PendingFlush]) -> list[SttEvent]:
        return [
            self._end_turn(received_ns, p.audio_end_ms, owed=p.owed is not False) for p in flushes
        ]

    def _queue_audio(self, pcm: bytes) -> None:
        self._conn_bytes += len(pcm)
        self._unsent_bytes += len(pcm)
        if self.hold_partial:
            self._held_bytes = (self._held_bytes + len(pcm)) % self._chunk_bytes
        self._outbox.append(pcm)
        self._wake.set()

    def _queue_text(self, message: str) -> None:
        short = self._held_bytes
        min_bytes = self.min_chunk_ms * BYTES_PER_MS
        if 0 < short < min_bytes:
            pad = min_bytes - short
            self._queue_audio(bytes(pad))
            self._timeline().skip(self._conn_bytes / BYTES_PER_MS, -pad / BYTES_PER_MS)
        self._held_bytes = 0
        self._outbox.append(message)
        self._wake.set()

    async def _stop(self, error: ProviderError | None) -> None:
        if not self._runner.done():
            self._runner.cancel()
            await asyncio.wait({self._runner})
            self._finish(error)

    def _finish(self, error: ProviderError | None) -> None:
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        if self._failure is None and error is not None:
            self._failure = error
        self._events.put_nowait(error if error is not None else _END)

    async def _run(self) -> None:
        try:
            while True:
                try:
                    await self._serve()
                    # Closed cleanly: flushes the server left unanswered end here.
                    self._emit(self._flush_ends(time.monotonic_ns(), self._flushes.drain()))
                    self._finish(None)
                    return
                except (ConnectionLostError, ProviderTimeoutError) as exc:
                    if self._closing or self._backoff is None:
                        raise
                    await self._reconnect(exc)
        except ProviderError as exc:
            self._finish(exc)
        except Exception as exc:
            _log.exception("%s: stream failed", self.provider)
            self._finish(error_for_exception(self.provider, exc))
        finally:
            self._connected = False
            await self._ws.close()

    async def _reconnect(self, error: ProviderError) -> None:
        assert self._backoff is not None
        self._connected = False
        up_ns = time.monotonic_ns() - self._connected_ns
        if up_ns >= self._timing.reconnect_reset_ms * 1_000_000:
            self._backoff.reset()
        self._outbox.clear()
        self._dropped_bytes += self._unsent_bytes
        self._unsent_bytes = 0
        self._held_bytes = 0
        # The new session cannot answer flushes sent on this one.
        self._emit(self._flush_ends(time.monotonic_ns(), self._flushes.drain()))
        await self._ws.close()
        while True:
            delay_s = self._backoff.next_delay_s(error)
            if delay_s is None:
                raise error
            _log.warning("%s: %s; reconnecting in %.2f s", self.provider, error, delay_s)
            await asyncio.sleep(delay_s)
            try:
                self._ws = await self._reopen()
            except ProviderError as exc:
                error = exc
                continue
            break
        self._connected_ns = time.monotonic_ns()
        self._reconnects += 1
        self._new_session(self._pushed_bytes / BYTES_PER_MS)
        self._conn_bytes = 0
        self._sent_since_receipt_bytes = 0
        self._last_receipt_ns = time.monotonic_ns()
        self._connected = True

    async def _serve(self) -> None:
        name = f"{self.provider}-stt-send"
        sender = asyncio.create_task(self._send_loop(self._ws), name=name)
        try:
            await self._receive_loop(self._ws)
        finally:
            sender.cancel()
            await asyncio.wait({sender})

    async def _send_loop(self, ws: WebSocket) -> None:
        held = bytearray()
        try:
            while True:
                while self._outbox:
                    item = self._outbox.popleft()
                    if isinstance(item, bytes):
                        held += item
                        while len(held) >= self._chunk_bytes:
                            await self._send_audio(ws, bytes(held[: self._chunk_bytes]))
                            del held[: self._chunk_bytes]
                        continue
                    if held:  # padded to min_chunk_ms when the control was queued
                        await self._send_audio(ws, bytes(held))
                        held.clear()
                    await ws.send_str(item)
                    self._sent_text(item)
                    if item == self.end_message:
                        return
                if held and not self.hold_partial:
                    await self._send_audio(ws, bytes(held))
                    held.clear()
                self._wake.clear()
                try:
                    async with asyncio.timeout(self._keepalive_s):
                        await self._wake.wait()
                except TimeoutError:
                    await ws.send_str(self.keepalive_message)
        except (ConnectionError, aiohttp.ClientError) as exc:
            # The receive loop sees the broken socket and reports it.
            _log.debug("%s: send failed: %s", self.provider, exc)

    async def _send_audio(self, ws: WebSocket, chunk: bytes) -> None:
        self._unsent_bytes -= len(chunk)
        self._sent_since_receipt_bytes += len(chunk)
        await ws.send_bytes(chunk)

    async def _receive_loop(self, ws: WebSocket) -> None:
        timeout_ms = self._timing.receive_timeout_ms
        timeout_ns = timeout_ms * 1_000_000
        stall_bytes = timeout_ms * BYTES_PER_MS
        poll_s = timeout_ms / 4000
        while True:
            try:
                msg = await ws.receive(timeout=poll_s)
            except TimeoutError:
                waited_ns = time.monotonic_ns() - self._last_receipt_ns
                if (
                    self._stall_possible()
                    and waited_ns >= timeout_ns
                    and self._sent_since_receipt_bytes >= stall_bytes
                ):
                    raise ProviderTimeoutError(
                        self.provider, "no message while audio flowed"
                    ) from None
                continue
            received_ns = time.monotonic_ns()
            if msg.type is aiohttp.WSMsgType.TEXT:
                self._last_receipt_ns = received_ns
                self._sent_since_receipt_bytes = 0
                self._emit(self._on_text(msg.data, received_ns))
            elif msg.type is aiohttp.WSMsgType.BINARY:
                raise ProviderProtocolError(self.provider, "unexpected binary frame")
            elif msg.type is aiohttp.WSMsgType.CLOSE:
                if self._closing and msg.data == CLOSE_NORMAL:
                    return
                raise self._close_error(msg.data, str(msg.extra or ""))
            else:
                raise ConnectionLostError(self.provider, f"connection lost ({msg.type.name})")
