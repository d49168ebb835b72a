"""The STT side of one call: utterances of caller audio onto provider streams.

The turn machine opens an utterance at the caller's speech onset and closes it
at the end of their turn (or discards it: a false barge-in).  Only utterance
audio goes to the provider, from ``PREROLL_MS`` before the onset.  One stream
serves the call's utterances in turn; its time runs only while audio is pushed,
so each utterance is a range ``[start_ms, end_ms)`` of stream time and every
provider event is routed to the utterance its ``audio_end_ms`` falls in.

Interim and final transcripts of the open utterance go to the call at once
(the barge-in backchannel veto).  :meth:`SttSession.final_text` flushes the
stream and waits for the END_OF_TURN that answers the flush (see
:meth:`server.providers.base.SttStream.flush`), up to the stage deadline; then
it falls back: the text heard so far, else the same provider once more on a
fresh stream, then the next provider, each fed the utterance's audio again.
A stream that fails is replaced at the next utterance.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Final

import numpy as np
import numpy.typing as npt

from server.agents.base import CallControl
from server.agents.turnlog import StageObserver, TurnRecord
from server.providers.base import (
    AuthError,
    ProviderError,
    SttEvent,
    SttEventKind,
    SttProvider,
    SttStream,
)

log = logging.getLogger(__name__)

FRAME_MS: Final = 20
PREROLL_MS: Final = 200
"""Audio before the VAD's onset also sent (the VAD decides a little late)."""
MAX_UTTERANCE_MS: Final = 60_000
"""Utterance audio kept for a replay to another provider."""
FRAME_BYTES: Final = 640


def error_kind(error: ProviderError) -> str:
    """A metric label for ``error``: auth, rate_limited, timeout, protocol, connection, error."""
    names = {
        "AuthError": "auth",
        "RateLimitedError": "rate_limited",
        "ProviderTimeoutError": "timeout",
        "ProviderProtocolError": "protocol",
        "ConnectionLostError": "connection",
    }
    return names.get(type(error).__name__, "error")


def explain(name: str, error: BaseException) -> str:
    """``error`` for a log line; a refused key also names the setting to fix."""
    if isinstance(error, AuthError):
        return f"{error} (credentials refused: check providers.{name}.api_key)"
    return str(error) or type(error).__name__


@dataclass(eq=False)
class Utterance:
    """One stretch of caller speech and what the STT made of it."""

    audio: bytearray = field(default_factory=bytearray)
    """16 kHz PCM sent for it (kept for a replay)."""
    stream: SttStream | None = None
    start_ms: float = 0.0
    end_ms: float | None = None
    """Stream time where it ends; None while open."""
    finals: list[str] = field(default_factory=list)
    interim: str = ""
    eot_text: str | None = None
    last_eot_end_ms: float = -1.0
    done: bool = False
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def text(self) -> str:
        """The best transcript so far: finals (or the END_OF_TURN text), else the interim."""
        finals = " ".join(t for t in self.finals if t)
        return finals or (self.eot_text or "") or self.interim


class _Link:
    """One open provider stream and the task reading its events."""

    def __init__(self, name: str, stream: SttStream) -> None:
        self.name = name
        self.stream = stream
        self.pushed_ms = 0.0
        self.failed: ProviderError | None = None
        self.reader: asyncio.Task[None] | None = None


