"""The local API for kiosk apps: HTTP/1.1 on a unix socket, prompts as server-sent events.

Only processes that may open the socket can talk to it: it is created 0660 and,
when ``[api] group`` names a group, owned by it, so the kiosk app's group is the
whole access rule (no port, no token). HTTP parsing is h11's (sans-I/O); this
module is the thin shell and the routes:

    POST   /sessions               {"operation": "enroll"|"verify"|"identify", "subject": ...,
                                    "modality": "finger" (default) | "face",
                                    "captures": 3, "fingers": 2, "group": ..., "verify_first": false,
                                    "reader": "match-on-sensor" | "fingerprint-image" | a device name}
                                   (captures, fingers, group, verify_first: enroll only; verify_first
                                    adds templates to an enrolled subject after they verify; reader:
                                    which device, by capability or name, default an image reader, else
                                    a match-on-sensor one)
    GET    /sessions/{id}/events   text/event-stream: prompt, progress, step_up, result | error
    DELETE /sessions/{id}          cancel: the reader stops waiting, nothing is sent
    DELETE /prints/{subject}       forget: the subject's prints on this device's match-on-sensor readers, the
           [?reader=NAME]          sealed copies and the sensors' own (200 with one line per reader; 404 when
                                   no reader holds one; 409 while a session runs, none starts meanwhile;
                                   403 unless the caller is root or the agent's user; 503 unaudited)
    DELETE /prints?reader=NAME     forget --everyone: empty one reader (every print its sensor lists, everyone's,
                                   and all the agent keeps for it); the reader must be named (400); 409, 403
                                   and 503 as above; 200 with a line for the sensor and one per subject
    GET    /health                 reader, session and identity state ("degraded" when the
                                   device identity cannot sign or has expired, the verifier is
                                   unreachable, or a required device is not connected: an
                                   optional camera is only named, in "device_warning")

One sensor, one session at a time: a second POST while one runs is a 409, and a
cancelled session holds the sensor until its worker threads have ended (a thread
cannot be interrupted: it ends on the session's cancel event, which nested step-up
sessions share), so no two sessions ever read one reader or camera.

Every reader of a session's events gets all of it: the events so far (the last
``MAX_HISTORY``), then the live ones, then the end; a second reader at the same
time, or one that comes after the session ended, gets the same. A session whose
events stream had a reader and lost it (the kiosk app closed or crashed) is
cancelled when no reader comes back within ``reader_grace_s``.

What a member of the socket's group could do to the daemon is bounded: the
request head and body must arrive within ``request_deadline_s`` (else 408), the
head is at most ``MAX_HEAD`` bytes (else 431), the body ``MAX_BODY`` (else 413),
an unparsable request is a 400, and past ``max_connections`` open connections a
new one is answered 503 at once. Each refusal is a short JSON ``{"error": ...}``;
floods are logged once per episode, not once per connection.

A request body is read strictly (:func:`parse_request_json`): UTF-8 only (no
byte-order mark, no NUL), at most ``MAX_JSON_DEPTH`` nested, no duplicate keys, no
NaN or Infinity, integers within 64 bits, no lone surrogate, an object at the top;
each refusal a 400 ``{"error": ..., "fix": ...}``. Whatever a
route raises that is not a refusal becomes a 500 with a JSON body and one log
event, ``local_api_request_failed``, naming the exception's type and where it was
raised, never the request's body: a kiosk app never sees a dropped connection or
a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import inspect
import json
import os
import secrets
import socket
import stat
import struct
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any

import h11
import structlog

from agent.devices_in_use import DevicesInUse
from agent.errors import AgentError, ConfigError, LocalAPIError
from agent.sessions import cancel_scope
from drivers.accounts import login
from drivers.errors import UsageError as DriverUsageError
from protocol.endpoints import GROUP_NAME, ID_RULE, SUBJECT_ID
from protocol.face_template import FACTORS, FINGER
from protocol.wire import WireError, loads

log = structlog.get_logger()

MAX_BODY = 64 * 1024
MAX_HEAD = 16 * 1024  # request line and headers: a kiosk app sends a few hundred bytes
REQUEST_DEADLINE_S = 5.0  # for the whole request (head and body): an idle connection is closed after it
WRITE_DEADLINE_S = 10.0  # a client that stops reading an answer is dropped after it
MAX_CONNECTIONS = 32  # a kiosk app needs two or three (a session's events, a cancel, /health)
ACCEPT_BACKLOG = 16  # connections waiting to be accepted, and accepted per wake-up (see LocalAPI.start)
MAX_HISTORY = 256  # events kept per session, replayed to every reader
KEEP_FINISHED = 8  # finished sessions whose events a late reader may still fetch
READER_GRACE_S = 5.0  # a session whose events reader left is cancelled when none comes back within it
STOP_WAIT_S = 10.0  # on stop, how long cancelled sessions get to end their worker threads
# ... and then how long their event streams get to send the end (`cancelled`, "the agent is stopping"): without
# it the connections were closed first, and a kiosk app or terminal never heard why its session ended.
STREAM_FLUSH_S = 2.0
OPERATIONS = ("enroll", "verify", "identify")
MODALITIES = FACTORS  # "finger" (the default) or "face"
MAX_CAPTURES = 10
MAX_FINGERS = 4
# No request of this API nests (a session request is one flat object); 8 leaves room and keeps a 64 KiB body of
# brackets from the parser's recursion (a RecursionError, not a ValueError, escaped the 400 path).
MAX_JSON_DEPTH = 8
JSON_FIX = ('send one UTF-8 JSON object, e.g. {"operation": "verify", "subject": "ana"}: each key once, '
            f"numbers finite, nesting at most {MAX_JSON_DEPTH} deep")

ApiError = LocalAPIError  # the name the routes (and callers of _start_session) use
# What a subject id and a group name are (protocol.endpoints: the verifier refuses anything else).
ID_FIX = f"use {ID_RULE} (ids are case-sensitive)"


def _whole(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def existing_group_gid(group: str) -> int:
    """The gid of ``[api] group``, or a :class:`ConfigError` naming the fix when no such group exists.

    What doctor can check too: membership depends on the unit's ``SupplementaryGroups=``,
    which a doctor run (``systemd-run -p User=...``) does not have.
    """
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ConfigError(
            f'[api] group "{group}" does not exist on this system',
            fix=f"create it (groupadd {group}) and add the kiosk app's user to it, or set [api] group to the "
            'kiosk app\'s existing group ("" leaves the socket to the agent\'s own group)',
        ) from None


def api_group_gid(group: str) -> int | None:
    """The gid to give the socket to, or None for the agent's own group; a group that cannot be used is a
    :class:`ConfigError` naming the fix, before anything is created (a config check may call it too).

    Giving a file to a group takes membership of it (the shipped unit grants no CAP_CHOWN), so a group the
    agent's user is not in fails as surely as one that does not exist.
    """
    if not group:
        return None
    gid = existing_group_gid(group)
    if os.geteuid() != 0 and gid != os.getegid() and gid not in os.getgroups():
        user = login()
        raise ConfigError(
            f'the agent\'s user {user} is not in [api] group "{group}", so it cannot give the socket to it',
            fix=f"add it (usermod -aG {group} {user}); under systemd also give the unit "
            f"SupplementaryGroups={group} (systemctl edit capture-agent), then restart the agent",
        )
    return gid


class _Throttled:
    """A warning logged at most once per ``interval_s``, with how many times it happened since: a flood of
    bad connections must not become a flood of log lines."""

    def __init__(self, event: str, interval_s: float = 60.0) -> None:
        self.event, self.interval_s = event, interval_s
        self.count, self.last = 0, float("-inf")

    def __call__(self, **fields: Any) -> None:
        self.count += 1
        now = time.monotonic()
        if now - self.last >= self.interval_s:
            log.warning(self.event, count=self.count, **fields)
            self.count, self.last = 0, now


@dataclass
class RunningSession:
    """A session and its events: kept (bounded) so that every reader, late or concurrent, gets all of them."""

    id: str
    operation: str
    session: Any  # CaptureSession, FaceSession or SensorSession
    task: asyncio.Task[Any] | None = None
    history: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=MAX_HISTORY))
    readers: set[asyncio.Queue[dict[str, Any] | None]] = field(default_factory=set)
    done: bool = False  # the operation and every worker thread of it have ended
    had_reader: bool = False
    cancel_reason: str = ""
    abandon: asyncio.TimerHandle | None = None
    modality: str = FINGER  # what it was started with; a step-up may add the other device (DevicesInUse)

    def publish(self, event: dict[str, Any]) -> None:
        self.history.append(event)
        for queue in self.readers:
            queue.put_nowait(event)

    def finish(self) -> None:
        self.done = True
        if self.abandon is not None:
            self.abandon.cancel()
        for queue in self.readers:
            queue.put_nowait(None)


class _Refusal(Exception):
    """A request refused before it reached a route (too large, too slow, unparsable)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


