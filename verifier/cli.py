"""`capture-verifier`: the reference verifier's command line.

capture-verifier pki init DIR
capture-verifier token new --pki DIR [--device ID] [--ttl 24h]   (1 minute to 30 days)
capture-verifier token revoke --pki DIR ID
capture-verifier device list --pki DIR
capture-verifier device revoke --pki DIR ID
capture-verifier device allow --pki DIR ID [--operations verify,identify] [--groups staff,visitors]
capture-verifier subject list --pki DIR
capture-verifier subject group --pki DIR SUBJECT GROUP
capture-verifier subject high-risk --pki DIR SUBJECT [--off]
capture-verifier subject portable --pki DIR SUBJECT [--off]
capture-verifier subject require --pki DIR (SUBJECT | --group GROUP) --factors finger,face
capture-verifier subject remove --pki DIR SUBJECT [--forget]
capture-verifier serve --pki DIR [--host H] [--port P] [--ready-file F]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import errno
import json
import re
import socket
import sqlite3
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from protocol.endpoints import ID_RULE
from protocol.usage import UsageMistake, UsageParser, add_version, parse_arguments
from verifier.pki import CA_CERT, fingerprint, init_pki
from verifier.pki_folder import PKIFolderError, check_folder, database_error
from verifier.settings import SettingsError, VerifierSettings, load_settings

if TYPE_CHECKING:
    from verifier.registry import DeviceRegistry
    from verifier.tokens import BootstrapTokens

DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd]?)$")
UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


class CLIError(Exception):
    """A usage error, printed as an `error:` line and a `fix:` line (README: every error names its fix)."""

    def __init__(self, message: str, fix: str = "") -> None:
        super().__init__(message)
        self.fix = fix


def parse_duration(text: str) -> float:
    """Seconds in "90s", "30m", "24h", "7d"; whether a token may live that long is `tokens.check_ttl`'s call.

    Only the syntax is judged here, so that a lifetime out of bounds gets the
    command line's `error:`/`fix:` pair naming the bounds. A number too large for
    a float is infinity, which that check refuses like any other too-long one.
    """
    match = DURATION.fullmatch(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r}: use a number with s, m, h or d, e.g. 24h")
    return float(match.group(1)) * UNIT_S[match.group(2)]


def configure_logging() -> None:
    from protocol.redaction import redact_secrets

    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact_secrets,  # the agent's last line of defence too, exception text included
            structlog.processors.JSONRenderer(),
        ],
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
    )


def settings_from(args: argparse.Namespace) -> VerifierSettings:
    base = load_settings(Path(args.config)) if getattr(args, "config", None) else VerifierSettings()
    return base.updated(
        pki_dir=Path(args.pki) if getattr(args, "pki", None) else None,
        host=getattr(args, "host", None),
        port=getattr(args, "port", None),
        cert_days=getattr(args, "cert_days", None),
    )


def _need_pki(settings: VerifierSettings, *, serving: bool = False) -> None:
    """Refuse, before anything is stored, a PKI folder that is missing, a file, another tool's, or unreadable."""
    check_folder(settings.pki_dir, serving=serving)


def _open_store(settings: VerifierSettings) -> sqlite3.Connection:
    """The verifier's database, or PKIFolderError naming why it cannot be opened (never a traceback)."""
    from verifier.store import open_database

    try:
        return open_database(settings.database)
    except (sqlite3.Error, OSError) as exc:
        raise database_error(settings.database, exc) from None


def cmd_pki_init(args: argparse.Namespace) -> int:
    directory = Path(args.dir)
    try:
        ca = init_pki(directory, args.server_name or ("localhost", "127.0.0.1"))
    except FileExistsError as exc:
        raise CLIError(str(exc), fix="use another folder, or delete it to start over") from None
    except ValueError as exc:
        raise CLIError(str(exc), fix="give --server-name a host name or an IP address") from None
    except OSError as exc:  # a file on the way, a folder of another user, a read-only file system, a full disk
        if exc.errno == errno.ENOSPC:
            raise CLIError(
                f"cannot make the PKI in {directory}: {exc.strerror}",
                fix=f"free space (`df -h {directory.parent}`), then remove {directory} and run `pki init` again",
            ) from None
        raise CLIError(
            f"cannot make the PKI in {directory}: {exc.strerror}",
            fix="give a folder path this user may create (not under a file), e.g. a new folder in its home",
        ) from None
    print(f"development PKI created in {directory}")
    print(f"CA fingerprint (SHA-256): {fingerprint(ca.cert)}")
    print("private keys (ca.key, server.key) are 0600: never commit or copy them off this host")
    return 0


