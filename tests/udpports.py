"""Free UDP port ranges on loopback for tests that bind (or make servers bind) ranges."""

from __future__ import annotations

import os
import random
import socket
import time


def free_udp_range(n_ports: int, low: int = 20000, high: int = 32700) -> tuple[int, int]:
    """``(first, last)`` of ``n_ports`` consecutive UDP ports, all free now; ``first`` is even.

    The default span stays below Linux's ephemeral ports (32768 up), where the
    ports other tests pick with ``free_port()`` (and the kernel's own picks) land,
    so nothing else is likely to take a port of the range later.
    """
    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    for _ in range(200):
        first = rng.randrange(low, high - n_ports) & ~1
        sockets: list[socket.socket] = []
        try:
            for port in range(first, first + n_ports):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sockets.append(sock)
                sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
        return first, first + n_ports - 1
    raise RuntimeError(f"no {n_ports} consecutive free UDP ports in {low}..{high}")
