"""`capture-agent forget`: erase a subject's prints from this device's match-on-sensor readers.

The verifier's ``capture-verifier subject remove`` erases what the verifier holds; for a match-on-sensor reader
the enrolled print lives here instead: sealed in the agent's store (:mod:`agent.devices.prints`), per reader,
and, for a reader with its own storage (libfprint's STORAGE feature), on the sensor too. Forgetting removes
both, reader by reader, through the device's owner (the daemon's, so it never fights a session for the reader).

A reader that cannot be reached (unplugged, never opened) still loses the sealed print at once: no session can
use it any more. Its sensor copy is then kept track of by a sealed note (``hold_for_sensor``) so that the same
command, once the reader is back, finishes on the sensor; said so, with that command. So is a reader that failed
the delete (its driver's fault, "unplug and replug"): another try may succeed.

A reader that is there but refuses the delete for good (libfprint's NOT_SUPPORTED: its driver cannot delete one
print; DATA_INVALID) is REFUSED: no later forget can do better, so the note is erased as the sealed copy is (it
is a sealed print reference, which an erasure must not leave behind), and the line says the sensor keeps the
print and how to clear the reader's storage (its vendor's tool, or libfprint's ``fp_device_clear_storage`` on a
reader with the STORAGE_CLEAR feature: it erases every print the reader holds, everyone's).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from agent.devices.errors import DeviceError
from agent.devices.prints import PrintStoreError, SensorPrintStore
from agent.errors import AgentError
from drivers.errors import UsageError
from drivers.fprint.errors import UnreadablePrint

log = structlog.get_logger()

# What became of the sensor's copy, per reader
DELETED = "deleted"  # it was on the sensor, and is not any more
NOT_THERE = "not_there"  # the sensor had none left (deleted before, or reset)
NO_STORAGE = "no_storage"  # the reader keeps no prints of its own: the sealed copy was the only one
UNREACHABLE = "unreachable"  # the reader could not be asked: the note is kept for the next forget
UNKNOWN = "unknown"  # the sealed copy did not decrypt: the sensor's slot cannot be named (see the message)
FAILED = "failed"  # the reader was there but failed the delete (its fault): the note is kept for another try
REFUSED = "refused"  # the reader is there but will never delete it (cannot delete one print): the note is erased
CLEARED = "cleared"  # the reader's whole storage was emptied (forget --everyone): every print on it, everyone's
ONE_BY_ONE = "one_by_one"  # (a clearing) the reader cannot list its prints: those the agent kept deleted singly

# How long one delete on a sensor may take (the reader's own bound), and how many a reader may be asked per forget
# in the worst case the CLI waits for (the current print and one an enrolment replaced; more are rare).
SENSOR_DELETE_TIMEOUT_S = 10.0
DELETES_PER_READER = 2
FORGET_SLACK_S = 30.0  # the files, the audit events, the owner thread finishing what it ran
FORGET_WAIT_FLOOR_S = 60.0  # never less than the wait the CLI had before it was derived from the config

CLEAR_STORAGE_FIX = (
    "clear the reader's storage with its vendor's tool, or with libfprint's fp_device_clear_storage if the reader "
    "has the STORAGE_CLEAR feature (it erases every print the reader holds: enroll the others again after)"
)


def forget_wait_s(config: Any) -> float:
    """How long the CLI waits for the daemon's answer to a forget: past the daemon's worst case.

    Why: it was 60 s whatever the config. The daemon asks each libfprint reader in turn, and each delete on a
    sensor may wait its own timeout (a reader that stopped answering); with several such readers the daemon took
    longer, and the CLI said "cannot reach the agent" while the daemon was still erasing.
    """
    readers = sum(1 for d in getattr(config, "device", ()) if d.kind == "fprint")
    longest = readers * DELETES_PER_READER * SENSOR_DELETE_TIMEOUT_S + FORGET_SLACK_S
    return max(FORGET_WAIT_FLOOR_S, longest)


class NothingToForget(AgentError):
    """No reader of this device holds a print of the subject (a typo, another device, or forgotten already)."""

    def __init__(self, subject: str, readers: Sequence[str]) -> None:
        if not readers:  # a kiosk of serial modules and cameras: "check the subject id" sent the operator astray
            super().__init__(
                "nothing to forget: this device has no libfprint reader, the only kind the agent keeps prints "
                "for (a serial module's or a camera's captures are sent as templates, which the verifier holds)",
                f"remove {subject}'s templates on the verifier: capture-verifier subject remove --pki DIR {subject}",
            )
            return
        super().__init__(
            f"nothing to forget: no print of {subject} is kept for this device's readers ({', '.join(readers)})",
            "check the subject id (ids are case-sensitive) and the device it was enrolled on; templates the "
            "verifier holds are removed there (capture-verifier subject remove)",
        )


class NoSuchReader(AgentError):
    def __init__(self, name: str, readers: Sequence[str]) -> None:
        super().__init__(
            f"no [[device]] is named {name!r} (devices: {', '.join(readers) or 'none'})",
            "name one of the configured devices with --reader, or none (every reader is looked at)",
        )


class NotAPrintReader(NoSuchReader):
    """``--reader`` names a device that is not a libfprint reader: the agent keeps no prints for it. Said as
    such (a 400), not as "nothing to forget ... (none)" with exit 1, which read as if the subject had none."""

    def __init__(self, name: str, kind: str) -> None:
        AgentError.__init__(
            self,
            f"the device {name} is a {kind or 'non-libfprint'} device: the agent keeps no prints for it (only "
            "libfprint readers have prints kept here)",
            "name a libfprint [[device]] with --reader, or none (every libfprint reader is looked at); a serial "
            "module's templates are removed on the verifier (capture-verifier subject remove)",
        )


class ForgetNotAudited(AgentError):
    """The audit trail could not store that a reader's prints are being erased: they are not (not yet)."""

    def __init__(self, subject: str, reader: str, done: Sequence[Forgotten]) -> None:
        before = "".join(f"; before it: {f.message()}" for f in done)
        super().__init__(
            f"nothing of {subject} on {reader} is forgotten: the audit event could not be stored{before}",
            "free space in the agent's state directory (or make it writable), then run the same forget again",
        )


