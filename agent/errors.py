"""Typed errors of the agent. Every one carries the fix a person should apply.

Invariant 6 of DESIGN.md: bad input gives a typed error whose message names the
fix. The CLI prints ``error:`` and ``fix:`` lines from these two fields.

Refusals by the verifier come as problem types of :mod:`protocol.problems`; each
registered type names its class here (all under :class:`VerifierError`), and
the agent decides on the class, never on the verifier's English text.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from protocol.messages import EnrollmentGrant


class AgentError(Exception):
    """Base of every error the agent reports to a person."""

    def __init__(self, message: str, fix: str = "") -> None:
        super().__init__(message)
        self.fix = fix

    @property
    def message(self) -> str:
        """What went wrong, without the fix (for messages that print the fix apart)."""
        return str(self.args[0]) if self.args else ""

    def __str__(self) -> str:
        return f"{self.message} (fix: {self.fix})" if self.fix else self.message


class ConfigError(AgentError):
    """The configuration file is missing, unreadable, or has a bad key or value."""


class IdentityError(AgentError):
    """The device key or certificate is missing, unreadable or invalid."""


def provision_fix(options: str = "") -> str:
    """The fix for a device with no identity: the provisioning line, with ``options`` (``--config FILE``...)."""
    return (
        f"provision the device: `printf '%s\\n' TOKEN | capture-agent provision{options} --verifier URL --token - "
        "--ca-fingerprint SHA256` (the token on stdin, out of every command line)"
    )


class NoIdentityError(IdentityError):
    """The state directory holds no device identity (not there, or never provisioned).

    Its own type so that the CLI can give the provisioning line the ``--config`` and ``--state-dir`` the
    failing command was typed with: the bare line provisioned into the default state directory, under the
    default keyring, never the one the command had looked at.
    """

    def typed_with(self, options: str) -> NoIdentityError:
        """The same error, its provisioning line carrying ``options`` (already quoted, each with a space first)."""
        return NoIdentityError(self.message, provision_fix(options))


class StateDirNotTightened(IdentityError):
    """The state directory is open to others and cannot be closed (0700) now: its file system is read-only.

    Its own type so that the daemon goes on (degraded, its outbox retried) and says it, where a read-only disk
    is no reason to stop; anything that must write there refuses anyway.
    """


class KeyringError(AgentError):
    """The key-encryption key cannot be read from or written to the keyring."""


class ProvisioningError(AgentError):
    """Enrollment with the verifier (EST) failed."""


class TLSPolicyError(AgentError):
    """The server's TLS endpoint broke the policy: wrong CA, name, pin, protocol."""


class VerifierError(AgentError):
    """The verifier answered with an error, or with something that is not the protocol."""

    def __init__(self, message: str, fix: str = "", status: int = 0, problem: dict | None = None):
        super().__init__(message, fix)
        self.status = status
        self.problem = problem or {}
        self.retry_after_s = 0.0  # the verifier's Retry-After, when it sent one

    @property
    def slug(self) -> str:
        """The problem type's slug (protocol.problems), "" when the answer was not a problem of ours."""
        from protocol.problems import slug_of

        return slug_of(self.problem)


# -- the verifier's answer is not the protocol
class AnswerError(VerifierError):
    """The answer is not protocol v1: not JSON, too large, nested too deep, a field missing."""


class DeadlineError(VerifierError):
    """A call to the verifier did not finish within its deadline (``[network] call_deadline_s``)."""


# -- refusals, one class per kind of problem type (protocol.problems names them)
class BadRequestError(VerifierError):
    """The verifier found the request malformed: a bug in the agent, or a proxy rewriting it."""


class BadTemplateError(BadRequestError):
    """A template was refused (malformed, or too few or too many minutiae): capture again."""


class BadSignatureError(VerifierError):
    """The device signature did not match the request."""


class BootstrapTokenError(VerifierError):
    """The one-time provisioning token is missing or refused."""


class DeviceNotAuthorisedError(VerifierError):
    """The device certificate is missing, revoked or unknown to the verifier."""


class NonceError(VerifierError):
    """The challenge nonce was refused."""


class NonceExpiredError(NonceError):
    """The nonce outlived its lifetime (a slow capture): a fresh challenge fixes it."""


class NonceUsedError(NonceError):
    """The nonce was spent already: never retried (a replay, or a bug)."""


class NonceUnknownError(NonceError):
    """The verifier does not know the nonce (another verifier's, another device's)."""


class NotAllowedError(VerifierError):
    """The device may not do this: the operator's access rules say so."""


class OperationNotAllowedError(NotAllowedError):
    """The device may not call this operation (enroll, verify, identify)."""


class GroupNotAllowedError(NotAllowedError):
    """The subject's group is not one this device may act on."""


class RateLimitedError(VerifierError):
    """Too many requests (of this device, or claims of this subject): wait."""


class SubjectLockedError(RateLimitedError):
    """Too many failed verifications of this subject on this device: locked for a while."""


