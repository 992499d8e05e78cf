"""The agent's configuration: one TOML file loaded into frozen dataclasses.

Why so strict: a kiosk is configured once by an installer and then left alone for
months. A typo (``keepalive = 30`` instead of ``keepalive_s``) that were silently
ignored would surface much later as a mysterious fault, so every unknown key and
every bad value stops the agent at start, with the key, the value and the fix.
"""

from __future__ import annotations

import base64
import math
import os
import re
import sys
import tomllib
import types
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints
from urllib.parse import SplitResult, urlsplit

import httpx

from agent.access import closed_parent, user_name
from agent.errors import ConfigError
from protocol.shown import shortened, shown_repr
from protocol.wire import NotBase64Error, b64decode_strict

DEFAULT_CONFIG_PATH = Path("/etc/capture-agent/agent.toml")
CONFIG_ENV = "CAPTURE_AGENT_CONFIG"
DEFAULT_VERIFIER_PORT = 8443  # the protocol's port (DESIGN.md); a URL without a port means this one
# A config is a page of keys; a file larger than this is a wrong path (a log, an image, /dev/zero)
# and is refused before it is read whole or parsed.
MAX_CONFIG_BYTES = 1 << 20
# No key of ours nests deeper than [[device]] -> table -> value (3); 8 leaves room and stops a
# hostile `x = [[[[...` long before the parser's or repr()'s recursion limit.
MAX_CONFIG_DEPTH = 8
# TOML integers are 64-bit signed (toml.io, "Integer"); larger ones are refused as TOML errors,
# which also keeps them clear of float() overflow and of Python's 4300-digit str(int) limit.
TOML_INT_MIN, TOML_INT_MAX = -(1 << 63), (1 << 63) - 1
SHOWN_VALUE_CHARS = 120  # how much of a bad value an error repeats
# How an error names the verifier's URL when it came from the config file; a caller that took it from elsewhere
# (the command line's --verifier, the file kept at provisioning) passes its own name (AgentConfig.with_overrides).
VERIFIER_URL_KEY = "[verifier] url"


def _shown(value: Any) -> str:
    """``repr(value)`` cut to :data:`SHOWN_VALUE_CHARS`: a 1 MiB string must not become the message."""
    return shown_repr(value, SHOWN_VALUE_CHARS)


def _cut(name: str) -> str:
    """A key or a key path as an error names it, cut to :data:`SHOWN_VALUE_CHARS` (TOML keys have no length limit)."""
    return shortened(name, SHOWN_VALUE_CHARS)


def _split(url: str) -> SplitResult | None:
    """``urlsplit(url)``, or None for a URL it rejects (``https://[``, a netloc broken by NFKC)."""
    try:
        return urlsplit(url)
    except ValueError:
        return None


def _check(
    predicate: Callable[[Any], bool], fix: str, refuse: Callable[[Any, str], None] | None = None
) -> dict[str, Any]:
    """Field metadata: a validity check and the fix to print when it fails.

    ``refuse(value, name)``, when given, runs first and raises its own :class:`ConfigError` naming the value
    as ``name`` (the key, or the flag it was typed as): for a refusal whose message must not repeat the value.
    """
    return {"check": predicate, "fix": fix, "refuse": refuse}


def _positive(value: float) -> bool:
    return value > 0 and math.isfinite(value)


def _https_url(value: str) -> bool:
    """Whether ``value`` is a verifier base URL; user info is refused before (``refuse=refuse_user_info``)."""
    parts = _split(value)
    if parts is None:
        return False
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number or out of range
        httpx.URL(value)  # the client's own parser: urlsplit takes hosts IDNA 2008 refuses ("https://Ａ")
    except (ValueError, httpx.InvalidURL):
        return False
    host = parts.hostname or ""
    scoped = ":" in host and host.count("%") == 1  # an IPv6 address with its zone (fe80::1%eth0) as before
    odd = _NOT_IN_A_HOST.search(host.replace("%", "") if scoped else host)
    # Nothing before or after the URL and no query or fragment: urlsplit drops leading blanks (a paste's " https://..."
    # passed here, then the client refused it as "not protocol v1"), and "?x" or "#x" made every request's path "/".
    bare = value == value.strip() and "?" not in value and "#" not in value
    return parts.scheme == "https" and bool(host) and parts.path in ("", "/") and not odd and bare