def pick_readers(kinds: Sequence[tuple[str, str]], reader: str = "") -> list[str]:
    """The names of the readers to look at, of the configured (name, kind) pairs: every libfprint reader, or
    the one ``reader`` names; :class:`NoSuchReader` or :class:`NotAPrintReader` when that is not one.

    Only libfprint readers have prints kept for them (a serial module or a camera never does)."""
    names = [name for name, _ in kinds]
    if reader and reader not in names:
        raise NoSuchReader(reader, names)
    kind = dict(kinds).get(reader, "")
    if reader and kind != "fprint":
        raise NotAPrintReader(reader, kind)
    return [name for name, kind in kinds if (not reader or name == reader) and kind == "fprint"]


def holds_any(store: SensorPrintStore, reader: str, subject: str) -> bool:
    """Whether the store keeps anything of ``subject`` for ``reader``: a sealed print or a note for its sensor."""
    return store.kept(reader, subject) or store.has_note(reader, subject)


@dataclass(frozen=True)
class Forgotten:
    """What was erased of one subject on one reader, said as one line."""

    subject: str
    reader: str
    sealed: bool  # a sealed copy was removed now
    sensor: str  # DELETED, NOT_THERE, NO_STORAGE, UNREACHABLE, FAILED, REFUSED or UNKNOWN
    why: str = ""  # for UNREACHABLE, FAILED, REFUSED and UNKNOWN: what stood in the way
    fix: str = ""  # for FAILED: the driver's fix; for UNREACHABLE, a reader that could not be set up: its fix

    @property
    def complete(self) -> bool:
        return self.sensor in (DELETED, NOT_THERE, NO_STORAGE, CLEARED)

    def message(self) -> str:
        again = f"capture-agent forget --subject {self.subject} --reader {self.reader}"
        if self.sensor == UNREACHABLE:
            head = (f"forgot {self.subject}'s sealed print on {self.reader}, but the copy in the sensor's storage"
                    if self.sealed else f"{self.subject}'s print is still in the storage of the sensor {self.reader}:"
                    " it")
            if self.fix:  # a reader that could not even be set up: plugging it in is not what it needs
                return (f"{head} could not be reached ({self.why}): {self.fix}, then run `{again}` again to delete it "
                        "there")
            return (f"{head} could not be reached ({self.why}): plug the reader in and run `{again}` again to "
                    "delete it there")
        if self.sensor == FAILED:
            head = (f"forgot {self.subject}'s sealed print on {self.reader}, but the reader failed to delete its copy"
                    " in the sensor's storage" if self.sealed else
                    f"{self.subject}'s print is still in the storage of the sensor {self.reader}: the reader failed to"
                    " delete it")
            return f"{head} ({self.why}): {self.fix or 'unplug and replug the reader'}, then run `{again}` again"
        if self.sensor == REFUSED:
            head = (f"forgot {self.subject}'s sealed print on {self.reader}, but the reader refuses to delete its copy"
                    " in the sensor's storage" if self.sealed else
                    f"{self.subject}'s print is still in the storage of the sensor {self.reader}: the reader refuses "
                    "to delete it")
            return (f"{head} ({self.why}); the sensor keeps it and no later forget can delete it: {CLEAR_STORAGE_FIX}")
        if self.sensor == UNKNOWN:
            head = (f"forgot {self.subject}'s sealed print on {self.reader}, but the copy in the sensor's storage"
                    if self.sealed else f"{self.subject}'s print may still be in the storage of the sensor "
                    f"{self.reader}: it")
            return (f"{head} cannot be named ({self.why}): clear the reader's storage with its vendor's tool, or "
                    "enroll that finger again and forget it")
        before = "" if self.sealed else "the sealed copy was removed before; "
        what = {
            DELETED: "sealed copy and sensor storage" if self.sealed else f"sensor storage; {before.rstrip('; ')}",
            NOT_THERE: f"{before or 'sealed copy; '}the sensor held no copy any more",
            NO_STORAGE: f"{before or 'sealed copy; '}the reader keeps no prints of its own",
            CLEARED: f"{before or 'sealed copy; '}the sensor's storage was emptied",
        }[self.sensor]
        return f"forgot {self.subject}'s print on {self.reader} ({what})"

    def audit(self) -> dict[str, Any]:
        """The ``prints_forgotten`` event's data: who, where, what was erased; never a print's bytes."""
        return {"subject": self.subject, "reader": self.reader, "sealed_copy": self.sealed,
                "sensor_copy": self.sensor}