MAX_UNIX_PATH_BYTES = 107  # sun_path is 108 bytes on Linux, the last one its NUL


def socket_path_error(path: Path, exc: OSError) -> ConfigError:
    """Why the local API cannot listen at ``[api] socket``, and the fix, from the OS error (never a traceback).

    Seen by an installer running `capture-agent run` by hand: the default /run/capture-agent is made by the
    unit's RuntimeDirectory=, and a plain user cannot make it; a long path passes sun_path's 108 bytes.
    """
    where = f"[api] socket = {str(path)!r}"
    if len(os.fsencode(path)) > MAX_UNIX_PATH_BYTES:
        return ConfigError(
            f"cannot listen on the local API socket: {where} is {len(os.fsencode(path))} bytes long, and a unix "
            f"socket's path is at most {MAX_UNIX_PATH_BYTES}",
            fix="give [api] socket a shorter path (default /run/capture-agent/api.sock)",
        )
    if isinstance(exc, NotADirectoryError | FileExistsError):  # FileExistsError: mkdir of a folder that is a file
        return ConfigError(
            f"cannot listen on the local API socket: a part of {where} is a file, not a folder",
            fix="point [api] socket into a folder (default /run/capture-agent/api.sock)",
        )
    if isinstance(exc, PermissionError):
        return ConfigError(
            f"cannot listen on the local API socket: {login()} may not create {where} ({exc.strerror})",
            fix=f"under systemd the unit's RuntimeDirectory=capture-agent makes /run/capture-agent for it; run by "
            f"hand, point [api] socket into a folder {login()} may write, or create "
            f"{path.parent} for it (`install -d -o {login()} -m 0751 {path.parent}`)",
        )
    return ConfigError(
        f"cannot listen on the local API socket: {where}: {exc.strerror or exc}",
        fix="point [api] socket at a path of its own in a folder the agent's user may write",
    )


