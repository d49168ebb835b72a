"""Loss and jitter replay through the SIP media path, against aiortc's receive buffer.

Each seeded trace of :mod:`bench.jitter_traces` (5 % random loss with 40 ms
jitter among them) is replayed as real RTP datagrams (PCMU, payload type 0, one
SSRC, sequence and timestamp wraps included) into a
:class:`server.rtp.session.RtpSession` on a manual clock, the way
:mod:`server.transports.sip` drives it: each datagram goes to ``receive_rtp``
at its arrival time (ms), and every 20 ms the media tick runs ``on_tick(now_ms)``
(one frame out of the jitter buffer to the call) and then ``end_tick()`` (our
own packet out, here silence).  Two packets go before the trace, before the
first tick, so RFC 3550 probation and latching are over when it starts, as in
the middle of a call.  Nothing here reads the wall clock: a run is
deterministic.  aiortc's ``JitterBuffer(capacity=16, prefetch=4)`` gets the same
packets (:func:`bench.jitter_traces.run_aiortc`).

Both are scored by :func:`bench.jitter_traces.score` (``frames_lost``,
``concealed``, ``stall_ms``, ``mean_delay_ms``, over all frames but the last
:data:`~bench.jitter_traces.TAIL_FRAMES`), plus:

* ``missing``: scored frames never played as received audio: lost by the
  network, or arrived after their slot;
* ``unplayed_packets``: ``missing`` minus the network's losses: packets that
  arrived but were never played (after their slot, or dropped by the buffer);
* ``concealed_per_missing``: 1.0 when every missing packet cost exactly one
  concealed frame at its own slot and no gap was stretched (None for aiortc,
  which conceals nothing);
* ``exact_frames`` (SIP path only): the share of received frames that reached
  the call sample for sample as sent (mu-law decoded on both sides: the
  encoder writes G.711's "negative zero" 0x7F as 0xFF), leaving out the first
  frame after a gap, which is crossfaded from the concealment.

Run ``python -m bench.sip_replay [--json FILE]`` for the table.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import msgspec

from bench.jitter_traces import (
    FRAME_MS,
    FRAME_SAMPLES,
    NETWORKS,
    SEQ_START,
    TAIL_FRAMES,
    TS_START,
    Playout,
    Trace,
    make_trace,
    pull_times,
    run_aiortc,
    score,
)
from engine.g711 import ulaw_decode, ulaw_encode
from engine.jitter import FrameKind
from server.rtp.packet import build_rtp
from server.rtp.portpool import PortPair
from server.rtp.session import RtpSession
from server.sip.offeranswer import ChosenCodec, Negotiated, TelephoneEvent
from server.transport import MediaStats

__all__ = [
    "DEFAULT_JSON",
    "SIP_IMPL",
    "ManualClock",
    "SipPlayout",
    "compare_sip_on_traces",
    "main",
    "replay_sip",
    "score_sip",
]

SIP_IMPL: Final = "voxgate-sip"
DEFAULT_JSON: Final = Path(__file__).with_name("results-sip-replay.json")
BASE_MS: Final = 1000
"""The media clock (ms) at the trace's time 0: every time stays positive."""
WARMUP_PACKETS: Final = 2
"""Packets sent before the trace (spent on RFC 3550 probation, before the first tick)."""
PEER_SSRC: Final = 0x5EED0001
PCMU: Final = ChosenCodec("PCMU", 0, 8000, 8000, 1, "")
TELEPHONE_EVENT: Final = TelephoneEvent(101, 8000)
TABLE_KEYS: Final = (
    "trace",
    "impl",
    "lost_packets",
    "unplayed_packets",
    "concealed",
    "concealed_per_missing",
    "frames_lost",
    "stall_ms",
    "mean_delay_ms",
)


class ManualClock:
    """The session's time source: seconds, set by hand in ms.

    It reads a quarter of a millisecond after ``now_ms``, so the session's
    ``int(seconds * 1000)`` is ``now_ms`` exactly despite binary fractions.
    """

    def __init__(self, now_ms: int = 0) -> None:
        self.now_ms = now_ms

    def __call__(self) -> float:
        return (self.now_ms + 0.25) / 1000


