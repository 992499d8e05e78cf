"""The config file: defaults, strictness, and errors that name key, value and fix."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from agent.config import MAX_CONFIG_BYTES, AgentConfig, config_from_bytes, load_config, parse_config
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


@pytest.mark.parametrize(
    ("key", "value", "fix"),
    [("finger_timeout_s", 1, "3 to 300"), ("finger_timeout_s", 3600, "3 to 300"), ("lift_reminder_s", 0, "1 to 60"),
     ("face_timeout_s", 4, "5 to 120"), ("face_timeout_s", 121, "5 to 120")],
)
def test_the_waits_for_the_person_are_bounded(key: str, value: float, fix: str) -> None:
    """[sessions]: a wait of 1 s leaves nobody time to put a finger down; an hour holds the sensor from the next.
    A face session over 120 s of an empty room would be silent past the CLI's 300 s wait for the next event."""
    assert parse_config({"sessions": {"finger_timeout_s": 30}}).sessions.finger_timeout_s == 30
    assert parse_config({"sessions": {"face_timeout_s": 45}}).sessions.face_timeout_s == 45
    assert parse_config({}).sessions.face_timeout_s == 20  # the time the face session had before it was a setting
    with pytest.raises(ConfigError, match=f"sessions.*{key}") as info:
        parse_config({"sessions": {key: value}})
    assert fix in info.value.fix


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
    "url",
    [
        "https://admin:s3cret@127.0.0.1:8443",
        "https://admin:s3cret@h:notaport",
        "https://s3cret@h",
        # a password holding "/", "?" or "#" ends urlsplit's netloc before the "@" (a review found it repeated)
        "https://admin:s3/cret@h:8443",
        "https://admin:s3cret?@h:8443",
        "https://admin:s3#cret@h",
        "admin:s3cret@h:8443",  # the scheme left out
    ],
)
def test_user_info_in_the_verifier_url_is_refused_without_repeating_it(tmp_path: Path, url: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, f'[verifier]\nurl = "{url}"\n'))
    assert "user name or password" in info.value.message and "user:password@" in info.value.fix
    assert "s3cret" not in str(info.value)
    with pytest.raises(ConfigError) as override:
        AgentConfig().with_overrides(verifier={"url": url})
    assert "s3cret" not in str(override.value)


def test_a_huge_host_after_user_info_is_not_repeated_whole() -> None:
    with pytest.raises(ConfigError) as info:
        AgentConfig().with_overrides(verifier={"url": "https://u:s3cret@" + "h" * 100_000})
    assert "user name or password" in info.value.message and len(str(info.value)) < 600


def test_an_ipv6_verifier_address_with_its_zone_is_still_taken() -> None:
    config = AgentConfig().with_overrides(verifier={"url": "https://[fe80::1%25eth0]:8443"})
    assert config.verifier.port == 8443


# -- hostile files (a fuzzing audit): each one a ConfigError naming the fix, never a raw exception

HOSTILE_CONFIGS = {
    # urlsplit raises ValueError on an unclosed IPv6 bracket; a broken NFKC netloc likewise
    "unclosed bracket": (b'[verifier]\nurl = "https://["\n', "bad value [verifier] url = 'https://['"),
    "unclosed ipv6": (b'[verifier]\nurl = "https://[::1:8443"\n', "bad value [verifier] url"),
    "nfkc netloc": ('[verifier]\nurl = "https://a\u2100b.example"\n'.encode(), "bad value [verifier] url"),
    "port not a number": (b'[verifier]\nurl = "https://h:x"\n', "bad value [verifier] url"),
    "port out of range": (b'[verifier]\nurl = "https://h:99999"\n', "bad value [verifier] url"),
    # urlsplit takes it, the HTTP client's IDNA 2008 does not: an InvalidURL when the client was built
    "fullwidth host": ('[verifier]\nurl = "https://\uff21:8443"\n'.encode(), "bad value [verifier] url"),
    # urlsplit and the HTTP client take them (percent-encoding the space): a typo, never a host to look up
    "space in the host": (b'[verifier]\nurl = "https://a b:8443"\n', "bad value [verifier] url"),
    "quote in the host": (b'[verifier]\nurl = "https://verifier\'.example:8443"\n', "bad value [verifier] url"),
    "tab in the host": (b'[verifier]\nurl = "https://a\\tb"\n', "bad value [verifier] url"),
    # int() refuses more than 4300 decimal digits with a plain ValueError out of tomllib
    "4301 digits": (b"[network]\nretries = " + b"1" * 4301 + b"\n", "more than 4300 digits"),
    # hex has no digit limit: the int is built, then repr() in a message would raise
    "hex beyond 64 bits": (b"[network]\nretries = 0x" + b"f" * 5000 + b"\n", "beyond TOML's 64 bits"),
    # float(int) raises OverflowError past 1e308
    "huge int for a float key": (b"[network]\nkeepalive_s = 1" + b"0" * 400 + b"\n", "beyond TOML's 64 bits"),
    "deep arrays": (b"x = " + b"[" * 5000 + b"]" * 5000 + b"\n", "too deep to parse"),
    "deep inline tables": (b"x = " + b"{a=" * 5000 + b"1" + b"}" * 5000 + b"\n", "too deep to parse"),
    "nested within the parser's reach": (b"[network]\nretries = " + b"[" * 20 + b"]" * 20 + b"\n",
                                         "more than 8 deep"),
    "NUL byte": (b'[agent]\nstate_dir = "/srv"\x00\n', "NUL character on line 2"),
    "NUL escape in a path": (b'[api]\nsocket = "/run/a\\u0000b"\n', "NUL character in the value of api.socket"),
    "NUL escape in a key": (b'[network]\n"a\\u0000" = 1\n', "NUL character in a key name"),
    "too large": (b"#" * (MAX_CONFIG_BYTES + 1), "larger than 1048576 bytes"),
    "a key of 100000 characters": (b"[network]\n" + b"k" * 100_000 + b" = 1\n", "unknown key [network] kkk"),
    "a section of 100000 characters": (b"[" + b"s" * 100_000 + b"]\n", "unknown section [sss"),
    "password in a URL urlsplit rejects": (b'[verifier]\nurl = "https://u:s3cret@["\n', "user name or password"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_CONFIGS))
