"""Keeping the fingerprint reader open: opened at start, watched, reopened when it comes back.

A reader on a kiosk gets unplugged, bumped, power-cycled. The supervisor checks
every few seconds that its port still exists (a stat, not a poll of the module),
reports an unplug as an audit event, and reopens the module with backoff once
the port is back. The driver is blocking (pyserial), so it runs in a worker
thread and never stalls the daemon's loop (nor its watchdog pings).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any

import structlog

from agent.config import ReaderSection

log = structlog.get_logger()

BACKOFF_MAX_S = 60.0


class ReaderSupervisor:
    def __init__(self, section: ReaderSection, record: Callable[[str, dict[str, Any]], None]) -> None:
        from drivers.zfm.driver import ZfmModule  # pyserial and numpy load only with a reader

        self.section = section
        self.record = record
        self.module = ZfmModule(section.port, baud=section.baud, password=section.password)
        self.connected = False
        self.model = ""
        self._backoff = section.check_interval_s

    @property
    def status(self) -> str:
        return (
            f"reader {self.model} on {self.section.port}"
            if self.connected
            else f"reader missing on {self.section.port}"
        )

    async def open(self) -> bool:
        from drivers.zfm.errors import ModuleError

        try:
            info = await asyncio.to_thread(self.module.open)
        except ModuleError as exc:
            if self.connected or self._backoff == self.section.check_interval_s:
                self.record("reader_fault", {"port": self.section.port, "error": str(exc.args[0]), "fix": exc.fix})
            self.connected = False
            return False
        self.connected = True
        self.model = info.profile.name
        self._backoff = self.section.check_interval_s
        self.record("reader_plugged", {"port": self.section.port, "model": self.model})
        return True

    async def watch(self) -> None:
        while True:
            await asyncio.sleep(self._backoff if not self.connected else self.section.check_interval_s)
            if self.connected and not os.path.exists(self.section.port):
                self.connected = False
                await asyncio.to_thread(self.module.close)
                self.record("reader_unplugged", {"port": self.section.port})
                self._backoff = self.section.check_interval_s
                continue
            if not self.connected and os.path.exists(self.section.port) and not await self.open():
                self._backoff = min(BACKOFF_MAX_S, self._backoff * 2)

    async def close(self) -> None:
        await asyncio.to_thread(self.module.close)
