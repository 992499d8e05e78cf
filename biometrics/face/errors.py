"""Typed errors of the face package.

Callers (the agent's camera sessions, the verifier, the benchmark) tell a bad
frame from a broken installation from a bug by type; every message names the fix.
"""

from __future__ import annotations


class FaceError(ValueError):
    """Base class: an input the face algorithms cannot work with."""


class FaceImageError(FaceError):
    """A frame is unusable as given (wrong type, dtype, shape or size)."""


class FaceModelError(FaceError):
    """A model file is missing, or its bytes are not the pinned ones.

    Never recovered from by downloading: models ship inside an installed wheel,
    so the fix is always to (re)install it.
    """


class LivenessError(FaceError):
    """A liveness challenge or track given to the liveness logic is malformed."""


class EmbeddingError(FaceError):
    """An embedding given to the matcher is malformed (dimension, non-finite, not unit norm)."""
