"""`capture-agent run`: the long-lived service under systemd.

One asyncio loop does everything, so the watchdog ping is sent from that loop:
if the loop gets stuck, the pings stop and systemd restarts the service. Nothing
polls: the loop sleeps until a timer (watchdog, renewal) or a signal wakes it.

Lifecycle: load config and identity, build the mTLS client → ``READY=1`` →
serve (renewal on schedule, watchdog) → SIGTERM: ``STOPPING=1``, drain, close.
SIGHUP reloads the config; a broken new config is refused and the running one
kept (the error is logged with its fix).
"""

from __future__ import annotations

import asyncio
import signal
from contextlib import suppress

import structlog

from agent.client import VerifierClient
from agent.config import AgentConfig, load_config
from agent.errors import AgentError
from agent.renewal import renew, seconds_until_renewal
from agent.runtime import load_identity
from agent.sdnotify import Notifier, watchdog_interval_s

log = structlog.get_logger()

RENEWAL_RETRY_MIN_S = 30.0
RENEWAL_RETRY_MAX_S = 3600.0
LONG_SLEEP_CAP_S = 3600.0  # re-check the schedule at least hourly (the clock may jump)


class AgentDaemon:
    def __init__(self, config: AgentConfig, config_path: str | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.notifier = Notifier()
        self.client: VerifierClient | None = None
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def status(self, text: str) -> None:
        self.notifier.send(STATUS=text)

    async def start(self) -> None:
        """Bring every part up; only then tell systemd we are ready."""
        self.status("loading device identity")
        identity = load_identity(self.config)
        self.client = VerifierClient(self.config, identity)
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._stop.set)
        loop.add_signal_handler(signal.SIGINT, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        interval = watchdog_interval_s()
        if interval:
            self._tasks.append(asyncio.create_task(self._watchdog(interval), name="watchdog"))
        self._tasks.append(asyncio.create_task(self._renewal_loop(), name="renewal"))
        self.notifier.send(
            READY=1, STATUS=f"ready: device {identity.device_id}, verifier {self.config.verifier.url}"
        )
        log.info("agent_ready", device_id=identity.device_id, verifier=self.config.verifier.url)

    async def _watchdog(self, interval: float) -> None:
        while True:
            self.notifier.send(WATCHDOG=1)
            await asyncio.sleep(interval)

    async def _renewal_loop(self) -> None:
        failures = 0
        while True:
            assert self.client is not None
            wait = seconds_until_renewal(self.client.identity, self.config)
            if wait > 0:
                await asyncio.sleep(min(wait, LONG_SLEEP_CAP_S))
                continue
            try:
                self.status("renewing the device certificate")
                new = await renew(self.config, self.client)
                failures = 0
                self.status(f"ready: certificate renewed, serial {new.serial_hex}")
            except AgentError as exc:
                failures += 1
                delay = min(RENEWAL_RETRY_MAX_S, RENEWAL_RETRY_MIN_S * 2 ** (failures - 1))
                log.error("certificate_renewal_failed", audit=True, error=str(exc), retry_in_s=delay)
                self.status(f"certificate renewal failed, retrying in {delay:.0f} s: {exc.fix}")
                await asyncio.sleep(delay)

    def reload(self) -> None:
        """SIGHUP: load the config again; keep the running one if the new one is broken."""
        try:
            new = load_config(self.config_path)
        except AgentError as exc:
            log.error("config_reload_refused", audit=True, error=str(exc))
            self.status(f"config reload refused: {exc}")
            return
        self.notifier.send(RELOADING=1)
        self.config = new
        log.info("config_reloaded", audit=True, source=new.source)
        self.notifier.send(READY=1, STATUS="ready: config reloaded")

    async def run(self) -> None:
        await self.start()
        await self._stop.wait()
        await self.stop()

    async def stop(self) -> None:
        self.notifier.send(STOPPING=1, STATUS="stopping: draining")
        log.info("agent_stopping")
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with suppress(asyncio.CancelledError):
                await task
        if self.client is not None:
            await self.client.aclose()
        self.notifier.close()
