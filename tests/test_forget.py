"""`capture-agent forget`: a subject's prints erased from this device's match-on-sensor readers.

Real parts: libfprint's virtual_device_storage (a reader that keeps prints on the sensor too), the agent's
sealed store on disk, the daemon as its own process with its local API, and the verifier for enrolments.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from agent.config import DeviceSection
from agent.devices.prints import PrintStoreError, SensorPrintStore
from tests.conftest import start_agent_daemon

KEK = "forget-test-kek-" + "k" * 32


def _scans(feeder, finger: str, count: int) -> threading.Thread:
    thread = threading.Thread(target=lambda: [feeder.scan(finger) for _ in range(count)], daemon=True)
    thread.start()
    return thread


def _events(config, verifier) -> list[dict]:
    """The device's audit trail: delivered to the verifier, or still in the outbox."""
    from agent.keystore import load_kek
    from agent.outbox import Outbox

    with sqlite3.connect(verifier.pki_dir / "verifier.sqlite") as db:
        delivered = [json.loads(body) for (body,) in db.execute("SELECT body FROM audit_events ORDER BY seq")]
    return delivered + Outbox(config.agent.state_dir / "outbox.sqlite", load_kek(config)).pending(100)


def test_the_daemon_forgets_a_subject_on_the_sensor_and_in_its_store(provisioned, verifier, fprint_socket_dir,
                                                                    tmp_path) -> None:
    """Enrolled on a reader with storage through the running daemon, ana is forgotten with DELETE /prints/ana:
    her sealed print is gone from the store on disk, an identification by her finger names nobody (the sensor
    and the store both lost her), bob is still identified, and the erasure is audited per reader without a
    print's bytes. `capture-agent forget` then says there is nothing left of ana (exit 1) and forgets bob.

    Before, the daemon had no such route (404) and ana's sealed print stayed on disk and on the sensor."""
    from agent.devstack import write_config_file
    from agent.keystore import load_kek
    from simulators.fprint import VirtualDeviceFeeder

    config, identity = provisioned
    verifier.allow(identity.device_id, sensor="accept")
    sensor_socket = fprint_socket_dir / "storage.sock"
    api_socket = tmp_path / "api.sock"
    config_file = write_config_file(
        tmp_path / "agent.toml", config,
        f'[api]\nsocket = "{api_socket}"\n[logging]\nlevel = "error"\n'
        '[[device]]\nkind = "fprint"\nname = "usb0"\nselector = "virtual_device_storage"\n',
    )
    daemon = start_agent_daemon(config_file, env={**os.environ, "FP_VIRTUAL_DEVICE_STORAGE": str(sensor_socket)})
    feeder = VirtualDeviceFeeder(sensor_socket, timeout_s=20)

    async def session(http: httpx.AsyncClient, request: dict, finger: str) -> dict:
        created = await http.post("/sessions", json=request)
        assert created.status_code == 201, created.text
        async with http.stream("GET", created.json()["events"]) as stream:
            async for line in stream.aiter_lines():
                if not line.startswith("data: "):
                    continue
                event = json.loads(line[6:])
                if event.get("type") == "prompt" and event.get("code") == "place_finger":
                    await asyncio.to_thread(feeder.scan, finger)
        return event  # the last one: the result, or the error

    async def scenario() -> dict:
        transport = httpx.AsyncHTTPTransport(uds=str(api_socket))
        async with httpx.AsyncClient(transport=transport, base_url="http://agent", timeout=60) as http:
            deadline = time.monotonic() + 30
            while True:  # the reader is open once /health names it connected
                try:
                    devices = (await http.get("/health")).json()["devices"]
                    if devices and devices[0]["connected"]:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "the daemon never opened its reader"
                await asyncio.sleep(0.1)
            out = {}
            for subject in ("ana", "bob"):
                out[f"enroll {subject}"] = await session(
                    http, {"operation": "enroll", "subject": subject, "reader": "match-on-sensor"}, subject)
            waiting = (await http.post("/sessions", json={"operation": "identify", "reader": "usb0"})).json()
            out["while a session runs"] = await http.delete("/prints/ana")  # nobody scans: the session holds usb0
            assert (await http.delete(f"/sessions/{waiting['id']}")).status_code == 202
            deadline = time.monotonic() + 30
            while (await http.get("/health")).json()["busy"]:
                assert time.monotonic() < deadline, "the cancelled identification never freed the reader"
                await asyncio.sleep(0.05)
            out["no such reader"] = await http.delete("/prints/ana", params={"reader": "usb9"})
            out["forget"] = await http.delete("/prints/ana")
            out["identify ana"] = await session(http, {"operation": "identify", "reader": "usb0"}, "ana")
            out["identify bob"] = await session(http, {"operation": "identify", "reader": "usb0"}, "bob")
        return out

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "agent.cli", "--config", str(config_file), *args],
                              capture_output=True, text=True, timeout=60)

    try:
        out = asyncio.run(scenario())
        store = SensorPrintStore(config.agent.state_dir / "prints", load_kek(config))
        still_there = store.subjects("usb0")
        again, bob = cli("forget", "--subject", "ana"), cli("forget", "--subject", "bob", "--reader", "usb0")
        after_bob = store.subjects("usb0")
        emptied = cli("forget", "--everyone", "--reader", "usb0")  # the daemon's route for a clearing
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(30)
    assert out["enroll ana"]["type"] == "result" and out["enroll bob"]["type"] == "result", out
    assert still_there == ["bob"], "ana's sealed print is out of the store's index"
    assert out["identify ana"].get("candidates") == [], out["identify ana"]
    assert out["while a session runs"].status_code == 409, out["while a session runs"].text
    refused = out["no such reader"]
    assert refused.status_code == 400 and refused.json()["error"] == "no [[device]] is named 'usb9' (devices: usb0)"
    assert out["forget"].status_code == 200, out["forget"].text
    forgotten = out["forget"].json()
    assert forgotten["complete"] is True, forgotten
    assert [f["message"] for f in forgotten["forgotten"]] == [
        "forgot ana's print on usb0 (sealed copy and sensor storage)"
    ], forgotten
    assert not list((config.agent.state_dir / "prints").glob("*.forget")), "no note left: the sensor's copy is gone"
    try:
        store.load("usb0", "ana")
        raise AssertionError("ana's sealed print is still on disk")
    except PrintStoreError as exc:
        assert "no print of ana" in str(exc)
    assert out["identify bob"].get("candidates") == [{"subject": "bob", "score": 1.0}], out["identify bob"]
    assert again.returncode == 1, again
    assert again.stderr.startswith("error: nothing to forget: no print of ana is kept for this device's readers "
                                   "(usb0)"), again.stderr
    assert "capture-verifier subject remove" in again.stderr, again.stderr
    assert bob.returncode == 0 and bob.stdout == "forgot bob's print on usb0 (sealed copy and sensor storage)\n", bob
    assert after_bob == []
    assert emptied.returncode == 0 and emptied.stdout == "emptied the storage of the reader usb0: it held no print\n", (
        emptied)
    events = _events(config, verifier)
    erased = [e["data"] for e in events if e["type"] == "prints_forgotten"]
    assert erased == [
        {"subject": "ana", "reader": "usb0", "sealed_copy": True, "sensor_copy": "deleted"},
        {"subject": "bob", "reader": "usb0", "sealed_copy": True, "sensor_copy": "deleted"},
    ], erased


