"""The headless-Chromium driver and fake-microphone files, against a real browser.

Browser tests serve tiny static pages from an aiohttp test server on 127.0.0.1 and
skip when Chromium is missing (``E2E_REQUIRE_BROWSER=1`` makes that a failure).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import wave
from pathlib import Path

import numpy as np
import pytest
from aiohttp import web
from aiohttp.pytest_plugin import AiohttpServer

from tests.browser import chromium_for_tests, fakemic
from tests.browser.chromium import (
    Browser,
    CdpError,
    ChromiumError,
    ConnectionClosedError,
    LaunchError,
    NavigationError,
    PageError,
    chromium_flags,
    find_chromium,
    profile_processes,
)

LOUD_DBFS = -40.0
"""An AnalyserNode reading above this counts as sound."""
QUIET_DBFS = -60.0
"""Every reading during digital silence stays below this."""
EDGE_S = 0.3
"""Readings this close to a speech/silence boundary are not judged either way."""

BASIC_PAGE = """<!doctype html><title>basic</title>
<script>
console.log("page loaded", 1 + 1);
console.warn("careful");
window.ready = true;
</script>"""

MIC_PAGE = """<!doctype html><title>mic</title>
<script>
// [ms since getUserMedia resolved, RMS level in dBFS], one reading every ~5 ms.
window.levels = [];
window.startMic = async function () {
  const stream = await navigator.mediaDevices.getUserMedia({audio: {
    echoCancellation: false, noiseSuppression: false, autoGainControl: false}});
  const t0 = performance.now();
  const ctx = new AudioContext();
  const analyser = ctx.createAnalyser();
  analyser.fftSize = 256;
  ctx.createMediaStreamSource(stream).connect(analyser);
  const buf = new Float32Array(analyser.fftSize);
  setInterval(() => {
    analyser.getFloatTimeDomainData(buf);
    let sum = 0;
    for (const x of buf) sum += x * x;
    const rms = Math.sqrt(sum / buf.length);
    window.levels.push([performance.now() - t0, rms > 0 ? 20 * Math.log10(rms) : -120]);
  }, 5);
  return ctx.state;
};
</script>"""


async def serve_pages(aiohttp_server: AiohttpServer) -> str:
    """Base URL of a loopback server with ``/basic`` and ``/mic``."""

    def page(path: str, html: str) -> web.RouteDef:
        async def handler(request: web.Request) -> web.Response:
            return web.Response(text=html, content_type="text/html")

        return web.get(path, handler)

    app = web.Application()
    app.add_routes([page("/basic", BASIC_PAGE), page("/mic", MIC_PAGE)])
    server = await aiohttp_server(app, host="127.0.0.1")
    return f"http://127.0.0.1:{server.port}"


def live_group_members(pgid: int) -> list[int]:
    """Non-zombie processes in process group ``pgid``."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(entry.name))
    return members


# --- pure functions: no browser needed ---------------------------------------------


def test_flags_are_hermetic_and_feed_the_fake_mic_once(tmp_path: Path) -> None:
    flags = chromium_flags(tmp_path / "profile", Path("rel/speech.wav"))
    for flag in (
        "--headless",
        "--no-sandbox",
        "--use-fake-device-for-media-stream",
        "--use-fake-ui-for-media-stream",
        "--allow-loopback-in-peer-connection",
        "--autoplay-policy=no-user-gesture-required",
        "--remote-debugging-port=0",
        "--remote-debugging-address=127.0.0.1",
        f"--user-data-dir={tmp_path / 'profile'}",
    ):
        assert flag in flags
    wav = Path("rel/speech.wav").absolute()
    assert f"--use-file-for-fake-audio-capture={wav}%noloop" in flags
    looped = chromium_flags(tmp_path, Path("/a.wav"), loop_audio=True)
    assert "--use-file-for-fake-audio-capture=/a.wav" in looped


def test_feature_switches_are_merged_into_one(tmp_path: Path) -> None:
    flags = chromium_flags(tmp_path, None, extra=["--disable-features=Foo,Bar", "--lang=en"])
    disabled = [f for f in flags if f.startswith("--disable-features=")]
    assert disabled == ["--disable-features=WebRtcHideLocalIpsWithMdns,Foo,Bar"]
    assert "--lang=en" in flags
    assert not any(f.startswith("--use-file-for-fake-audio-capture") for f in flags)


