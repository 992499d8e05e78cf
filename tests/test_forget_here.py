"""`capture-agent forget` with no daemon running, and readers that could not be set up.

Real parts: libfprint's virtual_device_storage opened by the command's own process, the agent's sealed store and
encrypted outbox on disk, the state directory's flock, the CLI as its own process.
"""

from __future__ import annotations

import asyncio
import contextlib
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
            await _sealed_and_on_the_sensor(device, feeder, store, *fingers)

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


async def _sealed_and_on_the_sensor(device, feeder, store: SensorPrintStore, *fingers: str,
                                   keep: bool = True) -> dict[str, bytes]:
    """Enrol each finger on the (open) storage reader; with ``keep``, its print sealed in the store too."""
    prints = {}
    for finger in fingers:
        scanning = threading.Thread(
            target=lambda f=finger: [feeder.scan(f) for _ in range(device.enroll_stages)], daemon=True)
        scanning.start()
        prints[finger] = await asyncio.to_thread(device.enroll, 20)
        await asyncio.to_thread(scanning.join, 20)
        if keep:
            store.save("usb0", finger, prints[finger])
    return prints


def test_clearing_a_reader_erases_every_print_on_its_sensor_and_everything_kept_for_it(
    fprint_socket_dir, tmp_path
) -> None:
    """forget --everyone on one reader: every print the sensor lists is deleted (ana's and
    bob's, kept sealed here; carol's, forgotten while the reader was unplugged, named only by a note; dave's,
    enrolled by other software and known to nobody here), and the sealed prints and notes go. Audited before
    (prints_forgetting, everyone) and after (each subject's prints_forgotten, then reader_cleared). Before, no
    command could clear a reader: the fixes named a vendor's tool."""
    from agent.forget import CLEARED, forget, forget_everyone

    store = SensorPrintStore(tmp_path / "prints", "forget-here-test-kek-" + "k" * 32)
    recorded: list[tuple[str, dict]] = []
    record = lambda kind, data: recorded.append((kind, data))  # noqa: E731

    async def scenario() -> dict:
        async with storage_reader(fprint_socket_dir) as (device, feeder):
            prints = await _sealed_and_on_the_sensor(device, feeder, store, "ana", "bob", "carol")
            prints.update(await _sealed_and_on_the_sensor(device, feeder, store, "dave", keep=False))
            device.connected = False  # carol forgotten while the reader was away: her note names her slot
            await forget([device], store, "carol")
            device.connected = True
            on_sensor = {f: await asyncio.to_thread(device.holds_print, b) for f, b in prints.items()}
            cleared, done = await forget_everyone([device], store, "usb0", record=record)
            after = {f: await asyncio.to_thread(device.holds_print, b) for f, b in prints.items()}
            return {"on_sensor": on_sensor, "cleared": cleared, "done": done, "after": after}

    out = asyncio.run(scenario())
    assert out["on_sensor"] == {"ana": True, "bob": True, "carol": True, "dave": True}
    assert out["after"] == {"ana": False, "bob": False, "carol": False, "dave": False}
    cleared = out["cleared"]
    assert cleared.sensor == CLEARED and cleared.complete, cleared
    assert cleared.message() == "emptied the storage of the reader usb0: deleted the 4 prints it held, everyone's"
    assert [f.message() for f in out["done"]] == [
        "forgot ana's print on usb0 (sealed copy; the sensor's storage was emptied)",
        "forgot bob's print on usb0 (sealed copy; the sensor's storage was emptied)",
        "forgot carol's print on usb0 (the sealed copy was removed before; the sensor's storage was emptied)",
    ]
    assert store.subjects("usb0") == [] and store.noted("usb0") == []
    assert not list((tmp_path / "prints").glob("*.forget")) and not list((tmp_path / "prints").glob("*.print"))
    assert recorded[0] == ("prints_forgetting", {"reader": "usb0", "everyone": True})
    assert [d["subject"] for k, d in recorded if k == "prints_forgotten"] == ["ana", "bob", "carol"]
    assert recorded[-1] == ("reader_cleared", {"reader": "usb0", "sensor_storage": "cleared",
                                               "sensor_prints_deleted": 4, "subjects": 3})


