"""The protocol's operations, typed, on top of :class:`~agent.client.VerifierClient`.

"Get a nonce, sign, post" is written here once, for the capture sessions, the
demo, the benchmarks and the tests:

* :meth:`VerifierAPI.challenge` asks for a nonce *for* an operation on a subject,
  so the verifier refuses what it would refuse anyway (unknown subject, an
  operation or a group this device may not use, a locked-out subject) before a
  person touches the sensor;
* :meth:`VerifierAPI.verify` answers a :class:`~protocol.messages.Decision` or a
  :class:`~protocol.messages.StepUp` (RFC 9470: another finger is needed);
* :meth:`VerifierAPI.identify` and :meth:`VerifierAPI.enroll`.

A nonce that expired while the person was placing a finger is retried once
with a fresh challenge, because its problem type is ``nonce-expired``
(:class:`~agent.errors.NonceExpiredError`); a used or unknown nonce is never
retried. Answers are parsed into the protocol's dataclasses; a malformed one
is an :class:`~agent.errors.AnswerError`.
"""

from __future__ import annotations

import re
from typing import Any, Protocol

import structlog
from cryptography.hazmat.primitives.asymmetric import ec

from agent.client import VerifierClient, answer_error
from agent.errors import BadRequestError, NonceExpiredError, StepUpRequiredError
from protocol.messages import (
    Challenge,
    ChallengeRequest,
    Decision,
    Enrollment,
    EnrollmentRequest,
    Identification,
    IdentificationRequest,
    StepUp,
    VerificationRequest,
)
from protocol.signing import sign_request
from protocol.wire import WireError

log = structlog.get_logger()


class SignedRequest(Protocol):
    @property
    def path(self) -> str: ...
    def challenge(self) -> ChallengeRequest: ...
    def body(self) -> dict[str, Any]: ...


