"""Drive baresip 1.0.0 (Debian ``baresip-core``) headless as a SIP caller on 127.0.0.1.

:class:`BaresipPeer` writes a config directory for one codec, starts baresip
in a scratch run directory with ``in.wav`` (8 kHz mono int16) as its
microphone, and steers it through the ``ctrl_tcp`` module: JSON objects
framed as netstrings (``<length>:<json>,``) both ways.  Commands carry
``command``/``params``/``token``; baresip answers each with a ``response``
object and reports call progress as ``event`` objects (``type`` such as
``CALL_ESTABLISHED``, ``param`` the DTMF digit or the close reason).

Audio checks use the ``sndfile`` module's dumps in the run directory:
``dump-*-enc.wav`` is what baresip encoded and sent, ``dump-*-dec.wav`` what
it received and decoded, both at the codec's sample rate.

baresip runs with ``-s``: its console log carries every SIP message it sent
or received, which :func:`parse_sip_trace` splits into :class:`SipTraceMessage`.
Where the dumps cannot be trusted (after a hold re-INVITE baresip 1.0.0 stops
decoding), :class:`LoopbackCapture` reads the RTP on the wire instead.

Every port (SIP, RTP, ctrl) is chosen free at start, so peers never collide.
Only the baresip process this driver started is ever stopped.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import socket
import struct
import subprocess
import threading
import time
import wave
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt

from engine.g711 import alaw_decode, ulaw_decode
from tests.udpports import free_udp_range

Pcm = npt.NDArray[np.int16]
Codec = Literal["pcmu", "pcma", "g722", "opus"]
Transport = Literal["udp", "tcp"]

CODEC_NAMES: Final[dict[Codec, str]] = {
    "pcmu": "pcmu",
    "pcma": "pcma",
    "g722": "G722/16000/1",  # baresip names codecs by sample rate, not RTP clock
    "opus": "opus/48000/2",
}
CODEC_RATE_HZ: Final[dict[Codec, int]] = {"pcmu": 8000, "pcma": 8000, "g722": 16000, "opus": 48000}
"""The sample rate of baresip's dumps for each codec."""
MODULE_PATH: Final = Path("/usr/lib/baresip/modules")
WAV_RATE_HZ: Final = 8000
REQUIRE_ENV: Final = "E2E_REQUIRE_PEERS"
"""Set to 1 by the test command, which installs the peers: a missing baresip then fails."""


class BaresipError(RuntimeError):
    """baresip did not start, or its control connection failed."""


