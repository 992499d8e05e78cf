"""MCC matching of one probe against many templates at once (LSS-R consolidation).

Local similarities of all cylinder pairs come from a few matrix products (the
probe's cylinders against every gallery cylinder). Consolidation is the paper's
"Local Similarity Sort with Relaxation": the best n_R pairs are taken, each pair's
score is relaxed by how geometrically compatible it is with the others (distances,
relative directions and radial angles must agree across the two prints), and the
score is the mean relaxed similarity of the n_P most efficient pairs. Every step
is an array operation over (templates, pairs, pairs): no Python loop over
templates or minutia pairs.

Parameters are the paper's: minimum common valid cells 60 %, direction difference
up to pi/2, n_P from 4 to 12 (sigmoid mu 20, tau 0.4), w_R = 0.5, 5 relaxation
iterations, compatibility sigmoids (5, -1.6), (pi/12, -30), (pi/12, -30).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from biometrics.fingerprint.cylinders import N_SPATIAL, ND, Cylinders, angle_diff

MIN_COMMON = 0.6
MAX_ANGLE = np.pi / 2
MIN_NP, MAX_NP, MU_NP, TAU_NP = 4, 12, 20.0, 0.4
W_R, N_REL = 0.5, 5
MU_1, TAU_1 = 5.0, -1.6
MU_2, TAU_2 = np.pi / 12, -30.0
MU_3, TAU_3 = np.pi / 12, -30.0


def _sigmoid(v: np.ndarray | float, mu: float, tau: float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-tau * (np.asarray(v, np.float64) - mu)))


@dataclass(frozen=True, slots=True)
class Packed:
    """Cylinders of T templates padded to K cylinders each, ready for matrix products."""

    values: np.ndarray  # float32 (T*K, F)
    valid: np.ndarray  # float32 (T*K, S)
    energy: np.ndarray  # float32 (T*K, S): sum over directions of squared values
    x: np.ndarray  # float32 (T, K)
    y: np.ndarray
    angle: np.ndarray
    count: np.ndarray  # int32 (T,) real cylinders per template

    @property
    def templates(self) -> int:
        return len(self.count)

    @property
    def width(self) -> int:
        return self.x.shape[1] if self.x.ndim == 2 else 0


def _energy(c: Cylinders) -> np.ndarray:
    v = c.values.reshape(len(c), N_SPATIAL, ND)
    return np.einsum("nsd,nsd->ns", v, v).astype(np.float32)


def pack(cylinders: list[Cylinders]) -> Packed:
    """Pad and stack cylinder sets (one per template)."""
    t = len(cylinders)
    k = max([len(c) for c in cylinders] + [1])
    f = N_SPATIAL * ND
    values = np.zeros((t, k, f), np.float32)
    valid = np.zeros((t, k, N_SPATIAL), np.float32)
    energy = np.zeros((t, k, N_SPATIAL), np.float32)
    x = np.zeros((t, k), np.float32)
    y = np.zeros((t, k), np.float32)
    angle = np.zeros((t, k), np.float32)
    count = np.zeros(t, np.int32)
    for i, c in enumerate(cylinders):  # one row per template, not per pixel or pair
        n = len(c)
        count[i] = n
        if n:
            values[i, :n] = c.values
            valid[i, :n] = c.valid
            energy[i, :n] = _energy(c)
            x[i, :n], y[i, :n], angle[i, :n] = c.x, c.y, c.angle
    return Packed(values.reshape(t * k, f), valid.reshape(t * k, N_SPATIAL), energy.reshape(t * k, N_SPATIAL),
                  x, y, angle, count)


def local_similarity(probe: Cylinders, gallery: Packed) -> np.ndarray:
    """Cylinder similarities, shape (T, n_probe, K); 0 where not comparable."""
    t, k = gallery.templates, gallery.width
    n = len(probe)
    if n == 0 or t == 0:
        return np.zeros((t, n, k), np.float32)
    e_p = _energy(probe)
    cross = probe.values @ gallery.values.T  # (n, T*K)
    norm_a = e_p @ gallery.valid.T  # |a| squared on the common cells
    norm_b = probe.valid @ gallery.energy.T
    common = probe.valid @ gallery.valid.T
    dist = np.sqrt(np.maximum(norm_a + norm_b - 2.0 * cross, 0.0))
    denom = np.sqrt(norm_a) + np.sqrt(norm_b)
    sim = np.where(denom > 0, 1.0 - dist / np.maximum(denom, 1e-12), 0.0)
    dtheta = np.abs(angle_diff(probe.angle[:, None], gallery.angle.reshape(1, t * k)))
    ok = (common >= MIN_COMMON * N_SPATIAL) & (dtheta <= MAX_ANGLE) & (norm_a > 0) & (norm_b > 0)
    sim = np.where(ok, sim, 0.0).astype(np.float32)
    return sim.reshape(n, t, k).transpose(1, 0, 2)


def _pair_geometry(x: np.ndarray, y: np.ndarray, a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distances, relative directions and radial angles between selected minutiae (T, R, R)."""
    dx = x[:, :, None] - x[:, None, :]
    dy = y[:, :, None] - y[:, None, :]
    dist = np.hypot(dx, dy)
    rel = angle_diff(a[:, :, None], a[:, None, :])
    radial = angle_diff(a[:, :, None], np.arctan2(-dy, dx))
    return dist, rel, radial


