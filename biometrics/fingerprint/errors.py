"""Typed errors of the fingerprint package.

Callers (the agent's capture loop, the verifier) tell a bad capture from a bug by
type, so every rejection of an input is one of these, with a message that names
the fix.
"""

from __future__ import annotations


class FingerprintError(ValueError):
    """Base class: an input the fingerprint algorithms cannot work with."""


class FingerprintImageError(FingerprintError):
    """The image is unusable (wrong type, shape, size, or no finger on it)."""


class TemplateError(FingerprintError):
    """A template or minutiae set given to the matcher is malformed."""
