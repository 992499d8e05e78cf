"""The verifier's operator commands refuse what could never work, naming the fix.

Real `capture-verifier` processes on a real state folder (and a running verifier
where a device must have provisioned): token lifetimes, tokens for revoked
devices, and rules for ids that do not exist.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from protocol.endpoints import ID_RULE
from verifier import tokens as token_store
from verifier.store import open_database

MIN_TTL_S, MAX_TTL_S = 60.0, 30 * 86400.0  # README: a token lives from 1 minute to 30 days


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """`capture-verifier ARGS` as the operator types it (this checkout's code, never an installed copy)."""
    return subprocess.run([sys.executable, "-m", "verifier.cli", *args], capture_output=True, text=True, timeout=60)


def refused(done: subprocess.CompletedProcess[str]) -> tuple[str, str]:
    """The `error:` and `fix:` lines of a refusal; asserts exit 2, nothing on stdout and no traceback."""
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr and done.stdout == "", done.stderr
    lines = done.stderr.splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    fixes = [line for line in lines if line.startswith("fix: ")]
    assert len(errors) == 1 and len(fixes) == 1, done.stderr
    return errors[0], fixes[0]


def rows(pki: Path, query: str) -> list[tuple]:
    with sqlite3.connect(pki / "verifier.sqlite") as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        table = re.search(r"FROM (\w+)", query)
        return conn.execute(query).fetchall() if table and table.group(1) in tables else []


def listed(pki: Path) -> dict[str, dict]:
    done = cli("device", "list", "--pki", str(pki))
    assert done.returncode == 0, done.stderr
    return {row["device_id"]: row for row in map(json.loads, done.stdout.splitlines())}


# ---------------------------------------------------------------- item 8: token lifetimes


@pytest.mark.parametrize("ttl", ["0s", "0.0001s", "59s", "9" * 400 + "d", "100000000000d", "31d", "721h"])
def test_a_token_lifetime_outside_one_minute_to_thirty_days_is_refused_with_the_bounds(verifier_state, ttl) -> None:
    """Expired at birth (0 s), stored as infinity (400 digits: a one-time token that never expires), or years."""
    error, fix = refused(cli("token", "new", "--pki", str(verifier_state), "--device", "kiosk-t", "--ttl", ttl))
    assert "token lifetime" in error
    assert "1 min" in fix and "30 d" in fix
    assert rows(verifier_state, "SELECT device_id FROM tokens") == [], "no token may be stored"


@pytest.mark.parametrize(("ttl", "shown"), [("31d", "31 d"), ("721h", "30 d 1 h"), ("100000000000d", "100000000000 d")])
def test_a_token_lifetime_too_long_is_said_in_days_as_typed(verifier_state, ttl: str, shown: str) -> None:
    """Was "a token lifetime of 2.6784e+06 s": the operator typed 31d, and had to convert it back."""
    error, _ = refused(cli("token", "new", "--pki", str(verifier_state), "--device", "kiosk-t", "--ttl", ttl))
    assert error.startswith(f"error: a token lifetime of {shown} is longer than 30 d"), error


@pytest.mark.parametrize(("ttl", "shown", "seconds"), [
    ("1m", "1 min", 60), ("90s", "1 min 30 s", 90), ("24h", "1 d", 86400), ("30d", "30 d", 30 * 86400),
    ("1.5h", "1 h 30 min", 5400),
])
def test_a_token_lifetime_within_bounds_is_printed_in_a_human_unit_with_its_end(
    verifier_state, ttl, shown, seconds
) -> None:
    before = time.time()
    done = cli("token", "new", "--pki", str(verifier_state), "--device", "kiosk-t", "--ttl", ttl)
    assert done.returncode == 0, done.stderr
    line = next(line for line in done.stdout.splitlines() if line.startswith("valid for "))
    assert line.startswith(f"valid for {shown} (until "), line
    until = dt.datetime.fromisoformat(re.search(r"until (\S+)\)", line).group(1)).timestamp()
    assert before + seconds - 2 <= until <= time.time() + seconds + 1
    [(expires,)] = rows(verifier_state, "SELECT expires_at FROM tokens")
    assert before + seconds <= expires <= time.time() + seconds
    token = re.search(r"^token: (\S+)$", done.stdout, re.M).group(1)
    assert done.stdout.count(token) == 2 and token not in done.stderr, "the token line and the command, no more"


@pytest.mark.parametrize("ttl_s", [0, -1, 0.0001, MIN_TTL_S - 1, MAX_TTL_S + 1, math.inf, math.nan, 1e400])
def test_bootstrap_tokens_refuse_a_lifetime_out_of_bounds_at_the_library_boundary(tmp_path, ttl_s) -> None:
    conn = open_database(tmp_path / "v.sqlite")
    try:
        tokens = token_store.BootstrapTokens(conn)
        with pytest.raises(ValueError, match="token lifetime") as caught:
            tokens.new("kiosk-1", ttl_s)
        assert isinstance(caught.value, token_store.TokenLifetimeError) and "30 d" in caught.value.fix
        assert conn.execute("SELECT COUNT(*) FROM tokens").fetchone() == (0,)
        tokens.new("kiosk-1", MIN_TTL_S)  # the bounds themselves are lifetimes
        tokens.new("kiosk-1", MAX_TTL_S)
        assert (token_store.MIN_TTL_S, token_store.MAX_TTL_S) == (MIN_TTL_S, MAX_TTL_S)
    finally:
        conn.close()


# ---------------------------------------------------------------- item 9: revoked devices


def test_a_token_for_a_revoked_device_is_refused_and_revoking_again_says_already_revoked(verifier, provisioned) -> None:
    pki = str(verifier.pki_dir)
    assert cli("device", "revoke", "--pki", pki, "kiosk-1").returncode == 0
    again = cli("device", "revoke", "--pki", pki, "kiosk-1")
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("kiosk-1 is already revoked since ") and "nothing changed" in again.stdout
    tokens_before = rows(verifier.pki_dir, "SELECT token_hash FROM tokens")
    error, fix = refused(cli("token", "new", "--pki", pki, "--device", "kiosk-1"))
    assert "kiosk-1 is revoked" in error
    assert "new device id" in fix and "--device NEW-ID" in fix
    assert rows(verifier.pki_dir, "SELECT token_hash FROM tokens") == tokens_before
    assert cli("token", "new", "--pki", pki, "--device", "kiosk-1b").returncode == 0  # the fix works


def test_device_revoke_on_an_id_whose_tokens_were_revoked_revokes_the_id(verifier_state) -> None:
    """`token revoke` keeps the id good and `device list` no longer shows it; `device revoke` on it then said
    "no active device" with `device list` as the fix, and the id could never be revoked: `token new` went on
    giving it tokens."""
    pki = str(verifier_state)
    assert cli("token", "new", "--pki", pki, "--device", "kiosk-9").returncode == 0
    assert cli("token", "revoke", "--pki", pki, "kiosk-9").returncode == 0
    done = cli("device", "revoke", "--pki", pki, "kiosk-9")
    assert done.returncode == 0, done.stderr
    assert "revoked kiosk-9, which had not provisioned: it has no unused token" in done.stdout, done.stdout
    listed = [json.loads(line) for line in cli("device", "list", "--pki", pki).stdout.splitlines()]
    assert [(row["device_id"], row["status"]) for row in listed] == [("kiosk-9", "revoked")], listed
    error, _ = refused(cli("token", "new", "--pki", pki, "--device", "kiosk-9"))
    assert "kiosk-9 is revoked" in error
    error, fix = refused(cli("device", "revoke", "--pki", pki, "kiosk-typo"))  # never issued: a typo, not revoked
    assert "no device 'kiosk-typo'" in error and "device list" in fix


# ---------------------------------------------------------------- item 10: unknown and malformed ids


@pytest.mark.parametrize("args", [
    ("device", "allow", "no-such-device", "--operations", "verify"),
    ("device", "allow", "no-such-device", "--groups", "staff"),
    ("device", "allow", "", "--operations", "verify"),
    ("device", "allow", "kiosk-1\n", "--operations", "verify"),
    ("subject", "high-risk", "no-such-subject"),
    ("subject", "high-risk", ""),
    ("subject", "require", "no-such", "--factors", "finger,face"),
    ("subject", "require", "--group", "", "--factors", "face"),
    ("subject", "require", "--group", "../staff", "--factors", "face"),
    ("subject", "group", "", "staff"),
    ("subject", "group", "no-such-subject", "staff"),
    ("subject", "group", "no-such-subject", ""),
])
def test_a_rule_for_an_unknown_or_malformed_id_is_refused_and_nothing_is_stored(verifier_state, args) -> None:
    error, fix = refused(cli(*args[:2], "--pki", str(verifier_state), *args[2:]))
    assert re.search(r"is not a (device id|subject id|group name)|^error: no (device|subject) ", error), error
    assert re.search(r"device list|subject list", fix) or ID_RULE in fix, fix
    for table in ("device_rules", "device_groups", "subject_risk", "required_factors", "subject_groups"):
        assert rows(verifier_state, f"SELECT * FROM {table}") == [], table  # noqa: S608 (test's own names)


def test_an_unknown_device_names_how_to_list_devices_and_how_to_rule_a_new_one(verifier_state) -> None:
    error, fix = refused(cli("device", "allow", "--pki", str(verifier_state), "lobby-7", "--operations", "verify"))
    assert error == "error: no device 'lobby-7': none provisioned under that id and no unused token names it"
    assert "`capture-verifier device list --pki DIR`" in fix and "token new --pki DIR --device ID" in fix


def test_a_rule_for_a_device_whose_token_is_unused_is_kept_and_listed_as_pending(verifier_state) -> None:
    """README: a rule set between `token new` and provisioning, so a new device never runs on the default."""
    pki = str(verifier_state)
    assert cli("token", "new", "--pki", pki, "--device", "lobby-9").returncode == 0
    done = cli("device", "allow", "--pki", pki, "lobby-9", "--operations", "verify", "--groups", "staff")
    assert done.returncode == 0, done.stderr
    assert "note: lobby-9 has not provisioned yet" in done.stdout
    row = listed(verifier_state)["lobby-9"]
    assert row["status"] == "pending" and row["operations"] == ["verify"] and row["groups"] == ["staff"]
    assert dt.datetime.fromisoformat(row["token_expires"]) > dt.datetime.now(dt.UTC)


def test_a_rule_an_older_version_left_on_an_unknown_id_is_listed(verifier_state) -> None:
    """Rules stored before ids were checked (a typo) show up in `device list` instead of hiding."""
    from verifier.policy import AccessRules

    conn = open_database(verifier_state / "verifier.sqlite")
    try:
        AccessRules(conn).set("kiosk-typo", ["verify"])
    finally:
        conn.close()
    row = listed(verifier_state)["kiosk-typo"]
    assert row["status"] == "not-provisioned" and row["operations"] == ["verify"]


def test_subject_rules_apply_to_enrolled_subjects_by_their_exact_id(verifier, provisioned, synthetic_templates) -> None:
    from tests.test_biometric_api import Device, enroll_fingers

    enroll_fingers(Device(*provisioned), synthetic_templates, "ana", [0, 1])
    pki = str(verifier.pki_dir)
    subjects = cli("subject", "list", "--pki", pki)
    assert subjects.returncode == 0, subjects.stderr
    assert [json.loads(line) for line in subjects.stdout.splitlines()] == [
        {"subject_id": "ana", "group": "default", "enrolled": ["finger"]}
    ]
    for args in (("high-risk", "ana"), ("group", "ana", "staff"), ("require", "ana", "--factors", "finger,face"),
                 ("require", "--group", "staff", "--factors", "face")):
        done = cli("subject", args[0], "--pki", pki, *args[1:])
        assert done.returncode == 0 and "warning" not in done.stderr, done.stderr
    error, fix = refused(cli("subject", "high-risk", "--pki", pki, "Ana"))
    assert error == "error: no subject 'Ana' is enrolled (ids are case-sensitive)"
    assert "subject list" in fix and "capture-agent enroll --subject ID" in fix
    assert rows(verifier.pki_dir, "SELECT subject_id, high_risk FROM subject_risk") == [("ana", 1)]


def test_a_group_rule_before_the_groups_first_member_is_kept_with_a_warning(verifier_state) -> None:
    done = cli("subject", "require", "--pki", str(verifier_state), "--group", "contractors", "--factors", "face")
    assert done.returncode == 0 and "group contractors: a verification needs face" in done.stdout
    assert "warning: no subject is in group contractors yet" in done.stderr


@pytest.mark.parametrize(("args", "said"), [
    ([], "name a subject or a --group, and none was given"),  # was told "not both"
    (["ana", "--group", "staff"], "name a subject or a --group, not both"),
])
def test_a_factor_rule_for_nobody_or_for_both_says_which(verifier_state, args: list[str], said: str) -> None:
    error, fix = refused(cli("subject", "require", "--pki", str(verifier_state), *args, "--factors", "face"))
    assert error == f"error: {said}", error
    assert "--group staff --factors finger,face" in fix


@pytest.mark.parametrize("device_id", ["bad id", "", "-kiosk", "kiosk/1"])
def test_revoking_a_malformed_device_id_says_it_is_not_a_device_id(verifier_state, device_id) -> None:
    """`device revoke` said "no active device" where `token revoke` said what is wrong with the id."""
    for command in (("device", "revoke"), ("token", "revoke")):
        error, fix = refused(cli(*command, "--pki", str(verifier_state), "--", device_id))
        assert error == f"error: {device_id!r} is not a device id", command
        assert ID_RULE in fix


def test_every_device_list_line_has_the_same_keys(verifier, provisioned) -> None:
    """An active, a revoked, a pending and a rule-only id: a script reads each line the same way."""
    from verifier.policy import AccessRules

    pki = str(verifier.pki_dir)
    assert cli("token", "new", "--pki", pki, "--device", "kiosk-2").returncode == 0
    assert cli("token", "new", "--pki", pki, "--device", "kiosk-3").returncode == 0
    assert cli("device", "revoke", "--pki", pki, "kiosk-3").returncode == 0
    conn = open_database(verifier.pki_dir / "verifier.sqlite")
    try:
        AccessRules(conn).set("kiosk-typo", ["verify"])  # a rule an older version let through
    finally:
        conn.close()
    rows_by_id = listed(verifier.pki_dir)
    assert {d: r["status"] for d, r in rows_by_id.items()} == {
        "kiosk-1": "active", "kiosk-2": "pending", "kiosk-3": "revoked", "kiosk-typo": "not-provisioned"
    }
    assert len({tuple(sorted(row)) for row in rows_by_id.values()}) == 1, rows_by_id
    assert rows_by_id["kiosk-1"]["token_expires"] is None
    assert dt.datetime.fromisoformat(rows_by_id["kiosk-2"]["token_expires"]) > dt.datetime.now(dt.UTC)


# ---------------------------------------------------------------- usage errors


@pytest.mark.parametrize(("args", "said", "help_command"), [
    (("token", "new", "--bogus"), "unrecognized arguments: --bogus", "capture-verifier token new --help"),
    (("device", "revoke", "--pki", "PKI", "kiosk-1", "kiosk-2"), "unrecognized arguments: kiosk-2",
     "capture-verifier device revoke --help"),
    (("token", "new", "--pki"), "argument --pki: expected one argument", "capture-verifier token new --help"),
    (("serve", "--port", "abc"), "argument --port: invalid int value: 'abc'", "capture-verifier serve --help"),
    (("token", "new", "--ttl", "soon"), "argument --ttl: 'soon'", "capture-verifier token new --help"),
    (("device", "allow", "kiosk-1", "--sensor-assertions", "maybe"), "argument --sensor-assertions: invalid choice",
     "capture-verifier device allow --help"),
    (("subject", "require", "alice"), "the following arguments are required: --factors",
     "capture-verifier subject require --help"),
    (("device",), "the following arguments are required: COMMAND", "capture-verifier device --help"),
    (("frob",), "argument COMMAND: invalid choice: 'frob'", "capture-verifier --help"),
    ((), "the following arguments are required: COMMAND", "capture-verifier --help"),
])
def test_a_usage_error_is_an_error_and_a_fix_naming_the_commands_help(args, said, help_command) -> None:
    """An unknown option, a missing argument or a bad value was argparse's bare usage block and
    `capture-verifier ...: error:` line, unlike every other error of this CLI: no `fix:` line."""
    error, fix = refused(cli(*args))
    assert error.startswith(f"error: {said}"), error
    assert f"`{help_command}`" in fix, fix
    help_done = cli(*help_command.split()[1:])
    assert help_done.returncode == 0 and help_done.stdout.startswith("usage: "), "the fix's command works"


@pytest.mark.parametrize("command", [
    ("pki", "init"), ("token", "new"), ("token", "revoke"), ("device", "list"), ("device", "revoke"),
    ("device", "allow"), ("subject", "list"), ("subject", "high-risk"), ("subject", "group"),
    ("subject", "require"), ("backup",), ("restore",), ("serve",),
])
def test_each_commands_help_says_what_it_does_and_what_each_argument_is(command: tuple[str, ...]) -> None:
    """`capture-verifier device allow --help` showed its usage and options only: what the command does was in the
    parent's command list alone, and `device_id`, `subject_id`, `dir` had no word of what to give."""
    import re

    done = cli(*command, "--help")
    assert done.returncode == 0, done.stderr
    usage, _, rest = done.stdout.partition("\n\n")
    said, _, arguments = rest.partition("\n\n")
    assert usage.startswith("usage: ") and not said.startswith(("positional arguments:", "options:")), done.stdout
    assert len(said.split()) >= 3, done.stdout
    positionals = arguments.partition("options:")[0] if arguments.startswith("positional arguments:") else ""
    for line in positionals.splitlines()[1:]:
        if not line.strip() or re.fullmatch(r"  \S+", line):  # a blank, or a name alone (its help on the next)
            continue
        assert re.fullmatch(r"  \S+ +\S.*|\s{8,}\S.*", line), f"an argument without help: {line!r}\n{done.stdout}"