def test_chromium_bin_overrides_the_search(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHROMIUM_BIN", "/opt/nowhere/chrome")
    assert find_chromium() == "/opt/nowhere/chrome"


def test_compose_places_clips_on_a_silent_frame_grid() -> None:
    clip = np.full(480, 1000, dtype=np.int16)  # 10 ms at 48 kHz
    pcm = fakemic.compose([(0.5, clip), (0.51, clip), (0.7, None)])
    assert len(pcm) == round(0.7 * 48000)
    assert len(pcm) % 960 == 0
    assert np.count_nonzero(pcm) == 960
    assert np.all(pcm[24000:24960] == 1000)
    overlapped = fakemic.compose([(0.0, clip), (0.005, clip)])
    assert len(overlapped) == 960
    assert overlapped[300] == 2000


def test_write_wav_is_16_bit_mono(tmp_path: Path) -> None:
    pcm = (np.arange(960) - 480).astype(np.int16)
    path = fakemic.write_wav(tmp_path / "x.wav", pcm)
    with wave.open(str(path), "rb") as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 48000)
        assert np.array_equal(np.frombuffer(w.readframes(w.getnframes()), "<i2"), pcm)
    with pytest.raises(ValueError, match="int16"):
        fakemic.write_wav(tmp_path / "y.wav", pcm.astype(np.int32))


def test_speech_wav_timeline_matches_its_samples(tmp_path: Path) -> None:
    timeline = fakemic.speech_wav(tmp_path / "s.wav", [(0.4, "hello"), (1.6, "goodbye")])
    with wave.open(str(timeline.path), "rb") as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2")
    assert len(pcm) / 48000 == timeline.duration_s
    first, second = timeline.utterances
    assert (first.text, first.start_s, second.start_s) == ("hello", 0.4, 1.6)
    for u in timeline.utterances:
        piece = pcm[round(u.start_s * 48000) : round(u.end_s * 48000)]
        assert piece[0] != 0 and piece[-1] != 0  # trimmed speech spans the interval
        peak_dbfs = 20 * np.log10(np.max(np.abs(piece.astype(np.int32))) / 32767)
        assert -3.5 < peak_dbfs < -2.5
    for a, b in timeline.silences():
        assert not np.any(pcm[round(a * 48000) : round(b * 48000)])
    assert timeline.duration_s - second.end_s >= fakemic.TAIL_S
    assert timeline.speaking_at(first.start_s + 0.01) == first
    assert timeline.speaking_at(first.end_s + 0.01) is None
    with pytest.raises(ValueError, match="overlaps"):
        fakemic.speech_wav(tmp_path / "o.wav", [(0.0, "hello there"), (0.1, "again")])


async def test_a_24_bit_wav_is_refused_before_launch(tmp_path: Path) -> None:
    path = tmp_path / "deep.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(3)
        w.setframerate(48000)
        w.writeframes(bytes(300))
    with pytest.raises(ValueError, match="24-bit"):
        await Browser.launch(fake_audio_wav=path, chromium="/nonexistent/chromium")


async def test_a_browser_that_dies_at_start_reports_its_log(tmp_path: Path) -> None:
    fake = tmp_path / "fake-chromium"
    fake.write_text("#!/bin/sh\necho 'fake chromium refuses to start' >&2\nexit 3\n")
    fake.chmod(0o755)
    with pytest.raises(LaunchError, match="fake chromium refuses to start"):
        await Browser.launch(chromium=str(fake))


# --- a real browser ------------------------------------------------------------------


async def test_page_evaluate_console_errors_and_clean_close(
    aiohttp_server: AiohttpServer,
) -> None:
    binary = chromium_for_tests()
    base = await serve_pages(aiohttp_server)
    tasks_before = asyncio.all_tasks()

    browser = await Browser.launch(chromium=binary)
    try:
        assert (await browser.version())["product"].startswith(("Chrome", "HeadlessChrome"))
        assert os.getpgid(browser.pid) == browser.pid  # its own process group
        page = await browser.new_page(f"{base}/basic")
        assert await page.evaluate("window.ready && 6 * 7") == 42
        assert await page.evaluate("({a: [1, 'x', null]})") == {"a": [1, "x", None]}
        assert await page.evaluate("undefined") is None
        assert await page.evaluate("new Promise(r => setTimeout(() => r('later'), 20))", True) == (
            "later"
        )
        assert "log: page loaded 2" in page.console
        assert "warning: careful" in page.console

        await page.evaluate("setTimeout(() => console.error('oops', 3), 10); 0")
        assert await page.wait_for("window.ready", timeout_s=5) is True
        await page.wait_for("document.title === 'basic'", timeout_s=5)
        with pytest.raises(TimeoutError, match="last value 0"):
            await page.wait_for("0", timeout_s=0.2)
        while "error: oops 3" not in page.console:
            await asyncio.sleep(0.02)

        with pytest.raises(PageError, match="Error: boom") as thrown:
            await page.evaluate("throw new Error('boom')")
        assert thrown.value.text.startswith("Uncaught")
        with pytest.raises(PageError, match="TypeError: nope"):
            await page.evaluate("Promise.reject(new TypeError('nope'))", await_promise=True)
        with pytest.raises(CdpError, match="wasn't found"):
            await page.send("No.suchMethod")
        await page.goto(f"{base}/mic")
        assert await page.evaluate("document.title + ' ' + typeof window.startMic") == (
            "mic function"
        )
        await page.goto(f"{base}/mic#same-document")
        assert await page.evaluate("location.hash") == "#same-document"
        with pytest.raises(NavigationError, match="net::ERR_"):
            await page.goto("http://127.0.0.1:9/")  # a port Chromium refuses to load
        await page.close()
        assert "DevTools listening" in browser.log_text()
    finally:
        await browser.close()

    with pytest.raises(ProcessLookupError):
        os.kill(browser.pid, 0)
    assert live_group_members(browser.pid) == []
    assert profile_processes(browser.profile_dir) == []
    assert not browser.profile_dir.exists()
    assert "DevTools listening" in browser.log_text()  # kept after the profile is gone
    assert [t for t in asyncio.all_tasks() - tasks_before if not t.done()] == []