def forget_on(device: Any, store: SensorPrintStore, subject: str) -> Forgotten | None:
    """Erase ``subject``'s print on one reader (blocking: run in a worker thread); None when it has none.

    A temporary a crash left for the subject is erased first (see :meth:`SensorPrintStore.discard_leftover`).
    The note for the sensor is written before the sealed print is removed: a crash between the two leaves
    the note, never a sensor copy nobody can name. The note may already name slots of an earlier forget that
    could not reach the reader (the subject enrolled again since, another finger): those are deleted too.
    """
    name = device.name
    store.discard_leftover(name, subject)  # a crash's temporary may hold a sealed print of the subject
    sealed = store.kept(name, subject)
    if sealed and store.snapshot(name, subject) is None:  # listed, never written (a save cut short): a name only
        store.remove(name, subject)
        sealed = False
    references = store.held_for_sensor(name, subject)
    if not sealed and not references:
        if not store.has_note(name, subject):
            return None
        # A note that does not decrypt (the KEK changed): it names no slot any more, and was left on disk for
        # good ("nothing to forget"). Erased, and the sensor's copy said to be unnameable.
        store.release_for_sensor(name, subject)
        return Forgotten(subject, name, False, UNKNOWN, "the note naming its slot on the sensor does not decrypt")
    if sealed:
        try:
            current = store.load(name, subject)
        except PrintStoreError as exc:  # it does not decrypt: removed all the same, its sensor slot unnamed
            store.remove(name, subject)  # (a note of earlier slots stays for the next forget)
            return Forgotten(subject, name, True, UNKNOWN, f"the sealed print does not decrypt: {exc.message}")
        if current not in references:
            references.append(current)
    if getattr(device, "stores_prints", False) is False:  # known to keep nothing on the reader
        store.remove(name, subject)
        store.release_for_sensor(name, subject)
        return Forgotten(subject, name, sealed, NO_STORAGE)
    store.hold_for_sensor(name, subject, references)
    store.remove(name, subject)
    return _delete_on_sensor(device, store, subject, sealed, references)


