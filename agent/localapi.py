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
    GET    /health                 reader, session and identity state ("degraded" when the
                                   device identity cannot sign or has expired)

One sensor, one session at a time: a second POST while one runs is a 409.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import inspect
import json
import os
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h11
import structlog

from agent.errors import AgentError
from protocol.face_template import FACTORS, FINGER

log = structlog.get_logger()

MAX_BODY = 64 * 1024
OPERATIONS = ("enroll", "verify", "identify")
MODALITIES = FACTORS  # "finger" (the default) or "face"
MAX_CAPTURES = 10
MAX_FINGERS = 4


def _whole(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


@dataclass
class RunningSession:
    id: str
    operation: str
    session: Any  # CaptureSession
    task: asyncio.Task[Any] | None = None
    events: asyncio.Queue[dict[str, Any] | None] = field(default_factory=asyncio.Queue)
    done: bool = False


class LocalAPI:
    def __init__(
        self,
        socket_path: Path,
        make_session: Callable[[Callable[[dict[str, Any]], None]], Any],
        group: str = "",
        make_face_session: Callable[[Callable[[dict[str, Any]], None]], Any] | None = None,
        health: Callable[[], dict[str, Any] | Awaitable[dict[str, Any]]] | None = None,
        record: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        self.socket_path = socket_path
        self.make_session = make_session  # emit -> CaptureSession
        self.make_face_session = make_face_session  # emit -> FaceSession ("modality": "face")
        self.group = group
        self.health = health or (lambda: {})
        self.record = record or (lambda kind, data: None)  # the daemon's audit trail
        self.sessions: dict[str, RunningSession] = {}
        self._server: asyncio.AbstractServer | None = None

    # ---------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        self._server = await asyncio.start_unix_server(self._connection, path=str(self.socket_path))
        os.chmod(self.socket_path, 0o660)
        if self.group:
            os.chown(self.socket_path, -1, grp.getgrnam(self.group).gr_gid)
        log.info("local_api_listening", socket=str(self.socket_path))

    async def stop(self) -> None:
        for running in list(self.sessions.values()):
            self._cancel(running)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()

    # ---------------------------------------------------------------- sessions
    def _busy(self) -> bool:
        return any(not s.done for s in self.sessions.values())

    def _start_session(self, request: dict[str, Any]) -> RunningSession:
        operation = request.get("operation")
        if operation not in OPERATIONS:
            raise ApiError(400, f"operation must be one of {', '.join(OPERATIONS)}")
        subject = request.get("subject")
        if operation != "identify" and not isinstance(subject, str):
            raise ApiError(400, f'{operation} needs "subject"')
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
            if not isinstance(verify_first, bool):
                raise ApiError(400, '"verify_first" must be true or false')
            args = (subject, captures, group, fingers, verify_first)
        modality = request.get("modality", FINGER)
        if modality not in MODALITIES:
            raise ApiError(400, f'"modality" must be one of {", ".join(MODALITIES)}')
        make = self.make_session if modality == FINGER else self.make_face_session
        if make is None:
            raise ApiError(503, "this agent runs no face sessions (fix: configure a camera device)")
        reader = request.get("reader")  # a capability (match-on-sensor, fingerprint-image) or a device name
        if reader is not None and (not isinstance(reader, str) or not reader or len(reader) > 64):
            raise ApiError(400, '"reader" must name a device or a capability such as "match-on-sensor"')
        if self._busy():
            raise ApiError(409, "a session is running on the sensor: wait for it or cancel it")
        running = RunningSession(secrets.token_urlsafe(12), operation, None)
        try:
            chosen = {"reader": reader} if reader else {}
            running.session = (
                self.make_session(running.events.put_nowait, **chosen) if modality == FINGER
                else make(running.events.put_nowait)
            )
        except AgentError as exc:  # e.g. no connected device can do this: say which and how to fix it
            raise ApiError(503, f"{exc.message} (fix: {exc.fix})") from None
        running.task = asyncio.get_running_loop().create_task(self._run(running, args))
        self.sessions = {k: v for k, v in self.sessions.items() if not v.done}
        self.sessions[running.id] = running
        return running

    async def _run(self, running: RunningSession, args: tuple[Any, ...]) -> None:
        outcome, reason = "error", ""
        try:
            outcome = outcome_of(await getattr(running.session, running.operation)(*args))
        except asyncio.CancelledError:
            outcome, reason = "cancelled", "cancelled by the kiosk app"
            running.events.put_nowait({"type": "cancelled"})
        except AgentError as exc:
            reason = exc.message
            running.events.put_nowait({"type": "error", "message": exc.message, "fix": exc.fix})
        except Exception as exc:  # a reader fault the driver typed (ModuleError) or worse
            reason = str(exc)
            running.events.put_nowait({"type": "error", "message": str(exc), "fix": getattr(exc, "fix", "")})
        finally:
            running.done = True
            running.events.put_nowait(None)
            # Every attempt in the audit trail: operation, outcome, reason; never a template or image.
            data = {"session_id": running.id, "operation": running.operation, "outcome": outcome, "reason": reason}
            if args and running.operation != "identify":
                data["subject"] = args[0]
            self.record("session_finished", data)

    def _cancel(self, running: RunningSession) -> None:
        running.session.cancel()
        if running.task is not None:
            running.task.cancel()

    # ---------------------------------------------------------------- HTTP
    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            request, body = await self._read_request(conn, reader)
            if request is not None:
                await self._route(conn, writer, request, body)
        except (h11.ProtocolError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _read_request(self, conn: h11.Connection, reader: asyncio.StreamReader) -> tuple[Any, bytes]:
        request, body = None, b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(65536)
                conn.receive_data(data)
                if not data:
                    return None, b""
            elif isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > MAX_BODY:
                    raise h11.RemoteProtocolError("body too large")
            elif isinstance(event, h11.EndOfMessage):
                return request, body

    async def _route(self, conn: h11.Connection, writer: asyncio.StreamWriter, request: Any, body: bytes) -> None:
        method, path = request.method.decode(), request.target.decode().split("?")[0]
        parts = [p for p in path.split("/") if p]
        try:
            if method == "GET" and parts == ["health"]:
                extra = self.health()
                if inspect.isawaitable(extra):
                    extra = await extra
                await self._json(conn, writer, 200, {"status": "ok", "busy": self._busy(), **extra})
            elif method == "POST" and parts == ["sessions"]:
                try:
                    payload = json.loads(body or b"{}")
                except ValueError:
                    raise ApiError(400, "the body must be JSON") from None
                running = self._start_session(payload if isinstance(payload, dict) else {})
                await self._json(conn, writer, 201, {"id": running.id, "events": f"/sessions/{running.id}/events"})
            elif len(parts) == 3 and parts[0] == "sessions" and parts[2] == "events" and method == "GET":
                await self._stream(conn, writer, self._session(parts[1]))
            elif len(parts) == 2 and parts[0] == "sessions" and method == "DELETE":
                self._cancel(self._session(parts[1]))
                await self._json(conn, writer, 202, {"cancelled": parts[1]})
            else:
                raise ApiError(404, f"no route {method} {path}")
        except ApiError as exc:
            await self._json(conn, writer, exc.status, {"error": exc.message})

    def _session(self, session_id: str) -> RunningSession:
        try:
            return self.sessions[session_id]
        except KeyError:
            raise ApiError(404, "no such session") from None

    async def _json(self, conn: h11.Connection, writer: asyncio.StreamWriter, status: int, data: dict) -> None:
        payload = json.dumps(data).encode()
        # One request per connection: say so, or a client reuses a socket this side closes.
        headers = [("content-type", "application/json"), ("content-length", str(len(payload))), ("connection", "close")]
        writer.write(conn.send(h11.Response(status_code=status, headers=headers)))
        writer.write(conn.send(h11.Data(data=payload)))
        writer.write(conn.send(h11.EndOfMessage()))
        await writer.drain()

    async def _stream(self, conn: h11.Connection, writer: asyncio.StreamWriter, running: RunningSession) -> None:
        headers = [("content-type", "text/event-stream"), ("cache-control", "no-store"), ("connection", "close")]
        writer.write(conn.send(h11.Response(status_code=200, headers=headers)))
        while True:
            event = await running.events.get()
            if event is None:
                break
            line = f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode()
            writer.write(conn.send(h11.Data(data=line)))
            await writer.drain()
        writer.write(conn.send(h11.EndOfMessage()))
        await writer.drain()


def outcome_of(result: dict[str, Any]) -> str:
    """A session's result in one word, for the audit trail."""
    if "decision" in result:
        return str(result["decision"])
    if "candidates" in result:
        return "identified" if result["candidates"] else "no_candidate"
    return "enrolled"


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