def consolidate(sim: np.ndarray, probe: Cylinders, gallery: Packed) -> np.ndarray:
    """LSS-R global score per template, shape (T,)."""
    t, n, k = sim.shape
    scores = np.zeros(t, np.float64)
    if t == 0 or n == 0 or k == 0:
        return scores
    n_b = gallery.count.astype(np.int64)
    n_r = np.minimum(n, n_b)  # per template
    r = int(min(n, k))
    flat = sim.reshape(t, n * k)
    top = np.argpartition(-flat, r - 1, axis=1)[:, :r] if r < n * k else np.tile(np.arange(n * k), (t, 1))
    vals = np.take_along_axis(flat, top, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")
    top = np.take_along_axis(top, order, axis=1)
    vals = np.take_along_axis(vals, order, axis=1).astype(np.float64)
    rank = np.arange(r)[None, :]
    live = (rank < n_r[:, None]) & (vals > 0)
    lam0 = np.where(live, vals, 0.0)
    i, j = top // k, top % k
    xa, ya, ta = probe.x[i], probe.y[i], probe.angle[i]
    xb = np.take_along_axis(gallery.x, j, axis=1)
    yb = np.take_along_axis(gallery.y, j, axis=1)
    tb = np.take_along_axis(gallery.angle, j, axis=1)
    da, ra, qa = _pair_geometry(xa, ya, ta)
    db, rb, qb = _pair_geometry(xb, yb, tb)
    rho = (
        _sigmoid(np.abs(da - db), MU_1, TAU_1)
        * _sigmoid(np.abs(angle_diff(ra, rb)), MU_2, TAU_2)
        * _sigmoid(np.abs(angle_diff(qa, qb)), MU_3, TAU_3)
    )
    both = live[:, :, None] & live[:, None, :]
    rho = np.where(both, rho, 0.0)
    rho[:, np.arange(r), np.arange(r)] = 0.0
    live_count = live.sum(axis=1)
    norm = np.maximum(live_count - 1, 1)[:, None]
    lam = lam0
    for _ in range(N_REL):  # fixed small number of iterations, each over all templates
        lam = W_R * lam + (1.0 - W_R) * np.einsum("tkl,tl->tk", rho, lam) / norm
    eff = np.where(live, lam / np.maximum(lam0, 1e-12), -1.0)
    n_p = MIN_NP + np.rint(_sigmoid(np.minimum(n, n_b), MU_NP, TAU_NP) * (MAX_NP - MIN_NP)).astype(np.int64)
    n_p = np.minimum(n_p, live_count)
    best = np.argsort(-eff, axis=1, kind="stable")
    lam_sorted = np.take_along_axis(lam, best, axis=1)
    chosen = rank < n_p[:, None]
    total = np.where(chosen, lam_sorted, 0.0).sum(axis=1)
    # Divide by the nominal n_P even when fewer pairs exist: few pairs is weak evidence.
    nominal = MIN_NP + np.rint(_sigmoid(np.minimum(n, n_b), MU_NP, TAU_NP) * (MAX_NP - MIN_NP))
    scores = np.where(n_p > 0, total / np.maximum(nominal, 1), 0.0)
    return scores


def scores(probe: Cylinders, gallery: Packed) -> np.ndarray:
    """Raw MCC scores (0..1) of the probe against every template of the gallery."""
    return consolidate(local_similarity(probe, gallery), probe, gallery)