def _delete_on_sensor(device: Any, store: SensorPrintStore, subject: str, sealed: bool,
                      references: list[bytes]) -> Forgotten:
    """Delete each held reference on the reader; the note keeps those not deleted yet, for another try.

    A reference the reader refuses for good (a lasting usage error: it cannot delete one print, or the print is
    not one it takes) is dropped like an unreadable one: no later try can do better. Only a reader that could not
    be asked (unplugged, closed) or failed (its fault) keeps the note, with the advice that may work.
    """
    name, deleted, unreadable, refused, left = device.name, False, "", "", list(references)
    try:
        if not device.connected:  # unplugged, or never set up (agent.devices.supervisor.Unmade says why)
            raise _Unreachable(getattr(device, "why_unreachable", "not connected"))
        while left:
            try:
                deleted = device.delete_print(left[0], SENSOR_DELETE_TIMEOUT_S) or deleted
            except UnreadablePrint as exc:  # libfprint cannot read it: no later try can name that slot either
                unreadable = f"libfprint cannot read the print kept for it: {exc.why}"
            except UsageError as exc:
                if not getattr(exc, "lasting", True):  # the reader closed under the delete: it works once open
                    raise _Unreachable(exc.args[0]) from exc
                refused = str(exc.args[0] if exc.args else exc)
            left.pop(0)
            if left:
                store.hold_for_sensor(name, subject, left)
    except (_Unreachable, DeviceError) as exc:
        why = exc.args[0] if isinstance(exc, _Unreachable) else exc.message
        unmade_fix = getattr(device, "fix", "") if hasattr(device, "why_unreachable") else ""
        return Forgotten(subject, name, sealed, UNREACHABLE, why, unmade_fix)
    except Exception as exc:  # the reader's own failure (typed by its driver): the note stays for another try
        return Forgotten(subject, name, sealed, FAILED, str(exc.args[0] if exc.args else exc),
                         getattr(exc, "fix", ""))
    store.release_for_sensor(name, subject)
    if refused:
        return Forgotten(subject, name, sealed, REFUSED, refused)
    if unreadable:
        return Forgotten(subject, name, sealed, UNKNOWN, unreadable)
    return Forgotten(subject, name, sealed, DELETED if deleted else NOT_THERE)


class _Unreachable(Exception):
    pass


def _said(forgotten: Forgotten | None, record: Callable[[str, dict[str, Any]], Any], done: list[Forgotten]) -> None:
    """One subject's erasure on one reader, if there was one: audited (``prints_forgotten``), logged, kept."""
    if forgotten is None:
        return
    record("prints_forgotten", forgotten.audit())
    log.info("prints_forgotten", **forgotten.audit(), complete=forgotten.complete)
    done.append(forgotten)


async def forget(
    devices: Sequence[Any], store: SensorPrintStore, subject: str, reader: str = "",
    record: Callable[[str, dict[str, Any]], Any] = lambda kind, data: None,
) -> list[Forgotten]:
    """Erase ``subject``'s prints on every reader (or the one named ``reader``), each audited
    (``prints_forgotten``) and logged; :class:`NothingToForget` when none held one.

    ``devices`` is every configured device, those that could not be set up included
    (:class:`agent.devices.supervisor.Unmade`): a reader whose libfprint went missing still has sealed prints
    here, which must be erasable (before, the daemon passed only the devices made, and such a reader's prints
    were "nothing to forget" for good)."""
    names = pick_readers([(d.name, getattr(d, "kind", "")) for d in devices], reader)
    chosen = [d for d in devices if d.name in names]
    done: list[Forgotten] = []
    for device in chosen:
        if not await asyncio.to_thread(holds_any, store, device.name, subject):
            continue
        # Audited before anything is erased (on the loop's thread: it owns the audit trail): an erasure whose
        # event cannot be stored does not happen. The daemon's record says False then (a full or read-only
        # disk since the local API asked), and was not looked at: the prints went, unaudited, answered 200.
        if record("prints_forgetting", {"subject": subject, "reader": device.name}) is False:
            raise ForgetNotAudited(subject, device.name, done)
        _said(await asyncio.to_thread(forget_on, device, store, subject), record, done)
    if not done:
        raise NothingToForget(subject, [d.name for d in chosen])
    return done


