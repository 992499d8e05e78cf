"""Where the key-encryption key (KEK) lives: `keyring` backends for the agent.

The device private key is stored on disk as encrypted PKCS#8; the passphrase that
unlocks it is the KEK, and the KEK never sits next to the key. Two backends ship
with the agent, both real ``keyring`` backends so that a site can swap in any
other ``keyring`` backend (Secret Service on a desktop kiosk, a TPM-backed one):

* :class:`SystemdCredentialKeyring` for the daemon: reads the credential that
  systemd decrypted for the service into ``$CREDENTIALS_DIRECTORY``
  (``LoadCredentialEncrypted=capture-agent-kek:...``). Read-only by design: the
  installer makes the credential with ``systemd-creds encrypt``.
* :class:`InsecureDevFileKeyring` for development and test rigs: a plain JSON file,
  0600. Its name says what it is; it logs a warning on every use.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from pathlib import Path

import structlog
from keyring.backend import KeyringBackend
from keyring.errors import PasswordDeleteError, PasswordSetError

from agent.access import closed_parent, user_name
from agent.config import AgentConfig
from agent.errors import KeyringError

log = structlog.get_logger()

KEK_SERVICE = "capture-agent"
MIN_KEK_LENGTH = 32  # characters of a base64 text: at least 192 bits


def new_kek() -> str:
    """A fresh random KEK as text (256 bits, base64), as systemd-creds would hold it."""
    return base64.b64encode(secrets.token_bytes(32)).decode("ascii")


class SystemdCredentialKeyring(KeyringBackend):
    """Reads secrets from ``$CREDENTIALS_DIRECTORY/<username>`` (systemd credentials)."""

    priority = 1  # type: ignore[assignment]  # never chosen implicitly by keyring

    def __init__(self, directory: str | None = None) -> None:
        super().__init__()
        self._directory = directory

    @property
    def directory(self) -> Path | None:
        found = self._directory or os.environ.get("CREDENTIALS_DIRECTORY")
        return Path(found) if found else None

    def get_password(self, service: str, username: str) -> str | None:
        directory = self.directory
        if directory is None:
            return None
        try:
            return (directory / username).read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None

    def set_password(self, service: str, username: str, password: str) -> None:
        raise PasswordSetError(
            "systemd credentials are read-only to the service; create it with "
            f"`systemd-creds encrypt --name={username} - /etc/credstore.encrypted/{username}`"
        )

    def delete_password(self, service: str, username: str) -> None:
        raise PasswordDeleteError("systemd credentials are managed by systemd, not by the agent")


_WARNED: set[Path] = set()


class InsecureDevFileKeyring(KeyringBackend):
    """INSECURE, development only: secrets in a plain 0600 JSON file."""

    priority = 0.1  # type: ignore[assignment]

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path

    def _read(self) -> dict[str, dict[str, str]]:
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}

    def get_password(self, service: str, username: str) -> str | None:
        if self.path not in _WARNED:  # once per file and process: loud, not noisy
            _WARNED.add(self.path)
            log.warning("insecure_dev_keyring_used", path=str(self.path))
        return self._read().get(service, {}).get(username)

    def set_password(self, service: str, username: str, password: str) -> None:
        data = self._read()
        data.setdefault(service, {})[username] = password
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)
        log.warning("insecure_dev_keyring_written", path=str(self.path))

    def delete_password(self, service: str, username: str) -> None:
        data = self._read()
        if username not in data.get(service, {}):
            raise PasswordDeleteError("no such secret")
        del data[service][username]
        self.path.write_text(json.dumps(data), encoding="utf-8")


def keyring_for(config: AgentConfig) -> KeyringBackend:
    """The keyring backend the config names."""
    section = config.keyring
    if section.backend == "systemd-credentials":
        return SystemdCredentialKeyring()
    if section.backend == "file-insecure-dev":
        path = Path(section.dev_file) if section.dev_file else config.agent.state_dir / "INSECURE-dev-keyring.json"
        return InsecureDevFileKeyring(path)
    import keyring

    return keyring.get_keyring()


def load_kek(config: AgentConfig, *, create: bool = False) -> str:
    """The KEK from the configured keyring; with ``create``, make one when absent.

    Creating is only possible on writable backends (the dev file, a desktop
    keyring); for systemd credentials the installer makes it beforehand.
    """
    backend = keyring_for(config)
    name = config.keyring.credential_name
    try:
        kek = backend.get_password(KEK_SERVICE, name)
    except OSError as exc:  # a file-backed store this user may not read (provisioned as root?)
        where = f" {exc.filename}" if exc.filename else ""
        closed = closed_parent(Path(exc.filename)) if isinstance(exc, PermissionError) and exc.filename else None
        if closed is not None:  # not the file's owner: a folder above it shuts this user out, chown would not do
            raise KeyringError(
                f"the keyring backend {config.keyring.backend!r} cannot read{where}: it is inside {closed}, a "
                f"folder {user_name()} may not pass through",
                fix=f"let the agent's user through it (`chmod o+x {closed}`, or give it to that user), or move "
                "the state directory (or [keyring] dev_file) out of it",
            ) from None
        raise KeyringError(
            f"the keyring backend {config.keyring.backend!r} cannot read{where}: {exc.strerror or exc}",
            fix="run the agent as the user it was provisioned for; its files must belong to that user "
            f"(`chown -R capture-agent: {config.agent.state_dir}`)",
        ) from None
    except Exception as exc:  # keyring backends raise many kinds
        raise KeyringError(
            f"the keyring backend {config.keyring.backend!r} failed: {type(exc).__name__}",
            fix="check the keyring backend in [keyring] and that the agent's user can use it",
        ) from None
    if kek is None and create and config.keyring.backend == "systemd-credentials":
        raise KeyringError(
            f'no key-encryption key: [keyring] backend = "systemd-credentials" reads the systemd credential '
            f"{name!r}, and this process has none (CREDENTIALS_DIRECTORY="
            f"{os.environ.get('CREDENTIALS_DIRECTORY', 'unset')}); the agent cannot create it",
            fix=f"on a device, make it with `systemd-creds encrypt --name={name} - "
            f"/etc/credstore.encrypted/{name}` and provision under `systemd-run ... -p "
            f"LoadCredentialEncrypted={name}` (README, 'Provisioning a device'); for development only, "
            'set [keyring] backend = "file-insecure-dev" in the config (INSECURE: the key sits in a plain file)',
        )
    if kek is None and create:
        kek = new_kek()
        try:
            backend.set_password(KEK_SERVICE, name, kek)
        except PasswordSetError as exc:
            raise KeyringError(
                f"the {config.keyring.backend} keyring cannot store a new key-encryption key: {exc}",
                fix='choose a writable keyring in [keyring] backend, or "file-insecure-dev" for development',
            ) from None
        log.info("kek_created", key_backend=config.keyring.backend)
    if kek is None:
        if config.keyring.backend == "systemd-credentials":
            raise KeyringError(
                f"no systemd credential {name!r} (CREDENTIALS_DIRECTORY="
                f"{os.environ.get('CREDENTIALS_DIRECTORY', 'unset')})",
                fix="create it with `systemd-creds encrypt` and load it with LoadCredentialEncrypted= "
                "(README, 'Installing'); for development set [keyring] backend = \"file-insecure-dev\"",
            )
        raise KeyringError(
            f"no key-encryption key {name!r} in the {config.keyring.backend} keyring",
            fix="provision the device first (`capture-agent provision`)",
        )
    if len(kek) < MIN_KEK_LENGTH:
        raise KeyringError(
            f"the key-encryption key {name!r} is too short ({len(kek)} characters)",
            fix="make a new one from 32 random bytes: `openssl rand -base64 32`",
        )
    return kek
