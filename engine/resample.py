"""Streaming resampler for mono int16 PCM between the engine's sample rates.

:class:`StreamResampler` wraps one ``soxr.ResampleStream`` per audio stream.
Feed it chunks of any size with :meth:`~StreamResampler.process`; at the end
of a segment call :meth:`~StreamResampler.flush` to get the tail.  Concatenated,
the outputs equal a one-shot resampling of the concatenated input exactly
(same samples, same length: ``round(n_in * out_rate / in_rate)`` within one).

Delay.  soxr aligns its output with its input (output sample ``i`` is at
time ``i / out_rate_hz``: the filter delay is compensated), but it filters in
blocks, so it holds output back and releases it in bursts: a 20 ms chunk in
may give nothing, or several tens of ms out.  :attr:`~StreamResampler.delay_ms`
bounds that hold-back for the rate pair and quality (measured once per
configuration by :func:`max_holdback_samples`): once input up to time ``t``
has been given, all output up to ``t - delay_ms`` has been returned.
:attr:`~StreamResampler.pending_ms` is what is held back right now.  With
``"HQ"`` it is about 37-42 ms between 16/22.05/24/44.1/48 kHz, 74 ms for
8 <-> 24 kHz, 117 ms for 8 <-> 16 kHz and up to 178 ms for 8 -> 48 kHz; lower
qualities hold back less (``"QQ"``, a cubic interpolator, about 1 ms) at the
price of aliasing.  Put a frame buffer after the resampler to get even frames.

No dither.  soxr dithers int16 output, which turns digital silence into
+-1 noise; this wrapper runs soxr on int32 samples (soxr rounds, no dither)
and saturates to int16 itself, so silence stays silent and results are
deterministic.

Allocation.  soxr's Python API returns a new array per call, so ``process``
allocates its result (and two small temporaries); there is no ``process_into``
because it could not avoid that.  Everything else (rates, validation tables)
is fixed at construction.
"""

from __future__ import annotations

import functools
from typing import Final, TypeAlias

import numpy as np
import numpy.typing as npt
import soxr

from engine.format import check_supported_rate

PcmChunk: TypeAlias = bytes | bytearray | memoryview | npt.NDArray[np.int16]
"""Mono int16 PCM: little-endian bytes, or a 1-D numpy ``int16`` array."""

QUALITIES: Final = ("QQ", "LQ", "MQ", "HQ", "VHQ")
"""soxr quality recipes, quickest first."""

_INT16_MIN: Final = np.int32(-32768)
_INT16_MAX: Final = np.int32(32767)
_EMPTY: Final = np.zeros(0, dtype=np.int16)
_EMPTY.flags.writeable = False
_EMPTY32: Final = np.zeros(0, dtype=np.int32)
_HOLDBACK_MARGIN: Final = 1.02


def as_int16(pcm: PcmChunk) -> npt.NDArray[np.int16]:
    """``pcm`` as a 1-D int16 array (a view when possible); ``ValueError`` if it is not
    mono int16 PCM (odd byte count, other dtype, more than one dimension)."""
    if isinstance(pcm, np.ndarray):
        if pcm.dtype != np.int16 or pcm.dtype.byteorder == ">":
            raise ValueError(f"PCM must be int16, got dtype {pcm.dtype}")
        if pcm.ndim != 1:
            raise ValueError(f"PCM must be 1-D (mono), got shape {pcm.shape}")
        return pcm
    if isinstance(pcm, (bytes, bytearray, memoryview)):
        view = memoryview(pcm)
        if view.format == "h" and view.ndim == 1:
            return np.asarray(view)
        if view.itemsize != 1:
            raise ValueError(f"PCM buffer must hold bytes or int16, got format {view.format!r}")
        if view.nbytes % 2:
            raise ValueError(f"{view.nbytes} bytes is not a whole number of 16-bit samples")
        return np.frombuffer(view, dtype="<i2")
    raise ValueError(f"PCM must be bytes-like or an int16 numpy array, got {type(pcm).__name__}")


def _saturate(y: npt.NDArray[np.int32]) -> npt.NDArray[np.int16]:
    np.maximum(y, _INT16_MIN, out=y)
    np.minimum(y, _INT16_MAX, out=y)
    return y.astype(np.int16)


