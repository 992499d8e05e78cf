"""Shared fixtures. Each area of the project has its own section below.

Everything a test starts (servers, pseudo-terminals, processes) is stopped by the
fixture that started it; every port is on 127.0.0.1 and chosen free at run time.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import http.server
import ipaddress
import json
import os
import pty
import queue
import secrets
import select
import shutil
import signal
import socket
import sqlite3
import ssl
import stat
import subprocess
import sys
import tempfile
import threading
import time
import warnings
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import settings

from agent.config import AgentConfig
from agent.devices.supervisor import DeviceSupervisor
from agent.devstack import LocalVerifier, device_config, write_config_file
from agent.identity import DeviceIdentity, IdentityStore
from agent.provision import provision
from tests.der import element as der_element
from tests.der import head as der_head
from tests.der import oid as der_oid
from tests.exec_prepared import prepared

# ---------------------------------------------------------------- general

# One BLAS thread per process, as the verifier and the benchmarks run. Set before any test
# module imports numpy (nothing imported above does): with two cores shared by the suite's
# servers, OpenBLAS's spinning worker threads made a 0.7 s matcher test take 49 s.
for _blas in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_blas, "1")
# OpenBLAS reads the setting once, when numpy loads: numpy imported among the imports above (as it was from
# 2026-11-30) left the test process its own worker threads (measured: 2 threads on a 2-core machine, 1 after).
import numpy as np  # noqa: E402

# Hypothesis properties here run real numeric code (matching, codecs, template checks), on
# machines of two cores shared by two test workers and the suite's servers: one example can
# take several times its usual time, and Hypothesis's 200 ms per-example deadline would then
# fail a correct property as flaky. Time is measured in bench/, not asserted here.
settings.register_profile("suite", deadline=None)
settings.load_profile("suite")

# ---------------------------------------------------------------- verifier / PKI


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "verifier_settings(*lines): TOML lines the `verifier` fixture starts with (a test of something else than "
        "the setting's own behaviour, e.g. an agent's face session on a device whose first use is not its subject)",
    )


@pytest.fixture
def verifier(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[LocalVerifier]:
    """The reference verifier as a real process on a free port of 127.0.0.1, fresh PKI.

    A ``verifier_settings`` mark gives it a settings file (``--config``) of the mark's lines.
    """
    extra: tuple[str, ...] = ()
    marker = request.node.get_closest_marker("verifier_settings")
    if marker is not None:
        settings = tmp_path / "verifier-settings.toml"
        settings.write_text("".join(f"{line}\n" for line in marker.args))
        extra = ("--config", str(settings))
    with dev_pki(tmp_path / "pki", extra_args=extra) as local:
        local.start()
        yield local


def dev_pki(pki_dir: Path, extra_args: tuple[str, ...] = ()) -> LocalVerifier:
    """A fresh development PKI in ``pki_dir``, made in this process by what `capture-verifier pki init` runs.

    Why not the command itself (``LocalVerifier.init_pki``): a Python process started for it costs a
    sixth of a second, and hundreds of tests start a verifier; the command's own behaviour (its output,
    refusals, modes) is tested where it is run (test_verifier_operator_*, test_installer_cli).
    """
    from verifier.pki import fingerprint, init_pki

    local = LocalVerifier(pki_dir, extra_args=extra_args)
    local.ca_fingerprint = fingerprint(init_pki(pki_dir).cert)
    return local


@pytest.fixture
def verifier_state(tmp_path: Path) -> Path:
    """A verifier's state folder as `capture-verifier pki init` makes it, with no server running.

    For the operator's commands that only read and write the state (tokens, rules):
    no process is left to stop.
    """
    dev_pki(tmp_path / "pki")
    return tmp_path / "pki"


@dataclass
class TerminalVerifier:
    """`capture-verifier serve` run from a terminal (a pseudo-terminal), and that terminal's other end."""

    verifier: LocalVerifier  # its pki_dir, port and process
    master: int | None  # the terminal's side; None once closed

    def hang_up(self) -> None:
        """Close the terminal, as a closed window or a dropped ssh session does: the kernel sends SIGHUP."""
        if self.master is not None:
            with contextlib.suppress(OSError):
                while select.select([self.master], [], [], 0)[0] and os.read(self.master, 65536):
                    pass  # what it printed so far, read as a terminal would
            os.close(self.master)
            self.master = None


@pytest.fixture
def verifier_at_a_terminal(tmp_path: Path) -> Iterator[TerminalVerifier]:
    """The reference verifier with a pseudo-terminal as its controlling terminal, standard input, output and
    error; on a free port of 127.0.0.1, fresh PKI. Stopped (killed if SIGTERM does not end it) after the test."""
    local = dev_pki(tmp_path / "pki")
    ready = tmp_path / "ready.json"
    master, slave = pty.openpty()
    command = [sys.executable, "-m", "verifier.cli", "serve", "--pki", str(local.pki_dir), "--port", "0"]
    # a session of its own whose controlling terminal is the pseudo-terminal, as a login shell starts it
    local.process = subprocess.Popen([*prepared("terminal"), *command, "--ready-file", str(ready)], stdin=slave,
                                     stdout=slave, stderr=slave)
    os.close(slave)
    terminal = TerminalVerifier(local, master)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() and local.process.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(OSError):  # read what it prints, so that it never blocks on a full terminal
                if select.select([master], [], [], 0.05)[0]:
                    os.read(master, 65536)
        assert ready.exists(), f"the verifier did not become ready (exit code {local.process.poll()})"
        local.port = int(json.loads(ready.read_text())["port"])
        yield terminal
    finally:
        local.stop()
        terminal.hang_up()


@pytest.fixture
def tiny_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs, for what happens when the disk is full; skipped where this user may not mount."""
    with _tmpfs(tmp_path / "tiny", "256k") as mount_point:
        yield mount_point


@pytest.fixture
def small_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs: room for a verifier's database (schema and WAL), to be filled by the test."""
    with _tmpfs(tmp_path / "small", "4m") as mount_point:
        yield mount_point


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, Path]]:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET (a real AF_UNIX socket the daemon sends to)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify.sock"
    sock.bind(str(path))
    sock.settimeout(0.2)
    yield sock, path
    sock.close()


