"""RTP port pairs from a configured range: an even port for RTP, the next for RTCP.

:meth:`PortPool.acquire` binds both UDP sockets and hands them over, so a port
is never reported free and then taken by someone else; ports in use by other
programs are skipped.  Allocation walks the range round-robin from where it
last stopped, so a port just released is the last to be reused (late packets
of an ended call do not land in a new one).
"""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass


class PortsExhausted(RuntimeError):
    """Every pair of the range is in use."""


@dataclass(slots=True)
class PortPair:
    """Bound, non-blocking UDP sockets for one call's RTP and RTCP."""

    rtp_port: int
    rtp: socket.socket
    rtcp: socket.socket

    def close(self) -> None:
        self.rtp.close()
        self.rtcp.close()


class PortPool:
    """Even/odd UDP port pairs on ``host`` within ``[low, high]``."""

    def __init__(self, host: str, low: int, high: int) -> None:
        first = low + (low % 2)
        if first + 1 > high:
            raise ValueError(f"no even/odd port pair in {low}-{high}")
        self.host = host
        self.first = first
        self.pairs = (high - first + 1) // 2
        self._next = 0
        self._in_use: set[int] = set()

    @property
    def in_use(self) -> int:
        return len(self._in_use)

    def acquire(self) -> PortPair:
        """Bind the next free pair; raises :class:`PortsExhausted` when none is."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        for _ in range(self.pairs):
            port = self.first + 2 * self._next
            self._next = (self._next + 1) % self.pairs
            if port in self._in_use:
                continue
            rtp = _bind(family, self.host, port)
            if rtp is None:
                continue
            rtcp = _bind(family, self.host, port + 1)
            if rtcp is None:
                rtp.close()
                continue
            self._in_use.add(port)
            return PortPair(port, rtp, rtcp)
        raise PortsExhausted(f"all {self.pairs} RTP port pairs from {self.first} are in use")

    def release(self, pair: PortPair) -> None:
        """Close ``pair``'s sockets and return its ports to the pool (idempotent)."""
        pair.close()
        self._in_use.discard(pair.rtp_port)


def _bind(family: socket.AddressFamily, host: str, port: int) -> socket.socket | None:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno in (errno.EADDRINUSE, errno.EACCES):
            return None
        raise
    sock.setblocking(False)
    return sock
