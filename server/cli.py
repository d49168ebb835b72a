"""The ``voxgate`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from server import __version__


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voxgate", description="Real-time voice media server.")
    parser.add_argument("--version", action="version", version=f"voxgate {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="start the media server")
    serve.add_argument("--config", type=Path, help="TOML configuration file")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="TCP port to listen on (default 8080)")
    serve.add_argument("--agent", choices=["echo"], help="the agent that answers calls")
    serve.add_argument(
        "--endpointing-ms", type=int, help="silence before the caller's turn ends (default 200)"
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
    return parser


def _serve(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    from server.app import serve
    from server.config import ConfigError, load_config

    try:
        config = load_config(
            args.config,
            overrides={
                "server.host": args.host,
                "server.port": args.port,
                "agent.name": args.agent,
                "agent.endpointing_ms": args.endpointing_ms,
            },
        )
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
    raise AssertionError(f"unhandled command {args.command!r}")


if __name__ == "__main__":
    sys.exit(main())
