"""The config file: defaults, strictness, and errors that name key, value and fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import AgentConfig, load_config, parse_config
from agent.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_defaults_are_kiosk_sane() -> None:
    config = AgentConfig()
    assert config.verifier.url == "https://127.0.0.1:8443"
    assert config.network.keepalive_s >= 60  # minutes, not httpx's 5 s
    assert config.keyring.backend == "systemd-credentials"


def test_file_values_are_loaded_and_typed(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[agent]\nstate_dir = "/srv/agent"\n[verifier]\nurl = "https://verifier.example:8443"\n'
        "[network]\nkeepalive_s = 600\nretries = 5\n",
    )
    config = load_config(path)
    assert config.agent.state_dir == Path("/srv/agent")
    assert config.verifier.host == "verifier.example"
    assert config.verifier.port == 8443
    assert config.network.keepalive_s == 600.0 and isinstance(config.network.keepalive_s, float)
    assert config.network.retries == 5
    assert config.source == str(path)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[network]\nkeepalive = 30\n", "unknown key [network] keepalive = 30"),
        ("[netwrok]\nretries = 1\n", "unknown section [netwrok]"),
        ('[network]\nretries = "three"\n', "bad value [network] retries = 'three'"),
        ("[network]\nretries = 99\n", "bad value [network] retries = 99"),
        ("[network]\nread_timeout_s = -1\n", "bad value [network] read_timeout_s = -1"),
        ('[verifier]\nurl = "http://x:8443"\n', "bad value [verifier] url = 'http://x:8443'"),
        ('[keyring]\nbackend = "plaintext"\n', "bad value [keyring] backend = 'plaintext'"),
        ('[agent]\nstate_dir = "relative/dir"\n', "bad value [agent] state_dir"),
        ("[network]\nretries = true\n", "bad value [network] retries = True"),
        ("network = 3\n", "[network] must be a table"),
    ],
)
def test_bad_config_names_key_value_and_fix(tmp_path: Path, text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert needle in str(info.value)
    assert info.value.fix, "every config error must say how to fix it"


def test_broken_toml_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[agent\nstate_dir = 1"))


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist") as info:
        load_config(tmp_path / "nope.toml")
    assert "README" in info.value.fix


def test_overrides_are_validated_like_the_file() -> None:
    config = parse_config({"agent": {"state_dir": "/a"}})
    assert config.with_overrides(verifier={"url": "https://h:1"}).verifier.url == "https://h:1"
    with pytest.raises(ConfigError):
        config.with_overrides(verifier={"url": "ftp://h"})


def test_config_is_frozen() -> None:
    config = AgentConfig()
    with pytest.raises(AttributeError):
        config.network.retries = 7  # type: ignore[misc]
