"""The ``voxgate`` command line."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from server import __version__

if TYPE_CHECKING:
    from server.config import Config


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voxgate", description="Real-time voice media server.")
    parser.add_argument("--version", action="version", version=f"voxgate {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="start the media server")
    serve.add_argument("--config", type=Path, help="TOML configuration file")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="TCP port to listen on (default 8080)")
    serve.add_argument(
        "--agent",
        choices=["pipeline", "echo", "loopback"],
        help="the agent that answers calls (default pipeline: STT -> LLM -> TTS)",
    )
    serve.add_argument(
        "--endpointing-ms", type=int, help="silence before the caller's turn ends (default 200)"
    )
    serve.add_argument(
        "--sip-port", type=int, help="SIP port, UDP and TCP (default 5060; 0 turns SIP off)"
    )
    serve.add_argument(
        "--rtp-ports", metavar="LOW-HIGH", help="RTP port range for SIP calls (default 10000-20000)"
    )

    bench = commands.add_parser("bench", help="run benchmarks")
    bench_kinds = bench.add_subparsers(dest="bench_kind", required=True, metavar="KIND")
    engine = bench_kinds.add_parser("engine", help="native kernels against their baselines")
    engine.add_argument("--json", type=Path, help="also write the results to this JSON file")
    engine.add_argument(
        "--pin",
        type=int,
        metavar="CORE",
        help="pin the benchmark process to this CPU core",
    )
    engine.add_argument(
        "--max-time",
        type=float,
        default=0.5,
        metavar="S",
        help="seconds spent measuring each benchmark (default 0.5)",
    )
    engine.add_argument(
        "-k", dest="select", help="only benchmarks matching this pytest -k expression"
    )

    load = bench_kinds.add_parser(
        "load", help="Twilio Media Streams load test against a running or spawned server"
    )
    load.add_argument(
        "--url", help="ws://host:port/twilio of a running server (default: spawn one pinned)"
    )
    load.add_argument("--calls", type=int, default=100, help="concurrent calls (default 100)")
    load.add_argument("--duration", type=float, default=30.0, help="seconds per call (default 30)")
    load.add_argument("--pid", type=int, help="server process to sample for CPU and RSS")
    load.add_argument("--json", type=Path, help="write the summary to this JSON file")
    load.add_argument("--plot", type=Path, help="write latency CDFs and CPU to this PNG")
    load.add_argument("--workers", type=int, help="generator processes (default: 1 per 400 calls)")
    load.add_argument("--ramp", type=float, help="seconds over which calls connect")
    load.add_argument(
        "--endpointing-ms", type=int, default=200, help="the server's endpointing (SLO)"
    )
    load.add_argument(
        "--server-core", type=int, default=0, help="core a spawned server is pinned to"
    )
    load.add_argument("--find-capacity", action="store_true", help="ramp calls until the SLO fails")
    load.add_argument("--start", type=int, default=100, help="capacity search: first step")
    load.add_argument("--step", type=int, default=100, help="capacity search: calls per step")
    load.add_argument("--max", type=int, default=3000, help="capacity search: last step")
    sip = bench_kinds.add_parser(
        "sip", help="SIP/RTP load test (G.711 echo calls) against a spawned or running server"
    )
    sip.add_argument("--calls", type=int, default=100, help="concurrent calls (default 100)")
    sip.add_argument("--duration", type=float, default=40.0, help="seconds per call (default 40)")
    sip.add_argument("--target", help="HOST:PORT of a running server's SIP (default: spawn one)")
    sip.add_argument("--http", help="http://HOST:PORT of that server, to read /metrics")
    sip.add_argument("--pid", type=int, help="server process to sample for CPU and RSS")
    sip.add_argument("--user", default="echo", help="Request-URI user (default echo)")
    sip.add_argument("--json", type=Path, help="write the summary to this JSON file")
    sip.add_argument("--workers", type=int, help="generator processes (default: 1 per 500 calls)")
    sip.add_argument("--ramp", type=float, help="seconds over which calls start")
    sip.add_argument(
        "--server-core",
        type=int,
        default=0,
        help="the server's core: a spawned one is pinned there, the generator avoids it",
    )
    sip.add_argument("--server-log", type=Path, help="append a spawned server's output here")
    sip.add_argument("--find-capacity", action="store_true", help="ramp calls until the SLO fails")
    sip.add_argument("--start", type=int, default=100, help="capacity search: first step")
    sip.add_argument("--step", type=int, default=100, help="capacity search: calls per step")
    sip.add_argument("--max", type=int, default=2000, help="capacity search: last step")
    sip.add_argument(
        "--flood-rate",
        type=float,
        default=0.0,
        help="new INVITEs per second while every call is live, each to be refused with 503 "
        "(a spawned server's max_calls is set to --calls)",
    )
    webrtc = bench_kinds.add_parser(
        "webrtc",
        help="browser -> server -> browser round trip in headless Chromium (from a checkout)",
    )
    webrtc.add_argument("--bursts", type=int, default=20, help="tone bursts per run")
    webrtc.add_argument("--rounds", type=int, default=3, help="runs of each receive buffer")
    webrtc.add_argument("--json", type=Path, help="write the results to this JSON file")
    webrtc.add_argument(
        "--variant", action="append", help="server settings to measure (repeatable; default: all)"
    )
    replay = bench_kinds.add_parser(
        "sip-replay",
        help="loss and jitter traces through the SIP media path against aiortc's buffer "
        "(from a checkout)",
    )
    replay.add_argument("--json", type=Path, help="write the results to this JSON file")
    return parser


def _checkout_main(module: str, kind: str) -> Callable[[list[str]], int]:
    """``main`` of a ``bench`` module, which only a voxgate checkout has (run from its root)."""
    if Path("bench/__init__.py").is_file() and "" not in sys.path:
        sys.path.insert(0, "")  # the console script does not put the current directory first
    try:
        loaded = importlib.import_module(module)
    except ImportError:
        raise SystemExit(f"voxgate bench {kind}: run it from a voxgate checkout") from None
    main: Callable[[list[str]], int] = loaded.main
    return main


def _bench_load(args: argparse.Namespace) -> int:
    import json

    from server.loadgen import runner
    from server.loadgen.plot import plot_summary

    if args.calls < 1 or args.duration <= 0:
        raise SystemExit("voxgate bench load: --calls and --duration must be positive")
    plan = runner.LoadPlan(
        url=args.url or "",
        calls=args.calls,
        duration_s=args.duration,
        ramp_s=args.ramp,
        workers=args.workers,
        server_pid=args.pid,
        endpointing_ms=args.endpointing_ms,
    )
    if args.find_capacity:
        if args.url:
            raise SystemExit("voxgate bench load: --find-capacity spawns its own servers")
        summary = runner.find_capacity(plan, args.start, args.step, args.max, args.server_core)
        print(f"capacity: {summary['calls_per_core']} calls on one core ({summary['stopped_by']})")
        ok = summary["calls_per_core"] > 0
    else:
        server = None
        if not args.url:
            server = runner.spawn_server(args.server_core, args.endpointing_ms)
            plan.url, plan.server_pid = server.url, server.pid
            plan.generator_cpus = runner.other_cpus(args.server_core)
        try:
            summary = runner.run_load(plan)
        finally:
            if server is not None:
                server.stop()
        print(runner.step_line(summary))
        ok = summary["slo"]["passed"] and summary["slo"]["valid"]
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    if args.plot:
        plot_summary(summary, args.plot)
    return 0 if ok else 1


def serve_config(args: argparse.Namespace) -> Config:
    """The configuration ``voxgate serve`` runs with: ``--config``, then the
    environment, then the command-line options.  Raises ``ConfigError``."""
    from server.config import load_config

    return load_config(
        args.config,
        overrides={
            "server.host": args.host,
            "server.port": args.port,
            "agent.name": args.agent,
            "agent.endpointing_ms": args.endpointing_ms,
            "sip.port": args.sip_port,
            "sip.rtp_ports": args.rtp_ports,
        },
    )


def _serve(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    from server.app import serve
    from server.config import ConfigError

    try:
        config = serve_config(args)
    except ConfigError as exc:
        print(f"voxgate: configuration error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=config.server.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        import uvloop

        return uvloop.run(serve(config))
    except ImportError:
        return asyncio.run(serve(config))


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "bench" and args.bench_kind == "engine":
        from server.benchreport import run_engine_benchmarks

        if args.max_time <= 0:
            raise SystemExit("voxgate bench engine: --max-time must be positive")
        return run_engine_benchmarks(
            json_path=args.json,
            pinned_core=args.pin,
            max_time_s=args.max_time,
            select=args.select,
        )
    if args.command == "bench" and args.bench_kind == "load":
        return _bench_load(args)
    if args.command == "bench" and args.bench_kind == "sip":
        from server.loadgen.sipload import run_cli

        return run_cli(args)
    json_option = ["--json", str(args.json)] if getattr(args, "json", None) else []
    if args.command == "bench" and args.bench_kind == "webrtc":
        options = ["--bursts", str(args.bursts), "--rounds", str(args.rounds), *json_option]
        for variant in args.variant or ():
            options += ["--variant", variant]
        return _checkout_main("bench.webrtc_roundtrip", "webrtc")(options)
    if args.command == "bench" and args.bench_kind == "sip-replay":
        return _checkout_main("bench.sip_replay", "sip-replay")(json_option)
    raise AssertionError(f"unhandled command {args.command!r}")


if __name__ == "__main__":
    sys.exit(main())
