# cython: language_level=3
"""Fixed-frame ring buffer: chunks of any size in, frames of ``frame_bytes`` out.

The reference specification is ``engine/reference/framebuf.py``; this module
must behave exactly like it.  All sizes are in bytes.

Invariants kept by every method (they make the raw ``memcpy`` calls safe):

* ``0 <= _head < _capacity`` and ``0 <= _size <= _capacity``;
* ``_capacity`` is a positive multiple of ``_frame_bytes``, which is a positive
  multiple of ``_sample_bytes``;
* the queued bytes are ``_ring[_head:]`` followed by ``_ring[:...]`` (wrapping),
  ``_size`` of them in total.
"""

from cpython.buffer cimport (
    PyBUF_C_CONTIGUOUS,
    PyBUF_FORMAT,
    PyBUF_WRITABLE,
    PyBuffer_Release,
    PyObject_GetBuffer,
)
from libc.string cimport memcpy, strcmp

# Formats accepted for 2-byte items: native/little-endian int16 (the internal PCM).
# Any 1-byte item format is taken as raw bytes.
cdef const char* _INT16_FORMATS[3]
_INT16_FORMATS[0] = b"h"
_INT16_FORMATS[1] = b"<h"
_INT16_FORMATS[2] = b"=h"


cdef int _check_format(Py_buffer* view, Py_ssize_t sample_bytes) except -1:
    """Refuse item types other than bytes, or int16 for 2-byte samples."""
    if view.itemsize == 1:
        return 0
    if view.itemsize == 2 and sample_bytes == 2 and view.format != NULL:
        for i in range(3):
            if strcmp(view.format, _INT16_FORMATS[i]) == 0:
                return 0
    fmt = view.format.decode("ascii", "replace") if view.format != NULL else "?"
    raise ValueError(
        f"chunk must hold bytes or int16 samples, got items of format {fmt!r} "
        f"({view.itemsize} bytes each)"
    )


MAX_CAPACITY_BYTES = 1 << 30
"""Largest ring accepted (1 GiB)."""


def _check_sizes(frame_bytes, capacity_bytes, sample_bytes):
    """ValueError unless the sizes are ints that make a valid ring."""
    for name, value in (
        ("frame_bytes", frame_bytes),
        ("capacity_bytes", capacity_bytes),
        ("sample_bytes", sample_bytes),
    ):
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"{name} must be an int, got {value!r}")
    if sample_bytes not in (1, 2):
        raise ValueError(f"sample_bytes must be 1 or 2, got {sample_bytes}")
    if frame_bytes <= 0 or frame_bytes % sample_bytes:
        raise ValueError(
            f"frame_bytes must be a positive multiple of {sample_bytes}, got {frame_bytes}"
        )
    if not 0 < capacity_bytes <= MAX_CAPACITY_BYTES or capacity_bytes % frame_bytes:
        raise ValueError(
            f"capacity_bytes must be a positive multiple of frame_bytes ({frame_bytes}) "
            f"up to {MAX_CAPACITY_BYTES}, got {capacity_bytes}"
        )


