"""USB fingerprint readers through the real libfprint, on its own virtual drivers.

``virtual_image`` stands for image readers (uru4000, aes*, elan...): the test
sends pixels over libfprint's socket and our driver must hand over exactly
those pixels. ``virtual_device`` stands for match-on-sensor readers (synaptics,
goodixmoc...): enrolment and verification happen "on the sensor".
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from drivers.fprint.errors import CaptureCancelled, CaptureTimeout, DeviceRemoved, RetryScan
from simulators.fprint import RETRY_CENTER_FINGER, RETRY_TOO_SHORT

# Every thread a test starts through the helpers below: conftest's helper_threads_joined joins them after it.
HELPER_THREADS: list[threading.Thread] = []


def started(target) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    HELPER_THREADS.append(thread)
    return thread


def later(delay_s: float, action, *args) -> threading.Thread:
    return started(lambda: (time.sleep(delay_s), action(*args)))


def when_waiting(reader, action, *args) -> threading.Thread:
    """Act once the reader waits for a finger (an image sent to an idle virtual_image reader is dropped)."""

    def run() -> None:
        deadline = time.monotonic() + 10
        while not reader.finger_needed() and time.monotonic() < deadline:
            time.sleep(0.01)
        action(*args)

    return started(run)


def enrolled_on(reader, feeder, finger: str, progress=None) -> bytes:
    """A print of ``finger`` enrolled on a virtual_device reader; the thread scanning its stages is joined."""
    scanning = started(lambda: [feeder.scan(finger) for _ in range(reader.info.enroll_stages)])
    try:
        return reader.enroll(progress=progress, timeout_s=20)
    finally:
        scanning.join(20)
        assert not scanning.is_alive(), "the enrolment's scans never returned"


def retyped(serialized: bytes, kind: int) -> bytes:
    """``serialized`` (a real print) with its print type field set to ``kind``, everything else kept."""
    from gi.repository import GLib

    from drivers.fprint.prints import HEADER_BYTES, PRINT_TYPE

    value = GLib.Variant.new_from_bytes(GLib.VariantType(PRINT_TYPE), GLib.Bytes(serialized[HEADER_BYTES:]), False)
    fields = [value.get_child_value(i) for i in range(value.n_children())]
    fields[0] = GLib.Variant.new_int32(kind)
    return serialized[:HEADER_BYTES] + bytes(GLib.Variant.new_tuple(*fields).get_data_as_bytes().get_data())


def test_image_reader_hands_over_the_exact_pixels(virtual_image_reader, synthetic_print) -> None:
    reader, feeder = virtual_image_reader
    assert reader.info.driver == "virtual_image" and reader.info.image and reader.info.dpi == 500
    sent = synthetic_print(3, shape=(288, 256)).image
    when_waiting(reader, feeder.image, sent)  # the finger arrives while the capture waits for it
    captured = reader.capture(timeout_s=10)
    assert captured.dpi == 500
    assert captured.pixels.dtype == np.uint8 and captured.pixels.shape == sent.shape
    assert captured.pixels.tobytes() == sent.tobytes()
    assert "pixels" not in repr(captured) or "array" not in repr(captured)


def test_image_reader_serves_the_session_interface(virtual_image_reader, synthetic_print) -> None:
    """The same three calls as the serial driver: a capture session drives either."""
    reader, feeder = virtual_image_reader
    images = [synthetic_print(seed, shape=(300, 280)).image for seed in (5, 6)]
    for sent in images:
        when_waiting(reader, feeder.image, sent)
        reader.wait_for_finger(10)
        assert reader.wait_for_lift(1)
        assert np.array_equal(reader.download_image(), sent)


@pytest.mark.parametrize(("code", "feedback"), [(RETRY_TOO_SHORT, "too_fast"), (RETRY_CENTER_FINGER, "place_finger")])
def test_retry_codes_become_feedback(virtual_image_reader, code, feedback) -> None:
    reader, feeder = virtual_image_reader
    when_waiting(reader, feeder.retry, code)
    with pytest.raises(RetryScan) as caught:
        reader.capture(timeout_s=10)
    assert caught.value.feedback == feedback


def test_cancel_and_timeout_go_through_the_cancellable(virtual_image_reader, synthetic_print, recwarn) -> None:
    """Cancel and timeout end a capture; cancelled on GLib's thread, libfprint logs no critical (g_source_unref)."""
    reader, feeder = virtual_image_reader
    cancel = threading.Event()
    later(0.2, cancel.set)
    started = time.monotonic()
    with pytest.raises(CaptureCancelled):
        reader.capture(timeout_s=10, cancel=cancel)
    assert time.monotonic() - started < 5
    with pytest.raises(CaptureTimeout):
        reader.capture(timeout_s=0.3)
    sent = synthetic_print(7, shape=(300, 260)).image  # the reader still works after both
    when_waiting(reader, feeder.image, sent)
    assert reader.capture(timeout_s=10).pixels.tobytes() == sent.tobytes()
    assert not [str(w.message) for w in recwarn if "g_source" in str(w.message)]


