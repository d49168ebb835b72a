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

import pytest

from server.loadgen.runner import SpawnedServer, free_port, spawn_server

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
    config.write_text(
        '[agent]\nname = "echo"\n[sip]\nanswer_delay_ms = 2000\nrtp_ports = "42000-42999"\n'
    )
    sip_port = free_port()
    server = spawn_server(0, 200, tmp / "server.log", config, sip_port=sip_port)
    try:
        yield server, sip_port
    finally:
        server.stop()


def run_sipp(scenario: str, sip_port: int, transport: str, tmp_path: Path) -> None:
    binary = sipp_binary()
    shutil.copy(SCENARIOS / scenario, tmp_path / scenario)
    command = [
        binary,
        f"127.0.0.1:{sip_port}",
        *("-sf", scenario, "-s", "echo", "-m", "1", "-l", "1"),
        *("-i", "127.0.0.1", "-p", str(free_port()), "-mi", "127.0.0.1"),
        *("-mp", str(free_port()), "-t", transport),
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