def test_clearing_an_unplugged_reader_keeps_notes_for_its_sensor_and_the_same_command_finishes(
    fprint_socket_dir, tmp_path
) -> None:
    """A reader away when it is cleared: the sealed prints go at once (no session can use them), a note per
    subject keeps its sensor slot, and the line says the prints on the sensor stay and the command that finishes;
    the same clearing with the reader back clears the sensor and erases the notes."""
    from agent.forget import CLEARED, UNREACHABLE, forget_everyone

    store = SensorPrintStore(tmp_path / "prints", "forget-here-test-kek-" + "k" * 32)

    async def scenario() -> dict:
        async with storage_reader(fprint_socket_dir) as (device, feeder):
            prints = await _sealed_and_on_the_sensor(device, feeder, store, "ana")
            device.connected = False
            away = await forget_everyone([device], store, "usb0")
            notes = store.noted("usb0")
            device.connected = True
            back = await forget_everyone([device], store, "usb0")
            return {"away": away, "notes": notes, "back": back,
                    "after": await asyncio.to_thread(device.holds_print, prints["ana"])}

    out = asyncio.run(scenario())
    cleared, done = out["away"]
    assert cleared.sensor == UNREACHABLE and not cleared.complete
    assert cleared.message() == (
        "the storage of the reader usb0 could not be reached (not connected): the prints on it stay; plug the "
        "reader in, then run `capture-agent forget --everyone --reader usb0` again"
    ), cleared.message()
    assert [f.sensor for f in done] == [UNREACHABLE] and out["notes"] == ["ana"]
    cleared, done = out["back"]
    assert cleared.sensor == CLEARED and [f.message() for f in done] == [
        "forgot ana's print on usb0 (the sealed copy was removed before; the sensor's storage was emptied)"]
    assert out["after"] is False and store.noted("usb0") == []


def test_forget_everyone_from_the_command_line_with_no_daemon_and_without_a_reader(fprint_socket_dir,
                                                                                   tmp_path) -> None:
    """`forget --everyone --reader usb0` with no daemon clears the reader here (the virtual reader's storage is
    this command's process's: empty); without --reader it is refused naming it, a camera named is refused as
    not a reader, and --subject with --everyone is a usage error: none of them erases anything."""
    config_file, config = _device_config(tmp_path)
    store = SensorPrintStore(config.agent.state_dir / "prints", load_kek(config))
    _enrolled(fprint_socket_dir, store, "ana")

    unnamed = _forget(config_file, fprint_socket_dir, "--everyone")
    camera = _forget(config_file, fprint_socket_dir, "--everyone", "--reader", "cam0")
    both = _forget(config_file, fprint_socket_dir, "--everyone", "--subject", "ana", "--reader", "usb0")
    after_refusals = store.subjects("usb0")
    cleared = _forget(config_file, fprint_socket_dir, "--everyone", "--reader", "usb0")

    assert unnamed.returncode == 2 and "name the reader" in unnamed.stderr and "--reader" in unnamed.stderr, unnamed
    # the readers it may name are this device's (before, "devices: none" on a device with usb0)
    assert "(devices: usb0)" in unnamed.stderr and "none" not in unnamed.stderr, unnamed.stderr
    assert camera.returncode == 2 and "the device cam0 is a camera device" in camera.stderr, camera
    assert both.returncode == 2 and "not allowed with argument" in both.stderr, both
    assert after_refusals == ["ana"], "a refused clearing erased something"
    assert cleared.returncode == 0, cleared
    assert cleared.stdout.splitlines() == [
        "emptied the storage of the reader usb0: it held no print",
        "forgot ana's print on usb0 (sealed copy; the sensor's storage was emptied)",
    ], cleared.stdout
    assert store.subjects("usb0") == []