class SubjectError(VerifierError):
    """The subject cannot be used as asked."""


class UnknownSubjectError(SubjectError):
    """Nobody is enrolled under this subject id."""


class SubjectInOtherGroupError(SubjectError):
    """The enrollment names a group other than the subject's."""


class VerificationRequiredError(SubjectError):
    """The subject is enrolled: adding templates needs their live session token."""


class SessionTokenRefusedError(SubjectError):
    """The session token is not a live token of this subject from this device."""


class FactorNotEnrolledError(SubjectError):
    """The subject's factor rule needs a factor they never enrolled; the one sent matched.

    Not a decision: the problem carries an enrollment token for the missing factor
    only (:meth:`grant`), which an ``enroll --add`` of that factor sends as its
    session token; nothing else accepts it.
    """

    def session_fix(self, subject: str) -> str:
        """The fix a kiosk app or a terminal can follow: a new enrollment that verifies the person first.

        Why: the verifier's fix is its client's, the agent's ("enroll a face with this enrollment_token"), and
        reached the person at the kiosk as it was, naming a token neither the local API nor the CLI takes.
        """
        factor = str(self.problem.get("factor", "")) or "missing factor"
        face = factor == "face"
        flag, modality = ("--face ", '"modality": "face", ') if face else ("", "")
        return (f"add the {factor} for {subject}: `capture-agent enroll {flag}--subject {subject} --add` (the "
                f'person verifies again, then enrolls it); a kiosk app starts an enroll session with {modality}'
                '"verify_first": true')

    def grant(self) -> EnrollmentGrant:
        """The enrollment token the answer carries; :class:`AnswerError` when it is malformed."""
        from protocol.messages import EnrollmentGrant
        from protocol.wire import WireError

        try:
            return EnrollmentGrant.from_problem(self.problem)
        except WireError as exc:
            raise AnswerError(f"the verifier's factor-not-enrolled answer is not the protocol's: {exc}",
                              fix="use a verifier of the same protocol version") from None


class StepUpRequiredError(VerifierError):
    """RFC 9470: another factor is needed (an answer the typed client turns into a StepUp)."""


class StepUpUnknownError(VerifierError):
    """The step-up id is not pending: start the verification again."""


class IdentificationUnreachableError(VerifierError):
    """A 1:N identification past the verifier's capacity (422 ``identification-unreachable``): its threshold,
    set for this search (its views times the templates this device may see), is above any score, so nobody could
    be named, the person at the kiosk included even if enrolled.

    Its own class, not "nobody recognised": that answer would send an enrolled person away and tell the installer,
    who alone can fix it, nothing. The fix names the setting and the groups to change; no retry helps (never
    retried: the same search fails the same way). The problem names the request's views but not the gallery's
    size (a device is not told how many templates its groups hold); the verifier's log has the counts.
    """


class VerifierInternalError(VerifierError):
    """The verifier failed on the request (HTTP 500)."""


class VerifierBusyError(VerifierError):
    """The verifier's matching is saturated or over its time budget (503): retried after its Retry-After."""


def problem_error_class(slug: str) -> type[VerifierError]:
    """The class of a registered problem type; :class:`VerifierError` for a slug the registry lacks."""
    from protocol.problems import REGISTRY

    entry = REGISTRY.get(slug)
    found = globals().get(entry.error) if entry is not None else None
    return found if isinstance(found, type) and issubclass(found, VerifierError) else VerifierError


class AuditStorageError(AgentError):
    """The audit outbox cannot be written (a full disk, a file system gone read-only, a lock held elsewhere).

    Invariant 5 (every authentication attempt is audited): while this holds, the daemon takes no finger or
    face (the local API answers 503 with this fix) and says each event it could not store in its log.

    ``cause`` is what the outbox found ("full", "read-only", "held", "damaged", or "" for another fault): a
    damaged file at start stops the daemon (its fix is to move the file aside, which no retry does), any other
    cause starts it degraded, retrying.
    """

    def __init__(self, message: str, fix: str = "", *, cause: str = "") -> None:
        super().__init__(message, fix)
        self.cause = cause


class TransportError(AgentError):
    """The verifier could not be reached, or the connection broke and retries ran out."""


class LocalAPIError(AgentError):
    """A kiosk app's request to the local API is refused: ``status`` is the HTTP status it is answered with.

    Answered as JSON ``{"error": message, "fix": fix}`` (``fix`` when there is one): the kiosk app's
    developer reads the fix, the person at the kiosk never does.
    """

    def __init__(self, status: int, message: str, fix: str = "") -> None:
        super().__init__(message, fix)
        self.status = status


class CertificateDefect(IdentityError):
    """A certificate (from the verifier, or on disk) cannot be read in full: a field the agent uses raises.

    Raised by :func:`agent.identity.read_in_full` when it loads, never later: an extension twice, a key on a
    curve the cryptography library lacks, a malformed field. Where it arrives in an EST answer it is reported as
    that answer's error (:class:`ProvisioningError`), naming the verifier's PKI as the place to fix.
    """
