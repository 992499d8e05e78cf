"""The device's identity: its key pair, its certificate, and the CA it trusts.

Layout of the state directory (0700, files 0600)::

    identity/                      the current identity: a symlink
    identity-<serial hex>/         one folder per certificate
        device.key                 encrypted PKCS#8 (passphrase: the KEK)
        device.pem                 the device certificate
        ca.pem                     the CA certificate(s) the device trusts

Why a folder per certificate and a symlink: key and certificate must change
together. Writing both into a fresh folder and then renaming one symlink over the
old one is atomic, so a power cut during provisioning or renewal leaves either the
old pair or the new pair, never a key that does not match its certificate.

Who owns it: the state directory's ``identity`` link is the one truth. Whoever
renews or re-provisions (the daemon on its schedule, `capture-agent renew` or
`provision --force` from a shell) writes a new folder and renames the link, under
the ``identity.lock`` file lock so two renewals never race. A running daemon
*follows* the link: its client compares the link's target with the identity it
holds before every request (one ``readlink``), loads the new one and switches to
it (:meth:`IdentityStore.changed`). A loaded identity keeps its key in memory, so
a request already signed or running with the old one finishes even after its
folder is gone; the verifier honours the previous certificate for a grace period.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import errno
import fcntl
import hashlib
import os
import shutil
import stat
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.access import closed_parent, user_name
from agent.errors import (
    CertificateDefect,
    IdentityError,
    NoIdentityError,
    StateDirNotTightened,
    provision_fix,
)
from drivers.accounts import login
from protocol.certificates import X509_READ_FAULTS, bounds_enforced

if TYPE_CHECKING:  # only its methods are called: identity needs no import of the config module at run time
    from agent.config import AgentConfig

CURRENT_LINK = "identity"
KEY_FILE = "device.key"
CERT_FILE = "device.pem"
CA_FILE = "ca.pem"
# The verifier URL the identity was provisioned with (one line): the device's verifier when the config names none.
VERIFIER_FILE = "verifier.url"
MAX_VERIFIER_FILE_BYTES = 4096
# The key, the certificate and the CA bundle are a few KiB; a file of more is not one the agent wrote.
MAX_IDENTITY_FILE_BYTES = 1 << 20
LOCK_FILE = "identity.lock"
REPROVISION_FIX = "re-provision the device with a new token"

# What cryptography raises, some of it lazily (long after loading), from a certificate it loaded: the list both
# ends share (protocol.certificates), under the name the agent's modules use.
CERTIFICATE_FAULTS = X509_READ_FAULTS


def generate_key() -> ec.EllipticCurvePrivateKey:
    """A new EC P-256 key, made here on the device (invariant 3)."""
    return ec.generate_private_key(ec.SECP256R1())


def build_csr(key: ec.EllipticCurvePrivateKey, common_name: str = "capture-agent") -> bytes:
    """A PKCS#10 request (DER). The verifier sets the real device id from the token."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.DER)


def _der_element(data: bytes, pos: int) -> tuple[int, int]:
    """(start of the contents, end) of the DER element at ``pos`` (definite lengths only, as DER has)."""
    length, pos = data[pos + 1], pos + 2
    if length & 0x80:
        count = length & 0x7F
        length, pos = int.from_bytes(data[pos : pos + count], "big"), pos + count
    if pos + length > len(data):  # a slice past the end would give a short element silently
        raise IndexError(f"a DER element of {length} bytes at {pos} runs past the {len(data)} bytes there are")
    return pos, pos + length


def spki_der(certificate: x509.Certificate | bytes) -> bytes:
    """The SubjectPublicKeyInfo of a certificate (or of its DER) exactly as encoded, without parsing the key.

    Why not ``public_key().public_bytes()``: a key on a curve the cryptography library
    lacks raises UnsupportedAlgorithm there, though OpenSSL accepted it in the handshake;
    the pin is defined over these bytes (RFC 7469) and needs no key object. An
    IndexError means DER cut short (OpenSSL and cryptography would have refused it).
    """
    if isinstance(certificate, x509.Certificate):
        tbs = certificate.tbs_certificate_bytes
    else:
        start = _der_element(certificate, 0)[0]  # into Certificate: TBSCertificate comes first
        tbs = certificate[start : _der_element(certificate, start)[1]]
    pos = _der_element(tbs, 0)[0]  # into TBSCertificate
    if tbs[pos] == 0xA0:  # [0] version
        pos = _der_element(tbs, pos)[1]
    for _ in range(5):  # serialNumber, signature, issuer, validity, subject
        pos = _der_element(tbs, pos)[1]
    return tbs[pos : _der_element(tbs, pos)[1]]