# ---------------------------------------------------------------- clearing a reader (forget --everyone)
CLEAR_TIMEOUT_S = 30.0  # the CLI's extra wait for a clearing (the listing, then one delete per print on the sensor)


class NoReaderNamed(NoSuchReader):
    """A clearing asked without naming the reader: it erases everyone's prints, so it is one named reader at a
    time, never every reader by default."""

    def __init__(self, readers: Sequence[str]) -> None:
        AgentError.__init__(
            self,
            "clearing erases every print of a reader, everyone's: name the reader (devices: "
            f"{', '.join(readers) or 'none'})",
            "name one libfprint [[device]]: capture-agent forget --everyone --reader NAME",
        )


@dataclass(frozen=True)
class Cleared:
    """What a clearing did to one reader's own storage (said first, before each subject's line)."""

    reader: str
    sensor: str  # CLEARED, NO_STORAGE, ONE_BY_ONE, UNREACHABLE or FAILED
    why: str = ""
    fix: str = ""
    deleted: int = 0  # for CLEARED: the prints the sensor held, everyone's
    unlisted: str = ""  # why the agent's own list of the prints it keeps for the reader could not be read

    @property
    def complete(self) -> bool:
        """The sensor holds no print any more, and every print the agent keeps for the reader could be named (an
        index that does not decrypt names none).

        Not ONE_BY_ONE: only the prints the agent knew were deleted, one by one, and any other (software's
        enrolment elsewhere) stays on the sensor; a clearing promises everyone's, and exit 0 says all is erased
        (it counted as complete, and a reader handed back on that exit kept a print)."""
        return self.sensor in (CLEARED, NO_STORAGE) and not self.unlisted

    def message(self) -> str:
        line = self._sensor_line()
        if not self.unlisted:
            return line
        return (f"{line}; but the list of the prints the agent keeps for {self.reader} does not decrypt "
                f"({self.unlisted}): the prints sealed under the former key stay on disk, unreadable without it; "
                "put the former key-encryption key back and run the same command again to erase them, or erase "
                "them with the whole prints folder of the state directory (every reader's)")

    def _sensor_line(self) -> str:
        again = f"capture-agent forget --everyone --reader {self.reader}"
        if self.sensor == CLEARED:
            held = "it held no print" if self.deleted == 0 else (
                f"deleted the {self.deleted} prints it held, everyone's" if self.deleted > 1 else
                "deleted the one print it held")
            return f"emptied the storage of the reader {self.reader}: {held}"
        if self.sensor == NO_STORAGE:
            return (f"the reader {self.reader} keeps no prints of its own: the agent's sealed copies were the only "
                    "ones")
        if self.sensor == ONE_BY_ONE:
            return (f"the reader {self.reader} cannot list its storage ({self.why}): the prints the agent kept for "
                    "it are deleted one by one below; any other print on it stays until its vendor's tool clears it")
        if self.sensor == UNREACHABLE:
            step = self.fix or "plug the reader in"
            return (f"the storage of the reader {self.reader} could not be reached ({self.why}): the prints on it "
                    f"stay; {step}, then run `{again}` again")
        return (f"the reader {self.reader} failed to empty its storage ({self.why}): "
                f"{self.fix or 'unplug and replug the reader'}, then run `{again}` again")

    def audit(self) -> dict[str, Any]:
        said = {"reader": self.reader, "sensor_storage": self.sensor, "sensor_prints_deleted": self.deleted}
        return {**said, "index_unreadable": True} if self.unlisted else said


