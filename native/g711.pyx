# cython: language_level=3
"""G.711 mu-law / A-law and RTP L16 byte-order kernels.

Every function takes Python buffers, checks their layout and sizes here at the
boundary (``ValueError`` naming the problem), then runs a table-driven loop
over raw pointers whose bounds come from the checked lengths.  Buffers are
acquired with the buffer protocol into stack ``Py_buffer`` structs, so a call
allocates nothing but its returned int.

Sample buffers ("int16") are C-contiguous buffers of native int16 (format
``h``); byte buffers are C-contiguous buffers with one-byte items (format
``B``, ``b`` or ``c``).  Where PCM may arrive as bytes it is read as
little-endian int16 pairs.

Encoding is exact ITU-T G.711 (the G.191 reference algorithm): mu-law depends
only on the top 14 bits of a sample and A-law only on the top 12 (the sign and
11 magnitude bits that its decision levels use), so both encoders are lookups
in tables indexed by those bits, built once at import.
"""

from cpython.buffer cimport PyBuffer_Release

from pybuffer cimport PCM_INT16, PCM_LE_BYTES, acquire_codes, acquire_int16, acquire_pcm

cdef short ULAW_DECODE[256]
cdef short ALAW_DECODE[256]
cdef unsigned char ULAW_ENCODE[16384]  # index: (uint16)sample >> 2
cdef unsigned char ALAW_ENCODE[4096]   # index: (uint16)sample >> 4

# ---------------------------------------------------------------- table setup

cdef unsigned char _ulaw_code(int sample):
    # One's complement magnitude in 14-bit units, biased by 33, clipped.
    cdef int magnitude = (~sample if sample < 0 else sample) >> 2
    cdef int biased = magnitude + 33
    cdef int segment = 0
    cdef int mantissa
    cdef int code
    if biased > 0x1FFF:
        biased = 0x1FFF
    while (biased >> (segment + 6)) != 0:
        segment += 1
    mantissa = (biased >> (segment + 1)) & 0x0F
    code = (segment << 4) | mantissa
    if sample < 0:
        code |= 0x80
    return <unsigned char>(code ^ 0xFF)


cdef unsigned char _alaw_code(int sample):
    # One's complement magnitude in 12-bit units (0..2047).
    cdef int magnitude = (~sample if sample < 0 else sample) >> 4
    cdef int segment = 0
    cdef int code
    while (magnitude >> (segment + 4)) != 0:
        segment += 1
    if segment == 0:
        code = magnitude
    else:
        code = (segment << 4) | ((magnitude >> (segment - 1)) & 0x0F)
    if sample >= 0:
        code |= 0x80
    return <unsigned char>(code ^ 0x55)


cdef short _ulaw_sample(int code):
    cdef int inverted = (~code) & 0xFF
    cdef int segment = (inverted >> 4) & 0x07
    cdef int mantissa = inverted & 0x0F
    cdef int magnitude = (((mantissa << 3) + 132) << segment) - 132
    return <short>(-magnitude if code < 0x80 else magnitude)


cdef short _alaw_sample(int code):
    cdef int flipped = code ^ 0x55
    cdef int segment = (flipped >> 4) & 0x07
    cdef int mantissa = flipped & 0x0F
    cdef int magnitude
    if segment == 0:
        magnitude = (mantissa << 4) + 8
    else:
        magnitude = (((mantissa | 0x10) << 4) + 8) << (segment - 1)
    return <short>(magnitude if code >= 0x80 else -magnitude)


cdef void _build_tables() noexcept:
    cdef int i
    for i in range(256):
        ULAW_DECODE[i] = _ulaw_sample(i)
        ALAW_DECODE[i] = _alaw_sample(i)
    # Index i holds the code of the smallest sample whose top bits are i.
    for i in range(16384):
        ULAW_ENCODE[i] = _ulaw_code(<short>(<unsigned short>(i << 2)))
    for i in range(4096):
        ALAW_ENCODE[i] = _alaw_code(<short>(<unsigned short>(i << 4)))


_build_tables()


cdef int _check_room(Py_ssize_t have, Py_ssize_t need, str unit) except -1:
    if have < need:
        raise ValueError(f"out is too small: room for {have} {unit}, need {need}")
    return 0


# ------------------------------------------------------------------ decoders

