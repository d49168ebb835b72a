"""voxgate's configuration: one typed structure from TOML plus ``VOXGATE_*`` variables.

Precedence, lowest first: defaults, the TOML file, environment variables,
command-line options.  An environment variable names a key by its path with
``__`` between levels, upper-case: ``VOXGATE_SERVER__PORT=8081``,
``VOXGATE_TWILIO__AUTH_TOKEN=...``.  Everything is validated at start; an
error names the bad key (``server.port``) and what was wrong.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import msgspec

ENV_PREFIX = "VOXGATE_"


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key."""


class ServerSection(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    host: str = "127.0.0.1"
    port: int = 8080
    public_url: str | None = None
    """Base URL carriers reach us at (``https://host``); TwiML's ``wss://`` URL derives from it."""
    max_calls: int = 1000
    drain_timeout_s: float = 30.0
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    outbound_lead_frames: int = 1
    """20 ms frames sent ahead of real time, so a late tick is not heard as a gap (0..2)."""

    def __post_init__(self) -> None:
        _check(0 <= self.port <= 65535, "server.port", f"must be in 0..65535, got {self.port}")
        _check(
            0 <= self.outbound_lead_frames <= 2,
            "server.outbound_lead_frames",
            f"must be in 0..2, got {self.outbound_lead_frames}",
        )
        _check(self.max_calls >= 1, "server.max_calls", f"must be >= 1, got {self.max_calls}")
        _check(
            self.drain_timeout_s >= 0,
            "server.drain_timeout_s",
            f"must be >= 0, got {self.drain_timeout_s}",
        )


class TwilioSection(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    auth_token: str | None = None
    """When set, webhook and WebSocket requests must carry a valid X-Twilio-Signature."""


class AgentSection(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    name: Literal["echo"] = "echo"
    endpointing_ms: int = 200
    """Silence after the caller's speech before the turn ends (ms)."""
    min_interruption_ms: int = 300
    false_interruption_timeout_ms: int = 1000
    preroll_ms: int = 200

    def __post_init__(self) -> None:
        for key in (
            "endpointing_ms",
            "min_interruption_ms",
            "false_interruption_timeout_ms",
            "preroll_ms",
        ):
            value = getattr(self, key)
            _check(0 <= value <= 60_000, f"agent.{key}", f"must be in 0..60000 ms, got {value}")


class Config(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    server: ServerSection = msgspec.field(default_factory=ServerSection)
    twilio: TwilioSection = msgspec.field(default_factory=TwilioSection)
    agent: AgentSection = msgspec.field(default_factory=AgentSection)


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


def _set_path(tree: dict[str, Any], path: list[str], value: Any, source: str) -> None:
    node = tree
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{source}: {'.'.join(path)} conflicts with a value at {part}")
        node = child
    node[path[-1]] = value


def _env_tree(environ: Mapping[str, str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name == ENV_PREFIX:
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX) :].split("__")]
        if any(not p for p in path):
            raise ConfigError(f"{name}: empty key part (use __ between levels)")
        _set_path(tree, path, value, name)
    return tree


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _key_of(error: msgspec.ValidationError) -> str:
    text = str(error)
    marker = "at `$."
    if marker in text:
        return text.split(marker, 1)[1].rstrip("`").replace("`", "")
    return ""


def load_config(
    path: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Build the configuration from ``path`` (TOML), ``environ`` and ``overrides``.

    ``overrides`` maps dotted keys (``"server.port"``) to values, for
    command-line options.  Raises :class:`ConfigError` naming the bad key.
    """
    tree: dict[str, Any] = {}
    if path is not None:
        try:
            tree = tomllib.loads(path.read_text())
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
    env = _env_tree(os.environ if environ is None else environ)
    tree = _merge(tree, env)
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set_path(tree, dotted.split("."), value, "command line")
    try:
        # Environment values are strings: strict=False lets "8081" become an int.
        return msgspec.convert(tree, Config, strict=not env)
    except msgspec.ValidationError as exc:
        key = _key_of(exc)
        message = str(exc).split(" - at ", 1)[0]
        if "Object contains unknown field" in message:
            field = message.split("`")[1] if "`" in message else "?"
            key = f"{key}.{field}" if key else field
            message = "unknown key"
        raise ConfigError(f"{key or 'config'}: {message}") from exc
