"""RTP port pairs: even RTP ports with RTCP next to them, skipping ports others hold."""

from __future__ import annotations

import socket

import pytest

from server.rtp.portpool import PortPool, PortsExhausted
from tests.udpports import free_udp_range


def test_pairs_are_even_rtp_with_rtcp_next_and_bound() -> None:
    low = free_udp_range(8)[0]
    pool = PortPool("127.0.0.1", low, low + 7)
    pairs = [pool.acquire() for _ in range(4)]
    try:
        assert [p.rtp_port for p in pairs] == [low, low + 2, low + 4, low + 6]
        for pair in pairs:
            assert pair.rtp.getsockname() == ("127.0.0.1", pair.rtp_port)
            assert pair.rtcp.getsockname() == ("127.0.0.1", pair.rtp_port + 1)
            assert not pair.rtp.getblocking()
        assert pool.in_use == 4
        with pytest.raises(PortsExhausted, match="all 4 RTP port pairs"):
            pool.acquire()
    finally:
        for pair in pairs:
            pool.release(pair)
    assert pool.in_use == 0


def test_a_released_pair_is_reused_last() -> None:
    low = free_udp_range(6)[0]
    pool = PortPool("127.0.0.1", low, low + 5)
    first = pool.acquire()
    pool.release(first)
    second = pool.acquire()
    third = pool.acquire()
    fourth = pool.acquire()
    try:
        assert [second.rtp_port, third.rtp_port, fourth.rtp_port] == [low + 2, low + 4, low]
    finally:
        for pair in (second, third, fourth):
            pool.release(pair)


def test_ports_held_by_others_are_skipped() -> None:
    low = free_udp_range(4)[0]
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other.bind(("127.0.0.1", low + 1))  # the RTCP port of the first pair
    try:
        pool = PortPool("127.0.0.1", low, low + 3)
        pair = pool.acquire()
        assert pair.rtp_port == low + 2
        pool.release(pair)
    finally:
        other.close()


def test_an_odd_low_bound_starts_at_the_next_even_port() -> None:
    pool = PortPool("127.0.0.1", 41001, 41006)
    assert (pool.first, pool.pairs) == (41002, 2)
    with pytest.raises(ValueError, match="no even/odd port pair"):
        PortPool("127.0.0.1", 41001, 41002)
