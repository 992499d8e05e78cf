"""The verifier's ASGI application: EST, health, challenges, with a tiny router.

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

import base64
import binascii
import datetime as dt
import functools
import json
import re
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs7

from biometrics.fingerprint import GalleryIndex, TemplateError, mcc_match, threshold_for_fmr
from biometrics.fingerprint.cylinders import Cylinders
from biometrics.fingerprint.iso19794_2 import decode
from biometrics.fingerprint.matcher import cylinders_of
from verifier import __version__
from verifier.audit_log import AuditLog, EventFormatError
from verifier.challenges import Challenges, NonceError
from verifier.enrollments import EnrollmentStore, load_or_create_key
from verifier.idempotency import IdempotencyStore, KeyReuseError, StoredAnswer, request_hash
from verifier.pki import CertificateAuthority, CSRError, parse_csr
from verifier.policy import AccessRules, DeviceRateLimit, Lockouts
from verifier.problems import CONTENT_TYPE as PROBLEM_CONTENT_TYPE
from verifier.problems import Problem
from verifier.registry import AuthorisationError, Device, DeviceRegistry, spki_sha256
from verifier.sessions import SessionTokens
from verifier.settings import VerifierSettings
from verifier.signatures import SignatureError, check_signature
from verifier.stepup import ACR_SECOND_FINGER, StepUpPolicy
from verifier.store import open_database
from verifier.tokens import BootstrapTokens, TokenError, token_hash

log = structlog.get_logger()

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
PKCS7_TYPE = "application/pkcs7-mime; smime-type=certs-only"
JSON_TYPE = "application/json"
HOUSEKEEPING_INTERVAL_S = 3600.0
TEMPLATE_FORMAT = "iso19794-2:2005"
MAX_TEMPLATES = 10
SUBJECT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
SUBJECT_PATH = re.compile(r"/v1/subjects/([^/]+)/enrollments")


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    device: Device | None  # set on routes that need a client certificate
    client_cert: x509.Certificate | None
    subject: str = ""  # from /v1/subjects/{id}/...


@dataclass(frozen=True)
class Answer:
    status: int
    content_type: str
    body: bytes
    headers: tuple[tuple[bytes, bytes], ...] = ()


@dataclass(frozen=True)
class Route:
    handler: Callable[[Request], Answer]
    needs_client_cert: bool


@functools.lru_cache(maxsize=256)
def _parse_pem(pem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode("ascii"))


def client_certificate(scope: dict[str, Any]) -> x509.Certificate | None:
    """The leaf certificate the TLS layer verified, from the ASGI TLS extension only."""
    chain = scope.get("extensions", {}).get("tls", {}).get("client_cert_chain") or []
    return _parse_pem(chain[0]) if chain else None


def _json(status: int, payload: dict[str, Any]) -> Answer:
    return Answer(status, JSON_TYPE, json.dumps(payload).encode())


def _certs_body(certs: list[x509.Certificate]) -> bytes:
    return base64.encodebytes(pkcs7.serialize_certificates(certs, serialization.Encoding.DER))


def _csr_from_body(body: bytes) -> bytes:
    try:
        return base64.b64decode(b"".join(body.split()), validate=True)
    except binascii.Error:
        raise Problem(
            400,
            "bad-csr",
            "Bad certificate request",
            "the body is not base64",
            "send base64 of the DER PKCS#10 request (RFC 7030 section 4.2)",
        ) from None


class VerifierApp:
    def __init__(self, settings: VerifierSettings) -> None:
        self.settings = settings
        self.conn: sqlite3.Connection = open_database(settings.database)
        self.ca = CertificateAuthority.load(settings.pki_dir)
        self.tokens = BootstrapTokens(self.conn)
        self.registry = DeviceRegistry(self.conn, grace_s=settings.grace_s)
        self.idempotency = IdempotencyStore(self.conn)
        self.challenges = Challenges(self.conn, ttl_s=settings.nonce_ttl_s)
        self.audit = AuditLog(self.conn)
        self.enrollments = EnrollmentStore(self.conn, load_or_create_key(settings.enrollment_key))
        self.threshold = threshold_for_fmr(settings.target_fmr)
        self.rules = AccessRules(self.conn)
        self.lockouts = Lockouts(self.conn, settings.max_failures, settings.lockout_base_s)
        self.device_rate = DeviceRateLimit(settings.device_requests_per_min, settings.lockout_base_s)
        self.stepup = StepUpPolicy(self.conn, first_use=settings.step_up_first_use)
        self.sessions = SessionTokens(self.conn, settings.session_ttl_s)
        self._gallery: GalleryIndex | None = None
        self._match_ms = 0.0
        self._packed: dict[str, mcc_match.Packed | None] = {}  # per subject; dropped when it enrolls more
        self._cacerts = _certs_body([self.ca.cert])
        self.routes: dict[tuple[str, str], Route] = {
            ("GET", "/.well-known/est/cacerts"): Route(self.cacerts, needs_client_cert=False),
            ("POST", "/.well-known/est/simpleenroll"): Route(self.simpleenroll, needs_client_cert=False),
            ("POST", "/.well-known/est/simplereenroll"): Route(self.simplereenroll, needs_client_cert=True),
            ("GET", "/v1/health"): Route(self.health, needs_client_cert=True),
            ("POST", "/v1/challenges"): Route(self.new_challenge, needs_client_cert=True),
            ("POST", "/v1/events"): Route(self.events, needs_client_cert=True),
            ("POST", "/v1/subjects/{id}/enrollments"): Route(self.enroll, needs_client_cert=True),
            ("POST", "/v1/verifications"): Route(self.verify, needs_client_cert=True),
            ("POST", "/v1/identifications"): Route(self.identify, needs_client_cert=True),
        }
        self._paths = {path for _, path in self.routes}
        self._next_housekeeping = 0.0
        self._handling_started = 0.0

    # ---------------------------------------------------------------- ASGI
    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        self._handling_started = time.perf_counter()
        try:
            answer = await self._dispatch(scope, receive)
            headers = answer.headers
        except Problem as problem:
            answer = Answer(problem.status, PROBLEM_CONTENT_TYPE, problem.body())
            headers = problem.headers
        except Exception:
            log.exception("request_failed", path=scope.get("path"))
            problem = Problem(
                500,
                "internal",
                "Internal error",
                "the verifier failed on this request",
                "retry; if it persists, see the verifier's log",
            )
            answer = Answer(500, PROBLEM_CONTENT_TYPE, problem.body())
            headers = ()
        response_headers = [
            (b"content-type", answer.content_type.encode()),
            (b"content-length", str(len(answer.body)).encode()),
            *headers,
        ]
        if answer.content_type.startswith("application/pkcs7-mime"):
            response_headers.append((b"content-transfer-encoding", b"base64"))
        # Server-Timing: the verifier's own work once the body is in (checks, database, matching),
        # so a client can tell it from the network. No await since _dispatch set the start.
        handling_ms = (time.perf_counter() - self._handling_started) * 1000
        response_headers.append((b"server-timing", f"app;dur={handling_ms:.3f}".encode()))
        await send({"type": "http.response.start", "status": answer.status, "headers": response_headers})
        await send({"type": "http.response.body", "body": answer.body})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.conn.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _read_body(self, receive: Receive) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise Problem(400, "disconnected", "Client went away", "the request body was cut", "retry")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.settings.max_body_bytes:
                raise Problem(
                    413,
                    "too-large",
                    "Request too large",
                    f"the body exceeds {self.settings.max_body_bytes} bytes",
                    "send a smaller request",
                )
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _dispatch(self, scope: dict[str, Any], receive: Receive) -> Answer:
        method, path = scope["method"], scope["path"]
        subject = ""
        found = SUBJECT_PATH.fullmatch(path)
        if found:
            subject = found.group(1)
            route = self.routes.get((method, "/v1/subjects/{id}/enrollments"))
        else:
            route = self.routes.get((method, path))
        if route is None:
            if path in self._paths:
                raise Problem(
                    405,
                    "method-not-allowed",
                    "Method not allowed",
                    f"{method} is not allowed on {path}",
                    "see the protocol table in DESIGN.md",
                )
            raise Problem(
                404, "not-found", "Not found", f"no endpoint {path}", "check the URL and the protocol version"
            )
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        body = await self._read_body(receive)
        self._handling_started = time.perf_counter()  # the last await before the answer is sent
        cert = client_certificate(scope)
        device = self._authorise(cert, path) if route.needs_client_cert else None
        request = Request(method, path, headers, body, device, cert, subject)
        if method != "POST":
            return route.handler(request)
        return self._idempotent(route, request)

    def _authorise(self, cert: x509.Certificate | None, path: str) -> Device:
        if cert is None:
            log.warning("request_refused", audit=True, path=path, reason="no client certificate")
            raise Problem(
                401,
                "client-certificate-required",
                "Client certificate required",
                f"{path} needs the device's client certificate (mutual TLS)",
                "provision the device (`capture-agent provision`) and use its certificate",
            )
        try:
            return self.registry.authorise(cert)
        except AuthorisationError as exc:
            log.warning(
                "request_refused",
                audit=True,
                path=path,
                serial=format(cert.serial_number, "x"),
                reason=str(exc),
            )
            raise Problem(
                403,
                "device-not-authorised",
                "Device not authorised",
                str(exc),
                "re-provision the device with a new token; ask the operator if it was revoked",
            ) from None

    def _idempotent(self, route: Route, request: Request) -> Answer:
        key = request.headers.get("idempotency-key", "")
        if not key or len(key) > 200:
            raise Problem(
                400,
                "idempotency-key-required",
                "Idempotency-Key required",
                "every POST needs an Idempotency-Key header (at most 200 characters)",
                "send an Idempotency-Key header: a fresh random key per request, the same key on retries",
            )
        if request.device is not None:
            principal = request.device.device_id
        else:
            principal = "token:" + token_hash(_bearer(request.headers))
        req_hash = request_hash(request.method, request.path, request.body)
        self._housekeeping()
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            stored = self.idempotency.lookup(principal, key, req_hash)
            if stored is not None:
                self.conn.execute("COMMIT")
                log.info("idempotent_repeat", path=request.path, principal=principal)
                return Answer(stored.status, stored.content_type, stored.body)
            answer = route.handler(request)
            if answer.status < 400:
                self.idempotency.save(
                    principal, key, req_hash, StoredAnswer(answer.status, answer.content_type, answer.body)
                )
            self.conn.execute("COMMIT")
            return answer
        except KeyReuseError:
            self.conn.execute("ROLLBACK")
            raise Problem(
                422,
                "idempotency-key-reused",
                "Idempotency-Key reused",
                "this Idempotency-Key was used for a different request",
                "use a fresh key for each new request",
            ) from None
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise

    def _housekeeping(self) -> None:
        """Hourly: drop stored answers past their retention and nonces past their life."""
        now = time.time()
        if now < self._next_housekeeping:
            return
        self._next_housekeeping = now + HOUSEKEEPING_INTERVAL_S
        dropped = self.idempotency.expire(now) + self.challenges.expire(now)
        if dropped:
            log.info("housekeeping", rows_dropped=dropped)

    # ---------------------------------------------------------------- handlers
    def cacerts(self, request: Request) -> Answer:
        return Answer(200, "application/pkcs7-mime", self._cacerts)

    def simpleenroll(self, request: Request) -> Answer:
        token = _bearer(request.headers)
        try:
            device_id = self.tokens.peek(token)
        except TokenError as exc:
            log.warning("enrollment_refused", audit=True, reason=str(exc))
            raise Problem(
                401,
                "bad-token",
                "Bootstrap token refused",
                str(exc),
                "ask for a new token (`capture-verifier token new`)",
                headers=((b"www-authenticate", b'Bearer error="invalid_token"'),),
            ) from None
        if device_id in {d["device_id"] for d in self.registry.list() if d["status"] == "revoked"}:
            raise Problem(
                403,
                "device-revoked",
                "Device revoked",
                f"device {device_id} is revoked",
                "issue a token for a new device id",
            )
        cert = self._sign(request.body, device_id)
        self.tokens.consume(token)
        self.registry.record_certificate(device_id, cert, supersede=True)
        log.info("certificate_issued", audit=True, device_id=device_id, serial=format(cert.serial_number, "x"))
        return Answer(200, PKCS7_TYPE, _certs_body([cert]))

    def simplereenroll(self, request: Request) -> Answer:
        assert request.device is not None
        device_id = request.device.device_id
        csr_der = _csr_from_body(request.body)
        try:
            new_key = spki_sha256_of_csr(csr_der)
        except CSRError as exc:
            raise Problem(400, "bad-csr", "Bad certificate request", str(exc), "make a new request") from None
        if new_key in self.registry.current_spki(device_id):
            raise Problem(
                400,
                "key-reused",
                "Key reused",
                "renewal must come with a new key pair",
                "generate a new EC P-256 key for the renewal",
            )
        cert = self._sign(request.body, device_id)
        self.registry.record_certificate(device_id, cert, supersede=True)
        log.info(
            "certificate_renewed",
            audit=True,
            device_id=device_id,
            old_serial=request.device.serial,
            serial=format(cert.serial_number, "x"),
        )
        return Answer(200, PKCS7_TYPE, _certs_body([cert]))

    def _sign(self, body: bytes, device_id: str) -> x509.Certificate:
        try:
            return self.ca.issue_device_certificate(_csr_from_body(body), device_id, self.settings.cert_days)
        except CSRError as exc:
            raise Problem(400, "bad-csr", "Bad certificate request", str(exc), "make a new request") from None

    def health(self, request: Request) -> Answer:
        assert request.device is not None
        return _json(200, {"status": "ok", "version": __version__, "device_id": request.device.device_id})

    def events(self, request: Request) -> Answer:
        """A batch of audit events from the device's outbox (idempotent by event id)."""
        assert request.device is not None
        try:
            result = self.audit.ingest(request.device.device_id, _json_body(request))
        except EventFormatError as exc:
            raise Problem(
                422,
                "bad-events",
                "Malformed audit events",
                str(exc),
                "send events as the agent's outbox makes them (DESIGN.md, audit trail)",
            ) from None
        return _json(200, {"accepted": result.accepted, "duplicates": result.duplicates, "anomalies": result.anomalies})

    # ---------------------------------------------------------------- biometrics
    @staticmethod
    def _refused(request: Request, problem: Problem, reason: str) -> Problem:
        """A refused biometric request: audited (invariant 5), then answered as a problem."""
        assert request.device is not None
        log.warning(
            "biometric_request_refused",
            audit=True,
            device_id=request.device.device_id,
            path=request.path,
            status=problem.status,
            reason=reason,
        )
        return problem

    def _biometric_request(self, request: Request, operation: str) -> tuple[dict[str, Any], list[bytes]]:
        """Access rule, rate, signature, nonce (single use), templates: what every biometric request passes."""
        assert request.device is not None and request.client_cert is not None
        device_id = request.device.device_id
        if not self.rules.allows(device_id, operation):
            raise self._refused(
                request,
                Problem(
                    403,
                    "operation-not-allowed",
                    "Operation not allowed",
                    f"device {device_id} may not {operation}",
                    "ask the operator to allow it: capture-verifier device allow --operations ...",
                ),
                "operation not allowed for this device",
            )
        body = _json_body(request)
        if not isinstance(body, dict):
            raise Problem(400, "bad-json", "Body is not an object", "the body must be a JSON object", "send {...}")
        wait = self.device_rate.check(device_id)
        if wait > 0:
            raise self._refused(
                request,
                Problem(
                    429,
                    "device-rate-limited",
                    "Too many requests from this device",
                    f"device {device_id} is over its rate; wait {wait:.0f} s",
                    "slow down; a kiosk should never need this rate (a stuck loop? a stolen device?)",
                    headers=((b"retry-after", str(int(wait) + 1).encode()),),
                ),
                "device rate limit",
            )
        try:
            check_signature(request.client_cert.public_key(), request.method, request.path, body)
        except SignatureError as exc:
            raise self._refused(
                request,
                Problem(
                    401,
                    "bad-signature",
                    "Device signature refused",
                    str(exc),
                    "sign the request body with the device key (agent/signing.py)",
                ),
                str(exc),
            ) from None
        nonce = body.get("nonce")
        try:
            if not isinstance(nonce, str):
                raise NonceError("the body has no nonce")
            self.challenges.consume(device_id, nonce)
        except NonceError as exc:
            raise self._refused(
                request,
                Problem(
                    409,
                    "nonce-refused",
                    "Challenge nonce refused",
                    str(exc),
                    "ask for a fresh nonce (POST /v1/challenges) for every request; never resend one",
                ),
                str(exc),
            ) from None
        return body, _template_records(body)

    @staticmethod
    def _probes(records: list[bytes]) -> list[Cylinders]:
        """The request's templates as matching cylinders, built once per request."""
        return [c for record in records for c in (cylinders_of(t) for t in decode(record)) if len(c)]

    def _best_score(self, probes: list[Cylinders], gallery: mcc_match.Packed | None) -> float:
        """Best score of any probe against a packed set of templates (all scored at once)."""
        if gallery is None:
            return 0.0
        return max((float(mcc_match.scores(p, gallery).max()) for p in probes), default=0.0)

    def _enrolled(self, subject: str) -> mcc_match.Packed | None:
        """The subject's enrolled templates, decrypted, built and packed once (None: not enrolled)."""
        if subject not in self._packed:
            cylinders = [c for c in (cylinders_of(t) for t in self.enrollments.templates(subject)) if len(c)]
            self._packed[subject] = mcc_match.pack(cylinders) if cylinders else None
        return self._packed[subject]

    def enroll(self, request: Request) -> Answer:
        assert request.device is not None
        if not SUBJECT_ID.fullmatch(request.subject):
            raise Problem(
                400,
                "bad-subject",
                "Bad subject id",
                f"{request.subject!r} is not a subject id",
                "use 1 to 64 letters, digits, '.', '_' or '-'",
            )
        _, records = self._biometric_request(request, "enroll")
        self.enrollments.add(request.subject, request.device.device_id, records)
        self._packed.pop(request.subject, None)
        if self._gallery is not None:
            for record in records:
                for template in decode(record):
                    self._gallery.add(request.subject, template)
        log.info(
            "enrollment",
            audit=True,
            device_id=request.device.device_id,
            subject=request.subject,
            templates=len(records),
        )
        return _json(201, {"subject": request.subject, "templates": len(records)})

    def verify(self, request: Request) -> Answer:
        assert request.device is not None
        body, records = self._biometric_request(request, "verify")
        subject = body.get("subject")
        if not isinstance(subject, str) or not SUBJECT_ID.fullmatch(subject):
            raise Problem(
                400, "bad-subject", "Bad subject id", "the body needs a claimed subject", 'add "subject": "<id>"'
            )
        enrolled = self._enrolled(subject)
        if enrolled is None:
            log.info(
                "verification_attempt",
                audit=True,
                device_id=request.device.device_id,
                subject=subject,
                outcome="unknown_subject",
            )
            raise Problem(
                404,
                "unknown-subject",
                "Unknown subject",
                f"no enrollment for subject {subject!r}",
                f"enroll the subject first (POST /v1/subjects/{subject}/enrollments)",
            )
        locked = self.lockouts.locked_for(subject)
        if locked > 0:
            log.warning(
                "verification_attempt",
                audit=True,
                device_id=request.device.device_id,
                subject=subject,
                outcome="locked_out",
                locked_for_s=round(locked, 1),
            )
            raise Problem(
                429,
                "subject-locked",
                "Subject locked out",
                f"too many failed attempts for {subject!r}; locked for {locked:.0f} s more",
                "wait, or verify another way; each further lockout doubles",
                headers=((b"retry-after", str(int(locked) + 1).encode()),),
            )
        device_id = request.device.device_id
        step_id = body.get("step_up")
        if step_id is not None:
            return self._complete_step_up(device_id, subject, str(step_id), records, enrolled)
        started = time.perf_counter()
        score = self._best_score(self._probes(records), enrolled)
        self._match_ms = (time.perf_counter() - started) * 1000  # probe build + scoring; one request at a time
        decision = "accept" if score >= self.threshold else "reject"
        if decision == "accept":
            reasons = self.stepup.reasons(device_id, subject, score, self.threshold, self.lockouts.failures(subject))
            if reasons:
                step = self.stepup.open(device_id, subject, records, reasons)
                log.info(
                    "verification_attempt",
                    audit=True,
                    device_id=device_id,
                    subject=subject,
                    outcome="step_up",
                    reasons=",".join(reasons),
                    score=round(score, 4),
                )
                # An answer, not an exception: the nonce stays consumed, so this request cannot be replayed.
                problem = Problem(
                    401,
                    "insufficient-user-authentication",
                    "Another factor needed",
                    f"a second finger is needed ({', '.join(reasons)})",
                    "capture another finger of the same person and send it with this step_up id",
                    extra=(("step_up", step), ("acr_values", ACR_SECOND_FINGER), ("reasons", reasons)),
                )
                challenge = (
                    'Bearer error="insufficient_user_authentication", '
                    f'error_description="{", ".join(reasons)}", acr_values="{ACR_SECOND_FINGER}"'
                )
                return Answer(401, PROBLEM_CONTENT_TYPE, problem.body(), ((b"www-authenticate", challenge.encode()),))
        return self._decided(device_id, subject, decision, score)

    def _complete_step_up(
        self, device_id: str, subject: str, step_id: str, records: list[bytes], enrolled: mcc_match.Packed
    ) -> Answer:
        pending = self.stepup.take(step_id, device_id, subject)
        if pending is None:
            raise Problem(
                409,
                "step-up-unknown",
                "Unknown step-up",
                "no pending step-up with this id for you",
                "start the verification again",
            )
        started = time.perf_counter()
        probes = self._probes(records)
        score = self._best_score(probes, enrolled)
        first = self._probes(pending.first_records)
        same_finger = self._best_score(probes, mcc_match.pack(first) if first else None) >= self.threshold
        self._match_ms = (time.perf_counter() - started) * 1000
        decision = "accept" if score >= self.threshold and not same_finger else "reject"
        if same_finger:
            log.info(
                "verification_attempt",
                audit=True,
                device_id=device_id,
                subject=subject,
                outcome="reject",
                reason="step-up with the same finger",
            )
        return self._decided(device_id, subject, decision, score, step_up=pending.reasons)

    def _decided(
        self, device_id: str, subject: str, decision: str, score: float, step_up: list[str] | None = None
    ) -> Answer:
        self.lockouts.record(subject, decision == "accept")
        log.info(
            "verification_attempt",
            audit=True,
            device_id=device_id,
            subject=subject,
            outcome=decision,
            score=round(score, 4),
            step_up=",".join(step_up or []),
        )
        answer: dict[str, Any] = {
            "subject": subject,
            "decision": decision,
            "score": round(score, 4),
            "threshold": round(self.threshold, 4),
        }
        if decision == "accept":
            self.stepup.completed(device_id)
            answer.update(self.sessions.issue(device_id, subject))
        timing = f"match;dur={self._match_ms:.3f}".encode()  # Server-Timing: what the device cannot see
        return Answer(200, JSON_TYPE, json.dumps(answer).encode(), ((b"server-timing", timing),))

    def identify(self, request: Request) -> Answer:
        assert request.device is not None
        _, records = self._biometric_request(request, "identify")
        gallery = self._gallery_index()
        best: dict[str, float] = {}
        for record in records:
            for probe in decode(record):
                for subject, score in gallery.search(probe, top_k=10):
                    best[str(subject)] = max(best.get(str(subject), 0.0), float(score))
        candidates = sorted(
            ({"subject": s, "score": round(v, 4)} for s, v in best.items() if v >= self.threshold),
            key=lambda c: -c["score"],
        )
        log.info("identification_attempt", audit=True, device_id=request.device.device_id, candidates=len(candidates))
        return _json(200, {"candidates": candidates, "threshold": round(self.threshold, 4)})

    def _gallery_index(self) -> GalleryIndex:
        if self._gallery is None:
            self._gallery = GalleryIndex()
            for subject, template in self.enrollments.all():
                self._gallery.add(subject, template)
        return self._gallery

    def new_challenge(self, request: Request) -> Answer:
        assert request.device is not None
        nonce, expires_at = self.challenges.issue(request.device.device_id)
        expires = dt.datetime.fromtimestamp(expires_at, dt.UTC).isoformat().replace("+00:00", "Z")
        return _json(201, {"nonce": nonce, "expires_at": expires, "ttl_s": self.challenges.ttl_s})