def test_forget_on_the_reader_deletes_the_sensors_copy_and_an_unplugged_one_finishes_later(
    fprint_socket_dir, tmp_path
) -> None:
    """On the device itself: after forget, the sensor's own list (libfprint's list_prints) no longer holds ana's
    print and the same finger enrolls again (libfprint refused it before: "This finger has already enrolled"),
    while bob's stays. A reader not connected loses the sealed copy at once; the message says the sensor's copy
    could not be reached and the command that finishes; a note (sealed, out of the index) names the sensor's slot
    for it, and the same forget with the reader back deletes it there. Nothing to forget is its own error."""
    from agent.devices.kinds import FprintDevice
    from agent.forget import UNREACHABLE, NothingToForget, forget
    from simulators.fprint import VirtualDeviceFeeder

    socket = fprint_socket_dir / "storage.sock"
    section = DeviceSection(kind="fprint", selector="virtual_device_storage", check_interval_s=0.1)
    store = SensorPrintStore(tmp_path / "prints", KEK)
    recorded: list[tuple[str, dict]] = []

    async def scenario() -> dict:
        device = FprintDevice(section, "usb0", env={"FP_VIRTUAL_DEVICE_STORAGE": str(socket)})
        await device.open()
        feeder = VirtualDeviceFeeder(socket)
        out: dict = {}

        async def enrolled(finger: str) -> bytes:
            scanning = _scans(feeder, finger, device.enroll_stages)
            blob = await asyncio.to_thread(device.enroll, 20)
            await asyncio.to_thread(scanning.join, 20)
            return blob

        try:
            prints = {finger: await enrolled(finger) for finger in ("ana", "bob")}
            for finger, blob in prints.items():
                store.save("usb0", finger, blob)
            record = lambda kind, data: recorded.append((kind, data))  # noqa: E731
            out["done"] = await forget([device], store, "ana", record=record)
            out["holds"] = {f: await asyncio.to_thread(device.holds_print, b) for f, b in prints.items()}
            out["enrolled again"] = await enrolled("ana")  # the sensor had it: DATA_DUPLICATE before
            store.save("usb0", "ana", out["enrolled again"])
            try:
                await forget([device], store, "carol", record=record)
            except NothingToForget as exc:
                out["nothing"] = exc
            device.connected = False  # as after an unplug the supervisor saw (the reader is kept open here)
            out["unplugged"] = await forget([device], store, "ana", record=record)
            out["sealed after unplugged"] = store.subjects("usb0")
            out["holds while unplugged"] = await asyncio.to_thread(device.reader.holds, out["enrolled again"])
            out["still unplugged"] = await forget([device], store, "ana", record=record)
            device.connected = True  # plugged back in
            out["finished"] = await forget([device], store, "ana", record=record)
            out["holds at the end"] = await asyncio.to_thread(device.holds_print, out["enrolled again"])
        finally:
            await device.close()
        return out

    out = asyncio.run(scenario())
    assert [f.message() for f in out["done"]] == ["forgot ana's print on usb0 (sealed copy and sensor storage)"]
    assert out["holds"] == {"ana": False, "bob": True}
    assert out["enrolled again"]
    assert str(out["nothing"]).startswith("nothing to forget: no print of carol"), out["nothing"]
    (unplugged,) = out["unplugged"]
    assert unplugged.sensor == UNREACHABLE and not unplugged.complete
    assert unplugged.message() == (
        "forgot ana's sealed print on usb0, but the copy in the sensor's storage could not be reached (not "
        "connected): plug the reader in and run `capture-agent forget --subject ana --reader usb0` again to "
        "delete it there"
    ), unplugged.message()
    assert out["sealed after unplugged"] == ["bob"] and out["holds while unplugged"] is True
    assert [f.message() for f in out["still unplugged"]] == [
        "ana's print is still in the storage of the sensor usb0: it could not be reached (not connected): plug the "
        "reader in and run `capture-agent forget --subject ana --reader usb0` again to delete it there"
    ]
    assert [f.message() for f in out["finished"]] == [
        "forgot ana's print on usb0 (sensor storage; the sealed copy was removed before)"
    ]
    assert out["holds at the end"] is False
    assert not list((tmp_path / "prints").glob("*.forget")), "the note is erased once the sensor's copy is"
    assert [d for k, d in recorded if k == "prints_forgotten"] == [
        {"subject": "ana", "reader": "usb0", "sealed_copy": True, "sensor_copy": "deleted"},
        {"subject": "ana", "reader": "usb0", "sealed_copy": True, "sensor_copy": "unreachable"},
        {"subject": "ana", "reader": "usb0", "sealed_copy": False, "sensor_copy": "unreachable"},
        {"subject": "ana", "reader": "usb0", "sealed_copy": False, "sensor_copy": "deleted"},
    ]


