# cython: language_level=3
"""Polyphase FIR resampling kernel for mono int16 PCM (rational ratio ``up/down``).

The reference specification is ``engine/reference/polyphase.py``; this module
must produce exactly the same samples for any chunking.  The filter design
(``engine/polyphase.py``) hands over a table of ``up`` branches of ``taps``
int16 coefficients in Q14 (``1 << 14`` is a gain of 1); branch ``p`` is stored
oldest-tap first, so output sample ``m`` with ``t = m * down``, ``i = t // up``
and ``p = t % up`` is::

    acc = sum(x[i - taps + 1 + k] * table[p * taps + k] for k in range(taps))
    y[m] = saturate(round_half_away_from_zero(acc / 2**14))

with ``x[j] = 0`` for ``j < 0`` (the stream starts from silence).  Output ``m``
needs input up to ``x[i]`` only, so after ``n_in`` input samples exactly
``ceil(n_in * up / down)`` outputs exist: the kernel holds nothing back.

Arithmetic is int32 and exact: the constructor refuses a table unless every
branch has ``sum(abs(c)) <= 65535``, so ``|acc| <= 65535 * 32768 + 8192 < 2**31``
(also for every partial sum, in any order), and the native loop gives the same
integers as the Python reference whatever the compiler vectorises.

Buffers.  ``_buf`` holds ``taps - 1`` samples of history followed by room for
one block of ``BLOCK`` new samples.  Input is consumed one block at a time:
copied in after the history, every output whose newest sample ``i`` (relative
to the block start) is ``< b`` is computed from ``_buf[i : i + taps]``, and the
last ``taps - 1`` samples move to the front.  ``0 <= i < b <= BLOCK`` gives
``i + taps <= BLOCK + taps - 1``, the buffer's length, so every read is in range.
Writes to ``out`` are bounded by ``cap``, which the callers check against the
buffer's length.  Nothing is allocated per call except the returned int.
"""

cimport cython
from cpython.buffer cimport PyBuffer_Release
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.string cimport memcpy, memmove, memset

from pybuffer cimport PCM_INT16, PCM_LE_BYTES, acquire_int16, acquire_pcm

cdef enum:
    _COEF_BITS = 14
    _ROUND_HALF = 1 << 13
    _BLOCK = 2048
    _KIND_ZEROS = 2

COEF_BITS = _COEF_BITS
"""Fractional bits of the coefficients: ``1 << COEF_BITS`` is a gain of 1."""

BLOCK_SAMPLES = _BLOCK
"""Input samples processed per internal block (the history buffer's new-sample room)."""

MAX_BRANCH_ABS_SUM = 65535
"""Largest ``sum(abs(c))`` of one branch: keeps every int32 accumulator exact."""

MAX_RATIO_TERM = 4096
"""Largest ``up`` or ``down`` accepted."""

MAX_TAPS = 4096
"""Largest number of taps per branch accepted."""

MAX_TAIL_SAMPLES = 1 << 20
"""Largest flush tail accepted (output samples)."""

MAX_CHUNK_SAMPLES = 1 << 30
"""Largest input chunk accepted by one call (samples); keeps counts in int64."""


cdef int _check_int(object value, str name, long long low, long long high) except -1:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ValueError(f"{name} must be an int in {low}..{high}, got {value!r}")
    return 0


# ------------------------------------------------------------------ the loop

@cython.boundscheck(False)
@cython.wraparound(False)
cdef inline short _output(const short* x, const short* h, Py_ssize_t taps) noexcept nogil:
    """One output sample: Q14 dot product of ``taps`` samples, rounded, saturated.

    The table check bounds ``|acc|`` below ``2**31 - 8192`` (module docstring).
    """
    cdef int acc = 0
    cdef int sign
    cdef Py_ssize_t k
    for k in range(taps):
        acc += x[k] * h[k]
    # Branch-free (speech changes sign too often for a predictor): with
    # sign = 0 or -1, (v ^ sign) - sign is v or -v.
    sign = -(acc < 0)
    acc = ((((acc ^ sign) - sign) + _ROUND_HALF) >> _COEF_BITS ^ sign) - sign
    acc = 32767 if acc > 32767 else acc
    acc = -32768 if acc < -32768 else acc
    return <short>acc


