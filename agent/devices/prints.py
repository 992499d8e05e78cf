"""Prints enrolled on match-on-sensor readers, kept by the agent encrypted at rest.

A match-on-sensor reader gives no image and no template the verifier could
match: what libfprint hands over after an enrolment is a serialized print
(``FpPrint.serialize()``), a reference the sensor needs back to verify the same
finger. The agent keeps one file per (device, subject) under the state
directory, each sealed with AES-GCM under a key derived from the
key-encryption key (HKDF, its own label: a different key from the outbox's),
with the device and subject as associated data, so a file moved to another
subject or device does not open.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from agent.errors import AgentError

HKDF_INFO = b"capture-agent sensor prints v1"
INDEX, NOTED = "index", "noted"  # a device's sealed lists: subjects with a print kept, with a note for the sensor
PRINTS_FOLDER = "prints"  # in the state directory: the sealed prints of every match-on-sensor reader
_NAME = re.compile(r"^[A-Za-z0-9._@-]{1,128}$")


class PrintStoreError(AgentError):
    """A stored print is missing, or does not decrypt."""


class SensorPrintStore:
    def __init__(self, folder: Path, kek: str) -> None:
        self.folder = folder
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=HKDF_INFO).derive(kek.encode())
        self._aead = AESGCM(key)
        self._sweep_leftovers()

    def _sweep_leftovers(self) -> None:
        """Erase the temporaries a crash inside :func:`_write_private` left (written over, as removed prints are).

        Why: such a ``.tmp`` holds a whole sealed print, note or index that nothing reads and nothing named, so no
        forget erased it. The store is opened once, by the daemon that owns it, before any write of its own.
        """
        try:
            leftovers = sorted(self.folder.glob("*.tmp"))
        except OSError:  # no folder yet: nothing was ever written
            return
        for path in leftovers:
            _overwrite_and_unlink(path)

    def discard_leftover(self, device: str, subject: str) -> bool:
        """Erase the temporary of (device, subject)'s print and note, if a crash left one: a forget must not leave a
        sealed print of the subject behind in it. True when there was one."""
        return _overwrite_and_unlink(_temporary(self._path(device, subject)))

    def _path(self, device: str, subject: str) -> Path:
        for value in (device, subject):
            if not _NAME.match(value):
                raise PrintStoreError(f"bad name {value!r} for a stored print", fix="use letters, digits, . _ @ -")
        digest = hashlib.sha256(f"{device}\0{subject}".encode()).hexdigest()[:32]
        return self.folder / f"{digest}.print"

    def save(self, device: str, subject: str, serialized: bytes) -> str:
        """Seal and keep a print; its id (the sealing nonce, new each time) for the verifier's reference."""
        path = self._path(device, subject)
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Listed first, as a note is: a failure or a power cut between the two writes leaves a name without a
        # print (a forget or a clearing drops it), never a sealed print that nothing names, which a clearing of
        # the reader (it finds prints through this index) left on disk while saying it was complete.
        self._index(device, add=subject)
        nonce = secrets.token_bytes(12)
        _write_private(path, nonce + self._aead.encrypt(nonce, serialized, f"{device}\0{subject}".encode()))
        return nonce.hex()

    def snapshot(self, device: str, subject: str) -> bytes | None:
        """The sealed file as it is (None: no print), to put back with :meth:`restore` if a change fails."""
        try:
            return self._path(device, subject).read_bytes()
        except FileNotFoundError:
            return None

    def restore(self, device: str, subject: str, sealed: bytes | None) -> None:
        """Put back what :meth:`snapshot` returned: the previous print, or none."""
        if sealed is None:
            self.delete(device, subject)
            return
        self._index(device, add=subject)  # listed first (see :meth:`save`)
        _write_private(self._path(device, subject), sealed)

    def print_id(self, device: str, subject: str) -> str:
        """The id of the print kept for (device, subject): what the verifier knows a hash of."""
        return self.load_with_id(device, subject)[0]

    def load_with_id(self, device: str, subject: str) -> tuple[str, bytes]:
        """(print id, serialized print), both from one read of the sealed file.

        Why one read: the id is the nonce at the head of the file, and an enrolment of the same subject on the
        same reader (or `capture-agent forget`) may replace or remove the file at any time. Read twice, the id of
        the new print could be paired with the bytes of the old one, and the verifier then got an assertion
        naming a print hash that is not the print the sensor matched. From one read, the id is the nonce the
        print was decrypted with (AES-GCM authenticates it), so the pair is always one print's.
        """
        sealed = self._sealed(device, subject)
        try:
            serialized = self._aead.decrypt(sealed[:12], sealed[12:], f"{device}\0{subject}".encode())
        except InvalidTag:
            raise PrintStoreError(
                f"the stored print of {subject} on {device} does not decrypt",
                fix="the file was altered or the key-encryption key changed: enroll again",
            ) from None
        return sealed[:12].hex(), serialized

    def load(self, device: str, subject: str) -> bytes:
        return self.load_with_id(device, subject)[1]

    def _sealed(self, device: str, subject: str) -> bytes:
        """The sealed file of (device, subject), read once; a typed error when there is none."""
        try:
            return self._path(device, subject).read_bytes()
        except FileNotFoundError:
            raise PrintStoreError(
                f"no print of {subject} enrolled on {device}", fix=f"enroll {subject} on the reader {device} first"
            ) from None

    def delete(self, device: str, subject: str) -> None:
        """A print taken back (an enrolment the verifier refused): written over and unlinked, as :meth:`remove`."""
        _overwrite_and_unlink(self._path(device, subject))
        self._index(device, discard=subject)

    def remove(self, device: str, subject: str) -> bool:
        """Erase the print kept for (device, subject): its file written over with zeros, synced, then unlinked,
        and the subject taken out of the device's sealed index. True when there was one.

        Why written over first: an unlinked file's blocks keep the sealed bytes until reused. That is as far as
        a program can go: on flash (an SD card, an SSD) the controller remaps writes, so the old blocks may
        survive in spare area whatever is written; there is no secure erase of one file. What is left is
        sealed (AES-GCM under a key derived from the key-encryption key), so rotating the KEK is what makes
        such remnants unreadable for good.
        """
        path = self._path(device, subject)
        listed = subject in self._index(device)
        there = _overwrite_and_unlink(path)
        if listed:
            self._index(device, discard=subject)
        return there or listed

    def hold_for_sensor(self, device: str, subject: str, references: list[bytes]) -> None:
        """Keep, sealed, what the reader needs to delete its own copies of forgotten prints, until it can.

        Why: a reader with storage keeps the print on the sensor too, and deleting it there takes the print the
        agent kept (for such readers a reference to the sensor's slot). Forgotten while the reader is unplugged,
        the kept print is removed (no session can use it any more) and this note, apart from the prints and out
        of the index, lets the next `capture-agent forget` finish on the sensor. A list: the subject may have
        enrolled again (another finger) before that next forget, and the note must then name both slots, not
        only the newest (one note per subject held only the last, and the older slot was left on the sensor
        with nothing naming it).
        """
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._names(device, NOTED, add=subject)  # listed first: a crash before the note leaves a name, not a note
        nonce = secrets.token_bytes(12)
        aad = f"{device}\0{subject}\0forget".encode()
        body = json.dumps([r.hex() for r in references]).encode()
        _write_private(self._note(device, subject), nonce + self._aead.encrypt(nonce, body, aad))

    def held_for_sensor(self, device: str, subject: str) -> list[bytes]:
        """The references :meth:`hold_for_sensor` kept ([]: none, or a note that does not decrypt any more)."""
        try:
            sealed = self._note(device, subject).read_bytes()
        except FileNotFoundError:
            return []
        try:
            body = self._aead.decrypt(sealed[:12], sealed[12:], f"{device}\0{subject}\0forget".encode())
        except InvalidTag:
            return []
        try:
            return [bytes.fromhex(r) for r in json.loads(body)]
        except (ValueError, TypeError):  # a note of one raw reference, as the first version wrote it
            return [body]

    def keep_replaced(self, device: str, subject: str, sealed: bytes) -> None:
        """An enrolment replaced the print ``sealed`` (as :meth:`snapshot` gave it) on a reader with storage:
        its reference joins the note for the sensor, so that a forget of the subject deletes that slot too.

        Why: the replaced print stays in the sensor's storage (a print of the same person, another finger), and
        once its sealed copy is written over nothing on the device named it: a forget said "complete" and left
        it there. One that does not decrypt names nothing and is not kept.
        """
        try:
            old = self._aead.decrypt(sealed[:12], sealed[12:], f"{device}\0{subject}".encode())
        except InvalidTag:
            return
        held = self.held_for_sensor(device, subject)
        if old not in held:
            self.hold_for_sensor(device, subject, [*held, old])

    def kept(self, device: str, subject: str) -> bool:
        """Whether a sealed print of (device, subject) is on disk: named in the index, or its file there.

        Why the file too: :meth:`save` wrote the print before the index in earlier versions, so a power cut
        between the two left a print the index does not name, which a session still loads (by its path) and a
        forget that asked the index only called "nothing to forget", leaving it on disk.
        """
        return subject in self._index(device) or self._path(device, subject).exists()

    def has_note(self, device: str, subject: str) -> bool:
        """Whether a note for the sensor is on disk, whether or not it still decrypts."""
        return self._note(device, subject).exists()

    def release_for_sensor(self, device: str, subject: str) -> None:
        """The sensor's copy is gone: the note is erased as the prints are (see :meth:`remove`)."""
        _overwrite_and_unlink(self._note(device, subject))
        if subject in self._names(device, NOTED):
            self._names(device, NOTED, discard=subject)

    def noted(self, device: str) -> list[str]:
        """The subjects with a note for ``device``'s sensor (a sealed list, as :meth:`subjects` is), so that
        clearing a reader (``capture-agent forget --everyone``) erases the notes of subjects whose sealed print is
        gone already: a note's file name says nothing of whose it is. Notes written before this list existed are
        not in it (their subject's own forget still finds them)."""
        return self._names(device, NOTED)

    def _note(self, device: str, subject: str) -> Path:
        return self._path(device, subject).with_suffix(".forget")

    def subjects(self, device: str) -> list[str]:
        """The subjects with a print kept for ``device`` (a sealed index: file names say nothing)."""
        return self._index(device)

    def _index(self, device: str, add: str = "", discard: str = "") -> list[str]:
        """Read, and when asked change, the sealed list of subjects of one device."""
        return self._names(device, INDEX, add, discard)

    def _names(self, device: str, kind: str, add: str = "", discard: str = "") -> list[str]:
        """Read, and when asked change, one of a device's sealed lists of subjects (``kind``: INDEX, NOTED)."""
        path = self._path(device, kind).with_suffix(f".{kind}")
        aad = f"{device}\0{kind}".encode()
        names: list[str] = []
        if path.exists():
            sealed = path.read_bytes()
            try:
                names = json.loads(self._aead.decrypt(sealed[:12], sealed[12:], aad))
            except InvalidTag:
                if kind == NOTED:  # it only helps a clearing find notes: one the key no longer opens is started anew
                    names = []
                else:
                    raise PrintStoreError(
                        f"the index of prints on {device} does not decrypt",
                        fix="the file was altered or the key-encryption key changed: enroll again",
                    ) from None
        if not add and not discard:
            return names
        names = sorted((set(names) | {add}) - {discard, ""})
        nonce = secrets.token_bytes(12)
        _write_private(path, nonce + self._aead.encrypt(nonce, json.dumps(names).encode(), aad))
        return names


