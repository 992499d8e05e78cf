"""`capture-agent forget`: a reader that refuses the delete, a crash's temporary, an answer slower than the wait.

Real parts: libfprint's virtual_device_storage (its ``ERROR n`` command makes the next operation, the delete
included, fail with libfprint's error n), the sealed store on disk, the CLI as its own process against a local API
socket that takes the request and never answers.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

from agent.devices.prints import SensorPrintStore
from tests.conftest import UnixStandIn, storage_reader

KEK = "forget-leftovers-kek-" + "k" * 32
NOT_SUPPORTED, NOT_OPEN, PROTO = 1, 2, 5  # FpDeviceError codes, as the virtual device's ERROR command takes them


def _enrolled(device, feeder, finger: str) -> bytes:
    scanning = threading.Thread(target=lambda: [feeder.scan(finger) for _ in range(device.enroll_stages)],
                                daemon=True)
    scanning.start()
    blob = device.enroll(20)
    scanning.join(20)
    return blob


def _forget_with_error(fprint_socket_dir: Path, store: SensorPrintStore, code: int) -> dict:
    """ana enrolled on a reader with storage, her print sealed; the reader then fails the delete with ``code``."""
    from agent.forget import forget

    async def scenario() -> dict:
        async with storage_reader(fprint_socket_dir) as (device, feeder):
            blob = await asyncio.to_thread(_enrolled, device, feeder, "ana")
            store.save("usb0", "ana", blob)
            await asyncio.to_thread(feeder.error, code)
            done = await forget([device], store, "ana")
            return {"done": done, "holds": await asyncio.to_thread(device.holds_print, blob),
                    "notes": list(store.folder.glob("*.forget"))}

    return asyncio.run(scenario())


def test_a_reader_that_cannot_delete_a_print_is_refused_for_good_not_told_to_plug_in(
    fprint_socket_dir, tmp_path: Path
) -> None:
    """The reader is there and answers NOT_SUPPORTED to the delete: its own outcome, REFUSED, whose line says the
    sensor keeps the print, that no later forget can delete it, and how to clear the reader's storage; the note
    naming the slot is erased (nothing a retry could use). Before: "could not be reached ... plug the reader in and
    run forget again", which could never succeed, and the note stayed for good."""
    store = SensorPrintStore(tmp_path / "prints", KEK)
    out = _forget_with_error(fprint_socket_dir, store, NOT_SUPPORTED)
    (done,) = out["done"]
    assert done.sensor == "refused" and not done.complete and done.sealed, done
    message = done.message()
    assert message.startswith("forgot ana's sealed print on usb0, but the reader refuses to delete its copy in the "
                              "sensor's storage ("), message
    assert "the sensor keeps it and no later forget can delete it" in message, message
    assert "vendor's tool" in message and "fp_device_clear_storage" in message, message
    assert "plug the reader in" not in message, message
    assert out["holds"] is True, "the sensor still holds the print (the delete was refused)"
    assert out["notes"] == [], "the note is erased: no retry can delete that print"
    assert done.audit()["sensor_copy"] == "refused"


def test_a_reader_that_fails_the_delete_keeps_the_note_and_is_told_its_fix_not_to_plug_in(
    fprint_socket_dir, tmp_path: Path
) -> None:
    """The reader is there but fails the delete (a protocol error: its fault, which a replug may clear): FAILED,
    the note kept for the next forget, and the line gives the driver's fix, not "plug the reader in" of a reader
    that was plugged in. Before: UNREACHABLE, "could not be reached ... plug the reader in"."""
    store = SensorPrintStore(tmp_path / "prints", KEK)
    out = _forget_with_error(fprint_socket_dir, store, PROTO)
    (done,) = out["done"]
    assert done.sensor == "failed" and not done.complete, done
    assert done.message().startswith("forgot ana's sealed print on usb0, but the reader failed to delete its copy in "
                                     "the sensor's storage ("), done.message()
    assert done.message().endswith("unplug and replug the reader, then run `capture-agent forget --subject ana "
                                   "--reader usb0` again"), done.message()
    assert len(out["notes"]) == 1, "the note stays: another forget may delete it"
    assert out["holds"] is True


def test_a_reader_closed_under_the_delete_is_unreachable_and_keeps_the_note(fprint_socket_dir, tmp_path: Path) -> None:
    """libfprint's NOT_OPEN is a usage error too, but a passing one (the reader closed under the request: it works
    once open again): the retry path, not "refused". Guards the line between a lasting refusal and a passing one."""
    store = SensorPrintStore(tmp_path / "prints", KEK)
    out = _forget_with_error(fprint_socket_dir, store, NOT_OPEN)
    (done,) = out["done"]
    assert done.sensor == "unreachable" and not done.complete, done
    assert "run `capture-agent forget --subject ana --reader usb0` again" in done.message(), done.message()
    assert len(out["notes"]) == 1 and out["holds"] is True


def _leave_temporary(store: SensorPrintStore, subject: str) -> Path:
    """What a crash inside the store's atomic write leaves: the next content of (usb0, subject), sealed, in its
    temporary, never renamed into place."""
    sealed = store._path("usb0", subject)
    temporary = sealed.with_suffix(".tmp")
    temporary.write_bytes(sealed.read_bytes())
    return temporary


