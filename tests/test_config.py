"""Configuration: TOML, environment, overrides, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.config import Config, ConfigError, load_config


def test_defaults_without_anything() -> None:
    config = load_config(environ={})
    assert config == Config()
    assert config.server.port == 8080
    assert config.agent.endpointing_ms == 200


def test_toml_then_env_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "voxgate.toml"
    path.write_text('[server]\nport = 9000\nhost = "0.0.0.0"\n[agent]\nendpointing_ms = 300\n')
    config = load_config(
        path,
        environ={"VOXGATE_SERVER__PORT": "9100", "VOXGATE_TWILIO__AUTH_TOKEN": "secret"},
        overrides={"agent.endpointing_ms": 250, "server.host": None},
    )
    assert config.server.port == 9100
    assert config.server.host == "0.0.0.0"
    assert config.twilio.auth_token == "secret"
    assert config.agent.endpointing_ms == 250


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ("[server]\nport = 70000\n", "server.port"),
        ('[server]\nport = "eighty"\n', "server.port"),
        ("[server]\nprot = 80\n", "server.prot"),
        ("[nonsense]\nx = 1\n", "nonsense"),
        ("[agent]\nendpointing_ms = -5\n", "agent.endpointing_ms"),
        ('[server]\nlog_level = "loud"\n', "server.log_level"),
    ],
)
def test_errors_name_the_bad_key(tmp_path: Path, toml: str, key: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(path, environ={})


def test_bad_env_value_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"server\.port"):
        load_config(environ={"VOXGATE_SERVER__PORT": "http"})
    with pytest.raises(ConfigError, match=r"server\.colour"):
        load_config(environ={"VOXGATE_SERVER__COLOUR": "blue"})


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml", environ={})
    bad = tmp_path / "bad.toml"
    bad.write_text("[server\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(bad, environ={})


def test_serve_sip_options_override_the_file(tmp_path: Path) -> None:
    from server.cli import _build_parser, serve_config

    config_file = tmp_path / "voxgate.toml"
    config_file.write_text('[sip]\nport = 5070\nrtp_ports = "30000-30100"\n')
    args = _build_parser().parse_args(
        ["serve", "--config", str(config_file), "--sip-port", "5099", "--rtp-ports", "40000-40200"]
    )
    config = serve_config(args)
    assert (config.sip.port, config.sip.rtp_ports) == (5099, "40000-40200")
    args = _build_parser().parse_args(["serve", "--config", str(config_file), "--sip-port", "0"])
    config = serve_config(args)
    assert (config.sip.port, config.sip.rtp_ports) == (0, "30000-30100")  # 0: SIP off
    bad = _build_parser().parse_args(["serve", "--rtp-ports", "20000-10000"])
    with pytest.raises(ConfigError, match=r"sip\.rtp_ports"):
        serve_config(bad)