# What no host name or address holds, yet urlsplit and the HTTP client take (percent-encoding a space): a host
# typed as "a b" or with a quote pasted in is a typo, not a name to look up.
_NOT_IN_A_HOST = re.compile(r"""[\s\x00-\x1f\x7f"%'<>\\^`{|}]""")


def normalise_spki_pin(value: str) -> str | None:
    """The pin as padded standard base64 of 32 bytes, or None when it is not one.

    Why: a pin copied without its ``=`` padding (or in URL-safe base64) names the
    same key; comparing it as typed would refuse the right server at connect time.
    """
    text = value.strip().rstrip("=").replace("-", "+").replace("_", "/")
    if not text:
        return ""
    try:
        digest = b64decode_strict(text + "=" * (-len(text) % 4))
    except NotBase64Error:
        return None
    return base64.b64encode(digest).decode("ascii") if len(digest) == 32 else None


def refuse_user_info(url: str, name: str = VERIFIER_URL_KEY) -> None:
    """Refuse ``https://user:password@host``, naming the URL without its user info, as ``name``.

    Why: the verifier authenticates a device by its certificate (and provisioning by
    the one-time token), never by a password in the URL; one typed there anyway would
    be printed by every log line and by `doctor` that names the verifier. The error
    itself must not repeat it, so the URL is shown with the user info cut out (a URL
    urlsplit rejects is judged on its text: ``https://user:pw@[`` is refused the same).
    ``name`` is where the value came from, as the person typed it: ``[verifier] url`` in the
    file, ``--verifier`` on the command line.
    """
    scheme, separator, rest = url.partition("://")
    if not separator:  # "admin:pw@host:8443", the scheme left out: still not to be repeated
        scheme, rest = "", url
    if "@" not in rest:
        return
    # Judged on the text, not on urlsplit's netloc: a password holding "/", "?" or "#" ends the netloc early
    # ("https://u:p/w@host" has netloc "u:p"), and the URL would be repeated with it by the next check. The
    # verifier's URL has no path or query, so any "@" after the scheme is taken for user info.
    shown = _shown(f"{scheme}{separator}***@{rest.rpartition('@')[2]}")
    raise ConfigError(
        f"bad value {name}: {shown} has a user name or password before the host",
        fix="remove the `user:password@` part (the device authenticates with its certificate and the "
        "provisioning token, never a password in the URL); if it was a real password, change it",
    )


def with_default_port(url: str) -> str:
    """``https://host`` -> ``https://host:8443``; a URL with a port (or not a URL) is unchanged."""
    parts = _split(url)
    if parts is None:
        return url
    try:
        port = parts.port
    except ValueError:
        return url
    if parts.scheme != "https" or not parts.hostname or port is not None:
        return url
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    netloc = f"{parts.netloc.rpartition('@')[0]}@{host}" if "@" in parts.netloc else host
    return parts._replace(netloc=f"{netloc}:{DEFAULT_VERIFIER_PORT}").geturl()


@dataclass(frozen=True)
class AgentSection:
    state_dir: Path = field(
        default=Path("/var/lib/capture-agent"),
        metadata=_check(lambda p: p.is_absolute(), "give an absolute path"),
    )


