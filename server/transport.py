"""The common call model every front door maps its wire protocol onto.

A transport module (``server/transports/<protocol>.py``) turns what the far
end sends into the events below (frozen msgspec Structs: every inbound media
frame builds one, and a Struct costs a tenth of a frozen dataclass), and
carries out the four outbound actions of :class:`Transport`.  Times are
milliseconds of the call's media clock.
"""

from __future__ import annotations

from typing import Protocol, TypeAlias

import msgspec


class CallStarted(msgspec.Struct, frozen=True):
    """The far end identified the call (once, before any audio).

    ``codec``/``rate_hz`` describe inbound audio (see :mod:`engine.format`);
    ``parameters`` are carrier-supplied key/values (e.g. Twilio's
    ``customParameters``) handed to the agent unchanged.
    """

    call_id: str
    stream_id: str
    codec: str
    rate_hz: int
    parameters: dict[str, str] = msgspec.field(default_factory=dict)


class AudioIn(msgspec.Struct, frozen=True):
    """One chunk of inbound audio, encoded as ``codec`` at ``rate_hz``.

    ``timestamp_ms`` is the far end's presentation time when it gives one,
    else ``None``.
    """

    payload: bytes
    codec: str
    rate_hz: int
    timestamp_ms: int | None


class Dtmf(msgspec.Struct, frozen=True):
    """A key the caller pressed: one of ``0-9 * # A-D``."""

    digit: str


class TextIn(msgspec.Struct, frozen=True):
    """A message the caller typed (browser pages); the agent answers it as a turn."""

    text: str


class MarkPlayed(msgspec.Struct, frozen=True):
    """The far end reached a mark: ``played`` is False when it came back because of a clear."""

    name: str
    played: bool


class Hangup(msgspec.Struct, frozen=True):
    """The far end ended the stream; ``reason`` says how (for logs and metrics)."""

    reason: str


TransportEvent: TypeAlias = CallStarted | AudioIn | Dtmf | TextIn | MarkPlayed | Hangup


class Transport(Protocol):
    """Outbound side of one live call, implemented by each front door.

    ``send_audio`` takes one frame already encoded in the transport's wire
    codec; ``clear`` empties the far end's buffer (barge-in); ``mark`` asks to
    be told (by a :class:`MarkPlayed`) when everything sent so far has played;
    ``send_dtmf`` sends keys (``0-9 * # A-D``) and says False when the front
    door has no way to; ``hangup`` ends the call, idempotently.  None of them may block the media
    clock: a slow peer is the transport's problem to detect and drop.
    """

    def send_audio(self, frame: bytes) -> None: ...

    def clear(self) -> None: ...

    def mark(self, name: str) -> None: ...

    def send_dtmf(self, digits: str) -> bool: ...

    def hangup(self) -> None: ...
