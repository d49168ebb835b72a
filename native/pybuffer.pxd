"""Buffer-protocol helpers shared by the native kernels.

Kernels read arguments through ``Py_buffer`` structs on the C stack rather than
typed memoryviews: a memoryview wrapper per call costs ~150 ns and allocates.
Every helper checks format, item size, dimensions and writability and raises
``ValueError`` naming the argument; on error the buffer is already released.
A successful ``acquire*`` must be paired with ``PyBuffer_Release``.
"""

from cpython.buffer cimport (
    PyBUF_C_CONTIGUOUS,
    PyBUF_FORMAT,
    PyBUF_WRITABLE,
    PyBuffer_Release,
    PyObject_GetBuffer,
)

cdef enum:
    PCM_INT16 = 0
    PCM_LE_BYTES = 1


cdef inline bint is_format(const char* fmt, char code) noexcept:
    # One native-order item of struct code ``code``: "h", "@h" or "=h".
    if fmt[0] == code and fmt[1] == 0:
        return True
    if (fmt[0] == b"@" or fmt[0] == b"=") and fmt[1] == code and fmt[2] == 0:
        return True
    return False


cdef inline bint is_byte_format(const char* fmt) noexcept:
    return fmt == NULL or is_format(fmt, b"B") or is_format(fmt, b"b") or is_format(fmt, b"c")


cdef inline bint is_int16_format(const char* fmt) noexcept:
    return fmt != NULL and is_format(fmt, b"h")


cdef inline str format_name(Py_buffer* view):
    if view.format == NULL:
        return "B"
    return (<bytes>view.format).decode("ascii", "replace")


cdef inline int acquire(object obj, Py_buffer* view, bint writable, str name) except -1:
    cdef int flags = PyBUF_FORMAT | PyBUF_C_CONTIGUOUS
    if writable:
        flags |= PyBUF_WRITABLE
    try:
        PyObject_GetBuffer(obj, view, flags)
    except (BufferError, TypeError, ValueError) as exc:
        what = "a writable C-contiguous buffer" if writable else "a C-contiguous buffer"
        raise ValueError(f"{name} must be {what}, got {type(obj).__name__}: {exc}") from None
    if view.ndim != 1:
        ndim = view.ndim
        PyBuffer_Release(view)
        raise ValueError(f"{name} must be 1-D (mono), got {ndim} dimensions")
    return 0


cdef inline int acquire_int16(object obj, Py_buffer* view, bint writable, str name) except -1:
    acquire(obj, view, writable, name)
    if view.itemsize != 2 or not is_int16_format(view.format):
        fmt = format_name(view)
        PyBuffer_Release(view)
        raise ValueError(f"{name} must hold native int16 samples (format 'h'), got format {fmt!r}")
    return 0


cdef inline int acquire_pcm(object obj, Py_buffer* view, Py_ssize_t* n_samples) except -1:
    # PCM input: an int16 buffer (returns PCM_INT16) or bytes of little-endian
    # int16 pairs (returns PCM_LE_BYTES); sets n_samples.
    acquire(obj, view, False, "pcm")
    if view.itemsize == 2 and is_int16_format(view.format):
        n_samples[0] = view.len // 2
        return PCM_INT16
    if view.itemsize == 1 and is_byte_format(view.format):
        if view.len % 2:
            n = view.len
            PyBuffer_Release(view)
            raise ValueError(f"pcm has an odd byte count ({n}); 16-bit samples need pairs")
        n_samples[0] = view.len // 2
        return PCM_LE_BYTES
    fmt = format_name(view)
    PyBuffer_Release(view)
    raise ValueError(f"pcm must be int16 samples or bytes of little-endian int16, got format {fmt!r}")


cdef inline int acquire_codes(object obj, Py_buffer* view, bint writable, str name) except -1:
    acquire(obj, view, writable, name)
    if view.itemsize != 1 or not is_byte_format(view.format):
        fmt = format_name(view)
        PyBuffer_Release(view)
        raise ValueError(f"{name} must hold bytes (format 'B'), got format {fmt!r}")
    return 0
