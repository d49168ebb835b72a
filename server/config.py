"""voxgate's configuration: one typed structure from TOML plus ``VOXGATE_*`` variables.

Precedence, lowest first: defaults, the TOML file, environment variables,
command-line options.  An environment variable names a key by its path with
``__`` between levels, upper-case: ``VOXGATE_SERVER__PORT=8081``,
``VOXGATE_TWILIO__AUTH_TOKEN=...``.  Everything is validated at start; an
error names the bad key (``server.port``) and what was wrong.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import msgspec

from server.providers.registry import STAGE_PROVIDERS, ProvidersSection

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


class IceServer(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """One STUN or TURN server, as a browser's ``RTCIceServer``."""

    urls: tuple[str, ...]
    """``stun:host:port`` or ``turn:host:port?transport=udp|tcp`` (``turns:`` for TLS)."""
    username: str | None = None
    credential: str | None = None


class WebRtcSection(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """The browser front door (``POST /webrtc/offer``, WHIP at ``/whip``)."""

    enabled: bool = True
    ice_servers: tuple[IceServer, ...] = ()
    """STUN/TURN servers for the server's own candidates; none: host candidates only."""
    ice_addresses: tuple[str, ...] = ()
    """Local addresses to offer as host candidates; empty: every interface, or
    127.0.0.1 on a host with no other.  ``["127.0.0.1"]`` keeps WebRTC on loopback
    (connectivity checks from other addresses are then ignored)."""
    connect_timeout_s: float = 10.0
    """Offer answered to ICE and DTLS connected; past it the call is torn down."""
    max_offer_bytes: int = 32_768
    """Largest offer (or trickle PATCH) body accepted."""
    receive_prefetch_frames: int = 0
    """Inbound audio packets held before decoding: 0 passes each packet on as it
    arrives, in order (aiortc's own buffer holds 4: about 80 ms more latency)."""
    send_packet_ms: Literal[10, 20] = 20
    """Duration of each outbound Opus packet (ms).  10 lets the browser's jitter
    buffer run one short packet deep, at the cost of twice the packets."""

    def __post_init__(self) -> None:
        for i, server in enumerate(self.ice_servers):
            _check(bool(server.urls), f"webrtc.ice_servers[{i}].urls", "needs at least one URL")
            for url in server.urls:
                scheme = url.partition(":")[0]
                _check(
                    scheme in ("stun", "stuns", "turn", "turns"),
                    f"webrtc.ice_servers[{i}].urls",
                    f"{url!r} is not a stun:, stuns:, turn: or turns: URL",
                )
                _check(
                    not scheme.startswith("turn") or server.username is not None,
                    f"webrtc.ice_servers[{i}].username",
                    "a TURN server needs a username and credential",
                )
        for address in self.ice_addresses:
            try:
                ipaddress.ip_address(address)
            except ValueError:
                raise ConfigError(
                    f"webrtc.ice_addresses: {address!r} is not an IP address"
                ) from None
        _check(
            0.5 <= self.connect_timeout_s <= 120,
            "webrtc.connect_timeout_s",
            f"must be in 0.5..120 s, got {self.connect_timeout_s}",
        )
        _check(
            1024 <= self.max_offer_bytes <= 1_048_576,
            "webrtc.max_offer_bytes",
            f"must be in 1024..1048576, got {self.max_offer_bytes}",
        )
        _check(
            0 <= self.receive_prefetch_frames <= 8,
            "webrtc.receive_prefetch_frames",
            f"must be in 0..8, got {self.receive_prefetch_frames}",
        )


AgentName = Literal["echo", "pipeline", "loopback"]


class SipTrunk(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """A carrier or PBX we register to and place outbound calls through."""

    name: str
    registrar: str
    """``host[:port]`` of the registrar / outbound proxy."""
    username: str
    password: str
    domain: str | None = None
    """The domain of our address of record (default: the registrar's host)."""
    transport: Literal["udp", "tcp"] = "udp"
    register: bool = True
    expires_s: int = 3600
    """Registration lifetime asked for; we re-register at about 60 % of what is granted."""

    def __post_init__(self) -> None:
        key = f"sip.trunks[{self.name}]"
        _check(bool(self.name), "sip.trunks.name", "must not be empty")
        _check(bool(self.registrar), f"{key}.registrar", "must be host[:port]")
        _check(
            60 <= self.expires_s <= 86_400,
            f"{key}.expires_s",
            f"must be in 60..86400 s, got {self.expires_s}",
        )


class SipSection(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """The SIP front door (UDP/TCP signalling, RTP media from a port range)."""

    host: str = "127.0.0.1"
    """Address SIP and RTP listen on."""
    port: int = 5060
    """SIP port (UDP and TCP); 0 turns SIP off."""
    transports: tuple[Literal["udp", "tcp"], ...] = ("udp", "tcp")
    external_ip: str | None = None
    """Address advertised in Contact and SDP when ``host`` is not reachable as is (NAT)."""
    rtp_ports: str = "10000-20000"
    """``LOW-HIGH``: even ports for RTP, each with RTCP on the next odd port."""
    answer_delay_ms: int = 0
    """How long a call rings (180) before the 200; a CANCEL meanwhile ends it with 487."""
    media_timeout_s: float = 30.0
    """No RTP for this long (not on hold) ends the call with BYE; 0: never."""
    rtp_wait_for_peer: bool = False
    """Send RTP only once the caller's own RTP arrived, to where it came from (for
    callers behind NAT whose SDP address is unreachable; "comedia").  Off: send to
    the SDP address at once, which opens our side's NAT pinholes, and switch to the
    caller's real source when it latches."""
    session_expires_s: int = 1800
    """RFC 4028 interval offered to callers that support session timers."""
    min_se_s: int = 90
    routes: dict[str, AgentName] = msgspec.field(default_factory=dict)
    """Request-URI user part -> agent; other users reach ``agent.name``."""
    codecs: tuple[str, ...] = ("opus", "G722", "PCMU", "PCMA")
    """Codecs we accept, by preference (the caller's order wins among them)."""
    trunks: tuple[SipTrunk, ...] = ()

    def __post_init__(self) -> None:
        _check(0 <= self.port <= 65535, "sip.port", f"must be in 0..65535, got {self.port}")
        _check(bool(self.transports), "sip.transports", "needs udp, tcp or both")
        low, high = self.rtp_port_range
        _check(
            1024 <= low < high <= 65535 and high - low >= 2,
            "sip.rtp_ports",
            f"must be LOW-HIGH within 1024..65535 with room for one call, got {self.rtp_ports!r}",
        )
        _check(
            0 <= self.answer_delay_ms <= 60_000,
            "sip.answer_delay_ms",
            f"must be in 0..60000 ms, got {self.answer_delay_ms}",
        )
        _check(
            self.media_timeout_s >= 0,
            "sip.media_timeout_s",
            f"must be >= 0 (0: never), got {self.media_timeout_s}",
        )
        _check(
            90 <= self.min_se_s <= self.session_expires_s,
            "sip.min_se_s",
            f"must be >= 90 s and <= session_expires_s, got {self.min_se_s}",
        )
        known = {"opus", "g722", "pcmu", "pcma"}
        for codec in self.codecs:
            _check(
                codec.lower() in known,
                "sip.codecs",
                f"unknown codec {codec!r} (one of opus, G722, PCMU, PCMA)",
            )
        names = [t.name for t in self.trunks]
        _check(len(set(names)) == len(names), "sip.trunks", "two trunks share a name")

    @property
    def rtp_port_range(self) -> tuple[int, int]:
        """``(low, high)`` of :attr:`rtp_ports`; ``(0, 0)`` if it does not parse."""
        low, sep, high = self.rtp_ports.partition("-")
        if not sep or not low.strip().isdigit() or not high.strip().isdigit():
            return 0, 0
        return int(low), int(high)


DEFAULT_INSTRUCTIONS = (
    "You are a helpful voice assistant on a phone call. Answer in one or two short, "
    "plain spoken sentences: no lists, no markdown, no emoji."
)


class AgentSection(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    name: AgentName = "pipeline"
    """``pipeline``: STT -> LLM -> TTS; ``echo``: plays the caller's utterance back;
    ``loopback``: plays every caller frame straight back (a media echo test)."""
    endpointing_ms: int = 200
    """Silence after the caller's speech before the turn ends (ms)."""
    min_interruption_ms: int = 300
    false_interruption_timeout_ms: int = 1000
    preroll_ms: int = 200
    """Echo agent: caller audio before the speech onset included in the reply (ms)."""
    stt: tuple[str, ...] = ("sphinx",)
    """STT providers in fallback order (names of ``[providers.*]`` sections)."""
    llm: tuple[str, ...] = ("rules",)
    """LLM providers in fallback order."""
    tts: tuple[str, ...] = ("espeak",)
    """TTS providers in fallback order; the offline espeak voice speaks fillers and apologies."""
    language: str | None = None
    """Language asked of STT (BCP 47, e.g. ``en-US``); ``None``: the provider's default."""
    instructions: str = DEFAULT_INSTRUCTIONS
    """The LLM's system message."""
    greeting: str = "Hello, this is voxgate. How can I help you?"
    """Spoken when the call starts; empty: say nothing and listen."""
    filler: str = "One moment."
    """Spoken when no reply audio is ready ``budgets.turn_total_ms`` after the caller stopped."""
    apology: str = "Sorry, I'm having trouble right now. Please say that again."
    """Spoken when every provider of a stage failed."""
    max_history_messages: int = 24
    """User and assistant messages kept for the LLM (the oldest go first)."""
    max_call_s: float = 3600.0
    """Hang up after this long (s); 0: never."""
    idle_hangup_s: float = 60.0
    """Hang up after this long without the caller speaking or the agent talking (s); 0: never."""

    def __post_init__(self) -> None:
        for key in (
            "endpointing_ms",
            "min_interruption_ms",
            "false_interruption_timeout_ms",
            "preroll_ms",
        ):
            value = getattr(self, key)
            _check(0 <= value <= 60_000, f"agent.{key}", f"must be in 0..60000 ms, got {value}")
        for key in ("max_call_s", "idle_hangup_s"):
            value = getattr(self, key)
            _check(value >= 0, f"agent.{key}", f"must be >= 0 (0: never), got {value}")
        _check(
            self.max_history_messages >= 2,
            "agent.max_history_messages",
            f"must be >= 2, got {self.max_history_messages}",
        )
        for stage in ("stt", "llm", "tts"):
            chain = getattr(self, stage)
            _check(bool(chain), f"agent.{stage}", "needs at least one provider")
            _check(
                len(set(chain)) == len(chain), f"agent.{stage}", f"lists a provider twice: {chain}"
            )


class BudgetsSection(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Per-stage latency deadlines (ms); a stage past its deadline falls back and is counted."""

    eou_ms: int = 1000
    """End of the caller's speech to the turn decision (the turn machine's longest wait)."""
    stt_final_ms: int = 600
    """Turn decision to the final transcript."""
    llm_first_token_ms: int = 1500
    """LLM request to its first token."""
    tts_first_audio_ms: int = 1000
    """First text sent to TTS to its first audio."""
    turn_total_ms: int = 2500
    """End of the caller's speech to the first reply audio leaving the server."""

    def __post_init__(self) -> None:
        for key in ("eou_ms", "stt_final_ms", "llm_first_token_ms", "tts_first_audio_ms"):
            value = getattr(self, key)
            _check(20 <= value <= 60_000, f"budgets.{key}", f"must be in 20..60000 ms, got {value}")
        _check(
            self.turn_total_ms >= 100,
            "budgets.turn_total_ms",
            f"must be >= 100 ms, got {self.turn_total_ms}",
        )


class Config(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    server: ServerSection = msgspec.field(default_factory=ServerSection)
    twilio: TwilioSection = msgspec.field(default_factory=TwilioSection)
    webrtc: WebRtcSection = msgspec.field(default_factory=WebRtcSection)
    sip: SipSection = msgspec.field(default_factory=SipSection)
    agent: AgentSection = msgspec.field(default_factory=AgentSection)
    budgets: BudgetsSection = msgspec.field(default_factory=BudgetsSection)
    providers: ProvidersSection = msgspec.field(default_factory=ProvidersSection)

    def __post_init__(self) -> None:
        if self.agent.name != "pipeline":
            return
        for stage, kinds in STAGE_PROVIDERS.items():
            for i, name in enumerate(getattr(self.agent, stage)):
                _check(
                    name in kinds,
                    f"agent.{stage}[{i}]",
                    f"unknown {stage} provider {name!r} (one of: {', '.join(sorted(kinds))})",
                )
                _check(
                    getattr(self.providers, name) is not None,
                    f"providers.{name}",
                    f"agent.{stage} uses {name!r} but [providers.{name}] is not configured "
                    "(it needs at least api_key)",
                )


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


ENV_ALIASES = {"VOXGATE_SIP_PORT": "VOXGATE_SIP__PORT"}
"""Documented short names of some variables."""


def _env_tree(environ: Mapping[str, str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for given, value in environ.items():
        if not given.startswith(ENV_PREFIX) or given == ENV_PREFIX:
            continue
        name = ENV_ALIASES.get(given, given)
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
