"""SIP conformance against sipp (Debian's ``sip-tester``), over UDP and TCP, on 127.0.0.1.

Each scenario in ``tests/sipp/`` is one call sipp places to ``voxgate serve``;
sipp exits 0 only if every message it expected arrived as scripted.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from server.loadgen.runner import SpawnedServer, free_port, spawn_server
from tests import speech
from tests.peers.baresip import LoopbackCapture, rtp_audio
from tests.rtppcap import write_pcmu_pcap
from tests.udpports import free_udp_range

SCENARIOS = Path(__file__).parent / "sipp"
REQUIRE_ENV = "E2E_REQUIRE_PEERS"
"""Set to 1 by the test command, which installs the real peers: missing ones then fail."""


def sipp_binary() -> str:
    path = shutil.which("sipp")
    if path is None:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail("sipp is not installed (Debian package sip-tester)")
        pytest.skip("sipp is not installed (Debian package sip-tester)")
    return path


@pytest.fixture(scope="module")
def voxgate(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SpawnedServer, int]]:
    tmp = tmp_path_factory.mktemp("sip")
    config = tmp / "voxgate.toml"
    low, high = free_udp_range(100)
    config.write_text(
        f'[agent]\nname = "echo"\n[sip]\nanswer_delay_ms = 2000\nrtp_ports = "{low}-{high}"\n'
    )
    sip_port = free_port()
    server = spawn_server(0, 200, tmp / "server.log", config, sip_port=sip_port)
    try:
        yield server, sip_port
    finally:
        server.stop()


def run_sipp(
    scenario: str,
    sip_port: int,
    transport: str,
    tmp_path: Path,
    *,
    media_port: int | None = None,
    pause_ms: int = 1000,
) -> None:
    binary = sipp_binary()
    shutil.copy(SCENARIOS / scenario, tmp_path / scenario)
    command = [
        binary,
        f"127.0.0.1:{sip_port}",
        *("-sf", scenario, "-s", "echo", "-m", "1", "-l", "1"),
        *("-i", "127.0.0.1", "-p", str(free_port()), "-mi", "127.0.0.1"),
        *("-mp", str(media_port or free_port()), "-t", transport, "-d", str(pause_ms)),
        *("-nostdin", "-timeout", "20s", "-timeout_error", "-trace_err", "-trace_msg"),
    ]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, timeout=60, check=False)
    if result.returncode != 0:
        logs = "\n".join(
            p.read_text(errors="replace")[-3000:] for p in sorted(tmp_path.glob("*.log"))
        )
        pytest.fail(f"sipp {scenario} over {transport} exited {result.returncode}:\n{logs}")


@pytest.mark.parametrize("transport", ["u1", "t1"])
@pytest.mark.parametrize(
    "scenario", ["options_stray_bye.xml", "g729_only.xml", "cancel_ringing.xml"]
)
def test_sipp_scenario(
    voxgate: tuple[SpawnedServer, int], scenario: str, transport: str, tmp_path: Path
) -> None:
    _, sip_port = voxgate
    run_sipp(scenario, sip_port, transport, tmp_path)


NAT_RTP_PORTS = free_udp_range(100)
"""Below the ephemeral ports, so the caller's media port (``free_port()``) is never in it."""


@pytest.fixture(scope="module")
def voxgate_nat(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SpawnedServer, int]]:
    """The echo agent, sending RTP only once the caller's own RTP has latched."""
    tmp = tmp_path_factory.mktemp("sipnat")
    config = tmp / "voxgate.toml"
    low, high = NAT_RTP_PORTS
    config.write_text(
        f'[agent]\nname = "echo"\n[sip]\nrtp_ports = "{low}-{high}"\nrtp_wait_for_peer = true\n'
    )
    sip_port = free_port()
    server = spawn_server(0, 200, tmp / "server.log", config, sip_port=sip_port)
    try:
        yield server, sip_port
    finally:
        server.stop()


@pytest.mark.parametrize("transport", ["u1", "t1"])
def test_a_caller_behind_nat_gets_its_echo_at_its_real_address(
    voxgate_nat: tuple[SpawnedServer, int], transport: str, tmp_path: Path
) -> None:
    """The SDP says 192.0.2.1:6002; RTP comes from 127.0.0.1:<media port>: the echo
    must go to the latter (symmetric RTP), and nothing to the former."""
    if not LoopbackCapture.available():
        pytest.skip("capturing on lo needs CAP_NET_RAW (root)")
    _, sip_port = voxgate_nat
    utterance = speech.speech("please call me back tomorrow morning", 8000)
    pcm = np.concatenate([np.zeros(4000, np.int16), utterance, np.zeros(800, np.int16)])
    seconds = write_pcmu_pcap(tmp_path / "in_pcmu.pcap", pcm)
    media_port = free_port()
    pause_ms = int((seconds + len(utterance) / 8000 + 1.5) * 1000)
    with LoopbackCapture(NAT_RTP_PORTS) as capture:
        run_sipp(
            "nat_echo.xml", sip_port, transport, tmp_path, media_port=media_port, pause_ms=pause_ms
        )
    from_server = [
        d for d in capture.datagrams if NAT_RTP_PORTS[0] <= d.source[1] <= NAT_RTP_PORTS[1]
    ]
    rtp = [d for d in from_server if d.destination[1] == media_port]
    assert rtp, "no RTP came back to the caller's real source"
    assert {d.destination for d in from_server if d.payload[1] & 0x7F < 72} == {
        ("127.0.0.1", media_port)
    }
    heard = rtp_audio(rtp, 0).astype(np.float64)
    reference = utterance.astype(np.float64)
    best = max(
        float(np.dot(heard[i : i + len(reference)], reference))
        / (np.linalg.norm(heard[i : i + len(reference)]) * np.linalg.norm(reference) + 1e-9)
        for i in range(0, max(1, len(heard) - len(reference)), 8)
    )
    assert best > 0.9, f"the echo correlates only {best:.3f} with the utterance"