def _app_store(settings: VerifierSettings) -> tuple[sqlite3.Connection, BootstrapTokens, DeviceRegistry]:
    from verifier.registry import DeviceRegistry
    from verifier.tokens import BootstrapTokens

    _need_pki(settings)
    conn = _open_store(settings)
    return conn, BootstrapTokens(conn), DeviceRegistry(conn, grace_s=settings.grace_s)


def _iso(epoch_s: float) -> str:
    return dt.datetime.fromtimestamp(epoch_s, dt.UTC).isoformat(timespec="seconds")


def cmd_token_new(args: argparse.Namespace) -> int:
    """A one-time token, refused up front when provisioning with it could never succeed."""
    from cryptography import x509

    from verifier.tokens import TokenLifetimeError, check_device_id, check_ttl, format_duration

    try:
        ttl = check_ttl(args.ttl)
    except TokenLifetimeError as exc:
        raise CLIError(str(exc), fix=exc.fix) from None
    settings = settings_from(args)
    _, tokens, registry = _app_store(settings)
    try:
        if args.device is not None:
            check_device_id(args.device)
    except ValueError as exc:
        raise CLIError(str(exc), fix=f"give --device an id of {ID_RULE}") from None
    known = registry.status(args.device) if args.device is not None else None
    if known is not None and known[0] == "revoked":
        # simpleenroll refuses every token of a revoked id (403 device-revoked): a token would only waste a visit.
        raise CLIError(
            f"device {args.device} is revoked: provisioning with a token for it is always refused",
            fix="issue the token for a new device id (`capture-verifier token new --pki DIR --device NEW-ID`); "
            "a revoked id stays revoked",
        )
    # The CA is read before the token is stored: a token that is never printed is one nobody can use or revoke.
    ca = x509.load_pem_x509_certificate((settings.pki_dir / CA_CERT).read_bytes())
    token, device_id = tokens.new(args.device, ttl)
    expires = _iso(dt.datetime.now(dt.UTC).timestamp() + ttl)
    structlog.get_logger().info("token_issued", audit=True, device_id=device_id, expires_at=expires)
    print(f"token: {token}")
    print(f"device: {device_id}")
    print(f"ca-fingerprint: {fingerprint(ca)}")
    print(f"valid for {format_duration(ttl)} (until {expires}), once. On the device:")
    # The token on stdin (printf is a shell builtin): a command line is readable by every local user in /proc,
    # and systemd-run logs it as the unit's description.
    print(
        f"  printf '%s\\n' {token} | capture-agent provision --verifier https://HOST:{settings.port} --token - "
        f"--ca-fingerprint {fingerprint(ca)}"
    )
    return 0


def cmd_device_list(args: argparse.Namespace) -> int:
    """Registered devices, then ids that only a token or a rule names, so no rule is ever invisible.

    ``status`` is ``active`` or ``revoked`` for a registered device, ``pending``
    for an id with an unused token (``token_expires``), and ``not-provisioned``
    for an id some access rule names but no device or live token has.
    """
    from verifier.assertions import SensorPolicy
    from verifier.policy import AccessRules

    conn, tokens, registry = _app_store(settings_from(args))
    rules = AccessRules(conn)
    devices = registry.list()
    registered = {d["device_id"] for d in devices}
    pending = tokens.pending()
    for device_id in sorted((set(pending) | rules.device_ids()) - registered):
        devices.append({"device_id": device_id, "status": "pending" if device_id in pending else "not-provisioned",
                        "certificates": 0, "not_after": None})
    devices.sort(key=lambda d: d["device_id"])
    for device in devices:
        # Every line has the same keys, so a script reads them all one way: null where there is no unused token
        # (a provisioned device may have one too, to re-provision with).
        device["token_expires"] = _iso(pending[device["device_id"]]) if device["device_id"] in pending else None
        groups = rules.groups(device["device_id"])
        device["operations"] = rules.operations(device["device_id"])
        device["groups"] = "*" if groups is None else sorted(groups)
        device["sensor_assertions"] = SensorPolicy(conn).of(device["device_id"]).replace("_", "-")
        if isinstance(device.get("not_after"), int | float):  # stored as epoch seconds; people read dates
            device["not_after"] = dt.datetime.fromtimestamp(device["not_after"], dt.UTC).isoformat(timespec="seconds")
        print(json.dumps(device))
    return 0