def _clear_sensor(device: Any) -> Cleared:
    """Empty the reader's whole storage (blocking: run in a worker thread), or say why it was not."""
    name = device.name
    unmade_fix = getattr(device, "fix", "") if hasattr(device, "why_unreachable") else ""
    if not device.connected:
        return Cleared(name, UNREACHABLE, getattr(device, "why_unreachable", "not connected"), unmade_fix)
    if getattr(device, "stores_prints", None) is False:
        return Cleared(name, NO_STORAGE)
    try:
        deleted = device.empty_storage(SENSOR_DELETE_TIMEOUT_S)
    except UsageError as exc:
        why = str(exc.args[0] if exc.args else exc)
        if not getattr(exc, "lasting", True):  # closed under the request: it works once open again
            return Cleared(name, UNREACHABLE, why)
        return Cleared(name, ONE_BY_ONE, why)  # it cannot list: what the agent knows is deleted singly
    except DeviceError as exc:
        return Cleared(name, UNREACHABLE, exc.message)
    except Exception as exc:  # the reader's own failure (typed by its driver): its fix, and another try
        return Cleared(name, FAILED, str(exc.args[0] if exc.args else exc), getattr(exc, "fix", ""))
    return Cleared(name, CLEARED, deleted=deleted)


def _kept_for(store: SensorPrintStore, reader: str) -> tuple[list[str], str]:
    """The subjects the store keeps a print or a note of for ``reader``, and why its index could not be read.

    Why an index that does not decrypt (the KEK changed, the file altered) does not stop a clearing: the sensor's
    own storage needs no key to be emptied, and the clearing is the operator's way out for such a reader (the
    index's fix, enroll again, cannot work: an enrolment writes the same index). Before, the clearing refused
    before anything and left every print on the sensor."""
    noted = store.noted(reader)
    try:
        kept = store.subjects(reader)
    except PrintStoreError as exc:
        return sorted(set(noted)), exc.message
    return sorted(set(kept) | set(noted)), ""


def _drop_kept(store: SensorPrintStore, reader: str, subject: str, sensor: str) -> Forgotten | None:
    """After the sensor was cleared (or keeps nothing): the subject's sealed print, note and any crash temporary
    erased; None when there was nothing of it."""
    store.discard_leftover(reader, subject)
    if not holds_any(store, reader, subject):
        store.release_for_sensor(reader, subject)  # a name left in the list of notes, without its note
        return None
    sealed = store.remove(reader, subject)
    store.release_for_sensor(reader, subject)
    return Forgotten(subject, reader, sealed, sensor)


async def forget_everyone(
    devices: Sequence[Any], store: SensorPrintStore, reader: str,
    record: Callable[[str, dict[str, Any]], Any] = lambda kind, data: None,
) -> tuple[Cleared, list[Forgotten]]:
    """Clear one reader: every print on its sensor (listed and deleted: everyone's, those other software enrolled
    included) and everything the agent keeps for it (sealed prints, notes for the sensor).

    Why: a reader handed back, repaired or retired must leave with no one's print, and the fixes for a print the
    agent cannot delete singly (REFUSED, a finger already on the sensor) pointed to a vendor's tool. Audited
    before anything is erased (``prints_forgetting`` with ``everyone``), each subject's erasure as a forget's
    (``prints_forgotten``), then ``reader_cleared``. A reader that cannot clear at once, or cannot be reached
    now, falls back to each subject's own forget (the prints the agent knows deleted singly, or their notes kept
    for the next try), so a clearing never erases less than a forget of each subject would.
    """
    kinds = [(d.name, getattr(d, "kind", "")) for d in devices]
    if not reader:
        raise NoReaderNamed([name for name, kind in kinds if kind == "fprint"])
    (name,) = pick_readers(kinds, reader)
    device = next(d for d in devices if d.name == name)
    subjects, unlisted = await asyncio.to_thread(_kept_for, store, name)
    if record("prints_forgetting", {"reader": name, "everyone": True}) is False:
        raise ForgetNotAudited("everyone", name, [])
    cleared = await asyncio.to_thread(_clear_sensor, device)
    if unlisted:
        cleared = dataclasses.replace(cleared, unlisted=unlisted)
    done: list[Forgotten] = []
    for subject in subjects:
        if cleared.sensor in (CLEARED, NO_STORAGE):
            forgotten = await asyncio.to_thread(_drop_kept, store, name, subject, cleared.sensor)
        else:
            forgotten = await asyncio.to_thread(forget_on, device, store, subject)
        _said(forgotten, record, done)
    record("reader_cleared", {**cleared.audit(), "subjects": len(done)})
    log.info("reader_cleared", **cleared.audit(), subjects=len(done))
    return cleared, done
