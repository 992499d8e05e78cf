"""The device kinds: a serial module, a libfprint reader, a camera, each behind its owner.

Every driver call of a device runs on its :class:`~agent.devices.owner.DeviceOwner`.
The capability objects handed to sessions are thin proxies that submit to it,
so a session in its worker thread and the supervisor never reach a driver at
the same time. An unplug noticed by the supervisor sets the device's
``abort`` event: the running capture stops at its next poll and the session
gets :class:`~agent.devices.errors.DeviceUnplugged`. The agent's stop sets the
same event; a capture it cut short gets :class:`~agent.devices.errors.DeviceStopped`
(told ``agent_stopping``: try again once the agent is back), not "plug it back in".
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

from agent.config import DeviceSection
from agent.devices import capabilities as cap
from agent.devices.errors import (
    DeviceCannot,
    DeviceError,
    DeviceFault,
    DeviceStopped,
    DeviceUnavailable,
    DeviceUnplugged,
)
from agent.devices.owner import DeviceOwner


class EitherEvent:
    """Set when either event is: a session's cancel or the device's unplug, for drivers taking one event."""

    def __init__(self, first: threading.Event | None, second: threading.Event) -> None:
        self.first, self.second = first, second

    def is_set(self) -> bool:
        return self.second.is_set() or (self.first is not None and self.first.is_set())

    def wait(self, timeout: float | None = None) -> bool:
        if self.is_set():
            return True
        self.second.wait(timeout)  # an unplug wakes at once; a cancel within this poll
        return self.is_set()


class Device:
    """Base of the kinds: name, capabilities, its owner, open/close/present.

    A kind makes its driver object (which refuses a bad source, a missing libfprint) before calling this
    ``__init__``, which starts the owner thread: made the other way round, every device the config refused left
    an owner thread behind, waiting forever for a job.
    """

    kind = ""

    def __init__(self, section: DeviceSection, name: str) -> None:
        self.section = section
        self.name = name
        self.capabilities: frozenset[str] = frozenset()
        self.owner = DeviceOwner(name)
        self.abort = threading.Event()  # set by the supervisor when the device goes away
        self.connected = False
        # Why ``abort`` was set, for what a capture it cut short is told: the agent's stop (``stopping``, for good)
        # or an unplug the supervisor saw (``_went_away``, until the next open). Without them the stop, which sets
        # ``abort`` too, was told "went away (unplugged?): plug it back in" of a reader still plugged in.
        self.stopping = False
        self._went_away = False
        self.details: dict[str, Any] = {}
        self.on_fault: Any = None  # the supervisor audits a fault a session met (a device_fault event)
        # Set when a session met the device's line gone (a serial module unplugged and plugged back between two
        # of the supervisor's looks leaves its path there, so present() alone would never tell): the supervisor
        # then closes and reopens it. ``on_lost`` wakes the supervisor's watch at once (from any thread).
        self.lost = threading.Event()
        self.on_lost: Any = None

    # Run on the owner thread only.
    def _open(self) -> dict[str, Any]:
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError

    def present(self) -> bool:
        """A cheap check that touches no driver (a path, a flag): is the device still there?"""
        raise NotImplementedError

    def may_reopen(self) -> bool:
        """Worth trying to open now? (A serial port: its path exists. Others: only opening tells.)"""
        return True

    def where(self) -> dict[str, str]:
        """Where the device is, for audit events and logs (a port, a libfprint selector, a camera source)."""
        return {}

    async def open(self) -> dict[str, Any]:
        self.details = await self.owner.run(self._open)
        self.abort.clear()
        self.lost.clear()
        self._went_away = False
        self.connected = True
        return self.details

    async def close(self) -> None:
        self.connected = False
        await self.owner.run(self._close)

    def line_lost(self) -> None:
        """A session met the device gone under the driver: the supervisor must close and reopen it."""
        self.lost.set()
        if self.connected and self.on_lost is not None:  # one the supervisor saw go is on its backoff already
            self.on_lost()

    def went_away(self) -> None:
        """The supervisor saw it vanish: stop what runs, refuse new work, close in turn."""
        self._went_away = True  # before the abort: the capture it ends reads why
        self.connected = False
        self.abort.set()
        self.owner.submit(self._close)

    def stop(self) -> None:
        """For good (the agent stops): not connected from now on, so a session still running is refused at
        once (DeviceStopped, before or at the owner, and a capture the stop cuts short) rather than queued for
        nobody. ``stopping`` is set first, before ``abort`` wakes the capture that then reads it.

        Idempotent, from any number of threads at once: the close is queued with the owner's stop, by the first
        stop alone (stopped twice, a failed start then the stop, it is closed once), and each returns once the
        owner has ended. Checked, then queued apart, a second stop could land between the two and be refused.
        """
        self.stopping = True
        self.connected = False
        self.abort.set()
        self.owner.stop(last=self._close)

    @property
    def stopped_by_agent(self) -> bool:
        """Whether the agent's stop, and not an unplug the supervisor saw first, is why the device is closed.

        Why not ``stopping`` alone: a reader pulled out, then the agent stopping, was told as the stop ("try again
        once the agent is back") by every look at it after, of a reader that is not there.
        """
        return (self.stopping or self.owner.stopped) and not self._went_away

    def cut_short(self, still_there: bool = True) -> DeviceError:
        """What a capture ended by ``abort`` (or failing with the device gone) is told: the agent's stop, unless an
        unplug came first or the device is not there (``still_there``, the kind's look at it): a reader pulled
        out mid-session still says unplugged, whatever stop follows."""
        if self.stopping and not self._went_away and still_there:
            return DeviceStopped(self.name)
        return DeviceUnplugged(self.name)

    def _guarded(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """One driver call on the owner thread; an unplug during it becomes DeviceUnplugged, the agent's stop
        DeviceStopped."""
        if self.stopped_by_agent:  # the agent is stopping: said so, not "plug it in"
            raise DeviceStopped(self.name)
        if not self.connected:  # an unplug seen before the stop included
            raise DeviceUnavailable(self.name)
        try:
            return self.owner.call(fn, *args, **kwargs)
        except DeviceError:
            raise
        except Exception as exc:
            there = self.present()
            if self.abort.is_set() or not there:
                raise self.cut_short(there) from exc
            self._audit_if_fault(exc)
            raise

    def _outcomes(self) -> tuple[type[BaseException], ...]:
        """Driver errors that are a capture's ordinary ends, not faults: a retry, no finger in time (and a
        kind's cancel and unplug, which it adds)."""
        from drivers.errors import FingerTimeout, RetryCapture

        return (RetryCapture, FingerTimeout)

    def _audit_if_fault(self, exc: Exception) -> None:
        """A driver's typed fault a session met (a module answering noise, a corrupt reply): audited as the
        supervisor's own faults are (invariant 5). Only the camera's were: a serial or USB reader failing every
        session left no device_fault, only each session's end with its reason. A usage error is no fault: one the
        kind can see coming (an operation the device does not declare) is refused before the driver, as
        DeviceCannot; one only the driver or libfprint can tell (a driver's UsageError) is not audited either."""
        from drivers.errors import DeviceError as DriverError
        from drivers.errors import UsageError

        ordinary = (*self._outcomes(), UsageError)
        if isinstance(exc, DriverError) and not isinstance(exc, ordinary) and self.on_fault is not None:
            self.on_fault(exc)

    def status(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "connected": self.connected,
            "capabilities": sorted(self.capabilities),
            **self.details,
        }


class ZfmDevice(Device):
    """A ZFM / R30x / R50x / AS608 module on a serial port: a fingerprint image source."""

    kind = "zfm"

    def __init__(self, section: DeviceSection, name: str, state_dir: Path | None = None) -> None:
        from drivers.zfm.driver import ZfmModule

        module = ZfmModule(section.port, baud=section.baud, password=section.password)  # before the owner thread
        super().__init__(section, name)
        self.module = module
        self.capabilities = frozenset({cap.FINGERPRINT_IMAGE})
        self.resolution_dpi = 500
        self.memory = state_dir / "devices" / f"{name}.json" if state_dir is not None else None

    def _remembered_baud(self) -> int | None:
        if self.memory is None:
            return None
        try:
            data = json.loads(self.memory.read_text())
        except (OSError, ValueError):
            return None
        return data.get("baud") if data.get("port") == self.section.port else None

    def _remember(self, baud: int) -> None:
        if self.memory is None or self._remembered_baud() == baud:
            return
        # The state directory's own modes (0700 folder, 0600 files), whatever the umask of a daemon started
        # outside its unit: `doctor` fails a state directory with a file others may read.
        self.memory.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.memory.parent, 0o700)
        tmp = self.memory.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as stream:
            stream.write(json.dumps({"port": self.section.port, "baud": baud}))
        os.replace(tmp, self.memory)

    def _open(self) -> dict[str, Any]:
        """Find the module at whatever speed it answers (the remembered one first), then raise it to
        the configured speed (115200 by default: half the time per image of 57600) and remember it."""
        self.module.baud = self._remembered_baud() or self.module.baud
        info = self.module.open_at_any_baud()
        found = self.module.baud
        if found != self.section.baud:
            self.module.set_baud(self.section.baud)
            info = self.module.info or info
        self._remember(self.module.baud)
        return {"port": self.section.port, "model": info.profile.name, "baud": self.module.baud, "found_at": found}

    def _close(self) -> None:
        self.module.close()

    def present(self) -> bool:
        return os.path.exists(self.section.port)

    def _guarded(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """As every device's, and a port the driver lost (its UnpluggedError) marks the device lost.

        Why: pulled out and plugged back within one check interval, the port's path is
        there again when the supervisor looks, so it never closed the dead descriptor the
        driver holds; every later session failed "went away", telling the person to plug
        back in a module that was plugged in, until the daemon restarted.
        """
        from drivers.zfm.errors import UnpluggedError

        try:
            return super()._guarded(fn, *args, **kwargs)
        except DeviceUnplugged:  # the path was gone when the call failed: the port is lost all the same
            self.line_lost()
            raise
        except UnpluggedError as exc:  # ... or already back (plugged in again at once)
            self.line_lost()
            raise DeviceUnplugged(self.name) from exc

    def _outcomes(self) -> tuple[type[BaseException], ...]:
        from drivers.zfm.errors import CaptureCancelled, UnpluggedError

        return (*super()._outcomes(), CaptureCancelled, UnpluggedError)  # the unplug: DeviceUnplugged (_guarded)

    def may_reopen(self) -> bool:
        return os.path.exists(self.section.port)

    def where(self) -> dict[str, str]:
        return {"port": self.section.port}

    # the fingerprint-image-source capability, for sessions
    def wait_for_finger(self, timeout_s: float, *, cancel: threading.Event | None = None) -> None:
        self._guarded(self.module.wait_for_finger, timeout_s, cancel=EitherEvent(cancel, self.abort))
        if self.abort.is_set():
            raise self.cut_short(self.present())

    def wait_for_lift(self, timeout_s: float, *, cancel: threading.Event | None = None) -> bool:
        return self._guarded(self.module.wait_for_lift, timeout_s, cancel=EitherEvent(cancel, self.abort))

    def download_image(self) -> Any:
        return self._guarded(self.module.download_image)


class FprintDevice(Device):
    """A USB reader through libfprint: an image source, or a match-on-sensor reader."""

    kind = "fprint"

    def __init__(self, section: DeviceSection, name: str, env: dict[str, str] | None = None) -> None:
        from drivers.fprint.reader import FprintReader

        reader = FprintReader(section.selector, env=env)  # before the owner thread (see Device)
        super().__init__(section, name)
        self.reader = reader
        self.resolution_dpi = 500

    def _open(self) -> dict[str, Any]:
        info = self.reader.open()
        self.resolution_dpi = info.dpi
        self.capabilities = frozenset(
            ({cap.FINGERPRINT_IMAGE} if info.image else set()) | ({cap.MATCH_ON_SENSOR} if info.on_sensor else set())
        )
        return {"driver": info.driver, "reader": info.name, "dpi": info.dpi}

    def _close(self) -> None:
        self.reader.close()

    def present(self) -> bool:
        return not self.reader.removed

    def _outcomes(self) -> tuple[type[BaseException], ...]:
        from drivers.fprint.errors import CaptureCancelled, DeviceRemoved

        return (*super()._outcomes(), CaptureCancelled, DeviceRemoved)

    def where(self) -> dict[str, str]:
        return {"selector": self.section.selector or "(the first reader)"}

    def wait_for_finger(self, timeout_s: float, *, cancel: threading.Event | None = None) -> None:
        self._guarded(self.reader.wait_for_finger, timeout_s, cancel=EitherEvent(cancel, self.abort))

    def wait_for_lift(self, timeout_s: float, *, cancel: threading.Event | None = None) -> bool:
        return True

    def download_image(self) -> Any:
        return self._guarded(self.reader.download_image)

    def enroll(
        self, timeout_s: float = 60.0, *, cancel: threading.Event | None = None, progress: Any = None
    ) -> bytes:
        """All enrolment stages on the sensor; ``progress(stage, retry)`` runs on libfprint's thread."""
        return self._guarded(self.reader.enroll, progress, timeout_s, EitherEvent(cancel, self.abort))

    def identify(
        self, enrolled: list[bytes], timeout_s: float = 15.0, *, cancel: threading.Event | None = None
    ) -> int | None:
        """1:N on the sensor. A reader whose driver has no identification is refused here, typed as the
        usage error it is (DeviceCannot): the driver's own refusal is a driver error, audited as a device_fault
        of a reader that works."""
        info = self.reader.info
        if info is not None and not info.identify:
            raise DeviceCannot(
                self.name, "identify", f"libfprint's {info.driver} driver has no identification",
                "verify a claimed id on it instead (capture-agent verify --subject ID), or identify on a reader "
                "that can (`capture-agent devices` lists what each does)",
            )
        return self._guarded(self.reader.identify, enrolled, timeout_s, EitherEvent(cancel, self.abort))

    def unreadable_prints(self, enrolled: list[bytes]) -> dict[int, Exception]:
        """Which of ``enrolled`` libfprint cannot read (by index, each an UnreadablePrint saying why), without the
        sensor: an identification leaves those out, naming whose they are, rather than failing for everyone."""
        from drivers.fprint.prints import unreadable

        return dict(unreadable(enrolled, self.name))

    @property
    def enroll_stages(self) -> int:
        info = self.reader.info
        return int(info.enroll_stages) if info else 0

    @property
    def driver(self) -> str:
        """libfprint's driver name (the reader's identity toward the verifier, with the device's name)."""
        info = self.reader.info
        return str(self.details.get("driver") or (info.driver if info else self.section.selector or "fprint"))

    def verify(self, enrolled: bytes, timeout_s: float = 15.0, *, cancel: threading.Event | None = None) -> bool:
        return self._guarded(self.reader.verify, enrolled, timeout_s, EitherEvent(cancel, self.abort))

    @property
    def stores_prints(self) -> bool | None:
        """Whether the reader keeps prints in its own storage (libfprint's STORAGE feature); None until it has
        been open once (only an open reader says what it does)."""
        info = self.reader.info
        return None if info is None else bool(info.storage)

    def delete_print(self, enrolled: bytes, timeout_s: float = 10.0) -> bool:
        """Delete ``enrolled`` from the reader's own storage, on the owner thread: True deleted, False not there."""
        return self._guarded(self.reader.delete_print, enrolled, timeout_s, self.abort)

    @property
    def lists_storage(self) -> bool | None:
        """Whether the reader lists the prints its storage holds (STORAGE_LIST), so that every one can be deleted;
        None until it has been open once."""
        info = self.reader.info
        return None if info is None else bool(info.storage_list)

    def empty_storage(self, timeout_s: float = 10.0) -> int:
        """Delete every print in the reader's own storage (everyone's), on the owner thread: how many."""
        return int(self._guarded(self.reader.empty_storage, timeout_s, self.abort))

    def holds_print(self, enrolled: bytes, timeout_s: float = 10.0) -> bool:
        """Whether the reader's own storage holds ``enrolled`` (its own list, on the owner thread)."""
        return self._guarded(self.reader.holds, enrolled, timeout_s, self.abort)


def camera_bounds() -> dict[str, Any]:
    """What the agent gives every Camera besides its config entry: the face pipeline's frame sizes (frames it
    would refuse are refused by the driver, before decoding when it can) and the verifier channel's TLS floor
    (ECDHE, AEAD). One place, so `capture-agent devices --camera URL` reads a stream under the daemon's bounds."""
    from biometrics.face.image import MAX_SIDE, MIN_SIDE
    from drivers.camera.stream import TLSFloor
    from protocol.tls import MINIMUM_VERSION, TLS12_CIPHERS

    return {"min_side": MIN_SIDE, "max_side": MAX_SIDE, "tls_floor": TLSFloor(MINIMUM_VERSION, TLS12_CIPHERS)}


class CameraDevice(Device):
    """A camera through OpenCV. Its owner is the camera's own reader thread (the only one touching
    cv2.VideoCapture); consumers read the latest frame it keeps, so they never touch the driver."""

    kind = "camera"

    def __init__(self, section: DeviceSection, name: str) -> None:
        from drivers.camera.camera import Camera

        size = (section.width, section.height) if section.width and section.height else None
        camera = Camera(  # before the owner thread (see Device)
            section.source, size=size, fps=section.fps or None, reconnect=False,
            allow_basic_over_http=section.allow_basic_over_http, ca_file=section.ca_file, **camera_bounds(),
        )
        super().__init__(section, name)
        self.camera = camera
        self.capabilities = frozenset({cap.CAMERA})

    def _open(self) -> dict[str, Any]:
        from drivers.camera.camera import CameraUnavailable
        from drivers.camera.errors import CameraNodeMissingError

        if not self.camera.open_once(timeout_s=max(5.0, self.section.check_interval_s)):
            if isinstance(self.camera.open_error, CameraNodeMissingError):  # a /dev/videoN or file not there
                # "[reader] source" is the driver fixes' spelling, pointed at this device's entry by fix_in_place.
                raise self.camera.open_error.set_in("[reader] source")
            if self.camera.fault is not None:  # it answers, but with what cannot be used: say what and the fix
                raise self.camera.fault
            if self.camera.open_error is not None:  # it refused (a password, a path, a certificate): the fix
                raise self.camera.open_error
            raise CameraUnavailable(
                f"the camera {self.camera.source.redacted} gives no frame", "check it is plugged in or reachable"
            )
        info = self.camera.info
        assert info is not None
        return {"source": info.source, "width": info.width, "height": info.height, "fps": info.fps}

    def _close(self) -> None:
        self.camera.stop()

    def present(self) -> bool:
        return self.camera.connected

    def where(self) -> dict[str, str]:
        return {"source": self.camera.source.redacted}

    def wait_frame(self, after: int = 0, timeout_s: float = 5.0, cancel: threading.Event | None = None) -> Any:
        """The first frame newer than ``after``. A caller that has seen frames (``after`` > 0) is inside a
        capture, so a camera gone since is the unplug it lived through, not one that was never there: a session
        analysing a frame when the camera vanished gets the same error as one waiting for the next."""
        if self.stopped_by_agent:
            raise DeviceStopped(self.name)
        if not self.connected:
            raise DeviceUnplugged(self.name) if after else DeviceUnavailable(self.name)
        from drivers.camera.errors import CameraFault

        try:
            return self.camera.wait_frame(after, timeout_s, EitherEvent(cancel, self.abort))  # type: ignore[arg-type]
        except CameraFault as exc:  # frames of a size out of range, a broken stream: a device fault, audited
            fault = DeviceFault(self.name, str(exc.args[0]), exc.fix)
            if self.on_fault is not None:
                self.on_fault(fault)
            raise fault from None
        except Exception as exc:
            if self.abort.is_set() or not self.camera.connected:
                # Not camera.connected as "still there": the stop's close (camera.stop) clears it at once.
                raise self.cut_short() from exc
            raise


def make_device(section: DeviceSection, name: str, state_dir: Path | None = None) -> Device:
    """A device of the section's kind; ``state_dir`` keeps what must survive a restart (a module's baud)."""
    if section.kind == "zfm":
        return ZfmDevice(section, name, state_dir)
    kinds: dict[str, type[Device]] = {"fprint": FprintDevice, "camera": CameraDevice}
    return kinds[section.kind](section, name)
