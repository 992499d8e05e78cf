"""Typed errors of the agent. Every one carries the fix a person should apply.

Invariant 6 of DESIGN.md: bad input gives a typed error whose message names the
fix. The CLI prints ``error:`` and ``fix:`` lines from these two fields.
"""

from __future__ import annotations


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


class TransportError(AgentError):
    """The verifier could not be reached, or the connection broke and retries ran out."""
