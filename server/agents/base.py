"""What a call and its agent offer each other.

The :class:`server.call.Call` owns the engine (VAD, turn machine, playout) and
calls its :class:`Agent` synchronously from the event loop: once per inbound
20 ms frame, and for every turn command the agent has to carry out.  The agent
answers through :class:`CallControl`: it queues reply audio (8 kHz mu-law, the
wire format) tagged with the turn machine's generation, and says when a
generation is complete.  Times are ms of the call's inbound media clock.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import numpy.typing as npt

from engine.turn import Command
from server.callevents import CallEvent


class CallControl(Protocol):
    """The call, as its agent sees it."""

    call_id: str

    @property
    def now_ms(self) -> int:
        """The call's inbound media time (ms)."""
        ...

    def play(self, ulaw: bytes | bytearray, generation: int) -> bool:
        """Queue reply audio of ``generation``; False when it was dropped (stale or full)."""
        ...

    def finish(self, generation: int) -> None:
        """No more audio will be queued for ``generation``."""
        ...

    def response_started(self, generation: int) -> None:
        """``generation`` began producing output (for the turn machine's metrics)."""
        ...

    def transcript(self, text: str, is_final: bool) -> None:
        """An STT result for the open utterance (feeds the barge-in backchannel veto)."""
        ...

    def request_turn(self) -> bool:
        """Ask to speak unprompted (greeting, DTMF answer); True if a StartResponse followed."""
        ...

    def heard_ms(self, generation: int) -> int:
        """How much of ``generation`` the caller has heard so far (ms)."""
        ...

    def hangup(self, reason: str) -> None:
        """End the call from our side."""
        ...

    def send_dtmf(self, digits: str) -> bool:
        """Play keys to the far end (RFC 4733 on SIP); False where the front door cannot."""
        ...

    def publish(self, event: CallEvent) -> None:
        """Show ``event`` to the far end, when its transport can (a browser page)."""
        ...


class Agent(Protocol):
    """One call's conversational side; every method returns at once (work runs in tasks)."""

    def on_start(self, parameters: dict[str, str]) -> None:
        """The call is up (``parameters`` come from the carrier)."""
        ...

    def on_caller_frame(self, ulaw: bytearray, pcm16k: npt.NDArray[np.int16], at_ms: int) -> None:
        """One 20 ms inbound frame: as received (mu-law) and as the VAD got it (16 kHz)."""
        ...

    def on_command(self, command: Command) -> None:
        """A turn-machine command: StartResponse, Clear/Pause/ResumePlayout, STT open/close,
        Interrupted, FalseInterruption."""
        ...

    def on_dtmf(self, digit: str) -> None:
        """A key the caller pressed."""
        ...

    def on_text(self, text: str) -> None:
        """A message the caller typed (a browser page): a turn of its own."""
        ...

    def on_first_audio(self, generation: int) -> None:
        """The first frame of ``generation`` left the server."""
        ...

    def close(self, reason: str) -> None:
        """The call ended: stop all work (idempotent)."""
        ...

    def summary(self) -> dict[str, object]:
        """What the agent did so far, JSON-serialisable (``GET /calls/{id}``, hang-up log)."""
        ...
