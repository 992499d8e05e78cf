"""The verifier's ASGI application: routing, client identity, idempotency; EST, health, events.

The biometric routes (challenges, enrollments, verifications, identifications)
are in :mod:`verifier.biometric`.

No framework: the request path is a dict lookup and a few sqlite statements, so
network plus matching stays within a few milliseconds on loopback.

Client identity comes only from ``scope["extensions"]["tls"]["client_cert_chain"]``,
which the verifier's own server layer fills from the verified TLS connection
(verifier/server.py). Request headers never count.

Every POST needs an ``Idempotency-Key``. The handler, its database writes and the
stored answer commit in one transaction, so a request cut after handling and then
retried is answered from the store: handled once.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import functools
import sqlite3
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs7

from protocol import endpoints
from protocol.messages import EventsReceipt
from verifier import __version__
from verifier.assertions import SensorRoutes
from verifier.audit_log import AuditLog, EventFormatError
from verifier.biometric import ENROLLMENTS_PATH, BiometricRoutes
from verifier.connections import BODY_BUDGET_EXTENSION, HOUSEKEEPING_INTERVAL_S, EventSummary
from verifier.http import Answer, Deferred, Request, Route, json_answer, json_body
from verifier.idempotency import (
    RETENTION_S,
    IdempotencyStore,
    KeyReuseError,
    StoredAnswer,
    request_hash,
    sealing_key,
)
from verifier.matching import MatchingBusy, MatchPool, OverBudget, OverBudgetQueued
from verifier.pki import MAX_CSR_DER, CertificateAuthority, CSRError, parse_csr
from verifier.policy import RefusalLimit, WorkLimit
from verifier.problems import CONTENT_TYPE as PROBLEM_CONTENT_TYPE
from verifier.problems import Problem
from verifier.registry import AuthorisationError, Device, DeviceRegistry, spki_sha256
from verifier.settings import VerifierSettings
from verifier.storage_faults import is_storage_fault, storage_problem
from verifier.store import open_database
from verifier.tokens import BootstrapTokens, TokenError, token_hash

log = structlog.get_logger()

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
PKCS7_TYPE = "application/pkcs7-mime; smime-type=certs-only"
DRAIN_TIMEOUT_S = 5.0  # how long an early refusal waits for the rest of a body it will not read
DRAIN_MAX_BYTES = 16 << 20  # and how much of it it takes (read and dropped, never kept)
MAX_CSR_BODY = 2 * MAX_CSR_DER  # an EST body: base64 of at most MAX_CSR_DER bytes, with line breaks to spare
ENROLLMENT_REFUSED, RENEWAL_REFUSED = "enrollment_refused", "renewal_refused"  # the audit events of EST refusals
# An event batch's answer is kept for a retry after a cut connection (the agent's call ends within a minute), not a
# day: a device may send device_event_batches_per_min of them (600: 864,000 stored answers a day), and a batch sent
# again later is answered from the events themselves, which are stored by id (every one a duplicate).
EVENTS_ANSWER_RETENTION_S = 600.0


@functools.lru_cache(maxsize=256)
def _parse_pem(pem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode("ascii"))


def client_certificate(scope: dict[str, Any]) -> x509.Certificate | None:
    """The leaf certificate the TLS layer verified, from the ASGI TLS extension only."""
    chain = scope.get("extensions", {}).get("tls", {}).get("client_cert_chain") or []
    return _parse_pem(chain[0]) if chain else None


def _certs_body(certs: list[x509.Certificate]) -> bytes:
    return base64.encodebytes(pkcs7.serialize_certificates(certs, serialization.Encoding.DER))


def _csr_from_body(body: bytes) -> bytes:
    if len(body) > MAX_CSR_BODY:  # judged before decoding: the whole body was read under max_body_bytes only
        raise Problem(
            "bad-csr",
            f"the body is larger than {MAX_CSR_BODY} bytes: base64 of a P-256 request is a few hundred",
            "send base64 of the DER PKCS#10 request (RFC 7030 section 4.2); make a new request",
        )
    try:
        return base64.b64decode(b"".join(body.split()), validate=True)
    except binascii.Error:
        raise Problem(
            "bad-csr",
            "the body is not base64",
            "send base64 of the DER PKCS#10 request (RFC 7030 section 4.2)",
        ) from None


class VerifierApp:
    def __init__(self, settings: VerifierSettings, conn: sqlite3.Connection | None = None) -> None:
        """The app on ``conn`` (`serve` opened the database once, to name a failure) or on one of its own."""
        self.settings = settings
        self.conn: sqlite3.Connection = conn if conn is not None else open_database(settings.database)
        self.ca = CertificateAuthority.load(settings.pki_dir)
        self.tokens = BootstrapTokens(self.conn)
        self.registry = DeviceRegistry(self.conn, grace_s=settings.grace_s)
        # Refused EST requests per token and per device: past the allowance, refused before they are looked at.
        self.est_refusals = RefusalLimit(settings.est_refusals_per_min, settings.lockout_base_s)
        self.audit = AuditLog(self.conn)
        # Event batches (counted before they are read) and events per device and minute: a sliding minute, no
        # doubling, so a kiosk's backlog after a day offline drains at this pace rather than being locked out.
        self.event_batches = WorkLimit(settings.device_event_batches_per_min)
        self.event_count = WorkLimit(settings.device_events_per_min)
        # And their bytes: 6,000 events of up to 4 KiB (protocol.audit.MAX_EVENT_BYTES) a minute was ~24 MiB of
        # database a minute from one device; an agent's events are a few hundred bytes.
        self.event_bytes = WorkLimit(settings.device_event_bytes_per_min)
        self.flood_events = EventSummary()  # flood-prone events, logged a few at a time (the server flushes it)
        self.biometric = BiometricRoutes(self.conn, settings, self.flood_events)
        self.idempotency = IdempotencyStore(self.conn, sealing_key(self.biometric.enrollments.key))
        self.pool = MatchPool(settings.match_workers, settings.match_queue, settings.match_budget_s)
        self._cacerts = _certs_body([self.ca.cert, *self.ca.chain])  # RFC 7030 4.1.3: the CA and its chain
        self.routes: dict[tuple[str, str], Route] = {
            ("GET", endpoints.CACERTS): Route(self.cacerts, needs_client_cert=False),
            ("POST", endpoints.SIMPLEENROLL): Route(self.simpleenroll, needs_client_cert=False),
            ("POST", endpoints.SIMPLEREENROLL): Route(self.simplereenroll, needs_client_cert=True),
            ("GET", endpoints.HEALTH): Route(self.health, needs_client_cert=True),
            ("POST", endpoints.EVENTS): Route(self.events, needs_client_cert=True,
                                              retention_s=EVENTS_ANSWER_RETENTION_S),
            **self.biometric.routes(),
            **SensorRoutes(self.conn, self.biometric).routes(),  # match-on-sensor assertions
        }
        self._paths = {path for _, path in self.routes}
        self._next_housekeeping = 0.0

    # ---------------------------------------------------------------- ASGI
    @staticmethod
    def _internal_error(scope: dict[str, Any]) -> tuple[Answer, tuple[tuple[bytes, bytes], ...]]:
        """A fault of the verifier's own (a bug): logged with its traceback, answered 500 ``internal``."""
        log.exception("request_failed", path=scope.get("path"))
        problem = Problem(
            "internal", "the verifier failed on this request", "retry; if it persists, see the verifier's log"
        )
        return Answer(500, PROBLEM_CONTENT_TYPE, problem.body()), ()

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        timing = {"started": time.perf_counter()}
        body_done: list[bool] = [False]
        try:
            answer = await self._dispatch(scope, receive, timing, body_done)
            headers = answer.headers
        except Problem as problem:
            if not body_done[0]:
                # Refused before the whole body was read (unknown path, wrong method, too large):
                # take the rest first, so the client's DATA frames meet an open stream. hypercorn
                # (0.18) tears the whole connection down on DATA for a stream already answered.
                await self._drain(receive)
            answer = Answer(problem.status, PROBLEM_CONTENT_TYPE, problem.body())
            headers = problem.headers
        except Exception as exc:
            if is_storage_fault(exc):
                problem, reason, fix = storage_problem(self.settings.database, exc)
                self.flood_events.note("storage_refused", reason, path=scope.get("path"), fix=fix)
                answer = Answer(problem.status, PROBLEM_CONTENT_TYPE, problem.body())
                headers = problem.headers
            else:
                answer, headers = self._internal_error(scope)
        response_headers = [
            (b"content-type", answer.content_type.encode()),
            (b"content-length", str(len(answer.body)).encode()),
            *headers,
        ]
        if answer.content_type.startswith("application/pkcs7-mime"):
            response_headers.append((b"content-transfer-encoding", b"base64"))
        self._add_timing(scope, response_headers, timing["started"])
        await send({"type": "http.response.start", "status": answer.status, "headers": response_headers})
        await send({"type": "http.response.body", "body": answer.body})

    def _add_timing(self, scope: dict[str, Any], headers: list[tuple[bytes, bytes]], started: float) -> None:
        """Server-Timing ``app``: the verifier's own work once the body is in (checks, database, matching), so a
        client can tell it from the network (matching included, and its wait for a worker).

        Not on the answers of a route that is not :attr:`~verifier.http.Route.timed` (1:N identification, an
        enrollment's duplicate search), and a handler's ``match`` entry is taken off them too: both durations
        grow with the templates searched, so a device read its groups' gallery size from them (and saw each
        enrollment into it), which the 422 ``identification-unreachable`` and the reported threshold were made
        not to tell. The handlers log ``match_ms`` for the operator instead.
        """
        route, _ = self._route(scope["method"], scope["path"])
        if route is not None and not route.timed:
            headers[:] = [(name, value) for name, value in headers if name.lower() != b"server-timing"]
            return
        handling_ms = (time.perf_counter() - started) * 1000
        headers.append((b"server-timing", f"app;dur={handling_ms:.3f}".encode()))

    def _route(self, method: str, path: str) -> tuple[Route | None, str]:
        """The route of ``method`` on ``path`` (None: none), and the subject a ``/v1/subjects/{id}/...`` names."""
        subject = endpoints.enrollment_subject(path) or ""
        return self.routes.get((method, ENROLLMENTS_PATH if subject else path)), subject

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.pool.close()
                self.conn.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _drain(self, receive: Receive) -> None:
        """Read and drop the rest of a request body (bounded in bytes and time); the answer follows either way."""
        size = 0
        try:
            async with asyncio.timeout(DRAIN_TIMEOUT_S):
                while size <= DRAIN_MAX_BYTES:
                    message = await receive()
                    if message["type"] == "http.disconnect" or not message.get("more_body", False):
                        return
                    size += len(message.get("body", b""))
        except TimeoutError:
            return

    async def _read_body(self, receive: Receive, body_done: list[bool], budget: Any = None) -> bytes:
        """The request body, within ``body_timeout_s`` (a slow sender holds no stream for long).

        ``budget``: the stream's share of the caps on request bodies held (the server's ``StreamBody``, from the
        scope's extension :data:`~verifier.connections.BODY_BUDGET_EXTENSION`; None outside it): each chunk kept
        is counted, and past a cap it raises the 503 ``connection-busy`` problem.
        """
        try:
            async with asyncio.timeout(self.settings.body_timeout_s):
                return await self._read_body_chunks(receive, body_done, budget)
        except TimeoutError:
            body_done[0] = True  # a slow sender's rest is not waited for
            raise Problem(
                "body-timeout",
                f"the request body did not arrive within {self.settings.body_timeout_s:g} s",
                "send the whole body at once; check the network",
            ) from None

    async def _read_body_chunks(self, receive: Receive, body_done: list[bool], budget: Any) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                body_done[0] = True
                raise Problem("disconnected", "the request body was cut", "retry")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.settings.max_body_bytes:
                raise Problem(
                    "too-large",
                    f"the body exceeds {self.settings.max_body_bytes} bytes",
                    "send a smaller request",
                )
            if budget is not None and chunk:
                budget.take(len(chunk))
            chunks.append(chunk)
            if not message.get("more_body", False):
                body_done[0] = True
                return b"".join(chunks)

    async def _dispatch(
        self, scope: dict[str, Any], receive: Receive, timing: dict[str, float], body_done: list[bool]
    ) -> Answer:
        method, path = scope["method"], scope["path"]
        route, subject = self._route(method, path)
        if route is None:
            if path in self._paths:
                raise Problem(
                    "method-not-allowed",
                    f"{method} is not allowed on {path}",
                    "see the protocol table in DESIGN.md",
                )
            raise Problem("not-found", f"no endpoint {path}")
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        body = await self._read_body(receive, body_done, scope.get("extensions", {}).get(BODY_BUDGET_EXTENSION))
        timing["started"] = time.perf_counter()
        cert = client_certificate(scope)
        device = self._authorise(cert, path) if route.needs_client_cert else None
        request = Request(method, path, headers, body, device, cert, subject)
        if method != "POST":
            answer = route.handler(request)
            assert isinstance(answer, Answer), "only POST routes match"
            return answer
        return await self._idempotent(route, request)

    def _authorise(self, cert: x509.Certificate | None, path: str) -> Device:
        if cert is None:
            # Anybody can send these, as fast as a connection carries them: counted in the flood summary.
            self.flood_events.note("request_refused", "no client certificate", path=path)
            raise Problem(
                "client-certificate-required",
                f"{path} needs the device's client certificate (mutual TLS)",
                "provision the device (`capture-agent provision`) and use its certificate",
            )
        self._check_validity(cert, path)
        try:
            return self.registry.authorise(cert)
        except AuthorisationError as exc:
            # A revoked or unregistered certificate still passes the TLS handshake (the CA signed it), and its
            # connection may carry a request per stream: counted in the flood summary, never one line each.
            self.flood_events.note("request_refused", str(exc), path=path, serial=format(cert.serial_number, "x"))
            raise Problem(exc.slug, str(exc), exc.fix) from None

    def active_device(self, certificate: bytes) -> str | None:
        """The id of the active device a certificate the TLS layer verified belongs to, or None (for the server's
        connection caps: a revoked, superseded or unregistered certificate counts as no certificate there)."""
        cert = x509.load_der_x509_certificate(certificate)
        now = dt.datetime.now(dt.UTC)
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            return None
        try:
            return self.registry.authorise(cert).device_id
        except AuthorisationError:
            return None

    def _check_validity(self, cert: x509.Certificate, path: str) -> None:
        """The certificate's validity, on every request: OpenSSL checked it only at the handshake.

        A connection (or a resumed session) opened while the certificate was valid
        would otherwise go on working after it expired.
        """
        now = dt.datetime.now(dt.UTC)
        if cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            return
        expired = now > cert.not_valid_after_utc
        reason = "certificate expired" if expired else "certificate not yet valid"
        self.flood_events.note("request_refused", reason, path=path, serial=format(cert.serial_number, "x"))
        raise Problem(
            "certificate-expired" if expired else "certificate-not-yet-valid",
            f"the device certificate is valid from {cert.not_valid_before_utc.isoformat()} "
            f"to {cert.not_valid_after_utc.isoformat()}",
            "re-provision the device with a new token (`capture-agent provision`; `capture-agent doctor` says why)"
            if expired
            else "set the device's clock right (NTP)",
        )

    async def _idempotent(self, route: Route, request: Request) -> Answer:
        key = request.headers.get("idempotency-key", "")
        if not key or len(key) > endpoints.MAX_IDEMPOTENCY_KEY:
            raise Problem(
                "idempotency-key-required",
                "every POST needs an Idempotency-Key header (at most 200 characters)",
                "send an Idempotency-Key header: a fresh random key per request, the same key on retries",
            )
        if request.device is not None:
            principal = request.device.device_id
        else:
            principal = "token:" + token_hash(self._enrollment_token(request))
        req_hash = request_hash(request.method, request.path, request.body)
        self._housekeeping()
        spent: Deferred | None = None  # a deferred request whose checks were committed (the nonce spent)
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            stored = self.idempotency.lookup(principal, key, req_hash)
            if stored is not None:
                self.conn.execute("COMMIT")
                # Counted in the flood summary past a few a window: a repeat is answered before any rate (a retry
                # after GOAWAY is no new request), so one line each let a device write the log at line rate.
                self.flood_events.note("idempotent_repeat", "answered from the idempotency store", routine=True,
                                       path=request.path,
                                       **({"device_id": principal} if request.device is not None else {}))
                return Answer(stored.status, stored.content_type, stored.body, stored.headers)
            if route.matches and request.device is not None:
                self.pool.admit(request.device.device_id)  # busy: a 503 before anything is consumed
            result = route.handler(request)
            if isinstance(result, Deferred):
                # The checks' writes (the nonce consumed) stand; matching runs outside any transaction.
                self.conn.execute("COMMIT")
                spent = result
                answer = await self._match(request, result)
            else:
                answer = result
            # Every answer the handler returned is kept, a step-up's 401 and a factor-not-enrolled 403 too: its
            # writes commit with it (the nonce spent, the step-up opened), so a retry told "nonce used" would lose
            # it. A refusal is raised instead, and rolled back: nothing of it is stored.
            stored_answer = StoredAnswer(answer.status, answer.content_type, answer.body, answer.headers)
            self.idempotency.save(principal, key, req_hash, stored_answer, route.retention_s or RETENTION_S)
            self.conn.execute("COMMIT")
            self.biometric.committed()  # the galleries learn an enrollment only once it is stored
            return answer
        except MatchingBusy as exc:
            self.biometric.rolled_back()  # first: a ROLLBACK that raises must not leave them for another request
            self.conn.execute("ROLLBACK")
            raise self._busy(request, request.device.device_id if request.device else "", str(exc)) from None
        except KeyReuseError:
            self.biometric.rolled_back()
            self.conn.execute("ROLLBACK")
            raise Problem(
                "idempotency-key-reused",
                "this Idempotency-Key was used for a different request",
                "use a fresh key for each new request",
            ) from None
        except BaseException as exc:
            self.biometric.rolled_back()
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            if spent is not None and is_storage_fault(exc):  # its decision was not stored: nor may its nonce be
                self._give_back(spent)
            raise

    def _give_back(self, deferred: Deferred) -> None:
        """A decision the database could not store (its transaction rolled back): give back what the checks spent
        (the nonce), so the device's retry of the same request works, as the 503 storage-unavailable promises.
        Best effort: on a disk still full this write fails too, and the retry is refused as a used nonce."""
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            deferred.undo()
            self.conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            log.warning("nonce_not_given_back", device_id=deferred.device_id, reason=str(exc))

    async def _match(self, request: Request, deferred: Deferred) -> Answer:
        """The deferred matching in the pool, then its finish in a new transaction (the turn of its serial key
        held through both); a full pool or a spent budget is a 503 with Retry-After.

        Either way the request was not decided: what its checks used (the nonce, a
        pending step-up) is given back, so the client's retry of the same request works.
        When nothing was matched for it (busy, or its budget spent before its job
        started) its charges go back too: the device's request and identification
        rates, the subject's rates, the matching allowance (``Request.refunds``), so
        retries as the Retry-After tells never put the device over its rate.
        """

        def finish(outcome: Any) -> Answer:
            self.conn.execute("BEGIN IMMEDIATE")
            return deferred.finish(outcome)

        try:
            return await self.pool.run(deferred.device_id, deferred.work, finish, deferred.serial)
        except (MatchingBusy, OverBudget) as exc:
            self.conn.execute("BEGIN IMMEDIATE")
            deferred.undo()
            self.conn.execute("COMMIT")
            if isinstance(exc, MatchingBusy | OverBudgetQueued):  # nothing matched: the charges are the device's
                self.biometric.give_back_charges(request)  # its rates and allowance: its retry is served in them
            if isinstance(exc, MatchingBusy):
                raise self._busy(request, deferred.device_id, str(exc)) from None
            reason = f"matching took longer than {self.settings.match_budget_s:g} s"
            self.flood_events.note("matching_refused", reason, device_id=deferred.device_id, path=request.path)
            raise Problem(
                "matching-over-budget",
                reason,
                "send fewer finger views per request, or retry after the Retry-After seconds",
                headers=((b"retry-after", b"1"),),
            ) from None

    def _busy(self, request: Request, device_id: str, reason: str) -> Problem:
        # Summarised under a flood: a device can send busy requests faster than anything else.
        self.flood_events.note("matching_refused", reason, device_id=device_id, path=request.path)
        return Problem(
            "matching-busy",
            reason,
            "retry after the Retry-After seconds (the agent does so by itself)",
            headers=((b"retry-after", b"1"),),
        )

    def _housekeeping(self) -> None:
        """Every minute: forget nonces, session tokens and stored answers past their life (a challenge's answer lives
        as long as its nonce), and the pending step-ups past theirs (:meth:`forget_expired`)."""
        now = time.time()
        if now < self._next_housekeeping:
            return
        self._next_housekeeping = now + HOUSEKEEPING_INTERVAL_S
        # Not on every request: a lookup already refuses an expired step-up (StepUpPolicy), so this only frees
        # memory, and a scan of every pending step-up per request would be work on the request path for nothing.
        self.forget_expired(now)
        dropped = (self.biometric.challenges.expire(now) + self.biometric.sessions.expire(now)
                   + self.idempotency.expire(now))
        if dropped:
            log.info("housekeeping", rows_dropped=dropped)

    def forget_expired(self, now: float | None = None) -> int:
        """Drop what the verifier keeps in memory past its life: the pending step-ups (each holds a person's first
        capture, a template); how many were dropped.

        Called by the requests' housekeeping and, whether requests come or not, by the server every
        ``HOUSEKEEPING_INTERVAL_S`` (verifier.server.ConnectionServer.housekeep): an abandoned
        step-up's template outlives its lifetime (``step_up_ttl_s``) by at most that interval.
        Memory only, no database write: the timer may run while a request's transaction is open.
        """
        dropped = self.biometric.stepup.expire(time.time() if now is None else now)
        if dropped:
            log.info("housekeeping", pending_step_ups_dropped=dropped, reason="past step_up_ttl_s")
        return dropped

    # ---------------------------------------------------------------- handlers
    def cacerts(self, request: Request) -> Answer:
        return Answer(200, "application/pkcs7-mime", self._cacerts)

    def simpleenroll(self, request: Request) -> Answer:
        """EST enrollment with a one-time token; a refused request never spends the token.

        The token is looked up first (a hash and an indexed row), then the token's
        allowance of refusals, then the id's status, then the request (cheapest
        checks first: see :func:`verifier.pki.parse_csr`).
        """
        token = self._enrollment_token(request)
        try:
            device_id = self.tokens.peek(token)
        except TokenError as exc:
            raise self._est_refused(
                ENROLLMENT_REFUSED,
                Problem(
                    "bad-token",
                    str(exc),
                    "ask for a new token (`capture-verifier token new`)",
                    headers=((b"www-authenticate", b'Bearer error="invalid_token"'),),
                ),
                exc.device_id,
                str(exc),
            ) from None
        # Per token, not per device id: the holder of one token cannot lock out the holder of another.
        allowance = "token:" + token_hash(token)
        self._est_allowance(
            allowance,
            ENROLLMENT_REFUSED,
            device_id,
            "device-rate-limited",
            "too many refused enrollment requests with this token",
            "wait, then provision once with the agent (`capture-agent provision`: a new EC P-256 key and its "
            "request); a refused request is not repeated in a loop",
        )
        known = self.registry.status(device_id)
        if known is not None and known[0] == "revoked":
            raise self._est_refused(
                ENROLLMENT_REFUSED,
                Problem("device-revoked", f"device {device_id} is revoked", "issue a token for a new device id"),
                device_id,
                "device revoked",
                spends=allowance,
            )
        csr = self._checked_csr(request.body, ENROLLMENT_REFUSED, device_id, allowance)
        cert = self.ca.certify_device_key(csr.public_key(), device_id, self.settings.cert_days)
        self.tokens.consume(token)
        self.registry.record_certificate(device_id, cert, supersede=True)
        log.info("certificate_issued", audit=True, device_id=device_id, serial=format(cert.serial_number, "x"))
        return Answer(200, PKCS7_TYPE, _certs_body([cert]))

    def simplereenroll(self, request: Request) -> Answer:
        """EST renewal: the device's allowance of refusals, its newest certificate and its renewal rate are checked
        before its request is parsed, and the request is parsed once."""
        assert request.device is not None
        device_id = request.device.device_id
        allowance = "device:" + device_id
        self._est_allowance(
            allowance,
            RENEWAL_REFUSED,
            device_id,
            "renewal-rate-limited",
            "too many refused renewal requests",
            "renew with a new EC P-256 key at about two thirds of the certificate's life, not in a loop",
        )
        if not self.registry.is_current(request.device.serial):
            raise self._est_refused(
                RENEWAL_REFUSED,
                Problem(
                    "certificate-superseded",
                    "this certificate was replaced by a renewal; only the newest certificate may renew",
                    "renew with the device's newest certificate (the agent uses it after a renewal)",
                ),
                device_id,
                "certificate superseded",
            )
        now = time.time()
        issued = self.registry.issued_since(device_id, now - 3600.0)
        if len(issued) >= self.settings.renewals_per_hour:
            wait = issued[0] + 3600.0 - now
            raise self._est_refused(
                RENEWAL_REFUSED,
                Problem(
                    "renewal-rate-limited",
                    f"device {device_id} had {len(issued)} certificates issued in the last hour; wait {wait:.0f} s",
                    "renew at about two thirds of the certificate's life, not in a loop",
                    headers=((b"retry-after", str(int(wait) + 1).encode()),),
                ),
                device_id,
                "renewal rate",
            )
        csr = self._checked_csr(request.body, RENEWAL_REFUSED, device_id, allowance)
        public_key = csr.public_key()
        if spki_sha256(public_key) in self.registry.current_spki(device_id):
            raise self._est_refused(
                RENEWAL_REFUSED,
                Problem(
                    "key-reused",
                    "renewal must come with a new key pair",
                    "generate a new EC P-256 key for the renewal",
                ),
                device_id,
                "key reused",
                spends=allowance,
            )
        cert = self.ca.certify_device_key(public_key, device_id, self.settings.cert_days)
        self.registry.record_certificate(device_id, cert, supersede=True)
        log.info(
            "certificate_renewed",
            audit=True,
            device_id=device_id,
            old_serial=request.device.serial,
            serial=format(cert.serial_number, "x"),
        )
        return Answer(200, PKCS7_TYPE, _certs_body([cert]))

    def _enrollment_token(self, request: Request) -> str:
        """The one-time token of an enrollment; a request without one is refused (audited, flood-bounded)."""
        try:
            return _bearer(request.headers)
        except Problem as problem:
            raise self._est_refused(ENROLLMENT_REFUSED, problem, "", "token required") from None

    def _checked_csr(
        self, body: bytes, event: str, device_id: str, allowance: str
    ) -> x509.CertificateSigningRequest:
        """The request the body carries, as the CA accepts it; a refusal is audited and spends the allowance."""
        try:
            return parse_csr(_csr_from_body(body))
        except CSRError as exc:
            problem, reason = Problem("bad-csr", str(exc), "make a new request"), str(exc)
        except Problem as exc:
            problem, reason = exc, exc.detail
        raise self._est_refused(event, problem, device_id, reason, spends=allowance)

    def _est_allowance(self, allowance: str, event: str, device_id: str, slug: str, detail: str, fix: str) -> None:
        """429 with Retry-After, before the request is looked at, while ``allowance`` has spent its refusals."""
        wait = self.est_refusals.wait(allowance)
        if wait > 0:
            raise self._est_refused(
                event,
                Problem(
                    slug,
                    f"device {device_id}: {detail}; wait {wait:.0f} s",
                    fix,
                    headers=((b"retry-after", str(int(wait) + 1).encode()),),
                ),
                device_id,
                "too many refused requests",
                wait_s=round(wait, 1),
            )

    def _est_refused(
        self, event: str, problem: Problem, device_id: str, reason: str, *, spends: str = "", **fields: Any
    ) -> Problem:
        """A refused EST request: an audit event (invariant 5) naming the device when it is known, and the reason.

        ``spends``: the allowance (a token's, a device's) the refusal is counted
        against. Those refusals are logged one by one: past the allowance the next
        requests are refused before they are looked at. The others can be repeated
        without bound (no token at all, an unknown or spent token, a superseded
        certificate, a renewal past its rate, a request past its allowance) and go
        through the flood summary, so that under a flood the log stays bounded
        while every refusal is still counted.
        """
        if device_id:
            fields["device_id"] = device_id
        if spends:
            self.est_refusals.refused(spends)
            log.warning(event, audit=True, reason=reason, status=problem.status, problem=problem.slug, **fields)
        else:
            self.flood_events.note(event, reason, status=problem.status, problem=problem.slug, **fields)
        return problem

    def health(self, request: Request) -> Answer:
        assert request.device is not None
        return json_answer(200, {"status": "ok", "version": __version__, "device_id": request.device.device_id})

    def events(self, request: Request) -> Answer:
        """A batch of audit events from the device's outbox (idempotent by event id)."""
        assert request.device is not None
        device_id = request.device.device_id
        self._event_rate(device_id, self.event_batches, 1, "event batches")  # before the body is parsed
        self._event_rate(device_id, self.event_bytes, len(request.body), "bytes of event batches")
        try:
            batch = json_body(request)
        except Problem as problem:  # not protocol JSON: refused, and audited like any refused request
            log.warning("events_refused", audit=True, device_id=device_id, status=problem.status, reason=problem.slug)
            raise
        if isinstance(batch, dict) and isinstance(batch.get("events"), list):  # else ingest says what is wrong
            self._event_rate(device_id, self.event_count, len(batch["events"]), "events")
        try:
            result = self.audit.ingest(device_id, batch)
        except EventFormatError as exc:
            log.warning("events_refused", audit=True, device_id=device_id, status=422, reason=str(exc))
            raise Problem(
                "bad-events",
                str(exc),
                "send events as the agent's outbox makes them (DESIGN.md, audit trail)",
            ) from None
        receipt = EventsReceipt(result.accepted, result.duplicates, result.anomalies)
        return json_answer(200, receipt.json())

    def _event_rate(self, device_id: str, limit: WorkLimit, count: int, what: str) -> None:
        """429 ``device-rate-limited`` when the device sent more ``what`` this minute than ``limit`` allows.

        Refused in the flood summary: a refusal a device can repeat at will. Without it a
        stolen device stored (and logged) batches of forged events as fast as it sent them.
        """
        wait = limit.spend(device_id, count)
        if wait > 0:
            self.flood_events.note("events_refused", f"{what} rate", device_id=device_id, status=429)
            raise Problem(
                "device-rate-limited",
                f"device {device_id} sent more than {limit.per_minute} {what} this minute; wait {wait:.0f} s",
                "wait; the agent's outbox keeps the events and sends them on its next try",
                headers=((b"retry-after", str(int(wait) + 1).encode()),),
            )


def _bearer(headers: dict[str, str]) -> str:
    scheme, _, value = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise Problem(
            "token-required",
            "EST simpleenroll needs `Authorization: Bearer <one-time token>`",
            "pass the token printed by `capture-verifier token new` to `capture-agent provision`",
            headers=((b"www-authenticate", b"Bearer"),),
        )
    return value.strip()


def create_app(settings: VerifierSettings, conn: sqlite3.Connection | None = None) -> VerifierApp:
    return VerifierApp(settings, conn)