cdef class PolyphaseKernel:
    """Streaming state of one resampled stream over a shared coefficient table.

    ``table`` is a C-contiguous int16 buffer of ``up * taps`` Q14 coefficients
    (branch-major, oldest tap first); the kernel keeps a read-only export of it
    for its lifetime, so many kernels share one table.  ``tail`` is how many
    output samples :meth:`flush_into` emits (the filter's delay in output samples).
    """

    cdef Py_buffer _table_view
    cdef bint _has_table
    cdef const short* _coefs
    cdef short* _buf            # taps - 1 history samples, then _BLOCK new ones
    cdef Py_ssize_t _taps
    cdef Py_ssize_t _tail
    cdef int _up
    cdef int _down
    cdef int _step_whole        # down // up: input samples per output, whole part
    cdef int _step_frac         # down % up: ... and fractional part, in 1/up
    cdef Py_ssize_t _next       # newest input sample of the next output, relative
                                # to the first sample of the next chunk (>= 0)
    cdef int _phase             # branch of the next output, 0 <= _phase < up

    def __cinit__(self, table, up, down, taps, tail):
        cdef Py_ssize_t p, k
        cdef long long branch_sum
        cdef const short* row
        self._has_table = False
        self._buf = NULL
        _check_int(up, "up", 1, MAX_RATIO_TERM)
        _check_int(down, "down", 1, MAX_RATIO_TERM)
        _check_int(taps, "taps", 1, MAX_TAPS)
        _check_int(tail, "tail", 0, MAX_TAIL_SAMPLES)
        self._up = up
        self._down = down
        self._taps = taps
        self._tail = tail
        self._step_whole = self._down // self._up
        self._step_frac = self._down % self._up
        acquire_int16(table, &self._table_view, False, "table")
        self._has_table = True
        if self._table_view.len // 2 != self._up * self._taps:
            raise ValueError(
                f"table holds {self._table_view.len // 2} coefficients, "
                f"expected up * taps = {self._up * self._taps}"
            )
        self._coefs = <const short*>self._table_view.buf
        for p in range(self._up):
            row = self._coefs + p * self._taps
            branch_sum = 0
            for k in range(self._taps):
                branch_sum += row[k] if row[k] >= 0 else -<long long>row[k]
            if branch_sum > MAX_BRANCH_ABS_SUM:
                raise ValueError(
                    f"table branch {p} has sum(abs(c)) = {branch_sum}, more than "
                    f"{MAX_BRANCH_ABS_SUM}: int32 accumulation could overflow"
                )
        self._buf = <short*>PyMem_Malloc((self._taps - 1 + _BLOCK) * sizeof(short))
        if self._buf == NULL:
            raise MemoryError()
        self.reset()

    def __dealloc__(self):
        if self._buf != NULL:
            PyMem_Free(self._buf)
            self._buf = NULL
        if self._has_table:
            PyBuffer_Release(&self._table_view)
            self._has_table = False

    @property
    def up(self):
        """Interpolation factor L of the ratio ``up / down`` (reduced)."""
        return self._up

    @property
    def down(self):
        """Decimation factor M of the ratio ``up / down`` (reduced)."""
        return self._down

    @property
    def taps(self):
        """Coefficients per branch: input samples read for each output sample."""
        return self._taps

    @property
    def tail(self):
        """Output samples that :meth:`flush_into` emits."""
        return self._tail

    cdef inline Py_ssize_t _max_output(self, Py_ssize_t n_in) noexcept:
        return (n_in * self._up + self._down - 1) // self._down

    def max_output(self, n_in):
        """Most output samples ``n_in`` input samples can give: ``ceil(n_in * up / down)``."""
        _check_int(n_in, "n_in", 0, MAX_CHUNK_SAMPLES)
        return self._max_output(n_in)

    def reset(self):
        """Forget the history and the phase: the next input starts a new stream."""
        memset(self._buf, 0, (self._taps - 1 + _BLOCK) * sizeof(short))
        self._next = 0
        self._phase = 0

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef Py_ssize_t _run(
        self, int kind, const unsigned char* src, Py_ssize_t n, short* out, Py_ssize_t cap
    ) noexcept:
        """Consume ``n`` input samples (int16, LE byte pairs or zeros); write at most
        ``cap`` outputs (``out`` has room for ``cap``); return how many were written."""
        cdef Py_ssize_t hist = self._taps - 1
        cdef Py_ssize_t taps = self._taps
        cdef short* buf = self._buf
        cdef short* fresh = buf + hist
        cdef const short* coefs = self._coefs
        cdef Py_ssize_t i = self._next
        cdef int p = self._phase
        cdef int up = self._up
        cdef int whole = self._step_whole
        cdef int frac = self._step_frac
        cdef Py_ssize_t pos = 0
        cdef Py_ssize_t produced = 0
        cdef Py_ssize_t b, k
        cdef const unsigned char* pairs
        while pos < n and produced < cap:
            b = n - pos
            if b > _BLOCK:
                b = _BLOCK
            if kind == PCM_INT16:
                memcpy(fresh, src + 2 * pos, b * sizeof(short))
            elif kind == PCM_LE_BYTES:
                pairs = src + 2 * pos
                for k in range(b):
                    fresh[k] = <short>(<unsigned short>(pairs[2 * k] | (pairs[2 * k + 1] << 8)))
            else:
                memset(fresh, 0, b * sizeof(short))
            # 0 <= i < b: _buf[i : i + taps] is in range (module docstring).
            while i < b and produced < cap:
                out[produced] = _output(buf + i, coefs + p * taps, taps)
                produced += 1
                i += whole
                p += frac
                if p >= up:
                    p -= up
                    i += 1
            memmove(buf, buf + b, hist * sizeof(short))
            i -= b
            pos += b
        self._next = i
        self._phase = p
        return produced

    def process_into(self, pcm, out):
        """Resample the next chunk ``pcm`` (int16 buffer or LE int16 bytes) into int16
        ``out``; return the samples written (``ceil`` count, see the module docstring).

        ``out`` needs room for ``max_output(n_in)`` samples and must not overlap ``pcm``.
        """
        cdef Py_buffer s
        cdef Py_buffer o
        cdef Py_ssize_t n = 0
        cdef Py_ssize_t need
        cdef int kind = acquire_pcm(pcm, &s, &n)
        try:
            acquire_int16(out, &o, True, "out")
            try:
                if n > MAX_CHUNK_SAMPLES:
                    raise ValueError(
                        f"pcm holds {n} samples, more than the {MAX_CHUNK_SAMPLES} allowed"
                    )
                need = self._max_output(n)
                if o.len // 2 < need:
                    raise ValueError(
                        f"out is too small: room for {o.len // 2} samples, "
                        f"need max_output({n}) = {need}"
                    )
                return self._run(kind, <const unsigned char*>s.buf, n, <short*>o.buf, need)
            finally:
                PyBuffer_Release(&o)
        finally:
            PyBuffer_Release(&s)

    def flush_into(self, out):
        """Write the ``tail`` output samples that zeros after the input would give,
        then :meth:`reset`; return ``tail``.  ``out`` needs room for ``tail`` samples."""
        cdef Py_buffer o
        cdef Py_ssize_t zeros
        cdef Py_ssize_t produced
        acquire_int16(out, &o, True, "out")
        try:
            if o.len // 2 < self._tail:
                raise ValueError(
                    f"out is too small: room for {o.len // 2} samples, need tail = {self._tail}"
                )
            # ceil(tail * down / up) zeros always give at least tail outputs.
            zeros = (self._tail * self._down + self._up - 1) // self._up
            produced = self._run(_KIND_ZEROS, NULL, zeros, <short*>o.buf, self._tail)
        finally:
            PyBuffer_Release(&o)
        self.reset()
        return produced
