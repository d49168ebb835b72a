"""Pure-Python references for the native kernels.

Each module here is the readable specification of one ``native/*.pyx`` kernel:
the tests require the native code to match it exactly, and the benchmarks use
it as the slowest baseline.  Nothing on a hot path imports this package.
"""