@dataclass(frozen=True)
class VerifierSection:
    url: str = field(
        default="https://127.0.0.1:8443",
        metadata=_check(
            _https_url,
            "give the verifier's base URL: https://, the host, optionally :PORT (1-65535; none means 8443), and no "
            'path, query or blank around it, e.g. "https://verifier.example:8443"',
            refuse=refuse_user_info,  # before any message that would repeat the value with its password
        ),
    )
    spki_pin: str = field(
        default="",
        metadata=_check(
            lambda v: v.strip() == "" or normalise_spki_pin(v) is not None,
            "give the base64 SHA-256 of the server's SubjectPublicKeyInfo: 44 characters ending in '=' "
            '(`capture-agent doctor` prints it as "server SPKI pin"), or leave it empty',
        ),
    )

    def __post_init__(self) -> None:
        refuse_user_info(self.url)
        # The protocol's port is 8443 (DESIGN.md), not https's 443: a URL typed without a
        # port means the verifier's port, never a silent 443 that fails with a bare ConnectError.
        object.__setattr__(self, "url", with_default_port(self.url))
        # One spelling of the pin: the padded base64 the TLS check compares with.
        object.__setattr__(self, "spki_pin", normalise_spki_pin(self.spki_pin) or "")

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or DEFAULT_VERIFIER_PORT


@dataclass(frozen=True)
class NetworkSection:
    connect_timeout_s: float = field(default=5.0, metadata=_check(_positive, "use seconds > 0"))
    read_timeout_s: float = field(default=10.0, metadata=_check(_positive, "use seconds > 0"))
    write_timeout_s: float = field(default=10.0, metadata=_check(_positive, "use seconds > 0"))
    pool_timeout_s: float = field(default=5.0, metadata=_check(_positive, "use seconds > 0"))
    # httpx keeps idle connections 5 s; a kiosk waits minutes between users and
    # should not pay a full handshake each time.
    keepalive_s: float = field(default=300.0, metadata=_check(_positive, "use seconds > 0"))
    retries: int = field(default=3, metadata=_check(lambda v: 0 <= v <= 10, "use 0 to 10"))
    backoff_base_s: float = field(default=0.2, metadata=_check(_positive, "use seconds > 0"))
    backoff_max_s: float = field(default=5.0, metadata=_check(_positive, "use seconds > 0"))
    # What the agent accepts from the verifier: an answer larger than this is cut and refused
    # (no v1 answer comes near it), and a call (retries included) ends at this deadline
    # however slowly the bytes trickle in.
    answer_max_bytes: int = field(
        default=1 << 20, metadata=_check(lambda v: 1024 <= v <= 64 << 20, "use 1024 to 67108864 (64 MiB)")
    )
    call_deadline_s: float = field(default=20.0, metadata=_check(_positive, "use seconds > 0"))


KeyringBackendName = Literal["systemd-credentials", "file-insecure-dev", "system"]


@dataclass(frozen=True)
class KeyringSection:
    # systemd-credentials: the daemon reads the key-encryption key from
    # $CREDENTIALS_DIRECTORY (LoadCredentialEncrypted=). file-insecure-dev: a
    # plain file, for development only. system: whatever `keyring` picks.
    backend: KeyringBackendName = "systemd-credentials"
    credential_name: str = field(
        default="capture-agent-kek",
        metadata=_check(lambda v: bool(v) and "/" not in v, "use a bare credential name such as capture-agent-kek"),
    )
    dev_file: str = ""  # file-insecure-dev only; default: <state_dir>/INSECURE-dev-keyring.json


@dataclass(frozen=True)
class RenewalSection:
    at_fraction: float = field(default=2 / 3, metadata=_check(lambda v: 0.1 <= v <= 0.95, "use a fraction 0.1 to 0.95"))
    jitter_fraction: float = field(default=0.05, metadata=_check(lambda v: 0 <= v <= 0.2, "use a fraction 0 to 0.2"))


