"""Comparison of embeddings: cosine similarity, one vectorised product for 1:1 and 1:N alike.

Embeddings are unit vectors, so the cosine is a dot product; scores lie in
[-1, 1] and a higher score means more alike. Inputs are checked, since the
gallery side comes from storage and the probe from the network.
"""

from __future__ import annotations

import numpy as np

from biometrics.face.embed import DIM
from biometrics.face.errors import EmbeddingError

NORM_TOLERANCE = 1e-3  # float32 rounding of a normalised 128-d vector stays far inside this


def check_embedding(vector: object) -> np.ndarray:
    """``vector`` as a (128,) float32 unit vector, or :class:`EmbeddingError` saying what is wrong."""
    v = np.asarray(vector)
    if v.dtype.kind != "f" or v.shape != (DIM,):
        raise EmbeddingError(f"a face embedding is {DIM} floats, got dtype {v.dtype} and shape {v.shape}")
    v = v.astype(np.float32)
    if not np.isfinite(v).all():
        raise EmbeddingError("a face embedding must hold finite numbers; re-enroll the face")
    norm = float(np.linalg.norm(v.astype(np.float64)))
    if abs(norm - 1.0) > NORM_TOLERANCE:
        raise EmbeddingError(f"a face embedding must have unit norm, got {norm:.6f}; re-enroll the face")
    return v


def cosine_scores(probe: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """Scores of ``probe`` (128,) against every row of ``gallery`` (N, 128), as float32 (N,)."""
    p = check_embedding(probe)
    g = np.asarray(gallery, np.float32)
    if g.ndim != 2 or g.shape[1] != DIM:
        raise EmbeddingError(f"a gallery is an (N, {DIM}) array of embeddings, got shape {g.shape}")
    if not np.isfinite(g).all():
        raise EmbeddingError("the gallery holds non-finite numbers; re-enroll the affected faces")
    return g @ p


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """The score of two embeddings."""
    return float(cosine_scores(a, check_embedding(b)[None, :])[0])
