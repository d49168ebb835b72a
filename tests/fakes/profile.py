"""Latency and fault profiles shared by the fake providers.

A profile says how fast a fake answers (time to first byte, pace of later
chunks, seeded jitter) and which fault, if any, it injects.  Every fake takes
one; tests pick the fault they exercise.
"""

from __future__ import annotations

import asyncio
import enum
import random
from dataclasses import dataclass, field


class Fault(enum.Enum):
    NONE = "none"
    UNAUTHORIZED = "unauthorized"
    """Refuse the handshake or request with 401."""
    RATE_LIMITED = "rate_limited"
    """Refuse with 429 and ``Retry-After: 1``."""
    STALL = "stall"
    """Stop sending mid-stream and keep the connection open."""
    DISCONNECT = "disconnect"
    """Drop the connection mid-stream without a close handshake."""
    MALFORMED = "malformed"
    """Send one frame that is not valid for the protocol mid-stream."""
    SLOW_DRIP = "slow_drip"
    """Send the stream at a tenth of the normal pace."""


@dataclass
class Profile:
    """Timing (ms) and fault of one fake; ``after_chunks`` places mid-stream faults."""

    ttfb_ms: float = 0.0
    chunk_interval_ms: float = 0.0
    jitter_ms: float = 0.0
    fault: Fault = Fault.NONE
    after_chunks: int = 2
    seed: int = 0
    rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def _jittered_s(self, base_ms: float) -> float:
        jitter = self.rng.uniform(-self.jitter_ms, self.jitter_ms) if self.jitter_ms else 0.0
        return max(0.0, base_ms + jitter) / 1000

    async def first_byte(self) -> None:
        """Wait the time to first byte."""
        delay = self._jittered_s(self.ttfb_ms)
        if delay:
            await asyncio.sleep(delay)

    async def between_chunks(self) -> None:
        """Wait between two chunks (ten times longer under SLOW_DRIP)."""
        base = self.chunk_interval_ms * (10 if self.fault is Fault.SLOW_DRIP else 1)
        if self.fault is Fault.SLOW_DRIP and base == 0:
            base = 100.0
        delay = self._jittered_s(base)
        if delay:
            await asyncio.sleep(delay)
        else:
            await asyncio.sleep(0)
