"""`capture-agent forget`'s erasure gaps, found in review: what a forget left on disk, on the sensor, or unaudited.

Real parts: libfprint's virtual_device_storage (a reader that keeps prints on the sensor too), the agent's sealed
store on disk (real files, real AES-GCM), the local API on a real unix socket.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
from pathlib import Path

import httpx
import pytest

from agent.config import DeviceSection
from agent.devices.prints import PrintStoreError, SensorPrintStore
from agent.errors import AgentError
from tests.conftest import storage_reader

KEK = "forget-erasure-test-kek-" + "k" * 32


def _scans(feeder, finger: str, count: int) -> threading.Thread:
    thread = threading.Thread(target=lambda: [feeder.scan(finger) for _ in range(count)], daemon=True)
    thread.start()
    return thread


def _unopened_reader(fprint_socket_dir: Path):
    """A libfprint reader the agent never opened (so not connected): a forget erases the sealed copy only."""
    from agent.devices.kinds import FprintDevice

    section = DeviceSection(kind="fprint", selector="virtual_device_storage")
    return FprintDevice(section, "usb0", env={"FP_VIRTUAL_DEVICE_STORAGE": str(fprint_socket_dir / "s.sock")})


def _is_gone(store: SensorPrintStore, subject: str) -> bool:
    try:
        store.load("usb0", subject)
    except PrintStoreError:
        return True
    return False


def test_a_forget_after_an_unplugged_one_and_a_re_enrolment_deletes_both_slots_on_the_sensor(
    fprint_socket_dir, tmp_path
) -> None:
    """ana is forgotten while the reader is unplugged (her sensor slot A is kept in a note), then enrolls again
    with another finger (slot B) before anyone finishes that forget; the next forget deletes A and B on the sensor.

    Before, the note held one print: the second forget wrote B over A's reference, deleted B, erased the note,
    said "complete", and A stayed in the sensor's storage with nothing on the device naming it."""
    from agent.forget import forget

    store = SensorPrintStore(tmp_path / "prints", KEK)

    async def scenario() -> dict:
        async with storage_reader(fprint_socket_dir) as (device, feeder):

            async def enrolled(finger: str) -> bytes:
                scanning = _scans(feeder, finger, device.enroll_stages)
                blob = await asyncio.to_thread(device.enroll, 20)
                await asyncio.to_thread(scanning.join, 20)
                return blob

            out: dict = {}
            slot_a = await enrolled("ana-left")
            store.save("usb0", "ana", slot_a)
            device.connected = False  # as after an unplug the supervisor saw (the reader is kept open here)
            out["unplugged"] = await forget([device], store, "ana")
            device.connected = True
            slot_b = await enrolled("ana-right")
            store.save("usb0", "ana", slot_b)
            out["second"] = await forget([device], store, "ana")
            out["holds"] = {name: await asyncio.to_thread(device.holds_print, blob)
                            for name, blob in (("A", slot_a), ("B", slot_b))}
            return out

    out = asyncio.run(scenario())
    assert [f.sensor for f in out["unplugged"]] == ["unreachable"]
    assert out["holds"] == {"A": False, "B": False}, "a slot of ana's is left in the sensor's storage"
    assert [f.message() for f in out["second"]] == ["forgot ana's print on usb0 (sealed copy and sensor storage)"]
    assert not list((tmp_path / "prints").glob("*.forget")), "the note goes once both slots are deleted"


def test_a_forget_whose_audit_event_cannot_be_stored_erases_nothing(fprint_socket_dir, tmp_path) -> None:
    """The audit trail failing after the local API asked (the daemon's record says False): ana's print stays,
    and the refusal says so with its fix. Before, the return of record was not looked at: erased, unaudited."""
    from agent.forget import forget

    store = SensorPrintStore(tmp_path / "prints", KEK)
    store.save("usb0", "ana", b"ana's print reference")
    device = _unopened_reader(fprint_socket_dir)
    tried: list[str] = []

    def failing_record(kind: str, data: dict) -> bool:
        tried.append(kind)
        return False  # what AgentDaemon.record answers when the outbox cannot store an event

    try:
        with pytest.raises(AgentError) as refused:
            asyncio.run(forget([device], store, "ana", record=failing_record))
    finally:
        device.stop()
    assert store.load("usb0", "ana") == b"ana's print reference" and store.subjects("usb0") == ["ana"]
    assert str(refused.value.message).startswith("nothing of ana on usb0 is forgotten: the audit event could not "
                                                 "be stored"), refused.value
    assert "free space" in refused.value.fix and tried == ["prints_forgetting"]


