"""Pure-Python specification of the ``engine._polyphase`` kernel.

Resampling by the rational ratio ``up / down`` with a polyphase FIR table:
``up`` branches of ``taps`` Q14 coefficients (``1 << 14`` is a gain of 1), each
branch listed oldest tap first.  Output sample ``m`` (counted from the start of
the stream) is, with ``t = m * down``, ``i = t // up`` and ``p = t % up``::

    acc = sum(x[i - taps + 1 + k] * branch[p][k] for k in range(taps))
    y[m] = saturate(round_half_away_from_zero(acc / 2**14))

where ``x[j] = 0`` for ``j < 0``.  ``y[m]`` needs input up to ``x[i]`` only, so
after ``n_in`` input samples exactly ``ceil(n_in * up / down)`` outputs exist,
however the input was chunked.  ``flush`` feeds ``ceil(tail * down / up)``
zeros, keeps the first ``tail`` outputs and starts a new stream.

Written for reading, not speed: exact Python integers, absolute positions.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

COEF_BITS = 14
"""Fractional bits of the coefficients."""

INT16_MIN = -32768
INT16_MAX = 32767


def samples(pcm: bytes | Sequence[int]) -> list[int]:
    """The int16 values of little-endian PCM bytes, or of a sequence of ints."""
    if isinstance(pcm, bytes | bytearray | memoryview):
        data = bytes(pcm)
        if len(data) % 2:
            raise ValueError(f"pcm has an odd byte count ({len(data)})")
        return [s for (s,) in struct.iter_unpack("<h", data)]
    values = [int(s) for s in pcm]
    if any(not INT16_MIN <= s <= INT16_MAX for s in values):
        raise ValueError("pcm samples must be in the int16 range")
    return values


def round_q14(acc: int) -> int:
    """``acc / 2**14`` rounded to the nearest integer, halves away from zero."""
    half = 1 << (COEF_BITS - 1)
    if acc >= 0:
        return (acc + half) >> COEF_BITS
    return -((half - acc) >> COEF_BITS)


def saturate(value: int) -> int:
    """``value`` clamped to the int16 range."""
    return max(INT16_MIN, min(INT16_MAX, value))


class PolyphaseReference:
    """The streaming resampler of the module docstring, one stream at a time."""

    def __init__(self, table: Sequence[int], up: int, down: int, taps: int, tail: int) -> None:
        if len(table) != up * taps:
            raise ValueError(f"table holds {len(table)} coefficients, expected {up * taps}")
        self.up = up
        self.down = down
        self.taps = taps
        self.tail = tail
        self.branches = [[int(c) for c in table[p * taps : (p + 1) * taps]] for p in range(up)]
        self.reset()

    def reset(self) -> None:
        """Start a new stream: zero history, output and input counts back to 0."""
        self.history = [0] * (self.taps - 1)  # x[n_in - taps + 1 : n_in]
        self.n_in = 0  # input samples consumed
        self.n_out = 0  # outputs produced (index m of the next one)

    def max_output(self, n_in: int) -> int:
        """``ceil(n_in * up / down)``: the most outputs ``n_in`` inputs can give."""
        return -(-n_in * self.up // self.down)

    def process(self, pcm: bytes | Sequence[int]) -> list[int]:
        """Outputs that become available with the next chunk ``pcm``."""
        x = samples(pcm)
        window = self.history + x  # window[k] is x[n_in - (taps - 1) + k]
        end = self.n_in + len(x)  # input samples available after this chunk
        out: list[int] = []
        while True:
            t = self.n_out * self.down
            newest, phase = divmod(t, self.up)
            if newest >= end:
                break
            start = newest - self.n_in  # window index of x[newest - taps + 1]
            branch = self.branches[phase]
            acc = sum(window[start + k] * branch[k] for k in range(self.taps))
            out.append(saturate(round_q14(acc)))
            self.n_out += 1
        self.n_in = end
        self.history = window[len(window) - (self.taps - 1) :]
        return out

    def flush(self) -> list[int]:
        """The ``tail`` outputs that zeros after the input give; then :meth:`reset`."""
        zeros = -(-self.tail * self.down // self.up)
        out = self.process([0] * zeros)[: self.tail]
        self.reset()
        return out
