"""The demo page in a real headless Chromium, talking to ``voxgate serve`` over WebRTC.

The fake microphone plays a WAV of two utterances: the first gets a reply, the
second starts while that reply plays and interrupts it.  Checked in the page
(AnalyserNode levels, data-channel events) and on the server (``/calls``):
the connection stays on loopback, the server's VAD hears the speech, the reply
audio reaches the page, the barge-in interrupts the reply, and closing the
page tears the call down.  Run with the echo agent and the offline pipeline.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from server.loadgen.runner import SpawnedServer, spawn_server
from tests.browser import chromium_for_tests
from tests.browser.chromium import Browser, Page
from tests.browser.fakemic import Timeline, speech_wav

pytestmark = pytest.mark.slow

RAW_AUDIO = "{echoCancellation: false, noiseSuppression: false, autoGainControl: false}"


def _server(tmp_path: Path, agent: str) -> Iterator[tuple[SpawnedServer, str]]:
    config = tmp_path / "voxgate.toml"
    config.write_text(
        f'[agent]\nname = "{agent}"\n'
        '[webrtc]\nice_addresses = ["127.0.0.1"]\nconnect_timeout_s = 10\n'
    )
    log = tmp_path / "server.log"
    server = spawn_server(core=0, endpointing_ms=200, log_path=log, config=config)
    base = "http" + server.url[len("ws") : -len("/twilio")]
    try:
        yield server, base
    finally:
        server.stop()


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


async def wait_until(what: str, check: Any, timeout_s: float) -> Any:
    """Poll ``check()`` (sync or async) until truthy; fail naming ``what``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    value = None
    while loop.time() < deadline:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what} (last: {value!r})")


async def selected_pair(page: Page) -> list[str]:
    """Addresses of the page's selected ICE candidate pair (local, remote)."""
    result: list[str] = await page.evaluate(
        """voxgate.pc.getStats().then((report) => {
            let pair = null;
            report.forEach((s) => {
                if (s.type === 'transport' && s.selectedCandidatePairId)
                    pair = report.get(s.selectedCandidatePairId);
            });
            if (!pair) return [];
            return [report.get(pair.localCandidateId).address,
                    report.get(pair.remoteCandidateId).address];
        })""",
        await_promise=True,
    )
    return result


