"""Short canned phrases (filler, apology) rendered once by the offline voice.

They are spoken when a stage misses its budget or fails, so they must not
depend on the providers that failed: espeak-ng renders them at start-up, and
playing one is a copy into the playout queue.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from server.agents.replyaudio import WIRE_RATE_HZ, WireEncoder, wire_ms
from server.providers.base import ProviderError, TtsProvider

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Clip:
    """A phrase and its audio (8 kHz mu-law)."""

    text: str
    ulaw: bytes

    @property
    def ms(self) -> float:
        return wire_ms(self.ulaw)


@dataclass(frozen=True)
class Clips:
    filler: Clip
    apology: Clip


async def render(tts: TtsProvider, text: str, timeout_s: float = 10.0) -> Clip:
    """``text`` spoken by ``tts`` as wire audio; an empty clip if it cannot be rendered."""
    if not text.strip():
        return Clip(text, b"")
    encoder = WireEncoder(WIRE_RATE_HZ)
    out = bytearray()
    try:
        async with asyncio.timeout(timeout_s):
            stream = await tts.open_stream(generation=0, rate_hz=WIRE_RATE_HZ)
            await stream.push_text(text)
            await stream.flush()
            async for chunk in stream.chunks():
                out += encoder.encode(chunk.pcm)
                if chunk.done:
                    break
    except (ProviderError, TimeoutError) as exc:
        log.error("cannot render %r with %s: %s (it will be silent)", text, tts.name, exc)
        return Clip(text, b"")
    out += encoder.finish()
    return Clip(text, bytes(out))


async def render_clips(tts: TtsProvider, filler: str, apology: str) -> Clips:
    """The filler and apology clips, rendered together."""
    rendered = await asyncio.gather(render(tts, filler), render(tts, apology))
    return Clips(filler=rendered[0], apology=rendered[1])
