"""Low-delay streaming resampler for mono int16 PCM: a native polyphase FIR.

:class:`PolyphaseResampler` converts between any two of the engine's rates
(:data:`engine.format.SUPPORTED_RATES_HZ`) by the reduced ratio ``up / down``
(44.1 -> 16 kHz is 160/441).  Unlike the soxr wrapper (:mod:`engine.resample`)
it holds nothing back: after ``n_in`` input samples exactly
``ceil(n_in * up / down)`` output samples have been returned, so a 20 ms chunk
in always gives 20 ms out, and the only delay is the filter's group delay.

Filter.  A Kaiser-windowed sinc designed once per (rates, quality) with numpy
and shared by every resampler of that configuration (:func:`design_filter`):
cutoff ``cutoff * min(in, out)`` Hz, stopband from ``min(in, out) / 2`` Hz (the
lower Nyquist) attenuated by at least ``stopband_db``, measured on the
quantised table.  The length is the shortest meeting that, with its centre on
a whole output sample, so the delay is exactly ``delay_samples`` output
samples: output sample ``m`` is the input signal at time
``(m - delay_samples) / out_rate_hz`` (for a minimum-phase recipe, ``delay_samples``
is its group delay at 0 Hz rounded up, and higher frequencies lag a little
more: see :data:`QUALITIES`).  With ``"telephony"`` that is 37
samples (2.3125 ms) for 8 -> 16 kHz, 19 samples (2.375 ms) for 24 -> 8 kHz, and
0.4-2.75 ms for any pair (``delay_ms``).  The output therefore starts with
``delay_samples`` of filter start-up, and ``flush`` returns the last
``delay_samples`` still inside the filter.

Arithmetic.  Q14 int16 coefficients, exact int32 accumulation, rounding half
away from zero and saturation to int16 (see :mod:`engine.reference.polyphase`,
which the native kernel matches bit for bit).  Q14 is the most precision a
single int32 accumulator allows (a branch's ``sum(abs(c))`` is about twice its
gain), and one int32 accumulator is what lets the compiler use 8-wide int16
multiply-adds; coefficient rounding then limits the stopband to about 60-70 dB,
which the design loop checks.  Each branch's coefficients sum
to exactly ``1 << 14``, so a constant input gives the same constant out and
digital silence stays silent.  Chunked processing equals one-shot processing
of the concatenated input, sample for sample, for any chunking.

Hot path: ``process_into(pcm, out) -> n`` writes into a caller-owned int16
buffer with room for ``max_output(len(pcm))`` samples and allocates nothing
but its returned int.  Equal rates pass samples through unchanged (delay 0).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, TypeAlias

import numpy as np
import numpy.typing as npt

from engine._polyphase import COEF_BITS, MAX_BRANCH_ABS_SUM, PolyphaseKernel
from engine.format import check_supported_rate

if TYPE_CHECKING:
    from engine._polyphase import BufferLike

PcmChunk: TypeAlias = bytes | bytearray | memoryview | npt.NDArray[np.int16]
"""Mono int16 PCM: a 1-D C-contiguous int16 buffer, or little-endian int16 bytes."""


@dataclass(frozen=True, slots=True)
class Recipe:
    """Filter targets, as fractions of ``min(in_rate_hz, out_rate_hz)``."""

    cutoff: float
    """Centre of the transition band (the sinc's -6 dB point)."""
    stop_edge: float
    """Start of the stopband."""
    stopband_db: float
    """Least attenuation anywhere in the stopband, dB."""
    minimum_phase: bool = False
    """Use the minimum-phase filter of the same magnitude response: most of the
    delay goes, but it is no longer the same at every frequency."""


QUALITIES: Final[dict[str, Recipe]] = {
    # Flat within 0.01 dB to 0.40 x the lower rate (3.2 kHz at 8 kHz), -1 dB at
    # 0.425 (3.4 kHz), -3 dB at 0.44, -6 dB at 0.45; at least 60 dB down from the
    # lower Nyquist on.  Delay 0.4-2.75 ms (about 18 / min_rate_hz seconds).
    "telephony": Recipe(cutoff=0.45, stop_edge=0.5, stopband_db=60.0),
    # The same magnitude response, minimum phase: between 8 and 48 kHz the group
    # delay is about 0.25 ms up to 1 kHz, 0.6 ms at 3 kHz and 1.2 ms at 3.4 kHz
    # (linear phase: 2.3-2.75 ms throughout).  For interactive edges where every
    # ms of round trip counts and speech's phase does not (the WebRTC edge).
    "lowdelay": Recipe(cutoff=0.45, stop_edge=0.5, stopband_db=60.0, minimum_phase=True),
}
"""Filter recipes by name."""

_ONE: Final = 1 << COEF_BITS
_MAX_DELAY_SAMPLES: Final = 4096


@dataclass(frozen=True, slots=True, eq=False)
class PolyphaseDesign:
    """A designed filter as the kernel uses it (shared, immutable).

    ``coefficients[p]`` is branch ``p``: ``taps`` Q14 int16 coefficients, oldest
    input sample first.  ``filter_length`` is the prototype's length in samples
    at ``in_rate_hz * up``; ``delay_samples`` its group delay in output samples.
    """

    in_rate_hz: int
    out_rate_hz: int
    quality: str
    up: int
    down: int
    taps: int
    filter_length: int
    delay_samples: int
    stopband_db: float
    coefficients: npt.NDArray[np.int16]

    @property
    def delay_ms(self) -> float:
        """Group delay in ms: ``delay_samples * 1000 / out_rate_hz``."""
        return self.delay_samples * 1000 / self.out_rate_hz


def check_quality(quality: object) -> str:
    """``quality`` if it names a recipe in :data:`QUALITIES`, else ``ValueError``."""
    if not isinstance(quality, str) or quality not in QUALITIES:
        raise ValueError(f"quality must be one of {', '.join(QUALITIES)}, got {quality!r}")
    return quality


def design_filter(in_rate_hz: int, out_rate_hz: int, quality: str = "telephony") -> PolyphaseDesign:
    """The filter for this configuration; designed on first use, then cached."""
    return _design(
        check_supported_rate("in_rate_hz", in_rate_hz),
        check_supported_rate("out_rate_hz", out_rate_hz),
        check_quality(quality),
    )


@functools.cache
def _design(in_rate_hz: int, out_rate_hz: int, quality: str) -> PolyphaseDesign:
    common = math.gcd(in_rate_hz, out_rate_hz)
    up, down = out_rate_hz // common, in_rate_hz // common
    if up == down:  # a one-tap identity: samples pass through unchanged
        table = np.array([[_ONE]], dtype=np.int16)
        length, delay, attenuation = 1, 0, math.inf
    else:
        table, length, delay, attenuation = _kaiser_design(
            QUALITIES[quality], up, down, in_rate_hz * up, min(in_rate_hz, out_rate_hz)
        )
    coefficients = np.ascontiguousarray(table, dtype=np.int16)
    coefficients.flags.writeable = False
    return PolyphaseDesign(
        in_rate_hz=in_rate_hz,
        out_rate_hz=out_rate_hz,
        quality=quality,
        up=up,
        down=down,
        taps=coefficients.shape[1],
        filter_length=length,
        delay_samples=delay,
        stopband_db=attenuation,
        coefficients=coefficients,
    )


def _kaiser_design(
    recipe: Recipe, up: int, down: int, up_rate_hz: int, low_rate_hz: int
) -> tuple[npt.NDArray[np.int16], int, int, float]:
    """(table, prototype length, delay in output samples, stopband dB) of the
    shortest Kaiser-windowed sinc whose quantised table meets ``recipe``."""
    cutoff = recipe.cutoff * low_rate_hz / up_rate_hz  # cycles per up-rate sample
    stop = recipe.stop_edge * low_rate_hz / up_rate_hz
    beta = 0.1102 * (recipe.stopband_db - 8.7)
    # Kaiser's length estimate, then grow until the quantised table measures up.
    estimate = (recipe.stopband_db - 7.95) / (2.285 * 2 * math.pi * 2 * (stop - cutoff))
    delay = max(1, math.ceil(estimate / (2 * down)))
    while delay <= _MAX_DELAY_SAMPLES:
        length = 2 * delay * down + 1  # centred on output sample `delay`
        n = np.arange(length) - delay * down
        prototype = 2 * cutoff * np.sinc(2 * cutoff * n) * np.kaiser(length, beta)
        if recipe.minimum_phase:
            prototype = _minimum_phase(prototype)
        table = _quantise(prototype, up)
        attenuation = _stopband_db(table, length, stop)
        if attenuation >= recipe.stopband_db:
            if recipe.minimum_phase:
                delay = max(1, math.ceil(_dc_group_delay(table, length) / down))
            return table, length, delay, attenuation
        delay += 1
    raise ValueError(f"no filter of up to {_MAX_DELAY_SAMPLES} samples delay meets {recipe}")


def _minimum_phase(prototype: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """The minimum-phase filter with ``prototype``'s magnitude response, same length.

    Homomorphic method: fold the real cepstrum of ``log |H|`` onto positive
    quefrencies and exponentiate.  ``|H|`` is floored 140 dB down so the
    logarithm is finite; the energy of the result sits at its start, so
    truncating to the original length costs far less than the stopband.
    """
    n_fft = 1 << max(16, math.ceil(math.log2(16 * len(prototype))))
    magnitude = np.abs(np.fft.fft(prototype, n_fft))
    cepstrum = np.fft.ifft(np.log(np.maximum(magnitude, magnitude.max() * 1e-7))).real
    folded = np.zeros(n_fft)
    half = n_fft // 2
    folded[0] = cepstrum[0]
    folded[1:half] = 2 * cepstrum[1:half]
    folded[half] = cepstrum[half]
    return np.fft.ifft(np.exp(np.fft.fft(folded))).real[: len(prototype)]


def _dc_group_delay(table: npt.NDArray[np.int16], length: int) -> float:
    """Group delay at 0 Hz of the quantised prototype, in up-rate samples."""
    prototype = table[:, ::-1].T.reshape(-1)[:length].astype(np.float64)  # undo _quantise
    return float((np.arange(length) * prototype).sum() / prototype.sum())


def _quantise(prototype: npt.NDArray[np.float64], up: int) -> npt.NDArray[np.int16]:
    """Split ``prototype`` into ``up`` Q14 branches (oldest tap first), each
    summing to exactly ``1 << 14``: scaled, then rounded by largest remainder."""
    taps = -(-len(prototype) // up)
    taps = -(-taps // 8) * 8  # whole SIMD vectors; the extra taps are zero
    padded = np.zeros(taps * up)
    padded[: len(prototype)] = prototype
    # branches[p][j] multiplies x[i - j] (newest first); reverse to oldest first.
    branches = padded.reshape(taps, up).T[:, ::-1]
    scaled = branches * (_ONE / branches.sum(axis=1, keepdims=True))
    table = np.floor(scaled)
    remainder = scaled - table
    for p in range(up):
        missing = _ONE - int(table[p].sum())
        order = np.argsort(-remainder[p], kind="stable")
        table[p, order[:missing]] += 1
    out: npt.NDArray[np.int16] = table.astype(np.int16)
    if np.abs(out.astype(np.int64)).sum(axis=1).max() > MAX_BRANCH_ABS_SUM:
        raise ValueError("filter table could overflow the int32 accumulator")
    return out


def _stopband_db(table: npt.NDArray[np.int16], length: int, stop: float) -> float:
    """Least attenuation (dB, relative to DC) of the quantised prototype at
    frequencies >= ``stop`` cycles per up-rate sample."""
    prototype = table[:, ::-1].T.reshape(-1)[:length].astype(np.float64)  # undo _quantise
    n_fft = 1 << max(16, math.ceil(math.log2(8 * length)))
    response = np.abs(np.fft.rfft(prototype, n_fft))
    band = response[math.ceil(stop * n_fft) :]
    return float(20 * math.log10(response[0] / max(float(band.max()), 1e-300)))


def _n_samples(pcm: PcmChunk) -> int:
    if isinstance(pcm, np.ndarray):
        return pcm.nbytes // 2
    try:
        return memoryview(pcm).nbytes // 2
    except TypeError:
        raise ValueError(
            f"pcm must be a buffer of int16 samples, got {type(pcm).__name__}"
        ) from None


class PolyphaseResampler:
    """Resamples one stream of mono int16 PCM from ``in_rate_hz`` to ``out_rate_hz``.

    ``quality`` names a recipe in :data:`QUALITIES`.  Cheap to create: the
    filter table is shared per configuration; each resampler owns only its
    history (``taps - 1`` samples) and phase.
    """

    __slots__ = ("_design", "_kernel")

    def __init__(self, in_rate_hz: int, out_rate_hz: int, *, quality: str = "telephony") -> None:
        self._design = design_filter(in_rate_hz, out_rate_hz, quality)
        d = self._design
        flat = d.coefficients.reshape(-1)
        self._kernel = PolyphaseKernel(flat, d.up, d.down, d.taps, d.delay_samples)

    @property
    def in_rate_hz(self) -> int:
        return self._design.in_rate_hz

    @property
    def out_rate_hz(self) -> int:
        return self._design.out_rate_hz

    @property
    def quality(self) -> str:
        return self._design.quality

    @property
    def design(self) -> PolyphaseDesign:
        """The shared filter this resampler runs."""
        return self._design

    @property
    def taps(self) -> int:
        """Input samples read (and multiply-adds done) per output sample."""
        return self._design.taps

    @property
    def delay_samples(self) -> int:
        """Group delay in output samples; also what :meth:`flush` returns."""
        return self._design.delay_samples

    @property
    def delay_ms(self) -> float:
        """Group delay in ms (``delay_samples / out_rate_hz``); 0 for equal rates."""
        return self._design.delay_ms

    def max_output(self, n_in: int) -> int:
        """Room ``out`` needs for ``n_in`` input samples: ``ceil(n_in * up / down)``."""
        return int(self._kernel.max_output(n_in))

    def process_into(self, pcm: PcmChunk, out: BufferLike) -> int:
        """Resample the next chunk ``pcm`` into ``out``; return the samples written.

        ``out`` is a writable 1-D C-contiguous int16 buffer with room for
        ``max_output(n_in)`` samples, not overlapping ``pcm``.  Over the stream
        the total written after ``n_in`` samples is exactly ``ceil(n_in * up / down)``.
        """
        return self._kernel.process_into(pcm, out)

    def process(self, pcm: PcmChunk) -> npt.NDArray[np.int16]:
        """Like :meth:`process_into` but returns a new array (allocates)."""
        out = np.empty(self.max_output(_n_samples(pcm)), dtype=np.int16)
        return out[: self._kernel.process_into(pcm, out)]

    def flush_into(self, out: BufferLike) -> int:
        """End the stream: write the ``delay_samples`` outputs still inside the filter
        (as if zeros followed), then :meth:`reset`; return ``delay_samples``."""
        return self._kernel.flush_into(out)

    def flush(self) -> npt.NDArray[np.int16]:
        """Like :meth:`flush_into` but returns a new array (allocates)."""
        out = np.empty(self.delay_samples, dtype=np.int16)
        self._kernel.flush_into(out)
        return out

    def reset(self) -> None:
        """Drop the history and phase (e.g. on barge-in); the next chunk starts afresh."""
        self._kernel.reset()