def certifies_key(certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> bool:
    """Whether ``certificate`` is for ``key`` (the device's EC key): the same curve and point.

    Why the kind first: a certificate for a key of another kind (Ed25519, X25519,
    Ed448: a verifier's PKI misconfigured, a file copied over device.pem) has no
    ``public_numbers()``, and comparing them raised AttributeError where the answer
    is simply no. Numbers, not SPKI bytes: a CA may write the same point compressed.
    """
    public = certificate.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey):
        return False
    return public.public_numbers() == key.public_key().public_numbers()


def spki_sha256(public_key: ec.EllipticCurvePublicKey | x509.Certificate | bytes) -> str:
    """Base64 SHA-256 of a SubjectPublicKeyInfo: the form of an SPKI pin (RFC 7469).

    Of a key, a certificate, or a certificate's DER (a handshake's: not parsed by cryptography at all).
    """
    if isinstance(public_key, x509.Certificate | bytes):
        der = spki_der(public_key)
    else:
        der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(der).digest()).decode("ascii")


def read_in_full(certificate: x509.Certificate, what: str, fix: str) -> x509.Certificate:
    """The certificate, once every field the agent later uses has been read; else a :class:`CertificateDefect`.

    Why at once: cryptography parses some fields only when asked (extensions, the
    public key), so a certificate with an extension twice or a key on a curve it lacks
    loads fine and raises later, deep in provisioning, renewal, ``doctor`` or a trust
    check, as an exception nobody types. Read here, where it arrives, the defect is
    one error naming ``what`` it is and the ``fix``.
    """
    try:
        with bounds_enforced():  # a name value out of its bounds: a defect, not a warning at every later read
            certificate.subject.rfc4514_string()
            certificate.issuer.rfc4514_string()
            common_name(certificate)
        _ = certificate.serial_number, certificate.not_valid_before_utc, certificate.not_valid_after_utc
        for extension in certificate.extensions:
            _ = extension.value
        key = certificate.public_key()
        key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.public_numbers()  # what IdentityStore.write compares with the device key
        certificate.fingerprint(hashes.SHA256())
        spki_der(certificate)
    except (*CERTIFICATE_FAULTS, IndexError) as exc:  # IndexError: spki_der on a TBS cut short
        raise CertificateDefect(f"{what} cannot be read in full: {_fault_words(exc)}", fix=fix) from None
    return certificate


def _fault_words(exc: Exception) -> str:
    """What cryptography said, short and typed (its messages are a line, but nothing says they stay one)."""
    text = " ".join(str(exc).split())[:160]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def load_certificate_in_full(pem: bytes, what: str, fix: str) -> x509.Certificate:
    """One PEM certificate, read in full (:func:`read_in_full`); a :class:`CertificateDefect` if it is not one."""
    try:
        certificate = x509.load_pem_x509_certificate(pem)
    except CERTIFICATE_FAULTS as exc:
        raise CertificateDefect(f"{what} is not a PEM certificate: {_fault_words(exc)}", fix=fix) from None
    return read_in_full(certificate, what, fix)


def load_certificates_in_full(pem: bytes, what: str, fix: str) -> tuple[x509.Certificate, ...]:
    """Every PEM certificate of a bundle, each read in full; a :class:`CertificateDefect` naming the one that
    is not."""
    try:
        certificates = x509.load_pem_x509_certificates(pem)
    except CERTIFICATE_FAULTS as exc:
        raise CertificateDefect(f"{what} is not a PEM certificate bundle: {_fault_words(exc)}", fix=fix) from None
    return tuple(
        read_in_full(cert, f"certificate #{index} of {what}" if len(certificates) > 1 else what, fix)
        for index, cert in enumerate(certificates, start=1)
    )


def certificate_fingerprint(cert: x509.Certificate) -> str:
    """Lowercase hex SHA-256 of the certificate's DER: what an installer types."""
    return cert.fingerprint(hashes.SHA256()).hex()


