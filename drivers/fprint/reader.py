"""One libfprint reader: open, capture an image, or enroll / verify / identify on the sensor.

Every method may be called from any thread: the work is submitted to the
libfprint thread (:mod:`drivers.fprint.loop`) and the caller waits on a future,
watching its own cancel event and deadline; a cancel goes through the
operation's ``Gio.Cancellable``. Errors become the typed errors of
:mod:`drivers.fprint.errors` (a retry carries a DESIGN.md feedback code).

Image readers hand over an ``FpImage``; libfprint reports 0 pixels per mm for
most drivers, so the resolution comes from a table by driver (500 dpi when the
driver is not listed). Match-on-sensor readers never give an image: the agent
keeps the serialized prints (``FpPrint.serialize()``) and the sensor matches.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from drivers.fprint.errors import (
    RETRY_FEEDBACK,
    CaptureCancelled,
    CaptureTimeout,
    DeviceBusy,
    DeviceNotFound,
    DeviceRemoved,
    FingerAlreadyOnSensor,
    FprintError,
    FprintUsageError,
    NoSensorStorage,
    NoStorageList,
    PrintNotOnSensor,
    RetryScan,
)
from drivers.fprint.loop import GLibThread, shared_loop
from drivers.fprint.prints import deserialized

DEFAULT_DPI = 500
# Sensor resolutions by driver (datasheets); libfprint's FpImage.get_ppmm() is 0 for these.
RESOLUTION_DPI = {
    "uru4000": 512,  # DigitalPersona U.are.U 4000/4500
    "upektc_img": 500,
    "etes603": 500,
    "vcom5s": 500,
    "elan": 500,
    "aes1610": 500,
    "aes1660": 500,
    "aes2501": 500,
    "aes2550": 500,
    "aes2660": 500,
    "aes3500": 500,
    "aes4000": 500,
    "vfs5011": 500,
    "vfs101": 500,
    "vfs301": 500,
    "virtual_image": 500,
}
POLL_S = 0.05
CANCEL_GRACE_S = 5.0  # how long a cancelled operation may take to end


def resolution_dpi(driver: str, ppmm: float = 0.0) -> int:
    """The image's resolution: libfprint's own figure when it gives one, else the driver's table entry."""
    if ppmm > 0:
        return round(ppmm * 25.4)
    return RESOLUTION_DPI.get(driver, DEFAULT_DPI)


@dataclass(frozen=True)
class ReaderInfo:
    driver: str
    name: str
    device_id: str
    image: bool  # gives images (capture): our extraction makes the template
    verify: bool  # matches on the sensor
    identify: bool
    storage: bool
    enroll_stages: int
    scan_type: str  # press or swipe
    dpi: int
    storage_list: bool = False  # lists the prints its storage holds (FP_DEVICE_FEATURE_STORAGE_LIST)

    @property
    def on_sensor(self) -> bool:
        """Match-on-sensor: it verifies and gives no image (image readers "verify" in libfprint's software)."""
        return self.verify and not self.image

    @property
    def selector(self) -> str:
        return f"{self.driver}:{self.device_id}"


@dataclass(frozen=True)
class FingerImage:
    """An 8-bit image from the reader and its resolution; the pixels never appear in a repr."""

    pixels: np.ndarray = field(repr=False)
    dpi: int


def _info(device: Any) -> ReaderInfo:
    from gi.repository import FPrint

    driver = device.get_driver()
    return ReaderInfo(
        driver=driver,
        name=device.get_name(),
        device_id=device.get_device_id(),
        image=device.has_feature(FPrint.DeviceFeature.CAPTURE),
        verify=device.has_feature(FPrint.DeviceFeature.VERIFY),
        identify=device.has_feature(FPrint.DeviceFeature.IDENTIFY),
        storage=device.has_feature(FPrint.DeviceFeature.STORAGE),
        enroll_stages=device.get_nr_enroll_stages(),
        scan_type=device.get_scan_type().value_nick,
        dpi=resolution_dpi(driver),
        storage_list=device.has_feature(FPrint.DeviceFeature.STORAGE_LIST),
    )


def _matches(info: ReaderInfo, selector: str) -> bool:
    return selector in ("", info.driver, info.device_id, info.selector)