cdef Py_ssize_t _decode_into(object src, object out, const short* table) except -1:
    cdef Py_buffer s
    cdef Py_buffer o
    cdef Py_ssize_t n
    cdef Py_ssize_t i
    cdef const unsigned char* codes
    cdef short* samples
    acquire_codes(src, &s, False, "src")
    try:
        acquire_int16(out, &o, True, "out")
        try:
            n = s.len
            _check_room(o.len // 2, n, "samples")
            codes = <const unsigned char*>s.buf
            samples = <short*>o.buf
            for i in range(n):
                samples[i] = table[codes[i]]
            return n
        finally:
            PyBuffer_Release(&o)
    finally:
        PyBuffer_Release(&s)


def ulaw_decode_into(src, out):
    """Decode mu-law codes ``src`` (bytes-like) into int16 ``out``; return samples written."""
    return _decode_into(src, out, ULAW_DECODE)


def alaw_decode_into(src, out):
    """Decode A-law codes ``src`` (bytes-like) into int16 ``out``; return samples written."""
    return _decode_into(src, out, ALAW_DECODE)


# ------------------------------------------------------------------ encoders

cdef Py_ssize_t _encode_into(object pcm, object out, const unsigned char* table, int shift) except -1:
    cdef Py_buffer s
    cdef Py_buffer o
    cdef Py_ssize_t n = 0
    cdef Py_ssize_t i
    cdef const unsigned short* samples
    cdef const unsigned char* pairs
    cdef unsigned char* codes
    cdef int kind = acquire_pcm(pcm, &s, &n)
    try:
        acquire_codes(out, &o, True, "out")
        try:
            _check_room(o.len, n, "bytes")
            codes = <unsigned char*>o.buf
            if kind == PCM_INT16:
                samples = <const unsigned short*>s.buf
                for i in range(n):
                    codes[i] = table[samples[i] >> shift]
            else:
                pairs = <const unsigned char*>s.buf
                for i in range(n):
                    codes[i] = table[(pairs[2 * i] | (pairs[2 * i + 1] << 8)) >> shift]
            return n
        finally:
            PyBuffer_Release(&o)
    finally:
        PyBuffer_Release(&s)


def ulaw_encode_into(pcm, out):
    """Encode int16 ``pcm`` (or LE int16 bytes) as mu-law into byte buffer ``out``; return codes written."""
    return _encode_into(pcm, out, ULAW_ENCODE, 2)


def alaw_encode_into(pcm, out):
    """Encode int16 ``pcm`` (or LE int16 bytes) as A-law into byte buffer ``out``; return codes written."""
    return _encode_into(pcm, out, ALAW_ENCODE, 4)


# --------------------------------------------------------------- L16 (RTP)

def l16be_to_pcm_into(src, out):
    """Convert big-endian int16 bytes ``src`` into int16 ``out``; return samples written."""
    cdef Py_buffer s
    cdef Py_buffer o
    cdef Py_ssize_t n
    cdef Py_ssize_t i
    cdef const unsigned char* pairs
    cdef short* samples
    acquire_codes(src, &s, False, "src")
    try:
        if s.len % 2:
            raise ValueError(f"src has an odd byte count ({s.len}); 16-bit samples need pairs")
        acquire_int16(out, &o, True, "out")
        try:
            n = s.len // 2
            _check_room(o.len // 2, n, "samples")
            pairs = <const unsigned char*>s.buf
            samples = <short*>o.buf
            for i in range(n):
                samples[i] = <short>((pairs[2 * i] << 8) | pairs[2 * i + 1])
            return n
        finally:
            PyBuffer_Release(&o)
    finally:
        PyBuffer_Release(&s)


def pcm_to_l16be_into(pcm, out):
    """Convert int16 ``pcm`` (or LE int16 bytes) to big-endian bytes in ``out``; return samples written."""
    cdef Py_buffer s
    cdef Py_buffer o
    cdef Py_ssize_t n = 0
    cdef Py_ssize_t i
    cdef const unsigned short* samples
    cdef const unsigned char* pairs
    cdef unsigned char* dst
    cdef unsigned short x
    cdef int kind = acquire_pcm(pcm, &s, &n)
    try:
        acquire_codes(out, &o, True, "out")
        try:
            _check_room(o.len, 2 * n, "bytes")
            dst = <unsigned char*>o.buf
            if kind == PCM_INT16:
                samples = <const unsigned short*>s.buf
                for i in range(n):
                    x = samples[i]
                    dst[2 * i] = <unsigned char>(x >> 8)
                    dst[2 * i + 1] = <unsigned char>(x & 0xFF)
            else:
                pairs = <const unsigned char*>s.buf
                for i in range(n):
                    x = pairs[2 * i] | (pairs[2 * i + 1] << 8)  # read both first: in place is fine
                    dst[2 * i] = <unsigned char>(x >> 8)
                    dst[2 * i + 1] = <unsigned char>(x & 0xFF)
            return n
        finally:
            PyBuffer_Release(&o)
    finally:
        PyBuffer_Release(&s)

