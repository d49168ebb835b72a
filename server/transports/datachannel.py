"""The browser page's data channel (label ``voxgate``): its whole wire format.

Every message is one JSON object in a text message, with a ``type`` field.

Server -> page:

* ``{"type":"hello","call_id":ID}`` when the channel opens;
* ``{"type":"state","state":S}``: the turn machine's state (``listening``,
  ``user_speaking``, ``thinking``, ``bot_speaking``, ``paused``, ``interrupted``);
* ``{"type":"transcript","role":"user"|"assistant","text":T,"final":B,"generation":N|null}``;
* ``{"type":"turn","generation":N,"latency_ms":X}``: end of the caller's speech
  to the reply's first audio sent (media ms);
* ``{"type":"stages","generation":N,"kind":K,"outcome":O,"stages_ms":{...},
  "overhead_ms":X|null,"providers":{...}}``: the pipeline's breakdown of a reply;
* ``{"type":"error","reason":R}``: a command was refused;
* ``{"type":"bye","reason":R}``: the call ended.

Page -> server:

* ``{"type":"text","text":T}``: a typed message (at most :data:`MAX_TEXT_CHARS`);
* ``{"type":"dtmf","digits":D}``: keys ``0-9 * # A-D`` (at most :data:`MAX_DIGITS`);
* ``{"type":"hangup"}``.
"""

from __future__ import annotations

from typing import Final, Literal, TypeAlias

import msgspec

from server.callevents import CallEnded, CallEvent, StateChanged, Transcript, TurnLatency

MAX_MESSAGE_BYTES: Final = 8192
MAX_TEXT_CHARS: Final = 2000
MAX_DIGITS: Final = 32
DTMF_KEYS: Final = frozenset("0123456789*#ABCD")


class _Out(msgspec.Struct, tag_field="type", omit_defaults=False):
    pass


class Hello(_Out, tag="hello"):
    call_id: str


class State(_Out, tag="state"):
    state: str


class TranscriptOut(_Out, tag="transcript"):
    role: Literal["user", "assistant"]
    text: str
    final: bool
    generation: int | None


class Turn(_Out, tag="turn"):
    generation: int
    latency_ms: float


class Stages(_Out, tag="stages"):
    generation: int
    kind: str
    outcome: str
    stages_ms: dict[str, float]
    overhead_ms: float | None
    providers: dict[str, str]


class Error(_Out, tag="error"):
    reason: str


class Bye(_Out, tag="bye"):
    reason: str


class TextCommand(msgspec.Struct, tag_field="type", tag="text", forbid_unknown_fields=True):
    text: str


class DtmfCommand(msgspec.Struct, tag_field="type", tag="dtmf", forbid_unknown_fields=True):
    digits: str


class HangupCommand(msgspec.Struct, tag_field="type", tag="hangup", forbid_unknown_fields=True):
    pass


Command: TypeAlias = TextCommand | DtmfCommand | HangupCommand

_encoder = msgspec.json.Encoder()
_decoder: msgspec.json.Decoder[Command] = msgspec.json.Decoder(Command)


class CommandError(ValueError):
    """A page message voxgate refuses; ``str()`` is the reason sent back."""


def encode_event(event: CallEvent) -> str:
    """The data-channel message for a call event."""
    message: _Out
    if isinstance(event, StateChanged):
        message = State(event.state)
    elif isinstance(event, Transcript):
        message = TranscriptOut(event.role, event.text, event.final, event.generation)
    elif isinstance(event, TurnLatency):
        message = Turn(event.generation, round(event.latency_ms, 1))
    elif isinstance(event, CallEnded):
        message = Bye(event.reason)
    else:
        message = Stages(
            event.generation,
            event.kind,
            event.outcome,
            event.stages_ms,
            event.overhead_ms,
            event.providers,
        )
    return _encoder.encode(message).decode()


def encode_hello(call_id: str) -> str:
    return _encoder.encode(Hello(call_id)).decode()


def encode_error(reason: str) -> str:
    return _encoder.encode(Error(reason)).decode()


def decode_command(data: str | bytes) -> Command:
    """Parse one page message; raises :class:`CommandError` saying what is wrong."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise CommandError(f"message too large ({len(data)} > {MAX_MESSAGE_BYTES} bytes)")
    try:
        command = _decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise CommandError(f"bad message: {exc}") from None
    except UnicodeError:
        raise CommandError("bad message: not valid UTF-8") from None
    if isinstance(command, TextCommand):
        if not command.text.strip():
            raise CommandError("empty text")
        if len(command.text) > MAX_TEXT_CHARS:
            raise CommandError(f"text too long ({len(command.text)} > {MAX_TEXT_CHARS} chars)")
    elif isinstance(command, DtmfCommand):
        if not command.digits or len(command.digits) > MAX_DIGITS:
            raise CommandError(f"digits must be 1..{MAX_DIGITS} keys")
        bad = sorted(set(command.digits) - DTMF_KEYS)
        if bad:
            raise CommandError(f"not DTMF keys: {''.join(bad)!r} (0-9 * # A-D)")
    return command