def test_the_local_api_answers_503_when_the_forget_cannot_be_audited(fprint_socket_dir, tmp_path) -> None:
    """Through the route: DELETE /prints/ana with an audit trail that stops storing is 503 with the fix."""
    from agent.forget import forget
    from agent.localapi import LocalAPI

    store = SensorPrintStore(tmp_path / "prints", KEK)
    store.save("usb0", "ana", b"ana's print reference")
    device = _unopened_reader(fprint_socket_dir)
    socket_path = tmp_path / "api.sock"

    async def scenario() -> httpx.Response:
        api = LocalAPI(socket_path, lambda emit, **kw: None,
                       forget=lambda subject, reader: forget([device], store, subject, reader,
                                                             record=lambda kind, data: False))
        await api.start()
        try:
            transport = httpx.AsyncHTTPTransport(uds=str(socket_path))
            async with httpx.AsyncClient(transport=transport, base_url="http://agent", timeout=30) as http:
                return await http.delete("/prints/ana")
        finally:
            await api.stop()

    try:
        answer = asyncio.run(scenario())
    finally:
        device.stop()
    assert answer.status_code == 503, answer.text
    assert "the audit event could not be stored" in answer.json()["error"] and answer.json()["fix"]
    assert store.load("usb0", "ana") == b"ana's print reference"


def test_the_index_naming_a_forgotten_subject_is_written_over_not_only_replaced(tmp_path: Path) -> None:
    """The sealed index is replaced by a rename when ana leaves it: the old file (naming ana) is written over
    with zeros, as the print is. Seen through a hard link to the old index. Before, its bytes stayed as they were."""
    store = SensorPrintStore(tmp_path / "prints", KEK)
    store.save("usb0", "ana", b"ana's print reference")
    store.save("usb0", "bob", b"bob's print reference")
    (index,) = (tmp_path / "prints").glob("*.index")
    old_index = tmp_path / "old-index"
    os.link(index, old_index)
    size = old_index.stat().st_size
    assert store.remove("usb0", "ana") is True
    assert store.subjects("usb0") == ["bob"]
    assert old_index.read_bytes() == bytes(size), "the index naming ana still holds its sealed bytes"


def test_an_enrolment_taken_back_writes_its_print_over(tmp_path: Path) -> None:
    """restore(None) (the verifier refused the enrolment): the print is written over before the unlink."""
    store = SensorPrintStore(tmp_path / "prints", KEK)
    store.save("usb0", "ana", b"ana's print reference")
    (kept,) = (tmp_path / "prints").glob("*.print")
    watcher = tmp_path / "same-inode"
    os.link(kept, watcher)
    size = watcher.stat().st_size
    store.restore("usb0", "ana", None)
    assert _is_gone(store, "ana") and store.subjects("usb0") == []
    assert watcher.read_bytes() == bytes(size)


def test_a_print_the_index_does_not_name_is_forgotten_too(fprint_socket_dir, tmp_path) -> None:
    """A power cut between the print's write and the index's (save writes the print first) leaves a print the
    index does not name, and a session still loads it by its path. Forget erases it. Before, forget asked the
    index only: "nothing to forget", and the print stayed on disk, usable."""
    from agent.forget import forget

    store = SensorPrintStore(tmp_path / "prints", KEK)
    store.save("usb0", "bob", b"bob's print reference")
    (index,) = (tmp_path / "prints").glob("*.index")
    before = index.read_bytes()  # the index as it was before ana's save: the state the power cut leaves
    store.save("usb0", "ana", b"ana's print reference")
    index.write_bytes(before)
    assert store.subjects("usb0") == ["bob"] and store.load("usb0", "ana") == b"ana's print reference"
    device = _unopened_reader(fprint_socket_dir)
    try:
        done = asyncio.run(forget([device], store, "ana"))
    finally:
        device.stop()
    assert [(f.subject, f.sealed) for f in done] == [("ana", True)]
    assert _is_gone(store, "ana") and store.load("usb0", "bob") == b"bob's print reference"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the caller as another user in the socket's group")
