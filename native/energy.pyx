# cython: language_level=3
"""Per-frame energy of int16 PCM: sum of squares, peak, and an energy gate.

Each kernel has two entry points: ``*_i16`` reads native-endian int16 samples
(numpy ``int16`` arrays, ``memoryview``s of format ``h``) and ``*_le`` reads
little-endian int16 PCM packed in a byte buffer (``bytes``, ``bytearray``,
``memoryview``s of format ``B``).  The ``*_le`` kernels read ``len // 2`` whole
samples, so a stray odd byte is never read past; :mod:`engine.energy` refuses
odd lengths before getting here.

Sums are exact 64-bit integers: one square is at most 2**30, so any buffer
shorter than 2**33 samples cannot overflow (the Python boundary caps frames
far below that).  The pure-Python specification is
:mod:`engine.reference.energy`.
"""

cimport cython
from libc.stdint cimport int16_t, int64_t


cdef inline int _from_le(int lo, int hi) noexcept nogil:
    # The int16 whose little-endian bytes are (lo, hi), sign-extended without
    # relying on implementation-defined narrowing conversions.
    return (lo | (hi << 8)) - ((hi & 0x80) << 9)


@cython.boundscheck(False)
@cython.wraparound(False)
def sum_squares_i16(const int16_t[::1] x) -> int:
    """Sum of x[i]**2 over all samples of an int16 buffer."""
    cdef Py_ssize_t i
    cdef Py_ssize_t n = x.shape[0]
    cdef int64_t acc = 0
    cdef int64_t s
    for i in range(n):  # 0 <= i < n == len(x)
        s = x[i]
        acc += s * s
    return acc


@cython.boundscheck(False)
@cython.wraparound(False)
def sum_squares_le(const unsigned char[::1] b) -> int:
    """Sum of squares of the little-endian int16 samples packed in ``b``."""
    cdef Py_ssize_t i
    cdef Py_ssize_t n = b.shape[0] // 2
    cdef int64_t acc = 0
    cdef int64_t s
    for i in range(n):  # 2*i + 1 <= 2*n - 1 < len(b)
        s = _from_le(b[2 * i], b[2 * i + 1])
        acc += s * s
    return acc


@cython.boundscheck(False)
@cython.wraparound(False)
def peak_i16(const int16_t[::1] x) -> int:
    """Largest |x[i]| of an int16 buffer (0..32768; 0 when empty)."""
    cdef Py_ssize_t i
    cdef Py_ssize_t n = x.shape[0]
    cdef int peak = 0
    cdef int s
    for i in range(n):  # 0 <= i < n == len(x)
        s = x[i]
        if s < 0:
            s = -s
        if s > peak:
            peak = s
    return peak


@cython.boundscheck(False)
@cython.wraparound(False)
def peak_le(const unsigned char[::1] b) -> int:
    """Largest |sample| of the little-endian int16 samples packed in ``b``."""
    cdef Py_ssize_t i
    cdef Py_ssize_t n = b.shape[0] // 2
    cdef int peak = 0
    cdef int s
    for i in range(n):  # 2*i + 1 < len(b)
        s = _from_le(b[2 * i], b[2 * i + 1])
        if s < 0:
            s = -s
        if s > peak:
            peak = s
    return peak


@cython.boundscheck(False)
@cython.wraparound(False)
def sum_squares_at_least_i16(const int16_t[::1] x, int64_t threshold) -> bool:
    """Whether the sum of squares of ``x`` is >= ``threshold``; returns a constant bool."""
    cdef Py_ssize_t i
    cdef Py_ssize_t n = x.shape[0]
    cdef int64_t acc = 0
    cdef int64_t s
    for i in range(n):  # 0 <= i < n == len(x)
        s = x[i]
        acc += s * s
    return acc >= threshold


@cython.boundscheck(False)
@cython.wraparound(False)
def sum_squares_at_least_le(const unsigned char[::1] b, int64_t threshold) -> bool:
    """Whether the sum of squares of the LE int16 samples in ``b`` is >= ``threshold``."""
    cdef Py_ssize_t i
    cdef Py_ssize_t n = b.shape[0] // 2
    cdef int64_t acc = 0
    cdef int64_t s
    for i in range(n):  # 2*i + 1 < len(b)
        s = _from_le(b[2 * i], b[2 * i + 1])
        acc += s * s
    return acc >= threshold