@dataclass(frozen=True)
class AuditSection:
    # A heartbeat event proves, in the audit trail, that the device was alive.
    heartbeat_s: float = field(default=3600.0, metadata=_check(_positive, "use seconds > 0"))
    outbox_max_rows: int = field(default=10_000, metadata=_check(lambda v: v >= 10, "use at least 10"))
    outbox_max_bytes: int = field(
        default=16 * 1024 * 1024, metadata=_check(lambda v: v >= 64 * 1024, "use at least 65536")
    )
    batch_size: int = field(default=100, metadata=_check(lambda v: 1 <= v <= 500, "use 1 to 500"))


ReaderKind = Literal["none", "zfm"]


@dataclass(frozen=True)
class ReaderSection:
    kind: ReaderKind = "none"  # "zfm": a ZFM / R30x / R50x / AS608 module on a serial port
    port: str = ""  # e.g. /dev/serial0 (a Pi's UART) or /dev/ttyUSB0
    baud: int = field(
        default=57600,
        metadata=_check(lambda v: v % 9600 == 0 and 9600 <= v <= 115200, "use a multiple of 9600 up to 115200"),
    )
    password: int = field(default=0, metadata=_check(lambda v: 0 <= v <= 0xFFFFFFFF, "use 0 to 4294967295"))
    check_interval_s: float = field(default=5.0, metadata=_check(_positive, "use seconds > 0"))


DeviceKind = Literal["zfm", "fprint", "camera"]
# Which keys of [[device]] each kind takes (besides kind, name and check_interval_s).
DEVICE_KEYS: dict[str, tuple[str, ...]] = {
    "zfm": ("port", "baud", "password"),
    "fprint": ("selector",),
    "camera": ("source", "width", "height", "fps", "allow_basic_over_http", "ca_file"),
}


CAMERA_MIN_SIDE = 32  # = biometrics.face.image.MIN_SIDE (not imported: the config loads without OpenCV)
CAMERA_MAX_SIDE = 4096  # = biometrics.face.image.MAX_SIDE


@dataclass(frozen=True)
class DeviceSection:
    """One ``[[device]]``: a serial module, a libfprint reader or a camera (see README, "Devices")."""

    kind: DeviceKind
    name: str = ""  # how sessions, logs and audit events name it; default: kind and index
    check_interval_s: float = field(default=5.0, metadata=_check(_positive, "use seconds > 0"))
    port: str = ""  # zfm: /dev/serial0, /dev/ttyUSB0
    # zfm: the speed the agent runs the module at; found at whatever speed it answers, raised, remembered
    baud: int = field(
        default=115200,
        metadata=_check(lambda v: v % 9600 == 0 and 9600 <= v <= 115200, "use a multiple of 9600 up to 115200"),
    )
    password: int = field(default=0, metadata=_check(lambda v: 0 <= v <= 0xFFFFFFFF, "use 0 to 4294967295"))
    selector: str = ""  # fprint: a libfprint driver name, device id, or driver:id; "" = the first reader
    source: str = ""  # camera: /dev/videoN, rtsp://..., http://.../stream.mjpg, or a file
    # camera: the face pipeline's bounds (biometrics.face.image.MIN_SIDE..MAX_SIDE); larger frames are refused
    width: int = field(default=0, metadata=_check(
        lambda v: v == 0 or CAMERA_MIN_SIDE <= v <= CAMERA_MAX_SIDE,
        f"use 0 (the camera's own) or {CAMERA_MIN_SIDE} to {CAMERA_MAX_SIDE}"))
    height: int = field(default=0, metadata=_check(
        lambda v: v == 0 or CAMERA_MIN_SIDE <= v <= CAMERA_MAX_SIDE,
        f"use 0 (the camera's own) or {CAMERA_MIN_SIDE} to {CAMERA_MAX_SIDE}"))
    fps: float = field(default=0.0, metadata=_check(lambda v: 0 <= v <= 240, "use 0 (the camera's own) to 240"))
    # camera: answer a Basic challenge of an http:// camera (its password in clear on the network): off by default
    allow_basic_over_http: bool = False
    # camera: an https camera's CA certificate (PEM), trusted alone; "" = the system's trust store
    ca_file: str = field(default="", metadata=_check(lambda v: v == "" or v.startswith("/"), "use an absolute path"))


