"""`capture-agent forget` with no daemon running: the command does the daemon's part itself, for one erasure.

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

import resource
from pathlib import Path
from typing import Any

import structlog

from agent.config import AgentConfig
from agent.devices.prints import PRINTS_FOLDER, SensorPrintStore
from agent.devices.supervisor import DeviceSupervisor, configured_devices
from agent.errors import AgentError, AuditStorageError
from agent.forget import Forgotten, NoSuchReader, NotAPrintReader, NothingToForget, forget, holds_any
from agent.identity import IdentityStore
from agent.keystore import load_kek
from agent.outbox import OUTBOX_FILE, Outbox, OutboxLimits
from agent.statelock import StateDirLocked, hold_state_dir

log = structlog.get_logger()



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


def _chosen_readers(config: AgentConfig, reader: str) -> list[tuple[str, Any]]:
    """The libfprint ``[[device]]`` entries to look at (every one, or the one ``reader`` names), or the daemon's
    own refusal of a name that is not one."""
    devices = configured_devices(config)
    names = [name for name, _ in devices]
    if reader and reader not in names:
        raise NoSuchReader(reader, names)
    named = dict(devices).get(reader)
    if named is not None and named.kind != "fprint":
        raise NotAPrintReader(reader, named.kind)
    return [(name, section) for name, section in devices if (not reader or name == reader) and section.kind == "fprint"]


async def forget_here(config: AgentConfig, subject: str, reader: str = "") -> list[Forgotten]:
    """Erase ``subject``'s prints as the daemon would, in this process: :class:`StateDirLocked` when a daemon runs.

    Raises what :func:`agent.forget.forget` raises (:class:`NothingToForget` included), and the store's and the
    keyring's typed errors (another user's state directory, a KEK this shell cannot read) with their fixes.
    """
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # decrypted prints in memory: never in a core file
    state_dir: Path = config.agent.state_dir
    with hold_state_dir(state_dir):
        kek = load_kek(config)
        chosen = _chosen_readers(config, reader)
        prints = SensorPrintStore(state_dir / PRINTS_FOLDER, kek)
        holding = [(name, section) for name, section in chosen if holds_any(prints, name, subject)]
        if not holding:  # said without opening a reader
            raise NothingToForget(subject, [name for name, _ in chosen])
        limits = OutboxLimits(config.audit.outbox_max_rows, config.audit.outbox_max_bytes)
        try:
            outbox = Outbox(state_dir / OUTBOX_FILE, kek, limits)
        except PermissionError as exc:
            raise IdentityStore(state_dir).access_error(exc, "open the audit outbox") from None
        try:
            return await _erase(config, outbox, prints, holding, subject, reader)
        finally:
            outbox.close()


async def _erase(config: AgentConfig, outbox: Outbox, prints: SensorPrintStore, holding: list[tuple[str, Any]],
                 subject: str, reader: str) -> list[Forgotten]:
    """Open the readers that hold something of the subject, erase through them, close them."""

    def record(kind: str, data: dict[str, Any]) -> bool:
        """Into the outbox (the daemon delivers it); False when it cannot be stored, which stops the erasure
        of that reader (agent.forget: an erasure is audited before it happens, or does not happen)."""
        try:
            outbox.record(kind, data)
        except AuditStorageError as exc:
            log.error("audit_event_not_stored", audit=True, type=kind, data=dict(data), storage_error=exc.message)
            return False
        return True

    devices = DeviceSupervisor(holding, record, state_dir=config.agent.state_dir)
    await devices.open_all()
    try:
        return await forget(devices.configured, prints, subject, reader, record=record)
    finally:
        await devices.close()