def issued_by(certificate: x509.Certificate, ca: x509.Certificate) -> bool:
    """Whether ``ca`` signed ``certificate`` (names and signature; dates are the TLS stack's to judge)."""
    try:
        certificate.verify_directly_issued_by(ca)
    except (*CERTIFICATE_FAULTS, InvalidSignature):  # a CA's key on a curve cryptography lacks: it vouches for none
        return False
    return True


def _is_ca(cert: x509.Certificate) -> bool:
    """Whether the certificate is a CA the device could hold: it says so, and it reads in full.

    One that does not read in full (an extension twice, a key on a curve cryptography
    lacks) is no CA of ours: written to ca.pem it would make the identity fail to load.
    """
    try:
        read_in_full(cert, "a CA certificate", REPROVISION_FIX)
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except (x509.ExtensionNotFound, CertificateDefect):
        return False


def trusted_under(anchor: x509.Certificate, certs: Sequence[x509.Certificate]) -> list[x509.Certificate]:
    """The CA the installer confirmed, then every CA of the ``cacerts`` answer that it vouches for.

    Why more than the anchor: with a site's own PKI the verifier signs device
    certificates with a subordinate CA and answers ``cacerts`` with it and its
    issuers (certs/README.md). The installer may confirm the root; the device must
    then also hold the subordinate that signs its own certificate (renewal and
    doctor check that). Only certificates whose signatures lead to the confirmed
    one are kept: whoever answered ``cacerts`` (unverified TLS) cannot slip in a
    CA of its own beside the real one.

    The answer is walked once from the anchor down (each CA found is asked once
    which of the rest it signed), and whether a certificate is a CA is read once:
    an answer of n certificates costs at most n x n signature checks, whatever
    order it lists a chain in (re-scanning the list until nothing grew cost n^3).
    """
    trusted = [anchor]
    unplaced = [cert for cert in dict.fromkeys(certs) if cert != anchor and _is_ca(cert)]
    for ca in trusted:  # grows as it goes: each CA found is asked for the ones it signed in turn
        signed = [cert for cert in unplaced if issued_by(cert, ca)]
        trusted += signed
        unplaced = [cert for cert in unplaced if cert not in signed]
    return trusted


def normalise_fingerprint(text: str) -> str:
    """Accept ``AB:CD:..``, ``abcd..`` or with spaces; give lowercase hex."""
    return "".join(ch for ch in text if ch not in ": \t").lower()


def fingerprint_shape_fault(text: str) -> str | None:
    """Why ``text`` is not a SHA-256 fingerprint (64 hex digits once colons and blanks are out), or None.

    The value itself is never repeated: what lands in ``--ca-fingerprint`` by mistake is often the enrollment
    token pasted into the wrong option, and an error echoing it would put a secret on the terminal and the journal.
    """
    wanted = normalise_fingerprint(text)
    strays = sum(c not in "0123456789abcdef" for c in wanted)
    if len(wanted) == 64 and not strays:
        return None
    said = f"{len(wanted)} characters" + (f", {strays} of them not hex digits" if strays else "")
    return f"not a SHA-256 fingerprint (64 hex digits): the value given has {said} (not shown)"


def _owner_of(path: Path) -> str:
    """Who owns ``path``, or the nearest part of it this user may look at."""
    for candidate in (path, *path.parents):
        try:
            uid = candidate.lstat().st_uid
        except OSError:  # inside a directory this user cannot enter: say who owns that one
            continue
        return f"{'' if candidate == path else f'{candidate} '}owned by {user_name(uid)}"
    return "owner unknown"


def _foreign_state_dir_fix(state_dir: Path, owner_uid: int) -> str:
    """What to do about a state directory another user owns, from who runs this command and who owns it.

    Why not one fix: "run as the agent's user, or `chown -R capture-agent: DIR`" was given to root typing
    `capture-agent renew` on a directory that already is capture-agent's (the chown changes nothing, and the
    command fails again), and to a user whose directory root's provisioning left, who cannot run that chown.
    """
    owner = login(owner_uid)
    if os.getuid() == 0:  # root on the agent's directory: the directory is right, the user is not
        # runuser takes a user name only ("user 61234 does not exist"): for an owner with none here (a DynamicUser=
        # unit's, a user since removed) only systemd-run, which takes the number, is named.
        named = owner != str(owner_uid)
        who = owner if named else f"uid {owner}"
        by_name = f"`runuser -u {owner} -- capture-agent ...`, or " if named else ""
        return (f"run the command as {who}, the directory's owner and so the agent's user, not as root (files "
                f"root writes there are ones {who} cannot read): {by_name}"
                f"with the systemd credential `systemd-run --pipe --wait -p User={owner} "
                "-p LoadCredentialEncrypted=capture-agent-kek capture-agent ...` (README, 'Installing on a device')")
    me = login()
    return (f"if {me} is the agent's user, give it the directory (as root): `chown -R {me}: {state_dir}` "
            f"(provisioning as root without User= leaves it root's); else run the command as {owner}")


