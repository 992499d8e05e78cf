"""`capture-agent doctor`: what an installer runs when something is wrong.

Each check says what it found; a failed check says how to fix it. Checks that
depend on an earlier one (the live call needs the identity) are skipped with a
reason rather than failing twice.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import os
import shlex
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from agent.client import CLOCK_FIX, VerifierClient, problem_error
from agent.config import DEFAULT_CONFIG_PATH, AgentConfig
from agent.errors import AgentError, ConfigError, provision_fix
from agent.identity import (
    CERTIFICATE_FAULTS,
    VERIFIER_FILE,
    DeviceIdentity,
    IdentityStore,
    provisioned_verifier,
    spki_sha256,
    user_name,
)
from agent.keystore import load_kek
from drivers.accounts import login

EARLIEST_SANE_CLOCK = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
# How far this clock may be from the verifier's before doctor blames it (the verifier's certificates
# are backdated 5 minutes; the Date header has a resolution of one second).
CLOCK_TOLERANCE = dt.timedelta(minutes=2)


@dataclass
class Check:
    name: str
    ok: bool | None  # None: skipped
    detail: str
    fix: str = ""


@dataclass
class DoctorReport:
    checks: list[Check] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)
    # Told of each check once it is final, so a terminal shows the report as it is made, not after the live
    # call's wait (up to [network] call_deadline_s, 20 s, before: a blank screen for all of it).
    on_check: Callable[[Check], None] | None = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return all(c.ok is not False for c in self.checks)

    def add(self, name: str, ok: bool | None, detail: str, fix: str = "") -> bool:
        return self.add_check(Check(name, ok, detail, fix))

    def add_check(self, check: Check) -> bool:
        self.checks.append(check)
        if self.on_check is not None:
            self.on_check(check)
        return bool(check.ok)


def _mode(path: os.PathLike[str]) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


CHOWN_FIX = (
    "give it to the agent's user: `chown -R capture-agent: {path}` (provisioning as root without User= "
    "leaves it root's), then run commands as that user (README: `systemd-run ... -p User=capture-agent`)"
)


def _check_state_dir(report: DoctorReport, config: AgentConfig) -> bool:
    """The state directory as the agent's user needs it: a directory, its own, 0700, every file readable.

    Why ownership and access, not only the mode: a directory provisioned as root
    has a perfect 0700 and is useless to the agent's user; the fix is `chown`, and
    saying so here stops a re-provisioning that would spend a token for nothing.
    """
    name = "state directory"
    path = config.agent.state_dir
    uid = os.getuid()
    try:
        info = path.stat()
    except FileNotFoundError:
        # The line to type names the config doctor read: the bare one provisioned into the default state directory.
        return report.add(name, False, f"{path} does not exist", provision_fix(_config_option(config)))
    except NotADirectoryError:
        return report.add(
            name, False, f"a part of {path} is a file, not a directory", "point [agent] state_dir at a directory"
        )
    except PermissionError:
        return report.add(
            name,
            False,
            f"{path} cannot be looked at by {user_name(uid)}: a parent directory is closed to this user",
            f"`ls -ld` each parent of {path}; the state directory's parents must be searchable (x) by the "
            "agent's user",
        )
    if not stat.S_ISDIR(info.st_mode):
        return report.add(
            name,
            False,
            f"[agent] state_dir {path} is a file, not a directory",
            "point [agent] state_dir at a directory (default /var/lib/capture-agent), or move the file away",
        )
    if info.st_uid != uid:
        if uid == 0:
            return report.add(
                name,
                False,
                f"{path} belongs to {user_name(info.st_uid)} but doctor runs as root: it must check as the "
                "agent's user",
                "run doctor as the agent's user, as the unit runs it (README: `systemd-run --pipe --wait "
                "-p User=capture-agent -p LoadCredentialEncrypted=capture-agent-kek ... capture-agent doctor`)",
            )
        return report.add(
            name,
            False,
            f"{path} belongs to {user_name(info.st_uid)}, not to {user_name(uid)}",
            CHOWN_FIX.format(path=path),
        )
    if not os.access(path, os.R_OK | os.W_OK | os.X_OK):
        return report.add(
            name, False, f"{path} has mode {_mode(path):o}: {user_name(uid)} cannot enter it", f"chmod 0700 {path}"
        )
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        return report.add(name, False, f"{path} has mode {mode:o}", f"chmod 0700 {path}")
    foreign: list[str] = []
    closed: list[str] = []
    loose: list[str] = []

    def unreadable(exc: OSError) -> None:
        closed.append(str(exc.filename))

    for folder, dirs, files in os.walk(path, onerror=unreadable):
        for entry in (*dirs, *files):
            item = Path(folder) / entry
            try:
                entry_info = item.lstat()
            except OSError:
                closed.append(str(item))
                continue
            if stat.S_ISLNK(entry_info.st_mode):
                continue
            if entry_info.st_uid != uid:
                foreign.append(f"{item} ({user_name(entry_info.st_uid)})")
            elif not os.access(item, os.R_OK):
                closed.append(str(item))
            elif stat.S_ISREG(entry_info.st_mode) and stat.S_IMODE(entry_info.st_mode) & 0o077:
                loose.append(str(item))
    if foreign:
        return report.add(
            name, False, f"files not owned by {user_name(uid)}: {', '.join(foreign)}", CHOWN_FIX.format(path=path)
        )
    if closed:
        return report.add(
            name, False, f"unreadable by {user_name(uid)}: {', '.join(closed)}", f"chmod -R u+rwX {path}"
        )
    if loose:
        return report.add(name, False, f"files readable by others: {', '.join(loose)}", "chmod 0600 on them")
    return report.add(name, True, f"{path} (0700, owned by {user_name(uid)}, files 0600)")


def _check_free_space(report: DoctorReport, config: AgentConfig) -> None:
    """Room for the audit outbox to reach its bound, on a file system that can be written.

    Why: a full SD card (logs, a video clip a rig copied) or one remounted read-only after an I/O error
    stops every session (the daemon takes no attempt it cannot audit), and the installer should hear it
    here, before a person at the kiosk does.
    """
    name, path = "free space", config.agent.state_dir
    try:
        fs = os.statvfs(path)
    except OSError:
        return  # no state directory yet, or one this user cannot look at: the state directory check says so
    if fs.f_flag & os.ST_RDONLY:
        report.add(name, False, f"the file system of {path} is read-only: the audit trail cannot be written",
                   f"see `dmesg` (an SD card that failed remounts read-only) and `findmnt -T {path}`")
        return
    free, bound = fs.f_bavail * fs.f_frsize, config.audit.outbox_max_bytes
    mib = 1024 * 1024
    if free < bound:
        report.add(
            name, False,
            f"{free / mib:.1f} MiB free on the file system of {path}, under the audit outbox's bound "
            f"({bound / mib:.0f} MiB, [audit] outbox_max_bytes): while the verifier is away the outbox may fill "
            "the disk, and then no session is taken",
            f"free space (`df -h {path}`), or lower [audit] outbox_max_bytes",
        )
        return
    report.add(name, True, f"{free / mib:.0f} MiB free (the outbox is bounded at {bound / mib:.0f} MiB)")


# Where systemd's LoadCredentialEncrypted= looks for a credential (systemd.exec(5), "Credentials").
CREDSTORE_DIRS = (
    Path("/etc/credstore.encrypted"),
    Path("/run/credstore.encrypted"),
    Path("/usr/local/lib/credstore.encrypted"),
    Path("/usr/lib/credstore.encrypted"),
)


def _config_option(config: AgentConfig) -> str:
    """`` --config FILE`` (absolute) when the config came from a file the default lookup would not find."""
    if config.source in ("defaults", "devstack", str(DEFAULT_CONFIG_PATH)):
        return ""
    return f" --config {shlex.quote(os.path.abspath(config.source))}"


def doctor_under_systemd(config: AgentConfig) -> str:
    """The command that runs doctor as the unit runs the daemon: its user, state directory and credential."""
    command = (
        "systemd-run --pipe --wait -p User=capture-agent -p StateDirectory=capture-agent "
        f"-p LoadCredentialEncrypted={config.keyring.credential_name} capture-agent doctor"
    )
    command += _config_option(config)  # absolute: systemd-run starts in /
    return command


def _kek_outside_systemd(config: AgentConfig, error: AgentError) -> tuple[str, str]:
    """The key-encryption-key failure of a doctor run from a plain shell, and how to run it instead.

    Why: the credential is handed to a process by systemd only; from a shell there is
    never a $CREDENTIALS_DIRECTORY, so "create the credential" would send the installer
    to make a second one (and a device key it cannot open) when the first one is fine.
    """
    name = config.keyring.credential_name
    found = [str(folder / name) for folder in CREDSTORE_DIRS if (folder / name).exists()]
    run_it = f"run doctor under systemd, as the daemon runs: `{doctor_under_systemd(config)}`"
    if found:
        return (
            f"doctor runs outside systemd (no CREDENTIALS_DIRECTORY), so it cannot read the credential "
            f"{name!r} that exists in {found[0]}",
            run_it,
        )
    return (
        f"{error.message}; doctor runs outside systemd, and no encrypted credential {name!r} is in "
        f"{', '.join(map(str, CREDSTORE_DIRS[:1]))} either",
        f"{error.fix}; then {run_it}",
    )


def _check_identity(report: DoctorReport, config: AgentConfig) -> DeviceIdentity | None:
    try:
        kek = load_kek(config)
    except AgentError as exc:
        if config.keyring.backend == "systemd-credentials" and not os.environ.get("CREDENTIALS_DIRECTORY"):
            report.add("key-encryption key", False, *_kek_outside_systemd(config, exc))
        else:
            report.add("key-encryption key", False, exc.message, exc.fix)
        return None
    insecure = config.keyring.backend == "file-insecure-dev"
    # Passed (a test rig runs on it), but never without saying what it is: "[ok] from the file-insecure-dev
    # keyring" read as fine on a device in service, where anyone reading the state directory has the key.
    report.add("key-encryption key", True, f"from the {config.keyring.backend} keyring" + (
        " (INSECURE, development only: the key sits in a plain file beside the device key it protects; on a "
        'device in service use [keyring] backend = "systemd-credentials")' if insecure else ""))
    try:
        identity = IdentityStore(config.agent.state_dir).load(kek.encode())
    except AgentError as exc:
        report.add("device identity", False, exc.message, exc.fix)
        return None
    report.add(
        "device identity",
        True,
        f"device {identity.device_id}, certificate serial {identity.serial_hex}, key opens with the KEK",
    )
    return identity


def _check_chain(
    report: DoctorReport,
    identity: DeviceIdentity,
    now: dt.datetime,
    config: AgentConfig,
    server_now: dt.datetime | None = None,
) -> bool:
    """Chain to the stored CA, then days to expiry by this device's clock.

    ``server_now`` is the verifier's clock when it just accepted this certificate
    over mutual TLS: then a certificate "expired" by the local clock is a clock
    that runs ahead, and the fix is the clock, not a token spent on re-provisioning.
    """
    cert = identity.certificate
    issuers = [ca for ca in identity.ca_certificates if ca.subject == cert.issuer]
    try:
        if not issuers:
            raise ValueError(f"{identity.ca_path} holds no CA named {cert.issuer.rfc4514_string()}")
        cert.verify_directly_issued_by(issuers[0])
    except (ValueError, TypeError, Exception) as exc:  # InvalidSignature is not a ValueError
        # InvalidSignature has no words of its own: a CA of the issuer's name whose key did not sign device.pem.
        reason = str(exc) or (
            f"{identity.ca_path} holds a CA named {cert.issuer.rfc4514_string()}, but not the one that signed "
            f"{identity.cert_path} ({type(exc).__name__}): another verifier's CA, or a file copied over it"
        )
        return report.add(
            "certificate chain",
            False,
            f"the certificate does not chain to the stored CA: {reason}",
            "never edit or copy files into the identity folder; re-provision with a new token "
            "(`capture-verifier token new`, then `capture-agent provision --force`)",
        )
    report.add("certificate chain", True, f"issued by {issuers[0].subject.rfc4514_string()}")
    days = (identity.not_after - now).total_seconds() / 86400
    report.facts["certificate_days_left"] = round(days, 2)
    if days <= 0 and server_now is not None:
        return report.add(
            "certificate expiry",
            False,
            f"expired on {identity.not_after:%Y-%m-%d %H:%M} UTC by this device's clock ({now:%Y-%m-%d %H:%M} UTC), "
            f"but the verifier accepted it just now: its clock says {server_now:%Y-%m-%d %H:%M} UTC, "
            f"{_skew_words(now - server_now)}; the daemon refuses to sign with a certificate it thinks expired",
            f"do not re-provision (the verifier accepts this certificate); {CLOCK_FIX}",
        )
    if days <= 0:
        return report.add(
            "certificate expiry",
            False,
            f"expired on {identity.not_after:%Y-%m-%d %H:%M} UTC",
            "re-provision with a new token (`capture-verifier token new`, then `capture-agent provision --force`)",
        )
    lifetime = identity.not_after - identity.not_before
    overdue_at = identity.not_before + lifetime * (config.renewal.at_fraction + config.renewal.jitter_fraction)
    if now > overdue_at:
        return report.add(
            "certificate expiry",
            False,
            f"{days:.1f} days left: past its renewal time ({overdue_at:%Y-%m-%d %H:%M} UTC) and not renewed",
            "renew now with `capture-agent renew`; check the daemon's log for renewal errors",
        )
    return report.add("certificate expiry", True, f"{days:.1f} days left ({identity.not_after:%Y-%m-%d} UTC)")


def _skew_words(skew: dt.timedelta) -> str:
    """``3.0 days ahead of the verifier's`` / ``12 min behind the verifier's``: a skew an installer reads."""
    seconds = abs(skew.total_seconds())
    if seconds >= 86400:
        amount = f"{seconds / 86400:.1f} days"
    elif seconds >= 3600:
        amount = f"{seconds / 3600:.1f} hours"
    elif seconds >= 60:
        amount = f"{seconds / 60:.0f} min"
    else:
        amount = f"{seconds:.0f} s"
    return f"{amount} {'ahead of' if skew.total_seconds() > 0 else 'behind'} the verifier's"


def _check_clock(
    report: DoctorReport, identity: DeviceIdentity | None, now: dt.datetime, server_now: dt.datetime | None = None
) -> bool:
    """The local clock: sane, after the certificate's start, and (when the verifier said) near the verifier's.

    Why the verifier's Date header: certificate validity is judged by both clocks,
    and a device clock days off gives TLS errors that look like a wrong CA or an
    expired certificate; the skew names the real cause.
    """
    if server_now is not None:
        skew = now - server_now
        report.facts["clock_skew_s"] = round(skew.total_seconds(), 1)
        if abs(skew) > CLOCK_TOLERANCE:
            return report.add(
                "clock",
                False,
                f"the clock says {now:%Y-%m-%d %H:%M:%S} UTC, {_skew_words(skew)} "
                f"(its Date header: {server_now:%Y-%m-%d %H:%M:%S} UTC)",
                CLOCK_FIX,
            )
    if now < EARLIEST_SANE_CLOCK:
        return report.add("clock", False, f"the clock says {now:%Y-%m-%d}", CLOCK_FIX)
    if identity is not None and now < identity.not_before - dt.timedelta(minutes=5):
        return report.add(
            "clock", False, f"the clock ({now:%Y-%m-%d %H:%M}) is before the certificate's start", CLOCK_FIX
        )
    agrees = f", within {CLOCK_TOLERANCE.total_seconds() / 60:.0f} min of the verifier's" if server_now else ""
    return report.add("clock", True, f"{now:%Y-%m-%d %H:%M:%S} UTC{agrees}")


def _server_date(response: httpx.Response) -> dt.datetime | None:
    """The verifier's clock from its Date header (RFC 9110 section 6.6.1), or None without a usable one."""
    try:
        date = email.utils.parsedate_to_datetime(response.headers.get("date", ""))
    except (TypeError, ValueError, IndexError):
        return None
    return date.astimezone(dt.UTC) if date.tzinfo is not None else date.replace(tzinfo=dt.UTC)