async def test_hung_and_crashed_pages_fail_without_hanging(
    aiohttp_server: AiohttpServer,
) -> None:
    binary = chromium_for_tests()
    base = await serve_pages(aiohttp_server)
    async with Browser.launch(chromium=binary) as browser:
        page = await browser.new_page(f"{base}/basic")
        with pytest.raises(TimeoutError, match=r"Runtime\.evaluate: no reply within 0\.3 s"):
            await page.evaluate("new Promise(() => {})", await_promise=True, timeout_s=0.3)
        assert await page.evaluate("1 + 1") == 2  # a late reply does not confuse the next one

        sibling = await browser.new_page(f"{base}/basic")
        hung = asyncio.create_task(page.evaluate("new Promise(() => {})", await_promise=True))
        with contextlib.suppress(ChromiumError, TimeoutError):
            await page.send("Page.crash", timeout_s=5)  # Chromium may not answer this one
        with pytest.raises(ConnectionClosedError, match="crashed"):
            await hung
        with pytest.raises(ConnectionClosedError, match="crashed"):
            await page.evaluate("1")
        assert await sibling.evaluate("window.ready") is True


async def record_levels(browser: Browser, base: str, until_s: float) -> list[tuple[float, float]]:
    """(s since the mic started, dBFS) readings of the fake mic for ``until_s`` seconds."""
    page = await browser.new_page(f"{base}/mic")
    assert await page.evaluate("startMic()", await_promise=True) == "running"
    await page.wait_for(
        f"window.levels.length && window.levels.at(-1)[0] > {until_s * 1000}", until_s + 10
    )
    levels = await page.evaluate("window.levels")
    await page.close()
    return [(t_ms / 1000, dbfs) for t_ms, dbfs in levels]


def readings(levels: list[tuple[float, float]], start_s: float, end_s: float) -> list[float]:
    return [dbfs for t_s, dbfs in levels if start_s <= t_s < end_s]


async def test_fake_mic_plays_speech_when_the_timeline_says(
    aiohttp_server: AiohttpServer, tmp_path: Path
) -> None:
    binary = chromium_for_tests()
    base = await serve_pages(aiohttp_server)
    timeline = fakemic.speech_wav(
        tmp_path / "speech.wav", [(0.8, "hello there"), (2.4, "the quick brown fox")], tail_s=0.8
    )
    until_s = timeline.duration_s + 0.5
    async with Browser.launch(timeline.path, chromium=binary) as browser:
        levels = await record_levels(browser, base, until_s)

    for u in timeline.utterances:
        during = readings(levels, u.start_s + 0.05, u.end_s - 0.05)
        assert len(during) > 20
        loud = sum(dbfs > LOUD_DBFS for dbfs in during) / len(during)
        assert loud > 0.3, f"{u.text!r}: only {loud:.0%} of readings above {LOUD_DBFS} dBFS"
    # Lead-in, the pause between sentences and (played once, no loop) everything after.
    silences = [*timeline.silences()[:-1], (timeline.utterances[-1].end_s, until_s)]
    assert len(silences) == 3
    for a, b in silences:
        quiet = readings(levels, a + EDGE_S, b - EDGE_S)
        assert len(quiet) > 20
        assert max(quiet) < QUIET_DBFS, f"sound between {a:.2f} s and {b:.2f} s"


async def test_fake_mic_with_a_silent_wav_stays_quiet(
    aiohttp_server: AiohttpServer, tmp_path: Path
) -> None:
    binary = chromium_for_tests()
    base = await serve_pages(aiohttp_server)
    timeline = fakemic.silent_wav(tmp_path / "silence.wav", 1.5)
    log_path = tmp_path / "chromium.log"
    async with Browser.launch(timeline.path, log_path=log_path, chromium=binary) as browser:
        levels = await record_levels(browser, base, timeline.duration_s)
    assert "DevTools listening" in log_path.read_text(errors="replace")  # kept: ours
    assert len(levels) > 100
    assert max(dbfs for _, dbfs in levels) < QUIET_DBFS  # not Chromium's default beep
