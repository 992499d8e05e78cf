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
   ``m^2 / (n_A' * n_B')`` (before item 4's free pairs are taken out)
   is near 1 for a genuine overlap and small for an impostor's, whatever the
   overlap size, and is how :func:`biometrics.fingerprint.mcc_match.scores`
   weighs its LSS-R evidence.
4. Pairs found by construction. The alignment is fitted on the pairs themselves
   (the anchor pair lies on its partner by definition, and the least-squares
   refit brings a second pair within tolerance whenever the distance between
   the two minutiae is about the same in both prints), so any two prints pair
   ``FREE_PAIRS`` = 2 minutiae, an impostor as well as a genuine mate. They are
   no evidence and leave every count, and the floor ``MIN_OVERLAP`` applies to
   what is left: the fraction is ``(m - 2)^2 / (max(n_A' - 2, 6) * max(n_B' - 2, 6))``.
   Impostors pair few minutiae beyond those (median 3 to 4 in overlaps of under
   15 minutiae, against 9 to 11 for a genuine mate), so the rule lowers the
   impostor tail more than the genuine scores. On the four FVC2002 folders (all
   pairs) the impostors' 99th percentile went from 0.040 / 0.044 / 0.042 / 0.061
   to 0.033 / 0.038 / 0.034 / 0.053 (the free pairs alone), the EER from
   1.07 / 1.07 / 3.15 / 1.07 % to 1.07 / 0.77 / 2.85 / 1.07 %, and DB4's 1e-4
   threshold (per-folder tail fits, as the calibration does; DB4 had the
   largest) from 0.145 to 0.120. On a synthetic population no rule was tuned on
   (100 fingers x 3 realistic impressions, seed 7) the EER went from 1.67 to
   1.35 % and its own 1e-4 threshold from 0.128 to 0.122, now the largest, the
   FNMR at it unchanged (6.67 %). At the largest threshold of the five groups
   (0.145 -> 0.122) FVC2002's FNMR went from 3.57 / 6.43 / 13.21 / 10.00 % to
   3.21 / 5.71 / 12.14 / 8.93 %.
   Three free pairs measured about as well on FVC2002 but put the synthetic
   threshold above DB4's; two is what the construction accounts for. The floor
   after the free pairs (rather than before) is worth one or two pairs per folder.

Rigid on purpose. An elastic re-pairing (each probe minutia moved by the
kernel-weighted mean, or a local linear fit, of the paired minutiae's residuals,
as in thin-plate-spline matching, then paired again) was measured in 22 variants
(kernel 64 to 128 pixels, at least 6 to 12 rigid pairs, displacement capped at
8 to 25 pixels, one to three iterations, re-pairing tolerance 12 to 20 pixels,
never losing a rigid pair, a similarity instead of a rigid refit), each with the
calibration refitted exactly as it is fitted (four FVC2002 folders, pairs across
them, 200 synthetic fingers). None lowered the FNMR at the 1e-4 threshold (mean
of the folders 4.91 %; the variants 4.91 to 6.25 %). Impostors gain as many
pairs as genuine mates (DB2: 16 % of the impostors with 8 or more rigid pairs
gain one, 12 % of the mates), so the thresholds rise (0.039 to 0.040-0.045) and
eat the gain; and the failing mates' unpaired minutiae are mostly missing from
the other print (a faint or partial impression), not displaced by distortion.
Even doubling every genuine pair's fraction, impostors untouched, would leave
FVC2002 DB2 and DB4 at 3.2 and 3.6 % (the orientation-field factor decides most
of their failures).

The common region as counted, and other evidence under the same pairing
(measured the same way, 2026-11-30). Counting a minutia that falls in the other
print's hull by the coherence of the other print's field there (full weight from
0.2, 0.3 or 0.5 up; or the coherence to the power 1 or 2), so that a faint
region of one print would not charge the other's minutiae as unpaired: mean FNMR
at the 1e-4 threshold 4.82 % at best (from 0.3: FVC2002 DB4 one pair fewer,
threshold 0.0390), 4.91 % from 0.2 and 0.5, 5.00 and 5.89 % for the powers
(thresholds 0.047 and 0.054): impostors' common regions shrink as much as mates'. Counting
only what lands on the other's foreground changes nothing: a print's hull lies
inside its foreground. Ridge counts between paired minutiae do not separate
either (FVC2002 DB4, all pairs, counted on the binarised ridges along the
segment, agreeing within one): passing mates agree on a median 0.69 of their
couples, impostors scoring above 0.01 on 0.60 (90th percentile 0.76, the top
impostor 0.84). Paired minutiae lie about as far apart in both prints by
construction of the pairing, so their ridge counts (distance over period)
agree for impostors too. Nor would a per-minutia descriptor that the device
could send, measured as a ceiling on FVC2002 DB4 from the extraction's own
images, around the paired minutiae in each minutia's frame: orientation patches
(64 pixels) agree on a median 0.92 for passing mates, 0.86 for impostors
scoring above 0.01 (the top impostor 0.83), 0.75 to 0.92 for the failing mates;
enhanced-image patches (24 pixels, the best of shifts within 3 pixels)
correlate at 0.78 for passing mates, 0.59 for those impostors (90th
percentile 0.68), and 0.52 to 0.80 (most near 0.63) for the failing mates:
their local texture disagrees as an impostor's does. Nor is the alignment
what fails the hardest mates: aligned on each of the ``N_ANCHOR`` anchors in
turn, FVC2002 DB2 finger 109's and DB4's failing pairs score at most 0.006
more, far under the threshold.
Nor a wider pairing ellipse (2026-12-03, calibration refitted exactly as
above, before: 6 / 15 / 17 / 11 of 280 refused on FVC2002 DB1-4 at 0.0375,
mean EER 0.71 %): ``D_PAIR`` 18 pixels refused 7 / 14 / 20 / 13 at 0.0417
(set by DB4), mean EER 0.87 %.

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
D_PAIR, A_PAIR = 15.0, 0.5  # the pairing ellipse's semi-axes (pixels at 500 dpi, radians)
REFIT = 1  # least-squares refits of the transform on the pairs found (see _refit)
MIN_OVERLAP = 6  # overlap counts (beyond the free pairs) below this are taken as this: a fraction of 3 is no evidence
FREE_PAIRS = 2  # pairs any alignment finds by construction (see paired_fraction): they count for nothing

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
    following = np.roll(hull, -1, axis=0)  # each vertex's successor (one roll: this runs once per search)
    edge = (following[:, 0] + 1j * following[:, 1]) - z
    area2 = float(np.sum(hull[:, 0] * following[:, 1] - following[:, 0] * hull[:, 1]))
    if abs(area2) < 1e-6:  # collinear points
        return everything
    normal = (edge.imag - 1j * edge.real) * np.sign(area2)  # (e_y, -e_x): outward for either winding
    normal /= np.maximum(np.abs(normal), 1e-12)
    offset = (np.conj(normal) * z).real
    return normal.astype(np.complex64), offset.astype(np.float32)


def pad_planes(planes: list[tuple[np.ndarray, np.ndarray]], width: int) -> tuple[np.ndarray, np.ndarray]:
    """Half-plane sets of several templates as zero-padded (T, width) arrays.

    A zero plane (normal 0, offset 0) is neutral: it adds an excess of 0 to the
    inside test, which keeps inside points inside (their largest excess is <= 0)
    and outside points outside. So hull arrays pad, grow and shrink like the
    positions of a stack. A hull has no more planes than its template has
    cylinders (at least 1): ``width`` = the stack's cylinder width always fits.
    """
    normals = np.zeros((len(planes), width), np.complex64)
    offsets = np.zeros((len(planes), width), np.float32)
    for t, (n, c) in enumerate(planes):
        normals[t, : len(n)], offsets[t, : len(c)] = n, c
    return normals, offsets


def used_planes(normals: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Padded hull arrays (T, E) (:func:`pad_planes`) without their trailing all-padding columns.

    A gallery's hull arrays are as wide as its cylinder counts (48), its hulls have
    about 15 edges: the inside test over the used columns only does a third of the
    work, with the same answer (padding planes are neutral). At least one column is kept.
    """
    used = np.flatnonzero((normals != 0).any(axis=0))
    width = int(used[-1]) + 1 if len(used) else 1
    return normals[:, :width], offsets[:, :width]


def _inside(x: np.ndarray, y: np.ndarray, normals: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Whether points (x, y) (T, P) lie inside hulls given as half-planes: (T, P) bool.

    The half-planes are (T, E), one hull per template, or (E,), one hull shared
    by every template (the probe's). The excesses are laid out edge-major,
    (E, T, P), so the largest is an elementwise maximum of E contiguous slices:
    about 2.5 times faster than a reduction along a short innermost axis (3 with
    a shared hull, which is not broadcast over the templates), same values.
    """
    if normals.ndim == 1:
        nx = normals.real.astype(np.float32)[:, None, None]
        ny = normals.imag.astype(np.float32)[:, None, None]
        off = offsets.astype(np.float32, copy=False)[:, None, None]
    else:
        nx = np.ascontiguousarray(normals.real.T, np.float32)[:, :, None]
        ny = np.ascontiguousarray(normals.imag.T, np.float32)[:, :, None]
        off = np.ascontiguousarray(offsets.T, np.float32)[:, :, None]
    excess = nx * x
    excess += ny * y
    excess -= off
    return excess.max(axis=0) <= 0.0


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
    rotation, anchor_a, anchor_b = rot[rows, best], a_pa[rows, best], a_pb[rows, best]
    return rotation, anchor_a, anchor_b


def _pair(
    moved: np.ndarray, turned: np.ndarray, pos: np.ndarray, unit: np.ndarray, real: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mutually nearest pairs within the tolerance: (paired probe minutiae (T, n), paired template minutiae (T, K),
    each probe minutia's nearest template minutia (T, n)).

    The cost of a pair is ``(d / D_PAIR)^2 + (|u - v| / chord(A_PAIR))^2`` (distance,
    and the chord between the unit directions), and a pair is accepted below 1: an
    ellipse in (distance, angle). Mutually nearest by that cost, regardless of the
    limit, then accepted below it, is the same as mutually nearest among the
    accepted pairs (a pair under the limit that is nearest overall is nearest among
    those under it): so only the costs below the limit are reduced
    (:func:`_mutual_below_one`). Both coordinates are
    scaled once, per minutia, so the cost is the squared distance between 4-vectors
    (x, y, cos, sin scaled), ``|a|^2 + |b|^2 - 2 a.b``: one batched matrix product
    and two broadcast additions in float32 (the rounding, about 1e-4 of the unit
    limit, decides nothing). Padding slots are moved far away. The nearest template
    minutia is reported only where some cost is below the limit (0 elsewhere).
    """
    return _mutual_below_one(_costs(moved, turned, pos, unit, real))


def _costs(moved: np.ndarray, turned: np.ndarray, pos: np.ndarray, unit: np.ndarray, real: np.ndarray) -> np.ndarray:
    """:func:`_pair`'s (T, n, K) float32 costs ``|a|^2 + |b|^2 - 2 a.b`` of the scaled 4-vectors.

    The squared lengths are summed in the order that ``einsum("tnc,tnc->tn")`` and
    ``einsum("tck,tck->tk")`` used on the numpy build measured (pairwise, then
    sequential), which computed them before: the same values there, and within a
    rounding step on any build (tests/test_fingerprint_global_pairing.py), from contiguous arrays,
    about a quarter of a millisecond less per 1:N search than the two einsums
    reducing over the short axis of four.
    """
    t, n, k = moved.shape[0], moved.shape[1], pos.shape[1]
    # complex64 in: the squared lengths below are taken of the same float32 values as the product.
    moved, turned = moved.astype(np.complex64, copy=False), turned.astype(np.complex64, copy=False)
    pos, unit = pos.astype(np.complex64, copy=False), unit.astype(np.complex64, copy=False)
    sd, sa = np.float32(1.0 / D_PAIR), np.float32(1.0 / _CHORD_PAIR)
    a = np.empty((t, n, 4), np.float32)
    ax, ay, au, av = moved.real * sd, moved.imag * sd, turned.real * sa, turned.imag * sa
    a[:, :, 0], a[:, :, 1], a[:, :, 2], a[:, :, 3] = ax, ay, au, av
    b = np.empty((t, 4, k), np.float32)
    b[:, 0], b[:, 1] = np.where(real, pos.real * sd, np.float32(1e3)), pos.imag * sd
    b[:, 2], b[:, 3] = unit.real * sa, unit.imag * sa
    cost = np.matmul(a, b)
    cost *= np.float32(-2.0)
    ax *= ax
    ay *= ay
    ax += ay
    au *= au
    av *= av
    au += av
    ax += au
    cost += ax[:, :, None]
    bb = b[:, 0] * b[:, 0]
    bb += b[:, 1] * b[:, 1]
    bb += b[:, 2] * b[:, 2]
    bb += b[:, 3] * b[:, 3]
    cost += bb[:, None, :]
    return cost


def _mutual_below_one(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_pair`'s answer from its (T, n, K) costs, reducing over the costs below 1 only.

    A pair (i, j) is accepted when its cost is below 1, i's row minimum and j's
    column minimum. Every cost that decides this is itself below 1 (the row's
    minimum, and anything under it in the column), and they are few (a minutia
    has about one partner within the ellipse): so the minima are taken over those
    alone, a few hundred values, instead of reducing the dense (T, n, K) array
    along its short axes (numpy's slowest reductions: most of this function's time
    before). Identical to the dense rule: same pairs, each row's first minimum on a
    tie, and each column's first row on a tie (so exact ties, from duplicate
    minutiae, never pair one minutia twice, and a comparison pairs the same
    minutiae whichever print is the probe). The nearest template minutia is only reported for rows with a cost below
    1 (0 elsewhere): every caller weighs it by ``paired``.
    """
    t, n, k = cost.shape
    hit = np.flatnonzero(cost < 1.0)  # sorted: row (t * n + i) major, then j
    val = cost.reshape(-1)[hit]
    row = hit // k
    col = (row // n) * k + (hit - row * k)  # t * k + j
    row_min = np.full(t * n, np.inf, np.float32)
    np.minimum.at(row_min, row, val)
    col_min = np.full(t * k, np.inf, np.float32)
    np.minimum.at(col_min, col, val)
    first = np.flatnonzero(val == row_min[row])  # each row's minima, in j order
    if len(first):
        first = first[np.concatenate([[True], row[first[1:]] != row[first[:-1]]])]  # the first per row
    near_b = np.zeros(t * n, np.int64)
    near_b[row[first]] = col[first] % k
    # A column's minimum reached by several rows (exact ties: duplicate minutiae) goes to
    # its first row only, as a row's goes to its first column: the pairs stay one-to-one,
    # and the same whichever print is the probe.
    mutual = first[val[first] <= col_min[col[first]]]
    at_min = np.flatnonzero(val == col_min[col])  # in row order
    if len(at_min) and np.bincount(col[at_min]).max() > 1:  # rare: a pair needs i to be its column's first row
        cols, first_at = np.unique(col[at_min], return_index=True)
        col_row = np.full(t * k, -1, np.int64)
        col_row[cols] = row[at_min[first_at]]
        mutual = mutual[col_row[col[mutual]] == row[mutual]]
    paired_a = np.zeros(t * n, bool)
    paired_a[row[mutual]] = True
    paired_b = np.zeros(t * k, bool)
    paired_b[col[mutual]] = True
    return paired_a.reshape(t, n), paired_b.reshape(t, k), near_b.reshape(t, n)


def _refit(
    probe_pos: np.ndarray, pos: np.ndarray, paired: np.ndarray, near: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Least-squares rigid transform of the paired minutiae: (rotation, probe centroid, template centroid, usable).

    The anchor pair fixes the transform where it stands; distortion grows away
    from it, so the far minutiae of a genuine print fall outside the tolerance.
    Refitted on every pair found, the transform centres the residuals over the
    common region. Usable where at least 3 pairs were found.
    """
    w = paired.astype(np.float32)
    count = w.sum(axis=1)
    matched = np.take_along_axis(pos, near, axis=1)  # (T, n)
    ca = (w * probe_pos[None, :]).sum(axis=1) / np.maximum(count, 1.0)
    cb = (w * matched).sum(axis=1) / np.maximum(count, 1.0)
    cross = (w * (matched - cb[:, None]) * np.conj(probe_pos[None, :] - ca[:, None])).sum(axis=1)
    rotation = cross / np.maximum(np.abs(cross), 1e-9)
    return rotation, ca, cb, (count >= 3) & (np.abs(cross) > 0)


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
    transform: dict[str, np.ndarray] | None = None,
) -> np.ndarray:
    """``(m - 2)^2 / (max(n_A' - 2, 6) * max(n_B' - 2, 6))`` per template under its transform, in [0, 1].

    ``transform``, when given, receives the refitted alignment (``rotation``,
    ``probe_anchor``, ``gallery_anchor``, each (T,)), the pairing
    (``paired_probe`` (T, n) bool, ``partner`` (T, n): the paired template
    minutia, meaningful where paired) and the counts (``pairs``,
    ``overlap_probe``, ``overlap_gallery``, each (T,)).

    (Item 4 of the module docstring: the two pairs any alignment makes count for nothing.)

    probe_pos, probe_unit: (n,) the probe's minutiae; probe_hull: its half-planes
    (E,); pos, unit: (T, K) the templates' minutiae, count (T,) how many are real;
    hull_normals, hull_offsets: (T, E') their hulls; the transform: (T,) each.
    """
    t, k = pos.shape
    n = len(probe_pos)
    if t == 0 or n == 0:
        return np.zeros(t, np.float64)
    real = np.arange(k)[None, :] < count[:, None]  # (T, K)
    for _ in range(REFIT):
        moved = rotation[:, None] * (probe_pos[None, :] - probe_anchor[:, None]) + gallery_anchor[:, None]
        turned = probe_unit[None, :] * np.conj(rotation)[:, None]
        paired_a, _, near_b = _pair(moved, turned, pos, unit, real)
        rot2, ca, cb, usable = _refit(probe_pos, pos, paired_a, near_b)
        rotation = np.where(usable, rot2, rotation)
        probe_anchor = np.where(usable, ca, probe_anchor)
        gallery_anchor = np.where(usable, cb, gallery_anchor)
    moved = rotation[:, None] * (probe_pos[None, :] - probe_anchor[:, None]) + gallery_anchor[:, None]  # (T, n)
    turned = probe_unit[None, :] * np.conj(rotation)[:, None]
    paired_a, paired_b, near_b = _pair(moved, turned, pos, unit, real)
    pairs = paired_a.sum(axis=1)
    if transform is not None:  # the refitted alignment, for a caller that compares more than minutiae under it
        transform.update(rotation=rotation, probe_anchor=probe_anchor, gallery_anchor=gallery_anchor)
    # The common region: probe minutiae inside the template's hull, template minutiae
    # inside the probe's hull (mapped back to the probe's frame), or paired.
    inside_a = _inside(
        moved.real.astype(np.float32), moved.imag.astype(np.float32), *used_planes(hull_normals, hull_offsets)
    )
    in_a = (inside_a | paired_a).sum(axis=1)
    back = np.conj(rotation)[:, None] * (pos - gallery_anchor[:, None]) + probe_anchor[:, None]
    normals, offsets = probe_hull
    inside_b = _inside(back.real.astype(np.float32), back.imag.astype(np.float32), normals, offsets)
    in_b = ((inside_b & real) | paired_b).sum(axis=1)
    if transform is not None:  # what was paired, in how large a common region (references only: no work in a search)
        transform.update(paired_probe=paired_a, partner=near_b, pairs=pairs, overlap_probe=in_a, overlap_gallery=in_b)
    # The free pairs leave every count; the overlaps beyond them count at least MIN_OVERLAP.
    over = np.maximum(in_a - FREE_PAIRS, MIN_OVERLAP).astype(np.float64) * np.maximum(in_b - FREE_PAIRS, MIN_OVERLAP)
    return np.maximum(pairs - FREE_PAIRS, 0).astype(np.float64) ** 2 / over
