"""Global consolidation of an MCC comparison: one alignment, then every minutia paired under it.

LSS-R (:mod:`biometrics.fingerprint.mcc_match`) scores a comparison from at most
12 locally similar, mutually compatible minutia pairs. It never checks that the
rest of the two prints agree: an impostor whose few look-alike minutiae happen to
be mutually compatible scores as well as a genuine print of the same few pairs,
although the genuine print also pairs most of its other minutiae in the common
region and the impostor pairs few of them. This module measures exactly that,
vectorised over the templates of a gallery block (shapes (T, ...)):

1. Alignment. Each of the ``N_ANCHOR`` best relaxed pairs proposes a rigid
   transform (the rotation between the two minutia directions, the translation
   that puts one minutia on the other); the relaxed pairs it maps within
   ``D_AGREE`` pixels and ``A_AGREE`` radians of their partners support it,
   weighted by their relaxed similarities, and the best supported one is kept.
   (Consensus over several anchors, as in Hough or RANSAC alignment: the single
   best pair is sometimes a look-alike that the others contradict.)
2. Pairing. Every minutia of the probe (its cylinders' centres) is mapped by the
   transform; a probe minutia and a gallery minutia are paired when each is the
   other's nearest (distance plus direction cost) within ``D_PAIR`` pixels and
   ``A_PAIR`` radians: one-to-one, as in Bozorth or SourceAFIS pairing, without
   their graph search.
3. Common region. The minutiae of each print that fall inside the other's
   convex hull (of its cylinder centres) after the transform, or are paired,
   are the ones that could have been paired: the paired fraction
   ``m^2 / (n_A' * n_B')`` (with each count taken at least ``MIN_OVERLAP``)
   is near 1 for a genuine overlap and small for an impostor's, whatever the
   overlap size, and is how :func:`biometrics.fingerprint.mcc_match.scores`
   weighs its LSS-R evidence.

Coordinates are complex numbers ``x + iy`` (500-dpi pixels, y down) and
directions unit complex numbers ``exp(i * angle)`` (angle counter-clockwise as a
person sees the image). A rotation of the print by phi counter-clockwise turns
an angle into angle + phi and a position z into ``exp(-i phi) * z``: so the
transform that maps probe minutia a onto gallery minutia b multiplies positions
by ``u_a * conj(u_b)``.
"""

from __future__ import annotations

import cv2
import numpy as np

N_ANCHOR = 5  # best relaxed pairs tried as the alignment's anchor
D_AGREE, A_AGREE = 20.0, np.pi / 8  # a relaxed pair supports an anchor's transform within these
D_PAIR, A_PAIR = 15.0, 0.4  # pairing tolerances under the kept transform (pixels at 500 dpi, radians)
MIN_OVERLAP = 6  # overlap counts below this are taken as this: a fraction of 3 minutiae is no evidence

_CHORD_AGREE = float(2.0 * np.sin(A_AGREE / 2.0))  # |u - v| of unit numbers A_AGREE apart
_CHORD_PAIR = float(2.0 * np.sin(A_PAIR / 2.0))


