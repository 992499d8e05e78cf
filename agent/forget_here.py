"""`capture-agent forget` with no daemon running: the command does the daemon's part itself, for one erasure
(:func:`forget_here`, one subject) or one reader's clearing (:func:`clear_here`, ``--everyone``).

Why: erasing a person is something an operator may need most from a device whose daemon is down: stopped for
maintenance or for good (the kiosk being decommissioned), or failing to start. Before, forget only said that it
could not reach the agent, and erased nothing until a daemon ran again.

How it stays as safe as the daemon's erasure:

- Only when no daemon holds the state directory (:mod:`agent.statelock`), and holding it while it works: a
  daemon started meanwhile is refused (systemd tries again later), so it never fights this command for a reader,
  the sealed store or the audit trail. A daemon that holds it but does not answer is not worked around: the
  caller is told so (:class:`DaemonNotAnswering`).
- The same erasure (:func:`agent.forget.forget`): each reader's prints audited before they are erased, into the
  device's own encrypted outbox, whose events the daemon delivers to the verifier at its next start.
- Only the libfprint readers that hold something of the subject are opened, and all are closed before the
  command ends; a reader that cannot be opened (unplugged) loses its sealed copy at once and keeps a note naming
  its sensor's slot, as under the daemon, for the next forget.
- As the agent's user, with its key (the KEK), as ``doctor`` and ``provision`` run: a root shell on the agent's
  state directory is refused by its owner check, with the ``systemd-run`` line to use. No core file either: the
  sealed prints are decrypted in this process's memory, as they are in the daemon's.
"""

from __future__ import annotations

import contextlib
import resource
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import structlog

from agent.config import AgentConfig
from agent.devices.prints import PRINTS_FOLDER, SensorPrintStore
from agent.devices.supervisor import DeviceSupervisor, configured_devices
from agent.errors import AgentError, AuditStorageError
from agent.forget import (
    Cleared,
    Forgotten,
    NoReaderNamed,
    NothingToForget,
    forget,
    forget_everyone,
    holds_any,
    pick_readers,
)
from agent.identity import IdentityStore
from agent.keystore import load_kek
from agent.outbox import OUTBOX_FILE, Outbox, OutboxLimits
from agent.statelock import FORGET, StateDirLocked, hold_state_dir

log = structlog.get_logger()
T = TypeVar("T")



class DaemonNotAnswering(AgentError):
    """A daemon holds the state directory but its local API did not answer: forgetting beside it would fight it
    for the readers and the audit trail, so nothing is erased."""

    def __init__(self, socket_path: str, locked: StateDirLocked) -> None:
        super().__init__(
            f"cannot reach the agent's local API at {socket_path}, and a daemon runs on this device's state "
            f"directory ({locked.message}): nothing was erased",
            "give this command the running daemon's config (--config FILE) or its socket (--socket PATH, its [api] "
            "socket); or, if it hangs, restart it (systemctl restart capture-agent) and run the same forget again",
        )


async def forget_here(config: AgentConfig, subject: str, reader: str = "") -> list[Forgotten]:
    """Erase ``subject``'s prints as the daemon would, in this process: :class:`StateDirLocked` when a daemon runs.

    Raises what :func:`agent.forget.forget` raises (:class:`NothingToForget` included), and the store's and the
    keyring's typed errors (another user's state directory, a KEK this shell cannot read) with their fixes.
    """
    with _held(config) as (kek, prints):
        sections = configured_devices(config)
        chosen = pick_readers([(name, section.kind) for name, section in sections], reader)
        holding = [(name, section) for name, section in sections
                   if name in chosen and holds_any(prints, name, subject)]
        if not holding:  # said without opening a reader
            raise NothingToForget(subject, chosen)
        return await _with_readers(config, kek, holding,
                                   lambda devices, record: forget(devices, prints, subject, reader, record=record))


async def clear_here(config: AgentConfig, reader: str) -> tuple[Cleared, list[Forgotten]]:
    """Clear one reader (``forget --everyone``) as the daemon would, in this process; as :func:`forget_here`."""
    with _held(config) as (kek, prints):
        sections = configured_devices(config)
        kinds = [(name, section.kind) for name, section in sections]
        if not reader:
            raise NoReaderNamed([name for name, kind in kinds if kind == "fprint"])
        (name,) = pick_readers(kinds, reader)
        return await _with_readers(config, kek, [(name, dict(sections)[name])],
                                   lambda devices, record: forget_everyone(devices, prints, name, record=record))


@contextlib.contextmanager
def _held(config: AgentConfig) -> Iterator[tuple[str, SensorPrintStore]]:
    """The state directory held as a daemon holds it, the KEK, and the sealed store of prints."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # decrypted prints in memory: never in a core file
    with hold_state_dir(config.agent.state_dir, FORGET):  # a daemon started meanwhile is told to wait for it
        kek = load_kek(config)
        yield kek, SensorPrintStore(config.agent.state_dir / PRINTS_FOLDER, kek)


async def _with_readers(config: AgentConfig, kek: str, readers: list[tuple[str, Any]],
                        erase: Callable[[list[Any], Callable[[str, dict[str, Any]], bool]], Awaitable[T]]) -> T:
    """Open ``readers`` under a supervisor auditing into the device's outbox, run ``erase``, close them."""
    state_dir: Path = config.agent.state_dir
    limits = OutboxLimits(config.audit.outbox_max_rows, config.audit.outbox_max_bytes)
    try:
        outbox = Outbox(state_dir / OUTBOX_FILE, kek, limits)
    except PermissionError as exc:
        raise IdentityStore(state_dir).access_error(exc, "open the audit outbox") from None

    def record(kind: str, data: dict[str, Any]) -> bool:
        """Into the outbox (the daemon delivers it); False when it cannot be stored, which stops the erasure
        (agent.forget: an erasure is audited before it happens, or does not happen)."""
        try:
            outbox.record(kind, data)
        except AuditStorageError as exc:
            log.error("audit_event_not_stored", audit=True, type=kind, data=dict(data), storage_error=exc.message)
            return False
        return True

    try:
        devices = DeviceSupervisor(readers, record, state_dir=state_dir)
        await devices.open_all()
        try:
            return await erase(devices.configured, record)
        finally:
            await devices.close()
    finally:
        outbox.close()