def server_certificate_facts(der: bytes) -> dict[str, str]:
    """The server certificate's expiry and SPKI pin, as doctor prints them, from the handshake's DER.

    Why apart from cryptography's parse: OpenSSL accepted the certificate, but the
    cryptography library may not read all of it (a key on a curve it lacks raises from
    public_key(); a field it refuses raises at load). The pin is over the SPKI bytes
    as sent (:func:`agent.identity.spki_sha256` of the DER); an expiry that cannot be read says so.
    """
    facts = {"server_spki_sha256": spki_sha256(der)}
    try:
        from cryptography import x509

        facts["server_cert_not_after"] = x509.load_der_x509_certificate(der).not_valid_after_utc.isoformat()
    except CERTIFICATE_FAULTS as exc:
        facts["server_cert_not_after"] = f"unreadable by the cryptography library ({type(exc).__name__})"
    return facts


async def _check_live(report: DoctorReport, config: AgentConfig, identity: DeviceIdentity) -> dt.datetime | None:
    """One mutual-TLS call to /v1/health; the verifier's clock from its answer when it accepted the device."""
    try:
        async with VerifierClient(config, identity) as client:
            response = await client.request("GET", "/v1/health")
            tls = dict(client.last_tls)
            stream = response.extensions.get("network_stream")
            ssl_object = stream.get_extra_info("ssl_object") if stream is not None else None
            if ssl_object is not None:
                tls.update(server_certificate_facts(ssl_object.getpeercert(binary_form=True)))
    except AgentError as exc:
        report.add("verifier (live mTLS call)", False, exc.message, exc.fix)
        return None
    report.facts["tls"] = tls
    if response.status_code != 200:
        # The verifier's problem type says which refusal it is, with its own fix: a revoked device needs a
        # token for a new id, where "re-provision" alone sent the installer to a token that is refused too.
        refused = problem_error(response)
        report.add("verifier (live mTLS call)", False, f"/v1/health: {refused.message}", refused.fix)
        return None
    report.add(
        "verifier (live mTLS call)",
        True,
        f"{config.verifier.url}: {tls.get('tls_version')}, {tls.get('cipher')}, ALPN {tls.get('alpn')}, "
        f"server certificate valid until {tls.get('server_cert_not_after', '?')}; "
        f"server SPKI pin {tls.get('server_spki_sha256', '?')} (for [verifier] spki_pin)",
    )
    return _server_date(response)