def test_unplug_during_capture_then_reopen(virtual_image_reader, synthetic_print) -> None:
    reader, feeder = virtual_image_reader
    when_waiting(reader, feeder.unplug)
    with pytest.raises(DeviceRemoved):
        reader.capture(timeout_s=10)
    assert reader.removed
    feeder.close()
    reader.open()  # a fresh context finds the reader again
    assert not reader.removed
    sent = synthetic_print(8, shape=(320, 300)).image
    when_waiting(reader, feeder.image, sent)
    assert reader.capture(timeout_s=10).pixels.tobytes() == sent.tobytes()


def test_enumeration_from_another_thread_while_a_capture_waits(virtual_image_reader, synthetic_print) -> None:
    """get_devices() from a foreign thread while the main loop runs deadlocks; ours goes through the loop thread."""
    from drivers.fprint.reader import list_readers

    reader, feeder = virtual_image_reader
    result: dict = {}
    capture = threading.Thread(target=lambda: result.update(image=reader.capture(timeout_s=10)))
    capture.start()
    time.sleep(0.2)
    found = list_readers(reader.loop, reader.env)
    assert any(r.driver == "virtual_image" for r in found)
    sent = synthetic_print(9, shape=(290, 270)).image
    when_waiting(reader, feeder.image, sent).join(10)
    capture.join(10)
    assert result["image"].pixels.tobytes() == sent.tobytes()


def test_match_on_sensor_enroll_verify(virtual_device_reader) -> None:
    reader, feeder = virtual_device_reader
    assert reader.info.driver == "virtual_device" and reader.info.verify and not reader.info.image
    stages: list[int] = []
    enrolled = enrolled_on(reader, feeder, "alice", progress=lambda stage, retry: stages.append(stage))
    assert stages == list(range(1, reader.info.enroll_stages + 1))
    assert isinstance(enrolled, bytes) and enrolled
    later(0.2, feeder.scan, "alice")
    assert reader.verify(enrolled, timeout_s=10) is True
    later(0.2, feeder.scan, "mallory")
    assert reader.verify(enrolled, timeout_s=10) is False
    later(0.2, feeder.retry, RETRY_TOO_SHORT)
    with pytest.raises(RetryScan) as caught:
        reader.verify(enrolled, timeout_s=10)
    assert caught.value.feedback == "too_fast"
    later(0.2, feeder.unplug)
    with pytest.raises(DeviceRemoved):
        reader.verify(enrolled, timeout_s=10)