def list_readers(loop: GLibThread | None = None, env: dict[str, str] | None = None) -> list[ReaderInfo]:
    """The readers libfprint finds now (a fresh context: USB, and the virtual drivers named in the
    environment or ``env``)."""
    loop = loop or shared_loop()

    def enumerate_() -> list[ReaderInfo]:
        from gi.repository import FPrint

        with _environment(env or {}):
            context = FPrint.Context.new()
            return [_info(d) for d in context.get_devices()]

    return loop.call(enumerate_)


def _usage_errors() -> dict[Any, str]:
    """libfprint's FpDeviceError codes that say the caller asked what the reader does not do, or not now (a usage
    error, the reader fine), each with its fix. GENERAL, PROTO and the others are the reader's own failures."""
    from gi.repository import FPrint

    return {
        FPrint.DeviceError.NOT_SUPPORTED: "ask it only what it does (`capture-agent devices` lists what each reader "
        "does): an image of an image reader, a match of a match-on-sensor one",
        FPrint.DeviceError.NOT_OPEN: "the reader was closed under the request (the agent stopping or reopening "
        "it): try again once it is open",
        FPrint.DeviceError.ALREADY_OPEN: "close the reader before opening it again",
        FPrint.DeviceError.DATA_INVALID: "pass a print this reader made (enroll the subject on it again)",
    }


def translate(error: Exception, name: str) -> Exception:
    """A GLib.Error from libfprint as one of our typed errors."""
    from gi.repository import FPrint, Gio, GLib

    if not isinstance(error, GLib.Error):
        return error
    retry_domain = GLib.quark_to_string(FPrint.device_retry_quark())
    device_domain = GLib.quark_to_string(FPrint.device_error_quark())
    if error.domain == retry_domain:
        nick = FPrint.DeviceRetry(error.code).value_nick
        feedback, message = RETRY_FEEDBACK.get(nick, RETRY_FEEDBACK["general"])
        return RetryScan(feedback, message)
    if error.domain == device_domain:
        code = FPrint.DeviceError(error.code)
        if code == FPrint.DeviceError.REMOVED:
            return DeviceRemoved(name)
        if code == FPrint.DeviceError.BUSY:
            return DeviceBusy(name, error.message)
        if code == FPrint.DeviceError.DATA_NOT_FOUND:
            return PrintNotOnSensor(name)
        if code == FPrint.DeviceError.DATA_DUPLICATE:
            return FingerAlreadyOnSensor(name)
        if code == FPrint.DeviceError.TOO_HOT:
            return RetryScan("sensor_too_hot", "The sensor is too hot: wait a moment")
        usage = _usage_errors().get(code)
        if usage is not None:
            refused = FprintUsageError(f"the reader {name} refused the request: {error.message}", usage)
            refused.lasting = code != FPrint.DeviceError.NOT_OPEN
            return refused
        return FprintError(f"the reader {name} failed: {error.message}", "unplug and replug the reader")
    if error.matches(Gio.io_error_quark(), Gio.IOErrorEnum.CANCELLED):
        return CaptureCancelled()
    if "busy" in error.message.lower():  # libusb: the interface is claimed by another process
        return DeviceBusy(name, error.message)
    return FprintError(f"the reader {name} failed: {error.message}", "unplug and replug the reader")


def _is_libfprint_timeout(error: BaseException) -> bool:
    from gi.repository import Gio, GLib

    return isinstance(error, GLib.Error) and error.matches(Gio.io_error_quark(), Gio.IOErrorEnum.TIMED_OUT)


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


