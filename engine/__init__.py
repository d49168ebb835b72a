"""voxgate's audio engine: synchronous, no I/O, clock passed in.

Nothing in this package imports ``server``, touches asyncio or sockets, or
reads the wall clock; every time value is an argument in milliseconds or
samples.  Hot loops live in native kernels built from ``native/*.pyx`` as
``engine._<name>`` modules.
"""

from engine.format import PCM16K, PCMU8K, AudioFormat

__all__ = ["PCM16K", "PCMU8K", "AudioFormat"]
__version__ = "0.1.0"
