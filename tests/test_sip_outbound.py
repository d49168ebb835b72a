"""Outbound calls end to end: ``POST /calls`` on ``voxgate serve`` dials sipp (a UAS
that challenges with digest, then answers); sipp sends no RTP, so voxgate's media
timeout ends the call with a BYE, which the scenario requires."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from server.loadgen.runner import free_port, spawn_server
from tests.test_sip_sipp import SCENARIOS, sipp_binary
from tests.udpports import free_udp_range


def post(url: str, body: object) -> tuple[int, str]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_post_calls_dials_through_a_trunk_with_digest_and_media_timeout_hangs_up(
    tmp_path: Path,
) -> None:
    binary = sipp_binary()
    sipp_port = free_port()
    shutil.copy(SCENARIOS / "uas_auth_answer.xml", tmp_path / "uas.xml")
    config = tmp_path / "voxgate.toml"
    low, high = free_udp_range(100)
    config.write_text(
        '[agent]\nname = "echo"\n'
        f'[sip]\nrtp_ports = "{low}-{high}"\nmedia_timeout_s = 2\n'
        "[[sip.trunks]]\n"
        f'name = "carrier"\nregistrar = "127.0.0.1:{sipp_port}"\n'
        'username = "alice"\npassword = "s3cret"\nregister = false\n'
    )
    sipp = subprocess.Popen(
        [
            binary,
            *("-sf", "uas.xml", "-m", "1", "-t", "u1", "-i", "127.0.0.1"),
            *("-p", str(sipp_port), "-nostdin", "-timeout", "30s", "-timeout_error"),
            *("-trace_err", "-trace_msg"),
        ],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server = spawn_server(0, 200, tmp_path / "server.log", config, sip_port=free_port())
    base = "http" + server.url[len("ws") : -len("/twilio")]
    try:
        status, body = post(
            base + "/calls", {"to": f"sip:bob@127.0.0.1:{sipp_port}", "trunk": "carrier"}
        )
        assert status == 201, body
        assert json.loads(body)["call_id"]
        assert post(base + "/calls", {"to": "sip:bob@127.0.0.1", "trunk": "nope"})[0] == 404
        assert post(base + "/calls", {"trunk": "carrier"})[0] == 400
        code = sipp.wait(timeout=40)
        if code != 0:
            logs = "\n".join(p.read_text(errors="replace")[-3000:] for p in tmp_path.glob("*.log"))
            pytest.fail(f"sipp UAS exited {code}:\n{logs}")
    finally:
        if sipp.poll() is None:
            sipp.terminate()
            sipp.wait(5)
        server.stop()
