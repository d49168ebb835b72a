"""A classic libpcap file of an RTP stream, for sipp's ``play_pcap_audio``.

Ethernet / IPv4 / UDP (checksum 0) / RTP, one 20 ms PCMU packet every 20 ms.
sipp replays the payloads with the file's timing from its own media port to
the address the answer's SDP gave; the addresses written here do not matter.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import numpy.typing as npt

from engine.g711 import ulaw_encode
from server.rtp.packet import build_rtp

PCAP_MAGIC = 0xA1B2C3D4
LINKTYPE_ETHERNET = 1
FRAME_BYTES = 160


def _ipv4_udp(payload: bytes, sport: int, dport: int) -> bytes:
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    total = 20 + len(udp)
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        total,
        0,
        0,
        64,
        17,
        0,
        bytes([127, 0, 0, 1]),
        bytes([127, 0, 0, 1]),
    )
    checksum = _checksum(header)
    header = header[:10] + struct.pack("!H", checksum) + header[12:]
    return header + udp


def _checksum(data: bytes) -> int:
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def write_pcmu_pcap(path: Path, pcm8k: npt.NDArray[np.int16], sport: int = 6000) -> float:
    """Write ``pcm8k`` (8 kHz mono) as PCMU RTP packets; returns the duration in s."""
    n = len(pcm8k) // FRAME_BYTES * FRAME_BYTES
    ulaw = ulaw_encode(pcm8k[:n].tobytes())
    records = [struct.pack("<IHHiIII", PCAP_MAGIC, 2, 4, 0, 0, 65535, LINKTYPE_ETHERNET)]
    ethernet = b"\x00" * 12 + b"\x08\x00"
    for i in range(n // FRAME_BYTES):
        rtp = build_rtp(
            pt=0,
            seq=1000 + i,
            ts=160 * i,
            ssrc=0x5EED1234,
            marker=i == 0,
            payload=ulaw[i * FRAME_BYTES : (i + 1) * FRAME_BYTES],
        )
        frame = ethernet + _ipv4_udp(rtp, sport, 40000)
        t_us = i * 20_000
        records.append(
            struct.pack("<IIII", t_us // 1_000_000, t_us % 1_000_000, len(frame), len(frame))
        )
        records.append(frame)
    path.write_bytes(b"".join(records))
    return n / 8000
