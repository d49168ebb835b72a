"""The echo agent: plays the caller's utterance (and keys) back exactly as heard.

It keeps the last ``history_ms`` of the caller's wire audio (mu-law bytes, as
received) indexed by the call's inbound media time, and answers a turn with
the slice from ``preroll_ms`` before the speech onset to the speech end.  It is
the reference workload for load tests: the reply is bit-identical to what the
caller sent, so a load generator can check it.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

from engine.turn import Command, StartResponse
from server.agents.base import CallControl

BYTES_PER_MS: Final = 8
"""mu-law at 8 kHz: one byte per sample, eight samples per ms."""


class EchoHistory:
    """History of one caller's mu-law audio and the echo reply for a turn."""

    __slots__ = ("_buf", "_start_ms", "history_ms", "preroll_ms")

    def __init__(self, history_ms: int = 30_000, preroll_ms: int = 200) -> None:
        if history_ms <= 0:
            raise ValueError(f"history_ms must be positive, got {history_ms}")
        if not 0 <= preroll_ms <= history_ms:
            raise ValueError(f"preroll_ms must be in 0..{history_ms}, got {preroll_ms}")
        self.history_ms = history_ms
        self.preroll_ms = preroll_ms
        self._buf = bytearray()
        self._start_ms = 0  # inbound media time of _buf[0]

    @property
    def end_ms(self) -> int:
        """Inbound media time just after the last byte heard."""
        return self._start_ms + len(self._buf) // BYTES_PER_MS

    def on_caller_audio(self, ulaw: bytes | bytearray | memoryview, at_ms: int) -> None:
        """Append caller audio whose first sample is at ``at_ms`` (contiguous with the last)."""
        if not self._buf:
            self._start_ms = at_ms
        elif at_ms != self.end_ms:
            raise ValueError(f"caller audio at {at_ms} ms does not follow {self.end_ms} ms")
        self._buf += ulaw
        excess_ms = len(self._buf) // BYTES_PER_MS - self.history_ms
        # Trim in whole seconds so the memmove happens once a second, not per frame.
        if excess_ms >= 1000:
            drop_ms = excess_ms - excess_ms % 1000
            del self._buf[: drop_ms * BYTES_PER_MS]
            self._start_ms += drop_ms

    def reply(self, speech_start_ms: int, speech_end_ms: int) -> bytes:
        """The caller's audio from ``preroll_ms`` before the onset to the end, as heard."""
        if speech_end_ms < speech_start_ms:
            raise ValueError(f"speech ends ({speech_end_ms}) before it starts ({speech_start_ms})")
        begin = max(self._start_ms, speech_start_ms - self.preroll_ms)
        end = min(self.end_ms, speech_end_ms)
        if end <= begin:
            return b""
        return bytes(
            self._buf[
                (begin - self._start_ms) * BYTES_PER_MS : (end - self._start_ms) * BYTES_PER_MS
            ]
        )


class EchoAgent:
    """:class:`server.agents.base.Agent` answering every turn with the caller's own audio."""

    __slots__ = ("_control", "history")

    def __init__(self, control: CallControl, preroll_ms: int = 200) -> None:
        self._control = control
        self.history = EchoHistory(preroll_ms=preroll_ms)

    def on_start(self, parameters: dict[str, str]) -> None:
        pass

    def on_caller_frame(self, ulaw: bytearray, pcm16k: npt.NDArray[np.int16], at_ms: int) -> None:
        self.history.on_caller_audio(ulaw, at_ms)

    def on_command(self, command: Command) -> None:
        if not isinstance(command, StartResponse):
            return
        control, generation = self._control, command.generation
        start, end = command.speech_start_ms, command.speech_end_ms
        reply = b"" if start is None or end is None else self.history.reply(start, end)
        control.response_started(generation)
        if reply:
            control.play(reply, generation)
        control.finish(generation)

    def on_dtmf(self, digit: str) -> None:
        self._control.send_dtmf(digit)  # keys are echoed too, where the line carries them

    def on_text(self, text: str) -> None:
        pass  # nothing to echo: the caller's voice is the only thing it plays

    def on_first_audio(self, generation: int) -> None:
        pass

    def close(self, reason: str) -> None:
        pass

    def summary(self) -> dict[str, object]:
        return {"agent": "echo"}