def test_remove_writes_the_sealed_print_over_and_updates_the_index(tmp_path: Path) -> None:
    """The store's remove: the subject leaves the sealed index, the file is gone, a second remove finds nothing;
    the other subject's print is untouched. (Written over before the unlink: seen through a hard link.)"""
    store = SensorPrintStore(tmp_path / "prints", KEK)
    store.save("usb0", "ana", b"ana's print reference")
    store.save("usb0", "bob", b"bob's print reference")
    kept = next(p for p in (tmp_path / "prints").glob("*.print") if p == store._path("usb0", "ana"))
    watcher = tmp_path / "same-inode"
    os.link(kept, watcher)
    size = watcher.stat().st_size
    assert store.remove("usb0", "ana") is True
    assert store.subjects("usb0") == ["bob"] and not kept.exists()
    assert watcher.read_bytes() == bytes(size), "the sealed bytes were written over before the unlink"
    assert store.remove("usb0", "ana") is False
    assert store.load("usb0", "bob") == b"bob's print reference"


def test_a_sealed_print_that_does_not_decrypt_is_removed_and_said_so(fprint_socket_dir, tmp_path: Path) -> None:
    """An altered sealed print (or a changed KEK) cannot name the sensor's slot: it is removed all the same, no
    note is kept (no later forget could use it), and the line says so with the way to clear the sensor."""
    from agent.devices.kinds import FprintDevice
    from agent.forget import UNKNOWN, forget

    store = SensorPrintStore(tmp_path / "prints", KEK)
    store.save("usb0", "ana", b"ana's print reference")
    sealed = store._path("usb0", "ana")
    sealed.write_bytes(sealed.read_bytes()[:-1] + b"\0")
    section = DeviceSection(kind="fprint", selector="virtual_device_storage")
    device = FprintDevice(section, "usb0", env={"FP_VIRTUAL_DEVICE_STORAGE": str(fprint_socket_dir / "s.sock")})
    try:
        (done,) = asyncio.run(forget([device], store, "ana"))
    finally:
        device.stop()
    assert done.sensor == UNKNOWN and not done.complete and store.subjects("usb0") == [] and not sealed.exists()
    assert done.message().startswith("forgot ana's sealed print on usb0, but the copy in the sensor's storage "
                                     "cannot be named (the sealed print does not decrypt: "), done.message()
    assert not list((tmp_path / "prints").glob("*.forget"))