def baresip_binary() -> str | None:
    """The path of ``baresip`` with its modules installed, or ``None``."""
    path = shutil.which("baresip")
    if path is None or not (MODULE_PATH / "ctrl_tcp.so").exists():
        return None
    return path


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A loopback port that is free now (for ``kind``: TCP or UDP)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def write_wav(path: Path, pcm: Pcm, rate_hz: int = WAV_RATE_HZ) -> None:
    """Write mono int16 ``pcm`` as a WAV file at ``rate_hz``."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate_hz)
        w.writeframes(np.ascontiguousarray(pcm, dtype="<i2").tobytes())


@dataclass(frozen=True)
class Recording:
    """One sndfile dump: mono int16 samples at ``rate_hz`` (channels averaged)."""

    rate_hz: int
    pcm: Pcm

    @property
    def duration_s(self) -> float:
        return len(self.pcm) / self.rate_hz


def read_wav(path: Path) -> Recording:
    """A 16-bit WAV file as a mono :class:`Recording`."""
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2:
            raise BaresipError(f"{path.name}: {8 * w.getsampwidth()}-bit samples, expected 16")
        channels = w.getnchannels()
        rate_hz = w.getframerate()
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    if channels > 1:
        data = data.reshape(-1, channels).mean(axis=1).astype(np.int16)
    return Recording(rate_hz, data.astype(np.int16))


@dataclass(frozen=True)
class Event:
    """A ctrl_tcp event: ``type`` (``CALL_ESTABLISHED``...) and ``param`` (digit, reason)."""

    type: str
    param: str
    at_s: float
    """When it arrived (``time.monotonic()``)."""
    raw: dict[str, Any]


def netstring(payload: bytes) -> bytes:
    return b"%d:%s," % (len(payload), payload)


@dataclass
class _Inbox:
    """Splits the ctrl stream into netstring payloads."""

    buffer: bytearray = field(default_factory=bytearray)

    def feed(self, data: bytes) -> list[bytes]:
        self.buffer += data
        out: list[bytes] = []
        while True:
            colon = self.buffer.find(b":")
            if colon < 0:
                return out
            length = int(self.buffer[:colon])
            end = colon + 1 + length
            if len(self.buffer) < end + 1:
                return out
            if self.buffer[end : end + 1] != b",":
                raise BaresipError(f"bad netstring from ctrl_tcp: {bytes(self.buffer[:80])!r}")
            out.append(bytes(self.buffer[colon + 1 : end]))
            del self.buffer[: end + 1]


class BaresipPeer:
    """One baresip process as a SIP caller; use as a context manager.

    ``audio`` (8 kHz mono int16) is what baresip speaks; at its end baresip
    hangs up (BYE).  ``run_dir`` receives the config, ``in.wav``, the log
    (``baresip.log``, with a SIP trace) and the dumps.  ``lifetime_s`` bounds
    the process (baresip's ``-t``).
    """

    def __init__(
        self,
        run_dir: Path,
        audio: Pcm,
        *,
        codec: Codec = "pcmu",
        transport: Transport = "udp",
        lifetime_s: int = 40,
    ) -> None:
        binary = baresip_binary()
        if binary is None:
            raise BaresipError("baresip (Debian package baresip-core) is not installed")
        self.binary = binary
        self.run_dir = run_dir
        self.codec = codec
        self.transport = transport
        self.lifetime_s = lifetime_s
        self.events: list[Event] = []
        self.responses: list[dict[str, Any]] = []
        self._audio = audio
        self._process: subprocess.Popen[bytes] | None = None
        self._ctrl: socket.socket | None = None
        self._inbox = _Inbox()
        self._token = 0
        self.sip_port = free_port()
        self.ctrl_port = free_port()
        self.rtp_ports = free_udp_range(16)

    # -- set-up ------------------------------------------------------------------------

    def config_text(self) -> str:
        """baresip's ``config`` file for this peer."""
        low, high = self.rtp_ports
        lines = [
            "poll_method epoll",
            f"sip_listen 127.0.0.1:{self.sip_port}",
            "net_interface 127.0.0.1",  # an interface name like 'lo' is refused
            "call_local_timeout 30",
            "call_max_calls 4",
            "audio_source aufile,in.wav",
            "audio_player aubridge,nil",
            "audio_alert aubridge,nil",
            f"ausrc_srate {WAV_RATE_HZ}",
            f"auplay_srate {WAV_RATE_HZ}",
            "ausrc_channels 1",
            "auplay_channels 1",
            "audio_buffer 20-160",
            "ausrc_format s16",
            "auplay_format s16",
            "auenc_format s16",
            "audec_format s16",
            f"rtp_ports {low}-{high}",
            "rtcp_mux no",
            "jitter_buffer_delay 1-10",
            "rtp_stats yes",
            f"module_path {MODULE_PATH}",
            "module_tmp account.so",  # without it the accounts file is never read
            "module g711.so",
            "module g722.so",
            "module opus.so",
            "module aufile.so",
            "module aubridge.so",
            "module sndfile.so",
            "snd_path .",
            "module_app menu.so",
            "module_app ctrl_tcp.so",
            f"ctrl_tcp_listen 127.0.0.1:{self.ctrl_port}",
        ]
        return "\n".join(lines) + "\n"

    def account_text(self) -> str:
        """baresip's ``accounts`` file: no REGISTER, manual answer, one codec, 20 ms."""
        return (
            f"<sip:tester@127.0.0.1:{self.sip_port}>;regint=0;answermode=manual;"
            f"audio_codecs={CODEC_NAMES[self.codec]};ptime=20\n"
        )

    def __enter__(self) -> BaresipPeer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Write the config and ``in.wav``, start baresip and connect to ctrl_tcp (≤ 10 s)."""
        cfg = self.run_dir / "cfg"
        cfg.mkdir(parents=True, exist_ok=True)
        (cfg / "config").write_text(self.config_text())
        (cfg / "accounts").write_text(self.account_text())
        (cfg / "contacts").write_text("")
        write_wav(self.run_dir / "in.wav", self._audio)
        log = open(self.run_dir / "baresip.log", "wb")  # noqa: SIM115
        try:
            self._process = subprocess.Popen(
                [self.binary, "-4", "-s", "-f", "cfg", "-t", str(self.lifetime_s)],
                cwd=self.run_dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        finally:
            log.close()
        deadline = time.monotonic() + 10
        while True:
            if self._process.poll() is not None:
                raise BaresipError(f"baresip exited with {self._process.returncode}: {self.log()}")
            try:
                self._ctrl = socket.create_connection(("127.0.0.1", self.ctrl_port), timeout=1)
                return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise BaresipError("baresip's ctrl_tcp did not listen within 10 s") from None
                time.sleep(0.05)

    def stop(self) -> None:
        """``quit``, wait up to 5 s, then terminate (and at last kill) our baresip."""
        process = self._process
        if process is None:
            return
        if self._ctrl is not None and process.poll() is None:
            with contextlib.suppress(OSError):
                self.command("quit")
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._ctrl is not None:
            self._ctrl.close()
            self._ctrl = None

    # -- control ------------------------------------------------------------------------

    def command(self, name: str, params: str = "") -> None:
        """Send one ctrl_tcp command (its response lands in :attr:`responses`)."""
        if self._ctrl is None:
            raise BaresipError("not connected to ctrl_tcp")
        self._token += 1
        message = {"command": name, "params": params, "token": str(self._token)}
        self._ctrl.sendall(netstring(json.dumps(message).encode()))

    def dial(self, uri: str) -> None:
        self.command("dial", uri)

    def dial_server(self, sip_port: int, user: str = "echo") -> None:
        """Dial ``user`` at our server on 127.0.0.1:``sip_port`` over this peer's transport."""
        suffix = ";transport=tcp" if self.transport == "tcp" else ""
        self.dial(f"sip:{user}@127.0.0.1:{sip_port}{suffix}")

    def send_digits(self, digits: str, gap_s: float = 0.35) -> None:
        """One ``sndcode`` per digit, ``gap_s`` apart (events keep arriving meanwhile)."""
        for i, digit in enumerate(digits):
            if i:
                self.pump(gap_s)
            self.command("sndcode", digit)

    def hold(self) -> None:
        self.command("hold")

    def resume(self) -> None:
        self.command("resume")

    def hangup(self) -> None:
        self.command("hangup")

    # -- events -------------------------------------------------------------------------

    def pump(self, duration_s: float) -> None:
        """Collect events for ``duration_s`` (a sleep that keeps the ctrl socket drained)."""
        deadline = time.monotonic() + duration_s
        while (left := deadline - time.monotonic()) > 0:
            self._receive(left)

    def wait_event(self, types: Iterable[str], timeout_s: float) -> Event | None:
        """The first event of one of ``types`` not seen before, or ``None`` after ``timeout_s``."""
        wanted = set(types)
        seen = len(self.events)
        deadline = time.monotonic() + timeout_s
        while True:
            for event in self.events[seen:]:
                if event.type in wanted:
                    return event
            seen = len(self.events)
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self._receive(left)

    def first(self, event_type: str) -> Event | None:
        """The first event of ``event_type`` received so far."""
        return next((e for e in self.events if e.type == event_type), None)

    def digits_received(self) -> str:
        """The digits of every ``CALL_DTMF_START`` so far, in order."""
        return "".join(e.param for e in self.events if e.type == "CALL_DTMF_START")

    def _receive(self, timeout_s: float) -> None:
        if self._ctrl is None:
            time.sleep(timeout_s)
            return
        self._ctrl.settimeout(max(timeout_s, 0.001))
        try:
            data = self._ctrl.recv(65536)
        except TimeoutError:
            return
        if not data:  # baresip quit
            self._ctrl.close()
            self._ctrl = None
            return
        now = time.monotonic()
        for payload in self._inbox.feed(data):
            message: dict[str, Any] = json.loads(payload)
            if message.get("event"):
                param = message.get("param")
                self.events.append(
                    Event(
                        str(message.get("type", "")),
                        "" if param is None else str(param),
                        now,
                        message,
                    )
                )
            else:
                self.responses.append(message)

    # -- results ------------------------------------------------------------------------

    def log(self) -> str:
        """baresip's console output so far (includes the SIP trace)."""
        path = self.run_dir / "baresip.log"
        # Bytes, not read_text(): universal newlines would turn SIP's CRLF into LF.
        return path.read_bytes().decode(errors="replace") if path.exists() else ""

    def recordings(self, kind: Literal["enc", "dec"]) -> list[Recording]:
        """Every ``dump-*-{kind}.wav`` in the run directory, oldest first."""
        return [read_wav(p) for p in sorted(self.run_dir.glob(f"dump-*-{kind}.wav"))]

    def recording(self, kind: Literal["enc", "dec"]) -> Recording:
        """The single (first) ``kind`` dump: ``enc`` sent, ``dec`` received."""
        found = self.recordings(kind)
        if not found:
            raise BaresipError(f"baresip wrote no {kind} dump in {self.run_dir}")
        return found[0]


# ------------------------------------------------------------------ the SIP trace


@dataclass(frozen=True)
class SipTraceMessage:
    """One SIP message from baresip's ``-s`` trace, as it crossed the wire."""

    transport: str
    """``UDP`` or ``TCP``."""
    source: str
    """``ip:port`` it came from."""
    destination: str
    first_line: str
    headers: tuple[tuple[str, str], ...]
    body: str

    @property
    def is_response(self) -> bool:
        return self.first_line.startswith("SIP/2.0 ")

    @property
    def status(self) -> int | None:
        """The status code of a response, ``None`` for a request."""
        return int(self.first_line.split()[1]) if self.is_response else None

    @property
    def method(self) -> str:
        """The request's method, or the CSeq method of a response."""
        if not self.is_response:
            return self.first_line.split()[0]
        return self.header("CSeq").split()[-1]

    @property
    def cseq(self) -> int:
        return int(self.header("CSeq").split()[0])

    def header(self, name: str) -> str:
        """The first value of header ``name`` (case-insensitive), ``""`` if absent."""
        return next((v for k, v in self.headers if k.lower() == name.lower()), "")


_TRACE_BLOCK = re.compile(r"\x1b\[36;1m#\n(UDP|TCP|TLS) (\S+) -> (\S+)\n(.*?)\x1b\[;m", re.DOTALL)


def parse_sip_trace(log: str) -> list[SipTraceMessage]:
    """Every SIP message in baresip's console ``log`` (run with ``-s``), in order."""
    messages = []
    for transport, source, destination, text in _TRACE_BLOCK.findall(log):
        head, _, body = text.partition("\r\n\r\n")
        lines = head.split("\r\n")
        headers = tuple(
            (name.strip(), value.strip())
            for name, sep, value in (line.partition(":") for line in lines[1:])
            if sep
        )
        messages.append(
            SipTraceMessage(transport, source, destination, lines[0].strip(), headers, body)
        )
    return messages


# --------------------------------------------------------------- RTP on the wire

ETH_P_ALL: Final = 0x0003
PACKET_OUTGOING: Final = 4
"""On ``lo`` every packet is seen twice, once outgoing: those copies are skipped."""


@dataclass(frozen=True)
class UdpDatagram:
    at_s: float
    """Capture time (``time.monotonic()``)."""
    source: tuple[str, int]
    destination: tuple[str, int]
    payload: bytes


class LoopbackCapture:
    """Captures IPv4/UDP datagrams on ``lo`` whose ports fall in ``ports`` (a thread).

    Needs ``CAP_NET_RAW`` (root): :meth:`available` says whether it may run.
    """

    def __init__(self, ports: tuple[int, int]) -> None:
        self.ports = ports
        self.datagrams: list[UdpDatagram] = []
        self._stop = threading.Event()
        self._socket = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(ETH_P_ALL))
        self._socket.bind(("lo", 0))
        self._socket.settimeout(0.1)
        self._thread = threading.Thread(target=self._run, name="lo-capture", daemon=True)

    @staticmethod
    def available() -> bool:
        """Whether this process may open a packet socket on ``lo``."""
        try:
            socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(ETH_P_ALL)).close()
        except (OSError, AttributeError):
            return False
        return True

    def __enter__(self) -> LoopbackCapture:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()
        self._socket.close()

    def _run(self) -> None:
        low, high = self.ports
        while not self._stop.is_set():
            try:
                frame, address = self._socket.recvfrom(65535)
            except TimeoutError:
                continue
            if address[2] == PACKET_OUTGOING or len(frame) < 14 + 20 + 8:
                continue
            if frame[12:14] != b"\x08\x00" or frame[14 + 9] != socket.IPPROTO_UDP:
                continue
            ihl = (frame[14] & 0x0F) * 4
            udp = 14 + ihl
            sport, dport, length = struct.unpack_from("!HHH", frame, udp)
            if not (low <= sport <= high or low <= dport <= high):
                continue
            src_ip = socket.inet_ntoa(frame[14 + 12 : 14 + 16])
            dst_ip = socket.inet_ntoa(frame[14 + 16 : 14 + 20])
            payload = frame[udp + 8 : udp + length]
            self.datagrams.append(
                UdpDatagram(time.monotonic(), (src_ip, sport), (dst_ip, dport), payload)
            )