@pytest.fixture
def modeless_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A mounted file system that keeps no file modes, as vfat under umask=022 (tests/modeless_fs.py: FUSE, since
    a kernel may have no vfat); skipped where this user may not mount."""
    from tests.modeless_fs import modeless_mount

    with modeless_mount(tmp_path / "modeless") as mount_point:
        yield mount_point


@contextlib.contextmanager
def _tmpfs(mount_point: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` at ``mount_point``, unmounted after; skips the test where this user may not mount."""
    mount, umount = shutil.which("mount"), shutil.which("umount")
    if mount is None or umount is None:
        pytest.skip("no mount command here")
    mount_point.mkdir()
    mounted = subprocess.run([mount, "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(mount_point)],
                             capture_output=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode(errors='replace').strip()}")
    try:
        yield mount_point
    finally:  # lazily: a failed test may leave a file open there (its process's sqlite), and the mount must go
        subprocess.run([umount, "--lazy", str(mount_point)], check=False)


async def cancel_session_task(session: Any, task: asyncio.Task) -> list[object]:
    """Cancel a capture session's ``task`` alone (a caller's timeout, Ctrl-C), not through ``session.cancel()``:
    what its caller then sees, ``["cancelled", True]`` when the cancellation reached it and the session's own
    ``cancelled`` event (which its worker's waits watch) was set."""
    task.cancel()
    seen: list[object] = []
    try:
        await task
    except asyncio.CancelledError:
        seen.append("cancelled")
    seen.append(session.cancelled.is_set())
    return seen


def run_bounded(scenario: Callable[[], Any], *, hang: str, bound_s: float = 60) -> None:
    """``asyncio.run(scenario())`` in a thread, failing with ``hang`` if it has not ended in ``bound_s`` (a bound
    on a hang only: a wait that watches its event ends long before)."""
    thread = threading.Thread(target=asyncio.run, args=(scenario(),), daemon=True)
    thread.start()
    thread.join(bound_s)
    assert not thread.is_alive(), hang


def fill_filesystem(path: Path) -> None:
    """Write zeros into ``path`` until the file system says it is full."""
    fd = os.open(path / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)


def provision_with_fresh_token(
    verifier: LocalVerifier, state_dir: Path, device_id: str, *, database: Path | None = None
) -> tuple[AgentConfig, DeviceIdentity]:
    """``devstack.provision_device``, its one-time token stored in this process as `capture-verifier token new`
    stores it (in the default database, or ``database`` for a verifier whose settings move it).

    Why not the command: a Python process started for it costs a sixth of a second, and a hundred and fifty
    tests provision a device; the command itself is tested in test_verifier_operator_cli and test_provisioning.
    The provisioning (EST over mTLS against the running verifier) is the agent's own, unchanged.
    """
    from verifier.store import open_database
    from verifier.tokens import BootstrapTokens

    conn = open_database(database or verifier.pki_dir / "verifier.sqlite")
    try:
        token, _ = BootstrapTokens(conn).new(device_id)
    finally:
        conn.close()
    config = device_config(state_dir, verifier.url)
    return config, asyncio.run(provision(config, token, verifier.ca_fingerprint)).identity


@pytest.fixture
def provisioned(verifier: LocalVerifier, tmp_path: Path) -> tuple[AgentConfig, DeviceIdentity]:
    """A device provisioned against ``verifier`` with a one-time token: (config, identity)."""
    return provision_with_fresh_token(verifier, tmp_path / "device", "kiosk-1")


@pytest.fixture
def second_device(verifier: LocalVerifier, tmp_path: Path) -> tuple[AgentConfig, DeviceIdentity]:
    """Another device ("kiosk-2") provisioned against ``verifier``: one whose first use is still to come."""
    return provision_with_fresh_token(verifier, tmp_path / "device-2", "kiosk-2")


def raw_client_context(pki_dir: Path, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    """A plain TLS client context for tests that must send what the agent never would."""
    ctx = ssl.create_default_context(cafile=str(pki_dir / "ca.pem"))
    ctx.set_alpn_protocols(["h2"])
    if cert is not None:
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


@pytest.fixture
def accepted_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A TCP connection on 127.0.0.1: (the client's blocking socket, the server's non-blocking one)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    server.setblocking(False)
    yield client, server
    client.close()
    server.close()


@pytest.fixture
def plain_http_port() -> Iterator[int]:
    """A plain HTTP/1.0 server on a free port of 127.0.0.1 (a wrong port in the URL); stopped after."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)  # stop in 0.05 s, not 0.5
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


# ---------------------------------------------------------------- agent


def api_socket_up(daemon: subprocess.Popen, socket_path: Path, limit_s: float = 30.0) -> None:
    """Wait until the daemon has made its local API socket: failed at once if the daemon exits, or past ``limit_s``
    (generous: a loaded machine starts a daemon in seconds)."""
    deadline = time.monotonic() + limit_s
    while not socket_path.exists():
        assert daemon.poll() is None, "the daemon exited before opening its local API"
        assert time.monotonic() < deadline, "the daemon's local API never came up"
        time.sleep(0.1)


def start_agent_daemon(config_file: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """`capture-agent run` as its own process (in ``env`` when given), output discarded; the caller stops it."""
    command = [sys.executable, "-m", "agent.cli", "--config", str(config_file), "run"]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)


# A camera source its driver refuses (an unencoded / in the password); a test asserts "SECRET" never shows.
REFUSED_CAMERA_SOURCE = "http://admin:Pa55/w0rdSECRET@127.0.0.1:9/video.mjpg"


@contextlib.contextmanager
def daemon_with_devices_not_set_up(
    config: AgentConfig, tmp_path: Path, *, between: str = ""
) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """`capture-agent run` whose USB reader "usb" cannot be set up (PyGObject hidden from it, as where libfprint is
    missing) and whose camera "door" has a source its driver refuses; ``between``: [[device]] tables between the
    two. Yields (the daemon, its local API socket); stopped on exit."""
    (tmp_path / "hidden" / "gi").mkdir(parents=True)
    (tmp_path / "hidden" / "gi" / "__init__.py").write_text("raise ImportError('hidden by the test')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "hidden"), os.getcwd()])}
    socket_path = tmp_path / "run" / "api.sock"
    config_file = write_config_file(
        tmp_path / "agent.toml", config,
        f'[api]\nsocket = "{socket_path}"\n[logging]\nlevel = "error"\n'
        '[[device]]\nkind = "fprint"\nname = "usb"\n' + between
        + f'[[device]]\nkind = "camera"\nname = "door"\nsource = "{REFUSED_CAMERA_SOURCE}"\n',
    )
    daemon = start_agent_daemon(config_file, env=env)
    try:
        yield daemon, socket_path
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(20)



@dataclass
class TestCA:
    """A throwaway CA for tests that need certificates the dev PKI would never make.

    (Wildcards, wrong host names, foreign CAs, a site's subordinate CA.) Files are written under
    ``folder``. Self-signed, or signed by ``issuer`` (a subordinate of that CA).
    """

    __test__ = False  # a helper, not a test class (a test module may import it)
    name: str
    folder: Path
    issuer: TestCA | None = None
    key: ec.EllipticCurvePrivateKey = field(init=False)
    cert: x509.Certificate = field(init=False)
    last_server_cert: x509.Certificate | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.name)])
        signer = self.issuer or self
        self.cert = (
            self._builder(subject, self.key.public_key(), days=30)
            .issuer_name(self.issuer.cert.subject if self.issuer else subject)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(signer.key, hashes.SHA256())
        )
        self.ca_file.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    @property
    def ca_file(self) -> Path:
        return self.folder / f"{self.name}-ca.pem"

    @staticmethod
    def _builder(
        subject: x509.Name, public_key, days: int, valid: tuple[dt.datetime, dt.datetime] | None = None
    ) -> x509.CertificateBuilder:
        now = dt.datetime.now(dt.UTC)
        start, end = valid or (now - dt.timedelta(minutes=5), now + dt.timedelta(days=days))
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
        )

    def issue_key_and_cert(
        self,
        names: list[str],
        *,
        client: bool = False,
        valid: tuple[dt.datetime, dt.datetime] | None = None,
        with_san: bool = True,
    ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        """A leaf certificate for DNS names or IPs (the first name is also the CN).

        ``valid`` (not before, not after) gives a certificate that is not yet valid or
        already expired: what a device with its clock off sees, without faking the clock.
        ``with_san=False`` names the host in the CN alone, as pre-RFC 6125 certificates did.
        """
        key = ec.generate_private_key(ec.SECP256R1())
        sans: list[x509.GeneralName] = []
        for name in names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                sans.append(x509.DNSName(name))
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
        builder = (
            self._builder(subject, key.public_key(), days=5, valid=valid)
            .issuer_name(self.cert.subject)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if with_san:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return key, builder.sign(self.key, hashes.SHA256())

    def issue(
        self,
        label: str,
        names: list[str],
        *,
        client: bool = False,
        valid: tuple[dt.datetime, dt.datetime] | None = None,
        with_san: bool = True,
    ) -> tuple[Path, Path]:
        """Like :meth:`issue_key_and_cert`, written as (cert file, unencrypted key file)."""
        key, cert = self.issue_key_and_cert(names, client=client, valid=valid, with_san=with_san)
        cert_file, key_file = self.folder / f"{label}.pem", self.folder / f"{label}.key"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        return cert_file, key_file

    def server_context(
        self,
        names: list[str],
        *,
        alpn: tuple[str, ...] = ("h2",),
        client_ca: Path | None = None,
        valid: tuple[dt.datetime, dt.datetime] | None = None,
    ) -> ssl.SSLContext:
        """A server-side context with a fresh certificate for ``names`` (valid from/to ``valid`` if given)."""
        cert_file, key_file = self.issue(f"server-{secrets.token_hex(4)}", names, valid=valid)
        self.last_server_cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert_file, key_file)
        if alpn:
            ctx.set_alpn_protocols(list(alpn))
        if client_ca is not None:
            ctx.load_verify_locations(client_ca)
            ctx.verify_mode = ssl.CERT_OPTIONAL
        return ctx


# Hostile certificates: what cryptography loads but raises on later (found by a fuzzing audit). The builder
# refuses to make them, so they are made by editing a good certificate's DER and signing it again.

UNSUPPORTED_CURVE_OID = "1.2.840.10045.3.1.99"  # P-256's OID (1.2.840.10045.3.1.7) with its last arc changed
P256_OID_DER = bytes.fromhex("06082a8648ce3d030107")
UNSUPPORTED_CURVE_OID_DER = bytes.fromhex("06082a8648ce3d030163")


def resigned(cert: x509.Certificate, edit: Callable[[bytes], bytes], key: ec.EllipticCurvePrivateKey) -> bytes:
    """The DER of ``cert`` with its TBSCertificate edited and signed again by ``key`` (ECDSA with SHA-256, as
    ``cert`` was): only the edit is wrong with it, not its signature."""
    tbs = cert.tbs_certificate_bytes
    edited = edit(tbs)
    assert edited != tbs, "the edit changed nothing"
    der = cert.public_bytes(serialization.Encoding.DER)
    tbs_end = der_element(der, der_element(der, 0)[0])[1]  # Certificate: TBSCertificate, algorithm, signature
    algorithm = der[tbs_end:der_element(der, tbs_end)[1]]
    signature = key.sign(edited, ec.ECDSA(hashes.SHA256()))
    bits = b"\x03" + der_head(len(signature) + 1) + b"\x00" + signature
    body = edited + algorithm + bits
    return b"\x30" + der_head(len(body)) + body


def hostile_certificate(
    signer: TestCA, common_name: str, defect: str, public_key: ec.EllipticCurvePublicKey | None = None,
    *, ca: bool = False,
) -> x509.Certificate:
    """A certificate signed by ``signer`` that loads but raises when read in full.

    ``defect``: "duplicate-extension" (x509.DuplicateExtension from .extensions: two copies of one private
    extension) or "unsupported-curve" (UnsupportedAlgorithm from .public_key(): the key's curve OID is one no
    library knows), or "empty-common-name" (a CN out of its X.520 bounds: only a UserWarning, at every read of
    the subject, unless read under protocol.certificates.bounds_enforced).
    """
    public_key = public_key or ec.generate_private_key(ec.SECP256R1()).public_key()
    with warnings.catch_warnings():  # "empty-common-name": made out of its bounds on purpose
        warnings.simplefilter("ignore")
        cn = x509.NameAttribute(NameOID.COMMON_NAME, "" if defect == "empty-common-name" else common_name,
                                _validate=False)
    builder = (
        TestCA._builder(x509.Name([cn]), public_key, days=5)
        .issuer_name(signer.cert.subject)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.55555.1"), b"\x05\x00"), False)
        .add_extension(x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.55555.2"), b"\x05\x00"), False)
    )
    good = builder.sign(signer.key, hashes.SHA256())
    if defect == "duplicate-extension":  # the second private OID becomes the first (same length, last arc)
        edit = lambda tbs: tbs.replace(der_oid("1.3.6.1.4.1.55555.2"), der_oid("1.3.6.1.4.1.55555.1"))  # noqa: E731
    elif defect == "unsupported-curve":
        edit = lambda tbs: tbs.replace(P256_OID_DER, UNSUPPORTED_CURVE_OID_DER)  # noqa: E731
    elif defect == "empty-common-name":
        return good
    else:
        raise ValueError(f"no such defect {defect!r}")
    return x509.load_der_x509_certificate(resigned(good, edit, signer.key))


def sqlite_modes_under_umask_022(path: Path, use: Callable[[Path], Callable[[], None]], *, older: bool
                                 ) -> dict[str, str]:
    """The modes of a sqlite file and its -wal and -shm while ``use(path)`` holds it open (what it returns closes it).

    Made under umask 022 in a 0755 folder (a state folder made by hand, a db_path outside the PKI folder).
    ``older``: the three files first left 0644 by a plain connection still open, as an older version made them.
    """
    path.parent.mkdir()
    path.parent.chmod(0o755)
    mask = os.umask(0o022)
    old_conn = None
    try:
        if older:
            old_conn = sqlite3.connect(path)
            old_conn.execute("PRAGMA journal_mode=WAL")
            old_conn.execute("CREATE TABLE t (x)")
        close = use(path)
        modes = {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in path.parent.iterdir()}
        close()
    finally:
        os.umask(mask)
        if old_conn is not None:
            old_conn.close()
    return modes


# ---------------------------------------------------------------- another user


AGENT_UID = 65534  # nobody: stands for the agent's user, which is not the installer's root


REPO = Path(__file__).resolve().parents[1]


@functools.cache
def as_agent_user_prefix() -> tuple[str, ...] | str:
    """The command prefix that runs a process as uid 65534, or why that cannot be done here.

    setpriv (util-linux) rather than a preexec_fn calling os.setuid: it resolves the
    interpreter's path before its capabilities go, so a Python installed under root's
    0700 home (pyenv) still starts; what the agent itself opens is then checked as uid 65534.
    """
    if os.getuid() != 0:
        return "runs a command as another user (uid 65534): needs root to drop to it"
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return "setpriv (util-linux) is not installed: cannot run a command as uid 65534"
    prefix = (setpriv, f"--reuid={AGENT_UID}", f"--regid={AGENT_UID}", "--clear-groups")
    # As `python -m agent.cli` imports: from the checkout's absolute path (sys.path[0] is the full cwd for -m).
    # Where uid 65534 may not pass a folder above it, that import falls through to whatever other copy of the
    # agent sys.path holds (an editable install of another clone) and the tests would judge that copy's code:
    # so the probe also checks which file was imported.
    probe = subprocess.run(
        [*prefix, sys.executable, "-c", "import os, sys; sys.path[0] = os.getcwd(); import agent.cli; "
         "print(os.path.realpath(agent.cli.__file__))"],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )
    imported = probe.stdout.strip()
    if probe.returncode != 0 or imported != str((REPO / "agent" / "cli.py").resolve()):
        said = probe.stderr.strip().splitlines()[-1][-200:] if probe.stderr.strip() else f"it imported {imported}"
        return (
            f"uid {AGENT_UID} cannot import the agent from this checkout {REPO} (in a folder only its owner may "
            f"enter, such as a private home folder; these tests run from a checkout other users can read): {said}"
        )
    return prefix


@functools.cache
def unprivileged_prefix() -> tuple[str, ...] | str:
    """The command prefix that runs a process without root's powers, or why that cannot be done here (a skip).

    As root (this sandbox, many CI images) chmod never denies root, so the command runs as
    uid 65534 (:func:`as_agent_user_prefix`, which also finds a checkout uid 65534 cannot
    read: a private home folder); as another user the tests' own processes lack them already.
    """
    if os.getuid() != 0:
        return ()
    return as_agent_user_prefix()


def give_to_agent_user(path: Path) -> None:
    """Hand ``path`` (and what is in it) to the user :func:`unprivileged_prefix` runs as: uid 65534 under root,
    nobody else to give it to otherwise (the tests' own files are that user's already)."""
    if os.getuid() != 0:
        return
    for item in (path, *path.rglob("*")):
        os.lchown(item, AGENT_UID, AGENT_UID)


@pytest.fixture
def agent_user_cli() -> Callable[..., subprocess.CompletedProcess[str]]:
    """`capture-agent ARGS` as the unprivileged agent user (:func:`unprivileged_prefix`); skipped where it
    cannot run. Its environment names no config (``CAPTURE_AGENT_CONFIG`` removed) unless ``env`` does."""
    prefix = unprivileged_prefix()
    if isinstance(prefix, str):
        pytest.skip(prefix)

    def run(
        *args: str, env: dict[str, str] | None = None, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        if env is None:
            env = {k: v for k, v in os.environ.items() if k != "CAPTURE_AGENT_CONFIG"}
        return subprocess.run(
            [*prefix, sys.executable, "-m", "agent.cli", *args],
            capture_output=True, text=True, timeout=90, env=env, cwd=REPO, input=stdin,
        )

    return run


@pytest.fixture
def shut() -> Iterator[Callable[[Path, int], Path]]:
    """``shut(path, mode)``: chmod a file or folder for the test, and open it again at the end.

    Why the reopening: a folder shut 0o000 by a test run as an ordinary user cannot be
    removed by that user afterwards (root can; the modes deny everyone else either way).
    """
    changed: list[tuple[Path, int]] = []

    def close(path: Path, mode: int) -> Path:
        changed.append((path, stat.S_IMODE(path.stat().st_mode)))
        path.chmod(mode)
        return path

    yield close
    for path, mode in reversed(changed):
        with contextlib.suppress(OSError):
            path.chmod(mode)


@pytest.fixture
def make_test_ca(tmp_path: Path) -> Callable[[str], TestCA]:
    """Factory of throwaway CAs in this test's tmp_path."""
    return lambda name: TestCA(name, tmp_path / "test-cas")


@pytest.fixture
def ca(make_test_ca: Callable[[str], TestCA]) -> TestCA:
    """The throwaway CA a test's device and server certificates come from."""
    return make_test_ca("device-ca")


@pytest.fixture
def app_in_process(tmp_path: Path, ca: TestCA) -> Iterator[Callable[..., tuple[Any, Callable[..., Any]]]]:
    """A maker of the verifier's app in this process (settings given as keywords) on a fresh PKI and database, with
    a maker of a device's signed requests (a real signature over a real nonce of that app).

    For what only memory shows (the pending step-ups): the handlers, their matching and their decisions are
    called one by one, as test_subject_remove's ``in_process`` does. Every app made is closed after the test.
    """
    from protocol.signing import sign_request
    from verifier.app import VerifierApp
    from verifier.http import Request
    from verifier.pki import init_pki
    from verifier.registry import Device as RegisteredDevice
    from verifier.settings import VerifierSettings

    made: list[Any] = []

    def make(device_id: str = "kiosk-1", **settings: Any) -> tuple[Any, Callable[..., Any]]:
        pki = tmp_path / "pki"
        if not (pki / "ca.pem").exists():
            init_pki(pki)
        app = VerifierApp(VerifierSettings(pki_dir=pki, **settings))
        made.append(app)
        key, cert = ca.issue_key_and_cert([device_id], client=True)

        def signed(path: str, on: str = "", **fields: object) -> Any:
            nonce, _ = app.biometric.challenges.issue(device_id)
            body = sign_request(key, "POST", path, {"nonce": nonce, **fields})
            return Request("POST", path, {}, json.dumps(body).encode(), RegisteredDevice(device_id, "active", "01"),
                           cert, on)

        return app, signed

    try:
        yield make
    finally:
        for app in made:
            app.pool.close()
            app.conn.close()


@pytest.fixture
def server_ctx(ca: TestCA) -> ssl.SSLContext:
    """A TLS server context on 127.0.0.1 asking for client certificates of ``ca`` (for H2TestServer)."""
    return ca.server_context(["127.0.0.1"], client_ca=ca.ca_file)


@pytest.fixture
def identity(ca: TestCA, device_identity_from: Callable[[TestCA, str], DeviceIdentity]) -> DeviceIdentity:
    """Device kiosk-1's identity, issued by ``ca`` and written with the real IdentityStore."""
    return device_identity_from(ca, "kiosk-1")


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A temporary folder the agent's user may enter (pytest's tmp_path is root's 0700 folder)."""
    folder = Path(tempfile.mkdtemp(prefix="capture-audit-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def device_identity_from(tmp_path: Path) -> Callable[[TestCA, str], DeviceIdentity]:
    """A device identity issued by a test CA, written with the real IdentityStore."""

    def make(ca: TestCA, device_id: str = "test-device") -> DeviceIdentity:
        key, cert = ca.issue_key_and_cert([device_id], client=True)
        store = IdentityStore(tmp_path / f"state-{device_id}")
        return store.write(key, cert, [ca.cert], passphrase=b"test-kek-" + secrets.token_hex(16).encode())

    return make


# ---------------------------------------------------------------- fingerprints


@dataclass(frozen=True)
class SyntheticPrint:
    """A fingerprint-like test image and where its minutiae were planted."""

    image: object  # np.ndarray uint8
    minutiae: object  # np.ndarray (n, 2) of x, y


def _synthetic_print(
    seed: int, shape: tuple[int, int] = (320, 300), defects: int = 14, period: float = 9.0
) -> SyntheticPrint:
    """Curved ridges (phase field of a distant core) inside an elliptic finger area.

    Each planted minutia is a phase dislocation: adding +-atan2 around a point winds
    the ridge phase by one period there, which inserts one ridge that ends (or
    forks) exactly at that point. Different seeds give different core positions,
    curvature and minutiae: different fingers.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    cx, cy = w * rng.uniform(0.3, 0.7), -h * rng.uniform(0.2, 0.6)
    ecc = rng.uniform(0.7, 1.3)
    phase = np.sqrt((xx - cx) ** 2 + ((yy - cy) * ecc) ** 2) / period
    ex, ey, ax, ay = w / 2, h / 2, w * 0.42, h * 0.45
    inside = ((xx - ex) / ax) ** 2 + ((yy - ey) / ay) ** 2 <= 1.0
    points: list[tuple[float, float]] = []
    while len(points) < defects:
        x, y = rng.uniform(0.2 * w, 0.8 * w), rng.uniform(0.2 * h, 0.8 * h)
        if ((x - ex) / (ax - 30)) ** 2 + ((y - ey) / (ay - 30)) ** 2 > 1.0:
            continue
        if all((x - px) ** 2 + (y - py) ** 2 > 35.0**2 for px, py in points):
            points.append((x, y))
    for x, y in points:
        phase += rng.choice([-1.0, 1.0]) * np.arctan2(yy - y, xx - x) / (2 * np.pi)
    ridges = 128.0 - 90.0 * np.cos(2 * np.pi * phase)
    img = np.where(inside, ridges, 235.0) + rng.normal(0.0, 8.0, shape)
    return SyntheticPrint(np.clip(img, 0, 255).astype(np.uint8), np.array(points))


@pytest.fixture(autouse=True)
def helper_threads_joined(request: pytest.FixtureRequest) -> Iterator[None]:
    """Threads a test module lists in its ``HELPER_THREADS`` (a finger fed to a reader later, say) are joined after
    each test, so none outlives the test that started it (acting on a reader the next test has opened)."""
    yield
    threads = getattr(request.module, "HELPER_THREADS", None)
    if not threads:
        return
    for thread in threads:
        thread.join(30)
    alive = [thread.name for thread in threads if thread.is_alive()]
    threads.clear()
    assert not alive, f"threads still running after the test: {alive}"


@pytest.fixture(scope="session")
def synthetic_print() -> Callable[..., SyntheticPrint]:
    """Factory: synthetic_print(seed, shape=(320, 300), defects=14) -> SyntheticPrint."""
    return _synthetic_print


@pytest.fixture(scope="session")
def finger_generator():
    """The synthetic finger generator (simulators.fingers) with a fixed seed; masters are cached."""
    from simulators.fingers import FingerGenerator

    return FingerGenerator(seed=1)


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """../shared/data next to the repository (data sets are never copied into it); skips when absent."""
    path = Path(__file__).resolve().parents[2] / "shared" / "data"
    if not path.is_dir():
        pytest.skip(f"no data sets at {path}")
    return path


@pytest.fixture(scope="session")
def synthetic_templates(finger_generator):
    """Templates of three random impressions of each of four virtual fingers: {finger: [template, ...]}.

    Each went through the wire format (ISO/IEC 19794-2 encode then decode), as the verifier receives them.
    """
    from biometrics.fingerprint import extract
    from biometrics.fingerprint.iso19794_2 import decode, encode

    out = {}
    for finger_id in range(4):
        finger = finger_generator.finger(finger_id)
        out[finger_id] = [
            decode(encode(extract(imp.image, imp.dpi)))[0] for imp in (finger.impression(seed) for seed in range(3))
        ]
    return out


@pytest.fixture(scope="session")
def synthetic_population() -> tuple[list[Any], np.ndarray]:
    """Templates of 8 synthetic fingers x 3 realistic impressions (seed 1) and their finger labels, as the
    benchmark extracts them: enough fingers that an identification's gallery (12 or 14 templates) needs a
    stricter threshold than 1:1, few enough to extract in seconds."""
    from bench.fingerprint import extract_synthetic

    templates, fingers, _ = extract_synthetic(8, 3, seed=1, workers=1)
    return templates, fingers


# ---------------------------------------------------------------- command lines run in-process


@pytest.fixture
def keep_process_settings() -> Iterator[None]:
    """For a test that calls a CLI's main() in this process: its structlog setup and signal handlers undone after.

    Those mains point structlog at stderr and take SIGINT / SIGTERM for their own
    clean exit, as a program does; left so, the next test in this worker would log
    into a closed capture or stop differently on a signal.
    """
    import signal

    import structlog

    config = structlog.get_config()
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        structlog.configure(**config)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


# ---------------------------------------------------------------- serial modules


@pytest.fixture(params=["r307"])
def zfm_sim(request, tmp_path: Path) -> Iterator:
    """A simulated serial fingerprint module on a pty, behind a stable link path; stopped after."""
    from simulators.fingers import FingerGenerator
    from simulators.zfm import SimulatedModule

    sim = SimulatedModule(request.param, link=tmp_path / "ttyZFM0", finger_source=FingerGenerator(11).image)
    with sim:
        yield sim
        assert not sim.errors, f"the simulated module crashed while serving: {sim.state()}"



@pytest.fixture
def zfm_sims(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Make simulated modules (``make(link_name, model, baud=...)``), each on its own pty behind a link in
    tmp_path: several serial ports with a module on each. All stopped after."""
    from simulators.fingers import FingerGenerator
    from simulators.zfm import SimulatedModule

    with contextlib.ExitStack() as stack:
        sims: list[SimulatedModule] = []

        def make(link_name: str, model: str = "r307", **options: Any) -> SimulatedModule:
            sim = SimulatedModule(model, link=tmp_path / link_name, finger_source=FingerGenerator(11).image,
                                  **options)
            sims.append(stack.enter_context(sim))
            return sim

        yield make
        for sim in sims:
            assert not sim.errors, f"a simulated module crashed while serving: {sim.state()}"


@pytest.fixture
def silent_ports(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """Make serial ports where nothing answers (``make(link_name)``): a pty whose other end is held open and never
    written, behind a link in tmp_path, as a UART with no module wired to it. Closed after."""
    ends: list[int] = []

    def make(link_name: str) -> Path:
        master, slave = pty.openpty()
        ends.extend((master, slave))
        link = tmp_path / link_name
        link.symlink_to(os.ttyname(slave))
        return link

    try:
        yield make
    finally:
        for end in ends:
            os.close(end)


PORT_HOLDER_SCRIPT = """
import sys, serial
port = serial.Serial(sys.argv[1], 57600, exclusive=True)
print("held", flush=True)
sys.stdin.read()
port.close()
"""


@pytest.fixture
def port_holder() -> Iterator[Callable[[Path], int]]:
    """Hold serial ports from another process (``hold(port)`` returns its pid), with pyserial's exclusive lock as
    a running agent holds its module's; that process is ended after the test."""
    holders: list[subprocess.Popen] = []

    def hold(port: Path) -> int:
        holder = subprocess.Popen([sys.executable, "-c", PORT_HOLDER_SCRIPT, str(port)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        holders.append(holder)
        assert holder.stdout is not None and holder.stdout.readline() == "held\n", f"{port} could not be held"
        return holder.pid

    try:
        yield hold
    finally:
        for holder in holders:
            try:
                holder.communicate(timeout=10)  # stdin closed: it lets go of the port and ends
            except subprocess.TimeoutExpired:
                holder.kill()
                holder.communicate()


# ---------------------------------------------------------------- USB readers (libfprint)


@pytest.fixture
def fprint_socket_dir() -> Iterator[Path]:
    """A short private folder for libfprint's virtual-driver sockets (unix socket paths are limited to 108 bytes)."""
    import shutil
    import tempfile

    pytest.importorskip("gi", reason="PyGObject missing: `make .venv/.installed` installs it (the usb extra)")
    from drivers.fprint import unavailable_reason

    if unavailable_reason():
        pytest.fail(unavailable_reason())  # `make test` installs libfprint: its absence is a setup error
    folder = Path(tempfile.mkdtemp(prefix="fp-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def virtual_image_reader(fprint_socket_dir: Path) -> Iterator[tuple]:
    """libfprint's virtual_image reader, opened by our driver, and the feeder that presents fingers to it."""
    from drivers.fprint.reader import FprintReader
    from simulators.fprint import VirtualImageFeeder

    path = fprint_socket_dir / "image.sock"
    reader = FprintReader("virtual_image", env={"FP_VIRTUAL_IMAGE": str(path)})
    reader.open()
    feeder = VirtualImageFeeder(path)
    try:
        yield reader, feeder
    finally:
        feeder.close()
        reader.close()


@pytest.fixture
def virtual_device_reader(fprint_socket_dir: Path) -> Iterator[tuple]:
    """libfprint's match-on-sensor virtual_device reader, opened by our driver, and its command feeder."""
    from drivers.fprint.reader import FprintReader
    from simulators.fprint import VirtualDeviceFeeder

    path = fprint_socket_dir / "device.sock"
    reader = FprintReader("virtual_device", env={"FP_VIRTUAL_DEVICE": str(path)})
    reader.open()
    try:
        yield reader, VirtualDeviceFeeder(path)
    finally:
        reader.close()


# ---------------------------------------------------------------- cameras


@pytest.fixture
def camera_sim() -> Iterator:
    """The MJPEG camera simulator on a free port of 127.0.0.1 (the camera driver reads it over HTTP); stopped after."""
    from simulators.camera import SimulatedCamera

    with SimulatedCamera((320, 240), fps=25) as camera:
        yield camera


@dataclass
class FakeDevRoot:
    """A folder standing in for /dev (``drivers.camera.source.DEV_ROOT``): V4L2 nodes as plain files (OpenCV
    opens none of them), udev's by-id and by-path names as relative symlinks to them, as udev makes them."""

    root: Path

    def node(self, name: str) -> str:
        path = self.root / name
        path.touch()
        return str(path)

    def link(self, folder: str, name: str, target: str) -> str:
        """``folder`` (``by-id``, ``by-path``) / ``name`` -> ``target``, written relative to the link's folder."""
        links = self.root / "v4l" / folder
        links.mkdir(parents=True, exist_ok=True)
        (links / name).symlink_to(os.path.relpath(self.root / target, links))
        return str(links / name)


@pytest.fixture
def fake_dev(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeDevRoot:
    """A folder the camera driver and discovery take for /dev, for this test only."""
    from drivers.camera import source

    root = tmp_path / "dev"
    root.mkdir()
    monkeypatch.setattr(source, "DEV_ROOT", str(root))
    return FakeDevRoot(root)


class _SnapshotHandler(http.server.BaseHTTPRequestHandler):
    """Every GET: one 320x240 JPEG as ``image/jpeg``, as a camera's snapshot URL answers."""

    def do_GET(self) -> None:
        import cv2

        ok, jpeg = cv2.imencode(".jpg", np.full((240, 320, 3), 120, np.uint8))
        assert ok
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(jpeg)))
        self.end_headers()
        self.wfile.write(jpeg.tobytes())

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def snapshot_camera() -> Iterator[str]:
    """The URL of a camera's snapshot (one JPEG a request, no MJPEG stream) on a free port of 127.0.0.1: what an
    installer may copy from a camera's web page instead of its stream URL. FFmpeg reads it as a camera."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _SnapshotHandler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)  # stop in 0.05 s, not 0.5
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/snapshot.jpg"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def video_file(tmp_path: Path) -> Path:
    """A short MJPEG AVI of 64x48 grey frames at 5 fps: a camera source OpenCV reads as a file (its size and rate
    cannot be set, as a camera's that refuses them)."""
    import cv2

    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5, (64, 48))
    assert writer.isOpened(), "this OpenCV cannot write an MJPEG AVI"
    for shade in range(0, 250, 25):
        writer.write(np.full((48, 64, 3), shade, np.uint8))
    writer.release()
    return path


@pytest.fixture
def finger_folder(tmp_path: Path) -> Path:
    """A folder of FVC-named finger images (1_1, 1_2, 2_1; grey PNGs, a tenth of a second to make): the
    simulators' folder source without the synthetic generator's second a finger."""
    import cv2

    folder = tmp_path / "fingers"
    folder.mkdir()
    for finger, impression in ((1, 1), (1, 2), (2, 1)):
        image = np.full((300, 260), 200, np.uint8)
        image[::8 * finger, :] = 40 * impression  # ridges of their own: each image differs
        assert cv2.imwrite(str(folder / f"{finger}_{impression}.png"), image)
    return folder


class HangingResolver:
    """Every resolver the camera driver may use hangs, as one retrying a DNS server that is gone."""

    MARKER = "camera-lookup-stand-in"  # in the stand-in's command line: how its processes are found

    def __init__(self) -> None:
        self.asked = threading.Event()  # getaddrinfo was called in process for a name
        self.release = threading.Event()

    def lookups(self) -> list[int]:
        """This process's children running the stand-in resolver (a zombie counts: it was never reaped)."""
        found = []
        for stat_file in Path("/proc").glob("[0-9]*/stat"):
            try:
                ppid = int(stat_file.read_text().rpartition(")")[2].split()[1])
                command = (stat_file.parent / "cmdline").read_bytes()
            except (OSError, ValueError, IndexError):
                continue  # ended meanwhile
            if ppid == os.getpid() and self.MARKER.encode() in command:
                found.append(int(stat_file.parent.name))
        return found

    def wait_asked(self, timeout_s: float = 10.0) -> bool:
        """True once a lookup is under way (in process, or a stand-in running)."""
        for _ in range(int(timeout_s / 0.02)):
            if self.asked.is_set() or self.lookups():
                return True
            self.release.wait(0.02)
        return False


@pytest.fixture
def hanging_resolver(monkeypatch) -> Iterator[HangingResolver]:
    """The name lookups of drivers.camera hang: the child process it starts is a real one that sleeps, and
    getaddrinfo called in process for a name blocks until the test ends (an address literal still resolves).
    Any stand-in left running is killed after the test."""
    from drivers.camera import resolve

    hanging = HangingResolver()
    real = socket.getaddrinfo

    def slow(host, port, family=0, type=0, proto=0, flags=0):
        if flags & socket.AI_NUMERICHOST:
            return real(host, port, family, type, proto, flags)
        hanging.asked.set()
        hanging.release.wait(30)
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", slow)
    monkeypatch.setattr(resolve, "RESOLVER", (sys.executable, "-c", "import time; time.sleep(60)", hanging.MARKER))
    try:
        yield hanging
    finally:
        hanging.release.set()
        for pid in hanging.lookups():
            with contextlib.suppress(OSError):
                os.kill(pid, 9)
                os.waitpid(pid, 0)


# ---------------------------------------------------------------- faces


@pytest.fixture(scope="session")
def face_pipeline():
    """biometrics.face's pipeline, both models checked and loaded once for the session."""
    from biometrics.face.pipeline import FacePipeline

    return FacePipeline()


@pytest.fixture(scope="session")
def att_faces(shared_data_dir: Path) -> Path:
    """The ORL / AT&T faces (sN/*.pgm, 92x112 grey); skips when the data set is absent."""
    path = shared_data_dir / "att_faces"
    if not (path / "s1" / "1.pgm").is_file():
        pytest.skip(f"ORL faces not found at {path} (tests of real faces need ../shared/data/att_faces)")
    return path


def synthetic_face(yaw: float = 0.0, pitch: float = 0.0, roll: float = 0.0, eye_distance: float = 60.0,
                   center: tuple[float, float] = (320.0, 240.0), flat_squeeze: float = 1.0):
    """Five landmarks of a rigid 3-D head seen by a camera that does not mirror, as a Face.

    The head's points are the SFace template's (eyes, nose, mouth corners) with
    the nose tip half an eye distance in front of the eyes; yaw > 0 turns the
    head to the person's left. ``flat_squeeze`` < 1 instead narrows a frontal
    face horizontally, as a flat photo turned about its vertical axis looks.
    """
    import math

    import numpy as np

    from biometrics.face.align import TEMPLATE
    from biometrics.face.types import Face

    e = float(np.hypot(*(TEMPLATE[1] - TEMPLATE[0])))
    pts = (TEMPLATE - (TEMPLATE[0] + TEMPLATE[1]) / 2) / e  # eye distance 1, eyes' midpoint at 0
    depth = np.array([0.0, 0.0, 0.5, 0.1, 0.1])  # towards the camera
    xyz = np.column_stack([pts, depth])
    a, b, c = math.radians(yaw), math.radians(pitch), math.radians(roll)
    ry = np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
    rx = np.array([[1, 0, 0], [0, math.cos(b), math.sin(b)], [0, -math.sin(b), math.cos(b)]])
    rz = np.array([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]])
    proj = (xyz @ (rz @ ry @ rx).T)[:, :2] * [flat_squeeze, 1.0]
    marks = (proj * eye_distance + np.asarray(center)).astype(np.float32)
    lo, hi = marks.min(0) - 0.6 * eye_distance, marks.max(0) + 0.6 * eye_distance
    return Face(box=np.array([*lo, *(hi - lo)], np.float32), landmarks=marks, score=0.95)


@pytest.fixture(scope="session")
def make_face():
    """Factory of synthetic landmark sets: make_face(yaw=, pitch=, roll=, eye_distance=, center=, flat_squeeze=)."""
    return synthetic_face


# One comparison scored over galleries laid out differently (a search's gathered candidates, a grown or
# compacted stack, a fresh one, 1:1 matching) is the same sums of the same products, but OpenBLAS picks
# its kernel, and so the order of the partial sums, per CPU and per operand shape. On the AVX-512 VMs of the
# earlier sessions (OpenBLAS's SkylakeX kernels) the scores came out bit for bit; on an AMD EPYC VM with AVX2
# but no AVX-512 (its Haswell kernels) they differ by up to 8e-4 relative where a print meets its own copy,
# under 1e-4 elsewhere: 1 - |a - b| / (|a| + |b|) takes the square root of |a|^2 + |b|^2 - 2 a.b, a
# difference of nearly equal sums when a cylinder meets its own copy, which amplifies their rounding. A
# layout bug (another template's rows, a stale field) moves a score by far more than this.
SCORE_RTOL, SCORE_ATOL = 2e-3, 2e-7


@pytest.fixture(scope="session")
def assert_same_scores() -> Callable[[object, object], None]:
    """Assert that two score vectors are the same comparisons' scores, within the BLAS rounding above.

    Session-scoped (it holds no state) so that Hypothesis properties can take it.
    """

    def check(actual: object, desired: object) -> None:
        np.testing.assert_allclose(actual, desired, rtol=SCORE_RTOL, atol=SCORE_ATOL)

    return check


@dataclass
class SimulatorScript:
    """What a simulator CLI did with a script on its standard input: ``first`` is the first JSON line it printed
    after the script (the sign the lines before were handled), ``answers`` the JSON lines on its stderr (one per
    line it could not do)."""

    first: dict
    returncode: int
    stderr: str
    answers: list[dict]


def run_simulator_script(args: list[str], script: bytes) -> SimulatorScript:
    """``python -m simulators.cli ARGS``: wait for it to listen, write ``script``, read one stdout line, SIGTERM it.

    The process is stopped (killed if SIGTERM did not end it) whatever the test asserts.
    """
    import json
    import signal

    proc = subprocess.Popen([sys.executable, "-m", "simulators.cli", *args],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert json.loads(proc.stdout.readline())["event"] == "listening"
        proc.stdin.write(script)
        proc.stdin.flush()
        first = json.loads(proc.stdout.readline())
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    text = err.decode("utf-8", "backslashreplace")
    answers = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    return SimulatorScript(first, proc.returncode, text, answers)


_OUTPUT_READERS: weakref.WeakKeyDictionary[subprocess.Popen, queue.Queue[str | None]] = weakref.WeakKeyDictionary()


def lines_said(person: subprocess.Popen[str], *, quiet_s: float = 60.0) -> Iterator[str]:
    """The lines a command prints (its ``stdout`` a text pipe), as they come, until it closes its output.

    A command that goes quiet for ``quiet_s`` with its output still open is killed and the test fails with what it
    had said: a bare ``for line in person.stdout`` waited for the test's timeout instead (120 s, seen once in CI),
    and the failure showed no line of the command's. One reader thread per command, so a test may stop at a line
    and later read on from the next.
    """
    if person not in _OUTPUT_READERS:
        assert person.stdout is not None
        lines: queue.Queue[str | None] = queue.Queue()

        def read(stdout: IO[str]) -> None:
            for line in stdout:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=read, args=(person.stdout,), name="lines-said", daemon=True).start()
        _OUTPUT_READERS[person] = lines
    lines = _OUTPUT_READERS[person]
    said: list[str] = []
    while True:
        try:
            line = lines.get(timeout=quiet_s)
        except queue.Empty:
            stack = _stack_of_silent(person, lines)
            raise AssertionError(f"the command said nothing for {quiet_s:g} s with its output open; it had said "
                                 f"{said}; where it was: {stack}") from None
        if line is None:
            lines.put(None)  # ended: a later read ends at once too
            return
        said.append(line.rstrip())
        yield line


def _stack_of_silent(person: subprocess.Popen[str], lines: queue.Queue[str | None]) -> list[str]:
    """What a silent command was doing, then it is killed: a command started with PYTHONFAULTHANDLER=1 (see
    :data:`DIAGNOSABLE`) writes every thread's stack on SIGABRT before it dies, read here from its output.

    Why: a Ctrl-C test saw a command say nothing for 60 s once in CI and never since; its lines alone could not
    tell where it hung.
    """
    person.send_signal(signal.SIGABRT)
    stack: list[str] = []
    with contextlib.suppress(queue.Empty):
        while (line := lines.get(timeout=10)) is not None:
            stack.append(line.rstrip())
    person.kill()
    person.wait()
    return stack


DIAGNOSABLE = {"PYTHONFAULTHANDLER": "1", "PYTHONUNBUFFERED": "1"}  # a command lines_said can ask for its stack


def finger_fpir_for(comparisons: int) -> float:
    """A ``finger_identify_fpir`` under which a finger identification can make exactly ``comparisons`` comparisons
    (its capacity, verifier/ranking.py), computed from the fingerprint calibration in force.

    Why computed: a test of an identification past its capacity needs that capacity known and small. A literal
    rate (identify_fpir 3e-9: some 12,100 comparisons since the field agreement read between block centres, 1,460
    before, 180 before the extractor's reliability floor rose) moves with every refit of the calibration's far
    tail, and could not go lower for fingers without faces refusing to start.
    """
    from biometrics.fingerprint import threshold_for_fmr
    from verifier.ranking import lowest_reachable_fmr

    return (comparisons + 0.5) * lowest_reachable_fmr(threshold_for_fmr)


def finger_capacity(fpir: float) -> int:
    """The finger identification capacity the verifier logs at start under the default target_fmr and ``fpir``."""
    from biometrics.fingerprint import threshold_for_fmr
    from verifier.ranking import identification_capacity
    from verifier.settings import VerifierSettings

    return identification_capacity("finger", threshold_for_fmr, fpir=fpir,
                                   verify_threshold=threshold_for_fmr(VerifierSettings().target_fmr))


class UnixStandIn:
    """A stand-in for the daemon's local API on a unix socket: one connection at a time, each handed to
    :meth:`answer`; connections it keeps open (``held``) are closed by :meth:`close`, which the test calls."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(str(path))
        self.listener.listen(8)
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, name=type(self).__name__, daemon=True)
        self.thread.start()

    def answer(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:  # closed: the test is over
                return
            self.answer(conn)

    def close(self) -> None:
        """Stop serving: shut the listener down first (a bare close leaves the thread blocked in accept)."""
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self.thread.join(10)
        for conn in self.held:
            conn.close()


@contextlib.asynccontextmanager
async def storage_reader(socket_dir: Path, name: str = "usb0") -> AsyncIterator[tuple[Any, Any]]:
    """A match-on-sensor reader keeping its own prints (libfprint's virtual_device_storage) opened as the agent's
    device ``name``, and the feeder that puts fingers on it; closed after."""
    from agent.config import DeviceSection
    from agent.devices.kinds import FprintDevice
    from simulators.fprint import VirtualDeviceFeeder

    path = socket_dir / "storage.sock"
    section = DeviceSection(kind="fprint", selector="virtual_device_storage", check_interval_s=0.1)
    device = FprintDevice(section, name, env={"FP_VIRTUAL_DEVICE_STORAGE": str(path)})
    await device.open()
    try:
        yield device, VirtualDeviceFeeder(path)
    finally:
        await device.close()


@contextlib.asynccontextmanager
async def camera_and_reader(camera_url: str, reader_port: str) -> AsyncIterator[DeviceSupervisor]:
    """A device supervisor with a camera and a serial fingerprint module, opened, and closed after."""
    from agent.config import DeviceSection

    supervisor = DeviceSupervisor(
        [("camera", DeviceSection(kind="camera", source=camera_url)),
         ("reader", DeviceSection(kind="zfm", port=reader_port))],
        lambda kind, data: None,
    )
    await supervisor.open_all()
    try:
        yield supervisor
    finally:
        await supervisor.close()
