"""An INVITE flood beyond ``max_calls`` against a real ``voxgate serve`` full of live calls,
and the load generator's own flooder (``voxgate bench sip --flood-rate``).

The built-in load generator fills the server's 20 call slots with echo calls
(it checks every echo byte for byte and every packet's sequence); once the
server says it is full, sipp floods its SIP port with new INVITEs.  Each must
get 503 with a Retry-After (sipp fails the call otherwise, and counts them), the
server must count every refusal in ``/metrics`` and answer ``/healthz``
throughout, and the live calls must end as planned with nothing lost.  Counts
and orders only: how late packets were is measured, not asserted.

The flooder (:class:`~server.loadgen.sipload.SipFlooder`) is checked against a
scripted UAS on loopback: what it counts, and that it ACKs as RFC 3261 says.
"""

from __future__ import annotations

import asyncio
import csv
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import cast

import pytest

from server.loadgen import runner, sipload
from server.loadgen.sipload import FloodResult, FloodSpec, SipFlooder, SipWorkerSpec
from server.sip.message import Request, make_response, parse_message
from tests.test_sip_sipp import sipp_binary

SCENARIO = Path(__file__).parent / "sipp" / "flood_invite.xml"
MAX_CALLS = 20
FLOOD_INVITES = 1000
FLOOD_RATE_PER_S = 250


def http_status(url: str) -> int:
    """The status of ``GET url`` (0 when the server did not answer)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def wait_until_full(http_url: str, timeout_s: float) -> None:
    """Until ``/readyz`` says 503 (every call slot taken by a live call)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if http_status(f"{http_url}/readyz") == 503:
            return
        time.sleep(0.05)
    pytest.fail(f"the server never filled its {MAX_CALLS} call slots")


def sipp_counts(run_dir: Path) -> dict[str, int]:
    """Total calls sipp placed, and how many succeeded or failed, from its statistics CSV."""
    (stats,) = run_dir.glob("*_.csv")
    with stats.open(newline="") as f:
        rows = list(csv.DictReader(f, delimiter=";"))
    last = rows[-1]
    return {
        "created": int(last["TotalCallCreated"]),
        "successful": int(last["SuccessfulCall(C)"]),
        "failed": int(last["FailedCall(C)"]),
    }