def hull_planes(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The convex hull of the points as half-planes: (outward unit normals (E,) complex64, offsets (E,) float32).

    A point z lies inside when ``Re(conj(normal) * z) <= offset`` for every edge.
    Fewer than three distinct points have no area: one half-plane that holds
    everything is returned, so they count as overlapping everything (their
    scores are small anyway: too few minutiae for LSS-R evidence).
    """
    everything = np.ones(1, np.complex64), np.full(1, np.float32(1e9))
    if len(x) < 3:
        return everything
    pts = np.stack([x, y], axis=1).astype(np.float32)
    hull = cv2.convexHull(pts).reshape(-1, 2).astype(np.float64)
    if len(hull) < 3:
        return everything
    z = hull[:, 0] + 1j * hull[:, 1]
    edge = np.roll(z, -1) - z
    area2 = float(np.sum(hull[:, 0] * np.roll(hull[:, 1], -1) - np.roll(hull[:, 0], -1) * hull[:, 1]))
    if abs(area2) < 1e-6:  # collinear points
        return everything
    normal = (edge.imag - 1j * edge.real) * np.sign(area2)  # (e_y, -e_x): outward for either winding
    normal /= np.maximum(np.abs(normal), 1e-12)
    offset = (np.conj(normal) * z).real
    return normal.astype(np.complex64), offset.astype(np.float32)


def pad_planes(planes: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Half-plane sets of several templates as (T, E) arrays; short sets repeat their first plane (same region)."""
    e = max((len(n) for n, _ in planes), default=1)
    normals = np.ones((len(planes), e), np.complex64)
    offsets = np.full((len(planes), e), np.float32(1e9))
    for t, (n, c) in enumerate(planes):
        normals[t, : len(n)], offsets[t, : len(c)] = n, c
        normals[t, len(n) :], offsets[t, len(c) :] = n[0], c[0]
    return normals, offsets


def _inside(x: np.ndarray, y: np.ndarray, normals: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Whether points (x, y) (T, P) lie inside hulls given as half-planes (T, E): (T, P) bool."""
    nx = normals.real.astype(np.float32)[:, None, :]
    ny = normals.imag.astype(np.float32)[:, None, :]
    excess = x[:, :, None] * nx
    excess += y[:, :, None] * ny
    excess -= offsets[:, None, :]
    return excess.max(axis=2) <= 0.0


def align(
    pa: np.ndarray, ua: np.ndarray, pb: np.ndarray, ub: np.ndarray, weight: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The best supported rigid transform per template from its relaxed pairs.

    pa, ua, pb, ub: (T, r) positions and directions of the two sides of the
    relaxed pairs, best first; weight (T, r): relaxed similarity, 0 for pairs
    that are not live. Returns (rotation factor, probe anchor, gallery anchor),
    each (T,): a probe point z maps to ``rotation * (z - probe anchor) + gallery anchor``.
    """
    t, r = pa.shape
    na = min(N_ANCHOR, r)
    anchor = np.argsort(-weight, axis=1, kind="stable")[:, :na]  # (T, na)
    a_pa = np.take_along_axis(pa, anchor, axis=1)
    a_pb = np.take_along_axis(pb, anchor, axis=1)
    rot = np.take_along_axis(ua, anchor, axis=1) * np.conj(np.take_along_axis(ub, anchor, axis=1))
    mapped = rot[:, :, None] * (pa[:, None, :] - a_pa[:, :, None]) + a_pb[:, :, None]  # (T, na, r)
    turned = ua[:, None, :] * np.conj(rot)[:, :, None]
    agree = (np.abs(mapped - pb[:, None, :]) < D_AGREE) & (np.abs(turned - ub[:, None, :]) < _CHORD_AGREE)
    support = (agree * weight[:, None, :]).sum(axis=2)  # (T, na)
    best = support.argmax(axis=1)
    rows = np.arange(t)
    return rot[rows, best], a_pa[rows, best], a_pb[rows, best]


def paired_fraction(
    probe_pos: np.ndarray,
    probe_unit: np.ndarray,
    probe_hull: tuple[np.ndarray, np.ndarray],
    pos: np.ndarray,
    unit: np.ndarray,
    count: np.ndarray,
    hull_normals: np.ndarray,
    hull_offsets: np.ndarray,
    rotation: np.ndarray,
    probe_anchor: np.ndarray,
    gallery_anchor: np.ndarray,
) -> np.ndarray:
    """``m^2 / (n_A' * n_B')`` per template under its transform (see the module docstring), in [0, 1].

    probe_pos, probe_unit: (n,) the probe's minutiae; probe_hull: its half-planes
    (E,); pos, unit: (T, K) the templates' minutiae, count (T,) how many are real;
    hull_normals, hull_offsets: (T, E') their hulls; the transform: (T,) each.
    """
    t, k = pos.shape
    n = len(probe_pos)
    if t == 0 or n == 0:
        return np.zeros(t, np.float64)
    real = np.arange(k)[None, :] < count[:, None]  # (T, K)
    moved = rotation[:, None] * (probe_pos[None, :] - probe_anchor[:, None]) + gallery_anchor[:, None]  # (T, n)
    turned = probe_unit[None, :] * np.conj(rotation)[:, None]
    # Real float32 arithmetic on (T, n, K): squared distances, and the cosine of the
    # direction difference (|u - v|^2 = 2 - 2 cos); padding slots are moved far away.
    ax, ay = moved.real.astype(np.float32), moved.imag.astype(np.float32)
    bx = np.where(real, pos.real, np.float32(1e6)).astype(np.float32)
    by = pos.imag.astype(np.float32)
    dx = ax[:, :, None] - bx[:, None, :]
    dy = ay[:, :, None] - by[:, None, :]
    dx *= dx
    dy *= dy
    dx += dy  # squared distance
    cos = turned.real.astype(np.float32)[:, :, None] * unit.real.astype(np.float32)[:, None, :]
    cos += turned.imag.astype(np.float32)[:, :, None] * unit.imag.astype(np.float32)[:, None, :]
    ok = (dx < np.float32(D_PAIR**2)) & (cos > np.float32(1.0 - _CHORD_PAIR**2 / 2.0))
    # Cost: squared distance over D_PAIR^2 plus squared chord over its limit.
    cos *= np.float32(-2.0 / _CHORD_PAIR**2)
    cos += np.float32(2.0 / _CHORD_PAIR**2)
    dx *= np.float32(1.0 / D_PAIR**2)
    dx += cos
    dx[~ok] = np.inf
    cost = dx
    near_b = cost.argmin(axis=2)  # (T, n): each probe minutia's nearest gallery minutia
    near_a = cost.argmin(axis=1)  # (T, K)
    reachable = np.isfinite(np.take_along_axis(cost, near_b[:, :, None], axis=2)[:, :, 0])
    paired_a = reachable & (np.take_along_axis(near_a, near_b, axis=1) == np.arange(n)[None, :])  # (T, n)
    reachable_b = np.isfinite(np.take_along_axis(cost, near_a[:, None, :], axis=1)[:, 0, :])
    paired_b = reachable_b & (np.take_along_axis(near_b, near_a, axis=1) == np.arange(k)[None, :])  # (T, K)
    pairs = paired_a.sum(axis=1)
    # The common region: probe minutiae inside the template's hull, template minutiae
    # inside the probe's hull (mapped back to the probe's frame), or paired.
    in_a = (_inside(ax, ay, hull_normals, hull_offsets) | paired_a).sum(axis=1)
    back = np.conj(rotation)[:, None] * (pos - gallery_anchor[:, None]) + probe_anchor[:, None]
    normals, offsets = probe_hull
    inside_b = _inside(
        back.real.astype(np.float32),
        back.imag.astype(np.float32),
        np.broadcast_to(normals, (t, len(normals))),
        np.broadcast_to(offsets, (t, len(offsets))),
    )
    in_b = ((inside_b & real) | paired_b).sum(axis=1)
    over = np.maximum(in_a, MIN_OVERLAP).astype(np.float64) * np.maximum(in_b, MIN_OVERLAP)
    return pairs.astype(np.float64) ** 2 / over