class SttSession:
    """Utterances of one call on its STT providers (``chain``, in fallback order)."""

    def __init__(
        self,
        chain: list[tuple[str, SttProvider]],
        control: CallControl,
        observer: StageObserver,
        *,
        language: str | None = None,
        settled_ms: float = 300.0,
    ) -> None:
        if not chain:
            raise ValueError("an STT session needs at least one provider")
        self._chain = chain
        self._control = control
        self._observer = observer
        self._language = language
        self._settled_ms = settled_ms
        self._ring: deque[tuple[int, bytes]] = deque(maxlen=PREROLL_MS // FRAME_MS + 2)
        self._open: Utterance | None = None
        self._utterances: deque[Utterance] = deque(maxlen=8)
        self._link: _Link | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._retiring: set[asyncio.Task[None]] = set()  # replaced streams being closed
        self._next_provider = 0
        self._closed = False

    @property
    def provider(self) -> str | None:
        """The provider serving the call now."""
        return self._link.name if self._link is not None else None

    # -- audio (synchronous, from the call)

    def start(self) -> None:
        """Connect ahead of the first utterance."""
        self._ensure_link()

    def frame(self, pcm16k: npt.NDArray[np.int16], at_ms: int) -> None:
        """One 20 ms frame of caller audio at 16 kHz."""
        data = pcm16k.tobytes()
        self._ring.append((at_ms, data))
        utterance = self._open
        if utterance is None:
            return
        if len(utterance.audio) < MAX_UTTERANCE_MS * 32:
            utterance.audio += data
        link = self._link
        if link is not None and link.failed is None and utterance.stream is link.stream:
            self._push(link, data)

    def open(self, from_ms: int) -> None:
        """Start an utterance whose speech began at ``from_ms`` (media time)."""
        if self._open is not None:
            self.close(discard=True)
        utterance = Utterance()
        for at_ms, data in self._ring:
            if at_ms >= from_ms - PREROLL_MS:
                utterance.audio += data
        self._open = utterance
        self._utterances.append(utterance)
        link = self._ensure_link()
        if link is not None:
            self._attach(utterance, link)

    def close(self, *, discard: bool) -> Utterance | None:
        """End the open utterance; returns it unless ``discard``."""
        utterance, self._open = self._open, None
        if utterance is None:
            return None
        link = self._link
        if link is not None and utterance.stream is link.stream:
            utterance.end_ms = link.pushed_ms
        if discard:
            utterance.done = True
            utterance.audio = bytearray()
            return None
        if utterance.end_ms is not None and utterance.last_eot_end_ms >= utterance.end_ms - (
            self._settled_ms
        ):
            utterance.done = True
        return utterance

    # -- the final transcript

    async def final_text(
        self, utterance: Utterance, budget_ms: float, turn_deadline: float, record: TurnRecord
    ) -> str | None:
        """The utterance's transcript within ``budget_ms`` (``None``: every provider failed).

        ``turn_deadline`` (``time.monotonic()``) bounds the fallbacks: another
        attempt is made only while a whole budget still fits before it.
        """
        try:
            return await self._final_text(utterance, budget_ms, turn_deadline, record)
        finally:
            utterance.audio = bytearray()  # no replay after this: free it now

    async def _final_text(
        self, utterance: Utterance, budget_ms: float, turn_deadline: float, record: TurnRecord
    ) -> str | None:
        budget_s = budget_ms / 1000
        deadline = time.monotonic() + budget_s
        current = self._index_for(utterance)
        # After the stream it is on: the same provider once more, then the others.
        attempts = [current] + [i for i in range(len(self._chain)) if i != current]
        over_budget = False
        while True:
            if await self._settle(utterance, deadline):
                record.providers["stt"] = self._chain[self._index_for(utterance)][0]
                return utterance.text()
            if not over_budget and time.monotonic() >= deadline:
                over_budget = True
                record.violations.append("stt_final")
                self._observer.count_violation("stt_final")
            if text := utterance.text():
                self._fallback(record, "partial")
                return text
            if not attempts or turn_deadline - time.monotonic() < budget_s:
                break
            index = attempts.pop(0)
            name = self._chain[index][0]
            self._fallback(record, "retry" if index == current else f"next:{name}")
            link = await self._connect(index, deadline=time.monotonic() + budget_s)
            if link is None:
                continue
            self._replace_link(link)
            self._attach(utterance, link)
            utterance.end_ms = link.pushed_ms
            deadline = time.monotonic() + budget_s
        self._fallback(record, "failed")
        return None

    async def _settle(self, utterance: Utterance, deadline: float) -> bool:
        """Flush the utterance's stream and wait for its answer until ``deadline``."""
        link = self._link_of(utterance)
        if link is None:
            return utterance.done
        if not utterance.done:
            try:
                async with asyncio.timeout_at(_loop_time(deadline)):
                    await link.stream.flush()
            except (ProviderError, TimeoutError):
                pass
        while not utterance.done and link.failed is None:
            utterance.changed.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            try:
                async with asyncio.timeout(remaining):
                    await utterance.changed.wait()
            except TimeoutError:
                return utterance.done
        return utterance.done

    # -- streams

    def _ensure_link(self) -> _Link | None:
        link = self._link
        if link is not None and link.failed is None:
            return link
        if self._connecting is None and not self._closed:
            self._connecting = asyncio.get_running_loop().create_task(self._reconnect())
        return None

    async def _reconnect(self) -> None:
        try:
            n = len(self._chain)
            for step in range(n):
                index = (self._next_provider + step) % n
                link = await self._connect(index, deadline=time.monotonic() + 10.0)
                if link is not None:
                    self._replace_link(link)
                    if self._open is not None and self._open.stream is None:
                        self._attach(self._open, link)
                    return
        finally:
            self._connecting = None

    async def _connect(self, index: int, *, deadline: float) -> _Link | None:
        name, provider = self._chain[index]
        try:
            async with asyncio.timeout_at(_loop_time(deadline)):
                stream = await provider.open_stream(language=self._language)
        except (ProviderError, TimeoutError) as exc:
            error = exc if isinstance(exc, ProviderError) else None
            kind = error_kind(error) if error is not None else "timeout"
            self._observer.count_provider_error(name, kind)
            log.warning(
                "call %s: STT %s could not open a stream: %s", self._cid, name, explain(name, exc)
            )
            return None
        self._next_provider = index
        link = _Link(name, stream)
        link.reader = asyncio.get_running_loop().create_task(self._read(link))
        return link

    def _replace_link(self, link: _Link) -> None:
        old, self._link = self._link, link
        if old is not None:
            self._retire(old)

    def _retire(self, link: _Link) -> None:
        task = asyncio.get_running_loop().create_task(_close_link(link))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    def _attach(self, utterance: Utterance, link: _Link) -> None:
        utterance.stream = link.stream
        utterance.start_ms = link.pushed_ms
        utterance.end_ms = None
        utterance.finals.clear()
        utterance.interim = ""
        utterance.eot_text = None
        utterance.last_eot_end_ms = -1.0
        utterance.done = False
        audio = bytes(utterance.audio)
        for i in range(0, len(audio) - FRAME_BYTES + 1, FRAME_BYTES):
            self._push(link, audio[i : i + FRAME_BYTES])

    def _push(self, link: _Link, data: bytes) -> None:
        try:
            link.stream.push_audio(data)
        except ProviderError as exc:
            self._fail(link, exc)
            return
        link.pushed_ms += FRAME_MS

    async def _read(self, link: _Link) -> None:
        try:
            async for event in link.stream.events():
                self._route(link, event)
        except ProviderError as exc:
            self._fail(link, exc)
        except asyncio.CancelledError:
            raise
        else:
            if not self._closed and link is self._link:
                self._fail(link, None)

    def _fail(self, link: _Link, error: ProviderError | None) -> None:
        if link.failed is not None:
            return
        link.failed = error or ProviderError(link.name, "stream ended")
        kind = error_kind(error) if error is not None else "closed"
        self._observer.count_provider_error(link.name, kind)
        log.warning(
            "call %s: STT %s failed (%s): %s",
            self._cid,
            link.name,
            kind,
            explain(link.name, link.failed),
        )
        for utterance in self._utterances:
            if utterance.stream is link.stream:
                utterance.changed.set()
        if link is self._link and len(self._chain) > 1:
            self._next_provider = (self._chain_index_of(link.name) + 1) % len(self._chain)

    def _route(self, link: _Link, event: SttEvent) -> None:
        utterance = self._utterance_at(link, event.audio_end_ms)
        if utterance is None:
            return
        kind = event.kind
        if kind is SttEventKind.INTERIM:
            utterance.interim = event.text
            if utterance is self._open and event.text:
                self._control.transcript(event.text, False)
        elif kind is SttEventKind.FINAL:
            utterance.finals.append(event.text)
            utterance.interim = ""
            if utterance is self._open and event.text:
                self._control.transcript(event.text, True)
        elif kind is SttEventKind.END_OF_TURN:
            end_ms = event.audio_end_ms if event.audio_end_ms is not None else link.pushed_ms
            utterance.last_eot_end_ms = max(utterance.last_eot_end_ms, end_ms)
            if event.text and not utterance.finals:
                utterance.eot_text = event.text
            if utterance.end_ms is not None and end_ms >= utterance.end_ms - self._settled_ms:
                utterance.done = True
        utterance.changed.set()

    def _utterance_at(self, link: _Link, end_ms: float | None) -> Utterance | None:
        mine = [u for u in self._utterances if u.stream is link.stream]
        if not mine:
            return None
        if end_ms is None:
            return mine[-1]
        for utterance in reversed(mine):
            if utterance.start_ms < end_ms:
                return utterance
        return mine[0]

    def _link_of(self, utterance: Utterance) -> _Link | None:
        link = self._link
        if link is None or utterance.stream is not link.stream or link.failed is not None:
            return None
        return link

    def _index_for(self, utterance: Utterance) -> int:
        """The chain index of the provider the utterance is on (or would go to next)."""
        link = self._link
        if link is not None and utterance.stream is link.stream:
            return self._chain_index_of(link.name)
        return self._next_provider

    def _chain_index_of(self, name: str) -> int:
        return next(i for i, (n, _) in enumerate(self._chain) if n == name)

    def _fallback(self, record: TurnRecord, action: str) -> None:
        record.fallbacks.append(f"stt:{action}")
        self._observer.count_fallback("stt", action.partition(":")[0])

    @property
    def _cid(self) -> str:
        return self._control.call_id

    async def aclose(self) -> None:
        """Close the stream and stop every task (idempotent)."""
        self._closed = True
        if self._connecting is not None:
            self._connecting.cancel()
        link, self._link = self._link, None
        if link is not None:
            await _close_link(link)
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)


async def _close_link(link: _Link) -> None:
    """Close a stream (letting its last events arrive, 2 s at most), then its reader."""
    try:
        async with asyncio.timeout(2.0):
            await link.stream.close()
    except (ProviderError, TimeoutError):
        pass
    if link.reader is not None:
        link.reader.cancel()
        await asyncio.gather(link.reader, return_exceptions=True)


def _loop_time(monotonic_deadline: float) -> float:
    """``time.monotonic()`` deadline on the running loop's clock."""
    loop = asyncio.get_running_loop()
    return loop.time() + (monotonic_deadline - time.monotonic())