@pytest.mark.slow
def test_an_invite_flood_gets_503_and_leaves_live_calls_alone(tmp_path: Path) -> None:
    sipp = sipp_binary()
    shutil.copy(SCENARIO, tmp_path / SCENARIO.name)
    server = sipload.spawn_sip_server(core=0, log_path=tmp_path / "server.log", max_calls=MAX_CALLS)
    plan = sipload.SipLoadPlan(
        server=server.sip,
        calls=MAX_CALLS,
        duration_s=14.0,
        ramp_s=1.0,
        server_pid=server.pid,
        http_url=server.http_url,
        generator_cpus=runner.other_cpus(0),
    )
    health: list[int] = []
    try:
        with ThreadPoolExecutor(1) as pool:
            load = pool.submit(sipload.run_sip_load, plan)
            wait_until_full(server.http_url, timeout_s=20)
            flood = subprocess.Popen(
                [
                    sipp,
                    f"{server.sip[0]}:{server.sip[1]}",
                    *("-sf", SCENARIO.name, "-s", plan.user),
                    *("-m", str(FLOOD_INVITES), "-r", str(FLOOD_RATE_PER_S), "-rp", "1000"),
                    *("-l", str(FLOOD_INVITES)),
                    *("-i", "127.0.0.1", "-p", str(runner.free_port())),
                    *("-mi", "127.0.0.1", "-mp", str(runner.free_port()), "-t", "u1"),
                    *("-nostdin", "-timeout", "60s", "-timeout_error"),
                    *("-trace_err", "-trace_stat", "-fd", "1"),
                ],
                cwd=tmp_path,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                while flood.poll() is None:
                    health.append(http_status(f"{server.http_url}/healthz"))
                    time.sleep(0.2)
            finally:
                if flood.poll() is None:
                    flood.kill()
                flood.wait()
            during = sipload.read_server_metrics(server.http_url)
            summary = load.result(timeout=90)
    finally:
        assert server.stop() == 0  # drained and exited cleanly on SIGTERM

    # Every flood INVITE was refused with 503 + Retry-After, by sipp's count and ours.
    errors = "\n".join(p.read_text(errors="replace")[-3000:] for p in tmp_path.glob("*errors*"))
    assert flood.returncode == 0, f"sipp exited {flood.returncode}:\n{errors}"
    assert sipp_counts(tmp_path) == {
        "created": FLOOD_INVITES,
        "successful": FLOOD_INVITES,
        "failed": 0,
    }
    assert during is not None
    assert during["refused_calls"] == {"full": FLOOD_INVITES}
    # The flood ran against a full server and no live call ended meanwhile.
    assert during["active_calls_at_end"] == MAX_CALLS
    assert during["sip_calls_ended"] == {}
    # The server stayed healthy throughout.
    assert health and all(status == 200 for status in health), health

    # The live calls noticed nothing: set up, echoed byte for byte, hung up by us.
    assert summary["errors"] == {}
    assert summary["calls_started"] == summary["calls_answered"] == MAX_CALLS
    assert summary["calls_completed"] == MAX_CALLS
    echo = summary["echo"]
    assert echo["replies"] >= MAX_CALLS
    assert echo["inexact"] == 0
    assert echo["exact"] == echo["replies"]
    packets = summary["packets"]
    assert packets["lost"] == packets["malformed"] == packets["wrong_ssrc"] == 0
    assert summary["outbound_lateness_ms"]["n"] == packets["received"]
    metrics = summary["server_metrics"]
    assert metrics["sip_calls_ended"] == {"remote_bye": MAX_CALLS}
    assert metrics["refused_calls"] == {"full": FLOOD_INVITES}
    assert metrics["active_calls_at_end"] == 0


# ------------------------------------------------------------- the built-in flooder


class _ScriptedUas(asyncio.DatagramProtocol):
    """Answers the n-th INVITE 200 (n = 0), 486 (1), 503 without Retry-After (2) or
    503 with ``Retry-After: 5`` (the rest), each after a 100; records what comes back."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.invites: dict[str, Request] = {}
        self.requests: list[Request] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # CPython's own datagram transport does not subclass DatagramTransport.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        message = parse_message(data)
        assert isinstance(message, Request)
        assert self.transport is not None
        self.requests.append(message)
        if message.method != "INVITE":
            if message.method == "BYE":
                self.transport.sendto(make_response(message, 200).serialize(), addr)
            return
        n = len(self.invites)
        self.invites[message.call_id or ""] = message
        self.transport.sendto(make_response(message, 100).serialize(), addr)
        if n == 0:
            contact = (("Contact", f"<sip:echo@{self.transport.get_extra_info('sockname')[0]}>"),)
            final = make_response(message, 200, to_tag="uas0", headers=contact)
        elif n == 1:
            final = make_response(message, 486, to_tag="uas1")
        elif n == 2:
            final = make_response(message, 503, to_tag="uas2")
        else:
            final = make_response(message, 503, to_tag=f"uas{n}", headers=(("Retry-After", "5"),))
        self.transport.sendto(final.serialize(), addr)


def test_the_flooder_counts_each_invite_once_by_its_final_and_acks_per_rfc3261() -> None:
    n_invites = 12

    async def main() -> tuple[FloodResult | None, _ScriptedUas]:
        loop = asyncio.get_running_loop()
        uas = _ScriptedUas()
        transport, _ = await loop.create_datagram_endpoint(lambda: uas, local_addr=("127.0.0.1", 0))
        now = time.monotonic()
        spec = SipWorkerSpec(
            server=transport.get_extra_info("sockname")[:2],
            user="echo",
            indices=[],
            start_at_s=now,
            ramp_s=0.0,
            duration_s=1.0,
            utterances=[],
            flood=FloodSpec(rate_per_s=200.0, start_at_s=now, stop_at_s=now + n_invites / 200),
        )
        result = await SipFlooder(spec).run()
        transport.close()
        return result.flood, uas

    flood, uas = asyncio.run(main())
    assert flood == FloodResult(
        sent=n_invites,
        finals={"200": 1, "486": 1, "503": n_invites - 2},
        retry_after=n_invites - 3,
        answered=1,
        unanswered=0,
    )
    assert len(uas.invites) == n_invites  # each a new call
    acks = [r for r in uas.requests if r.method == "ACK"]
    assert len(acks) == n_invites
    for ack in acks:
        invite = uas.invites[ack.call_id or ""]
        if ack.to_tag == "uas0":
            assert ack.branch != invite.branch  # the 2xx's ACK is a transaction of its own
        else:
            assert ack.branch == invite.branch  # a failure's ACK is the INVITE's
    (bye,) = [r for r in uas.requests if r.method == "BYE"]
    assert bye.to_tag == "uas0"  # the call that should have been refused, hung up at once


def test_the_flood_runs_only_while_every_call_is_live() -> None:
    plan = sipload.SipLoadPlan(server=("127.0.0.1", 5060), calls=10, duration_s=10.0, ramp_s=2.0)
    start, stop = plan.flood_window(100.0)
    assert start == pytest.approx(100.0 + 2.0 + sipload.FLOOD_MARGIN_S)
    assert stop == pytest.approx(100.0 + 10.0 - sipload.FLOOD_MARGIN_S)
    plan.duration_s = 4.0
    with pytest.raises(ValueError, match="flood"):
        plan.flood_window(100.0)


def test_the_slo_fails_a_flood_not_refused_with_503_and_retry_after() -> None:
    def summary(flood: FloodResult) -> dict[str, object]:
        return {
            "calls": 10,
            "calls_answered": 10,
            "outbound_lateness_ms": {"p99": 5.0},
            "packets": {"lost": 0},
            "echo": {"inexact": 0},
            "errors": {},
            "server": {"cpu_fraction_at_full_load": 0.5},
            "generator": {"valid": True},
            "flood": {
                "sent": flood.sent,
                "refused_503": flood.refused_503,
                "retry_after": flood.retry_after,
            },
        }

    slo = sipload.SipSlo()
    good = FloodResult(sent=5, finals={"503": 5}, retry_after=5).merge(
        FloodResult(sent=2, finals={"503": 2}, retry_after=2)
    )
    assert good == FloodResult(sent=7, finals={"503": 7}, retry_after=7)
    verdict = sipload.check_slo(summary(good), slo)
    assert verdict["passed"] and verdict["checks"]["flood_refused"]["ok"]
    for bad in (
        FloodResult(sent=7, finals={"503": 6, "200": 1}, retry_after=6, answered=1),
        FloodResult(sent=7, finals={"503": 7}, retry_after=6),
        FloodResult(sent=7, finals={"503": 6}, retry_after=6, unanswered=1),
        FloodResult(),
    ):
        assert not sipload.check_slo(summary(bad), slo)["passed"], bad
