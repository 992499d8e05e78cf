"""Keeping every configured device open: opened at start, watched, reopened with backoff.

The one place that reconnects anything. A device that vanishes (its serial
port gone, libfprint's "removed", a camera's stream ended) is marked away, its
running capture aborted (the session gets a typed error), an audit event
recorded, and its close queued on its owner. Reopening is tried with backoff
until it succeeds, which is audited too. Each device has its own owner, so one
device's trouble never blocks or touches another.
"""

from __future__ import annotations

import asyncio
import functools
import re
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import structlog

from agent.config import AgentConfig, DeviceSection
from agent.devices.capabilities import CAMERA, FINGERPRINT_IMAGE, MATCH_ON_SENSOR
from agent.devices.errors import NoDeviceFor
from agent.devices.kinds import Device, make_device

log = structlog.get_logger()

BACKOFF_MAX_S = 60.0
# A device that goes away within this many check intervals of being opened is flapping (a camera
# whose stream breaks mid-frame, a loose connector): after its n-th flap in a row its reopen waits
# 2**n intervals, up to BACKOFF_MAX_S, instead of one. Each flap is two audit events; undamped, a link
# that breaks every few seconds writes 12 a minute (at the default 5 s) and fills an offline outbox in
# hours. A device that stayed longer starts again at one interval, whatever came before.
FLAP_INTERVALS = 6
LEGACY_READER = "reader"  # what the old [reader] section's module is called among the devices
# The kinds that read fingers: the local API's default modality, and the step-up of a face verification.
FINGER_KINDS = frozenset({"zfm", "fprint"})
# What each kind can do once made (a libfprint reader says which of its two only when opened): what a device that
# could not be set up would have offered.
KIND_CAPABILITIES = {
    "zfm": frozenset({FINGERPRINT_IMAGE}),
    "fprint": frozenset({FINGERPRINT_IMAGE, MATCH_ON_SENSOR}),
    "camera": frozenset({CAMERA}),
}
# A device's "state" in /health: open now, made but not open (unplugged; reopened by itself), or never made at
# start (the config or the host must change, then the agent restart).
CONNECTED, NOT_CONNECTED, NOT_SET_UP = "connected", "not_connected", "not_set_up"


def configured_devices(config: AgentConfig) -> list[tuple[str, DeviceSection]]:
    """The ``[[device]]`` list, with the old ``[reader]`` (kind "zfm") as one more serial module; named."""
    sections = list(config.device)
    reader = config.reader
    if reader.kind == "zfm" and not any(d.kind == "zfm" and d.port == reader.port for d in sections):
        legacy = DeviceSection(  # no name of its own: that is how config_place tells it from a [[device]]
            kind="zfm", port=reader.port, password=reader.password, check_interval_s=reader.check_interval_s
        )
    else:
        legacy = None
    named: list[tuple[str, DeviceSection]] = [(LEGACY_READER, legacy)] if legacy is not None else []
    counts: dict[str, int] = {"zfm": 1} if legacy is not None else {}  # unnamed modules keep the names they had
    for section in sections:
        counts[section.kind] = counts.get(section.kind, 0) + 1
        named.append((section.name or f"{section.kind}{counts[section.kind] - 1}", section))
    return named


def config_place(name: str, section: DeviceSection) -> str:
    """Where in the config file this device is set: ``[reader]`` or its ``[[device]]`` entry."""
    if name == LEGACY_READER and not section.name:
        return "[reader]"
    if section.name:
        return f'[[device]] name = "{section.name}"'
    return f'the [[device]] with kind = "{section.kind}" (known as {name})'


def fix_in_place(fix: str, name: str, section: DeviceSection) -> str:
    """A driver's fix that names ``[reader] KEY``, pointed at where this device is really configured.

    Why: the serial driver predates ``[[device]]`` and its fixes say "check [reader] port";
    an installer whose module is a ``[[device]]`` would look for a section that is not there.
    """
    place = config_place(name, section)
    if place == "[reader]":
        return fix
    return re.sub(r"\[reader\] (\w+)", lambda m: f"{m.group(1)} in {place}", fix)