class FprintReader:
    """A libfprint reader chosen by ``selector`` (driver name, device id, ``driver:id``, or "" for the first).

    ``env``: environment variables set before the context is made (libfprint's
    virtual drivers read ``FP_VIRTUAL_IMAGE`` / ``FP_VIRTUAL_DEVICE`` then).
    """

    def __init__(
        self, selector: str = "", *, env: dict[str, str] | None = None, loop: GLibThread | None = None
    ) -> None:
        self.selector = selector
        self.env = dict(env or {})
        self.loop = loop or shared_loop()
        self.info: ReaderInfo | None = None
        self._context: Any = None
        self._device: Any = None
        self._removed = threading.Event()
        self._image: FingerImage | None = None

    @property
    def name(self) -> str:
        return self.info.name if self.info else (self.selector or "libfprint reader")

    @property
    def is_open(self) -> bool:
        return self._device is not None and not self._removed.is_set()

    @property
    def removed(self) -> bool:
        return self._removed.is_set()

    def finger_needed(self) -> bool:
        """Is the reader waiting for a finger now? (What a person sees as the sensor lighting up.)"""
        from gi.repository import FPrint

        device = self._device
        if device is None:
            return False
        status = self.loop.call(device.get_finger_status)
        return bool(status & FPrint.FingerStatusFlags.NEEDED)

    # ---------------------------------------------------------------- open / close
    def open(self, timeout_s: float = 10.0) -> ReaderInfo:
        """A fresh context (so a reader that came back is found again), the reader, opened."""
        self.close()

        def start(future: concurrent.futures.Future[ReaderInfo]) -> None:
            from gi.repository import FPrint

            with _environment(self.env):  # read while the context enumerates, then put back
                self._context = FPrint.Context.new()
                devices = self._context.get_devices()
            infos = [_info(d) for d in devices]
            chosen = next((d for d, i in zip(devices, infos, strict=True) if _matches(i, self.selector)), None)
            if chosen is None:
                raise DeviceNotFound(self.selector, [i.selector for i in infos])
            self._removed.clear()
            chosen.connect("removed", lambda *_: self._removed.set())
            info = _info(chosen)

            def done(device: Any, result: Any) -> None:
                try:
                    device.open_finish(result)
                except Exception as exc:
                    future.set_exception(translate(exc, info.name))
                    return
                self._device = device
                future.set_result(info)

            chosen.open(None, done)

        self.info = self._wait(self.loop.start_async(start), None, timeout_s, None)
        return self.info

    def close(self) -> None:
        device, self._device = self._device, None
        if device is None:
            return

        def start(future: concurrent.futures.Future[None]) -> None:
            def done(dev: Any, result: Any) -> None:
                with contextlib.suppress(Exception):  # already gone: nothing to release
                    dev.close_finish(result)
                future.set_result(None)

            device.close(None, done)

        with contextlib.suppress(concurrent.futures.TimeoutError):
            self.loop.start_async(start).result(5)
        self._context = None

    # ---------------------------------------------------------------- waiting
    def _wait(
        self,
        future: concurrent.futures.Future[Any],
        cancellable: Any,
        timeout_s: float,
        cancel: threading.Event | None,
    ) -> Any:
        deadline = time.monotonic() + timeout_s
        timed_out = False
        while True:
            try:
                return future.result(POLL_S)
            except concurrent.futures.TimeoutError:
                pass
            except CaptureCancelled:
                if timed_out:
                    raise CaptureTimeout(timeout_s) from None
                raise
            asked = cancel is not None and cancel.is_set()
            if (asked or time.monotonic() > deadline) and cancellable is not None and not cancellable.is_cancelled():
                timed_out = not asked
                # On the loop thread, where libfprint runs: its cancel handlers then never race its own sources.
                self.loop.submit(cancellable.cancel)  # the operation ends with G_IO_ERROR_CANCELLED
            elif time.monotonic() > deadline + CANCEL_GRACE_S:
                raise FprintError(
                    f"the reader {self.name} does not answer (not even to a cancel)", "unplug and replug the reader"
                )

    def _run(
        self,
        begin: Callable[[Any, Any, Callable[[Any, Any], None]], None],
        finish: Callable[[Any, Any], Any],
        timeout_s: float,
        cancel: threading.Event | None,
    ) -> Any:
        """One asynchronous libfprint call with a fresh Gio.Cancellable; libfprint's own
        G_IO_ERROR_TIMED_OUT (the virtual drivers' "no command yet") means "no finger yet": start again."""
        from gi.repository import Gio

        deadline = time.monotonic() + timeout_s
        while True:
            if self._removed.is_set() or self._device is None:
                raise DeviceRemoved(self.name)
            cancellable = Gio.Cancellable()
            future = self._start(begin, finish, self._device, cancellable)
            try:
                return self._wait(future, cancellable, max(0.0, deadline - time.monotonic()), cancel)
            except DeviceRemoved:
                self._removed.set()  # the error may come before libfprint's "removed" signal
                raise
            except Exception as exc:
                if not _is_libfprint_timeout(exc):
                    raise
                if time.monotonic() > deadline:
                    raise CaptureTimeout(timeout_s) from None

    def _start(
        self,
        begin: Callable[[Any, Any, Callable[[Any, Any], None]], None],
        finish: Callable[[Any, Any], Any],
        device: Any,
        cancellable: Any,
    ) -> concurrent.futures.Future[Any]:
        name = self.name

        def start(future: concurrent.futures.Future[Any]) -> None:
            def done(dev: Any, result: Any) -> None:
                try:
                    future.set_result(finish(dev, result))
                except Exception as exc:
                    future.set_exception(exc if _is_libfprint_timeout(exc) else translate(exc, name))

            begin(device, cancellable, done)

        return self.loop.start_async(start)

    # ---------------------------------------------------------------- image readers
    def capture(self, timeout_s: float = 15.0, cancel: threading.Event | None = None) -> FingerImage:
        """Wait for a finger and capture it: the 8-bit image libfprint hands over, with its resolution."""
        driver = self.info.driver if self.info else ""

        def finish(device: Any, result: Any) -> FingerImage:
            image = device.capture_finish(result)
            width, height = image.get_width(), image.get_height()
            pixels = np.frombuffer(image.get_data(), np.uint8, count=width * height).reshape(height, width).copy()
            return FingerImage(pixels, resolution_dpi(driver, image.get_ppmm()))

        return self._run(lambda d, c, cb: d.capture(True, c, cb), finish, timeout_s, cancel)

    # The fingerprint-image-source interface the capture sessions use (like the serial driver's).
    def wait_for_finger(self, timeout_s: float, *, cancel: threading.Event | None = None) -> None:
        self._image = self.capture(timeout_s, cancel)

    def wait_for_lift(self, timeout_s: float, *, cancel: threading.Event | None = None) -> bool:
        return True  # libfprint completes a capture once the finger is off again

    def download_image(self) -> np.ndarray:
        image, self._image = self._image, None
        if image is None:
            raise FprintUsageError("no image captured yet", "call wait_for_finger first")
        return image.pixels

    # ---------------------------------------------------------------- match on sensor
    def enroll(
        self,
        progress: Callable[[int, RetryScan | None], None] | None = None,
        timeout_s: float = 60.0,
        cancel: threading.Event | None = None,
    ) -> bytes:
        """Enroll a finger on the sensor (all its stages); the serialized print for the agent to keep."""
        from gi.repository import FPrint

        def on_progress(device: Any, stage: int, print_: Any, data: Any, error: Any) -> None:
            if progress is not None:
                retry = translate(error, self.name) if error is not None else None
                progress(stage, retry if isinstance(retry, RetryScan) else None)

        def begin(device: Any, cancellable: Any, done: Callable[[Any, Any], None]) -> None:
            device.enroll(FPrint.Print.new(device), cancellable, on_progress, (None,), done)  # data: a tuple

        enrolled = self._run(begin, lambda d, r: d.enroll_finish(r), timeout_s, cancel)
        return bytes(enrolled.serialize())

    def verify(self, serialized: bytes, timeout_s: float = 15.0, cancel: threading.Event | None = None) -> bool:
        """Scan a finger and let the sensor compare it with one enrolled print."""
        enrolled = deserialized(serialized, self.name)  # before the scan: an unreadable print is no finger's fault

        def begin(device: Any, cancellable: Any, done: Callable[[Any, Any], None]) -> None:
            device.verify(enrolled, cancellable, None, None, done)  # no match_cb

        matched, _scanned = self._run(begin, lambda d, r: d.verify_finish(r), timeout_s, cancel)
        return bool(matched)

    def identify(
        self, serialized: list[bytes], timeout_s: float = 15.0, cancel: threading.Event | None = None
    ) -> int | None:
        """Scan a finger and let the sensor find it among enrolled prints: its index, or None.

        A reader without identification is refused before the scan: libfprint's own refusal came after
        the person had placed a finger, with the generic fix "unplug and replug the reader".
        """

        if self.info is not None and not self.info.identify:
            raise FprintUsageError(
                f"the reader {self.name} cannot identify (libfprint's {self.info.driver} driver has no identification)",
                "verify a claimed id on it instead (capture-agent verify --subject ID), or identify on a reader "
                "that can (`capture-agent devices` lists what each does)",
            )
        prints = [deserialized(blob, self.name) for blob in serialized]

        def begin(device: Any, cancellable: Any, done: Callable[[Any, Any], None]) -> None:
            device.identify(prints, cancellable, None, None, done)

        match, _scanned = self._run(begin, lambda d, r: d.identify_finish(r), timeout_s, cancel)
        if match is None:
            return None
        return next((i for i, p in enumerate(prints) if p.equal(match)), None)

    # ---------------------------------------------------------------- the sensor's own storage
    def _storage_or_refuse(self) -> None:
        """A reader without storage is refused before libfprint: there is nothing on it to delete or list."""
        if self.info is not None and not self.info.storage:
            raise NoSensorStorage(self.name, self.info.driver)

    def delete_print(self, serialized: bytes, timeout_s: float = 10.0, cancel: threading.Event | None = None) -> bool:
        """Delete the enrolled print from the reader's own storage: True when deleted, False when the reader did
        not hold it (libfprint's DATA_NOT_FOUND: deleted before, or the reader was reset). The print is the one
        the agent kept (for a reader with storage, a reference to its slot on the sensor); errors as the other
        calls' (an unplug is DeviceRemoved, a reader without storage NoSensorStorage before any USB)."""
        self._storage_or_refuse()
        enrolled = deserialized(serialized, self.name)

        def begin(device: Any, cancellable: Any, done: Callable[[Any, Any], None]) -> None:
            device.delete_print(enrolled, cancellable, done)

        try:
            self._run(begin, lambda d, r: d.delete_print_finish(r), timeout_s, cancel)
        except PrintNotOnSensor:
            return False
        return True

    def empty_storage(self, timeout_s: float = 10.0, cancel: threading.Event | None = None) -> int:
        """Delete every print the reader's own storage holds (everyone's, those other software enrolled included):
        libfprint's list, then a delete of each, each call bounded by ``timeout_s``; how many were deleted.

        Why list and delete rather than libfprint's clear_storage: the one reader the tests can drive here
        (libfprint 1.94's virtual_device_storage) declares STORAGE_CLEAR but never completes a clear (it waits
        for a test command none of its commands satisfies), so a clear could not be shown to work; list and
        delete are what forget already uses, and reach every print the reader holds. Refused before libfprint
        on a reader without storage (:class:`NoSensorStorage`) or that cannot list it (:class:`NoStorageList`).
        """
        self._storage_or_refuse()
        if self.info is not None and not self.info.storage_list:
            raise NoStorageList(self.name, self.info.driver)

        def listing(device: Any, cancellable: Any, done: Callable[[Any, Any], None]) -> None:
            device.list_prints(cancellable, done)

        deleted = 0
        for stored in self._run(listing, lambda d, r: d.list_prints_finish(r), timeout_s, cancel):

            def begin(device: Any, cancellable: Any, done: Callable[[Any, Any], None], p: Any = stored) -> None:
                device.delete_print(p, cancellable, done)

            try:
                self._run(begin, lambda d, r: d.delete_print_finish(r), timeout_s, cancel)
            except PrintNotOnSensor:  # gone meanwhile: nothing left to delete
                continue
            deleted += 1
        return deleted

    def holds(self, serialized: bytes, timeout_s: float = 10.0, cancel: threading.Event | None = None) -> bool:
        """Whether the reader's own storage holds this print (libfprint's list_prints, compared as libfprint
        compares prints): what a delete is checked against."""
        self._storage_or_refuse()
        enrolled = deserialized(serialized, self.name)

        def begin(device: Any, cancellable: Any, done: Callable[[Any, Any], None]) -> None:
            device.list_prints(cancellable, done)

        stored = self._run(begin, lambda d, r: d.list_prints_finish(r), timeout_s, cancel)
        return any(enrolled.equal(p) for p in stored)