def refuse_a_socket_in_use(path: Path) -> None:
    """Refuse ``[api] socket`` when a live process serves it, or when it names something that is no socket.

    Why: the API used to unlink whatever was at the path. A second daemon (another
    state directory, the same default socket) took the first one's socket away from
    its kiosk app, and removed it on exit; a path mistyped onto a file deleted the file.
    A socket nobody answers on (a daemon that was killed) is stale and may be replaced.
    """
    try:
        info = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise ConfigError(
            f"[api] socket {path} exists and is not a socket (left as it is)",
            fix="point [api] socket at a path of its own (default /run/capture-agent/api.sock)",
        )
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):  # nobody listens (a killed daemon's), or gone meanwhile
        return
    except OSError as exc:
        # A timeout is a listener whose queue is full (a busy daemon), EACCES one we may not talk to: either may
        # be alive, so its socket is not ours to unlink (only a refused connection proves nobody listens).
        raise ConfigError(
            f"[api] socket {path} may be served by another process: connecting to it failed with "
            f"{type(exc).__name__} ({exc.strerror or 'timed out'}), not a refusal (left as it is)",
            fix=f"`ss -xlp | grep {path}` shows who listens; give this daemon its own [api] socket in its config, "
            "or stop the other one (`systemctl stop capture-agent`); if nothing listens, remove the file",
        ) from None
    else:
        pid = struct.unpack("3i", probe.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))[0]
    finally:
        probe.close()
    raise ConfigError(
        f"the local API socket {path} is served by another process (PID {pid}): a second capture-agent with "
        "another state directory and the same [api] socket?",
        fix=f"give this daemon its own [api] socket in its config, or stop the other one (`kill {pid}`, or "
        "`systemctl stop capture-agent`); its kiosk app keeps its socket meanwhile",
    )