def test_the_daemon_clears_a_reader_for_the_operator_and_refuses_the_kiosk_apps_user(fprint_socket_dir,
                                                                                   tmp_path) -> None:
    """Through the local API (`DELETE /prints?reader=usb0`, what `forget --everyone` asks a running daemon): the
    operator's command empties the reader and prints a line for it and each subject; without a reader it is
    400 naming one; another user of the socket's group is refused 403, audited, and nothing is erased."""
    import shutil
    import tempfile

    import httpx

    from agent.forget import forget_everyone
    from agent.localapi import LocalAPI

    folder = Path(tempfile.mkdtemp(prefix="fc-"))
    folder.chmod(0o755)  # the other user passes through it to the socket
    store = SensorPrintStore(folder / "prints", "forget-here-test-kek-" + "k" * 32)
    socket_path = folder / "api.sock"
    recorded: list[tuple[str, dict]] = []
    config_file = tmp_path / "cli.toml"
    config_file.write_text(f'[agent]\nstate_dir = "{tmp_path / "state"}"\n[logging]\nlevel = "error"\n')

    async def scenario() -> dict:
        async with storage_reader(fprint_socket_dir) as (device, feeder):
            await _sealed_and_on_the_sensor(device, feeder, store, "ana", "bob")
            record = lambda kind, data: recorded.append((kind, data))  # noqa: E731
            api = LocalAPI(socket_path, lambda emit, **kw: None, group="nogroup", record=record,
                           clear_reader=lambda reader: forget_everyone([device], store, reader, record=record))
            await api.start()
            try:
                kiosk_user = await asyncio.to_thread(
                    subprocess.run, ["curl", "-s", "-i", "--unix-socket", str(socket_path), "-X", "DELETE",
                                     "http://agent/prints?reader=usb0"],
                    user=65534, group=65534, extra_groups=[], capture_output=True, text=True, timeout=30, cwd="/")
                after_refusal = store.subjects("usb0")
                transport = httpx.AsyncHTTPTransport(uds=str(socket_path))
                async with httpx.AsyncClient(transport=transport, base_url="http://agent", timeout=30) as http:
                    unnamed = await http.delete("/prints")
                operator = await asyncio.to_thread(
                    subprocess.run, [sys.executable, "-m", "agent.cli", "--config", str(config_file), "forget",
                                     "--everyone", "--reader", "usb0", "--socket", str(socket_path)],
                    capture_output=True, text=True, timeout=120)
            finally:
                await api.stop()
            return {"kiosk_user": kiosk_user, "after_refusal": after_refusal, "unnamed": unnamed,
                    "operator": operator}

    try:
        out = asyncio.run(scenario())
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    assert out["kiosk_user"].stdout.startswith("HTTP/1.1 403"), out["kiosk_user"]
    assert out["after_refusal"] == ["ana", "bob"]
    assert ("prints_forget_refused", {"everyone": True, "uid": 65534}) in recorded, recorded
    assert out["unnamed"].status_code == 400 and "name the reader" in out["unnamed"].json()["error"]
    operator = out["operator"]
    assert operator.returncode == 0, operator
    assert operator.stdout.splitlines() == [
        "emptied the storage of the reader usb0: deleted the 2 prints it held, everyone's",
        "forgot ana's print on usb0 (sealed copy; the sensor's storage was emptied)",
        "forgot bob's print on usb0 (sealed copy; the sensor's storage was emptied)",
    ], operator.stdout
    assert "not running" not in operator.stderr


def test_clearing_a_reader_whose_index_no_longer_decrypts_still_empties_its_sensor(fprint_socket_dir,
                                                                                    tmp_path) -> None:
    """The key-encryption key changed (or the index was altered): the agent can no longer list whose prints it
    keeps for the reader. The clearing is the operator's way out, so the sensor is still emptied (everyone's
    prints, audited first), and the answer says what stays (the prints sealed under the former key) and is not
    complete. Before, the clearing refused before touching anything ("the index does not decrypt", 500) with a
    fix, "enroll again", that cannot work either (an enrolment writes the same index): the sensor kept every
    print for good."""
    from agent.forget import CLEARED, forget_everyone

    folder = tmp_path / "prints"
    former = SensorPrintStore(folder, "forget-here-test-kek-" + "k" * 32)
    recorded: list[tuple[str, dict]] = []

    async def scenario() -> dict:
        async with storage_reader(fprint_socket_dir) as (device, feeder):
            prints = await _sealed_and_on_the_sensor(device, feeder, former, "ana", "bob")
            now = SensorPrintStore(folder, "forget-here-test-kek-" + "n" * 32)  # the KEK rotated since
            cleared, done = await forget_everyone([device], now, "usb0",
                                                  record=lambda kind, data: recorded.append((kind, data)))
            after = {f: await asyncio.to_thread(device.holds_print, b) for f, b in prints.items()}
            return {"cleared": cleared, "done": done, "after": after}

    out = asyncio.run(scenario())
    cleared = out["cleared"]
    assert out["after"] == {"ana": False, "bob": False}, "the sensor kept prints"
    assert cleared.sensor == CLEARED and cleared.deleted == 2, cleared
    assert not cleared.complete, "prints sealed under the former key stay on disk: not complete"
    assert "does not decrypt" in cleared.message() and "former key" in cleared.message(), cleared.message()
    assert "enroll again" not in cleared.message()
    assert recorded[0] == ("prints_forgetting", {"reader": "usb0", "everyone": True}), recorded
    assert recorded[-1][0] == "reader_cleared" and recorded[-1][1]["index_unreadable"] is True, recorded