cdef class FrameBuffer:
    """Ring buffer that cuts a byte stream into fixed frames of ``frame_bytes``.

    ``capacity_bytes`` (a multiple of ``frame_bytes``) bounds what it holds.  On
    overflow the oldest whole frames are dropped, so frames popped later always
    start at a frame boundary of the original stream; ``dropped_bytes`` and
    ``dropped_frames`` count them.  ``sample_bytes`` (1 for G.711 bytes, 2 for
    int16 PCM) is the unit every push must be a whole number of.
    """

    cdef bytearray _ring_store
    cdef bytearray _frame_store
    cdef unsigned char[::1] _ring
    cdef unsigned char[::1] _frame
    cdef unsigned char* _ring_ptr    # &_ring[0]; the memoryviews keep both buffers alive
    cdef unsigned char* _frame_ptr   # &_frame[0]
    cdef object _frame_view
    cdef Py_ssize_t _frame_bytes
    cdef Py_ssize_t _capacity
    cdef Py_ssize_t _sample_bytes
    cdef Py_ssize_t _head
    cdef Py_ssize_t _size
    cdef long long _dropped_bytes

    def __cinit__(self, frame_bytes, capacity_bytes, sample_bytes=1):
        _check_sizes(frame_bytes, capacity_bytes, sample_bytes)
        self._frame_bytes = frame_bytes
        self._capacity = capacity_bytes
        self._sample_bytes = sample_bytes
        self._ring_store = bytearray(capacity_bytes)
        self._frame_store = bytearray(frame_bytes)
        self._ring = self._ring_store
        self._frame = self._frame_store
        self._ring_ptr = &self._ring[0]
        self._frame_ptr = &self._frame[0]
        self._frame_view = memoryview(self._frame_store).toreadonly()
        self._head = 0
        self._size = 0
        self._dropped_bytes = 0

    @property
    def frame_bytes(self) -> int:
        """Bytes in one frame."""
        return self._frame_bytes

    @property
    def capacity_bytes(self) -> int:
        """Most bytes held at once."""
        return self._capacity

    @property
    def sample_bytes(self) -> int:
        """Bytes per sample; every push is a whole number of samples."""
        return self._sample_bytes

    @property
    def available_bytes(self) -> int:
        """Bytes queued, including a partial frame at the end."""
        return self._size

    @property
    def frames_available(self) -> int:
        """Complete frames ready to pop."""
        return self._size // self._frame_bytes

    @property
    def dropped_bytes(self) -> int:
        """Bytes dropped by overflow since creation (``clear`` does not count)."""
        return self._dropped_bytes

    @property
    def dropped_frames(self) -> int:
        """Whole frames dropped by overflow (``dropped_bytes`` is always a multiple)."""
        return self._dropped_bytes // self._frame_bytes

    def push(self, chunk) -> None:
        """Append ``chunk`` (any C-contiguous buffer of bytes or int16), dropping the
        oldest whole frames if it would overflow."""
        cdef Py_buffer view
        self._acquire(chunk, &view)
        try:
            self._write(<const unsigned char*>view.buf, view.len)
        finally:
            PyBuffer_Release(&view)

    def push_within(self, chunk) -> int:
        """Append as much of ``chunk`` as fits without dropping anything; return the
        number of bytes refused (0 when it all fit)."""
        cdef Py_buffer view
        cdef Py_ssize_t taken
        self._acquire(chunk, &view)
        try:
            # Free space is a whole number of samples: capacity and size both are.
            taken = self._capacity - self._size
            if taken > view.len:
                taken = view.len
            self._write(<const unsigned char*>view.buf, taken)
            return view.len - taken
        finally:
            PyBuffer_Release(&view)

    cdef int _acquire(self, object chunk, Py_buffer* view) except -1:
        """Get ``chunk``'s buffer into ``view`` after checking it; release it on error."""
        try:
            PyObject_GetBuffer(chunk, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT)
        except (BufferError, ValueError) as exc:
            raise ValueError(f"chunk must be a contiguous buffer: {exc}") from None
        try:
            _check_format(view, self._sample_bytes)
            if view.len % self._sample_bytes:
                raise ValueError(
                    f"chunk of {view.len} bytes is not a whole number of "
                    f"{self._sample_bytes}-byte samples"
                )
        except BaseException:
            PyBuffer_Release(view)
            raise
        return 0

    cdef void _write(self, const unsigned char* src, Py_ssize_t n) noexcept:
        cdef Py_ssize_t total = self._size + n
        cdef Py_ssize_t excess, drop, tail, first
        if total > self._capacity:
            excess = total - self._capacity
            # Round the drop up to whole frames so framing is preserved.
            drop = ((excess + self._frame_bytes - 1) // self._frame_bytes) * self._frame_bytes
            self._dropped_bytes += drop
            if drop >= self._size:
                # Everything queued goes, and the first (drop - size) bytes of src too.
                src += drop - self._size
                n -= drop - self._size
                self._head = 0
                self._size = 0
            else:
                self._head = (self._head + drop) % self._capacity
                self._size -= drop
        # Now size + n <= capacity.  Copy into the free region, which starts at
        # tail and may wrap once.
        if n == 0:
            return
        tail = (self._head + self._size) % self._capacity
        first = self._capacity - tail
        if first > n:
            first = n
        memcpy(self._ring_ptr + tail, src, first)
        if n > first:
            memcpy(self._ring_ptr, src + first, n - first)
        self._size += n

    cdef void _read_frame(self, unsigned char* dst) noexcept:
        """Move one frame (caller checked ``_size >= _frame_bytes``) into ``dst``."""
        cdef Py_ssize_t first = self._capacity - self._head
        if first > self._frame_bytes:
            first = self._frame_bytes
        memcpy(dst, self._ring_ptr + self._head, first)
        if self._frame_bytes > first:
            memcpy(dst + first, self._ring_ptr, self._frame_bytes - first)
        self._head = (self._head + self._frame_bytes) % self._capacity
        self._size -= self._frame_bytes

    def pop_into(self, out) -> bool:
        """Copy the oldest frame into ``out`` (a writable contiguous buffer of exactly
        ``frame_bytes`` bytes); ``False`` if no whole frame is queued."""
        cdef Py_buffer view
        try:
            PyObject_GetBuffer(out, &view, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE)
        except (BufferError, ValueError) as exc:
            raise ValueError(f"out must be a writable contiguous buffer: {exc}") from None
        try:
            if view.len != self._frame_bytes:
                raise ValueError(f"out holds {view.len} bytes, a frame is {self._frame_bytes}")
            if self._size < self._frame_bytes:
                return False
            self._read_frame(<unsigned char*>view.buf)
            return True
        finally:
            PyBuffer_Release(&view)

    def pop(self):
        """The oldest frame as a read-only view of an internal buffer, or ``None``.

        The same view object is returned every time; its contents are valid only
        until the next ``pop``.  Copy it (``bytes(view)``) to keep it.
        """
        if self._size < self._frame_bytes:
            return None
        self._read_frame(self._frame_ptr)
        return self._frame_view

    def clear(self) -> None:
        """Forget everything queued (not counted as dropped)."""
        self._head = 0
        self._size = 0