class LocalAPI:
    def __init__(
        self,
        socket_path: Path,
        make_session: Callable[[Callable[[dict[str, Any]], None]], Any],
        group: str = "",
        make_face_session: Callable[[Callable[[dict[str, Any]], None]], Any] | None = None,
        health: Callable[[], dict[str, Any] | Awaitable[dict[str, Any]]] | None = None,
        record: Callable[[str, dict[str, Any]], Any] | None = None,
        audit_problem: Callable[[], AgentError | None] | None = None,
        forget: Callable[[str, str], Awaitable[list[Any]]] | None = None,
        *,
        clear_reader: Callable[[str], Awaitable[tuple[Any, list[Any]]]] | None = None,
        max_connections: int = MAX_CONNECTIONS,
        request_deadline_s: float = REQUEST_DEADLINE_S,
        reader_grace_s: float = READER_GRACE_S,
    ) -> None:
        self.socket_path = socket_path
        self.make_session = make_session  # emit -> CaptureSession
        self.make_face_session = make_face_session  # emit -> FaceSession ("modality": "face")
        self.group = group
        self.health = health or (lambda: {})
        self.record = record or (lambda kind, data: None)  # the daemon's audit trail
        self.audit_problem = audit_problem or (lambda: None)  # why attempts cannot be audited now, if they cannot
        self.forget = forget  # (subject, reader) -> what was erased, per reader (agent.forget)
        self.clear_reader = clear_reader  # reader -> (its sensor's clearing, each subject's erasure) (forget_everyone)
        self._forgetting = False  # a forget runs: no session may start on the readers meanwhile
        self.max_connections = max_connections
        self.request_deadline_s = request_deadline_s
        self.reader_grace_s = reader_grace_s
        self.sessions: dict[str, RunningSession] = {}
        self._server: asyncio.AbstractServer | None = None
        self._bound: tuple[int, int] | None = None  # (device, inode) of the socket file this API made
        self._connections: dict[asyncio.StreamWriter, asyncio.Task[Any] | None] = {}
        self._streams: set[asyncio.Task[Any]] = set()  # connections streaming a session's events
        self._capped = False  # past max_connections since the last warning
        self._refused = 0
        self._slow = _Throttled("local_api_requests_too_slow")
        self._malformed = _Throttled("local_api_requests_refused")

    # ---------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        """Listen on the socket, 0660 and given to ``[api] group``; a group that cannot be used is a
        ConfigError naming the fix, and leaves no socket behind. A socket another process still serves,
        or a path that is no socket, is refused and left as it is; a dead daemon's socket is replaced."""
        gid = api_group_gid(self.group)
        try:
            self.socket_path.parent.mkdir(parents=True, exist_ok=True)
            refuse_a_socket_in_use(self.socket_path)
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()
            # A short listen queue: asyncio accepts up to `backlog` sockets per wake-up before any handler runs,
            # and a burst of refused ones must not hold the process's descriptors (a Pi's soft limit is 1024).
            self._server = await asyncio.start_unix_server(
                self._connection, path=str(self.socket_path), backlog=ACCEPT_BACKLOG
            )
        except OSError as exc:
            raise socket_path_error(self.socket_path, exc) from None
        bound = self.socket_path.stat()
        self._bound = (bound.st_dev, bound.st_ino)
        try:
            os.chmod(self.socket_path, 0o660)
            if gid is not None:
                os.chown(self.socket_path, -1, gid)
        except OSError as exc:
            await self.stop()
            user = login()
            raise ConfigError(
                f'cannot give the local API socket {self.socket_path} to [api] group "{self.group}" '
                f"({exc.strerror})",
                fix=f"make {user} a member of {self.group} (usermod -aG {self.group} {user}; under systemd "
                f"SupplementaryGroups={self.group}), or set [api] group to a group it is in",
            ) from None
        log.info("local_api_listening", socket=str(self.socket_path), group=self.group or None)

    async def stop(self) -> None:
        """Cancel the sessions and wait (bounded) for their workers, close every connection, remove the socket."""
        for running in list(self.sessions.values()):
            self._cancel(running, "the agent is stopping")
        tasks = [r.task for r in self.sessions.values() if r.task is not None and not r.task.done()]
        if tasks:
            await asyncio.wait(tasks, timeout=STOP_WAIT_S)
        if self._streams:  # their sessions have ended: let them send it (`cancelled`, its reason) before closing
            await asyncio.wait(set(self._streams), timeout=STREAM_FLUSH_S)
        if self._server is not None:
            self._server.close()
        for writer in list(self._connections):
            writer.close()
        handlers = [t for t in self._connections.values() if t is not None and t is not asyncio.current_task()]
        if handlers:
            await asyncio.wait(handlers, timeout=STOP_WAIT_S)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        # Only our own socket: one another daemon bound at the path since (after ours was taken as stale by
        # mistake, or by hand) is its kiosk app's door, not ours to remove.
        if self._bound is not None:  # never bound (a failed start): nothing of ours is at the path
            with contextlib.suppress(OSError):
                now = self.socket_path.stat()
                if (now.st_dev, now.st_ino) == self._bound:
                    self.socket_path.unlink()
        self._bound = None

    # ---------------------------------------------------------------- sessions
    def _running(self) -> RunningSession | None:
        """The session not done yet (one at a time: one sensor), if any."""
        return next((s for s in self.sessions.values() if not s.done), None)

    def _busy(self) -> bool:
        return self._running() is not None or self._forgetting

    def _operator_only(self, writer: asyncio.StreamWriter, subject: str = "") -> None:
        """DELETE /prints is for the device's operator (root, or the agent's own user), not every group member.

        Why: the socket's group is the kiosk app's access rule, and every other route it opens needs the
        verifier's say (a session's challenge, an enrolment's token); a forget needs none and cannot be undone:
        any process of the kiosk app's user erased every subject's prints on the device. The refusal is audited
        (``prints_forget_refused``: the subject and the caller's uid)."""
        uid = peer_uid(writer)
        if uid in (0, os.geteuid()):
            return
        if not subject:  # DELETE /prints?reader=R: a clearing of everyone's prints
            self.record("prints_forget_refused", {"everyone": True, "uid": uid})
        elif SUBJECT_ID.fullmatch(subject):
            self.record("prints_forget_refused", {"subject": subject, "uid": uid})
        raise ApiError(403, f"only root or the agent's own user may forget prints on this device (uid {uid} may "
                       "not: the socket's group opens sessions only)",
                       fix="run it as root: sudo capture-agent forget --subject ID")

    async def _forget(self, subject: str, query: str) -> dict[str, Any]:
        """DELETE /prints/{subject}: erase the subject's prints through the daemon's devices (agent.forget).

        Refused while a session runs (the same readers), and while the audit trail cannot record it: the erasure
        is audited per reader (``prints_forgotten``). A session asked for meanwhile is refused in turn (409).
        """

        from agent.forget import ForgetNotAudited, NoSuchReader, NothingToForget

        if self.forget is None:
            raise ApiError(503, "this agent keeps no prints to forget", fix="configure a match-on-sensor reader")
        if not SUBJECT_ID.fullmatch(subject):
            raise ApiError(400, f"{subject[:80]!r} is not a subject id", fix=ID_FIX)
        reader = self._reader_asked(query)
        self._may_erase_now()
        self._forgetting = True
        try:
            done = await self.forget(subject, reader)
        except NothingToForget as exc:
            raise ApiError(404, exc.message, fix=exc.fix) from None
        except NoSuchReader as exc:
            raise ApiError(400, exc.message, fix=exc.fix) from None
        except ForgetNotAudited as exc:  # the audit trail failed since audit_problem() was asked
            raise ApiError(503, exc.message, fix=exc.fix) from None
        except AgentError as exc:  # the store's own refusal (an index that does not decrypt): said, with its fix
            raise ApiError(500, exc.message, fix=exc.fix) from None
        finally:
            self._forgetting = False
        return {
            "subject": subject,
            "complete": all(f.complete for f in done),
            "forgotten": [{**f.audit(), "complete": f.complete, "message": f.message()} for f in done],
        }

    @staticmethod
    def _reader_asked(query: str) -> str:
        from urllib.parse import parse_qs

        reader = (parse_qs(query).get("reader") or [""])[0]
        if len(reader) > 64:
            raise ApiError(400, '"reader" must name a [[device]]', fix="name one of the devices GET /health lists")
        return reader

    def _may_erase_now(self) -> None:
        """Refuse an erasure while a session or another erasure runs (the same readers: 409), or while the audit
        trail cannot record it (503): every erasure is audited before it happens."""
        busy = self._running()
        if busy is not None or self._forgetting:
            used = DevicesInUse(busy.modality, busy.history).named() if busy is not None else "the readers"
            raise ApiError(409, f"a session or another forget is running on {used}",
                           fix='try again when it has ended (GET /health says "busy": false)')
        unaudited = self.audit_problem()
        if unaudited is not None:
            raise ApiError(503, f"nothing is forgotten while {unaudited.message}", fix=unaudited.fix)

    async def _clear(self, query: str) -> dict[str, Any]:
        """DELETE /prints?reader=R: clear one reader, every print on its sensor and everything the agent keeps
        for it (agent.forget.forget_everyone). Refused as a forget is (409, 503); a reader must be named."""
        from agent.forget import ForgetNotAudited, NoSuchReader

        if self.clear_reader is None:
            raise ApiError(503, "this agent keeps no prints to forget", fix="configure a match-on-sensor reader")
        reader = self._reader_asked(query)
        self._may_erase_now()
        self._forgetting = True
        try:
            cleared, done = await self.clear_reader(reader)
        except NoSuchReader as exc:  # NoReaderNamed and NotAPrintReader among them
            raise ApiError(400, exc.message, fix=exc.fix) from None
        except ForgetNotAudited as exc:
            raise ApiError(503, exc.message, fix=exc.fix) from None
        except AgentError as exc:
            raise ApiError(500, exc.message, fix=exc.fix) from None
        finally:
            self._forgetting = False
        return {
            "reader": cleared.reader,
            "complete": cleared.complete and all(f.complete for f in done),
            "cleared": {**cleared.audit(), "complete": cleared.complete, "message": cleared.message()},
            "forgotten": [{**f.audit(), "complete": f.complete, "message": f.message()} for f in done],
        }

    def _start_session(self, request: dict[str, Any]) -> RunningSession:
        operation = request.get("operation")
        if operation not in OPERATIONS:
            raise ApiError(400, f"operation must be one of {', '.join(OPERATIONS)}")
        subject = request.get("subject")
        if operation != "identify" and not isinstance(subject, str):
            raise ApiError(400, f'{operation} needs "subject"')
        if operation != "identify" and not SUBJECT_ID.fullmatch(subject):
            # Said here, not by the verifier: its 400 came back as a session that had started, was audited as
            # failed, and named a fix in its own wire terms, not what the kiosk app or the terminal gave.
            raise ApiError(400, f'"subject" {subject[:80]!r} is not a subject id', fix=ID_FIX)
        args: tuple[Any, ...] = () if operation == "identify" else (subject,)
        if operation == "enroll":
            captures, group = request.get("captures", 3), request.get("group")
            fingers, verify_first = request.get("fingers", 2), request.get("verify_first", False)
            if not _whole(captures, 1, MAX_CAPTURES):
                raise ApiError(400, f'"captures" must be a whole number from 1 to {MAX_CAPTURES}')
            if not _whole(fingers, 1, MAX_FINGERS):
                raise ApiError(400, f'"fingers" must be a whole number from 1 to {MAX_FINGERS}')
            if group is not None and not isinstance(group, str):
                raise ApiError(400, '"group" must be a string naming the subject group')
            if group is not None and not GROUP_NAME.fullmatch(group):
                raise ApiError(400, f'"group" {group[:80]!r} is not a group name', fix=ID_FIX)
            if not isinstance(verify_first, bool):
                raise ApiError(400, '"verify_first" must be true or false')
            args = (subject, captures, group, fingers, verify_first)
        modality = request.get("modality", FINGER)
        if modality not in MODALITIES:
            raise ApiError(400, f'"modality" must be one of {", ".join(MODALITIES)}')
        make = self.make_session if modality == FINGER else self.make_face_session
        if make is None:
            raise ApiError(503, "this agent runs no face sessions", fix="configure a camera device")
        reader = request.get("reader")  # a capability (match-on-sensor, fingerprint-image) or a device name
        if reader is not None and (not isinstance(reader, str) or not reader or len(reader) > 64):
            raise ApiError(400, '"reader" must name a device or a capability such as "match-on-sensor"')
        if self._forgetting:
            raise ApiError(409, "the readers are busy forgetting a subject's prints",
                           fix='try again in a moment (GET /health says "busy": false)')
        busy = self._running()
        if busy is not None:
            # The fix says what a second client can do: a person at a terminal saw only "wait for it or cancel
            # it", and no command cancels a session another client started.
            used = DevicesInUse(busy.modality, busy.history).named()  # "the sensor" of a face session misled
            raise ApiError(409, f"a session is running on {used} (or still stopping after a cancel)",
                           fix='try again when it has ended (GET /health says "busy": false); the client that '
                           "started it may cancel it (DELETE /sessions/ID)")
        unaudited = self.audit_problem()
        if unaudited is not None:  # invariant 5: no attempt the audit trail cannot record
            raise ApiError(503, f"no session while {unaudited.message}", fix=unaudited.fix)
        running = RunningSession(secrets.token_urlsafe(12), operation, None, modality=modality)
        emit = self._emitter(running)
        try:
            chosen = {"reader": reader} if reader else {}
            running.session = self.make_session(emit, **chosen) if modality == FINGER else make(emit)
        except AgentError as exc:  # e.g. no connected device can do this: say which and how to fix it
            # A "reader" naming no device (or one of another kind) is the request's mistake: a 400, as DELETE
            # /prints says it. A 503 told a kiosk app to try the same typo again later.
            raise ApiError(400 if getattr(exc, "misnamed", False) else 503, exc.message, fix=exc.fix) from None
        running.task = asyncio.get_running_loop().create_task(self._run(running, args))
        finished = [k for k, v in self.sessions.items() if v.done]
        for key in finished[: max(0, len(finished) - KEEP_FINISHED + 1)]:
            del self.sessions[key]
        self.sessions[running.id] = running
        return running

    @staticmethod
    def _emitter(running: RunningSession) -> Callable[[dict[str, Any]], None]:
        """The session's ``emit``: into its history and to its readers, from the loop's thread or any other."""
        loop, owner = asyncio.get_running_loop(), threading.get_ident()

        def emit(event: dict[str, Any]) -> None:
            if threading.get_ident() == owner:
                running.publish(event)
            else:
                loop.call_soon_threadsafe(running.publish, event)

        return emit

    async def _run(self, running: RunningSession, args: tuple[Any, ...]) -> None:
        outcome, reason = "error", ""
        cancelled = getattr(running.session, "cancelled", None)
        scope = cancel_scope(cancelled) if isinstance(cancelled, threading.Event) else contextlib.nullcontext()
        try:
            with scope:  # a step-up's nested session shares this session's cancel event
                outcome = outcome_of(await getattr(running.session, running.operation)(*args))
        except asyncio.CancelledError:
            outcome, reason = "cancelled", running.cancel_reason or "cancelled by the kiosk app"
            running.publish({"type": "cancelled", "reason": reason})
        except AgentError as exc:
            reason = exc.message
            if running.cancel_reason:  # the worker saw the cancel before the task did
                outcome, reason = "cancelled", running.cancel_reason
                running.publish({"type": "cancelled", "reason": reason})
            else:
                running.publish({"type": "error", **error_codes(exc), "message": exc.message,
                                 "fix": session_fix(exc, args)})
        except Exception as exc:  # a reader fault the driver typed (ModuleError) or worse
            # A driver's error prints as "message (fix: ...)": the event carries the two apart, as an AgentError's.
            fix = str(getattr(exc, "fix", "") or "")
            reason = str(exc.args[0]) if fix and exc.args else str(exc)
            # A usage error only the driver could tell (libfprint's NOT_SUPPORTED) is no fault: device_cannot, as
            # the one a device refuses itself; it was device_error, "a reader's fault", of a reader that works.
            code = "device_cannot" if isinstance(exc, DriverUsageError) else "device_error"
            running.publish({"type": "error", "code": code, "message": reason, "fix": fix})
        finally:
            running.finish()  # only now: every worker thread of the session has ended (sessions.in_worker)
            # Every attempt in the audit trail: operation, outcome, reason; never a template or image.
            data = {"session_id": running.id, "operation": running.operation, "outcome": outcome, "reason": reason}
            if args and running.operation != "identify":
                data["subject"] = args[0]
            self.record("session_finished", data)

    def _cancel(self, running: RunningSession, reason: str = "cancelled by the kiosk app") -> None:
        if running.done:
            return
        running.cancel_reason = running.cancel_reason or reason
        running.session.cancel()  # the worker threads watch this event (nested sessions share it)
        if running.task is not None:
            running.task.cancel()  # ... and the task waits for them before it ends

    def _reader_left(self, running: RunningSession) -> None:
        """The last reader of a running session went: cancel it unless one comes back within the grace."""
        if running.done or running.readers or not running.had_reader or running.abandon is not None:
            return

        def abandon() -> None:
            running.abandon = None
            if not running.done and not running.readers:
                log.info("local_api_session_abandoned", session_id=running.id, grace_s=self.reader_grace_s)
                self._cancel(running, "the kiosk app stopped reading the session's events")

        running.abandon = asyncio.get_running_loop().call_later(self.reader_grace_s, abandon)

    # ---------------------------------------------------------------- HTTP
    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._connections) >= self.max_connections:
            self._over_cap()
            with contextlib.suppress(ConnectionError, TimeoutError, h11.LocalProtocolError):
                await self._json(h11.Connection(h11.SERVER), writer, 503,
                                 {"error": f"the local API serves {self.max_connections} connections at a time: "
                                  "close idle ones and try again"})
            writer.close()
            return
        self._connections[writer] = asyncio.current_task()
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        try:
            try:
                async with asyncio.timeout(self.request_deadline_s):
                    request, body = await self._read_request(conn, reader)
            except TimeoutError:
                self._slow(deadline_s=self.request_deadline_s)
                raise _Refusal(408, f"the request did not arrive within {self.request_deadline_s:g} s") from None
            except h11.RemoteProtocolError as exc:
                self._malformed(status=exc.error_status_hint)
                raise _Refusal(exc.error_status_hint, _protocol_message(exc.error_status_hint)) from None
            if request is not None:
                await self._route(conn, reader, writer, request, body)
        except _Refusal as refusal:
            with contextlib.suppress(ConnectionError, TimeoutError, h11.LocalProtocolError):
                await self._json(conn, writer, refusal.status, {"error": refusal.message})
        except (h11.ProtocolError, ConnectionError, TimeoutError):
            pass
        except Exception as exc:  # reading the request failed in a way h11 did not type
            with contextlib.suppress(ConnectionError, TimeoutError, h11.ProtocolError):
                await self._failed(conn, writer, "", [], exc)
        finally:
            self._connections.pop(writer, None)
            writer.close()
            if self._capped and len(self._connections) < self.max_connections // 2:
                log.info("local_api_connections_below_cap", refused=self._refused, limit=self.max_connections)
                self._capped, self._refused = False, 0

    def _over_cap(self) -> None:
        """Logged once per episode (until the connections fall back below half the cap), never per connection."""
        self._refused += 1
        if not self._capped:
            self._capped = True
            log.warning("local_api_connections_capped", limit=self.max_connections,
                        fix="a kiosk app keeps connections open, or something floods the socket: look among "
                        "the processes of [api] group's members")

    async def _read_request(self, conn: h11.Connection, reader: asyncio.StreamReader) -> tuple[Any, bytes]:
        request, body = None, b""
        while True:
            event = conn.next_event()  # an incomplete head past MAX_HEAD is h11's RemoteProtocolError (431)
            if event is h11.NEED_DATA:
                data = await reader.read(65536)
                conn.receive_data(data)
                if not data:
                    return None, b""
            elif isinstance(event, h11.Request):
                request = event
                length = dict(event.headers).get(b"content-length")
                # ... and a complete one that came in one read is measured here
                if sum(len(n) + len(v) for n, v in event.headers) + len(event.target) > MAX_HEAD:
                    self._malformed(status=431)
                    raise _Refusal(431, _protocol_message(431))
                if length is not None and int(length) > MAX_BODY:
                    self._malformed(status=413)
                    raise _Refusal(413, _protocol_message(413))
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > MAX_BODY:
                    self._malformed(status=413)
                    raise _Refusal(413, _protocol_message(413))
            elif isinstance(event, h11.EndOfMessage):
                return request, body

    async def _route(
        self, conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: Any,
        body: bytes,
    ) -> None:
        method, target = request.method.decode(), request.target.decode(errors="replace")
        path, _, query = target.partition("?")
        parts = [p for p in path.split("/") if p]
        try:
            if method == "GET" and parts == ["health"]:
                extra = self.health()
                if inspect.isawaitable(extra):
                    extra = await extra
                await self._json(conn, writer, 200, {"status": "ok", "busy": self._busy(), **extra})
            elif method == "POST" and parts == ["sessions"]:
                running = self._start_session(parse_request_json(body or b"{}"))
                await self._json(conn, writer, 201, {"id": running.id, "events": f"/sessions/{running.id}/events"})
            elif len(parts) == 3 and parts[0] == "sessions" and parts[2] == "events" and method == "GET":
                running = self._session(parts[1])
                task = asyncio.current_task()
                if task is not None:
                    self._streams.add(task)
                try:
                    await self._stream(conn, reader, writer, running)
                finally:
                    self._streams.discard(task)  # type: ignore[arg-type]
            elif len(parts) == 2 and parts[0] == "sessions" and method == "DELETE":
                self._cancel(self._session(parts[1]))
                await self._json(conn, writer, 202, {"cancelled": parts[1]})
            elif parts == ["prints"] and method == "DELETE":  # a clearing: DELETE /prints?reader=R
                self._operator_only(writer)
                await self._json(conn, writer, 200, await self._clear(query))
            elif len(parts) == 2 and parts[0] == "prints" and method == "DELETE":
                self._operator_only(writer, parts[1])
                await self._json(conn, writer, 200, await self._forget(parts[1], query))
            else:
                raise ApiError(404, f"no route {method} {path}")
        except ApiError as exc:
            await self._json(conn, writer, exc.status, {"error": exc.message, **({"fix": exc.fix} if exc.fix else {})})
        except (h11.ProtocolError, ConnectionError, TimeoutError):
            raise  # the client went, or broke HTTP: nobody to answer
        except Exception as exc:  # a bug or a broken part must be a 500, never a dropped connection
            await self._failed(conn, writer, method, parts, exc)

    async def _failed(
        self, conn: h11.Connection, writer: asyncio.StreamWriter, method: str, parts: list[str], exc: Exception
    ) -> None:
        """Log a route's unexpected exception (its type and place, never its text: that may quote the body) and
        answer 500 with a JSON body when no answer has begun; after a stream began, only end the connection."""
        frame = exc.__traceback__
        while frame is not None and frame.tb_next is not None:
            frame = frame.tb_next
        where = f"{Path(frame.tb_frame.f_code.co_filename).name}:{frame.tb_lineno}" if frame is not None else ""
        # The route as a pattern: a session id is the kiosk app's, but anything else in the path could be anything.
        route = "/".join("{id}" if i == 1 and parts[0] in ("sessions", "prints") else p
                         for i, p in enumerate(parts[:3]))
        log.error("local_api_request_failed", method=method[:16], route="/" + route, error_type=type(exc).__name__,
                  raised_at=where)
        if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):  # no answer begun (IDLE: the request never ended)
            await self._json(conn, writer, 500, {
                "error": f"the agent failed on this request ({type(exc).__name__})",
                "fix": "retry; if it fails again, send the agent's log (event local_api_request_failed) to its "
                       "maintainers",
            })

    def _session(self, session_id: str) -> RunningSession:
        try:
            return self.sessions[session_id]
        except KeyError:
            raise ApiError(404, f"no such session (the last {KEEP_FINISHED} finished ones are kept)") from None

    async def _send(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(data)
        await asyncio.wait_for(writer.drain(), WRITE_DEADLINE_S)  # a client that stops reading is dropped

    async def _json(self, conn: h11.Connection, writer: asyncio.StreamWriter, status: int, data: dict) -> None:
        payload = json.dumps(data).encode()
        # One request per connection: say so, or a client reuses a socket this side closes.
        headers = [("content-type", "application/json"), ("content-length", str(len(payload))), ("connection", "close")]
        writer.write(conn.send(h11.Response(status_code=status, headers=headers, reason=_reason(status))))
        writer.write(conn.send(h11.Data(data=payload)))
        await self._send(writer, conn.send(h11.EndOfMessage()))

    async def _stream(
        self, conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
        running: RunningSession,
    ) -> None:
        """The session's events so far, then the live ones until it ends; the reader leaving is noticed at once
        (end of its input) so that a session nobody follows any more is cancelled (``_reader_left``)."""
        # Snapshot and subscription in one step of the loop: no event is missed or sent twice.
        backlog, queue = list(running.history), asyncio.Queue[dict[str, Any] | None]()
        live = not running.done
        if live:
            running.readers.add(queue)
            running.had_reader = True
            if running.abandon is not None:
                running.abandon.cancel()
                running.abandon = None
        gone = asyncio.ensure_future(_until_closed(reader))
        try:
            headers = [("content-type", "text/event-stream"), ("cache-control", "no-store"), ("connection", "close")]
            await self._send(writer, conn.send(h11.Response(status_code=200, headers=headers)))
            for event in backlog:
                await self._send(writer, conn.send(h11.Data(data=_sse(event))))
            while live:
                get = asyncio.ensure_future(queue.get())
                await asyncio.wait({get, gone}, return_when=asyncio.FIRST_COMPLETED)
                if not get.done():
                    get.cancel()
                    return  # the reader went
                event = get.result()
                if event is None:
                    break
                await self._send(writer, conn.send(h11.Data(data=_sse(event))))
            await self._send(writer, conn.send(h11.EndOfMessage()))
        finally:
            gone.cancel()
            running.readers.discard(queue)
            self._reader_left(running)


def peer_uid(writer: asyncio.StreamWriter) -> int | None:
    """The uid of the process at the other end of a local API connection (SO_PEERCRED), None when unknown."""
    sock = writer.get_extra_info("socket")
    if sock is None:
        return None
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", creds)[1])


async def _until_closed(reader: asyncio.StreamReader) -> None:
    """Returns when the client closes its side (anything it sends after its request is ignored)."""
    with contextlib.suppress(ConnectionError):
        while await reader.read(4096):
            pass


def parse_request_json(body: bytes) -> dict[str, Any]:
    """A request body as a JSON object, read strictly; anything else is a 400 :class:`ApiError` naming the fix.

    Why strict: ``json.loads`` guesses UTF-16 and UTF-32 from the bytes, keeps the last of duplicate keys (two
    readers of one body could disagree on the operation), accepts NaN and Infinity (and makes 1e999 infinite),
    and recurses once per bracket; the kiosk app's developer should hear of each at once, not as an odd session.
    The protocol's strict parser (:func:`protocol.wire.loads`: UTF-8 only, duplicate keys, depth, numbers,
    lone surrogates) reads it, as the verifier reads the agent's requests.
    """
    try:
        payload = loads(body, max_depth=MAX_JSON_DEPTH)
    except WireError as exc:
        raise ApiError(400, f"the body is refused: {exc}", fix=JSON_FIX) from None
    if not isinstance(payload, dict):
        raise ApiError(400, f"the body must be a JSON object, not {type(payload).__name__}", fix=JSON_FIX)
    return payload


def _sse(event: dict[str, Any]) -> bytes:
    return f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode()


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


def _protocol_message(status: int) -> str:
    return {
        400: "the request is not HTTP/1.1 this API can read",
        408: "the request did not arrive in time",
        413: f"the body is larger than {MAX_BODY // 1024} KiB",
        431: f"the request line and headers are larger than {MAX_HEAD // 1024} KiB",
    }.get(status, "the request was refused")


def session_fix(exc: AgentError, args: tuple[Any, ...]) -> str:
    """The fix an error event carries: the error's, but a verifier's fix written for the agent said as the
    kiosk app and the terminal can follow it (:meth:`FactorNotEnrolledError.session_fix`)."""
    from agent.errors import FactorNotEnrolledError

    if isinstance(exc, FactorNotEnrolledError) and args and isinstance(args[0], str):
        return exc.session_fix(args[0])
    return exc.fix


def error_codes(exc: AgentError) -> dict[str, str]:
    """An error event's ``code`` (and a verifier refusal's ``problem``, its problem type's slug).

    Why: a kiosk app showed the person something for each error by matching the English ``message``;
    "no finger in time", "reader unplugged" and "verifier down" need different screens, and the text may change.
    """
    from agent.devices.errors import DeviceCannot, DeviceFault, DeviceStopped, DeviceUnavailable, DeviceUnplugged
    from agent.errors import DeadlineError, TransportError, VerifierError
    from agent.face_sessions import FaceNotReadyError, LivenessFailedError, NoFaceError
    from agent.sessions import NoFingerError, SessionError

    if isinstance(exc, VerifierError) and exc.slug:
        return {"code": "verifier_refused", "problem": exc.slug}
    if isinstance(exc, LivenessFailedError):  # which failure (a photo, the wrong way...): its prompt's code
        return {"code": "liveness_failed", "reason": exc.reason}
    for kind, code in ((NoFingerError, "no_finger"), (NoFaceError, "no_face"), (FaceNotReadyError, "face_not_ready"),
                       (DeviceUnplugged, "device_unplugged"),
                       # a device closed under a session by the stopping agent: a retry, not staff (agent_error)
                       (DeviceStopped, "agent_stopping"),
                       # asked of a device that does not declare it (identify on a verify-only reader): no fault
                       (DeviceCannot, "device_cannot"),
                       (DeviceUnavailable, "device_not_connected"),
                       # a camera's fault (frames that do not decode, of a refused size): it said agent_error
                       (DeviceFault, "device_error"), (TransportError, "verifier_unreachable"),
                       (DeadlineError, "verifier_unreachable"), (VerifierError, "verifier_error"),
                       (SessionError, "session_failed")):
        if isinstance(exc, kind):
            return {"code": code}
    return {"code": "agent_error"}


def outcome_of(result: dict[str, Any]) -> str:
    """A session's result in one word, for the audit trail."""
    if "decision" in result:
        return str(result["decision"])
    if "candidates" in result:
        return "identified" if result["candidates"] else "no_candidate"
    return "enrolled"