def test_a_print_whose_enrolment_could_not_list_it_is_not_left_behind_by_a_clearing(fprint_socket_dir,
                                                                                   tmp_path) -> None:
    """An enrolment whose index write fails (a full disk or a power cut between the two writes; here the index's
    path is taken by a folder) must not leave a sealed print the index does not name: the clearing finds a
    reader's prints through the index, and said complete while that print stayed on disk. Before, the print was
    written first and the index after, so the failed save left the sealed print of eve behind the clearing."""
    from agent.forget import forget_everyone

    store = SensorPrintStore(tmp_path / "prints", "forget-here-test-kek-" + "k" * 32)
    (tmp_path / "prints").mkdir(mode=0o700)
    blocker = store._path("usb0", "index").with_suffix(".index")
    blocker.mkdir()
    failed = None
    try:
        store.save("usb0", "eve", b"eve's print reference")
    except OSError as exc:
        failed = exc
    finally:
        blocker.rmdir()
    assert failed is not None, "the save did not fail: the test's obstacle is gone"

    async def scenario() -> tuple:
        async with storage_reader(fprint_socket_dir) as (device, _feeder):
            return await forget_everyone([device], store, "usb0")

    cleared, done = asyncio.run(scenario())
    assert cleared.complete and all(f.complete for f in done), (cleared, done)
    assert not store._path("usb0", "eve").exists(), "a sealed print of eve stayed after a complete clearing"
    assert not list((tmp_path / "prints").glob("*.print")), "a sealed print stayed after a complete clearing"


def test_a_subject_listed_whose_print_was_never_written_is_nothing_to_forget_not_an_unreadable_print(
    tmp_path
) -> None:
    """A save listed first and cut short before its print was written (or a delete cut short after the unlink)
    leaves a name without a print. A forget then drops the name and says there was nothing to forget; before, it
    said the sealed print "does not decrypt", its sensor slot unknown, and exit 2 with a fix that helps nothing."""
    import pytest

    from agent.forget import NothingToForget, forget

    store = SensorPrintStore(tmp_path / "prints", "forget-here-test-kek-" + "k" * 32)
    store.save("usb0", "eve", b"eve's print reference")
    store._path("usb0", "eve").unlink()  # the state a cut-short save or delete leaves
    reader = Unmade("usb0", "fprint", "libfprint is not installed", "install libfprint")
    with pytest.raises(NothingToForget):
        asyncio.run(forget([reader], store, "eve"))
    assert store.subjects("usb0") == []


def test_a_clearing_that_could_only_delete_the_prints_it_knew_is_not_complete(fprint_socket_dir, tmp_path) -> None:
    """A reader that cannot list its storage (here its listing answers NOT_SUPPORTED) is cleared one subject at a
    time: the prints the agent kept go, a print other software enrolled (dave's) stays on the sensor. The clearing
    promised every print on the sensor, everyone's, and exit 0 means all is erased: it must not say complete.
    Before, ONE_BY_ONE counted as complete (exit 0, reader_cleared with nothing amiss) with dave's print on it."""
    from agent.forget import ONE_BY_ONE, forget_everyone

    store = SensorPrintStore(tmp_path / "prints", "forget-here-test-kek-" + "k" * 32)

    async def scenario() -> dict:
        async with storage_reader(fprint_socket_dir) as (device, feeder):
            prints = await _sealed_and_on_the_sensor(device, feeder, store, "ana")
            prints.update(await _sealed_and_on_the_sensor(device, feeder, store, "dave", keep=False))
            await asyncio.to_thread(feeder.error, 1)  # FP_DEVICE_ERROR_NOT_SUPPORTED: the listing is refused
            cleared, done = await forget_everyone([device], store, "usb0")
            after = {f: await asyncio.to_thread(device.holds_print, b) for f, b in prints.items()}
            return {"cleared": cleared, "done": done, "after": after}

    out = asyncio.run(scenario())
    cleared, done = out["cleared"], out["done"]
    assert cleared.sensor == ONE_BY_ONE, cleared
    assert out["after"] == {"ana": False, "dave": True}, out["after"]
    assert [f.complete for f in done] == [True]
    assert not cleared.complete, "dave's print stays on the sensor: the clearing is not complete"
    assert "stays" in cleared.message(), cleared.message()



