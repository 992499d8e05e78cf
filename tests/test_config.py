"""The config file: defaults, strictness, and errors that name key, value and fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import AgentConfig, load_config, parse_config
from agent.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text, encoding="utf-8")
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
        # Non-ASCII in the pin (a dash turned into "–" by a word processor): base64 raised a plain ValueError.
        ('[verifier]\nspki_pin = "\u2013abcdefghijklmnopqrstuvwxyz0123456789ABCD="\n', "bad value [verifier] spki_pin"),
        ('[verifier]\nspki_pin = "\u00e9"\n', "bad value [verifier] spki_pin"),
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
    with pytest.raises(ConfigError, match="spki_pin"):  # non-ASCII: a typed error, not base64's bare ValueError
        config.with_overrides(verifier={"spki_pin": "AAAA\u2013AAA="})


def test_config_is_frozen() -> None:
    config = AgentConfig()
    with pytest.raises(AttributeError):
        config.network.retries = 7  # type: ignore[misc]


@pytest.mark.parametrize(
    "raw",
    [
        "# Kiosk at the café\n[agent]\nstate_dir = \"/srv/agent\"\n".encode("latin-1"),
        "[agent]\nstate_dir = \"/srv/agent\"\n".encode("utf-16"),
    ],
    ids=["latin-1 comment", "utf-16"],
)
def test_config_that_is_not_utf8_is_a_config_error(tmp_path: Path, raw: bytes) -> None:
    path = tmp_path / "agent.toml"
    path.write_bytes(raw)
    with pytest.raises(ConfigError, match="not UTF-8") as info:
        load_config(path)
    assert "save it as UTF-8" in info.value.fix


def test_config_with_a_utf8_byte_order_mark_loads(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_bytes(b"\xef\xbb\xbf" + '# café\n[agent]\nstate_dir = "/srv/agent"\n'.encode())
    assert load_config(path).agent.state_dir == Path("/srv/agent")


@pytest.mark.parametrize(
    "url", ["https://admin:s3cret@127.0.0.1:8443", "https://admin:s3cret@h:notaport", "https://s3cret@h"]
)
def test_user_info_in_the_verifier_url_is_refused_without_repeating_it(tmp_path: Path, url: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, f'[verifier]\nurl = "{url}"\n'))
    assert "user name or password" in info.value.message and "user:password@" in info.value.fix
    assert "s3cret" not in str(info.value)
    with pytest.raises(ConfigError) as override:
        AgentConfig().with_overrides(verifier={"url": url})
    assert "s3cret" not in str(override.value)