def rtp_audio(datagrams: Iterable[UdpDatagram], payload_type: int) -> Pcm:
    """G.711 RTP (PT 0 mu-law or 8 A-law) in ``datagrams`` decoded to 8 kHz int16.

    Each payload lands at (its timestamp - the first timestamp) samples, so
    gaps stay silent; packets of other payload types (and RTCP) are skipped.
    """
    decode = {0: ulaw_decode, 8: alaw_decode}[payload_type]
    chunks: list[tuple[int, bytes]] = []
    for d in datagrams:
        p = d.payload
        if len(p) < 12 or p[0] >> 6 != 2 or p[1] & 0x7F != payload_type:
            continue
        start = 12 + 4 * (p[0] & 0x0F)
        if p[0] & 0x10 and len(p) >= start + 4:
            start += 4 + 4 * struct.unpack_from("!H", p, start + 2)[0]
        end = len(p) - (p[-1] if p[0] & 0x20 else 0)
        if start < end:
            chunks.append((struct.unpack_from("!I", p, 4)[0], p[start:end]))
    if not chunks:
        return np.zeros(0, dtype=np.int16)
    first = chunks[0][0]
    signed = [((ts - first + 2**31) % 2**32 - 2**31, payload) for ts, payload in chunks]
    base = min(offset for offset, _ in signed)
    offsets = [(offset - base, payload) for offset, payload in signed]
    out = np.zeros(max(o + len(b) for o, b in offsets), dtype=np.int16)
    for offset, payload in offsets:
        out[offset : offset + len(payload)] = np.frombuffer(decode(payload), dtype="<i2")
    return out
