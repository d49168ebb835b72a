"""The pipeline agent under load: its own overhead per turn and its time to yield.

N Twilio callers (the load generator of ``voxgate bench load``) talk to one
``voxgate serve`` pinned to one core, whose pipeline uses provider fakes of known
latency running in another process (:mod:`bench.pipeline_fakes`): Deepgram STT
answering a Finalize 250 ms later, an OpenAI-compatible LLM whose first token
comes 300 ms after the request, Cartesia TTS whose first audio comes 200 ms
after the first text.  Every caller asks, barges in on the answer 600 ms into
it, waits for the answer to the interruption, rests, and again.

Reported, from the server's own per-turn records (``GET /calls/{id}``, polled
while the calls are live):

* overhead per turn: ``turn_total`` (end of the caller's speech to the first
  reply audio sent) minus the endpointing wait, the STT, the LLM's first token
  and the TTS's first audio, as the server measured them;
* time to yield: the caller's onset over the reply to the playout cleared
  (``clear`` sent) plus the clear to the LLM and TTS work cancelled;

and from the callers: turn latency and onset -> ``clear`` received.

    python -m bench.pipeline_load --calls 100 --duration 60 --json bench/results-pipeline.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.pipeline_fakes import API_KEY
from server.loadgen.runner import LoadPlan, other_cpus, percentiles, run_load, spawn_server


def config_toml(urls: dict[str, str], min_interruption_ms: int) -> str:
    stt = urls["stt"].replace("http://", "ws://")
    return f"""
[server]
log_level = "warning"
max_calls = 100000

[agent]
name = "pipeline"
greeting = ""
idle_hangup_s = 0
min_interruption_ms = {min_interruption_ms}
stt = ["deepgram"]
llm = ["openai"]
tts = ["cartesia"]

[providers.deepgram]
api_key = "{API_KEY}"
base_url = "{stt}"

[providers.openai]
api_key = "{API_KEY}"
base_url = "{urls["llm"]}/v1"

[providers.cartesia]
api_key = "{API_KEY}"
base_url = "{urls["tts"]}"
"""


class SummaryPoller:
    """Fetches every live call's summary every ``period_s``; keeps the latest per call."""

    def __init__(self, base_url: str, period_s: float = 5.0) -> None:
        self.base_url = base_url
        self.period_s = period_s
        self.latest: dict[str, dict[str, Any]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _get(self, path: str) -> Any:
        with urllib.request.urlopen(self.base_url + path, timeout=5) as response:
            return json.loads(response.read())

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            try:
                ids = self._get("/calls")["calls"]
            except OSError:
                continue
            for call_id in ids:
                try:
                    self.latest[call_id] = self._get(f"/calls/{call_id}")
                except OSError:
                    continue  # it just ended


def server_figures(summaries: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Percentiles of the server's per-turn records over every polled call."""
    turns = [t for s in summaries.values() for t in s.get("turns", [])]
    user = [t for t in turns if t["kind"] == "user"]
    stages: dict[str, list[float]] = {}
    for turn in user:
        for stage, ms in turn["stages_ms"].items():
            stages.setdefault(stage, []).append(ms)
    overhead = [t["overhead_ms"] for t in user if t["overhead_ms"] is not None]
    # A reply whose LLM and TTS work had all finished has nothing left to cancel.
    yields = [t["yield_ms"] + (t["cancel_ms"] or 0.0) for t in turns if t["yield_ms"] is not None]
    cancels = [t["cancel_ms"] for t in turns if t["cancel_ms"] is not None]
    outcomes: dict[str, int] = {}
    for turn in turns:
        outcomes[turn["outcome"]] = outcomes.get(turn["outcome"], 0) + 1
    violations: dict[str, int] = {}
    for turn in turns:
        for stage in turn["violations"]:
            violations[stage] = violations.get(stage, 0) + 1
    return {
        "calls": len(summaries),
        "turns": len(turns),
        "outcomes": outcomes,
        "violations": violations,
        "fallbacks": sum(len(t["fallbacks"]) for t in turns),
        "stages_ms": {stage: percentiles(v) for stage, v in stages.items()},
        "overhead_ms": percentiles(overhead),
        "time_to_yield_ms": percentiles(yields),
        "cancel_ms": percentiles(cancels),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--core", type=int, default=0, help="core the server is pinned to")
    parser.add_argument("--min-interruption-ms", type=int, default=300)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--server-log", type=Path)
    args = parser.parse_args()
    helpers = other_cpus(args.core)
    workdir = Path(tempfile.mkdtemp(prefix="voxgate-pipeline-bench-"))
    ports_file = workdir / "ports.json"
    fakes = subprocess.Popen(
        [
            *("taskset", "-c", ",".join(map(str, helpers))),
            sys.executable,
            *("-m", "bench.pipeline_fakes", "--ports-file", str(ports_file)),
        ]
    )
    try:
        deadline = time.monotonic() + 30
        while not ports_file.exists():
            if fakes.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the provider fakes did not start")
            time.sleep(0.1)
        urls = json.loads(ports_file.read_text())
        config = workdir / "voxgate.toml"
        config.write_text(config_toml(urls, args.min_interruption_ms))
        server = spawn_server(args.core, 200, args.server_log, config=config)
        base_url = server.url.replace("ws://", "http://").removesuffix("/twilio")
        poller = SummaryPoller(base_url)
        poller.start()
        try:
            plan = LoadPlan(
                url=server.url,
                calls=args.calls,
                duration_s=args.duration,
                generator_cpus=helpers,
                server_pid=server.pid,
            )
            load = run_load(plan)
        finally:
            poller.stop()
            server.stop()
    finally:
        fakes.terminate()
        fakes.wait(10)
    figures = server_figures(poller.latest)
    result = {
        "calls": args.calls,
        "duration_s": args.duration,
        "provider_latency_ms": {"stt_final": 250, "llm_first_token": 300, "tts_first_audio": 200},
        "min_interruption_ms": args.min_interruption_ms,
        "server_records": figures,
        "callers": {
            k: load[k]
            for k in (
                "calls_completed",
                "turns",
                "barge_ins",
                "turn_latency_ms",
                "barge_in_clear_ms",
                "barge_in_yield_ms",
                "outbound_lateness_ms",
                "underruns",
                "errors",
            )
        },
        "server_cost": {k: v for k, v in (load.get("server") or {}).items() if k != "timeline"},
        "generator_valid": load["generator"]["valid"],
    }
    text = json.dumps(result, indent=2)
    if args.json is not None:
        args.json.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
