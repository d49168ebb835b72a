"""Provider fakes of known latency for the pipeline load benchmark, in their own process.

Runs the loopback fakes of Deepgram live STT, OpenAI-compatible chat and
Cartesia TTS (the same ones the tests use, speaking the real protocols) on
free ports of 127.0.0.1 and writes ``{"stt": url, "llm": url, "tts": url}`` to
``--ports-file`` once they listen.  Latencies: the STT answers a Finalize
``--stt-final-ms`` later, the LLM's first token comes ``--llm-first-token-ms``
after the request (then one word every ``--llm-token-ms``), the TTS's first
audio ``--tts-first-audio-ms`` after a context's first text (then 250 ms of
audio every ``--tts-chunk-ms``: faster than real time, but still producing
when a caller barges in).

    python -m bench.pipeline_fakes --ports-file /tmp/ports.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from pathlib import Path

from aiohttp import web

from tests.fakes import cartesia, openai_chat
from tests.fakes.deepgram_stt import deepgram_stt_app
from tests.fakes.profile import Profile

API_KEY = "bench-key"
REPLY = "Sure, I can do that. Your table for two is booked for seven tonight, by the window."
"""The LLM's answer to every turn: about four seconds of fake TTS audio, whose first
sentence lasts longer than the LLM takes to write the second (no gap between them)."""
TRANSCRIPTS = ("book a table for two at seven", "stop, thanks") * 500
"""What the STT fake hears, utterance after utterance, on each connection."""


async def run(args: argparse.Namespace) -> None:
    apps = {
        "stt": deepgram_stt_app(
            api_key=API_KEY,
            script=TRANSCRIPTS,
            finalize_delay_ms=args.stt_final_ms,
            idle_timeout_s=3600.0,
        ),
        "llm": openai_chat.create_app(
            Profile(ttfb_ms=args.llm_first_token_ms, chunk_interval_ms=args.llm_token_ms),
            api_key=API_KEY,
            reply=REPLY,
            comments=False,
        ),
        "tts": cartesia.create_app(
            api_key=API_KEY,
            profile=Profile(ttfb_ms=args.tts_first_audio_ms, chunk_interval_ms=args.tts_chunk_ms),
        ),
    }
    runners: list[web.AppRunner] = []
    urls: dict[str, str] = {}
    for name, app in apps.items():
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        urls[name] = f"http://127.0.0.1:{port}"
        runners.append(runner)
    Path(args.ports_file).write_text(json.dumps(urls))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for runner in runners:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ports-file", required=True)
    parser.add_argument("--stt-final-ms", type=float, default=250.0)
    parser.add_argument("--llm-first-token-ms", type=float, default=300.0)
    parser.add_argument("--llm-token-ms", type=float, default=20.0)
    parser.add_argument("--tts-first-audio-ms", type=float, default=200.0)
    parser.add_argument(
        "--tts-chunk-ms",
        type=float,
        default=100.0,
        help="between audio chunks of 250 ms each (default 100: 2.5x real time)",
    )
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