def common_name(cert: x509.Certificate) -> str:
    """The certificate subject's CN: the device id the verifier issued it for ("" without one)."""
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


@dataclass(frozen=True)
class DeviceIdentity:
    """A loaded identity. The key stays in its encrypted file; TLS reads it there."""

    directory: Path
    certificate: x509.Certificate
    ca_certificates: tuple[x509.Certificate, ...]
    passphrase: bytes = field(repr=False)
    # Decrypted once at load: signing must not depend on a folder a renewal may have removed.
    key: ec.EllipticCurvePrivateKey | None = field(default=None, repr=False, compare=False)

    @property
    def cert_path(self) -> Path:
        return self.directory / CERT_FILE

    @property
    def key_path(self) -> Path:
        return self.directory / KEY_FILE

    @property
    def ca_path(self) -> Path:
        return self.directory / CA_FILE

    @property
    def device_id(self) -> str:
        return common_name(self.certificate)

    @property
    def serial_hex(self) -> str:
        return format(self.certificate.serial_number, "x")

    @property
    def not_before(self) -> dt.datetime:
        return self.certificate.not_valid_before_utc

    @property
    def not_after(self) -> dt.datetime:
        return self.certificate.not_valid_after_utc

    def private_key(self) -> ec.EllipticCurvePrivateKey:
        """The key for signing request bodies: the one loaded with this identity, else decrypted now."""
        if self.key is not None:
            return self.key
        pem = _read_private(self.key_path, MAX_IDENTITY_FILE_BYTES, REPROVISION_FIX)
        key = serialization.load_pem_private_key(pem, self.passphrase)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise IdentityError("the device key is not an EC key", fix="re-provision the device")
        return key


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _kind_of(mode: int) -> str:
    """What a file that is no regular file is, in words an installer knows from ``ls -l``."""
    for test, words in (
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return words
    return "not a regular file"


def _read_private(path: Path, limit: int, fix: str) -> bytes:
    """The bytes of ``path``, which must be a regular file of at most ``limit`` bytes (the reading twin of
    :func:`_write_private`); anything else is an :class:`IdentityError` naming ``fix``.

    Why not ``open()``: it follows a symbolic link (to wherever it points, a file of another
    user's), waits on a FIFO until a writer comes (a daemon hung at start, no error, no log),
    and reads a device such as /dev/zero without end. The file is looked at first (``lstat``:
    nothing but a regular file is ever opened, so no device sees an open), then opened with
    O_NOFOLLOW|O_NONBLOCK, and what was opened is judged again (``fstat``): a file swapped in
    between is refused too. An OSError of the open itself (absent, permission) passes as it is,
    for the caller's own words.
    """
    what = f"{path} is {{}}, not a regular file"
    info = path.lstat()
    if not stat.S_ISREG(info.st_mode):
        raise IdentityError(what.format(_kind_of(info.st_mode)), fix=fix)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # replaced by a symbolic link since the lstat
            raise IdentityError(what.format("a symbolic link"), fix=fix) from None
        raise
    try:
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode):
            raise IdentityError(what.format(_kind_of(opened.st_mode)), fix=fix)
        _refuse_other_names(path, opened, fix)
        data = b""
        while len(data) <= limit:  # one byte past the limit is enough to refuse
            chunk = os.read(fd, limit + 1 - len(data))
            if not chunk:
                break
            data += chunk
    finally:
        os.close(fd)
    if len(data) > limit:
        raise IdentityError(f"{path} holds more than {limit} bytes: it is not the file the agent wrote", fix=fix)
    return data