@dataclass(frozen=True)
class Unmade:
    """A configured device that could not even be made at start (libfprint missing, a source its driver refuses).

    Kept beside the devices made so that /health counts it like a device not connected: it is as unusable,
    and more lasting, since nothing retries it (the config or the host must change, then the agent restart).
    """

    name: str
    kind: str
    error: str
    fix: str
    # As a device never opened reads to whoever asks (agent.forget: a reader that cannot be asked to delete,
    # whose sealed prints are still erased and its sensor's copy kept in a note for later): not connected, and
    # whether it keeps prints of its own unknown (None, not False: False would drop the note for its sensor).
    connected: ClassVar[bool] = False
    stores_prints: ClassVar[bool | None] = None

    @property
    def why_unreachable(self) -> str:
        return f"it could not be set up: {self.error}"

    def status(self, required: bool) -> dict[str, Any]:
        """Its /health entry, shaped as a made device's: a kiosk app reading ``devices`` finds every configured
        device there, this one with the state, error and fix that say why it cannot be used."""
        return {
            "name": self.name,
            "kind": self.kind,
            "state": NOT_SET_UP,
            "connected": False,
            "capabilities": [],  # nothing was made that could do anything
            "required": required,
            "error": self.error,
            "fix": self.fix or "check its [[device]] entry",
        }


