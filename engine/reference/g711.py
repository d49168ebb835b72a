"""Pure-Python reference for ``engine._g711``: G.711 mu-law/A-law and L16 byte order.

Written for reading, not speed: one sample at a time, following the ITU-T G.711
algorithm as implemented in the G.191 software tools.

mu-law works on the top 14 bits of a 16-bit sample: the magnitude (one's
complement for negatives, so -1 and 0 share magnitude 0) gets a bias of 33,
is clipped to 13 bits, and the segment is the position of its leading one.
The 8-bit code is sign, 3-bit segment, 4-bit mantissa, all inverted (``^ 0xFF``).

A-law works on the top 13 bits (sign plus 12), of which its decision levels use
the sign and 11 magnitude bits: segment 0 and 1 share the finest step, every
further segment doubles it.  The code is sign, segment, mantissa with every
even bit inverted (``^ 0x55``).
"""

from __future__ import annotations

INT16_MIN = -32768
INT16_MAX = 32767

ULAW_BIAS = 33
"""Bias added to the 14-bit mu-law magnitude (132 in 16-bit units)."""

ULAW_MAX_BIASED = 0x1FFF
"""Largest biased 14-bit mu-law magnitude; louder samples clip to it."""


def _check_sample(sample: int) -> None:
    if not INT16_MIN <= sample <= INT16_MAX:
        raise ValueError(f"sample {sample} is outside int16")


def _check_code(code: int) -> None:
    if not 0 <= code <= 0xFF:
        raise ValueError(f"code {code} is outside 0..255")


def _ones_complement_magnitude(sample: int, drop_bits: int) -> int:
    """|sample| in units of 2**drop_bits, using ~x for negatives (so -1 -> 0)."""
    top = sample >> drop_bits
    return ~top if sample < 0 else top


def ulaw_encode_sample(sample: int) -> int:
    """mu-law code (0..255) of one int16 sample."""
    _check_sample(sample)
    biased = min(_ones_complement_magnitude(sample, 2) + ULAW_BIAS, ULAW_MAX_BIASED)
    # biased >= 33 has its leading one at bit 5..12; that bit - 5 is the segment.
    segment = biased.bit_length() - 6
    mantissa = (biased >> (segment + 1)) & 0x0F
    code = (segment << 4) | mantissa
    if sample < 0:
        code |= 0x80
    return code ^ 0xFF


def ulaw_decode_sample(code: int) -> int:
    """int16 sample of one mu-law code (0..255)."""
    _check_code(code)
    bits = code ^ 0xFF
    segment = (bits >> 4) & 0x07
    mantissa = bits & 0x0F
    # Middle of the quantisation interval, in 16-bit units, minus the bias.
    magnitude = (((mantissa << 3) + 4 * ULAW_BIAS) << segment) - 4 * ULAW_BIAS
    return -magnitude if bits & 0x80 else magnitude


def alaw_encode_sample(sample: int) -> int:
    """A-law code (0..255) of one int16 sample."""
    _check_sample(sample)
    magnitude = _ones_complement_magnitude(sample, 4)  # 0..2047
    segment = max(magnitude.bit_length() - 4, 0)
    # Segments 0 and 1 share the finest step; above that, drop the leading one.
    mantissa = magnitude & 0x0F if segment == 0 else (magnitude >> (segment - 1)) & 0x0F
    code = (segment << 4) | mantissa
    if sample >= 0:
        code |= 0x80
    return code ^ 0x55


def alaw_decode_sample(code: int) -> int:
    """int16 sample of one A-law code (0..255)."""
    _check_code(code)
    bits = code ^ 0x55
    segment = (bits >> 4) & 0x07
    mantissa = bits & 0x0F
    # Middle of the quantisation interval; segments above 0 restore the leading one.
    step_units = mantissa if segment == 0 else (0x10 | mantissa) << (segment - 1)
    magnitude = (step_units << 4) + (8 << max(segment - 1, 0))
    return magnitude if bits & 0x80 else -magnitude


def _pcm_samples(pcm: bytes) -> list[int]:
    if len(pcm) % 2:
        raise ValueError(f"pcm has an odd byte count ({len(pcm)}); 16-bit samples need pairs")
    return [int.from_bytes(pcm[i : i + 2], "little", signed=True) for i in range(0, len(pcm), 2)]


def _pcm_bytes(samples: list[int]) -> bytes:
    return b"".join(s.to_bytes(2, "little", signed=True) for s in samples)


def ulaw_encode(pcm: bytes) -> bytes:
    """mu-law codes of little-endian int16 PCM bytes."""
    return bytes(ulaw_encode_sample(s) for s in _pcm_samples(pcm))


def ulaw_decode(codes: bytes) -> bytes:
    """Little-endian int16 PCM bytes of mu-law codes."""
    return _pcm_bytes([ulaw_decode_sample(c) for c in codes])


def alaw_encode(pcm: bytes) -> bytes:
    """A-law codes of little-endian int16 PCM bytes."""
    return bytes(alaw_encode_sample(s) for s in _pcm_samples(pcm))


def alaw_decode(codes: bytes) -> bytes:
    """Little-endian int16 PCM bytes of A-law codes."""
    return _pcm_bytes([alaw_decode_sample(c) for c in codes])


def l16be_to_pcm(data: bytes) -> bytes:
    """Little-endian int16 PCM bytes of big-endian (RTP L16) bytes."""
    if len(data) % 2:
        raise ValueError(f"src has an odd byte count ({len(data)}); 16-bit samples need pairs")
    samples = [int.from_bytes(data[i : i + 2], "big", signed=True) for i in range(0, len(data), 2)]
    return _pcm_bytes(samples)


def pcm_to_l16be(pcm: bytes) -> bytes:
    """Big-endian (RTP L16) bytes of little-endian int16 PCM bytes."""
    return b"".join(s.to_bytes(2, "big", signed=True) for s in _pcm_samples(pcm))
