"""The key-encryption key: systemd credentials for the daemon, a labelled file for development."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from agent.config import parse_config
from agent.errors import KeyringError
from agent.keystore import KEK_SERVICE, SystemdCredentialKeyring, load_kek, new_kek


def test_systemd_backend_reads_the_credentials_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kek = new_kek()
    (tmp_path / "capture-agent-kek").write_text(kek + "\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    config = parse_config({"keyring": {"backend": "systemd-credentials"}})
    assert load_kek(config) == kek
    assert SystemdCredentialKeyring().get_password(KEK_SERVICE, "absent") is None


def test_systemd_backend_is_read_only_and_says_how_to_make_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    config = parse_config({"keyring": {"backend": "systemd-credentials"}})
    with pytest.raises(KeyringError) as info:
        load_kek(config, create=True)
    assert "systemd-creds encrypt" in info.value.fix


def test_missing_credentials_directory_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    with pytest.raises(KeyringError) as info:
        load_kek(parse_config({}))
    assert "LoadCredentialEncrypted" in info.value.fix


def test_short_kek_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "capture-agent-kek").write_text("tooshort")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    with pytest.raises(KeyringError, match="too short"):
        load_kek(parse_config({}))


def test_dev_file_backend_creates_a_private_file(tmp_path: Path) -> None:
    config = parse_config(
        {"agent": {"state_dir": str(tmp_path / "state")}, "keyring": {"backend": "file-insecure-dev"}}
    )
    with pytest.raises(KeyringError, match="provision"):
        load_kek(config)
    kek = load_kek(config, create=True)
    assert load_kek(config) == kek  # stable once made
    path = tmp_path / "state" / "INSECURE-dev-keyring.json"
    assert "INSECURE" in path.name
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_dev_keyring_the_agent_cannot_read_names_the_file_and_the_owner_fix(tmp_path: Path) -> None:
    unreadable = tmp_path / "keyring-is-a-directory"
    unreadable.mkdir()  # root reads any file, so a directory stands for "cannot be read" here
    config = parse_config(
        {
            "agent": {"state_dir": str(tmp_path / "state")},
            "keyring": {"backend": "file-insecure-dev", "dev_file": str(unreadable)},
        }
    )
    with pytest.raises(KeyringError) as info:
        load_kek(config)
    assert str(unreadable) in info.value.message
    assert "chown -R capture-agent:" in info.value.fix