def _template_records(body: dict[str, Any]) -> list[bytes]:
    """The ISO/IEC 19794-2 records of a request, each checked by decoding it."""
    items = body.get("templates")
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_TEMPLATES:
        raise Problem(
            422,
            "bad-template",
            "No templates",
            f"the body needs 1 to {MAX_TEMPLATES} templates",
            'send "templates": [{"format": "iso19794-2:2005", "data": "<base64>"}]',
        )
    records = []
    for index, item in enumerate(items):
        try:
            if not isinstance(item, dict) or item.get("format") != TEMPLATE_FORMAT:
                raise TemplateError(f"templates[{index}] is not a {TEMPLATE_FORMAT} template")
            record = base64.b64decode(str(item.get("data", "")), validate=True)
            decode(record)
        except (TemplateError, binascii.Error) as exc:
            raise Problem(
                422,
                "bad-template",
                "Malformed template",
                f"templates[{index}]: {exc}",
                "send the ISO/IEC 19794-2:2005 record the agent's extractor made",
            ) from None
        records.append(record)
    return records


def _json_body(request: Request) -> Any:
    try:
        return json.loads(request.body)
    except ValueError:
        raise Problem(
            400, "bad-json", "Body is not JSON", "the request body must be JSON", "send application/json"
        ) from None


def spki_sha256_of_csr(csr_der: bytes) -> str:
    return spki_sha256(parse_csr(csr_der).public_key())


def _bearer(headers: dict[str, str]) -> str:
    scheme, _, value = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise Problem(
            401,
            "token-required",
            "Bootstrap token required",
            "EST simpleenroll needs `Authorization: Bearer <one-time token>`",
            "pass the token printed by `capture-verifier token new` to `capture-agent provision`",
            headers=((b"www-authenticate", b"Bearer"),),
        )
    return value.strip()


def create_app(settings: VerifierSettings) -> VerifierApp:
    return VerifierApp(settings)
