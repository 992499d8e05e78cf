"""`capture-agent forget` with no daemon running, and readers that could not be set up.

Real parts: libfprint's virtual_device_storage opened by the command's own process, the agent's sealed store and
encrypted outbox on disk, the state directory's flock, the CLI as its own process.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from pathlib import Path

from agent.config import parse_config
from agent.devices.prints import SensorPrintStore
from agent.devices.supervisor import Unmade
from agent.keystore import load_kek
from agent.outbox import OUTBOX_FILE, Outbox
from agent.statelock import hold_state_dir
from tests.conftest import storage_reader


def _device_config(tmp_path: Path) -> tuple[Path, object]:
    """A device's config (a dev keyring, one storage reader, a local API socket nobody listens on), its state
    directory made as provisioning makes it."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    text = (f'[agent]\nstate_dir = "{state}"\n[keyring]\nbackend = "file-insecure-dev"\n'
            f'[api]\nsocket = "{tmp_path / "api.sock"}"\n[logging]\nlevel = "error"\n'
            '[[device]]\nkind = "fprint"\nname = "usb0"\nselector = "virtual_device_storage"\n'
            '[[device]]\nkind = "camera"\nname = "cam0"\nsource = "http://127.0.0.1:9/stream"\n')
    path = tmp_path / "agent.toml"
    path.write_text(text)
    import tomllib

    config = parse_config(tomllib.loads(text))
    load_kek(config, create=True)
    return path, config


def _enrolled(fprint_socket_dir: Path, store: SensorPrintStore, *fingers: str) -> None:
    """Each finger enrolled on a storage reader, its print kept sealed as the daemon keeps it."""

    async def scenario() -> None:
        async with storage_reader(fprint_socket_dir) as (device, feeder):
            for finger in fingers:
                scanning = threading.Thread(
                    target=lambda f=finger: [feeder.scan(f) for _ in range(device.enroll_stages)], daemon=True)
                scanning.start()
                blob = await asyncio.to_thread(device.enroll, 20)
                await asyncio.to_thread(scanning.join, 20)
                store.save("usb0", finger, blob)

    asyncio.run(scenario())


def _forget(config_file: Path, fprint_socket_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FP_VIRTUAL_DEVICE_STORAGE": str(fprint_socket_dir / "storage.sock")}
    return subprocess.run([sys.executable, "-m", "agent.cli", "--config", str(config_file), "forget", *args],
                          capture_output=True, text=True, timeout=120, env=env)


def test_forget_with_no_daemon_running_erases_here_and_audits_into_the_devices_outbox(
    fprint_socket_dir, tmp_path
) -> None:
    """No daemon: the command opens the reader itself, erases ana's sealed print (bob's stays), and the erasure
    is in the device's outbox for the daemon to deliver. Before, it said "cannot reach the agent" (exit 2) and
    erased nothing until a daemon ran. A subject nobody holds is exit 1 without a reader opened."""
    config_file, config = _device_config(tmp_path)
    kek = load_kek(config)
    store = SensorPrintStore(config.agent.state_dir / "prints", kek)
    _enrolled(fprint_socket_dir, store, "ana", "bob")

    done = _forget(config_file, fprint_socket_dir, "--subject", "ana")
    nobody = _forget(config_file, fprint_socket_dir, "--subject", "carol")
    camera = _forget(config_file, fprint_socket_dir, "--subject", "bob", "--reader", "cam0")

    assert done.returncode == 0, done
    assert "the agent is not running: erasing here, without it" in done.stderr, done.stderr
    # A virtual reader's storage lives in the process that opened it: this one's is empty (a real sensor's is not).
    assert done.stdout == "forgot ana's print on usb0 (sealed copy; the sensor held no copy any more)\n", done
    assert store.subjects("usb0") == ["bob"]
    assert not list((config.agent.state_dir / "prints").glob("*.forget")), "no note left behind"
    assert nobody.returncode == 1, nobody
    assert "error: nothing to forget: no print of carol is kept for this device's readers (usb0)" in nobody.stderr
    assert camera.returncode == 2 and "the device cam0 is a camera device" in camera.stderr, camera
    outbox = Outbox(config.agent.state_dir / OUTBOX_FILE, kek)
    try:
        events = [(e["type"], e["data"]) for e in outbox.pending(100)]
    finally:
        outbox.close()
    kinds = [kind for kind, _ in events]
    assert kinds.index("prints_forgetting") < kinds.index("prints_forgotten"), kinds
    assert ("prints_forgotten", {"subject": "ana", "reader": "usb0", "sealed_copy": True,
                                 "sensor_copy": "not_there"}) in events, events
    assert not any(kind.startswith("prints_forg") and data.get("subject") != "ana" for kind, data in events)


def test_forget_never_works_around_a_daemon_that_holds_the_state_directory(fprint_socket_dir, tmp_path) -> None:
    """A daemon holds the state directory but nobody answers at the socket this command was given (another
    config's, a hung daemon): nothing is erased beside it, and the message says a daemon runs."""
    config_file, config = _device_config(tmp_path)
    store = SensorPrintStore(config.agent.state_dir / "prints", load_kek(config))
    store.save("usb0", "ana", b"ana's print reference")
    with hold_state_dir(config.agent.state_dir):  # as a running daemon does
        refused = _forget(config_file, fprint_socket_dir, "--subject", "ana")
    assert refused.returncode == 2, refused
    assert "a daemon runs on this device's state directory" in refused.stderr, refused.stderr
    assert "nothing was erased" in refused.stderr and "--socket" in refused.stderr, refused.stderr
    assert store.subjects("usb0") == ["ana"]


def test_a_reader_that_could_not_be_set_up_loses_its_sealed_print_and_keeps_a_note_for_its_sensor(tmp_path) -> None:
    """A libfprint reader the daemon could not even make (libfprint gone after an upgrade) still has sealed
    prints here. Before, the daemon left it out of a forget ("nothing to forget", for good), and given it, forget
    took it for a reader without storage: the note naming the sensor's slot was erased and the line said the
    reader keeps no prints of its own."""
    from agent.forget import UNREACHABLE, forget

    store = SensorPrintStore(tmp_path / "prints", "forget-here-test-kek-" + "k" * 32)
    store.save("usb0", "ana", b"ana's print reference")
    reader = Unmade("usb0", "fprint", "libfprint is not installed", "install libfprint (make .venv/.installed)")
    recorded: list[tuple[str, dict]] = []
    (forgotten,) = asyncio.run(forget([reader], store, "ana", record=lambda k, d: recorded.append((k, d))))
    assert forgotten.sensor == UNREACHABLE and forgotten.sealed
    assert store.subjects("usb0") == [] and store.held_for_sensor("usb0", "ana") == [b"ana's print reference"]
    assert forgotten.message() == (
        "forgot ana's sealed print on usb0, but the copy in the sensor's storage could not be reached (it could "
        "not be set up: libfprint is not installed): install libfprint (make .venv/.installed), then run "
        "`capture-agent forget --subject ana --reader usb0` again to delete it there"
    ), forgotten.message()
    assert [k for k, _ in recorded] == ["prints_forgetting", "prints_forgotten"]