@functools.cache
def max_holdback_samples(in_rate_hz: int, out_rate_hz: int, quality: str) -> float:
    """Upper bound, in output samples, on what soxr holds back for this configuration.

    Measured by streaming 3 s of input in 1 ms steps through a scratch stream
    (soxr's output count depends only on the cumulative input count, not on the
    chunking), plus one step to cover positions between steps, plus 2 % for the
    slow creep a few pairs show over tens of seconds (8 kHz to 44.1/48 kHz gain
    about 2 ms by 40 s, then level off).  Takes a few ms; cached per configuration.
    """
    step = max(1, in_rate_hz // 1000)
    ratio = out_rate_hz / in_rate_hz
    stream = soxr.ResampleStream(in_rate_hz, out_rate_hz, 1, dtype="int32", quality=quality)
    chunk = np.zeros(step, dtype=np.int32)
    n_in = n_out = 0
    worst = 0.0
    for _ in range(3 * in_rate_hz // step):
        n_out += len(stream.resample_chunk(chunk))
        n_in += step
        worst = max(worst, n_in * ratio - n_out)
    return (worst + step * ratio) * _HOLDBACK_MARGIN


class StreamResampler:
    """Resamples one stream of mono int16 PCM from ``in_rate_hz`` to ``out_rate_hz``.

    ``quality`` is a soxr recipe (see :data:`QUALITIES`).  Equal rates pass the
    input through untouched, with no delay.
    """

    __slots__ = ("_delay_ms", "_in_rate_hz", "_out_rate_hz", "_quality", "_stream")

    def __init__(self, in_rate_hz: int, out_rate_hz: int, quality: str = "HQ") -> None:
        check_supported_rate("in_rate_hz", in_rate_hz)
        check_supported_rate("out_rate_hz", out_rate_hz)
        if quality not in QUALITIES:
            raise ValueError(f"quality must be one of {', '.join(QUALITIES)}, got {quality!r}")
        self._in_rate_hz = in_rate_hz
        self._out_rate_hz = out_rate_hz
        self._quality = quality
        self._stream: soxr.ResampleStream | None = None
        self._delay_ms = 0.0
        if in_rate_hz != out_rate_hz:
            self._stream = soxr.ResampleStream(
                in_rate_hz, out_rate_hz, 1, dtype="int32", quality=quality
            )
            holdback = max_holdback_samples(in_rate_hz, out_rate_hz, quality)
            self._delay_ms = holdback * 1000 / out_rate_hz

    @property
    def in_rate_hz(self) -> int:
        return self._in_rate_hz

    @property
    def out_rate_hz(self) -> int:
        return self._out_rate_hz

    @property
    def quality(self) -> str:
        return self._quality

    @property
    def delay_ms(self) -> float:
        """Most output (ms) ever held back behind the input; 0 for a passthrough."""
        return self._delay_ms

    @property
    def pending_ms(self) -> float:
        """Output (ms) held back right now; ``flush`` returns it."""
        if self._stream is None:
            return 0.0
        return float(self._stream.delay()) * 1000 / self._out_rate_hz

    def process(self, pcm: PcmChunk) -> npt.NDArray[np.int16]:
        """Resample the next chunk of the stream (any length, even empty).

        Returns the output soxr releases for it: possibly empty, possibly
        longer than the chunk's share (see the module docstring on delay).  A
        passthrough returns ``pcm`` itself as an int16 array (read-only if
        ``pcm`` was ``bytes``).
        """
        samples = as_int16(pcm)
        if self._stream is None:
            return samples
        return _saturate(self._stream.resample_chunk(samples.astype(np.int32)))

    def flush(self) -> npt.NDArray[np.int16]:
        """End the segment: return everything held back, then start afresh.

        After ``flush`` the resampler is ready for an unrelated new segment
        (its filter history is cleared).
        """
        if self._stream is None:
            return _EMPTY
        tail = _saturate(self._stream.resample_chunk(_EMPTY32, last=True))
        self._stream.clear()
        return tail

    def reset(self) -> None:
        """Drop what is held back and the filter history (e.g. on barge-in)."""
        if self._stream is not None:
            self._stream.clear()