def cmd_token_revoke(args: argparse.Namespace) -> int:
    """Revoke a device id's unused tokens (one leaked, a visit cancelled); the id may get a new token afterwards."""
    _device_id_argument(args.device_id)
    _, tokens, registry = _app_store(settings_from(args))
    revoked = tokens.revoke(args.device_id)
    if revoked:
        structlog.get_logger().info("token_revoked", audit=True, device_id=args.device_id, tokens=revoked)
        print(f"revoked {_count(revoked, 'unused token')} of {args.device_id}: provisioning with "
              f"{'it' if revoked == 1 else 'them'} is refused from now on")
        return 0
    if tokens.revoked(args.device_id):
        print(f"{args.device_id} has no unused token left to revoke (revoked before); nothing changed")
        return 0
    known = registry.status(args.device_id)
    raise CLIError(
        f"no unused token names {args.device_id!r}"
        + (f" ({args.device_id} is a provisioned device, {known[0]})" if known is not None else ""),
        fix="check the id with `capture-verifier device list --pki DIR` (an id with an unused token is `pending`); "
        "to stop a provisioned device, `capture-verifier device revoke --pki DIR ID`",
    )


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def _device_id_argument(device_id: str) -> str:
    from protocol.endpoints import DEVICE_ID

    if not DEVICE_ID.fullmatch(device_id):
        raise CLIError(
            f"{device_id!r} is not a device id",
            fix=f"use {ID_RULE}",
        )
    return device_id


def cmd_device_revoke(args: argparse.Namespace) -> int:
    """Revoke a device and its unused tokens; revoking it again changes nothing and says so (exit 0).

    An id that has not provisioned yet but has a token (`pending`) is revoked too:
    its tokens are refused from now on and the id stays revoked, like any revoked
    device's (`token revoke` cancels the tokens alone and keeps the id usable).
    """
    _device_id_argument(args.device_id)  # a malformed id is named as one, like `token revoke` does
    _, tokens, registry = _app_store(settings_from(args))
    known = registry.status(args.device_id)
    if known is not None and known[0] == "revoked":
        since = f" since {_iso(known[1])}" if known[1] is not None else ""
        structlog.get_logger().info("device_already_revoked", device_id=args.device_id)
        print(f"{args.device_id} is already revoked{since}; nothing changed")
        return 0
    # An id that has not provisioned but was given tokens (unused, or all revoked or expired: `token revoke` keeps
    # the id good, and `device list` no longer shows it) is the operator's own: revoked, it stays so. Refused as
    # "no active device", with `device list` as the fix, it could not be revoked at all, and `token new` still
    # gave it a token.
    if known is None and (args.device_id in tokens.pending() or tokens.ever_issued(args.device_id)):
        registry.revoke_unprovisioned(args.device_id)
        revoked = tokens.revoke(args.device_id)
        structlog.get_logger().info(
            "device_revoked", audit=True, device_id=args.device_id, provisioned=False, tokens_revoked=revoked
        )
        left = (f"its {_count(revoked, 'unused token')} {'is' if revoked == 1 else 'are'} refused from now on"
                if revoked else "it has no unused token")
        print(f"revoked {args.device_id}, which had not provisioned: {left}, and the id stays revoked")
        return 0
    if not registry.revoke(args.device_id):
        raise CLIError(
            f"no device {args.device_id!r}: none provisioned under that id and no token was issued for it",
            fix="check the id with `capture-verifier device list --pki DIR`",
        )
    revoked = tokens.revoke(args.device_id)  # a re-provisioning token issued before: refused from now on too
    structlog.get_logger().info("device_revoked", audit=True, device_id=args.device_id, tokens_revoked=revoked)
    print(f"revoked {args.device_id}" + (f" and its {_count(revoked, 'unused token')}" if revoked else ""))
    return 0


def _comma_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def cmd_device_allow(args: argparse.Namespace) -> int:
    from verifier.assertions import SensorPolicy
    from verifier.policy import AccessRules

    sensor = getattr(args, "sensor_assertions", None)
    if args.operations is None and args.groups is None and sensor is None:
        raise CLIError(
            "say what the device may do",
            fix="add --operations enroll,verify,identify and/or --groups staff,... "
            "and/or --sensor-assertions accept|step-up|refuse",
        )
    conn, tokens, registry = _app_store(settings_from(args))
    note = _device_to_rule(args.device_id, registry, tokens)
    rules = AccessRules(conn)
    try:
        if sensor is not None:
            SensorPolicy(conn).set(args.device_id, sensor)
        if args.operations is not None:
            rules.set(args.device_id, _comma_list(args.operations))
        if args.groups is not None:
            rules.set_groups(args.device_id, None if args.groups.strip() == "*" else _comma_list(args.groups))
    except ValueError as exc:
        raise CLIError(str(exc), fix="operations: enroll, verify, identify; groups: names or '*'") from None
    operations, groups = rules.operations(args.device_id), rules.groups(args.device_id)
    group_text = "any group" if groups is None else ", ".join(sorted(groups)) or "no group"
    structlog.get_logger().info(
        "device_rule_set",
        audit=True,
        device_id=args.device_id,
        operations=",".join(operations),
        groups="*" if groups is None else ",".join(sorted(groups)),
        sensor_assertions=SensorPolicy(conn).of(args.device_id),
    )
    print(
        f"{args.device_id} may: {', '.join(operations) or 'nothing'}; on subjects of: {group_text}; "
        f"sensor assertions: {SensorPolicy(conn).of(args.device_id).replace('_', '-')}"
    )
    if note:
        print(note)
    return 0