def test_forget_erases_the_temporary_a_crash_left_holding_the_subjects_sealed_print(
    fprint_socket_dir, tmp_path: Path
) -> None:
    """A temporary of ana's (a sealed print of hers) left by a crash is written over and gone after forget; bob's
    is not touched by ana's forget. Before: forget never looked at it, and ana's sealed print stayed on disk."""
    from agent.config import DeviceSection
    from agent.devices.kinds import FprintDevice
    from agent.forget import forget

    store = SensorPrintStore(tmp_path / "prints", KEK)
    store.save("usb0", "ana", b"ana's print reference")
    store.save("usb0", "bob", b"bob's print reference")
    ana_tmp, bob_tmp = _leave_temporary(store, "ana"), _leave_temporary(store, "bob")
    watcher = tmp_path / "same-inode"
    os.link(ana_tmp, watcher)
    size, bob_before = watcher.stat().st_size, bob_tmp.read_bytes()
    section = DeviceSection(kind="fprint", selector="virtual_device_storage")
    device = FprintDevice(section, "usb0", env={"FP_VIRTUAL_DEVICE_STORAGE": str(fprint_socket_dir / "s.sock")})
    try:
        asyncio.run(forget([device], store, "ana"))  # never opened: the sealed copy goes, a note for the sensor
    finally:
        device.stop()
    assert not ana_tmp.exists(), "ana's leftover temporary is still on disk"
    assert watcher.read_bytes() == bytes(size), "written over before the unlink"
    assert bob_tmp.read_bytes() == bob_before, "bob's temporary is not ana's forget's business"


def test_opening_the_store_erases_the_temporaries_a_crash_left(tmp_path: Path) -> None:
    """The daemon's store, opened after a crash, writes over and removes every leftover temporary (a print's, an
    index's); the prints themselves stay. Before: they stayed for good, nothing reading or naming them."""
    store = SensorPrintStore(tmp_path / "prints", KEK)
    store.save("usb0", "ana", b"ana's print reference")
    temporary = _leave_temporary(store, "ana")
    (index,) = (tmp_path / "prints").glob("*.index")
    index_tmp = index.with_suffix(".tmp")
    index_tmp.write_bytes(index.read_bytes())
    watcher = tmp_path / "same-inode"
    os.link(temporary, watcher)
    size = watcher.stat().st_size
    reopened = SensorPrintStore(tmp_path / "prints", KEK)
    assert not temporary.exists() and not index_tmp.exists()
    assert watcher.read_bytes() == bytes(size)
    assert reopened.load("usb0", "ana") == b"ana's print reference" and reopened.subjects("usb0") == ["ana"]


def test_the_clis_wait_covers_every_reader_deleting_in_turn() -> None:
    """The wait for the answer grows with the libfprint readers configured (each delete waits the reader's own
    timeout, reader after reader), never below the old 60 s. Before: 60 s whatever the config."""
    from agent.config import parse_config
    from agent.forget import DELETES_PER_READER, SENSOR_DELETE_TIMEOUT_S, forget_wait_s

    def config(readers: int):
        devices = [{"kind": "fprint", "name": f"usb{i}", "selector": "virtual_device_storage"}
                   for i in range(readers)]
        return parse_config({"device": [*devices, {"kind": "zfm", "name": "finger", "port": "/dev/ttyUSB0"}]})

    assert forget_wait_s(config(0)) == 60.0
    assert forget_wait_s(config(1)) == 60.0
    six = forget_wait_s(config(6))
    assert six > 6 * DELETES_PER_READER * SENSOR_DELETE_TIMEOUT_S, six


class SilentAPI(UnixStandIn):
    """A local API socket that takes a request and never answers (a daemon still deleting on slow readers)."""

    def __init__(self, path: Path) -> None:
        self.requests: list[bytes] = []
        super().__init__(path)

    def answer(self, conn: socket.socket) -> None:
        self.held.append(conn)
        self.requests.append(conn.recv(65536))


def test_a_forget_answered_after_the_wait_says_the_daemon_may_still_be_erasing(tmp_path: Path) -> None:
    """The daemon took DELETE /prints/ana and has not answered within the wait: the CLI says it may still be
    erasing and where to look (the journal, the audit trail's prints_forgotten), exit 2. Before: "cannot reach the
    agent's local API ... start the daemon", of a daemon that had the request and carried on."""
    api_socket, config_file = tmp_path / "api.sock", tmp_path / "agent.toml"
    config_file.write_text(f'[api]\nsocket = "{api_socket}"\n')
    api = SilentAPI(api_socket)
    try:
        cli = subprocess.run(
            [sys.executable, "-m", "agent.cli", "--config", str(config_file), "--state-dir", str(tmp_path / "state"),
             "forget", "--subject", "ana", "--wait-s", "1"],
            capture_output=True, text=True, timeout=60,
        )
    finally:
        api.close()
    assert api.requests and api.requests[0].startswith(b"DELETE /prints/ana"), api.requests
    assert cli.returncode == 2, cli
    assert cli.stderr.startswith("error: the agent took the forget of ana but gave no answer within 1 s: it may "
                                 "still be erasing"), cli.stderr
    assert "cannot reach" not in cli.stderr
    assert "journalctl -u capture-agent" in cli.stderr and "prints_forgotten" in cli.stderr, cli.stderr