def _refuse_other_names(path: Path, opened: os.stat_result, fix: str) -> None:
    """Refuse a file with more than one name (hard link): the usual rule for a secret file.

    The agent writes each identity file once, under one name (``_write_private``,
    O_EXCL; nothing here makes a hard link), so another name was made by someone
    else: whoever can reach it reads the key, or writes the certificate the agent
    then trusts, whatever the identity folder's own permissions say; and removing
    or re-provisioning this name leaves that copy behind.
    """
    if opened.st_nlink > 1:
        raise IdentityError(
            f"{path} has {opened.st_nlink} names (hard links): another name can read or replace it",
            fix=f"remove its other names (`find {_mount_point(path)} -xdev -samefile {path}` lists them), or {fix}",
        )


def _mount_point(path: Path) -> Path:
    """Where the file system holding ``path`` is mounted: where a ``find -xdev`` for its other names starts.

    Why not ``/``: every name of a file is on its file system, and ``-xdev`` keeps find off the others; with the
    state directory on a file system of its own (``/var``, a data partition), ``find / -xdev`` listed nothing.
    """
    here = Path(os.path.realpath(path)).parent
    while not os.path.ismount(here) and here != here.parent:
        here = here.parent
    return here


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class IdentityStore:
    """Reads and atomically replaces the identity in a state directory."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir

    @property
    def current(self) -> Path:
        return self.state_dir / CURRENT_LINK

    def access_error(self, exc: OSError, doing: str) -> IdentityError:
        """An OS error on the state directory as the installer's fix, never a traceback.

        Why each case has its own fix: a state directory provisioned as root (a unit
        without User=, a `sudo provision`) is unreadable to the agent's user, and the
        fix is `chown`, not a re-provisioning that would spend a token; a parent the
        agent's user cannot write is made by root with `install -d`; a state_dir that
        names a file is a config mistake.
        """
        where = exc.filename or self.state_dir
        if isinstance(exc, NotADirectoryError | FileExistsError):
            # The file may be a part of the path (`--state-dir /etc/agent.toml/state`): name the one that is,
            # not the state directory as "a file" when nothing is there.
            blocking = next((p for p in (self.state_dir, *self.state_dir.parents)
                             if p.exists() and not p.is_dir()), self.state_dir)
            what = "is a file" if blocking == self.state_dir else f"is inside {blocking}, which is a file"
            return IdentityError(
                f"cannot {doing}: [agent] state_dir {self.state_dir} {what}, not a directory",
                fix="point [agent] state_dir at a directory (default /var/lib/capture-agent), or move the file away",
            )
        if isinstance(exc, PermissionError):
            closed = closed_parent(self.state_dir)
            if closed is not None:  # Path.exists() itself raises here: the state directory cannot even be looked at
                return IdentityError(
                    f"cannot {doing}: {self.state_dir} is inside {closed} ({_owner_of(closed)}, mode "
                    f"{stat.S_IMODE(closed.stat().st_mode):o}), a folder {user_name()} may not pass through",
                    fix=f"let the agent's user through it (`chmod o+x {closed}`, or give it to that user), or point "
                    f"[agent] state_dir at a directory outside it (default /var/lib/capture-agent); `ls -ld` each "
                    f"parent of {self.state_dir} shows which may not be entered",
                )
            if not os.path.lexists(self.state_dir):
                return IdentityError(
                    f"cannot {doing}: {self.state_dir} does not exist and its parent is not writable by "
                    f"{user_name()} ({exc.strerror})",
                    fix=f"create it as root: `install -d -o capture-agent -g capture-agent -m 0700 {self.state_dir}` "
                    "(the unit's StateDirectory= does this for /var/lib/capture-agent)",
                )
            return IdentityError(
                f"cannot {doing}: permission denied on {where} ({_owner_of(Path(where))}; this command runs as "
                f"{user_name()})",
                fix=f"give the state directory to the agent's user: `chown -R capture-agent: {self.state_dir}` "
                "(provisioning as root, without User=, leaves it root's); run commands as that user "
                "(README: `systemd-run ... -p User=capture-agent`)",
            )
        return IdentityError(
            f"cannot {doing}: {where}: {exc.strerror or exc}",
            fix=f"check the disk and {self.state_dir} (`ls -la {self.state_dir}`, `df`, `dmesg`)",
        )

    def no_identity(self, detail: str = "") -> IdentityError:
        """The error for a state directory without an identity (``detail``: why, in a few words)."""
        return NoIdentityError(
            f"no device identity in {self.state_dir}{f' ({detail})' if detail else ''}", provision_fix()
        )

    def exists(self) -> bool:
        """Whether an identity is there; a state directory this user cannot read is an error, not "no"."""
        try:
            return (self.current / CERT_FILE).exists() and (self.current / KEY_FILE).exists()
        except OSError as exc:
            raise self.access_error(exc, "read the device identity") from None

    def foreign_owner_error(self, owner_uid: int) -> IdentityError:
        """The refusal of a state directory ``owner_uid`` owns, not this user: nothing is written into it."""
        return IdentityError(
            f"state directory {self.state_dir} belongs to {user_name(owner_uid)}, not to this user ({user_name()})",
            fix=_foreign_state_dir_fix(self.state_dir, owner_uid),
        )

    def ensure_state_dir(self) -> int | None:
        """Create the state directory 0700, or tighten it; refuse one owned by another user.

        Returns the mode it had when it had to be tightened (for the caller to say so), else None.
        """
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            info = self.state_dir.stat()
        except OSError as exc:
            raise self.access_error(exc, "create the state directory") from None
        if not stat.S_ISDIR(info.st_mode):
            raise self.access_error(FileExistsError(17, "File exists", str(self.state_dir)), "use the state directory")
        if info.st_uid != os.getuid():
            raise self.foreign_owner_error(info.st_uid)
        if stat.S_IMODE(info.st_mode) & 0o077:
            try:
                os.chmod(self.state_dir, 0o700)
            except OSError as exc:  # a disk remounted read-only: a bare OSError stopped the daemon's start
                if exc.errno != errno.EROFS:
                    raise self.access_error(exc, "close the state directory (chmod 700)") from None
                raise StateDirNotTightened(
                    f"the state directory {self.state_dir} is mode {stat.S_IMODE(info.st_mode):o} (others may "
                    "enter it) and cannot be closed now: its file system is read-only",
                    fix=f"once it is writable again (`dmesg`, `findmnt -T {self.state_dir}`), `chmod 700 "
                    f"{self.state_dir}` or restart the agent, which closes it",
                ) from None
            return stat.S_IMODE(info.st_mode)
        return None

    def write(
        self,
        key: ec.EllipticCurvePrivateKey,
        certificate: x509.Certificate,
        ca_certificates: Sequence[x509.Certificate],
        passphrase: bytes,
        verifier_url: str | None = None,
    ) -> DeviceIdentity:
        """Write a new identity folder and switch the ``identity`` link to it atomically.

        Every certificate is read in full first (:func:`read_in_full`): one that would
        fail to load afterwards must never replace an identity that works.
        ``verifier_url`` (provisioning) is kept in the folder beside the certificate it
        issued; a renewal (None) carries the current folder's over.
        """
        issued_fix = ("the verifier's PKI issued a certificate this agent cannot read: re-issue its CA or device "
                      "certificates with `capture-verifier` (certs/README.md), then provision again")
        read_in_full(certificate, "the certificate the verifier issued", issued_fix)
        for index, ca in enumerate(ca_certificates, start=1):
            read_in_full(ca, f"CA certificate #{index} the verifier answered", issued_fix)
        if not certifies_key(certificate, key):
            raise IdentityError(
                "the certificate the verifier issued does not match the device key",
                fix="retry; if it persists, the verifier is misconfigured",
            )
        self.ensure_state_dir()
        if verifier_url is None:
            verifier_url = self.provisioned_verifier_url()
        folder = self.state_dir / f"identity-{certificate.serial_number:x}"
        staging = self.state_dir / f".staging-{certificate.serial_number:x}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(mode=0o700)
        encrypted = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(passphrase),
        )
        _write_private(staging / KEY_FILE, encrypted)
        _write_private(staging / CERT_FILE, certificate.public_bytes(serialization.Encoding.PEM))
        _write_private(
            staging / CA_FILE,
            b"".join(c.public_bytes(serialization.Encoding.PEM) for c in ca_certificates),
        )
        if verifier_url:
            _write_private(staging / VERIFIER_FILE, f"{verifier_url}\n".encode())
        _fsync_dir(staging)
        shutil.rmtree(folder, ignore_errors=True)
        os.rename(staging, folder)
        previous = os.path.realpath(self.current) if self.current.is_symlink() else None
        tmp_link = self.state_dir / f".{CURRENT_LINK}.tmp"
        tmp_link.unlink(missing_ok=True)
        os.symlink(folder.name, tmp_link)
        os.replace(tmp_link, self.current)
        _fsync_dir(self.state_dir)
        if previous and Path(previous) != folder.resolve():
            shutil.rmtree(previous, ignore_errors=True)
        return self.load(passphrase)

    def load(self, passphrase: bytes) -> DeviceIdentity:
        """Load the current identity and check that the key opens with the KEK."""
        if not self.exists():
            raise self.no_identity()
        folder = self.current.resolve()
        try:
            cert_pem = _read_private(folder / CERT_FILE, MAX_IDENTITY_FILE_BYTES, REPROVISION_FIX)
            ca_pem = _read_private(folder / CA_FILE, MAX_IDENTITY_FILE_BYTES, REPROVISION_FIX)
        except PermissionError as exc:
            raise self.access_error(exc, "read the device certificate") from None
        except OSError as exc:
            raise IdentityError(
                f"the device certificate files in {folder} are unreadable: {exc}",
                fix=REPROVISION_FIX,
            ) from None
        cert = load_certificate_in_full(cert_pem, f"the device certificate {folder / CERT_FILE}", REPROVISION_FIX)
        cas = load_certificates_in_full(ca_pem, f"the CA certificates {folder / CA_FILE}", REPROVISION_FIX)
        identity = DeviceIdentity(folder, cert, cas, passphrase)
        try:
            identity = DeviceIdentity(folder, cert, cas, passphrase, identity.private_key())
        except PermissionError as exc:
            raise self.access_error(exc, "read the device key") from None
        except OSError as exc:
            raise IdentityError(
                f"the device key in {folder} is unreadable: {exc}",
                fix="re-provision the device with a new token",
            ) from None
        except (ValueError, TypeError):
            raise IdentityError(
                "the device key does not open with the key-encryption key from the keyring",
                fix="check [keyring] (the credential must be the one used at provisioning), "
                "or re-provision the device with a new token",
            ) from None
        return identity

    def current_name(self) -> str | None:
        """The folder the ``identity`` link names now (one readlink), or None without one."""
        try:
            return os.readlink(self.current)
        except OSError:
            return None

    def changed(self, held: DeviceIdentity) -> DeviceIdentity | None:
        """The identity the link names now, if it is not ``held`` (renewed or re-provisioned elsewhere).

        Cheap when nothing changed (one readlink). Raises :class:`IdentityError`
        when the link names an identity that does not load.
        """
        name = self.current_name()
        if name is None:
            raise IdentityError(
                f"the device identity in {self.state_dir} is gone (no `{CURRENT_LINK}` link)",
                fix="re-provision the device with a new token",
            )
        if Path(name).name == held.directory.name:
            return None
        return self.load(held.passphrase)

    def _lock_for_writing(self) -> int:
        self.ensure_state_dir()
        try:
            fd = os.open(self.state_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise self.access_error(exc, f"open {LOCK_FILE}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # waits while another process renews or provisions
        except BaseException:
            os.close(fd)
            raise
        return fd

    @contextlib.asynccontextmanager
    async def writing(self) -> AsyncIterator[None]:
        """Hold ``identity.lock`` while replacing the identity: one renewal or provisioning at a time.

        The wait happens in a thread, so a daemon's event loop (and its watchdog) keeps running.
        """
        fd = await asyncio.to_thread(self._lock_for_writing)
        try:
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def provisioned_verifier_url(self) -> str | None:
        """The verifier URL this identity was provisioned with, or None (none stored, or not readable here).

        Why it is kept: an installer provisions with ``--verifier URL`` on the command line
        (the README's recipe) and starts the daemon, whose config may name no verifier; the
        device must keep talking to the verifier that issued its certificate, not a default.

        What is there instead of the one-line file the agent wrote (a symbolic link, a FIFO
        that would block the daemon's start, a directory, a file larger than any URL) is an
        :class:`IdentityError` naming the fix, read neither through nor without bound.
        """
        path = self.current / VERIFIER_FILE
        try:
            text = _read_private(path, MAX_VERIFIER_FILE_BYTES, verifier_file_fix(path))
        except OSError:
            return None
        try:
            url = text.decode("ascii").strip()
        except UnicodeDecodeError:
            return None
        return url or None

    def load_ca_certificates(self) -> tuple[x509.Certificate, ...]:
        """The trusted CA certificates, without needing the KEK (for doctor); read in full, else a
        :class:`CertificateDefect` (an OSError passes as it is, for the caller's own words)."""
        path = self.current / CA_FILE
        pem = _read_private(path, MAX_IDENTITY_FILE_BYTES, REPROVISION_FIX)
        return load_certificates_in_full(pem, f"the CA certificates {path}", REPROVISION_FIX)

    def load_certificate(self) -> x509.Certificate:
        """The device certificate, without needing the KEK; read in full, else a :class:`CertificateDefect`."""
        path = self.current / CERT_FILE
        pem = _read_private(path, MAX_IDENTITY_FILE_BYTES, REPROVISION_FIX)
        return load_certificate_in_full(pem, f"the device certificate {path}", REPROVISION_FIX)


def verifier_file_fix(path: Path) -> str:
    """How to repair the kept verifier URL file: remove it, or have provisioning write it again."""
    return (
        f"remove it (`rm -r {path}`; the agent then uses [verifier] url of its config file, so set that to the "
        "verifier's URL), or re-provision (`capture-agent provision --force --verifier URL ...`), which writes "
        "it again"
    )


@dataclass(frozen=True)
class ProvisionedVerifier:
    """The verifier URL kept at provisioning, checked and spelt as ``[verifier] url`` is, and where it is kept."""

    config: AgentConfig  # the config it was compared with, its [verifier] url now the kept one
    kept_in: Path
    elsewhere: bool  # the kept URL names another verifier than the config it was compared with

    @property
    def url(self) -> str:
        return self.config.verifier.url


def provisioned_verifier(config: AgentConfig, store: IdentityStore | None = None) -> ProvisionedVerifier | None:
    """The verifier URL this device was provisioned with, compared with the one ``config`` names; None if none kept.

    The one check behind the runtime (a config naming no verifier takes the kept URL), the client (a device on
    its provisioned URL follows a re-provisioning) and doctor (it names a kept URL the config overrides). Why
    compared after validation, not as text: the config spells a URL typed without a port with the verifier's
    port 8443, so a kept ``https://host`` (written by hand, or before that default) is the verifier of
    ``https://host:8443``, not another one to follow or to report.

    Raises :class:`~agent.errors.ConfigError` for a kept value that is no verifier URL (named as the file, not
    as ``[verifier] url``: the person never wrote it in a config), and :class:`IdentityError` for a kept file
    that is not the regular file the agent writes (:meth:`IdentityStore.provisioned_verifier_url`).
    """
    store = store or IdentityStore(config.agent.state_dir)
    url = store.provisioned_verifier_url()
    if url is None:
        return None
    kept_in = store.current / VERIFIER_FILE
    kept = config.with_overrides({"verifier.url": str(kept_in)}, verifier={"url": url})
    return ProvisionedVerifier(kept, kept_in, kept.verifier.url != config.verifier.url)


def identity_problem(identity: DeviceIdentity, pending: IdentityError | None = None) -> IdentityError | None:
    """Why this identity cannot sign a request the verifier accepts now, or None.

    ``pending`` is a failure to follow the state directory (its identity gone or
    unreadable); then a signature check with the key in memory, then the expiry.
    """
    if pending is not None:
        return pending
    try:
        key = identity.private_key()
        key.sign(b"capture-agent health", ec.ECDSA(hashes.SHA256()))
        if not certifies_key(identity.certificate, key):
            raise ValueError("the key does not match the certificate")
    except (OSError, ValueError, TypeError, IdentityError) as exc:
        return IdentityError(f"the device key cannot sign: {exc}", fix="re-provision the device with a new token")
    now = dt.datetime.now(dt.UTC)
    if now >= identity.not_after:
        return IdentityError(
            f"the device certificate expired on {identity.not_after:%Y-%m-%d %H:%M} UTC",
            fix="re-provision with a new token (`capture-verifier token new`, then `capture-agent provision --force`); "
            "first check the clock (`timedatectl`): one that runs ahead makes a valid certificate look expired, "
            "and `capture-agent doctor` compares it with the verifier's",
        )
    return None