# What a [[device]] of a kind cannot go without, shown as the fix writes it: "add port = ..." left the installer
# to guess the form (a path? a number?).
NEEDED_EXAMPLE = {"port": '"/dev/serial0"', "source": '"/dev/v4l/by-id/..."'}


def _build_devices(raw: Any) -> tuple[DeviceSection, ...]:
    if not isinstance(raw, list):
        raise ConfigError("device must be a list of tables", fix='write each one as [[device]] with kind = "..."')
    devices = []
    for index, item in enumerate(raw):
        where = f"device #{index + 1}"
        if not isinstance(item, Mapping) or "kind" not in item:
            raise ConfigError(f"[[device]] {where} has no kind", fix='add kind = "zfm", "fprint" or "camera"')
        device = _build(DeviceSection, "device", item)
        extra = sorted(set(item) - {"kind", "name", "check_interval_s", *DEVICE_KEYS[device.kind]})
        if extra:
            raise ConfigError(
                f"[[device]] {where} (kind = {device.kind!r}) has keys of another kind: {', '.join(extra)}",
                fix=f"a {device.kind} device takes {', '.join(DEVICE_KEYS[device.kind])}",
            )
        needed = {"zfm": "port", "camera": "source"}.get(device.kind)
        if needed and not getattr(device, needed):
            raise ConfigError(f"[[device]] {where} (kind = {device.kind!r}) needs {needed}",
                              fix=f"add {needed} = {NEEDED_EXAMPLE[needed]} to it (`capture-agent devices` lists "
                              "what this machine has, each with the value to put there)")
        devices.append(device)
    names = [d.name for d in devices if d.name]
    if len(names) != len(set(names)):
        raise ConfigError("two [[device]] entries have the same name", fix="give each device its own name")
    return tuple(devices)


@dataclass(frozen=True)
class ApiSection:
    # The kiosk app's door: a unix socket, 0660, owned by `group` when set.
    socket: Path = field(
        default=Path("/run/capture-agent/api.sock"), metadata=_check(lambda p: p.is_absolute(), "give an absolute path")
    )
    group: str = ""


@dataclass(frozen=True)
class SessionsSection:
    # How long a capture session waits for the person at the sensor: a kiosk for the elderly may want longer.
    finger_timeout_s: float = field(
        default=15.0, metadata=_check(lambda s: 3 <= s <= 300, "use 3 to 300 seconds (the default is 15)")
    )
    # A finger still on the sensor after this is told to lift; finger_timeout_s later the session ends.
    lift_reminder_s: float = field(
        default=5.0, metadata=_check(lambda s: 1 <= s <= 60, "use 1 to 60 seconds (the default is 5)")
    )
    # A face session's time, from its first frame to the end of the head-turn challenge. At most 120: nobody in
    # front of the camera is a silence of that long on the CLI's events stream, which waits 300 s at least.
    face_timeout_s: float = field(
        default=20.0, metadata=_check(lambda s: 5 <= s <= 120, "use 5 to 120 seconds (the default is 20)")
    )


LogFormat = Literal["auto", "json", "console"]
LogLevel = Literal["debug", "info", "warning", "error"]


@dataclass(frozen=True)
class LoggingSection:
    level: LogLevel = "info"
    format: LogFormat = "auto"


