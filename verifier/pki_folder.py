"""The operator's PKI folder, checked before any command uses it.

Why a check of its own: every `capture-verifier` command opens this folder, and an
operator points --pki at the wrong place often (a typo, a file, a folder another
tool made, a copy from another machine). Without this, such a folder showed a
Python traceback, or worse, `token new` stored a token and then failed to print
it. Each fault here is one :class:`PKIFolderError` whose ``fix`` says what to do.
Nothing here prints or logs key material: only paths and what is wrong with them.
"""

from __future__ import annotations

import errno
import sqlite3
import stat
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from verifier.pki import CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY, CertificateAuthority

MADE_BY = (
    "point --pki at the verifier's PKI folder: ca.pem, ca.key, server.pem, server.key, as `capture-verifier pki init` "
    "makes them (a site's own CA: as certs/README.md lays them out)"
)


class PKIFolderError(ValueError):
    """The PKI folder (or the database in it) cannot be used; ``fix`` names what to do."""

    def __init__(self, message: str, fix: str) -> None:
        super().__init__(message)
        self.fix = fix


def check_folder(pki_dir: Path, *, serving: bool) -> None:
    """Refuse a PKI folder the verifier cannot use; ``serving`` also checks the keys and the server certificate."""
    if not pki_dir.exists():
        raise PKIFolderError(
            f"no CA in {pki_dir}",
            fix=f"run `capture-verifier pki init {pki_dir}` first, or point --pki at your PKI folder",
        )
    if not pki_dir.is_dir():
        raise PKIFolderError(f"{pki_dir} is not a folder", fix=MADE_BY)
    _check_modes(pki_dir)
    ca_pem = _read(pki_dir / CA_CERT)
    try:
        x509.load_pem_x509_certificates(ca_pem)
    except ValueError:
        raise PKIFolderError(
            f"{pki_dir / CA_CERT} holds no PEM certificate (a folder another tool made?)", fix=MADE_BY
        ) from None
    if not serving:
        return
    for name in (CA_KEY, SERVER_CERT, SERVER_KEY):
        _read(pki_dir / name)
    try:
        CertificateAuthority.load(pki_dir)
    except (ValueError, TypeError) as exc:
        raise PKIFolderError(f"the CA in {pki_dir} cannot sign: {_reason(exc)}", fix=MADE_BY) from None
    try:
        server = x509.load_pem_x509_certificate(_read(pki_dir / SERVER_CERT))
        key = serialization.load_pem_private_key(_read(pki_dir / SERVER_KEY), None)
    except (ValueError, TypeError) as exc:
        raise PKIFolderError(
            f"{pki_dir / SERVER_CERT} or {SERVER_KEY} cannot be read: {_reason(exc)}", fix=MADE_BY
        ) from None
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if server.public_key().public_bytes(serialization.Encoding.DER, spki) != key.public_key().public_bytes(
        serialization.Encoding.DER, spki
    ):
        raise PKIFolderError(
            f"{pki_dir / SERVER_KEY} is not the key of {SERVER_CERT}",
            fix="put the server certificate and its own key side by side (both from the same issuance)",
        )


def _check_modes(pki_dir: Path) -> None:
    """Refuse a folder others may write, a CA certificate others may replace, a key others may read.

    A copy made without keeping the modes (`cp -r` or an archive unpacked under
    umask 022, another machine's backup) leaves the keys 0644: every local user
    could then sign device certificates with ca.key. A folder or ca.pem that others
    may write lets them choose which devices this verifier trusts.
    """
    folder_mode = pki_dir.stat().st_mode
    if folder_mode & 0o022:
        raise PKIFolderError(
            f"{pki_dir} may be written by {_who(folder_mode & 0o022)} (mode {stat.S_IMODE(folder_mode):04o}): "
            "they could replace ca.pem and choose which devices this verifier trusts",
            fix=f"chmod 700 {pki_dir} (pki init makes it so)",
        )
    for name, allowed in ((CA_CERT, 0o022), (CA_KEY, 0o077), (SERVER_KEY, 0o077)):
        path = pki_dir / name
        try:
            mode = path.lstat().st_mode
        except OSError:
            continue  # missing or unreadable: named where the file is read
        if stat.S_ISREG(mode) and mode & allowed:
            what = "written" if allowed == 0o022 else "read"
            raise PKIFolderError(
                f"{path} may be {what} by {_who(mode & allowed)} (mode {stat.S_IMODE(mode):04o})"
                + ("" if allowed == 0o022 else ": a copy that did not keep the modes?"),
                fix=f"chmod 600 {path} (pki init makes every file of the folder 0600)",
            )


def _who(bits: int) -> str:
    """Who the offending permission bits let in."""
    return "other users" if bits & 0o007 else "its group"


def _read(path: Path) -> bytes:
    """A PKI file's bytes: a regular file only (a directory or a FIFO there is named, never waited on)."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise PKIFolderError(f"{path} is missing", fix=MADE_BY) from None
    except OSError as exc:
        raise PKIFolderError(f"cannot read {path}: {exc.strerror}", fix=_access_fix(path.parent)) from None
    if not stat.S_ISREG(mode):
        raise PKIFolderError(f"{path} is not a regular file", fix=MADE_BY)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise PKIFolderError(f"cannot read {path}: {exc.strerror}", fix=_access_fix(path.parent)) from None


def _reason(exc: Exception) -> str:
    """The first sentence of a library's message (cryptography's PEM errors add a URL and an internal code)."""
    return str(exc).split(". See ")[0].split("\n")[0]


def _access_fix(pki_dir: Path) -> str:
    return f"run the command as the verifier's user (the owner of {pki_dir}), or give it the folder (chown -R)"


def database_error(database: Path, exc: sqlite3.Error | OSError) -> PKIFolderError:
    """The error for a database that cannot be opened or written, naming why and what to do.

    Only a file sqlite says is not a database (or is malformed) is called one: a full
    disk shows as "disk I/O error" too (the WAL's shared memory cannot grow), and
    "restore it from its backup" would be the wrong advice for that.
    """
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    space = f"free space on the file system of {database.parent} (`df -h {database.parent}`)"
    if isinstance(exc, OSError) or "readonly" in reason or "read-only" in reason or "unable to open" in reason:
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            return PKIFolderError(f"cannot write the database {database}: {reason}", fix=space)
        return PKIFolderError(f"cannot open the database {database}: {reason}", fix=_access_fix(database.parent))
    if "locked" in reason or "busy" in reason:
        return PKIFolderError(
            f"the database {database} stayed locked for 10 s ({reason})",
            fix="another process holds a long write on it (a backup, an sqlite3 shell left in a transaction); "
            "end it, then run the command again",
        )
    if "full" in reason or "I/O" in reason:
        return PKIFolderError(
            f"the database {database} cannot be written: {reason}",
            fix=f"{space}; then check the disk (`dmesg`)",
        )
    if "not a database" in reason or "malformed" in reason:
        return PKIFolderError(
            f"{database} is not a verifier database ({reason})",
            fix="point --pki at the verifier's own folder; a damaged database: restore it from its backup",
        )
    return PKIFolderError(f"cannot use the database {database}: {reason}", fix=f"{space}, and check its permissions")
