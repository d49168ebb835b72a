"""The loopback agent: every caller frame goes straight back (a media echo test).

Like a PBX's echo-test extension, it measures a front door's media round trip
(caller -> server -> caller) and lets a person hear their own line.  Frames are
queued under a generation above any the turn machine will reach, so the
caller's voice coming back is never "the bot speaking" (no barge-in) and no
turn's clear can make it stale; the turns the turn machine starts are answered
with silence at once.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

from engine.turn import Command, StartResponse
from server.agents.base import CallControl

LOOPBACK_GENERATION: Final = 1 << 30
"""The playout generation of echoed frames: above every turn's."""


class LoopbackAgent:
    """:class:`server.agents.base.Agent` playing each 20 ms caller frame back as it arrives."""

    __slots__ = ("_control", "frames")

    def __init__(self, control: CallControl) -> None:
        self._control = control
        self.frames = 0
        """Frames played back."""

    def on_start(self, parameters: dict[str, str]) -> None:
        pass

    def on_caller_frame(self, ulaw: bytearray, pcm16k: npt.NDArray[np.int16], at_ms: int) -> None:
        if self._control.play(ulaw, LOOPBACK_GENERATION):
            self.frames += 1

    def on_command(self, command: Command) -> None:
        if isinstance(command, StartResponse):
            self._control.finish(command.generation)

    def on_dtmf(self, digit: str) -> None:
        pass

    def on_text(self, text: str) -> None:
        pass

    def on_first_audio(self, generation: int) -> None:
        pass

    def close(self, reason: str) -> None:
        pass

    def summary(self) -> dict[str, object]:
        return {"agent": "loopback", "frames": self.frames}
