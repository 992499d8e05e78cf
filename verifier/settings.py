"""The verifier's settings: a frozen dataclass from CLI flags or a TOML file.

An unknown key or a bad value stops the verifier at start with the key, the value
and the fix, as for the agent.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from verifier.pki import CA_CERT, SERVER_CERT, SERVER_KEY


class SettingsError(ValueError):
    """A bad setting: the message names the key and the value, ``fix`` what to write instead."""

    def __init__(self, message: str, fix: str = "") -> None:
        super().__init__(message)
        self.fix = fix


@dataclass(frozen=True)
class VerifierSettings:
    pki_dir: Path = Path("/var/lib/capture-verifier")
    db_path: Path | None = None  # default: <pki_dir>/verifier.sqlite
    host: str = "127.0.0.1"
    port: int = 8443
    cert_days: float = 30.0  # device certificate lifetime
    nonce_ttl_s: float = 60.0
    grace_s: float = 600.0  # the previous certificate's life after a renewal
    keep_alive_s: float = 600.0  # idle HTTP/2 connections: kiosks idle for minutes
    max_body_bytes: int = 1 << 20
    max_failures: int = 5  # rejected verifications in a row of a subject on one device before it is locked out
    lockout_devices: int = 3  # a subject is locked for every device while this many devices are locked out on it
    lockout_base_s: float = 30.0  # the first lockout; each next one doubles
    device_requests_per_min: int = 60  # biometric requests a device may make per minute
    subject_requests_per_min: int = 12  # verifications of one subject per minute from one device
    # (from all devices together: lockout_devices times as many, a bound one device cannot reach)
    device_challenges_per_min: int = 120  # challenges (nonces) a device may ask for per minute
    device_identifications_per_min: int = 20  # 1:N identifications a device may ask per minute (each tests everyone)
    device_event_batches_per_min: int = 600  # POST /v1/events a device may send per minute (counted before reading)
    device_events_per_min: int = 6000  # audit events a device may send per minute (a batch holds 500 at most)
    device_event_bytes_per_min: int = 2 << 20  # bytes of event batches a device may send per minute
    step_up_first_use: bool = True  # a device's first verification asks for a second finger
    step_up_ttl_s: float = 120.0  # a pending step-up's lifetime (it holds the first capture's template in memory)
    session_ttl_s: float = 300.0  # lifetime of the session token a successful verification returns
    target_fmr: float = 1e-4  # the decision threshold is set from this false match rate
    duplicate_fmr: float = 1e-6  # enrollment's 1:N search against other subjects: stricter (N comparisons each)
    identify_fpir: float = 1e-3  # an identification names someone for a stranger at most this often (verifier/ranking)
    # The same rate for one modality only (None: identify_fpir). Why: fingers' and faces' score tails differ, faces
    # reach their highest score first (below ~2.7e-9 not one face comparison could be identified), so one shared
    # rate kept fingers from being asked for a stricter one than faces allow.
    finger_identify_fpir: float | None = None
    face_identify_fpir: float | None = None
    enrollment_key_file: Path | None = None  # default: <pki_dir>/enrollment.key (made on first start)
    renewals_per_hour: int = 4  # certificates a device may be issued per hour (its first one included)
    # Refused EST requests (bad CSR, reused key, revoked id) per minute: per device at renewal, per bootstrap
    # token at enrollment; past it, that device's (or token's) EST requests wait lockout_base_s, doubling,
    # before they are looked at.
    est_refusals_per_min: int = 10
    # Connections (verifier/connections.py): what an unauthenticated flood can hold.
    handshake_timeout_s: float = 5.0  # a TLS handshake must finish within this
    unauthenticated_idle_s: float = 5.0  # a connection without a client certificate: idle this long before a request
    unauthenticated_bytes: int = 65536  # HTTP/2 bytes a connection without a client certificate may send (EST: ~2 KiB)
    body_timeout_s: float = 10.0  # a request body must arrive within this
    # Bytes of request bodies held while they arrive and until answered (verifier/connections.py, BodyBudget): one
    # connection's streams together, and every connection's together. Past either, a request is refused 503.
    connection_body_bytes: int = 4 << 20
    total_body_bytes: int = 256 << 20
    max_connections: int = 4096  # all connections (lowered to the descriptor limit minus a reserve)
    max_unauthenticated: int = 256  # connections still in their handshake or without a client certificate
    max_connections_per_address: int = 64  # connections from one address (unauthenticated ones are evicted first)
    max_connections_per_device: int = 8  # connections of one device's certificate (its oldest go first)
    # Work (verifier/matching.py): what one request and one device may cost.
    max_views_per_request: int = 10  # finger views in one request, all templates together
    max_templates_per_subject: int = 100  # finger views one subject may hold (and, apart, face embeddings)
    device_comparisons_per_min: int = 20000  # template comparisons one device may cause per minute
    match_workers: int = 2  # threads that match, off the event loop
    match_queue: int = 8  # matching jobs waiting beyond the workers before a 503
    match_budget_s: float = 2.0  # a matching job's time budget (queueing included) before a 503

    def identify_fpir_of(self, modality: str) -> tuple[str, float]:
        """The key and the rate an identification of ``modality`` ("finger" or "face") keeps its FPIR at: the
        modality's own override when set, else ``identify_fpir``. The key is what a refusal's fix names."""
        key = f"{modality}_identify_fpir"
        own = getattr(self, key)
        return (key, own) if own is not None else ("identify_fpir", self.identify_fpir)

    @property
    def enrollment_key(self) -> Path:
        return self.enrollment_key_file or self.pki_dir / "enrollment.key"

    @property
    def database(self) -> Path:
        return self.db_path or self.pki_dir / "verifier.sqlite"

    @property
    def ca_file(self) -> Path:
        return self.pki_dir / CA_CERT

    @property
    def server_cert(self) -> Path:
        return self.pki_dir / SERVER_CERT

    @property
    def server_key(self) -> Path:
        return self.pki_dir / SERVER_KEY

    def updated(self, **values: Any) -> VerifierSettings:
        """A copy with some values changed (None means: keep), each checked."""
        return _checked(replace(self, **{k: v for k, v in values.items() if v is not None}))


_POSITIVE = (
    "device_requests_per_min",
    "device_challenges_per_min",
    "device_identifications_per_min",
    "device_event_batches_per_min",
    "device_events_per_min",
    "device_event_bytes_per_min",
    "lockout_devices",
    "max_failures",
    "subject_requests_per_min",
    "session_ttl_s",
    "step_up_ttl_s",
    "cert_days",
    "nonce_ttl_s",
    "grace_s",
    "keep_alive_s",
    "max_body_bytes",
    "renewals_per_hour",
    "est_refusals_per_min",
    "handshake_timeout_s",
    "unauthenticated_idle_s",
    "unauthenticated_bytes",
    "body_timeout_s",
    "connection_body_bytes",
    "total_body_bytes",
    "max_connections",
    "max_unauthenticated",
    "max_connections_per_address",
    "max_connections_per_device",
    "max_views_per_request",
    "max_templates_per_subject",
    "device_comparisons_per_min",
    "match_workers",
    "match_budget_s",
)


_FPIRS = ("identify_fpir", "finger_identify_fpir", "face_identify_fpir")
_FPIR_FIX = {name: ", or leave it out (identify_fpir then applies)" for name in _FPIRS[1:]}


def _checked(settings: VerifierSettings) -> VerifierSettings:
    for field in fields(VerifierSettings):
        value = getattr(settings, field.name)
        if isinstance(value, float) and not math.isfinite(value):
            # inf passed every "greater than 0": certificates that never expire, lockouts that never end.
            raise SettingsError(f"bad value {field.name} = {value!r}", fix="use a finite number")
    if not 0 < settings.target_fmr < 0.1:
        raise SettingsError(f"bad value target_fmr = {settings.target_fmr!r}", fix="use a rate such as 0.0001")
    if not 0 < settings.duplicate_fmr < 0.1:
        raise SettingsError(f"bad value duplicate_fmr = {settings.duplicate_fmr!r}", fix="use a rate such as 0.000001")
    for name in _FPIRS:
        value = getattr(settings, name)
        if value is not None and not 0 < value < 0.5:
            fix = f"use a rate such as 0.001{_FPIR_FIX.get(name, '')}"
            raise SettingsError(f"bad value {name} = {value!r}", fix=fix)
    if not 0 <= settings.port <= 65535:
        raise SettingsError(f"bad value port = {settings.port!r}", fix="use 0 (a free port) to 65535")
    if settings.match_queue < 0:
        raise SettingsError(f"bad value match_queue = {settings.match_queue!r}", fix="use 0 or more")
    for name in _POSITIVE:
        value = getattr(settings, name)
        if not value > 0:
            raise SettingsError(f"bad value {name} = {value!r}", fix="use a number greater than 0")
    _check_body_budgets(settings)
    return settings


def _check_body_budgets(settings: VerifierSettings) -> None:
    """Each budget of request bodies holds at least one whole body: else a request of ``max_body_bytes``, which
    the verifier accepts, would be refused 503 on an idle verifier, and retried for ever."""
    for name in ("connection_body_bytes", "total_body_bytes"):
        value = getattr(settings, name)
        if value < settings.max_body_bytes:
            raise SettingsError(
                f"bad value {name} = {value!r}: below max_body_bytes = {settings.max_body_bytes!r}",
                fix=f"set {name} to at least max_body_bytes (a few times it: requests in flight together)",
            )
    if settings.total_body_bytes < settings.connection_body_bytes:
        raise SettingsError(
            f"bad value total_body_bytes = {settings.total_body_bytes!r}: below connection_body_bytes = "
            f"{settings.connection_body_bytes!r}",
            fix="set total_body_bytes to at least connection_body_bytes (it bounds all connections together)",
        )


MAX_SETTINGS_BYTES = 1 << 20  # flat key = value lines: a larger --config is another file (or /dev/zero)


def _settings_text(path: Path) -> str:
    """The settings file's text, or SettingsError saying which of its faults it is and the fix for that one.

    Why: every fault was "cannot read FILE: [Errno ...]" with one fix, "fix the file's syntax or its
    permissions", for a --config that does not exist or names a folder; a file that is not UTF-8 (a
    Latin-1 comment) was a traceback.
    """
    try:
        with path.open("rb") as file:
            raw = file.read(MAX_SETTINGS_BYTES + 1)
    except FileNotFoundError:
        raise SettingsError(
            f"the settings file {path} does not exist",
            fix="give --config the path of the verifier's TOML settings file, or leave --config out: every "
            "setting has a default (README, 'Verifier settings')",
        ) from None
    except IsADirectoryError:
        raise SettingsError(f"the settings file {path} is a folder", fix="give --config the TOML file itself") from None
    except PermissionError:
        raise SettingsError(
            f"the settings file {path} cannot be read by this user (permission denied)",
            fix=f"run as the verifier's user, or let it read the file (`ls -l {path}`; chmod or chown)",
        ) from None
    except OSError as exc:
        raise SettingsError(f"cannot read the settings file {path}: {exc.strerror}",
                            fix="check the disk and the path given to --config") from None
    if len(raw) > MAX_SETTINGS_BYTES:
        raise SettingsError(f"the settings file {path} is larger than {MAX_SETTINGS_BYTES} bytes",
                            fix="give --config the verifier's settings file: a few flat `key = value` lines")
    try:
        return raw.decode("utf-8-sig")  # a byte-order mark an editor wrote is fine
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise SettingsError(
            f"the settings file {path} is not UTF-8 (line {line}: byte 0x{raw[exc.start]:02x})",
            fix=f"save it as UTF-8 (e.g. `iconv -f latin1 -t utf-8 {path}`, into a new file, then rename it)",
        ) from None


def load_settings(path: Path) -> VerifierSettings:
    """Settings from a TOML file whose keys are the field names."""
    text = _settings_text(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(
            f"the settings file {path} is not valid TOML: {exc}",
            fix="correct that line: flat `key = value` lines, numbers unquoted, text quoted (README, "
            "'Verifier settings')",
        ) from None
    known = {f.name: f for f in fields(VerifierSettings)}
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key not in known:
            raise SettingsError(
                f"unknown key {key} = {value!r} in {path}", fix=f"remove it; known keys: {', '.join(known)}"
            )
        values[key] = _typed(key, known[key].type, value)
    return _checked(VerifierSettings(**values))


def _typed(key: str, declared: object, value: object) -> object:
    """A file's value as its field's type, or SettingsError naming the key, the value and what to write.

    TOML has types, and the checks after this compare numbers: a string there was a
    traceback, and a wrong type passed silently (``step_up_first_use = "no"`` is a
    true string; ``max_failures = true`` is the integer 1; ``max_failures = 2.5``).
    """
    kind = str(declared).split(" |")[0]  # "Path | None": a path when given
    if kind == "bool":
        if not isinstance(value, bool):
            raise SettingsError(f"bad value {key} = {value!r}", fix="use true or false (no quotes)")
        return value
    if kind == "int":
        if not isinstance(value, int) or isinstance(value, bool):
            raise SettingsError(f"bad value {key} = {value!r}", fix="use a whole number (no quotes, no decimals)")
        return value
    if kind == "float":
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise SettingsError(f"bad value {key} = {value!r}", fix="use a number (no quotes)")
        return value  # as written (an error names `cert_days = 0`, not 0.0); ints compute as floats do
    if not isinstance(value, str) or not value.strip():
        raise SettingsError(f"bad value {key} = {value!r}", fix="use a quoted, non-empty " +
                            ("path" if kind == "Path" else "text"))
    return Path(value) if kind == "Path" else value