def _device_to_rule(device_id: str, registry: DeviceRegistry, tokens: BootstrapTokens) -> str:
    """Check that a rule names a device that exists or is about to; a note to print, or CLIError.

    A rule may be set between `token new` and the device's provisioning (so a new
    device never runs without its rule); for any other unknown id it is a typo that
    would leave the real device on the default, everything allowed.
    """
    _device_id_argument(device_id)
    known = registry.status(device_id)
    if known is not None:
        return f"note: {device_id} is revoked; the rule applies to nothing" if known[0] == "revoked" else ""
    pending = tokens.pending()
    if device_id in pending:
        return (f"note: {device_id} has not provisioned yet (its token is valid until {_iso(pending[device_id])}); "
                "the rule applies from its first request")
    raise CLIError(
        f"no device {device_id!r}: none provisioned under that id and no unused token names it",
        fix="check the id with `capture-verifier device list --pki DIR`; to set the rule of a new device before it "
        "provisions, issue its token first (`capture-verifier token new --pki DIR --device ID`)",
    )


def _well_formed(value: str, what: str) -> str:
    """``value`` if it matches the protocol's pattern for ``what`` ("group name" or "subject id")."""
    from protocol.endpoints import GROUP_NAME, SUBJECT_ID

    pattern = GROUP_NAME if what == "group name" else SUBJECT_ID
    if not pattern.fullmatch(value):
        raise CLIError(
            f"{value!r} is not a {what}",
            fix=f"use {ID_RULE}",
        )
    return value


def _group_name(group: str) -> str:
    return _well_formed(group, "group name")


def _subject_id(subject_id: str) -> str:
    return _well_formed(subject_id, "subject id")


def _enrolled_subject(conn: sqlite3.Connection, subject_id: str, fix: str = "") -> str:
    """The subject id, when someone is enrolled under it; else CLIError (a typo would protect nobody)."""
    from verifier.subjects import is_enrolled

    if not is_enrolled(conn, _subject_id(subject_id)):
        raise CLIError(
            f"no subject {subject_id!r} is enrolled (ids are case-sensitive)",
            fix=fix or "check the id with `capture-verifier subject list --pki DIR`, or enroll the subject first "
            "(`capture-agent enroll --subject ID`), then set the rule",
        )
    return subject_id


def cmd_subject_list(args: argparse.Namespace) -> int:
    """Enrolled subjects, one JSON line each: what the operator's subject commands accept."""
    from verifier.subjects import SubjectGroups, enrolled_subjects

    conn, _, _ = _app_store(settings_from(args))
    groups = SubjectGroups(conn)
    for subject_id, kinds in sorted(enrolled_subjects(conn).items()):
        print(json.dumps({"subject_id": subject_id, "group": groups.group_of(subject_id), "enrolled": kinds}))
    return 0


def cmd_subject_group(args: argparse.Namespace) -> int:
    from verifier.subjects import SubjectGroups

    _group_name(args.group)
    conn, _, _ = _app_store(settings_from(args))
    _enrolled_subject(conn, args.subject_id)
    groups = SubjectGroups(conn)
    before = groups.group_of(args.subject_id)
    groups.assign(args.subject_id, args.group)
    structlog.get_logger().info(
        "subject_group_set", audit=True, subject=args.subject_id, group=args.group, previous_group=before
    )
    print(f"{args.subject_id}: group {args.group} (was {before})")
    return 0


def cmd_subject_risk(args: argparse.Namespace) -> int:
    from verifier.stepup import StepUpPolicy

    conn, _, _ = _app_store(settings_from(args))
    if args.off:  # clearing a mark is never a hazard, even one an older version left on a mistyped id
        _subject_id(args.subject_id)
    else:
        _enrolled_subject(conn, args.subject_id)
    StepUpPolicy(conn).mark_high_risk(args.subject_id, not args.off)
    structlog.get_logger().info("subject_risk_set", audit=True, subject=args.subject_id, high_risk=not args.off)
    state = "no longer high-risk" if args.off else "high-risk: every verification asks for a second finger"
    print(f"{args.subject_id}: {state}")
    return 0


