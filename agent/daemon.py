"""`capture-agent run`: the long-lived service under systemd.

One asyncio loop does everything, so the watchdog ping is sent from that loop:
if the loop gets stuck, the pings stop and systemd restarts the service. Nothing
polls: the loop sleeps until a timer (watchdog, heartbeat, renewal), a new event
for the outbox, or a signal wakes it.

Lifecycle: config, KEK, identity, outbox (or none yet: a full or read-only disk starts the daemon degraded,
retrying), mTLS client → ``READY=1`` → serve
(event delivery, heartbeat, renewal on schedule, watchdog) → SIGTERM:
``STOPPING=1``, the outbox flushed within a budget, the HTTP/2 connection closed.
SIGHUP reloads the config; a broken new config is refused and the running one
kept. Every step that matters is an audit event in the outbox's hash chain.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import signal
from collections.abc import Callable
from contextlib import suppress
from dataclasses import replace
from typing import Any

import structlog

from agent.client import CLOCK_FIX, VerifierClient
from agent.config import AgentConfig, SessionsSection, load_config
from agent.delivery import EventDelivery
from agent.devices.capabilities import FINGERPRINT_IMAGE, MATCH_ON_SENSOR
from agent.devices.errors import NoDeviceFor
from agent.devices.kinds import Device
from agent.devices.prints import PRINTS_FOLDER, SensorPrintStore
from agent.devices.supervisor import DeviceSupervisor, Unmade, configured_devices
from agent.errors import AgentError, AuditStorageError, IdentityError, StateDirNotTightened
from agent.face_sessions import DEFAULT_TIMING, face_session, face_step_up, face_verification
from agent.forget import forget, forget_everyone
from agent.identity import DeviceIdentity, IdentityStore, identity_problem
from agent.journal import JournalSender, audit_fields
from agent.keystore import load_kek
from agent.localapi import LocalAPI
from agent.outbox import OUTBOX_FILE, Outbox, OutboxLimits
from agent.renewal import renew, seconds_until_renewal
from agent.repeats import SUMMARY_EVERY_S, SUMMARY_SUFFIX, RepeatCoalescer
from agent.runtime import with_provisioned_verifier
from agent.sdnotify import Notifier, watchdog_interval_s
from agent.sensor_sessions import SensorSession
from agent.sessions import CaptureSession
from biometrics.fingerprint.allocator import keep_freed_memory

log = structlog.get_logger()

RENEWAL_RETRY_MIN_S = 30.0
RENEWAL_RETRY_MAX_S = 3600.0
LONG_SLEEP_CAP_S = 3600.0  # re-check the schedule at least hourly (the clock may jump)
CLOCK_HOLD_S = 600.0  # a renewal held for a clock that runs ahead: how often the clock is looked at again
FLUSH_ON_STOP_S = 5.0
AUDIT_RECOVERED = "audit_storage_recovered"  # the first event the outbox takes after it refused some
AUDIT_RETRY_S = 30.0  # while the outbox refuses events: how often it is tried again with no event to prompt it
TLS_FAILED = "tls_handshake_failed"
# What a SIGHUP cannot change in a running daemon, since it is made once at start: the device owners, the local
# API's socket and group, the outbox and its delivery, the mTLS client, the KEK, the logger. A reload keeps these
# as they run and names each one changed in the file as waiting for a restart ([sessions], [renewal] and
# [audit] heartbeat_s apply at once). Why: `config_reloaded` alone read as done to an installer who had added a
# camera, which the daemon went on without.
RESTART_SECTIONS: tuple[tuple[str, str], ...] = (
    ("agent", "[agent]"),
    ("network", "[network]"),
    ("keyring", "[keyring]"),
    ("reader", "[reader]"),
    ("device", "[[device]]"),
    ("api", "[api]"),
    ("logging", "[logging]"),
)
RESTART_AUDIT_KEYS = ("outbox_max_rows", "outbox_max_bytes", "batch_size")
RESTART_FIX = "restart the daemon to use the new values (`systemctl restart capture-agent`); a reload keeps the old"


def _image_session(device: Any, client: VerifierClient, emit: Any, timing: SessionsSection) -> CaptureSession:
    """A capture session on ``device``, waiting for the person as ``[sessions]`` says."""
    return CaptureSession(
        device, client, emit=emit, resolution_dpi=device.resolution_dpi,
        finger_timeout_s=timing.finger_timeout_s, lift_reminder_s=timing.lift_reminder_s,
    )


def _fingerprint_session(
    devices: DeviceSupervisor, client: VerifierClient, emit: Any, *, timing: SessionsSection = DEFAULT_TIMING
) -> CaptureSession:
    """A capture session on a device that gives fingerprint images (a serial module or a libfprint reader)."""
    device = devices.pick(FINGERPRINT_IMAGE)
    return _with_the_camera(_image_session(device, client, emit, timing), devices, client, emit, timing)


def _with_the_camera(session: CaptureSession, devices: DeviceSupervisor, client: VerifierClient, emit: Any,
                     timing: SessionsSection) -> CaptureSession:
    """A finger session that reaches this device's camera: a policy may ask for the face too (step-up), and a
    face-first subject adds fingers after a face verification."""
    session.face_step_up = face_step_up(devices, client, emit, timing=timing)
    session.face_verify = face_verification(devices, client, emit, timing=timing)
    return session


def _session(
    devices: DeviceSupervisor, client: VerifierClient, prints: SensorPrintStore, emit: Any, reader: str = "",
    *, timing: SessionsSection = DEFAULT_TIMING,
) -> Any:
    """A session on the device asked for (a capability or a name): an image reader first, else a sensor."""
    capability = reader if reader in (FINGERPRINT_IMAGE, MATCH_ON_SENSOR) else ""
    name = "" if capability else reader
    if capability != MATCH_ON_SENSOR:
        try:
            device = devices.pick(FINGERPRINT_IMAGE, name)
            return _with_the_camera(_image_session(device, client, emit, timing), devices, client, emit, timing)
        except NoDeviceFor:
            if capability == FINGERPRINT_IMAGE or not any(MATCH_ON_SENSOR in d.capabilities for d in devices.devices):
                raise
    sensor = devices.pick(MATCH_ON_SENSOR, name)
    has_images = any(FINGERPRINT_IMAGE in d.capabilities for d in devices.devices)
    return SensorSession(
        sensor, client, prints, emit=emit, finger_timeout_s=timing.finger_timeout_s,
        image_session=(lambda: _fingerprint_session(devices, client, emit, timing=timing)) if has_images else None,
        face_step_up=face_step_up(devices, client, emit, timing=timing),  # a factor rule may ask for the face too
    )


def _started_as(device: Device | Unmade) -> str:
    """A device in the READY status line (``systemctl status``): every configured one, a device that could not be
    set up included (it was left out, and a kiosk whose only reader was one of them said "no device usable")."""
    if isinstance(device, Unmade):
        return f"{device.name} not set up (/health says why and the fix)"
    return f"{device.name} {'connected' if device.connected else 'missing'}"


def _audit_down(fault: AuditStorageError) -> str:
    """The STATUS= words for an audit trail that cannot be stored (the sessions refused meanwhile)."""
    return f"degraded: the audit trail cannot be stored, no session is taken: {fault}"


def _device_problems(away: list[str], unmade: list[Unmade], qualifier: str) -> str:
    """One /health line for devices not connected and devices never made: "" when there are none."""
    parts = [f"not connected{qualifier}: {', '.join(away)}"] if away else []
    if unmade:
        parts.append(f"could not be set up{qualifier}: {'; '.join(f'{u.name} ({u.error})' for u in unmade)}")
    return "; ".join(parts)


class AgentDaemon:
    def __init__(
        self,
        config: AgentConfig,
        config_path: str | None = None,
        loader: Callable[[], AgentConfig] | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)  # the renewal schedule's clock
        # What SIGHUP runs: the CLI's own resolution (its --state-dir and --verifier kept), else the file.
        self.loader = loader or (lambda: with_provisioned_verifier(load_config(self.config_path)))
        self.notifier = Notifier()
        self.journal = JournalSender()
        self.client: VerifierClient | None = None
        self.outbox: Outbox | None = None
        self.delivery: EventDelivery | None = None
        self.devices: DeviceSupervisor | None = None
        self.api: LocalAPI | None = None
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.failure: AgentError | None = None  # a task of the daemon ended on its own: run() raises it
        self.audit_fault: AuditStorageError | None = None  # the outbox refused the last event (see record)
        self.events_not_stored = 0  # since the outbox last took one
        # The failures the `_repeated` summaries among them stood for (their `repeats`): each such summary is one
        # of events_not_stored, and the trail's failures lost are that many more (see _not_stored).
        self.repeats_not_stored = 0
        self._open_outbox: Callable[[], Outbox] | None = None  # set by start; record opens with it if start could not
        self._audit_failing = asyncio.Event()  # wakes the retry of a refusing outbox (_audit_retry)
        self._said = ""  # the last STATUS= text, without the audit trail's problem: said again when that ends
        # Identical failures in a row (a refused certificate at every delivery retry, a device failing each
        # session) are counted, not recorded one by one: see agent.repeats. Its own wall clock, not self.clock
        # (the renewal schedule's, which tests move ahead).
        self.repeats = RepeatCoalescer(clock=lambda: dt.datetime.now(dt.UTC))

    def status(self, text: str, **fields: str | int) -> None:
        """STATUS= (what `systemctl status` shows), with ``fields`` (READY=1); while the audit trail cannot be
        stored, that comes first: the daemon takes no session then, whatever else is ready."""
        self._said = text
        if self.audit_fault is not None:
            text = f"{_audit_down(self.audit_fault)}; {text}"
        self.notifier.send(**fields, STATUS=text)

    def record(self, kind: str, data: dict[str, Any] | None = None) -> bool:
        """An audit event, through :attr:`repeats`: a repeat of a failure its stream remembers is only counted
        (True: it is accounted for); a failure it makes the stream forget, or a success, first records the counts
        it closes. False when an event could not be stored (see :meth:`_store`)."""
        stored = [self._store(k, d) for k, d in self.repeats.admit(kind, data or {})]
        return all(stored)

    def _record_all(self, events: list[tuple[str, dict[str, Any]]]) -> None:
        """Summaries of repeated failures (agent.repeats), stored as they come."""
        for kind, data in events:
            self._store(kind, data)

    def _tls_answered(self) -> None:
        """The verifier answered: a handshake failure that was repeating is over, its count recorded."""
        self._record_all(self.repeats.succeeded(TLS_FAILED))

    async def _repeat_summaries(self) -> None:
        """A failure that goes on is summarised at least every SUMMARY_EVERY_S, even when its repeats stopped
        with no success to end them (a device fault no session meets again)."""
        while True:
            wait = self.repeats.seconds_to_due()
            await asyncio.sleep(min(LONG_SLEEP_CAP_S, SUMMARY_EVERY_S if wait is None else wait))
            self._record_all(self.repeats.due())

    def _store(self, kind: str, data: dict[str, Any] | None = None) -> bool:
        """An audit event: into the hash chain and the outbox, then wake delivery. False when it could not be stored.

        Never raises for a file that cannot be written (a full SD card, a file system gone read-only): the
        heartbeat's failure stopped the daemon, systemd restarted it, and its start failed the same way, so a
        kiosk whose disk filled was down for good. The event is said in the log instead
        (``audit_event_not_stored``, its fields with it: the journal keeps it), :meth:`audit_problem` refuses
        sessions until the outbox takes events again, and the first event stored then is
        ``audit_storage_recovered`` with the count that was not (then this one). An outbox that could not be
        opened at start (see :meth:`start`) is opened here, on the first event that finds the disk usable again.
        """
        if self.audit_fault is not None and kind != AUDIT_RECOVERED:
            self.audit_problem()  # the recovery first, if the outbox takes events again: the trail reads in order
        try:
            event = self._outbox().record(kind, data)
        except AuditStorageError as exc:
            self._not_stored(kind, data or {}, exc)
            return False
        self.journal.send(audit_fields(event))
        if self.delivery is not None:
            self.delivery.notify()
        return True

    def audit_problem(self) -> AuditStorageError | None:
        """None when attempts can be audited; else why not. Tries the outbox again (with the recovery event) first.

        Invariant 5: every authentication attempt produces an audit event, so the local API asks this before
        it starts a session and answers 503 with the fix while it fails.
        """
        if self.audit_fault is None:
            return None
        lost = {"events_not_stored": self.events_not_stored, "repeats_not_stored": self.repeats_not_stored}
        if self.record(AUDIT_RECOVERED, lost):
            log.info("audit_storage_recovered", **lost)
            self.audit_fault, self.events_not_stored, self.repeats_not_stored = None, 0, 0
            # What the daemon said before, its problem gone: a fixed "ready" here was said while stopping, before
            # READY=1, or over a renewal held for the clock.
            self.status(self._said)
        return self.audit_fault

    def _outbox(self) -> Outbox:
        """The outbox, opened now if start could not open it (a full or read-only disk then).

        :class:`AuditStorageError` while it cannot be, a root-owned file included (its chown as the fix): a
        record never raises anything else for the file.
        """
        if self.outbox is None:
            assert self._open_outbox is not None, "an event recorded before start"
            try:
                self.outbox = self._open_outbox()
            except IdentityError as exc:  # its file given to another user since start
                raise AuditStorageError(exc.message, exc.fix) from None
            log.info("audit_outbox_opened", path=str(self.outbox.path))
            if self.delivery is not None:
                self.delivery.outbox = self.outbox
        return self.outbox

    def _storage_failing(self, exc: AuditStorageError) -> None:
        """The outbox refuses events from now on: said in STATUS the first time, retried on a timer."""
        first = self.audit_fault is None
        self.audit_fault = exc
        if first:
            self.status(self._said)  # the problem first, then what else the daemon was saying
            self._audit_failing.set()

    async def _audit_retry(self) -> None:
        """While the outbox refuses events, try it again every AUDIT_RETRY_S.

        Events and /health calls retry it too, but a kiosk idle overnight makes neither (the heartbeat is
        hourly by default): the trail would resume, and say its gap, only when someone next came.
        """
        while True:
            await self._audit_failing.wait()
            await asyncio.sleep(AUDIT_RETRY_S)
            if self.audit_problem() is None:
                self._audit_failing.clear()

    def _not_stored(self, kind: str, data: dict[str, Any], exc: AuditStorageError) -> None:
        """An event the outbox refused: in the log, its data whole (never secrets: audit data holds none).

        The data goes under one key, ``data``: spread as keywords, an event's own ``error`` or ``fix``
        (a device fault, a failed renewal) clashed with this line's and raised, out of the very call
        that must not.

        A `<type>_repeated` summary lost is one event but stands for its ``repeats`` failures, which no other
        event says (agent.repeats): counted in :attr:`repeats_not_stored`, so that the recovery event accounts
        for every failure the trail lost, not one per summary.
        """
        first = self.audit_fault is None
        self._storage_failing(exc)
        if kind == AUDIT_RECOVERED:  # a retry of the outbox (each /health, each session asked for): no event lost
            return
        self.events_not_stored += 1
        repeats = data.get("repeats")
        if kind.endswith(SUMMARY_SUFFIX) and isinstance(repeats, int):
            self.repeats_not_stored += repeats
        why = {"storage_error": exc.message, **({"storage_fix": exc.fix} if first else {})}
        log.error("audit_event_not_stored", audit=True, type=kind, data=dict(data), **why)

    async def start(self) -> None:
        """Bring every part up; only then tell systemd we are ready."""
        keep_freed_memory()  # capture after capture reuses the heap (biometrics.fingerprint.allocator)
        self.status("loading device identity")
        kek = load_kek(self.config)
        store = IdentityStore(self.config.agent.state_dir)
        identity = store.load(kek.encode())
        # After the load, so a daemon started before provisioning creates no state directory. A folder others may
        # enter (`chmod`, `mkdir` by hand, a unit without StateDirectoryMode=) is closed, as provisioning does.
        try:
            loose = store.ensure_state_dir()
        except StateDirNotTightened as exc:  # a read-only disk: the start goes on, degraded (the outbox below)
            log.warning("state_dir_mode_loose", error=exc.message, fix=exc.fix)
            loose = None
        if loose is not None:
            log.warning(
                "state_dir_mode_tightened",
                path=str(store.state_dir),
                was=f"{loose:o}",
                now="700",
                fix="keep it 0700 (the unit's StateDirectoryMode=0700); `capture-agent doctor` checks the files in it",
            )
        audit = self.config.audit
        path, limits = self.config.agent.state_dir / OUTBOX_FILE, OutboxLimits(audit.outbox_max_rows,
                                                                               audit.outbox_max_bytes)

        def open_outbox() -> Outbox:
            try:
                return Outbox(path, kek, limits)
            except PermissionError as exc:  # root's outbox, left by a `sudo capture-agent run`: the chown, said
                raise store.access_error(exc, "open the audit outbox") from None

        self._open_outbox = open_outbox
        try:
            self.outbox = open_outbox()
        except AuditStorageError as exc:
            if exc.cause == "damaged":  # its fix is moving the file aside by hand: no retry would mend it
                raise
            # A full or read-only disk: exiting made systemd restart the daemon into the same failure, /health
            # unreachable. Up and degraded instead, as when the disk fills while running (record).
            log.error("audit_outbox_not_opened", error=exc.message, fix=exc.fix, retry_every_s=AUDIT_RETRY_S)
            self._storage_failing(exc)
        url = self.config.verifier.url
        self.client = VerifierClient(
            self.config,
            identity,
            on_tls_failure=lambda reason: self.record(
                TLS_FAILED,
                {"url": self.client.config.verifier.url if self.client else url, "reason": reason},
            ),
            on_identity_change=self._identity_switched,
            on_answer=self._tls_answered,
        )
        self.delivery = EventDelivery(self.outbox, self.client, audit.batch_size)
        device_status = "no device configured"
        if configured_devices(self.config):
            self.status("opening the devices")
            self.devices = DeviceSupervisor(
                configured_devices(self.config), self.record, state_dir=self.config.agent.state_dir
            )
            await self.devices.open_all()
            device_status = ", ".join(_started_as(d) for d in self.devices.configured)
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._stop.set)
        loop.add_signal_handler(signal.SIGINT, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        interval = watchdog_interval_s()
        if interval:
            self.spawn(self._watchdog(interval), "watchdog")
        self.spawn(self.delivery.run(), "delivery")
        self.spawn(self._audit_retry(), "audit retry")
        self.spawn(self._heartbeat(), "heartbeat")
        self.spawn(self._renewal_loop(), "renewal")
        self.spawn(self._repeat_summaries(), "repeat summaries")
        if self.devices is not None:
            self.devices.start()
            devices, client = self.devices, self.client
            prints = SensorPrintStore(self.config.agent.state_dir / PRINTS_FOLDER, kek)  # match-on-sensor, sealed
            self.api = LocalAPI(
                self.config.api.socket,
                # the config of the moment: a SIGHUP's new [sessions] applies from the next session
                lambda emit, reader="": _session(devices, client, prints, emit, reader, timing=self.config.sessions),
                make_face_session=lambda emit: face_session(devices, client, emit, prints, timing=self.config.sessions),
                group=self.config.api.group,
                health=self._health,
                record=self.record,
                audit_problem=self.audit_problem,
                # DELETE /prints/{subject}: through the devices' owners, audited on this loop (agent.forget)
                forget=lambda subject, reader: forget(devices.configured, prints, subject, reader, record=self.record),
                # DELETE /prints?reader=R: every print of one reader, on its sensor and here (agent.forget)
                clear_reader=lambda reader: forget_everyone(devices.configured, prints, reader, record=self.record),
            )
            await self.api.start()
        self.record("agent_started", {"device_id": identity.device_id, "serial": identity.serial_hex})
        self.status(f"ready: device {identity.device_id}, verifier {url}, {device_status}", READY=1)
        log.info("agent_ready", device_id=identity.device_id, verifier=url)

    def _identity_switched(self, old: DeviceIdentity, new: DeviceIdentity) -> None:
        """Another process renewed or re-provisioned: the client follows; the audit trail says so."""
        self.record(
            "identity_switched",
            {
                "old_device_id": old.device_id,
                "old_serial": old.serial_hex,
                "device_id": new.device_id,
                "serial": new.serial_hex,
            },
        )
        self.status(f"ready: device {new.device_id}, certificate serial {new.serial_hex}")

    async def _health(self) -> dict[str, Any]:
        """The local API's /health: the devices (what each can do, connected or not), and whether the
        device identity can sign now."""
        assert self.client is not None
        identity = await self.client.follow_identity()
        facts: dict[str, Any] = {
            **(self.devices.health() if self.devices is not None else {}),
            "device_id": identity.device_id,
            "certificate_serial": identity.serial_hex,
            "certificate_not_after": identity.not_after.isoformat(),
        }
        problem = identity_problem(identity, self.client.identity_problem)
        facts["identity"] = "ok" if problem is None else "cannot_sign"
        if problem is not None:
            facts.update(status="degraded", identity_error=problem.message, identity_fix=problem.fix)
        self._device_health(facts)
        fault = self.audit_problem()
        facts["audit"] = "ok" if fault is None else "not_stored"
        if fault is not None:  # no session is taken meanwhile (invariant 5): as out of service as a missing reader
            facts.update(status="degraded", audit_error=fault.message, audit_fix=fault.fix)
        # The verifier as the last call found it (no call made for /health): a kiosk app can say "out of
        # service" before a person gives a finger that no verifier will check. The outbox's delivery retries
        # in the background, so it turns "reachable" again soon after the verifier is back.
        reach = self.client.reachability
        facts["verifier"] = "unknown" if reach is None else "reachable" if reach[0] else "unreachable"
        if reach is not None and reach[1] is not None:
            facts.update(status="degraded", verifier_error=reach[1].message, verifier_fix=reach[1].fix)
        return facts

    def _device_health(self, facts: dict[str, Any]) -> None:
        """/health's word on the devices not connected, or never made at start, into ``facts``.

        A required device away (DeviceSupervisor.required: a finger reader, or the camera of a kiosk with no
        reader) makes "status" "degraded": it said "ok" while the kiosk's only reader was unplugged, and a kiosk
        app that looked at "status" invited people to a sensor that could not work. An optional one (a camera
        beside a reader) is named in ``device_warning`` and ``devices[].connected``, the status left as it is:
        "degraded" for a camera the default sessions do not use had a kiosk app show "out of service".
        A device that could not even be made (libfprint missing, a camera source its driver refuses) counts
        the same way, with its own fix: it was only in ``device_faults``, and a kiosk whose only reader was
        one of them said "ok".
        """
        if self.devices is None:
            return
        required, optional = self.devices.away()
        unmade_required, unmade_optional = self.devices.never_made()
        error = _device_problems(required, unmade_required, "")
        if error:
            facts.update(status="degraded", device_error=error)
        warning = _device_problems(optional, unmade_optional, " (optional)")
        if warning:
            facts["device_warning"] = warning
        fixes = [f"{u.name}: {u.fix or 'check its [[device]] entry'}" for u in unmade_required + unmade_optional]
        if fixes:
            fixes[-1] += ", then restart the agent (a device that could not be set up is not retried)"
        if required or optional:
            fixes.append("plug it in (the agent reopens it by itself); `capture-agent devices` shows what is found")
        if fixes:
            facts["device_fix"] = "; ".join(fixes)

    def spawn(self, coroutine: Any, name: str) -> None:
        """Run ``coroutine`` for the daemon's life, as task ``name``: its ending on its own stops the daemon."""
        task = asyncio.create_task(coroutine, name=name)
        task.add_done_callback(self._task_ended)
        self._tasks.append(task)

    def _task_ended(self, task: asyncio.Task[None]) -> None:
        """A task that ends before the daemon stops takes the daemon down, so that systemd restarts it.

        Each task loops for the daemon's life (delivery, heartbeat, renewal,
        watchdog) and handles its own errors; one that ended anyway is a bug. Left
        alone the daemon would go on "ready" without it: an audit trail nobody
        delivers, a certificate nobody renews. Stopping (exit status 2, as for every AgentError, and
        ``Restart=on-failure``) is the honest state, and the journal says why.
        """
        if task.cancelled() or self._stop.is_set():
            return
        error = task.exception()
        reason = f"{type(error).__name__}: {error}" if error is not None else "it returned"
        log.error("daemon_task_failed", task=task.get_name(), error=reason)
        with suppress(Exception):  # the audit trail may be what failed
            self.record("agent_task_failed", {"task": task.get_name(), "error": reason})
        self.failure = AgentError(
            f"the daemon's {task.get_name()} task stopped: {reason}",
            fix="systemd restarts the agent (Restart=on-failure); if it repeats, see `journalctl -u "
            "capture-agent` and report it",
        )
        self._stop.set()

    async def _watchdog(self, interval: float) -> None:
        while True:
            self.notifier.send(WATCHDOG=1)
            await asyncio.sleep(interval)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.config.audit.heartbeat_s)
            self.record("heartbeat")

    async def _renewal_loop(self) -> None:
        failures = 0
        renewed: str | None = None  # the serial this loop was issued last, until it is seen not yet due
        held: str | None = None  # the serial whose renewal is held for the clock (said once)
        while True:
            assert self.client is not None
            await self.client.follow_identity()  # renewed by `capture-agent renew` meanwhile? a new schedule
            identity = self.client.identity
            wait = seconds_until_renewal(identity, self.config, now=self.clock())
            if wait > 0:
                # Not due by this clock: whatever this loop issued last was not due at once, so when it falls
                # due (two thirds of its lifetime on) it is renewed, not taken for a clock that runs ahead.
                renewed = held = None
                await asyncio.sleep(min(wait, LONG_SLEEP_CAP_S))
                continue
            if identity.serial_hex == renewed:
                # Issued a moment ago and already due by this clock: the clock runs ahead (a Pi without an RTC
                # battery, NTP not up yet). Another renewal would get the same dates from the verifier, spend its
                # renewals_per_hour (then 429s), and go round again; the verifier's clock is the one it checks.
                if held != renewed:
                    held = renewed
                    self.record("certificate_renewal_held", {
                        "serial": renewed, "not_before": identity.not_before.isoformat(),
                        "clock": self.clock().isoformat(), "fix": CLOCK_FIX,
                    })
                self.status(f"certificate renewal held: this device's clock runs ahead of the verifier's: {CLOCK_FIX}")
                await asyncio.sleep(CLOCK_HOLD_S)
                continue
            try:
                self.status("renewing the device certificate")
                old = identity.serial_hex
                new = await renew(self.config, self.client)
                renewed = new.serial_hex
                failures = 0
                self.record("certificate_renewed", {"old_serial": old, "serial": new.serial_hex})
                self.status(f"ready: certificate renewed, serial {new.serial_hex}")
            except AgentError as exc:
                failures += 1
                delay = min(RENEWAL_RETRY_MAX_S, RENEWAL_RETRY_MIN_S * 2 ** (failures - 1))
                self.record("certificate_renewal_failed", {"error": exc.message, "retry_in_s": delay})
                self.status(f"certificate renewal failed, retrying in {delay:.0f} s: {exc.fix}")
                await asyncio.sleep(delay)

    def reload(self) -> None:
        """SIGHUP: load the config again; keep the running one if the new one is broken."""
        try:
            new = self.loader()
        except AgentError as exc:
            self.record("config_reload_refused", {"error": exc.message, "fix": exc.fix})
            self.status(f"config reload refused: {exc}")
            return
        self.notifier.send(RELOADING=1)
        running = self.config
        waiting = [shown for name, shown in RESTART_SECTIONS if getattr(new, name) != getattr(running, name)]
        waiting += [f"[audit] {key}" for key in RESTART_AUDIT_KEYS
                    if getattr(new.audit, key) != getattr(running.audit, key)]
        # The running parts stay as they are in self.config too (a renewal reads [agent] and [keyring] from it), so
        # a second reload still names what waits for the restart.
        self.config = replace(
            new,
            audit=replace(new.audit, **{key: getattr(running.audit, key) for key in RESTART_AUDIT_KEYS}),
            **{name: getattr(running, name) for name, _ in RESTART_SECTIONS},
        )
        # The client keeps the verifier it was started with (its connection, its identity): the event names the
        # one in use, and a new URL as waiting for a restart, never as if the daemon had moved to it.
        in_use = self.client.config.verifier.url if self.client is not None else new.verifier.url
        data: dict[str, Any] = {"source": new.source, "verifier": in_use}
        if new.verifier.url != in_use:
            data["verifier_after_restart"] = new.verifier.url
        pin_in_use = self.client.config.verifier.spki_pin if self.client is not None else new.verifier.spki_pin
        if new.verifier.spki_pin != pin_in_use:
            waiting.append("[verifier] spki_pin")
        if waiting:
            data["after_restart"] = waiting
        if waiting or "verifier_after_restart" in data:
            data["fix"] = RESTART_FIX
        self.record("config_reloaded", data)
        self.status("ready: config reloaded" + (f"; waiting for a restart: {', '.join(waiting)}" if waiting else ""),
                    READY=1)

    async def run(self) -> None:
        try:
            await self.start()
        except BaseException:
            # What started is closed before the error goes up: a camera's reader thread left
            # running would abort the interpreter at exit instead of the CLI printing error and fix.
            await self.stop()
            raise
        await self._stop.wait()
        await self.stop()
        if self.failure is not None:
            raise self.failure

    async def stop(self) -> None:
        self.status("stopping: flushing the outbox", STOPPING=1)
        if self.api is not None:
            await self.api.stop()  # running sessions are cancelled first
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with suppress(Exception, asyncio.CancelledError):  # a task that failed was reported when it did
                await task
        if self.delivery is not None:  # started past the outbox (opened or not: this event retries it)
            self._record_all(self.repeats.flush())  # the counts of failures still repeating, before the outbox closes
            self.record("agent_stopping")
            await self.delivery.flush(FLUSH_ON_STOP_S)
        if self.devices is not None:
            await self.devices.close()
        if self.client is not None:
            await self.client.aclose()
        if self.outbox is not None:
            self.outbox.close()
        self.notifier.close()
        self.journal.close()
