"""Free UDP ports on loopback for tests that bind port ranges themselves."""

from __future__ import annotations

import socket


def free_udp_block(size: int, start: int = 42000) -> int:
    """The first port of ``size`` consecutive free UDP ports on 127.0.0.1 (even)."""
    for first in range(start - start % 2, 60000, 64):
        socks: list[socket.socket] = []
        try:
            for port in range(first, first + size):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError(f"no {size} free consecutive UDP ports on loopback")