@dataclass(frozen=True, slots=True)
class SipPlayout:
    """What the call heard from one replay, and the session's own counters."""

    playout: Playout
    """Per tick: ``(trace time ms, FrameKind, frame index or -1)``, and the stall."""
    heard: tuple[bytes | None, ...]
    """Per tick: the 160 mu-law bytes handed to the call (None before audio started)."""
    payloads: tuple[bytes, ...]
    """The mu-law payload sent for each frame index."""
    media: MediaStats
    """``RtpSession.media_stats()`` at the end of the replay."""
    packets_back: int
    """Our own RTP packets that reached the peer's socket."""


def _bound_udp() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


def _drain(sock: socket.socket) -> int:
    n = 0
    while True:
        try:
            sock.recv(2048)
        except BlockingIOError:
            return n
        n += 1


def _ignore(*_: object) -> None:
    pass


def _datagrams(trace: Trace, payloads: Sequence[bytes]) -> list[tuple[int, bytes]]:
    """``(arrival_ms, datagram)``: the warm-up packets, then the trace in arrival order."""
    out = []
    for k in range(WARMUP_PACKETS, 0, -1):
        seq, ts = (SEQ_START - k) & 0xFFFF, (TS_START - k * FRAME_SAMPLES) & 0xFFFFFFFF
        out.append(
            (
                -k * FRAME_MS,
                build_rtp(pt=0, seq=seq, ts=ts, ssrc=PEER_SSRC, payload=b"\xff" * FRAME_SAMPLES),
            )
        )
    for p in trace.packets:
        data = build_rtp(pt=0, seq=p.seq, ts=p.timestamp, ssrc=PEER_SSRC, payload=payloads[p.index])
        out.append((p.arrival_ms, data))
    return out


async def _replay(trace: Trace) -> SipPlayout:
    payloads = tuple(ulaw_encode(frame.tobytes()) for frame in trace.audio)
    datagrams = _datagrams(trace, payloads)
    rtp, rtcp = _bound_udp(), _bound_udp()
    peer_rtp, peer_rtcp = _bound_udp(), _bound_udp()
    pair = PortPair(rtp.getsockname()[1], rtp, rtcp)
    peer = peer_rtp.getsockname()
    media = Negotiated(
        media_index=0,
        codec=PCMU,
        telephone_event=TELEPHONE_EVENT,
        remote_address="127.0.0.1",
        remote_port=peer[1],
        remote_rtcp_address="127.0.0.1",
        remote_rtcp_port=peer_rtcp.getsockname()[1],
        rtcp_mux=False,
        direction="sendrecv",
        remote_direction="sendrecv",
        ptime_ms=20,
        on_hold=False,
    )
    clock = ManualClock(BASE_MS + datagrams[0][0])
    heard: list[bytes | None] = []
    current: list[bytes | None] = [None]
    session = RtpSession(
        pair,
        media,
        on_audio=lambda frame: current.__setitem__(0, frame),
        on_dtmf=_ignore,
        on_timeout=_ignore,
        media_timeout_s=30.0,
        cname="replay@voxgate",
        clock=clock,
    )
    inbound = session.inbound
    played: list[tuple[int, int, int]] = []
    last_scored = trace.scored.stop - 1
    started = done = False
    stall = 0
    back = 0
    j = 0
    try:
        for now in pull_times(trace):
            while j < len(datagrams) and datagrams[j][0] <= now:
                arrival, data = datagrams[j]
                clock.now_ms = BASE_MS + arrival
                session.receive_rtp(data, peer)
                j += 1
            clock.now_ms = BASE_MS + now
            current[0] = None
            session.on_tick(BASE_MS + now)  # SipMedia.before_tick
            session.end_tick()  # SipMedia.after_tick: the call sent nothing this tick
            heard.append(current[0])
            kind = inbound.last_kind
            ts = inbound.jitter.last_timestamp
            index = trace.index_of(ts) if ts >= 0 else -1
            played.append((now, int(kind), index))
            if kind is FrameKind.NORMAL:
                started = True
            elif started and not done and kind in (FrameKind.SILENCE, FrameKind.EMPTY):
                stall += FRAME_MS
            if index >= last_scored and kind in (FrameKind.NORMAL, FrameKind.CONCEALED):
                done = True
            if len(played) % 25 == 0:
                back += _drain(peer_rtp)
        stats = session.media_stats()
    finally:
        session.close("replay over")
        back += _drain(peer_rtp)
        for sock in (rtp, rtcp, peer_rtp, peer_rtcp):
            sock.close()
    return SipPlayout(
        playout=Playout(frames=tuple(played), stall_ms=stall),
        heard=tuple(heard),
        payloads=payloads,
        media=stats,
        packets_back=back,
    )


