"""`capture-verifier --config FILE`: a value of the wrong type stops it with the key and the fix.

Real `capture-verifier` processes reading a settings file an operator wrote.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_verifier_operator_cli import cli, refused


@pytest.mark.parametrize(("line", "fix"), [
    ('target_fmr = "0.0001"', "use a number"),  # was a traceback: a string compared with numbers
    ('match_queue = "8"', "use a whole number"),  # the same
    ("pki_dir = 5", "path"),  # the same, in Path()
    ("max_failures = 2.5", "use a whole number"),  # was taken: 2.5 failures in a row
    ("max_failures = true", "use a whole number"),  # was taken as 1
    ('step_up_first_use = "no"', "true or false"),  # was taken: a non-empty string is true
    ("cert_days = inf", "finite"),  # was taken: certificates that never expire
    ("lockout_base_s = 1e400", "finite"),  # infinity by another name
    ('enrollment_key_file = ""', "path"),  # was the current folder
])
@pytest.mark.parametrize("command", [("device", "list"), ("serve", "--port", "0")])
def test_a_settings_value_of_the_wrong_type_is_refused_naming_the_key(
    tmp_path: Path, verifier_state: Path, line: str, fix: str, command: tuple[str, ...]
) -> None:
    settings = tmp_path / "verifier.toml"
    settings.write_text(line + "\n")
    error, fix_line = refused(cli(*command, "--pki", str(verifier_state), "--config", str(settings)))
    assert error.startswith(f"error: bad value {line.split(' =')[0]} = "), error
    assert fix in fix_line


def test_cert_days_of_infinity_on_the_command_line_is_refused(verifier_state: Path) -> None:
    error, fix = refused(cli("serve", "--pki", str(verifier_state), "--port", "0", "--cert-days", "inf"))
    assert error == "error: bad value cert_days = inf"
    assert "finite" in fix


def test_values_of_the_right_type_are_taken(tmp_path: Path, verifier_state: Path) -> None:
    settings = tmp_path / "verifier.toml"
    settings.write_text("cert_days = 30\ntarget_fmr = 0.001\nstep_up_first_use = false\nmax_failures = 3\n")
    done = cli("device", "list", "--pki", str(verifier_state), "--config", str(settings))
    assert done.returncode == 0, done.stderr


def test_an_identify_fpir_no_face_could_ever_reach_stops_the_verifier_at_start(
    tmp_path: Path, verifier_state: Path
) -> None:
    """Faces score at most 1 (a cosine): at identify_fpir 1e-10 even one probe against one embedding needs more,
    so every face identification would be refused (identification-unreachable). The verifier refuses to start."""
    settings = tmp_path / "verifier.toml"
    settings.write_text("identify_fpir = 1e-10\n")
    error, fix = refused(cli("serve", "--pki", str(verifier_state), "--port", "0", "--config", str(settings)))
    assert error.startswith("error: identify_fpir = 1e-10 puts the face identification threshold above"), error
    assert "no face could ever be identified" in error
    assert fix.startswith("fix: raise identify_fpir to at least "), fix


@pytest.mark.parametrize(("line", "fix"), [
    ("finger_identify_fpir = 0", "use a rate such as 0.001, or leave it out (identify_fpir then applies)"),
    ("face_identify_fpir = 0.5", "use a rate such as 0.001, or leave it out (identify_fpir then applies)"),
    ("face_identify_fpir = -0.001", "use a rate such as 0.001, or leave it out (identify_fpir then applies)"),
    ('finger_identify_fpir = "0.001"', "use a number (no quotes)"),
    ("face_identify_fpir = inf", "use a finite number"),
])
def test_a_bad_per_modality_identify_fpir_is_refused_naming_its_key(
    tmp_path: Path, verifier_state: Path, line: str, fix: str
) -> None:
    """finger_identify_fpir and face_identify_fpir are rates, checked as identify_fpir is (0 < rate < 0.5)."""
    settings = tmp_path / "verifier.toml"
    settings.write_text(line + "\n")
    error, fix_line = refused(cli("serve", "--pki", str(verifier_state), "--port", "0", "--config", str(settings)))
    assert error.startswith(f"error: bad value {line.split(' =')[0]} = "), error
    assert fix_line == f"fix: {fix}", fix_line


@pytest.mark.parametrize(("lines", "key", "modality"), [
    (["face_identify_fpir = 1e-10"], "face_identify_fpir", "face"),  # identify_fpir (0.001) is fine for faces
    (["finger_identify_fpir = 1e-13"], "finger_identify_fpir", "finger"),
    (["identify_fpir = 1e-10", "finger_identify_fpir = 0.001"], "identify_fpir", "face"),  # faces use the shared one
])
def test_a_per_modality_identify_fpir_no_score_could_reach_names_its_own_key_at_start(
    tmp_path: Path, verifier_state: Path, lines: list[str], key: str, modality: str
) -> None:
    """The start refusal names the key in force for the modality that cannot identify: raising identify_fpir does
    nothing for faces when face_identify_fpir is the one too small, and the fix must say which to raise."""
    settings = tmp_path / "verifier.toml"
    settings.write_text("\n".join(lines) + "\n")
    error, fix = refused(cli("serve", "--pki", str(verifier_state), "--port", "0", "--config", str(settings)))
    rate = next(line.split(" = ")[1] for line in lines if line.startswith(key))
    assert error.startswith(f"error: {key} = {rate} puts the {modality} identification threshold above"), error
    assert f"no {modality} could ever be identified" in error
    assert fix.startswith(f"fix: raise {key} to at least "), fix
    assert ("leave it out: identify_fpir then applies" in fix) == (key != "identify_fpir"), fix


@pytest.mark.parametrize(("name", "make", "said", "fix"), [
    # was a traceback (UnicodeDecodeError): a Latin-1 comment, as an editor on another system saves it
    ("latin-1", lambda p: p.write_bytes("# salle café\ncert_days = 30\n".encode("latin-1")),
     "is not UTF-8 (line 1: byte 0xe9)", "save it as UTF-8"),
    # these were "cannot read FILE: [Errno ...]", each with the fix "fix the file's syntax or its permissions"
    ("missing", lambda p: None, "does not exist", "leave --config out"),
    ("a folder", lambda p: p.mkdir(), "is a folder", "the TOML file itself"),
    ("not TOML", lambda p: p.write_text("cert_days =\n"), "is not valid TOML: ", "numbers unquoted"),
])
@pytest.mark.parametrize("command", [("device", "list"), ("serve", "--port", "0")])
def test_a_settings_file_that_cannot_be_used_says_which_fault_and_its_fix(
    tmp_path: Path, verifier_state: Path, name: str, make, said: str, fix: str, command: tuple[str, ...]
) -> None:
    settings = tmp_path / "verifier.toml"
    make(settings)
    error, fix_line = refused(cli(*command, "--pki", str(verifier_state), "--config", str(settings)))
    assert error.startswith(f"error: the settings file {settings} {said}"), error
    assert fix in fix_line, fix_line


def test_a_settings_file_saved_with_a_byte_order_mark_is_read(tmp_path: Path, verifier_state: Path) -> None:
    settings = tmp_path / "verifier.toml"
    settings.write_bytes(b"\xef\xbb\xbfcert_days = 30\n")
    done = cli("device", "list", "--pki", str(verifier_state), "--config", str(settings))
    assert done.returncode == 0, done.stderr