@pytest.mark.skipif(shutil.which("curl") is None, reason="curl (the README's local API client) is the caller")
def test_a_member_of_the_sockets_group_who_is_not_the_operator_may_not_forget(fprint_socket_dir) -> None:
    """A process of another user in the socket's group (as the kiosk app is) asks DELETE /prints/ana: 403, ana's
    print stays, and the refusal is audited. Before, the group was the whole rule: the kiosk app's user could
    erase every subject's prints on the device, which no verifier is asked about and nothing undoes."""
    import subprocess
    import tempfile

    from agent.forget import forget
    from agent.localapi import LocalAPI

    folder = Path(tempfile.mkdtemp(prefix="fg-"))
    folder.chmod(0o755)  # the caller, another user, passes through it to the socket
    store = SensorPrintStore(folder / "prints", KEK)
    store.save("usb0", "ana", b"ana's print reference")
    device = _unopened_reader(fprint_socket_dir)
    socket_path = folder / "api.sock"
    recorded: list[tuple[str, dict]] = []

    async def scenario() -> subprocess.CompletedProcess[str]:
        api = LocalAPI(socket_path, lambda emit, **kw: None, group="nogroup",
                       record=lambda kind, data: recorded.append((kind, data)),
                       forget=lambda subject, reader: forget([device], store, subject, reader))
        await api.start()
        try:
            return await asyncio.to_thread(
                subprocess.run, ["curl", "-s", "-i", "--unix-socket", str(socket_path), "-X", "DELETE",
                                 "http://agent/prints/ana"],
                user=65534, group=65534, extra_groups=[], capture_output=True, text=True, timeout=30, cwd="/")
        finally:
            await api.stop()

    try:
        answer = asyncio.run(scenario())
        left = store.subjects("usb0")
    finally:
        device.stop()
        shutil.rmtree(folder, ignore_errors=True)
    assert answer.stdout.startswith("HTTP/1.1 403"), (answer.stdout, answer.stderr)
    assert "only root or the agent's own user may forget prints" in answer.stdout
    assert left == ["ana"], "ana's print was erased"
    assert recorded == [("prints_forget_refused", {"subject": "ana", "uid": 65534})], recorded


def test_a_reader_named_that_keeps_no_prints_is_refused_as_such_not_nothing_to_forget(tmp_path: Path) -> None:
    """`forget --reader finger` naming a serial module: refused saying it is a zfm device the agent keeps no
    prints for, with the fix. Before: "nothing to forget: no print of ana is kept for this device's readers
    (none)", exit 1, as if ana had no prints on a libfprint reader either."""
    from agent.devices.kinds import ZfmDevice
    from agent.forget import forget

    store = SensorPrintStore(tmp_path / "prints", KEK)
    module = ZfmDevice(DeviceSection(kind="zfm", port=str(tmp_path / "ttyUSB9")), "finger", state_dir=tmp_path)
    try:
        with pytest.raises(AgentError) as refused:
            asyncio.run(forget([module], store, "ana", reader="finger"))
    finally:
        module.stop()  # its owner thread
    assert refused.value.message.startswith("the device finger is a zfm device: the agent keeps no prints for it")
    assert "--reader" in refused.value.fix