def test_hostile_config_bytes_are_config_errors_naming_the_fix(name: str) -> None:
    data, needle = HOSTILE_CONFIGS[name]
    with pytest.raises(ConfigError) as info:
        config_from_bytes(data, "agent.toml")
    assert needle in info.value.message
    assert info.value.fix
    assert "s3cret" not in str(info.value)
    assert len(str(info.value)) < 600, "a message must not repeat a huge value whole"


def test_load_config_refuses_a_file_over_the_cap_without_reading_it_whole(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_bytes(b"# " + b"x" * (MAX_CONFIG_BYTES * 3) + b"\n")
    with pytest.raises(ConfigError, match="larger than 1048576 bytes") as info:
        load_config(path)
    assert "agent.toml" in info.value.fix


def test_config_exactly_at_the_cap_loads() -> None:
    text = b'[agent]\nstate_dir = "/srv/agent"\n'
    data = text + b"#" * (MAX_CONFIG_BYTES - len(text))
    assert config_from_bytes(data, "agent.toml").agent.state_dir == Path("/srv/agent")


def test_override_with_a_huge_int_for_a_float_key_is_a_config_error() -> None:
    # the file path stops these at 64 bits; a caller of with_overrides must get the same refusal
    for value in (10**400, 1 << 20000):
        with pytest.raises(ConfigError, match="keepalive_s") as info:
            AgentConfig().with_overrides(network={"keepalive_s": value})
        assert "1e308" in info.value.fix



# -- a bad value is named where it was given: the file's key, or the command line's flag


def resolved(tmp_path: Path, file_text: str, *flags: str) -> AgentConfig:
    """The config `capture-agent doctor` would run with: the real parser, then resolve_config."""
    from agent.cli import build_parser
    from agent.runtime import resolve_config

    path = write(tmp_path, f'[agent]\nstate_dir = "{tmp_path / "state"}"\n{file_text}')
    return resolve_config(build_parser().parse_args(["doctor", "--config", str(path), *flags]))


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("http://127.0.0.1:9", "bad value {name} = 'http://127.0.0.1:9'"),
        ("https://admin:s3cret@127.0.0.1:9", "bad value {name}: 'https://***@127.0.0.1:9' has a user name"),
        # taken, then every request's path was "/" ("404 no endpoint /") or the client refused the URL as
        # "not protocol v1: UnsupportedProtocol" (urlsplit drops the blank a paste leaves before the URL)
        ("https://127.0.0.1:9?x=1", "bad value {name} = 'https://127.0.0.1:9?x=1'"),
        ("https://127.0.0.1:9#top", "bad value {name} = 'https://127.0.0.1:9#top'"),
        (" https://127.0.0.1:9", "bad value {name} = ' https://127.0.0.1:9'"),
    ],
    ids=["not https", "user info", "a query", "a fragment", "a blank before it"],
)
def test_a_bad_verifier_url_is_named_as_the_flag_or_the_key_it_was_given_as(
    tmp_path: Path, url: str, said: str
) -> None:
    with pytest.raises(ConfigError) as flag:
        resolved(tmp_path, "", "--verifier", url)
    assert said.format(name="--verifier") in flag.value.message, flag.value.message
    assert "[verifier] url" not in str(flag.value) and "s3cret" not in str(flag.value)
    with pytest.raises(ConfigError) as key:
        resolved(tmp_path, f'[verifier]\nurl = "{url}"\n')
    assert said.format(name="[verifier] url") in key.value.message, key.value.message
    assert "--verifier" not in str(key.value) and "s3cret" not in str(key.value)