def replay_sip(trace: Trace) -> SipPlayout:
    """Replay ``trace`` through an :class:`RtpSession` (runs its own event loop)."""
    return asyncio.run(_replay(trace))


def _missing(trace: Trace, playout: Playout) -> set[int]:
    """Scored frames never played as received audio."""
    normal = {index for _, kind, index in playout.frames if kind == FrameKind.NORMAL}
    return {k for k in trace.scored if k not in normal}


def _extras(trace: Trace, row: dict[str, object], playout: Playout, concealer: bool) -> None:
    missing = _missing(trace, playout)
    row["missing"] = len(missing)
    row["unplayed_packets"] = len(missing - trace.lost)
    concealed = int(row["concealed"])  # type: ignore[call-overload]
    row["concealed_per_missing"] = (
        round(concealed / len(missing), 3) if concealer and missing else None
    )


def score_sip(trace: Trace, replay: SipPlayout) -> dict[str, object]:
    """The comparison row of a SIP replay: :func:`~bench.jitter_traces.score` and the extras."""
    playout = replay.playout
    row = score(trace, SIP_IMPL, playout)
    _extras(trace, row, playout, concealer=True)
    eligible = exact = 0
    previous = int(FrameKind.EMPTY)
    for (_, kind, index), frame in zip(playout.frames, replay.heard, strict=True):
        if (
            kind == FrameKind.NORMAL
            and previous == FrameKind.NORMAL
            and 0 <= index < trace.n_frames
        ):
            eligible += 1
            exact += ulaw_decode(frame or b"") == ulaw_decode(replay.payloads[index])
        previous = kind
    row["exact_frames"] = round(exact / eligible, 4) if eligible else None
    media = replay.media
    row["session"] = {
        "packets_in": media.packets_in,
        "frames_in": media.frames_in,
        "playout": media.playout,
        "jitter_ms": media.jitter_ms,
    }
    return row


def compare_sip_on_traces(
    n_frames: int = 1500, seed: int = 1, names: Sequence[str] | None = None
) -> list[dict[str, object]]:
    """The SIP media path versus aiortc on each named trace: one row per (trace, impl)."""
    rows: list[dict[str, object]] = []
    for name in names or list(NETWORKS):
        trace = make_trace(name, n_frames, seed)
        rows.append(score_sip(trace, replay_sip(trace)))
        aiortc = run_aiortc(trace)
        row = score(trace, "aiortc", aiortc)
        _extras(trace, row, aiortc, concealer=False)
        rows.append(row)
    return rows


def markdown_table(rows: Sequence[dict[str, object]]) -> str:
    """The rows' main columns as a markdown table (for the README)."""

    def cell(value: object) -> str:
        return "–" if value is None else str(value)

    lines = ["| " + " | ".join(TABLE_KEYS) + " |", "|" + "---|" * len(TABLE_KEYS)]
    lines += ["| " + " | ".join(cell(row.get(k)) for k in TABLE_KEYS) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=1500, help="20 ms frames per trace")
    parser.add_argument("--seed", type=int, default=1, help="trace seed")
    parser.add_argument("--trace", action="append", choices=list(NETWORKS), help="repeatable")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="write the rows here")
    args = parser.parse_args(argv)
    if args.frames <= 2 * TAIL_FRAMES:
        parser.error(f"--frames must be more than {2 * TAIL_FRAMES}")
    rows = compare_sip_on_traces(args.frames, args.seed, args.trace)
    print(markdown_table(rows))
    result = {
        "frames_per_trace": args.frames,
        "frame_ms": FRAME_MS,
        "seed": args.seed,
        "codec": "PCMU",
        "rows": rows,
    }
    args.json.write_bytes(msgspec.json.format(msgspec.json.encode(result)) + b"\n")
    print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