def _write_private(path: Path, data: bytes) -> None:
    """Replace ``path`` atomically with ``data``, readable by the owner only; the replaced file written over.

    Never a half-written print or index, a power cut on a kiosk included: the
    data reaches the disk before the rename, and the rename before we return.
    The file replaced (an index naming a forgotten subject, an older print) is
    written over with zeros once the new one is in place: the rename alone left
    its sealed bytes in freed blocks (see :meth:`SensorPrintStore.remove`).
    """
    tmp = _temporary(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    try:
        old = os.open(path, os.O_WRONLY)
    except FileNotFoundError:
        old = None
    try:
        os.replace(tmp, path)
        folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
        if old is not None:
            _zero(old)
    finally:
        if old is not None:
            os.close(old)


def _temporary(path: Path) -> Path:
    """Where :func:`_write_private` writes ``path``'s next content first (one per (device, subject): the print's
    and the note's share it)."""
    return path.with_suffix(".tmp")


def _zero(fd: int) -> None:
    """Write zeros over the whole file open as ``fd`` and sync them."""
    os.pwrite(fd, bytes(os.fstat(fd).st_size), 0)
    os.fsync(fd)


def _overwrite_and_unlink(path: Path) -> bool:
    """Write zeros over ``path``'s bytes, sync them, and unlink it (then sync the folder); False: no such file.

    Best effort by nature: see :meth:`SensorPrintStore.remove` (no secure erase on flash).
    """
    try:
        fd = os.open(path, os.O_WRONLY)
    except FileNotFoundError:
        return False
    try:
        _zero(fd)
    finally:
        os.close(fd)
    path.unlink(missing_ok=True)
    folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
    return True