def test_a_bad_state_dir_flag_is_named_as_the_flag(tmp_path: Path) -> None:
    """The string replacement this replaced knew only --verifier: a relative --state-dir was "[agent] state_dir"."""
    with pytest.raises(ConfigError) as flag:
        resolved(tmp_path, "", "--state-dir", "relative/state")
    assert flag.value.message == "bad value --state-dir = 'relative/state'" and "absolute" in flag.value.fix


def test_with_overrides_names_a_key_as_the_caller_says_it_was_given() -> None:
    with pytest.raises(ConfigError) as info:
        AgentConfig().with_overrides({"verifier.url": "--verifier"}, verifier={"url": "https://h:99999"})
    assert info.value.message == "bad value --verifier = 'https://h:99999'"
    with pytest.raises(ConfigError) as other:  # a name given for one key leaves the others as the file names them
        AgentConfig().with_overrides({"verifier.url": "--verifier"}, network={"retries": 99})
    assert other.value.message == "bad value [network] retries = 99"


_KEYS = st.sampled_from(["url", "retries", "keepalive_s", "state_dir", "socket", "kind", "source", "baud",
                         "spki_pin", "backend", "at_fraction", "x", '"a b"'])
_SECTIONS = st.sampled_from(["[agent]", "[verifier]", "[network]", "[keyring]", "[renewal]", "[audit]",
                             "[reader]", "[[device]]", "[api]", "[logging]", "[x]", "[network.y]"])
_VALUES = st.one_of(
    st.integers().map(str),
    st.integers(min_value=4290, max_value=4310).map(lambda n: "9" * n),
    st.integers(min_value=0, max_value=600).map(lambda n: "0x" + "f" * n),
    st.floats(allow_nan=True, allow_infinity=True).map(lambda f: repr(f).lower()),
    st.sampled_from(["nan", "-inf", "true", "1979-05-27", "1979-02-30", "{}", "[]", '"\\u0000"',
                     '"https://["', '"https://h:x"', '"https://u:p@[::1"', '"https://a\u2100b"', '"zfm"',
                     '"camera"', '"/dev/ttyUSB0"', '"https://h"']),
    st.integers(min_value=1, max_value=1200).map(lambda n: "[" * n + "]" * n),
    st.integers(min_value=1, max_value=1200).map(lambda n: "{a=" * n + "1" + "}" * n),
    st.text(max_size=20).map(lambda t: '"' + t.replace("\\", "").replace('"', "") + '"'),
)
_TOMLISH = st.lists(st.one_of(_SECTIONS, st.tuples(_KEYS, _VALUES).map(" = ".join), st.text(max_size=30)),
                    max_size=12).map("\n".join)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.one_of(st.binary(max_size=400), _TOMLISH.map(lambda t: t.encode("utf-8", "surrogatepass"))))
@example(b'[verifier]\nurl = "https://["\n')
@example(b"[network]\nkeepalive_s = " + b"9" * 4301 + b"\n")
@example(b"x = " + b"[" * 3000 + b"]" * 3000)
def test_config_from_arbitrary_bytes_is_a_config_or_a_config_error(data: bytes) -> None:
    """Whatever the bytes, only a config or a ConfigError comes out (invariant 6)."""
    try:
        config = config_from_bytes(data, "fuzz.toml")
    except ConfigError as exc:
        assert exc.fix, f"a ConfigError without a fix: {exc.message}"
        str(exc)  # printing it must not raise either
    else:
        assert isinstance(config, AgentConfig)


@pytest.mark.parametrize("kind, key", [("zfm", "port"), ("camera", "source")])
def test_a_device_without_its_key_is_told_the_line_to_add(kind: str, key: str) -> None:
    """The fix was "add port = ...": the form of the value (a quoted path) left to guess. The line the fix gives,
    added to the entry as written, makes a config that loads."""
    import re
    import tomllib

    entry = f'[[device]]\nkind = "{kind}"\n'
    with pytest.raises(ConfigError) as refused:
        config_from_bytes(entry.encode(), "agent.toml")
    line = re.search(rf"add ({key} = \S+) to it", refused.value.fix)
    assert line, refused.value.fix
    config = config_from_bytes(f"{entry}{line.group(1)}\n".encode(), "agent.toml")
    assert getattr(config.device[0], key) == tomllib.loads(line.group(1))[key]