def cmd_subject_portable(args: argparse.Namespace) -> int:
    """One portable enrollment (finger templates or a face) after a sensor's accept, for a subject enrolled only
    on sensors (verifier.biometric.BiometricRoutes.check_portable_add says why it needs the operator)."""
    from verifier.sensor_prints import SensorPrints
    from verifier.subjects import enrolled_subjects

    conn, _, _ = _app_store(settings_from(args))
    if args.off:
        _subject_id(args.subject_id)
    else:
        kinds = enrolled_subjects(conn).get(_enrolled_subject(conn, args.subject_id), [])
        if kinds != ["sensor"]:
            raise CLIError(
                f"subject {args.subject_id!r} is enrolled with {', '.join(kinds)}: a grant is only for a subject "
                "enrolled on sensors alone",
                fix=f"the person verifies with a template or a face and adds with that session token "
                f"(capture-agent enroll --subject {args.subject_id} --add)",
            )
    SensorPrints(conn).grant_portable(args.subject_id, not args.off)
    structlog.get_logger().info("subject_portable_grant_set", audit=True, subject=args.subject_id,
                                granted=not args.off)
    state = ("no portable enrollment granted" if args.off else
             "one portable enrollment (finger templates or a face) granted after the next sensor accept: "
             f"capture-agent enroll --subject {args.subject_id} --add")
    print(f"{args.subject_id}: {state}")
    return 0


def cmd_subject_require(args: argparse.Namespace) -> int:
    """The factors a verification of a subject (or of every subject of a group) needs, e.g. finger and face."""
    from verifier.faces import FactorRules

    if (args.subject_id is None) == (args.group is None):
        said = "not both" if args.group is not None else "and none was given"
        raise CLIError(f"name a subject or a --group, {said}",
                       fix="capture-verifier subject require alice --factors finger,face, or: "
                       "capture-verifier subject require --group staff --factors finger,face")
    from protocol.face_template import FACTORS
    from verifier.subjects import SubjectGroups

    scope, name = ("subject", args.subject_id) if args.group is None else ("group", args.group)
    factors = _comma_list(args.factors)
    if not factors or set(factors) - set(FACTORS):  # before the id: a bad --factors is wrong whoever it is for
        raise CLIError(f"factors are a comma list of {', '.join(FACTORS)}; got {args.factors!r}",
                       fix="use --factors finger, --factors face or --factors finger,face")
    conn, _, _ = _app_store(settings_from(args))
    warning = ""
    if scope == "subject":
        _enrolled_subject(conn, name)
    elif _group_name(name) not in SubjectGroups(conn).names():
        # Documented use: a group's rule may come before its first member (it applies as they join).
        warning = (f"warning: no subject is in group {name} yet; the rule applies to those who join it "
                   "(check the spelling against `capture-verifier subject list --pki DIR`)")
    try:
        FactorRules(conn).set(scope, name, factors)
    except ValueError as exc:
        raise CLIError(str(exc), fix="use --factors finger, --factors face or --factors finger,face") from None
    structlog.get_logger().info("factors_required", audit=True, scope=scope, name=name, factors=args.factors)
    print(f"{scope} {name}: a verification needs {args.factors.replace(',', ' and ')}")
    if warning:
        print(warning, file=sys.stderr)
    return 0


RULE_NAMES = {"group": "group", "high_risk": "high-risk mark", "factor_rule": "factor rule"}
REMOVED_NAMES = {"finger": "finger template", "face": "face template", "sensor": "match-on-sensor print record"}


def cmd_subject_remove(args: argparse.Namespace) -> int:
    """Delete every biometric row of a subject in one transaction: an erasure, or a fresh start after a bad print.

    Two users: a person asking for their biometric data to be erased, and a subject whose
    match-on-sensor print became unreadable (`enroll --add` verifies with that print first,
    and a first enrollment of an enrolled id is refused 409 `verification-required`).
    Deleted: finger and face templates, match-on-sensor print records, live session and
    enrollment tokens, lockout counts (verifier.subjects.remove_subject); the id is then
    not enrolled and its next enrollment is a first one. A running `serve` forgets what it
    keeps in memory of the subject at its next biometric request (the removal epoch).

    Kept by default: the operator's rules on the id (group, high-risk mark, own factor
    rule), so the person re-enrolling lands under the same rules and in the same group;
    they hold no biometric data. ``--forget`` drops them too (an erasure asking that
    nothing be left), and works on an id removed before whose rules were kept. Kept
    always: the audit trail (this command's own line included), which is evidence and
    holds ids, counts and outcomes, never a template.
    """
    from verifier.subjects import held_rules, is_enrolled, remove_subject

    conn, _, _ = _app_store(settings_from(args))
    subject = _subject_id(args.subject_id)
    rules = held_rules(conn, subject)
    if not is_enrolled(conn, subject) and not (args.forget and rules):
        if rules:  # removed before, its rules kept: only --forget has something left to do
            raise CLIError(
                f"no subject {subject!r} is enrolled (removed before?); only its rules are kept: {_rules_text(rules)}",
                fix=f"to drop them too: capture-verifier subject remove --pki DIR --forget {subject}",
            )
        _enrolled_subject(conn, subject, fix="check the id with `capture-verifier subject list --pki DIR` "
                          "(ids are exact: `Alice` is not `alice`); nothing was removed")
    removed = remove_subject(conn, subject, forget=args.forget)
    structlog.get_logger().info(
        "subject_removed", audit=True, subject=subject, forget=args.forget,
        finger_templates=removed.enrollments["finger"], face_templates=removed.enrollments["face"],
        sensor_prints=removed.enrollments["sensor"], session_tokens=removed.state["session_tokens"],
        lockout_rows=removed.state["lockout_rows"], rules_dropped=",".join(n for n, c in removed.rules.items() if c),
    )
    counts = [_count(removed.enrollments[kind], what) for kind, what in REMOVED_NAMES.items()]
    print(f"removed subject {subject}: {', '.join(counts)} "
          f"({_count(removed.state['session_tokens'], 'live token')} and "
          f"{_count(removed.state['lockout_rows'], 'lockout count')} dropped)")
    _print_rules_left(subject, rules, args.forget)
    if removed.enrollments["sensor"]:
        print("the device of the match-on-sensor reader keeps the print (the verifier held its hash only): for an "
              f"erasure, run there: capture-agent forget --subject {subject}")
    print("a running `capture-verifier serve` stops matching it at its next request")
    print(f"next: the person can enroll again as a first enrollment: capture-agent enroll --subject {subject}")
    return 0


