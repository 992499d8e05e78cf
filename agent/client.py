"""The agent's one long-lived HTTP/2 client to the verifier, over mutual TLS.

Why one client for the process: HTTP/2 multiplexes every request of the agent over
a single TLS connection, so after the first handshake a verification costs one
round trip. The keep-alive is minutes (a kiosk idles between users), not httpx's
5 seconds.

Retries: a request cut by connection loss (a reset, a GOAWAY that arrived before
the answer, a timeout) is sent again with backoff and jitter, carrying the same
``Idempotency-Key``: the verifier answers a repeat with its first answer, so a
request it had already handled is not handled twice.

Renewal: :meth:`VerifierClient.replace_identity` builds a new ``httpx`` client on
the new certificate; requests already running finish on the old one, which is
closed when its last request ends.

Trusting less: an answer is read as a stream and refused once it passes
``[network] answer_max_bytes`` (nothing larger is buffered); a call, retries
included, ends at ``[network] call_deadline_s`` however slowly the bytes come;
an answer is parsed strictly (:func:`protocol.wire.loads`: no duplicate keys,
bounded depth, finite numbers); a JSON answer must say ``application/json`` and
be a 2xx (the verifier never redirects); and the client asks for answers
uncompressed and refuses any other (a ``Content-Encoding`` is decoded before
the size cap can see it, so a few hundred compressed bytes could fill a Pi's
memory). Each is a typed :class:`~agent.errors.VerifierError` naming the fix; a
refusal becomes the class its problem type names (protocol.problems). What
httpx itself raises on a broken answer (a bad chunk, a length that lies) is
translated here too: nothing of httpx reaches the callers.

Before each request the client follows the state directory's ``identity`` link
(:meth:`VerifierClient.follow_identity`), so a renewal or re-provisioning made
by another process is picked up without a restart (agent/identity.py says why
the link is the one owner).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import email.utils
import math
import random
import ssl
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
import structlog

from agent.config import PROVISIONED_ORIGIN, AgentConfig
from agent.errors import (
    AgentError,
    AnswerError,
    DeadlineError,
    TLSPolicyError,
    TransportError,
    VerifierError,
    problem_error_class,
)
from agent.handshake import probe_device_certificate, refusal_of_device_certificate, ssl_error_in
from agent.identity import DeviceIdentity, IdentityStore, provisioned_verifier
from agent.tls import PolicyViolation, ServerPolicy, client_context, describe
from protocol.endpoints import IDEMPOTENCY_KEY
from protocol.problems import REGISTRY, slug_of
from protocol.wire import WireError, loads

log = structlog.get_logger()

RETRYABLE = (
    httpx.ConnectError,
    httpx.ReadError,
    httpx.WriteError,
    httpx.RemoteProtocolError,
    httpx.TimeoutException,
)
RETRYABLE_STATUS = frozenset({502, 503, 504})
# The longest Retry-After taken as said: a verifier's real waits are seconds to minutes (a subject locked for a
# while is the longest); a header asking for days is a bug or a hostile box in between, and is cut to this.
MAX_RETRY_AFTER_S = 3600
JSON_TYPE = "application/json"


# OpenSSL's reasons when the first bytes back are not a TLS record (a plain HTTP "HTTP/1.1 400",
# an SSH banner): the port is wrong, not the verifier's TLS settings.
# OpenSSL's verify codes (X509_V_ERR_*) whose fix is not "another CA": each names what to change.
NOT_CHAINED_FIX = (
    "the verifier's certificate is not issued by the device's CA (the one whose fingerprint was typed at "
    "provisioning): check the URL points to the right verifier, or re-provision against it; with a site PKI, "
    "issue the verifier's certificate under that CA, or provision with the fingerprint of the root above both "
    "(`cacerts` answers with it)"
)
CERTIFICATE_FIXES = {
    2: NOT_CHAINED_FIX,  # unable to get issuer certificate
    19: NOT_CHAINED_FIX,  # self-signed certificate in the chain
    20: NOT_CHAINED_FIX,  # unable to get local issuer certificate
    26: "the verifier's certificate is not for a TLS server: issue it with extended key usage serverAuth "
    "(and CA:FALSE)",  # invalid purpose
}
NOT_TLS_REASONS = ("WRONG_VERSION_NUMBER", "PACKET_LENGTH_TOO_LONG")
CLOCK_FIX = (
    "check this device's clock: `timedatectl` shows it and whether NTP is on, "
    "`timedatectl set-ntp true` turns it on (a Pi has no RTC battery)"
)


def tls_policy_error(exc: BaseException, url: str) -> TLSPolicyError | None:
    """Turn a failed handshake into a message naming the fix, or None if not TLS."""
    failure = ssl_error_in(exc)
    if failure is None:
        return None
    if isinstance(failure, PolicyViolation):
        return TLSPolicyError(
            f"refused the verifier at {url}: {failure.args[0] if failure.args else failure}",
            fix=failure.fix or "check [verifier] url and spki_pin",
        )
    reason = getattr(failure, "verify_message", "") or getattr(failure, "reason", "") or str(failure)
    if isinstance(failure, ssl.SSLCertVerificationError):
        if "hostname" in reason.lower() or "ip address mismatch" in reason.lower():
            host = urlsplit(url).hostname or "HOST"
            port = urlsplit(url).port or 8443
            address = f"[{host}]" if ":" in host else host  # s_client reads host:port, an IPv6 address bracketed
            fix = (
                "use a host name the verifier's certificate was issued for in [verifier] url (or --verifier): "
                f"`openssl s_client -connect {address}:{port} </dev/null 2>/dev/null | openssl x509 -noout -ext "
                f"subjectAltName` lists them; or give the verifier a certificate for {host}"
            )
        elif "not yet valid" in reason.lower() or "expired" in reason.lower():
            # OpenSSL judged the dates by this device's clock; a Pi without an RTC battery or NTP
            # is the usual cause, and re-provisioning would only spend a token.
            now = dt.datetime.now(dt.UTC)
            if "not yet" in reason.lower():
                otherwise = "is not valid yet: see its dates on the verifier"
            else:
                otherwise = "has expired: renew it on the verifier"
            return TLSPolicyError(
                f"the verifier's certificate was refused at {url}: {reason} by this device's clock, "
                f"which says {now:%Y-%m-%d %H:%M} UTC",
                fix=f"{CLOCK_FIX}; if the clock is right, the verifier's certificate {otherwise}",
            )
        else:
            fix = CERTIFICATE_FIXES.get(
                failure.verify_code,
                "the verifier's certificate is not issued by the device's CA: check the URL points "
                "to the right verifier, or re-provision against it",
            )
        return TLSPolicyError(f"the verifier's certificate was refused at {url}: {reason}", fix=fix)
    text = str(failure)
    if any(not_tls in text.upper() for not_tls in NOT_TLS_REASONS):
        return TLSPolicyError(
            f"{url} does not speak TLS: that port answered in plain HTTP (or another protocol) ({reason})",
            fix="check the port in [verifier] url (or --verifier): the verifier serves TLS on its own port, "
            "8443 unless `capture-verifier serve --port` says otherwise; an http:// port is not it",
        )
    if "VERSION" in text.upper() or "PROTOCOL" in text.upper():
        fix = "the verifier must offer TLS 1.2 or 1.3 with ECDHE and AEAD ciphers"
    elif "ALERT" in text.upper():
        fix = (
            "the verifier refused the device certificate (revoked, expired, or another CA): run `capture-agent doctor`"
        )
    else:
        fix = "run `capture-agent doctor`; check the verifier's TLS configuration"
    return TLSPolicyError(f"TLS handshake with {url} failed: {reason}", fix=fix)


def server_timing(response: httpx.Response) -> dict[str, float]:
    """The verifier's ``Server-Timing`` entries as name -> milliseconds (``app``, ``match``).

    Only a measurement: a malformed entry (a proxy's?) is skipped, and so is a duration that is
    not a finite, non-negative ASCII number (float() takes "nan", "inf", "1e999" and "١٢").
    """
    timings: dict[str, float] = {}
    for entry in response.headers.get_list("server-timing", split_commas=True):
        name, _, params = entry.strip().partition(";")
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key == "dur" and value.isascii():
                with contextlib.suppress(ValueError):
                    duration = float(value)
                    if math.isfinite(duration) and duration >= 0:
                        timings[name.strip()] = duration
    return timings


def retry_after_s(value: str | None, now: dt.datetime | None = None) -> float | None:
    """A ``Retry-After`` (RFC 9110 section 10.2.3) in seconds, at most :data:`MAX_RETRY_AFTER_S`; None when absent.

    Only the two forms the RFC has: delay-seconds (ASCII digits: ``str.isdigit`` also takes
    "²", which int() then refuses) or an HTTP-date (a date past is 0). Anything else (a
    negative, a fraction, garbage, non-ASCII) is treated as absent, with one log event
    ``retry_after_ignored``: a wrong header must neither crash a call nor park a session.
    """
    if value is None:
        return None
    text = value.strip()
    if text and text.isascii() and text.isdigit():
        # More than 9 digits is past the cap anyway (and past 4300, int() itself would refuse).
        return float(min(int(text), MAX_RETRY_AFTER_S)) if len(text) <= 9 else float(MAX_RETRY_AFTER_S)
    if text.isascii() and any(ch.isalpha() for ch in text):
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError, OverflowError):
            when = None
        if when is not None:
            when = when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)
            wait = (when - (now or dt.datetime.now(dt.UTC))).total_seconds()
            return min(max(wait, 0.0), float(MAX_RETRY_AFTER_S))
    log.warning("retry_after_ignored", value=text[:40], length=len(text),
                reason="neither whole seconds in ASCII digits nor an HTTP-date")
    return None


FOREIGN_REFUSAL_FIX = (
    "the refusal is not a problem type of the capture protocol: check [verifier] url points to a "
    "capture-verifier with nothing in between (a proxy, a firewall), and see the verifier's log"
)


def problem_error(response: httpx.Response) -> VerifierError:
    """An RFC 9457 problem answer as the error class its problem type names; garbage as a typed error too."""
    status = response.status_code
    try:
        problem = loads(response.content)
        if not isinstance(problem, dict):
            raise WireError("not an object")
    except WireError as exc:
        return AnswerError(
            f"the verifier answered HTTP {status} with a body that is not problem details ({exc})",
            fix="check [verifier] url points to a capture-verifier, and see the verifier's log",
            status=status,
        )
    slug = slug_of(problem)
    entry = REGISTRY.get(slug)
    title = str(problem.get("title", "error"))
    detail = str(problem.get("detail", ""))
    # A type of ours carries its fix; anything else came from something that is not our verifier.
    fix = str(problem.get("fix", "")) or (entry.fix if entry is not None else FOREIGN_REFUSAL_FIX)
    error = problem_error_class(slug)(
        f"verifier refused: {status} {title}: {detail}", fix=fix, status=status, problem=problem
    )
    error.retry_after_s = retry_after_s(response.headers.get("retry-after")) or 0.0
    return error


def answer_error(path: str, reason: str, status: int = 0) -> AnswerError:
    return AnswerError(
        f"the verifier's answer to {path} is not protocol v1: {reason}",
        fix="check [verifier] url points to a capture-verifier of a compatible version (and that no proxy "
        "rewrites answers); see the verifier's log",
        status=status,
    )


async def read_answer(http: httpx.AsyncClient, request: httpx.Request, cap: int, cap_name: str) -> httpx.Response:
    """Send ``request`` and read its answer whole, but never more than ``cap`` bytes and never decoded.

    Every answer the agent reads comes through here (the mTLS client and the EST
    calls made before the device has an identity): a ``Content-Encoding`` is
    refused rather than decoded, since decoding happens before any size check
    could see the result. ``cap_name`` names the setting in the error.
    """
    path = request.url.path
    response = await http.send(request, stream=True)
    try:
        status = response.status_code
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > cap:
            raise answer_error(path, f"the answer is larger than {cap_name} = {cap} (it declares {declared} bytes)",
                               status)
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise answer_error(
                path, f"the answer is compressed (Content-Encoding: {encoding[:40]}), which was not asked for", status
            )
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_raw():  # raw: nothing is decoded (checked above)
            size += len(chunk)
            if size > cap:
                raise answer_error(path, f"the answer is larger than {cap_name} = {cap} (it kept coming)", status)
            chunks.append(chunk)
    finally:
        await response.aclose()
    return httpx.Response(
        status, headers=response.headers, content=b"".join(chunks), request=request, extensions=response.extensions
    )


NO_ENCODING = {"Accept-Encoding": "identity"}  # see read_answer: answers are never decoded


# How long the challenge fields a verifier refused as unknown are left out of its challenges: then they are sent
# again, once. Why not for the process's life: a verifier upgraded meanwhile understands them, and a long-running
# daemon would never say "first" or "modality" to it until restarted. What it costs an older verifier: one refused
# challenge (and its audit's "malformed challenge request") per verifier this often.
REFUSED_FIELDS_TTL_S = 600.0


class RefusedChallengeFields:
    """The challenge fields each verifier (by URL) refused as unknown, remembered for ``ttl_s`` after the refusal.

    Kept by the :class:`VerifierClient`, not by the VerifierAPI each session makes anew, so that an older verifier
    costs one refused request per ``ttl_s``, not one per challenge. ``clock`` is a monotonic clock in seconds.
    """

    def __init__(self, ttl_s: float = REFUSED_FIELDS_TTL_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self._clock = clock
        self._refused: dict[str, tuple[frozenset[str], float]] = {}  # url: (fields, monotonic time to forget)

    def of(self, url: str) -> frozenset[str]:
        """What the verifier at ``url`` refused less than ``ttl_s`` ago: the fields to leave out of its challenge."""
        fields, until = self._refused.get(url, (frozenset(), math.inf))
        if fields and self._clock() >= until:
            del self._refused[url]
            log.info("challenge_fields_asked_again", fields=sorted(fields), verifier=url)
            return frozenset()
        return fields

    def add(self, url: str, fields: frozenset[str]) -> None:
        """The verifier at ``url`` refused ``fields`` now: left out for the next ``ttl_s``."""
        kept, until = self._refused.get(url, (frozenset(), 0.0))
        now = self._clock()
        self._refused[url] = ((kept if now < until else frozenset()) | fields, now + self.ttl_s)


@dataclass
class _Generation:
    """One httpx client and the requests running on it."""

    http: httpx.AsyncClient
    identity: DeviceIdentity
    in_flight: int = 0
    retired: bool = False


class VerifierClient:
    """mTLS HTTP/2 client to the verifier, with retries and hot certificate swap."""

    def __init__(
        self,
        config: AgentConfig,
        identity: DeviceIdentity,
        on_tls_failure: Callable[[str], None] | None = None,
        on_identity_change: Callable[[DeviceIdentity, DeviceIdentity], None] | None = None,
        on_answer: Callable[[], None] | None = None,
    ) -> None:
        self.config = config
        self.on_tls_failure = on_tls_failure  # the daemon records an audit event
        # The verifier answered (the handshake held): the daemon ends a repeating handshake failure's count
        self.on_answer = on_answer
        self.on_identity_change = on_identity_change  # (old, new): the daemon audits a switch
        self.identity_problem: AgentError | None = None  # the link names an identity that does not load
        self._store = IdentityStore(identity.directory.parent)
        self._current = _Generation(self._build_http(identity), identity)
        self._closing: set[asyncio.Task[None]] = set()
        self.last_tls: dict[str, Any] = {}
        # The last call's outcome toward the verifier: None until one is made, else (reached, error when not).
        # For the local API's /health: a kiosk app sees the verifier is down before a person gives a finger.
        # Every failure that ends a call before an answer sets it: retries spent, the deadline (a verifier that
        # drops packets always ends there: 4 connect timeouts of 5 s outlast the 20 s deadline), a TLS refusal.
        self.reachability: tuple[bool, AgentError | None] | None = None
        # Challenge fields a verifier (by URL) refused as unknown, one from before them (agent/verifier_api.py):
        # left out of its later challenges for a while, so each costs one request and its audit no "malformed
        # challenge request"; then asked again, so an upgraded verifier gets them without the agent's restart.
        self.refused_challenge_fields = RefusedChallengeFields()

    @property
    def identity(self) -> DeviceIdentity:
        return self._current.identity

    def _build_http(self, identity: DeviceIdentity) -> httpx.AsyncClient:
        net = self.config.network
        ctx = client_context(
            identity.ca_path,
            cert_file=identity.cert_path,
            key_file=identity.key_path,
            key_password=identity.passphrase,
            policy=ServerPolicy(spki_pin=self.config.verifier.spki_pin),
        )
        return httpx.AsyncClient(
            base_url=self.config.verifier.url,
            http1=False,
            http2=True,
            verify=ctx,
            trust_env=False,  # no proxy or CA bundle from the environment
            headers=NO_ENCODING,
            timeout=httpx.Timeout(
                connect=net.connect_timeout_s,
                read=net.read_timeout_s,
                write=net.write_timeout_s,
                pool=net.pool_timeout_s,
            ),
            limits=httpx.Limits(max_connections=4, max_keepalive_connections=2, keepalive_expiry=net.keepalive_s),
        )

    async def follow_identity(self) -> DeviceIdentity:
        """Switch to the identity the state directory's link names now, if another process replaced it.

        One ``readlink`` when nothing changed. An identity that does not load is
        kept aside in :attr:`identity_problem` (health reports it) and the one
        held stays in use: it may still work, and nothing is gained by failing now.
        """
        held = self._current.identity
        try:
            fresh = self._store.changed(held)
        except AgentError as exc:
            if self.identity_problem is None or self.identity_problem.message != exc.message:
                log.warning("identity_unusable", error=exc.message)
            self.identity_problem = exc
            return held
        self.identity_problem = None
        if fresh is not None:
            self._follow_provisioned_verifier()
            await self.replace_identity(fresh)
            if self.on_identity_change is not None:
                self.on_identity_change(held, fresh)
        return self._current.identity

    def _follow_provisioned_verifier(self) -> None:
        """A device whose verifier URL is the provisioned one follows it into a new identity (`provision --force
        --verifier` against a verifier that moved); a URL from the config file or the command line stays."""
        if not self.config.verifier_url_origin.startswith(PROVISIONED_ORIGIN):
            return
        try:
            kept = provisioned_verifier(self.config, self._store)
        except AgentError as exc:  # a file edited by hand (or no file at all: a FIFO): keep the URL that works
            log.warning("provisioned_verifier_url_refused", error=exc.message)
            return
        if kept is None or not kept.elsewhere:
            return
        self.config = kept.config
        log.info("verifier_url_followed", verifier=kept.url)

    async def replace_identity(self, identity: DeviceIdentity) -> None:
        """Switch to a renewed certificate; running requests finish on the old client."""
        old = self._current
        self._current = _Generation(self._build_http(identity), identity)
        old.retired = True
        if old.in_flight == 0:
            await old.http.aclose()
        log.info("client_identity_replaced", device_id=identity.device_id, serial=identity.serial_hex)

    def _release(self, gen: _Generation) -> None:
        gen.in_flight -= 1
        if gen.retired and gen.in_flight == 0:
            task = asyncio.get_running_loop().create_task(gen.http.aclose())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    def _backoff(self, attempt: int) -> float:
        net = self.config.network
        return random.uniform(0, min(net.backoff_max_s, net.backoff_base_s * 2**attempt))

    def _retry_delay(self, attempt: int, response: httpx.Response) -> float:
        """The wait before retrying a 502/503/504: the verifier's ``Retry-After`` if it sent one.

        A busy verifier (a full matching pool) says when it expects room; retrying
        sooner only adds to the load that refused us. Capped at ``backoff_max_s``
        so that a wrong header cannot park a session, and the call's deadline
        still bounds the whole call.
        """
        backoff = self._backoff(attempt)
        asked = retry_after_s(response.headers.get("retry-after"))
        if asked is None:  # absent, or nothing a Retry-After may be (logged as retry_after_ignored)
            return backoff
        return min(self.config.network.backoff_max_s, max(backoff, asked))

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
    ) -> httpx.Response:
        """Send one request, retrying connection loss; every POST is idempotent by key.

        The whole call, retries included, ends at ``[network] call_deadline_s``
        (:class:`DeadlineError`); an answer over ``answer_max_bytes`` is
        :class:`AnswerError`. The answer's body is read in full (within the cap).
        """
        deadline = self.config.network.call_deadline_s
        try:
            async with asyncio.timeout(deadline):
                return await self._request(method, path, json, content, headers, idempotency_key)
        except TimeoutError:
            late = DeadlineError(
                f"the verifier did not answer {method} {path} within {deadline:g} s",
                fix="the verifier or the network is too slow: check the verifier's load and the link; "
                "raise [network] call_deadline_s only if the link is known to be slow",
            )
            self.reachability = (False, late)  # the local API calls this verifier_unreachable: /health agrees
            raise late from None

    async def _request(
        self,
        method: str,
        path: str,
        json: Any,
        content: bytes | None,
        headers: Mapping[str, str] | None,
        idempotency_key: str | None,
    ) -> httpx.Response:
        all_headers = dict(headers or {})
        if method.upper() == "POST":
            all_headers[IDEMPOTENCY_KEY] = idempotency_key or str(uuid.uuid4())
        retries = self.config.network.retries
        attempt = 0
        await self.follow_identity()
        while True:
            gen = self._current
            gen.in_flight += 1
            try:
                response = await self._send(gen.http, method, path, json, content, all_headers)
            except RETRYABLE as exc:
                url = self.config.verifier.url
                # The device refused (expired, revoked, unknown CA) or no shared cipher: no retry helps.
                policy = refusal_of_device_certificate(exc, gen.identity, url) or tls_policy_error(exc, url)
                if policy is not None:
                    raise self._tls_refused(policy) from None
                if attempt >= retries:
                    if not isinstance(exc, httpx.ConnectError | httpx.TimeoutException):
                        # Connected, then closed under us each time: is it this device's certificate?
                        refused = await asyncio.to_thread(
                            probe_device_certificate,
                            gen.identity,
                            self.config.verifier.host,
                            self.config.verifier.port,
                            url,
                            self.config.network.connect_timeout_s,
                        )
                        if refused is not None:
                            raise self._tls_refused(refused) from None
                    unreachable = TransportError(
                        f"the verifier at {self.config.verifier.url} could not be reached after "
                        f"{attempt + 1} attempts: {type(exc).__name__}: {exc}",
                        fix="check the network and that the verifier runs (`capture-agent doctor`); queued audit "
                        "events are kept and delivered once it answers, but a verification or enrollment that "
                        "failed here is not retried: start it again",
                    )
                    self.reachability = (False, unreachable)
                    raise unreachable from None
                log.info("request_retry", path=path, attempt=attempt + 1, error=type(exc).__name__)
                await asyncio.sleep(self._backoff(attempt))
                attempt += 1
                continue
            except httpx.HTTPError as exc:  # not a lost connection: the answer itself broke the protocol
                raise answer_error(path, f"{type(exc).__name__}: {exc}") from None
            finally:
                self._release(gen)
            self._note_tls(response)
            self.reachability = (True, None)  # it answered (whatever it said)
            if self.on_answer is not None:
                self.on_answer()
            if response.status_code in RETRYABLE_STATUS and attempt < retries:
                delay = self._retry_delay(attempt, response)
                log.info("request_retry", path=path, attempt=attempt + 1, status=response.status_code,
                         delay_s=round(delay, 2))
                await asyncio.sleep(delay)
                attempt += 1
                continue
            return response

    def _tls_refused(self, error: TLSPolicyError) -> TLSPolicyError:
        """Audit a handshake the verifier or this device refused (invariant 5), and tell the daemon; give it back."""
        log.warning("tls_handshake_failed", audit=True, url=self.config.verifier.url, reason=error.message)
        self.reachability = (False, error)  # not usable until someone fixes it: /health says so, with the fix
        if self.on_tls_failure is not None:
            self.on_tls_failure(error.message)
        return error

    async def _send(
        self,
        http: httpx.AsyncClient,
        method: str,
        path: str,
        json: Any,
        content: bytes | None,
        headers: dict[str, str],
    ) -> httpx.Response:
        """One attempt: the answer streamed in and cut at ``answer_max_bytes`` (never buffered whole)."""
        request = http.build_request(method, path, json=json, content=content, headers=headers)
        return await read_answer(http, request, self.config.network.answer_max_bytes, "[network] answer_max_bytes")

    def _note_tls(self, response: httpx.Response) -> None:
        stream = response.extensions.get("network_stream")
        ssl_object = stream.get_extra_info("ssl_object") if stream is not None else None
        if ssl_object is not None:
            self.last_tls = {**describe(ssl_object), "http_version": response.http_version}

    async def call(self, method: str, path: str, *, timing: dict[str, float] | None = None, **kwargs: Any) -> Any:
        """A request whose answer must be JSON; problems become :class:`VerifierError`.

        ``timing``, when given, receives the answer's ``Server-Timing`` (how long the verifier worked).
        """
        response = await self.request(method, path, **kwargs)
        if timing is not None:
            timing.update(server_timing(response))
        status = response.status_code
        if status >= 400:
            raise problem_error(response)
        if not 200 <= status < 300:
            raise answer_error(path, f"HTTP {status} is no answer of the protocol (a proxy or captive portal?)", status)
        media_type = response.headers.get("content-type", "").partition(";")[0].strip().lower()
        if media_type != JSON_TYPE:
            raise answer_error(path, f"the answer is {media_type[:60] or 'untyped'}, not {JSON_TYPE}", status)
        try:
            return loads(response.content)
        except WireError as exc:
            raise answer_error(path, str(exc), response.status_code) from None

    async def aclose(self) -> None:
        await self._current.http.aclose()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    async def __aenter__(self) -> VerifierClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
