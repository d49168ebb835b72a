"""What a live call tells a far end that can show it (a browser page, a dashboard).

The :class:`server.call.Call` and its agent publish these events to the call's
:class:`CallListener`, if its transport set one; a transport with no way to show
them (a phone line) sets none.  They are plain data, free of any wire format:
each transport that forwards them encodes them itself (the WebRTC data channel
in :mod:`server.transports.datachannel`).  Times are ms.
"""

from __future__ import annotations

from typing import Literal, Protocol, TypeAlias

import msgspec

Role = Literal["user", "assistant"]


class StateChanged(msgspec.Struct, frozen=True):
    """The turn machine moved to ``state`` (a :class:`engine.turn.TurnState` value)."""

    state: str


class Transcript(msgspec.Struct, frozen=True):
    """Words of one side.

    ``final`` False: a hypothesis that the next transcript of the same role
    replaces.  ``final`` True: the settled text of a turn: the caller's words
    the agent answered, or the reply as the caller heard it.  ``generation``
    names the reply (assistant) or the reply answering it (user); a later final
    of the same role and generation corrects the earlier one (a reply cut short
    by a barge-in).
    """

    role: Role
    text: str
    final: bool
    generation: int | None = None


class TurnLatency(msgspec.Struct, frozen=True):
    """The first audio of reply ``generation`` left ``latency_ms`` after the caller
    stopped speaking (the call's media time)."""

    generation: int
    latency_ms: float


class TurnStages(msgspec.Struct, frozen=True):
    """The pipeline's breakdown of reply ``generation`` (see :mod:`server.agents.turnlog`)."""

    generation: int
    kind: str
    outcome: str
    stages_ms: dict[str, float]
    overhead_ms: float | None
    providers: dict[str, str]


class CallEnded(msgspec.Struct, frozen=True):
    """The call is over; ``reason`` says how."""

    reason: str


CallEvent: TypeAlias = StateChanged | Transcript | TurnLatency | TurnStages | CallEnded


class CallListener(Protocol):
    """Receives a call's events, synchronously, from the event loop; must not block."""

    def on_call_event(self, event: CallEvent) -> None: ...