@dataclass(frozen=True)
class AgentConfig:
    agent: AgentSection = field(default_factory=AgentSection)
    verifier: VerifierSection = field(default_factory=VerifierSection)
    network: NetworkSection = field(default_factory=NetworkSection)
    keyring: KeyringSection = field(default_factory=KeyringSection)
    renewal: RenewalSection = field(default_factory=RenewalSection)
    audit: AuditSection = field(default_factory=AuditSection)
    reader: ReaderSection = field(default_factory=ReaderSection)
    device: tuple[DeviceSection, ...] = ()  # [[device]]: every device the daemon drives
    api: ApiSection = field(default_factory=ApiSection)
    sessions: SessionsSection = field(default_factory=SessionsSection)
    logging: LoggingSection = field(default_factory=LoggingSection)
    source: str = "defaults"  # where it was loaded from, for doctor and logs
    # Where [verifier] url came from, in words for doctor: the built-in default, the file, --verifier, or the
    # URL the device was provisioned with (agent.runtime.with_provisioned_verifier).
    verifier_url_origin: str = "built-in default"

    def with_overrides(self, given_as: Mapping[str, str] | None = None, **sections: Mapping[str, Any]) -> AgentConfig:
        """A copy with some keys changed (CLI flags), validated like the file.

        ``given_as`` names where a value came from, by ``"section.key"``: ``{"verifier.url": "--verifier"}``
        makes a bad value's error say ``bad value --verifier = ...``, as the person typed it, instead of
        ``[verifier] url``, a key of a file they never wrote. Keys it does not name are named as in the file.
        """
        merged = {name: {**_as_dict(getattr(self, name)), **values} for name, values in sections.items()}
        updated = {}
        for name, raw in merged.items():
            prefix = f"{name}."
            names = {dotted.removeprefix(prefix): shown for dotted, shown in (given_as or {}).items()
                     if dotted.startswith(prefix)}
            updated[name] = _build(type(getattr(self, name)), name, raw, names)
        return replace(self, **updated)


# How AgentConfig.verifier_url_origin begins when the URL is the one kept at provisioning (agent.runtime).
PROVISIONED_ORIGIN = "as provisioned"
# Fields of AgentConfig that say where the config came from; no TOML section has their names.
NOT_SECTIONS = ("source", "verifier_url_origin")


def _as_dict(section: Any) -> dict[str, Any]:
    return {f.name: getattr(section, f.name) for f in fields(section)}


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """Turn a TOML value into the field's type, or fail naming key (as ``name``), value and fix."""
    where = f"{name} = {_shown(value)}"
    origin = get_origin(hint)
    if origin is Literal:
        allowed = get_args(hint)
        if value not in allowed:
            raise ConfigError(f"bad value {where}", fix=f"use one of {', '.join(map(repr, allowed))}")
        return value
    if origin in (Union, types.UnionType):
        raise TypeError(f"unsupported config type {hint}")  # not used; keeps types simple
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"bad value {where}", fix="use true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"bad value {where}", fix="use a whole number")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"bad value {where}", fix="use a number")
        try:
            return float(value)
        except OverflowError:  # an int past 1e308, from an override that skipped the file's 64-bit check
            raise ConfigError(f"bad value {where}", fix="use a number below 1e308") from None
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"bad value {where}", fix="use a quoted string")
        return value
    if hint is Path:
        if not isinstance(value, str | Path) or not str(value):
            raise ConfigError(f"bad value {where}", fix="use a quoted path")
        return Path(value)
    raise TypeError(f"unsupported config type {hint}")