def _rules_text(rules: dict[str, str]) -> str:
    """The rules as the operator set them: "group staff, high-risk mark, factor rule finger,face"."""
    def one(name: str, value: str) -> str:
        if name == "high_risk":
            return RULE_NAMES[name] + (" (off)" if value == "off" else "")
        return f"{RULE_NAMES[name]} {value}"

    return ", ".join(one(name, value) for name, value in rules.items())


def _print_rules_left(subject: str, rules: dict[str, str], forgot: bool) -> None:
    """What the operator's rules on the id became: dropped (--forget), or kept and how to drop them."""
    if forgot:
        dropped = f" (dropped: {_rules_text(rules)})" if rules else ""
        print(f"nothing names {subject} any more but the audit trail{dropped}")
    elif rules:
        print(f"kept: {_rules_text(rules)}; a re-enrollment of {subject} is under them "
              f"(to drop them: capture-verifier subject remove --pki DIR --forget {subject})")


def cmd_backup(args: argparse.Namespace) -> int:
    """A consistent copy of the database, beside a running serve (verifier/backup.py says why not `cp`)."""
    from verifier.backup import back_up, open_source

    settings = settings_from(args)
    _need_pki(settings)
    conn = open_source(settings.database)
    try:
        done = back_up(conn, Path(args.to), settings.database)
    finally:
        conn.close()
    print(f"backed up {settings.database} to {done.path} ({done.bytes} bytes, 0600): "
          f"{done.devices} device(s), {done.subjects} enrolled subject(s)")
    print(f"{settings.enrollment_key.name} is not in it: its templates are sealed under that key; keep one copy "
          f"of {settings.enrollment_key} apart from the backups (it never changes)")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    """A backup put back in place of the database, with serve stopped (verifier/backup.py says why a command)."""
    from verifier.backup import restore

    settings = settings_from(args)
    _need_pki(settings)
    done = restore(Path(args.from_file), settings.database, settings.enrollment_key)
    print(f"restored {args.from_file} as {done.database}: {done.devices} device(s), {done.subjects} enrolled "
          "subject(s)")
    if done.replaced is not None:
        print(f"the database it replaced is kept as {done.replaced} (a backup of it): delete it once the "
              "verifier serves as it should")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve on the database opened once, here, where one that cannot be opened is named (not a traceback).

    It was opened twice: here to be checked and closed, then again by the app,
    each time with its schema script and migration. The app takes this connection.
    """
    import resource

    # No core file, whatever the shell's `ulimit -c`: a native crash would write the CA and server keys,
    # the enrollment key and decrypted templates to disk. The unit sets LimitCORE=0; this covers the rest.
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    settings = settings_from(args)
    _need_pki(settings, serving=True)
    conn = _open_store(settings)
    try:
        return _serve_on(args, settings, conn)
    finally:
        conn.close()


def _serve_on(args: argparse.Namespace, settings: VerifierSettings, conn: sqlite3.Connection) -> int:
    """Check the ready file, hold the database, serve until stopped; listening failures named with their fix."""
    from verifier.app import create_app
    from verifier.serve_lock import hold_database
    from verifier.server import serve

    ready_fix = "give --ready-file a path in a folder this user may write (systemd: RuntimeDirectory=)"
    if args.ready_file and not Path(args.ready_file).parent.is_dir():
        # Checked before listening: once the port is open, a failed write would stop a server that works.
        raise CLIError(f"--ready-file {args.ready_file}: its folder does not exist", fix=ready_fix)

    def listening(host: str, port: int) -> None:
        line = json.dumps({"event": "listening", "host": host, "port": port})
        print(line, flush=True)
        if args.ready_file:
            tmp = Path(args.ready_file).with_suffix(".tmp")
            try:
                tmp.write_text(line + "\n")  # one whole line: `read` in a shell script takes it
                tmp.replace(args.ready_file)
            except OSError as exc:  # a folder of another user, a full disk: named, and the server stops
                raise CLIError(f"cannot write --ready-file {args.ready_file}: {exc.strerror}", fix=ready_fix) from None

    try:
        with hold_database(settings.database):  # before the app: it makes the enrollment key on first start
            asyncio.run(serve(create_app(settings, conn), settings, on_listening=listening))
    except OSError as exc:
        if isinstance(exc, socket.gaierror):  # a name that does not resolve, "999.1.1.1": was a traceback
            raise CLIError(
                f"cannot listen on {settings.host}:{settings.port}: {settings.host!r} is no address of this host "
                f"({exc.strerror})",
                fix="give --host an address of this machine (127.0.0.1, 0.0.0.0, ::, or one of `ip addr`)",
            ) from None
        if exc.errno == errno.EADDRINUSE:
            raise CLIError(
                f"cannot listen on {settings.host}:{settings.port}: the port is in use (another verifier?)",
                fix=f"stop what listens there (`ss -ltnp 'sport = :{settings.port}'` shows it), or pick another "
                "--port",
            ) from None
        if exc.errno == errno.EACCES:
            raise CLIError(
                f"cannot listen on {settings.host}:{settings.port}: permission denied",
                fix="use a port above 1023 (8443 is the protocol's), or let systemd pass the socket",
            ) from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise CLIError(
                f"cannot listen on {settings.host}:{settings.port}: no such address on this host",
                fix="give --host an address of this machine (127.0.0.1, 0.0.0.0, or one of `ip addr`)",
            ) from None
        raise
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = UsageParser(prog="capture-verifier", description="The reference verifier.")
    add_version(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_pki(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--pki", help="PKI and data folder (default /var/lib/capture-verifier)")
        p.add_argument("--config", help="TOML settings file")
        return p

    pki = sub.add_parser("pki", help="development PKI").add_subparsers(
        dest="pki_command", required=True, metavar="COMMAND"
    )
    init = pki.add_parser("init", help="make a CA and the verifier's server certificate in DIR")
    init.add_argument("dir", help="a new folder for the PKI and the verifier's data (made 0700)")
    init.add_argument("--server-name", action="append", help="host name or IP of the verifier (repeatable)")
    init.set_defaults(run=cmd_pki_init)

    token = sub.add_parser("token", help="one-time bootstrap tokens").add_subparsers(
        dest="token_command", required=True, metavar="COMMAND"
    )
    new = with_pki(token.add_parser("new", help="a one-time token for one device"))
    new.add_argument("--device", help="device id (default: a random dev-XXXXXXXX)")
    new.add_argument(
        "--ttl", type=parse_duration, default=24 * 3600.0, help="lifetime from 1m to 30d, e.g. 30m, 24h (default 24h)"
    )
    new.set_defaults(run=cmd_token_new)
    token_revoke = with_pki(
        token.add_parser(
            "revoke",
            help="revoke a device id's unused tokens (one that leaked, a visit cancelled); the id may get a new one",
        )
    )
    token_revoke.add_argument("device_id", help="the device id the token was issued for (`device list`: pending)")
    token_revoke.set_defaults(run=cmd_token_revoke)

    device = sub.add_parser("device", help="the device registry").add_subparsers(
        dest="device_command", required=True, metavar="COMMAND"
    )
    with_pki(device.add_parser(
        "list", help="list devices, one JSON line each (status, certificates, expiry, unused token, access rule)"
    )).set_defaults(run=cmd_device_list)
    revoke = with_pki(
        device.add_parser(
            "revoke",
            help="revoke a device: its certificates stop working and its unused tokens too (a device that has "
            "not provisioned yet: its tokens); the id stays revoked",
        )
    )
    revoke.add_argument("device_id", help="a device id as `device list` shows it")
    revoke.set_defaults(run=cmd_device_revoke)
    allow = with_pki(
        device.add_parser(
            "allow",
            help="set the operations a device may call and the subject groups it may act on",
            description="Set the operations a device may call and the subject groups it may act on; anything else "
            "is refused with 403 and audited. Without a rule a device may do everything: set a new device's rule "
            "between `token new` and its provisioning. What is not given is left as it was.",
        )
    )
    allow.add_argument("device_id", help="a provisioned device, or one with an unused token (`device list`)")
    allow.add_argument("--operations", help="comma list of enroll, verify, identify")
    allow.add_argument("--groups", help="comma list of subject groups, or '*' for any group")
    allow.add_argument(
        "--sensor-assertions",
        choices=("accept", "step-up", "refuse"),
        help="what a match-on-sensor reader's signed assertion gets (default step-up: a second factor)",
    )
    allow.set_defaults(run=cmd_device_allow)

    subject = sub.add_parser("subject", help="subjects").add_subparsers(
        dest="subject_command", required=True, metavar="COMMAND"
    )
    with_pki(subject.add_parser("list", help="list enrolled subjects (id, group, what they enrolled)")).set_defaults(
        run=cmd_subject_list
    )
    risk = with_pki(subject.add_parser("high-risk", help="mark a subject high-risk (always step-up)"))
    risk.add_argument("subject_id", help="an enrolled subject's id, exactly (`subject list`)")
    risk.add_argument("--off", action="store_true", help="clear the mark")
    risk.set_defaults(run=cmd_subject_risk)
    portable = with_pki(subject.add_parser(
        "portable", help="let a subject enrolled only on sensors add templates or a face once, after a sensor's accept"
    ))
    portable.add_argument("subject_id", help="a subject enrolled on sensors only, exactly (`subject list`)")
    portable.add_argument("--off", action="store_true", help="withdraw the grant")
    portable.set_defaults(run=cmd_subject_portable)
    group = with_pki(subject.add_parser("group", help="put a subject into a group (access rules name groups)"))
    group.add_argument("subject_id", help="an enrolled subject's id, exactly (`subject list`)")
    group.add_argument("group", help=f"the group to move it into ({ID_RULE})")
    group.set_defaults(run=cmd_subject_group)
    require = with_pki(subject.add_parser("require", help="the factors a subject's (or group's) verification needs"))
    require.add_argument("subject_id", nargs="?", help="an enrolled subject's id, exactly (or --group instead)")
    require.add_argument("--group", help="a rule for every subject of this group instead")
    require.add_argument("--factors", required=True, help="comma list of finger, face")
    require.set_defaults(run=cmd_subject_require)
    remove = with_pki(subject.add_parser(
        "remove",
        help="delete a subject's templates, faces and sensor print records (erasure, or to enroll again)",
        description="Delete everything biometric the verifier holds for a subject, in one transaction, also while "
        "serve runs: the id is then not enrolled and can enroll again as a first enrollment. Its group, high-risk "
        "mark and factor rule are kept (a re-enrollment lands under them) unless --forget.",
    ))
    remove.add_argument("subject_id", help="an enrolled subject's id, exactly (`subject list`)")
    remove.add_argument("--forget", action="store_true",
                        help="drop the id's group, high-risk mark and factor rule too (nothing left but the audit)")
    remove.set_defaults(run=cmd_subject_remove)

    backup = with_pki(sub.add_parser(
        "backup", help="a consistent copy of the database to a new file, while serve runs (not enrollment.key)"
    ))
    backup.add_argument("--to", required=True, help="the new file to write (never written over)")
    backup.set_defaults(run=cmd_backup)
    restore = with_pki(sub.add_parser(
        "restore", help="put a backup back in place of the database (serve stopped; the replaced one is kept aside)"
    ))
    restore.add_argument("--from", dest="from_file", required=True, help="the file `backup` wrote")
    restore.set_defaults(run=cmd_restore)
    serve = with_pki(sub.add_parser("serve", help="run the verifier (mTLS, HTTP/2)"))
    serve.add_argument("--host", help="listen address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8443; 0 picks a free one)")
    serve.add_argument("--cert-days", type=float, help="device certificate lifetime in days (default 30)")
    serve.add_argument("--ready-file", help="write the listening JSON line here once ready")
    serve.set_defaults(run=cmd_serve)
    return parser


def _database_of(args: argparse.Namespace) -> Path:
    """The database a command used, for its error (the settings were read once already, so they read again)."""
    try:
        return settings_from(args).database
    except SettingsError:
        return VerifierSettings().updated(pki_dir=Path(args.pki) if getattr(args, "pki", None) else None).database


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parse_arguments(build_parser(), argv)
        configure_logging()
        return int(args.run(args) or 0)
    except sqlite3.Error as exc:  # a write after the database opened: locked past the timeout, disk full
        exc = database_error(_database_of(args), exc)
        print(f"error: {exc}", file=sys.stderr)
        print(f"fix: {exc.fix}", file=sys.stderr)
        return 2
    except (CLIError, SettingsError, PKIFolderError, UsageMistake) as exc:  # a usage mistake too: message and fix
        print(f"error: {exc}", file=sys.stderr)
        if exc.fix:
            print(f"fix: {exc.fix}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