class VerifierAPI:
    """Typed biometric calls over one :class:`VerifierClient` (which keeps retries, TLS and limits)."""

    def __init__(self, client: VerifierClient) -> None:
        self.client = client
        self._key: tuple[object, ec.EllipticCurvePrivateKey] | None = None

    def _private_key(self) -> ec.EllipticCurvePrivateKey:
        """The device key, decrypted once per identity (a renewal brings a new one)."""
        identity = self.client.identity
        if self._key is None or self._key[0] is not identity:
            self._key = (identity, identity.private_key())
        return self._key[1]

    async def challenge(
        self, operation: str, subject: str | None = None, group: str | None = None, *, first: bool = False,
        modality: str | None = None,
    ) -> Challenge:
        """A single-use nonce for ``operation`` on ``subject``, after the checks that need no finger.

        ``first``: an enrollment with no session token to come, so an id already enrolled is refused now.
        ``modality``: "face" for a verification by face, so a subject with no face is refused now.
        A verifier from before those fields refuses them (400 ``bad-challenge``, "unknown fields [...]"): asked
        again without them, as before (the request itself is still refused after the capture), so an
        agent upgraded before its verifier still works; the client remembers, so this verifier is not asked
        with them again for a while (:class:`~agent.client.RefusedChallengeFields`: then once more, in case it
        was upgraded). Any other refusal (a newer verifier's own check of the fields) is not retried.
        """
        refused = self.client.refused_challenge_fields.of(self.client.config.verifier.url)
        asked = ChallengeRequest(operation, subject, group, first and "first" not in refused,
                                 None if "modality" in refused else modality)
        try:
            return await self._challenge(asked)
        except BadRequestError as exc:
            sent = {name for name, used in (("first", asked.first), ("modality", asked.modality)) if used}
            unknown = unknown_challenge_fields(exc)
            if not unknown or not unknown <= sent:
                raise
            url = self.client.config.verifier.url
            self.client.refused_challenge_fields.add(url, unknown)
            log.info("challenge_fields_not_understood", fields=sorted(unknown), verifier=url,
                     fix="update the verifier: it refuses before the capture what it would refuse after")
            return await self._challenge(ChallengeRequest(
                operation, subject, group, asked.first and "first" not in unknown,
                None if "modality" in unknown else asked.modality,
            ))

    async def _challenge(self, asked: ChallengeRequest) -> Challenge:
        data = await self.client.call("POST", asked.path, json=asked.body())
        return parsed_answer(asked.path, Challenge.from_json, data)

    async def signed(
        self, request: SignedRequest, challenge: Challenge | None, timing: dict[str, float] | None
    ) -> Any:
        """POST ``request`` signed over a nonce; a nonce that expired is replaced once, by its type.

        Public for request kinds without a method of their own here (the
        match-on-sensor assertions of ``agent.sensor_sessions``): one place signs.
        """
        path = request.path
        for attempt in range(2):
            if challenge is None:
                challenge = await self._challenge(request.challenge())
            # Sign with the identity the request will go out with: follow a renewal made meanwhile first.
            await self.client.follow_identity()
            body = sign_request(self._private_key(), "POST", path, {"nonce": challenge.nonce, **request.body()})
            try:
                return await self.client.call("POST", path, json=body, timing=timing)
            except NonceExpiredError:
                if attempt or getattr(request, "faces", None):  # a face's liveness challenge was the nonce's
                    raise
                log.info("nonce_expired_retry", path=path)  # a slow capture outlived the nonce
                challenge = None
        raise AssertionError("unreachable")  # pragma: no cover

    async def verify(
        self,
        subject: str,
        records: list[bytes],
        *,
        step_up: str | None = None,
        challenge: Challenge | None = None,
        timing: dict[str, float] | None = None,
        faces: list[bytes] | None = None,
        liveness: tuple[str, ...] | None = None,
    ) -> Decision | StepUp:
        """1:1 against ``subject``: a decision, or the step-up the verifier asks for first.

        ``faces`` (face template records) go with the ``liveness`` steps run for
        ``challenge``'s nonce, which a face request must therefore name.
        """
        request = VerificationRequest(subject, records, step_up, list(faces or []), liveness)
        try:
            data = await self.signed(request, challenge, timing)
        except StepUpRequiredError as exc:
            return parsed_answer(request.path, StepUp.from_problem, exc.problem)
        return parsed_answer(request.path, Decision.from_json, data)

    async def identify(
        self,
        records: list[bytes],
        *,
        challenge: Challenge | None = None,
        timing: dict[str, float] | None = None,
        faces: list[bytes] | None = None,
        liveness: tuple[str, ...] | None = None,
    ) -> Identification:
        request = IdentificationRequest(records, list(faces or []), liveness)
        return parsed_answer(request.path, Identification.from_json, await self.signed(request, challenge, timing))

    async def enroll(
        self,
        subject: str,
        records: list[bytes],
        *,
        group: str | None = None,
        session_token: str | None = None,
        challenge: Challenge | None = None,
        timing: dict[str, float] | None = None,
        faces: list[bytes] | None = None,
        liveness: tuple[str, ...] | None = None,
    ) -> Enrollment:
        request = EnrollmentRequest(subject, records, group, session_token, list(faces or []), liveness)
        return parsed_answer(request.path, Enrollment.from_json, await self.signed(request, challenge, timing))


# What a verifier says of fields its ChallengeRequest.from_body does not know (protocol/messages.py's WireError,
# the problem's detail as verifier/biometric.py sends it): the same words since challenges had a body.
UNKNOWN_FIELDS = re.compile(r"unknown fields \[((?:'[a-z_]+'(?:, )?)+)\] in a challenge request")


def unknown_challenge_fields(exc: BadRequestError) -> frozenset[str]:
    """The fields a ``bad-challenge`` refusal calls unknown (an older verifier's), else none."""
    if exc.slug != "bad-challenge":
        return frozenset()
    said = UNKNOWN_FIELDS.fullmatch(str(exc.problem.get("detail", "")))
    return frozenset(re.findall(r"'([a-z_]+)'", said.group(1))) if said is not None else frozenset()


def parsed_answer(path: str, parse: Any, data: Any) -> Any:
    """``parse`` applied to a verifier answer; anything malformed is the agent's typed AnswerError."""
    if not isinstance(data, dict):
        raise answer_error(path, "the answer is not a JSON object")
    try:
        return parse(data)
    except WireError as exc:
        raise answer_error(path, str(exc)) from None