async def run_conversation(
    base: str, timeline: Timeline, tmp_path: Path
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Play ``timeline`` into the page; return the page's state and the call's summary."""
    async with Browser.launch(
        fake_audio_wav=timeline.path, log_path=tmp_path / "chromium.log"
    ) as browser:
        page = await browser.new_page(base + "/")
        await page.evaluate(f"voxgate.start({{audio: {RAW_AUDIO}}})", await_promise=True)
        call_id = await page.evaluate("voxgate.callId")
        assert await selected_pair(page) == ["127.0.0.1", "127.0.0.1"]
        assert call_id in get_json(base + "/calls")["calls"]

        def interrupted() -> Any:
            summary = get_json(f"{base}/calls/{call_id}")
            return summary if summary["stats"]["interruptions"] >= 1 else None

        try:
            summary = await wait_until("the barge-in", interrupted, timeline.duration_s + 15)
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {get_json(f'{base}/calls/{call_id}')}") from None
        # The reply to the interruption, then the page's view of it all.
        await wait_until(
            "a reply after the barge-in",
            lambda: get_json(f"{base}/calls/{call_id}")["stats"]["turns"] >= 2,
            15,
        )
        await asyncio.sleep(1.0)
        state = await page.evaluate(
            """({state: voxgate.state, events: voxgate.events, transcript: voxgate.transcript,
                 turns: voxgate.turns, stats: voxgate.stats, activity: voxgate.remoteActivity,
                 error: voxgate.error})"""
        )
        summary = get_json(f"{base}/calls/{call_id}")
        await page.close()
        await wait_until(
            "the call to end after the page closed",
            lambda: call_id not in get_json(base + "/calls")["calls"],
            15,
        )
        console_errors = [line for line in page.console if line.startswith("exception")]
        assert not console_errors, console_errors
    return state, summary


def check_common(state: dict[str, Any], summary: dict[str, Any], timeline: Timeline) -> None:
    assert state["error"] is None
    stats = state["stats"]
    # The fake microphone was audible in the page, and the reply audio reached it.
    speech_s = sum(u.end_s - u.start_s for u in timeline.utterances)
    assert stats["micLoud"] > 0.2 * stats["micSamples"] * speech_s / timeline.duration_s
    assert stats["remoteLoud"] > 50  # samples above -40 dBFS, about 10 ms apart
    assert state["activity"], "no burst of agent audio in the page"
    states = [e["state"] for e in state["events"] if e["type"] == "state"]
    assert "user_speaking" in states and "bot_speaking" in states
    assert "paused" in states or "interrupted" in states
    latencies = [t["latency_ms"] for t in state["turns"] if t["latency_ms"] is not None]
    assert latencies and all(ms > 0 for ms in latencies)  # the greeting answers no speech
    assert summary["stats"]["frames_in"] > 100
    assert summary["stats"]["clears"] >= 1


@pytest.fixture
def echo_server(tmp_path: Path) -> Iterator[tuple[SpawnedServer, str]]:
    chromium_for_tests()
    yield from _server(tmp_path, "echo")


@pytest.fixture
def pipeline_server(tmp_path: Path) -> Iterator[tuple[SpawnedServer, str]]:
    chromium_for_tests()
    yield from _server(tmp_path, "pipeline")


async def test_echo_agent_in_the_browser(
    echo_server: tuple[SpawnedServer, str], tmp_path: Path
) -> None:
    _, base = echo_server
    first = "please tell me about the weather in paris today"
    timeline = speech_wav(
        tmp_path / "mic.wav",
        [(1.5, first), (5.3, "no stop that is not what I asked")],
        tail_s=6.0,
    )
    state, summary = await run_conversation(base, timeline, tmp_path)
    check_common(state, summary, timeline)
    # The echo of the first utterance was heard before the barge-in.
    assert summary["stats"]["interruptions"] >= 1


async def test_pipeline_agent_in_the_browser(
    pipeline_server: tuple[SpawnedServer, str], tmp_path: Path
) -> None:
    _, base = pipeline_server
    timeline = speech_wav(
        tmp_path / "mic.wav",
        [(6.0, "what can you do"), (7.9, "stop please what time is it")],
        tail_s=8.0,
    )
    state, summary = await run_conversation(base, timeline, tmp_path)
    check_common(state, summary, timeline)
    roles = {line["role"] for line in state["transcript"]}
    assert roles == {"user", "assistant"}, state["transcript"]
    kinds = {turn["kind"]: turn["outcome"] for turn in summary["turns"]}
    assert kinds.get("greeting") == "answered"
    assert any(t["kind"] == "user" and t["outcome"] == "interrupted" for t in summary["turns"])
    assert any(t["stages_ms"] for t in state["turns"]), "no per-stage breakdown in the page"


@pytest.fixture
def loopback_server(tmp_path: Path) -> Iterator[tuple[SpawnedServer, str]]:
    chromium_for_tests()
    yield from _server(tmp_path, "loopback")


async def test_round_trip_probes_time_every_burst_with_the_loopback_agent(
    loopback_server: tuple[SpawnedServer, str], tmp_path: Path
) -> None:
    """The page's two round-trip probes (what ``voxgate bench webrtc`` runs): each
    burst is echoed, detected, and timed after its own onset and before the next."""
    from bench.webrtc_roundtrip import TONE_WAV_PERIOD_MS, tone_bursts_wav

    _, base = loopback_server
    wav = tone_bursts_wav(tmp_path / "bursts.wav", seconds=20)
    async with Browser.launch(
        fake_audio_wav=wav, loop_audio=True, log_path=tmp_path / "chromium.log"
    ) as browser:
        page = await browser.new_page(base + "/")
        await page.evaluate(f"voxgate.start({{audio: {RAW_AUDIO}}})", await_promise=True)
        probe = await page.evaluate(
            "voxgate.measureRoundTrip({count: 4})", await_promise=True, timeout_s=30
        )
        mic = await page.evaluate(
            "voxgate.measureMicRoundTrip({count: 4})", await_promise=True, timeout_s=30
        )
        await page.evaluate("voxgate.stop()", await_promise=True)
    assert probe["sent"] == 4 and probe["detected"] >= 3, probe
    assert mic["sent"] == 4 and mic["detected"] == 4, mic
    for samples in (probe["samples"], probe["track_samples"], mic["samples"]):
        assert samples and all(0 < ms < TONE_WAV_PERIOD_MS for ms in samples), samples
    # The sent track carries the tone after the oscillator's graph does.
    assert probe["track_median_ms"] <= probe["median_ms"]