def test_identify_on_a_reader_without_identification_is_refused_before_the_scan(virtual_device_reader) -> None:
    """virtual_device verifies only: libfprint refused identify after the finger, fix "unplug and replug"."""
    from drivers.fprint.errors import FprintError

    reader, _feeder = virtual_device_reader
    assert not reader.info.identify
    with pytest.raises(FprintError, match="cannot identify") as refused:
        reader.identify([b"a print"], timeout_s=5)
    assert "capture-agent verify --subject ID" in refused.value.fix, refused.value.fix


def test_without_libfprint_the_driver_says_how_to_add_it() -> None:
    code = (
        "import sys; sys.modules['gi'] = None\n"
        "from drivers.fprint import unavailable_reason, available\n"
        "assert not available(); print(unavailable_reason())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "apt-get install libfprint-2-2 gir1.2-fprint-2.0" in out and "capture-agent[usb]" in out


def test_udev_rules_cover_every_reader_libfprint_supports() -> None:
    """The shipped rules hold the generator's output for the installed libfprint (its hwdb)."""
    from pathlib import Path

    from drivers.fprint import udev

    if not udev.HWDB.exists():
        pytest.fail(f"{udev.HWDB} missing: `make system-tools` installs libfprint-2-2")
    text = udev.HWDB.read_text()
    shipped = (Path(__file__).resolve().parents[1] / "systemd" / "60-capture-agent.rules").read_text()
    assert udev.rules(text) in shipped, "regenerate with: python -m drivers.fprint.udev"
    ids = udev.supported_ids(text)
    assert {"uru4000", "synaptics", "goodixmoc", "elan"} <= set(ids)
    assert 'ATTR{idVendor}=="05ba", ATTR{idProduct}=="000a"' in shipped  # U.are.U 4000B


def test_devices_command_lists_libfprint_readers_and_what_they_do(fprint_socket_dir) -> None:
    import json
    import os

    env = {**os.environ, "FP_VIRTUAL_IMAGE": str(fprint_socket_dir / "i.sock"),
           "FP_VIRTUAL_DEVICE": str(fprint_socket_dir / "d.sock")}
    out = subprocess.run(
        [sys.executable, "-m", "agent.cli", "devices", "--json", "--only-named"], capture_output=True, text=True,
        env=env, timeout=60, check=True,
    ).stdout
    usb = {f["path"].split(":")[0]: f for f in json.loads(out) if f["kind"] == "usb"}
    assert usb["virtual_image"]["capabilities"] == ["fingerprint-image"]
    assert usb["virtual_device"]["capabilities"] == ["match-on-sensor"]


def test_devices_command_without_libfprint_says_how_to_add_usb_readers(tmp_path) -> None:
    """PyGObject hidden: the command still runs and names the packages to install."""
    import os

    (tmp_path / "gi").mkdir()
    (tmp_path / "gi" / "__init__.py").write_text("raise ImportError('hidden by the test')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.getcwd()])}
    result = subprocess.run(
        [sys.executable, "-m", "agent.cli", "devices", "--only-named"], capture_output=True, text=True, env=env,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "libfprint missing" in result.stdout and "apt-get install libfprint-2-2" in result.stdout


def test_sensor_prints_are_kept_encrypted_and_verify_on_the_sensor(virtual_device_reader, tmp_path) -> None:
    """Enroll on the sensor, keep the print sealed, load it back (same device and subject only), verify."""
    from agent.devices.prints import PrintStoreError, SensorPrintStore

    reader, feeder = virtual_device_reader
    serialized = enrolled_on(reader, feeder, "dave")
    store = SensorPrintStore(tmp_path / "prints", kek="kek-" + "x" * 40)
    store.save("usb0", "dave", serialized)
    (stored,) = (tmp_path / "prints").glob("*.print")
    assert serialized not in stored.read_bytes() and b"dave" not in stored.read_bytes()
    (index,) = (tmp_path / "prints").glob("*.index")  # which subjects have a print: sealed too
    assert b"dave" not in index.read_bytes() and store.subjects("usb0") == ["dave"]
    assert stored.stat().st_mode & 0o777 == 0o600
    with pytest.raises(PrintStoreError, match="enroll erin"):
        store.load("usb0", "erin")
    with pytest.raises(PrintStoreError, match="does not decrypt"):
        SensorPrintStore(tmp_path / "prints", kek="another-" + "y" * 40).load("usb0", "dave")
    later(0.2, feeder.scan, "dave")
    assert reader.verify(store.load("usb0", "dave"), timeout_s=10) is True


def test_a_busy_reader_names_fprintd_and_the_fix(virtual_image_reader) -> None:
    from drivers.fprint.errors import DeviceBusy
    from simulators.fprint import ERROR_BUSY

    reader, feeder = virtual_image_reader
    when_waiting(reader, feeder.error, ERROR_BUSY)
    with pytest.raises(DeviceBusy) as caught:
        reader.capture(timeout_s=10)
    assert "systemctl mask --now fprintd" in caught.value.fix


def test_identify_on_a_sensor_with_storage(fprint_socket_dir) -> None:
    """virtual_device_storage: prints live on the sensor too; identify finds which one a finger is."""
    from drivers.fprint.reader import FprintReader
    from simulators.fprint import VirtualDeviceFeeder

    path = fprint_socket_dir / "storage.sock"
    reader = FprintReader("virtual_device_storage", env={"FP_VIRTUAL_DEVICE_STORAGE": str(path)})
    reader.open()
    feeder = VirtualDeviceFeeder(path)
    try:
        assert reader.info.identify and reader.info.on_sensor
        enrolled = []
        for finger in ("frank", "grace"):
            enrolled.append(enrolled_on(reader, feeder, finger))
        later(0.2, feeder.scan, "grace")
        assert reader.identify(enrolled, timeout_s=10) == 1
        later(0.2, feeder.scan, "frank")
        assert reader.identify(enrolled, timeout_s=10) == 0
    finally:
        reader.close()


def test_the_udev_generator_takes_help_and_names_a_missing_hwdb_in_one_line(tmp_path) -> None:
    """`--help` was read as the hwdb's path, and a missing hwdb (no libfprint) was a FileNotFoundError traceback."""
    def generator(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "drivers.fprint.udev", *args], capture_output=True, text=True,
                              timeout=60)

    helped = generator("--help")
    assert helped.returncode == 0 and "capture-readers" in helped.stdout, helped.stderr
    missing = generator(str(tmp_path / "none.hwdb"))
    assert missing.returncode == 2 and "Traceback" not in missing.stderr, missing.stderr
    assert missing.stderr.startswith("python -m drivers.fprint.udev: error: cannot read ")
    assert "(fix: install libfprint (apt-get install libfprint-2-2)" in missing.stderr
    hwdb = tmp_path / "60-autosuspend-libfprint-2.hwdb"
    hwdb.write_text("# Supported by libfprint driver uru4000\nusb:v05BAp000A*\n ID_AUTOSUSPEND=1\n")
    made = generator(str(hwdb))
    assert made.returncode == 0 and 'ATTR{idVendor}=="05ba", ATTR{idProduct}=="000a"' in made.stdout


def test_a_request_the_reader_does_not_do_is_a_usage_error_not_a_failure_to_replug(
    virtual_device_reader, virtual_image_reader
) -> None:
    """libfprint's NOT_SUPPORTED (a capture of a match-on-sensor reader) and the driver's own "no image captured
    yet" were the family's failure type, NOT_SUPPORTED with the fix "unplug and replug the reader". They are a
    usage error now, with a fix that fits; a protocol error (the reader's own failure) is still a failure."""
    from drivers.fprint.errors import FprintError
    from simulators.fprint import ERROR_PROTO

    sensor, _ = virtual_device_reader
    with pytest.raises(FprintError) as not_supported:
        sensor.capture(timeout_s=5)
    assert "unplug and replug" not in not_supported.value.fix, not_supported.value  # the reader is fine
    assert "capture-agent devices" in not_supported.value.fix and "refused the request" in str(not_supported.value)
    image_reader, feeder = virtual_image_reader
    with pytest.raises(FprintError, match="no image captured yet") as out_of_order:
        image_reader.download_image()
    when_waiting(image_reader, feeder.error, ERROR_PROTO)
    with pytest.raises(FprintError) as failed:
        image_reader.capture(timeout_s=10)
    assert "unplug and replug" in failed.value.fix, repr(failed.value)  # the reader's own failure
    from drivers.errors import UsageError
    from drivers.fprint.errors import FprintUsageError

    assert isinstance(not_supported.value, FprintUsageError) and isinstance(out_of_order.value, FprintUsageError)
    assert not isinstance(failed.value, UsageError), repr(failed.value)


def test_an_unreadable_stored_print_is_a_usage_error_naming_re_enrollment(virtual_device_reader) -> None:
    """A print libfprint cannot read back (corrupt, or not a print) raised libfprint's raw GLib.Error "Data could
    not be parsed" from verify, outside the driver's error tree: the agent could neither type it nor name a fix.
    It is a usage error now (the reader is fine), whose fix is a new print of that finger; the reader still works."""
    from drivers.errors import UsageError

    reader, feeder = virtual_device_reader
    enrolled = enrolled_on(reader, feeder, "alice")
    for unreadable in (b"not a print at all", b"FP0" + enrolled[3:], enrolled + b"\0"):
        with pytest.raises(UsageError) as refused:
            reader.verify(unreadable, timeout_s=5)
        assert "cannot be read" in str(refused.value), refused.value
        assert refused.value.fix.startswith(f"enroll that finger on the reader {reader.name} again"), refused.value
    scanning = later(0.2, feeder.scan, "alice")
    try:
        assert reader.verify(enrolled, timeout_s=10) is True
    finally:
        scanning.join(10)
    assert not scanning.is_alive(), "the finger's scan never returned"


def test_a_print_cut_short_or_emptied_is_refused_and_never_aborts_the_agent(virtual_device_reader) -> None:
    """libfprint trusts a print's layout once its header is read: 3 bytes or fewer failed its assertion, and a
    print cut short, or one whose print data is empty, made GLib abort the process ("Attempt to access item 0 in a
    container with only 0 items"): the agent gone, no error at all. Each cut of a real print, and prints laid out
    right around empty data, go to verify in a process of their own: each is refused as unreadable, none aborts."""
    from gi.repository import GLib

    reader, feeder = virtual_device_reader
    enrolled = enrolled_on(reader, feeder, "bob")

    def laid_out(kind: int, data: GLib.Variant) -> bytes:  # libfprint's own layout around ``data``
        value = GLib.Variant("(issbymsmsia{sv}v)", (kind, "virtual_device", "0", False, 0, None, None, 0, {}, data))
        return enrolled[:3] + bytes(value.get_data_as_bytes().get_data())

    emptied = [laid_out(1, GLib.Variant("()", ())), laid_out(2, GLib.Variant("(ai)", ([],)))]
    blobs = [enrolled[:n] for n in range(len(enrolled))] + emptied
    code = (
        "import sys, threading\n"
        "from drivers.errors import UsageError\n"
        "from drivers.fprint.reader import FprintReader\n"
        "reader = FprintReader('virtual_device', env={'FP_VIRTUAL_DEVICE': sys.argv[1]})\n"
        "reader.open()\n"
        "for blob in sys.argv[2:]:\n"
        "    try:\n"
        "        reader.verify(bytes.fromhex(blob), timeout_s=2)\n"
        "    except UsageError as exc:\n"
        "        assert 'enroll that finger' in exc.fix, exc\n"
        "        print('refused', len(blob) // 2, flush=True)\n"
        "reader.close()\n"
    )
    folder = reader.env["FP_VIRTUAL_DEVICE"].rsplit("/", 1)[0]
    ran = subprocess.run([sys.executable, "-c", code, f"{folder}/other.sock", *(b.hex() for b in blobs)],
                         capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, (ran.returncode, ran.stdout[-500:], ran.stderr[-2000:])
    assert ran.stdout.splitlines() == [f"refused {len(b)}" for b in blobs], ran.stdout[-500:]


def test_a_print_of_a_type_libfprint_does_not_know_is_refused_before_libfprint_sees_it(virtual_device_reader) -> None:
    """A print laid out right whose type is neither raw (1) nor NBIS (2), libfprint's FpiPrintType (0 is
    FPI_PRINT_UNDEFINED, a print not yet enrolled), passed the layout check: libfprint logged a g_warning "Invalid
    print type", which ends a process whose warnings are fatal (G_DEBUG=fatal-warnings), before its error. Such a
    print is refused first now, its type named; the fix is a new print of that finger. A process of its own, with
    fatal warnings, reads each (libfprint's warning would end it)."""
    import os

    reader, feeder = virtual_device_reader
    enrolled = enrolled_on(reader, feeder, "carol")
    blobs = [retyped(enrolled, kind) for kind in (0, 7, -1)]
    code = (
        "import sys\n"
        "from drivers.fprint import unavailable_reason\n"
        "assert not unavailable_reason()  # requires libfprint's version, as the agent does\n"
        "from drivers.fprint.errors import UnreadablePrint\n"
        "from drivers.fprint.prints import deserialized\n"
        "for blob in sys.argv[1:]:\n"
        "    try:\n"
        "        deserialized(bytes.fromhex(blob), 'usb0')\n"
        "    except UnreadablePrint as exc:\n"
        "        print(str(exc), '|', exc.fix, flush=True)\n"
    )
    ran = subprocess.run([sys.executable, "-c", code, *(b.hex() for b in blobs)], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "G_DEBUG": "fatal-warnings"})
    assert ran.returncode == 0, (ran.returncode, ran.stdout[-500:], ran.stderr[-2000:])
    assert "Invalid print type" not in ran.stderr, ran.stderr[-2000:]
    lines = ran.stdout.splitlines()
    assert len(lines) == len(blobs), ran.stdout
    for kind, line in zip((0, 7, -1), lines, strict=True):
        message, fix = line.split(" | ")
        assert f"(print type {kind}, not one libfprint reads: 1 (raw), 2 (NBIS minutiae))" in message, line
        assert fix.startswith("enroll that finger on the reader usb0 again"), line
    assert retyped(enrolled, 1) == enrolled, "the type is changed, nothing else"


def test_a_finger_the_sensor_already_holds_is_a_usage_error_naming_forget(fprint_socket_dir) -> None:
    """libfprint's DATA_DUPLICATE (a finger enrolled again on a reader that keeps it in its storage) was the
    family's failure, "unplug and replug the reader", which changes nothing: it is a usage error now, whose fix
    names the command that erases the print the sensor holds (capture-agent forget)."""
    from drivers.errors import UsageError
    from drivers.fprint.errors import FprintError
    from drivers.fprint.reader import FprintReader
    from simulators.fprint import VirtualDeviceFeeder

    path = fprint_socket_dir / "storage.sock"
    reader = FprintReader("virtual_device_storage", env={"FP_VIRTUAL_DEVICE_STORAGE": str(path)})
    reader.open()
    feeder = VirtualDeviceFeeder(path)
    try:
        enrolled_on(reader, feeder, "hugo")
        with pytest.raises(FprintError) as caught:
            enrolled_on(reader, feeder, "hugo")
    finally:
        reader.close()
    assert isinstance(caught.value, UsageError), repr(caught.value)
    assert "already holds this finger" in str(caught.value) and "unplug and replug" not in caught.value.fix
    assert "capture-agent forget --subject ID" in caught.value.fix, caught.value.fix