@contextlib.contextmanager
def _forget_held_in_its_erasure(config_file: Path, config, fprint_socket_dir: Path):
    """ana enrolled; a `forget --subject ana` with no daemon, held inside its erasure (state directory locked) by
    an exclusive sqlite transaction of this test on the outbox, until the block ends; yields its process."""
    import sqlite3
    import time

    kek = load_kek(config)
    store = SensorPrintStore(config.agent.state_dir / "prints", kek)
    _enrolled(fprint_socket_dir, store, "ana")
    Outbox(config.agent.state_dir / OUTBOX_FILE, kek).close()
    blocker = sqlite3.connect(config.agent.state_dir / OUTBOX_FILE, isolation_level=None, timeout=10)
    blocker.execute("BEGIN EXCLUSIVE")
    env = {**os.environ, "FP_VIRTUAL_DEVICE_STORAGE": str(fprint_socket_dir / "storage.sock")}
    forgetting = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "--config", str(config_file), "forget", "--subject", "ana"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        lock = config.agent.state_dir / "agent.lock"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and forgetting.poll() is None:
            if lock.exists() and lock.read_text().split()[:1] == [str(forgetting.pid)]:
                break
            time.sleep(0.05)
        assert forgetting.poll() is None, forgetting.communicate()
        yield forgetting
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
        forgetting.communicate(timeout=120)
    assert forgetting.returncode == 0, forgetting
    assert store.subjects("usb0") == []


def test_a_daemon_started_while_forget_erases_without_it_is_told_to_wait_not_to_kill_the_forget(
    fprint_socket_dir, tmp_path
) -> None:
    """While `forget` erases with no daemon (it holds the state directory), a `capture-agent run` started meanwhile
    is refused, as it must be. Its error named the holder "another `capture-agent run`" and told the operator to
    stop it (`kill PID`): killing a forget in the middle of an erasure. Now it says a forget is erasing and to
    start the agent once it has ended."""
    config_file, config = _device_config(tmp_path)
    with _forget_held_in_its_erasure(config_file, config, fprint_socket_dir) as forgetting:
        started = subprocess.run([sys.executable, "-m", "agent.cli", "--config", str(config_file), "run"],
                                 capture_output=True, text=True, timeout=60)
    assert started.returncode != 0, started
    assert f"`capture-agent forget` (process {forgetting.pid})" in started.stderr, started.stderr
    assert "kill" not in started.stderr, started.stderr


def test_a_second_forget_while_one_erases_without_the_daemon_is_told_to_wait_not_that_a_daemon_hangs(
    fprint_socket_dir, tmp_path
) -> None:
    """Two operators (or a script and one) forget with no daemon: the second is refused (the first holds the state
    directory), but it said "a daemon runs on this device's state directory" and to give its --config/--socket or
    restart it: there is no daemon, and a restart would be refused in turn. Now it names the forget and says to
    wait for it and run the same forget again."""
    config_file, config = _device_config(tmp_path)
    with _forget_held_in_its_erasure(config_file, config, fprint_socket_dir) as forgetting:
        second = _forget(config_file, fprint_socket_dir, "--subject", "bob")
    assert second.returncode == 2, second
    assert f"`capture-agent forget` (process {forgetting.pid}) is erasing" in second.stderr, second.stderr
    assert "a daemon runs" not in second.stderr and "restart" not in second.stderr, second.stderr
    assert "fix: wait for it to end, then run the same forget again" in second.stderr, second.stderr


def test_an_unreadable_store_offline_is_said_with_its_own_fix_not_start_the_agent(fprint_socket_dir, tmp_path) -> None:
    """With no daemon, a sealed index that no longer decrypts (the KEK changed) is the store's own error and fix:
    starting the agent, which the offline path otherwise offers as the other way out, would meet the same."""
    config_file, config = _device_config(tmp_path)
    store = SensorPrintStore(config.agent.state_dir / "prints", load_kek(config))
    store.save("usb0", "ana", b"ana's print reference")
    other = SensorPrintStore(tmp_path / "other", "another-kek-" + "k" * 40)  # the index as another key sealed it
    other.save("usb0", "bob", b"bob's print reference")
    (index,) = (tmp_path / "other").glob("*.index")
    (config.agent.state_dir / "prints" / index.name).write_bytes(index.read_bytes())
    said = _forget(config_file, fprint_socket_dir, "--subject", "ana")
    assert said.returncode == 2, said
    assert "does not decrypt" in said.stderr, said.stderr
    assert "start the agent" not in said.stderr and "no agent answers" not in said.stderr, said.stderr