def _build(cls: type, section: str, raw: Mapping[str, Any], given_as: Mapping[str, str] | None = None) -> Any:
    """One section's dataclass from its raw table; ``given_as`` names a key as it was given (a CLI flag)."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"[{section}] must be a table, got {_shown(raw)}", fix=f"write it as a [{section}] section")
    hints = get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in known:
            raise ConfigError(
                f"unknown key [{section}] {_cut(key)} = {_shown(value)}",
                fix=f"remove it or correct its spelling; keys of [{section}]: {', '.join(known)}",
            )
        name = (given_as or {}).get(key) or f"[{section}] {key}"
        refuse = known[key].metadata.get("refuse")
        if refuse is not None and isinstance(value, str):
            refuse(value, name)
        coerced = _coerce(name, value, hints[key])
        check = known[key].metadata.get("check")
        if check is not None and not check(coerced):
            raise ConfigError(f"bad value {name} = {_shown(value)}", fix=known[key].metadata["fix"])
        values[key] = coerced
    for name, f in known.items():
        if name not in values and f.default is MISSING and f.default_factory is MISSING:
            raise ConfigError(f"missing key [{section}] {name}", fix=f"add {name} to [{section}]")
    return cls(**values)


def parse_config(data: Mapping[str, Any], source: str = "<memory>") -> AgentConfig:
    """Build an :class:`AgentConfig` from already-parsed TOML data."""
    sections = {f.name: f for f in fields(AgentConfig) if f.name not in NOT_SECTIONS}
    hints = get_type_hints(AgentConfig)
    built: dict[str, Any] = {}
    for name, value in data.items():
        if name not in sections:
            raise ConfigError(
                f"unknown section [{_cut(name)}] in {source}",
                fix=f"remove it or correct its spelling; sections: {', '.join(sections)}",
            )
        built[name] = _build_devices(value) if name == "device" else _build(hints[name], name, value)
    reader = built.get("reader")
    if reader is not None and reader.kind != "none" and not reader.port:
        raise ConfigError(
            f"[reader] kind = {reader.kind!r} needs a port", fix='add port = "/dev/ttyUSB0" (or your port)'
        )
    given = isinstance(data.get("verifier"), Mapping) and "url" in data["verifier"]
    origin = f"[verifier] url in {source}" if given else AgentConfig.verifier_url_origin
    return AgentConfig(**built, source=source, verifier_url_origin=origin)


def _refuse_hostile_values(value: Any, source: str, where: str = "", depth: int = 0) -> None:
    """Refuse what TOML lets through but no key of ours can take, before any check sees it.

    Why here and not per key: a value nested hundreds deep, an integer of thousands of
    digits or a NUL inside a string breaks the checks themselves (``repr`` recursion,
    ``float()`` overflow, ``str(int)``'s digit limit, ``Path`` with a NUL); refused up
    front, every later message can repeat the value safely.
    """
    if depth > MAX_CONFIG_DEPTH:
        raise ConfigError(
            f"config file {source} nests tables or arrays more than {MAX_CONFIG_DEPTH} deep at {_cut(where)}",
            fix="no key of the agent takes nested values: write each value as a plain number, string or boolean",
        )
    if isinstance(value, Mapping):
        for key, item in value.items():
            if "\x00" in key:
                raise ConfigError(f"config file {source} has a NUL character in a key name",
                                  fix="remove the \\u0000 escape from the key")
            _refuse_hostile_values(item, source, f"{where}.{key}" if where else key, depth + 1)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _refuse_hostile_values(item, source, f"{where}[{index}]", depth + 1)
    elif isinstance(value, str) and "\x00" in value:
        raise ConfigError(f"config file {source} has a NUL character in the value of {_cut(where)}",
                          fix="remove the \\u0000 escape (no path, name or URL contains NUL)")
    elif isinstance(value, int) and not isinstance(value, bool) and not TOML_INT_MIN <= value <= TOML_INT_MAX:
        raise ConfigError(
            f"config file {source} has an integer beyond TOML's 64 bits at {_cut(where)}",
            fix=f"use a number from {TOML_INT_MIN} to {TOML_INT_MAX} "
            "(each key's own range: README, 'Configuration')",
        )


def config_from_bytes(data: bytes, source: str) -> AgentConfig:
    """Decode, parse and check config bytes: the one door every config file comes through.

    Why one door: every way a file can be wrong (not UTF-8, NUL bytes, broken TOML, a
    value no parser limit survives) must end as a :class:`ConfigError` naming the fix,
    never a traceback of tomllib, urllib or int() on a kiosk's every start.
    """
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"config file {source} is larger than {MAX_CONFIG_BYTES} bytes (1 MiB)",
            fix="point the agent at its agent.toml (a config is a page of keys; this is another file)",
        )
    try:
        # TOML is UTF-8 by definition; a byte-order mark (Notepad's "UTF-8 with BOM") is still UTF-8.
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        # A Latin-1 comment ("café") or a file saved as UTF-16 must not be a traceback on every command.
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"config file {source} is not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line})",
            fix="save it as UTF-8 (e.g. `iconv -f LATIN1 -t UTF-8`, or your editor's \"UTF-8\" encoding)",
        ) from None
    if "\x00" in text:
        line = text[: text.index("\x00")].count("\n") + 1
        raise ConfigError(
            f"config file {source} has a NUL character on line {line}",
            fix="remove the NUL bytes (`tr -d '\\000'`); "
            "a file that is mostly NULs was cut by a power loss: restore it",
        )
    try:
        parsed = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            f"config file {source} is not valid TOML: {exc}", fix="correct the syntax at that line"
        ) from None
    except ValueError:  # int() past Python's 4300-digit limit (sys.get_int_max_str_digits), raised unwrapped
        raise ConfigError(
            f"config file {source} has an integer of more than {sys.get_int_max_str_digits()} digits",
            fix=f"TOML integers are 64-bit: use a number from {TOML_INT_MIN} to {TOML_INT_MAX}",
        ) from None
    except RecursionError:
        raise ConfigError(
            f"config file {source} nests inline tables or arrays too deep to parse",
            fix="no key of the agent takes nested values: write each value as a plain number, string or boolean",
        ) from None
    _refuse_hostile_values(parsed, source)
    return parse_config(parsed, source=source)


def load_config(path: str | os.PathLike[str] | None = None) -> AgentConfig:
    """Load the config file: the given path, else $CAPTURE_AGENT_CONFIG, else /etc.

    With no path given and no file at the default place, the built-in defaults
    are used (a test rig or a first `doctor` run works without a file).
    """
    explicit = path if path is not None else os.environ.get(CONFIG_ENV)
    if explicit is None and not DEFAULT_CONFIG_PATH.exists():
        return AgentConfig()
    file = Path(explicit) if explicit is not None else DEFAULT_CONFIG_PATH
    try:
        with file.open("rb") as stream:
            raw = stream.read(MAX_CONFIG_BYTES + 1)  # one byte over the cap is enough to refuse
    except FileNotFoundError:
        raise ConfigError(
            f"config file {file} does not exist",
            fix="create it (see README, 'Configuration') or fix the path",
        ) from None
    except PermissionError as exc:
        raise _unreadable_config(file, exc) from None
    except OSError as exc:
        raise ConfigError(
            f"config file {file} cannot be read: {exc.strerror}",
            fix="make it readable by the agent's user (chmod 0640, group capture-agent)",
        ) from None
    return config_from_bytes(raw, str(file))


def _unreadable_config(file: Path, exc: PermissionError) -> ConfigError:
    """The config file this user may not read, naming whose it is, or the folder above it that shuts it out."""
    closed = closed_parent(file)
    if closed is not None:  # the file's own mode is not the matter: chmod 0640 on it would change nothing
        return ConfigError(
            f"config file {file} cannot be read: it is inside {closed}, a folder {user_name()} may not pass "
            f"through ({exc.strerror})",
            fix=f"let the agent's user through it (`chmod o+x {closed}`, or give it to that user's group; "
            "/etc/capture-agent is the unit's ConfigurationDirectory=, mode 0750), or put the config elsewhere",
        )
    try:
        owner = user_name(file.stat().st_uid)
    except OSError:
        owner = "an owner this user cannot see"
    return ConfigError(
        f"config file {file} cannot be read by {user_name()}: {exc.strerror} (it belongs to {owner})",
        fix="make it readable by the agent's user (chmod 0640, group capture-agent)",
    )