class DeviceSupervisor:
    def __init__(
        self,
        devices: list[tuple[str, DeviceSection]],
        record: Callable[[str, dict[str, Any]], None],
        factory: Callable[[DeviceSection, str], Device] | None = None,
        state_dir: Path | None = None,
    ) -> None:
        factory = factory or functools.partial(make_device, state_dir=state_dir)
        self.record = record
        self.devices: list[Device] = []
        self.faults: dict[str, str] = {}  # devices that could not even be made (libfprint missing...)
        self.unmade: list[Unmade] = []  # the same, for /health's status and fix
        self.configured: list[Device | Unmade] = []  # every configured device, made or not, in the config's order
        # From the config, not from the devices made: a reader that could not be made is still the kiosk's reader.
        self.reads_fingers = any(section.kind in FINGER_KINDS for _, section in devices)
        for name, section in devices:
            try:
                self.devices.append(factory(section, name))
                self.configured.append(self.devices[-1])
            except Exception as exc:  # e.g. FprintUnavailable: the other devices still run
                fix = fix_in_place(getattr(exc, "fix", ""), name, section)
                self.faults[name] = str(exc)
                error = str(exc.args[0] if exc.args else exc)
                self.unmade.append(Unmade(name, section.kind, error, fix))
                self.configured.append(self.unmade[-1])
                record("device_fault", {"device": name, "kind": section.kind, "error": error, "fix": fix})
        for device in self.devices:  # a fault a session meets is audited as the supervisor's own are
            device.on_fault = functools.partial(self._session_fault, device)
            device.on_lost = functools.partial(self._wake_soon, device)
        self._wake: dict[str, asyncio.Event] = {}  # per device: look now (a session met it gone)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._backoff = {d.name: d.section.check_interval_s for d in self.devices}
        self._opened_at: dict[str, float] = {}  # monotonic time of each device's last successful open
        self._flaps: dict[str, int] = {}  # flaps in a row (see FLAP_INTERVALS)
        self._tasks: list[asyncio.Task[None]] = []

    def _audit_fault(self, device: Device, exc: Exception) -> None:
        error = str(exc.args[0] if exc.args else exc)
        fault = {"device": device.name, "kind": device.kind, **device.where(), "error": error}
        fix = fix_in_place(getattr(exc, "fix", ""), device.name, device.section)
        self.record("device_fault", {**fault, "fix": fix})

    def _session_fault(self, device: Device, exc: Exception) -> None:
        """A fault met by a session in its worker thread: audited on the event loop, which owns the audit trail.

        Never recorded from the worker itself once a loop owns the trail: the daemon's outbox is an sqlite
        connection of the loop's thread (another thread's write raises) and its repeat counts are unlocked.
        A loop closed before or during the hand-over (checking ``is_closed()`` first left a window where
        ``call_soon_threadsafe`` raised RuntimeError into the session) has closed the trail too: the fault
        is then said in the log, its fields whole, and the session still gets its typed error.
        """
        if self._loop is None:  # never opened: no loop owns the trail, the caller's thread is the only one
            self._audit_fault(device, exc)
            return
        try:
            self._loop.call_soon_threadsafe(self._audit_fault_or_say, device, exc)
        except RuntimeError:  # the loop is closed (the agent has stopped)
            self._not_audited(device, exc, "the agent had stopped: its audit trail was closed")

    def _audit_fault_or_say(self, device: Device, exc: Exception) -> None:
        """:meth:`_audit_fault` as a loop callback: a trail that refuses it (closed by a stopping daemon) is
        said in the log with the fault, not in asyncio's "Exception in callback" without it."""
        try:
            self._audit_fault(device, exc)
        except Exception as refused:
            self._not_audited(device, exc, f"{type(refused).__name__}: {refused}")

    def _not_audited(self, device: Device, exc: Exception, why: str) -> None:
        """A device fault the audit trail could not take, in the log as the daemon says an event not stored."""
        error = str(exc.args[0] if exc.args else exc)
        fault = {"device": device.name, "kind": device.kind, **device.where(), "error": error,
                 "fix": fix_in_place(getattr(exc, "fix", ""), device.name, device.section)}
        log.error("audit_event_not_stored", audit=True, type="device_fault", data=fault, storage_error=why)

    def _wake_soon(self, device: Device) -> None:
        """From a session's worker thread: the device's watch looks now rather than at its next interval.

        A closed loop has no watch left to wake (the session gets its typed error all the same): nothing to do,
        where the ``is_closed()`` check then ``call_soon_threadsafe`` could raise RuntimeError into the session.
        """
        wake = self._wake.get(device.name)
        if wake is None or self._loop is None:
            return
        with suppress(RuntimeError):
            self._loop.call_soon_threadsafe(wake.set)

    async def open_all(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = {d.name: asyncio.Event() for d in self.devices}
        await asyncio.gather(*(self._open(d, first=True) for d in self.devices))

    async def _open(self, device: Device, first: bool = False) -> bool:
        """Open ``device``; a failure is audited (at start) and logged as a warning with when the next try is.

        Why a warning with the error's type and ``reopen_in_s`` (as device_unplugged says it): at info, a reader
        that failed every reopen was invisible at the default level, and nothing said if or when it was tried again.
        """
        try:
            details = await device.open()
        except Exception as exc:
            if first:
                self._audit_fault(device, exc)
            else:  # each failed reopen waits twice as long for the next (up to BACKOFF_MAX_S)
                self._backoff[device.name] = min(BACKOFF_MAX_S, self._backoff[device.name] * 2)
            log.warning(
                "device_open_failed",
                device=device.name,
                reopen=not first,
                error_type=type(exc).__name__,
                error=str(exc.args[0] if exc.args else exc),
                fix=fix_in_place(getattr(exc, "fix", ""), device.name, device.section),
                reopen_in_s=round(self._backoff[device.name], 3),
            )
            return False
        self._opened_at[device.name] = time.monotonic()
        self._backoff[device.name] = device.section.check_interval_s  # failed reopens are over
        self.record("device_plugged", {"device": device.name, "kind": device.kind, **device.where(), **details})
        return True

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._watch(d), name=f"watch {d.name}") for d in self.devices]

    async def _watch(self, device: Device) -> None:
        """Watch one device for the daemon's life: a failure of one look is logged, never the end of the watch.

        A watch that died would leave its device unplugged for good while the
        daemon reports ready; one bad look (a driver bug, the audit trail's disk
        full) costs one interval, with the backoff of a failed reopen.
        """
        interval = device.section.check_interval_s
        wake = self._wake.setdefault(device.name, asyncio.Event())
        while True:
            with suppress(TimeoutError):  # a session that met the device gone wakes it early (Device.line_lost)
                await asyncio.wait_for(wake.wait(), interval if device.connected else self._backoff[device.name])
            wake.clear()
            try:
                await self._look(device, interval)
            except Exception as exc:
                log.error("device_watch_error", device=device.name, error_type=type(exc).__name__, error=str(exc))
                self._backoff[device.name] = min(BACKOFF_MAX_S, self._backoff[device.name] * 2)

    async def _look(self, device: Device, interval: float) -> None:
        """One look at a device: report it gone, or try to reopen it."""
        if device.connected and (device.lost.is_set() or not device.present()):
            device.went_away()
            stayed_s = time.monotonic() - self._opened_at.get(device.name, float("-inf"))
            flaps = self._flaps.get(device.name, 0) + 1 if stayed_s < FLAP_INTERVALS * interval else 0
            self._flaps[device.name] = flaps
            self._backoff[device.name] = min(BACKOFF_MAX_S, interval * 2**flaps)
            self.record(
                "device_unplugged",
                {"device": device.name, "kind": device.kind, **device.where(),
                 "reopen_in_s": round(self._backoff[device.name], 3)},
            )
            return
        if not device.connected and device.may_reopen():
            await self._open(device)  # a failure doubles the wait for the next try (_open)

    def pick(self, capability: str, name: str = "") -> Device:
        """A device that can do ``capability`` (a connected one first; by name when given)."""
        able = [d for d in self.devices if capability in d.capabilities and (not name or d.name == name)]
        if not able:
            def could(d: Device | Unmade) -> bool:
                return capability in KIND_CAPABILITIES.get(d.kind, ()) and (not name or d.name == name)

            unmade = [(u.name, u.error, u.fix) for u in self.unmade if could(u)]
            waiting = [d.name for d in self.devices if not d.connected and not d.capabilities and could(d)]
            names = tuple(d.name for d in self.devices) + tuple(u.name for u in self.unmade)
            raise NoDeviceFor(capability, [f"{d.name} ({d.kind})" for d in self.devices], name, names, unmade, waiting)
        return next((d for d in able if d.connected), able[0])

    def required(self, device: Device) -> bool:
        """Whether sessions need ``device``, so that its absence makes the daemon's /health "degraded".

        The config has no "optional" key, so it is decided from the modalities the devices serve. A finger
        reader is always required: "finger" is the local API's default modality, and a face verification
        whose factor rule needs a finger steps up on the reader. A camera is required only on a kiosk with
        no finger reader configured (faces are all it serves); beside a reader it is optional: the default
        sessions run without it, and only a face session waits for it to come back.
        """
        return self.required_kind(device.kind)

    def required_kind(self, kind: str) -> bool:
        """:meth:`required` by kind alone: a device that could not be made is judged as it would have been."""
        return kind in FINGER_KINDS or not self.reads_fingers

    def away(self) -> tuple[list[str], list[str]]:
        """The names of the devices not connected now: the required ones, then the optional ones."""
        gone = [d for d in self.devices if not d.connected]
        return [d.name for d in gone if self.required(d)], [d.name for d in gone if not self.required(d)]

    def never_made(self) -> tuple[list[Unmade], list[Unmade]]:
        """The devices that could not be made at start: the required ones, then the optional ones."""
        return (
            [u for u in self.unmade if self.required_kind(u.kind)],
            [u for u in self.unmade if not self.required_kind(u.kind)],
        )

    def health(self) -> dict[str, Any]:
        """/health's ``devices``: every configured device, in the config's order, the ones never made included
        (they were only named in ``device_faults``, so an app listing ``devices`` lost them without a trace)."""
        return {"devices": [self._entry(d) for d in self.configured], "device_faults": self.faults}

    def _entry(self, device: Device | Unmade) -> dict[str, Any]:
        if isinstance(device, Unmade):
            return device.status(self.required_kind(device.kind))
        state = CONNECTED if device.connected else NOT_CONNECTED
        return {**device.status(), "state": state, "required": self.required(device)}

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with suppress(Exception, asyncio.CancelledError):  # closing must reach every device
                await task
        await asyncio.gather(*(asyncio.to_thread(d.stop) for d in self.devices))