def _check_api_group(report: DoctorReport, config: AgentConfig) -> None:
    """The local API's group exists (the daemon would stop at start otherwise); not checked when unset."""
    group = config.api.group
    if not group:
        return
    from agent.localapi import existing_group_gid

    try:
        gid = existing_group_gid(group)
    except AgentError as exc:
        report.add("local API group", False, exc.message, exc.fix)
        return
    report.add("local API group", True, f'"{group}" (gid {gid}): its members reach {config.api.socket}')


# The folder the shipped unit makes for the socket at each start (RuntimeDirectory=capture-agent, mode 0751).
UNIT_RUNTIME_DIR = Path("/run/capture-agent")
API_FOLDER_FIX = (
    "point [api] socket into a folder of the agent's own (default /run/capture-agent/api.sock, made 0751 by the "
    "unit's RuntimeDirectory=)"
)


def _check_api_socket(report: DoctorReport, config: AgentConfig) -> bool | None:
    """The local API socket's folder as the daemon meets it at start: there or creatable, a directory this user
    may create the socket in, and that no other user may replace the socket in.

    Why: the daemon checks the path only when it starts serving (:class:`agent.localapi.LocalAPI`), after the
    devices are open, so a folder it cannot write stopped `run` after an all-green doctor. And a folder others
    may write (a world-writable one without the sticky bit, or one another user owns) lets them remove the
    socket and bind their own at its path: the kiosk app would then hand its sessions to them.
    """
    from agent.devices.supervisor import configured_devices
    from agent.localapi import MAX_UNIX_PATH_BYTES, socket_path_error

    name = "local API socket"
    path = config.api.socket
    folder = path.parent
    if not configured_devices(config):
        return report.add(name, None, f"{path} not used: no device configured, so the daemon serves no local API")
    if len(os.fsencode(path)) > MAX_UNIX_PATH_BYTES:
        refused = socket_path_error(path, OSError(0, "too long"))
        return report.add(name, False, refused.message, refused.fix)
    uid = os.getuid()
    try:
        info = folder.stat()
    except FileNotFoundError:
        return _api_folder_to_make(report, name, path)
    except NotADirectoryError as exc:
        refused = socket_path_error(path, exc)
        return report.add(name, False, refused.message, refused.fix)
    except PermissionError:
        return report.add(
            name,
            False,
            f"{folder}, the [api] socket's folder, cannot be looked at by {user_name(uid)}: a parent directory is "
            "closed to this user",
            f"`ls -ld` each parent of {folder}: they must be searchable (x) by the agent's user; or {API_FOLDER_FIX}",
        )
    if not stat.S_ISDIR(info.st_mode):
        refused = socket_path_error(path, NotADirectoryError(20, "Not a directory", str(folder)))
        return report.add(name, False, refused.message, refused.fix)
    mode = stat.S_IMODE(info.st_mode)
    if mode & stat.S_IWOTH and not mode & stat.S_ISVTX:
        return report.add(
            name,
            False,
            f"{folder}, the [api] socket's folder, has mode {mode:o}: any user may write it (no sticky bit), so any "
            "user may remove the socket and put their own at its path",
            f"`chmod o-w {folder}` (or `chmod +t {folder}`), or {API_FOLDER_FIX}",
        )
    if info.st_uid not in (uid, 0):
        if uid == 0:
            return report.add(
                name,
                False,
                f"{folder}, the [api] socket's folder, belongs to {user_name(info.st_uid)} but doctor runs as root: "
                "it must check as the agent's user",
                f"run doctor as the agent's user, as the unit runs it: `{doctor_under_systemd(config)}`",
            )
        return report.add(
            name,
            False,
            f"{folder}, the [api] socket's folder, belongs to {user_name(info.st_uid)}, not to {user_name(uid)} or "
            "root: its owner may remove the socket and put their own at its path",
            f"`chown {login(uid)} {folder}`, or {API_FOLDER_FIX}",
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        refused = socket_path_error(path, PermissionError(13, "Permission denied", str(folder)))
        return report.add(
            name, False, f"{refused.message}: {folder} has mode {mode:o}, owned by {user_name(info.st_uid)}",
            refused.fix,
        )
    try:
        there = path.lstat()
    except OSError:  # nothing there yet (or gone meanwhile): the daemon makes it
        there = None
    if there is not None and not stat.S_ISSOCK(there.st_mode):
        return report.add(
            name,
            False,
            f"{path} exists and is not a socket: the daemon leaves it as it is and stops at start",
            f"move it away if it is not needed, or point [api] socket at a path of its own ({API_FOLDER_FIX})",
        )
    return report.add(
        name, True, f"{path}: its folder {folder} ({mode:o}, owned by {user_name(info.st_uid)}) takes the socket"
    )


def _api_folder_to_make(report: DoctorReport, name: str, path: Path) -> bool:
    """The socket's folder is not there: whether the daemon (or its unit) makes it, else how to."""
    from agent.localapi import socket_path_error

    folder = path.parent
    base = folder
    while not base.exists() and base != base.parent:
        base = base.parent
    if folder == UNIT_RUNTIME_DIR:
        return report.add(
            name,
            True,
            f"{folder} does not exist now: the unit's RuntimeDirectory=capture-agent makes it (0751) when the daemon "
            f"starts (run by hand, `capture-agent run` needs it made first: `install -d -m 0751 {folder}`)",
        )
    if not base.is_dir():
        refused = socket_path_error(path, NotADirectoryError(20, "Not a directory", str(base)))
        return report.add(name, False, refused.message, refused.fix)
    if os.access(base, os.W_OK | os.X_OK):
        return report.add(
            name, True, f"{folder} does not exist yet: the daemon makes it in {base}, which {user_name()} may write"
        )
    refused = socket_path_error(path, PermissionError(13, "Permission denied", str(folder)))
    return report.add(
        name, False, f"{folder} does not exist and {user_name()} may not create it in {base}: {refused.message}",
        refused.fix,
    )


def _device_path_problem(path: str, what: str, list_them: str, write: bool = True) -> tuple[str, str] | None:
    """Why this user cannot use the device node or file ``path`` (what was found, the fix), or None.

    Only looked at, never opened: the running daemon may hold the device, and a serial
    handshake from here would cut into its traffic (`capture-agent devices` probes).
    """
    if not os.path.exists(path):
        return f"{path} does not exist", f"plug {what} in, or correct the path ({list_them} lists what there is)"
    if not os.access(path, os.R_OK | (os.W_OK if write else 0)):
        from drivers.discovery import ACCESS_FIX

        return f"{path} exists but {user_name()} may not open it", ACCESS_FIX
    return None


def _camera_path_problem(source: str) -> tuple[str, str] | None:
    """Why this user cannot use the local camera ``source`` (a /dev/videoN, an index, a file), or None.

    A camera that is not there is the driver's own check (CameraNodeMissingError, the one every caller
    shows), made without opening it, as are a video file's (there, readable by this user, no folder, FIFO or
    empty file: CameraFileMissingError, CameraFileUnreadable, CameraFileNotVideo, each worded for a file, not a
    camera to plug in); only whether this user may open a node is looked at here."""
    from drivers.camera.errors import CameraUnavailable
    from drivers.camera.source import CameraSource, CameraSourceError

    try:
        camera = CameraSource.parse(source)
        camera.check_present()
    except CameraSourceError as exc:  # the typed ones (a URL written without its scheme) say why, then the fix
        fix = getattr(exc, "fix", "")
        return (str(exc.args[0]), fix) if fix else (str(exc), "correct source")
    except CameraUnavailable as exc:
        return str(exc.args[0]), exc.fix
    node = camera.node or source
    return _device_path_problem(node, "the camera", "`ls /dev/video*`", write=camera.kind == "v4l2")


def _camera_url_problem(source: str) -> tuple[str, str] | None:
    """Why the daemon will refuse the stream URL ``source`` as written (what was found, the fix), or None.

    Why: the URL is not reached from here, but one the driver refuses before any connection (a password with an
    unencoded /) left doctor green beside a daemon that never opens the camera. The message shows the source
    without its credentials."""
    from drivers.camera.source import CameraSource, CameraSourceError

    try:
        CameraSource.parse(source)
    except CameraSourceError as exc:
        fix = getattr(exc, "fix", "")
        return (str(exc.args[0]), fix) if fix else (str(exc), "correct source")
    return None


def _check_devices(report: DoctorReport, config: AgentConfig) -> None:
    """Each configured device's node (serial port, /dev/video, a file) and a camera's ca_file, as this user.

    Why: the daemon starts without a device that is not there (it waits for it to be
    plugged in), so a mistyped port left the installer with an all-green doctor and a
    kiosk that never asked for a finger.
    """
    from agent.devices.supervisor import config_place, configured_devices
    from drivers.camera.source import redact_url

    devices = configured_devices(config)
    if not devices:
        report.add(
            "devices",
            None,
            f"none configured in {config.source}: the daemon serves no capture sessions",
            "add a [[device]] table per reader or camera (README, 'Configuration'); `capture-agent devices` lists "
            "what this machine has",
        )
        return
    for name, section in devices:
        where = f"{config_place(name, section)} in {config.source}"
        problem: tuple[str, str] | None = None
        if section.kind == "zfm":
            path, shown = section.port, f"serial port {section.port}"
            problem = _device_path_problem(
                path, "the module (its USB adapter)", "`ls /dev/ttyUSB* /dev/ttyACM* /dev/serial*`"
            )
        elif section.kind == "camera" and "://" not in section.source:
            shown = f"camera {redact_url(section.source)}"  # a stream URL written without its scheme: masked
            problem = _camera_path_problem(section.source)
        elif section.kind == "camera":
            shown = "camera stream (not reached from here; `capture-agent devices --camera URL` reads it once)"
            problem = _camera_url_problem(section.source)
        else:
            shown = f"libfprint reader {section.selector or '(the first)'} (`capture-agent devices` lists them)"
            problem = _libfprint_problem()
        if problem is None and section.kind == "camera" and section.ca_file:
            problem = _ca_file_problem(section.ca_file)
        if problem is not None:
            found, fix = problem
            report.add(f"device {name}", False, f"{section.kind}: {found}", f"{fix}; it is set by {where}")
        else:
            report.add(f"device {name}", True, f"{section.kind}: {shown}")


def _libfprint_problem() -> tuple[str, str] | None:
    """Why this Python cannot drive a libfprint reader (what is missing, the fix), or None.

    Why here: the daemon starts without such a device (it could not be set up) and only /health says why, so
    the installer's doctor was all green on a kiosk whose one reader could never work.
    """
    from drivers.fprint import INSTALL_HINT, unavailable_reason

    reason = unavailable_reason()
    if not reason:
        return None
    return reason.split("; ")[0], INSTALL_HINT


def _ca_file_problem(path: str) -> tuple[str, str] | None:
    """Why a camera's ``ca_file`` cannot be its trust anchor (what was found, the fix), or None."""
    from cryptography import x509

    fix = "give ca_file the PEM certificate of the CA that issued the camera's certificate"
    try:
        with open(path, "rb") as stream:
            data = stream.read(1 << 20)
    except OSError as exc:
        return f"ca_file {path} cannot be read: {exc.strerror}", fix
    try:
        x509.load_pem_x509_certificates(data)
    except ValueError:
        return f"ca_file {path} holds no PEM certificate", fix
    return None


def _provisioned_elsewhere(config: AgentConfig) -> str | None:
    """The verifier URL the device was provisioned with when it is not the one in use, as doctor may print it.

    The kept file is only read when a URL from the file or the command line wins, so it is checked here like a
    config value before it is repeated: one edited by hand may hold a password (``https://user:pw@host``) or
    control characters, and doctor's output is pasted into tickets.
    """
    try:
        kept = provisioned_verifier(config)
    except ConfigError:
        kept_in = IdentityStore(config.agent.state_dir).current / VERIFIER_FILE
        return f"a URL that is no valid verifier URL (in {kept_in}; re-provision to replace it)"
    return kept.url if kept is not None and kept.elsewhere else None


def run_doctor(
    config: AgentConfig,
    now: Callable[[], dt.datetime] | None = None,
    *,
    on_check: Callable[[Check], None] | None = None,
    on_live_call: Callable[[str], None] | None = None,
) -> DoctorReport:
    """Every check of this device; ``on_check`` is told of each as it is final (in the report's order), and
    ``on_live_call`` what the one slow step waits for before it starts (a terminal's progress line)."""
    report = DoctorReport(on_check=on_check)
    kept: AgentError | None = None
    try:
        other = _provisioned_elsewhere(config)
    except AgentError as exc:  # the kept file is a FIFO, a link, a directory, too large: a line, not a stop
        other, kept = None, exc
    report.add(
        "config",
        True,
        f"loaded from {config.source}; verifier {config.verifier.url} ({config.verifier_url_origin})"
        + (f"; the device was provisioned with {other}" if other else ""),
    )
    if kept is not None:
        report.add("provisioned verifier URL", False, kept.message, kept.fix)
    clock = (now or (lambda: dt.datetime.now(dt.UTC)))()
    _check_state_dir(report, config)
    _check_free_space(report, config)
    _check_api_group(report, config)
    _check_api_socket(report, config)
    _check_devices(report, config)
    identity = _check_identity(report, config)
    if identity is None:
        _check_clock(report, identity, clock)
        report.add("verifier (live mTLS call)", None, "skipped: no usable identity")
        return report
    # The live call runs first (its check is listed last): the verifier's answer tells the clock
    # check how far this clock is off, and the expiry check whether the verifier still accepts us.
    live = DoctorReport()
    if on_live_call is not None:
        on_live_call(
            f"calling the verifier at {config.verifier.url} (a live mutual-TLS call, up to "
            f"{config.network.call_deadline_s:g} s: [network] call_deadline_s)..."
        )
    server_now = asyncio.run(_check_live(live, config, identity))
    if other and live.checks and live.checks[-1].ok is False:  # the URL may be the cause: name both
        failed = live.checks[-1]
        failed.fix = (
            f"{failed.fix}; this device was provisioned with the verifier at {other}, but "
            f"{config.verifier_url_origin} says {config.verifier.url}: if the verifier did not move, correct it"
        )
    _check_clock(report, identity, clock, server_now)
    _check_chain(report, identity, clock, config, server_now)
    for check in live.checks:
        report.add_check(check)
    report.facts.update(live.facts)
    return report