def test_forget_on_a_device_without_a_libfprint_reader_says_so_and_names_the_verifier(tmp_path: Path) -> None:
    """A kiosk with only a serial module: `forget --subject ana` said "no print of ana is kept for this device's
    readers (none)" and told the operator to check the subject id, which was fine: the device keeps no prints
    at all, and ana's templates are the verifier's to remove."""
    from agent.devices.kinds import ZfmDevice
    from agent.forget import NothingToForget, forget

    store = SensorPrintStore(tmp_path / "prints", KEK)
    module = ZfmDevice(DeviceSection(kind="zfm", port=str(tmp_path / "ttyUSB9")), "finger", state_dir=tmp_path)
    try:
        with pytest.raises(NothingToForget) as nothing:
            asyncio.run(forget([module], store, "ana"))
    finally:
        module.stop()  # its owner thread
    assert nothing.value.message.startswith("nothing to forget: this device has no libfprint reader")
    assert "capture-verifier subject remove --pki DIR ana" in nothing.value.fix
    assert "check the subject id" not in nothing.value.fix


def test_a_print_replaced_by_a_re_enrolment_is_deleted_on_the_sensor_by_forget(
    provisioned, verifier, fprint_socket_dir, tmp_path
) -> None:
    """ana enrolled her left finger on a reader with storage, then (verified first) enrolled her right finger:
    the agent keeps the new print, and the left one is still in the sensor's storage. forget deletes both.

    Before, the replaced print's sealed copy was overwritten and nothing on the device named its slot any more:
    forget deleted the right finger, said "complete", and the left finger's print stayed on the sensor."""
    from agent.client import VerifierClient
    from agent.forget import forget
    from agent.sensor_sessions import SensorSession

    config, identity = provisioned
    verifier.allow(identity.device_id, sensor="accept")
    store = SensorPrintStore(tmp_path / "prints", KEK)

    async def scenario() -> dict:
        out: dict = {}
        async with storage_reader(fprint_socket_dir) as (device, feeder), VerifierClient(config, identity) as client:

            def session(fingers: list[str]) -> SensorSession:
                def at_sensor(event: dict) -> None:
                    if event["type"] == "prompt" and event["code"] == "place_finger" and fingers:
                        threading.Thread(target=feeder.scan, args=(fingers.pop(0),), daemon=True).start()

                return SensorSession(device, client, store, emit=at_sensor)

            stages = device.enroll_stages
            await session(["ana-left"] * stages).enroll("ana")
            left = store.load("usb0", "ana")
            await session(["ana-left"] + ["ana-right"] * stages).enroll("ana", verify_first=True)
            right = store.load("usb0", "ana")
            out["two prints"] = left != right
            out["done"] = await forget([device], store, "ana")
            out["holds"] = {name: await asyncio.to_thread(device.holds_print, blob)
                            for name, blob in (("left", left), ("right", right))}
        return out

    out = asyncio.run(scenario())
    assert out["two prints"]
    assert out["holds"] == {"left": False, "right": False}, "a finger of ana's is left in the sensor's storage"
    assert [f.message() for f in out["done"]] == ["forgot ana's print on usb0 (sealed copy and sensor storage)"]
    assert not list((tmp_path / "prints").glob("*.forget"))


def test_a_note_that_no_longer_decrypts_is_erased_not_left_as_nothing_to_forget(fprint_socket_dir, tmp_path) -> None:
    """A note for the sensor sealed under a key-encryption key since changed names no slot any more: forget
    erases it and says the sensor's copy cannot be named. Before: "nothing to forget", the file left for good."""
    from agent.forget import UNKNOWN, forget

    SensorPrintStore(tmp_path / "prints", "an-older-kek-" + "o" * 32).hold_for_sensor("usb0", "ana", [b"slot 7"])
    store = SensorPrintStore(tmp_path / "prints", KEK)
    device = _unopened_reader(fprint_socket_dir)
    try:
        done = asyncio.run(forget([device], store, "ana"))
    finally:
        device.stop()
    assert [(f.sensor, f.sealed) for f in done] == [(UNKNOWN, False)]
    assert done[0].message().startswith("ana's print may still be in the storage of the sensor usb0: it cannot be "
                                        "named (the note naming its slot on the sensor does not decrypt)")
    assert not list((tmp_path / "prints").glob("*.forget"))
