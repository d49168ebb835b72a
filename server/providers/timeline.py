"""Provider audio time to stream time, for STT clients that drop or pad audio."""

from __future__ import annotations


class Timeline:
    """Maps provider audio time (ms the provider received in one session) to stream
    time (ms since the stream's first pushed sample), across audio dropped before
    it was sent and silence padding the stream never had."""

    def __init__(self, origin_ms: float) -> None:
        self.origin_ms = origin_ms
        self._skips: list[tuple[float, float]] = []

    def skip(self, at_ms: float, gap_ms: float) -> None:
        """From provider time ``at_ms`` on, stream time runs ``gap_ms`` further ahead
        (negative for padding the provider heard but the stream never had)."""
        if self._skips and self._skips[-1][0] == at_ms:
            self._skips[-1] = (at_ms, self._skips[-1][1] + gap_ms)
        else:
            self._skips.append((at_ms, gap_ms))

    def to_stream_ms(self, provider_ms: float) -> float:
        offset = self.origin_ms
        for at_ms, gap_ms in self._skips:
            if provider_ms < at_ms:
                break
            offset += gap_ms
        return provider_ms + offset
