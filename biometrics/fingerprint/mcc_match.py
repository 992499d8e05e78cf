"""MCC matching of one probe against many templates at once (LSS-R consolidation, then global pairing).

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
iterations, compatibility sigmoids (5, -1.6), (pi/12, -30), (pi/12, -30). Three
departures. First, the two angle sigmoids are half as steep (tau -15: pairs
whose relative or radial angles agree keep 0.98 of their compatibility per
factor, 0.79 at 10 degrees apart where -30 keeps 0.93, and 0.22 at 20 degrees
where -30 keeps 0.07: less all-or-nothing around the pi/12 knee), which
lowered every FVC2002 folder's largest impostor score (0.055 / 0.079 / 0.067 /
0.090 -> 0.051 / 0.071 / 0.061 / 0.082) and per-folder 1e-4
tail threshold (largest 0.118 -> 0.101), took the mean EER from 1.52 to 1.43 %
(DB3 2.85 -> 2.50 %: one genuine pair) and the FNMR at the largest 1e-4
threshold from 6.96 to 6.70 % (mean of the four); on a synthetic population
no rule was tuned on (200 fingers x 3 realistic impressions, seed 7) the EER
stayed 1.00 %, its largest impostor score went 0.169 -> 0.153 and the FNMR at
its own 1e-4 threshold 5.00 -> 5.33 % (two of 600 pairs; -10 was worse there,
EER 1.14 %); the median raw impostor score (NULL_CENTRE) moved by 2e-4. Second,
the pairs entering the relaxation are the best mutually-best pairs
(minutia i's most similar cylinder in the other print is j, and j's is i) rather
than the best pairs overall, which makes the selection one-to-one and symmetric
in the two prints (on the FVC2002 folders mean EER 2.6 % -> 2.2 %). Third, at most
16 of them enter (the paper takes min(n_A, n_B)): the relaxation costs the square
of that number, and 16 already exceeds the 12 pairs the score is taken from.

Reliability of the pairs. Each minutia carries its chance of recurring in
another impression (its quality, :func:`biometrics.fingerprint.minutiae.reliability`),
which the cylinders carry along (``Cylinders.reliability``, per row of a
:class:`Stack` and :class:`Packed` set). The initial similarity of each relaxed
pair is weighted by ``(r_a r_b)^3`` over that weight's mean on the comparison's
relaxed pairs (:func:`reliability_weights`): on dry and faint prints the spurious
minutiae's look-alike pairs no longer lead the relaxation, and the average, hence
the evidence's scale against NULL_CENTRE, is kept. Measured with the cached
FVC2002 templates and the real calibration refit (four folders, pairs across
them, 200 synthetic fingers seed 1000): the refitted 1e-4 threshold went from
0.1387 to 0.1342 (1e-3: 0.0947 -> 0.0922), the EER from 1.07 / 1.09 / 1.81 /
1.43 % to 1.07 / 0.40 / 1.85 / 1.43 % (mean 1.35 -> 1.19), the FNMR at the 1e-3
threshold from 2.50 / 3.93 / 10.36 / 7.14 % to 2.14 / 3.57 / 8.57 / 3.93 % (mean
5.98 -> 4.55) and at the 1e-4 threshold from 4.64 / 7.50 / 14.29 / 12.14 % to
3.93 / 6.07 / 13.93 / 9.29 % (mean 9.64 -> 8.30; fingers 101-105 5.00 -> 4.29,
106-110 14.29 -> 12.32). On the synthetic population no rule was tuned on (200
fingers, seed 0) the EER went from 1.32 to 1.03 %, the FNMR at the 1e-4
threshold from 6.33 to 4.83 %, with 3 false matches of 179,100 at it (2 before)
and pre-filter recall 99.30 % (99.29). The dry fingers that fail most (DB3 105 and
110: their true pairs' cylinders are hardly more alike than an impostor's) are
not rescued: no weighting of the paired fraction by reliability helped either.
Those figures are from before the orientation-field factor; with it (templates
re-extracted with their fields, same harness) the weighting took the 1e-4
threshold from 0.0497 to 0.0504, the mean EER from 1.16 to 1.15 %, the FNMR at
the 1e-3 threshold from 4.55 to 4.02 % (mean) and at the 1e-4 threshold from
2.86 / 5.00 / 11.07 / 10.71 % to 2.86 / 5.00 / 10.36 / 8.21 % (mean 7.41 ->
6.61), the synthetic seed-0 FNMR at it from 4.67 to 4.17 % (1 false match,
recall 100 %).

Evidence normalisation (for calibration across sensors). The LSS-R score is a
mean of n_P relaxed similarities, and n_P shrinks with the minutiae count (4 pairs
for a print of 11 minutiae, 12 from about 30). Under the impostor hypothesis the
spread of a mean of n_P terms grows like 1/sqrt(n_P), so small prints (a partial
touch, a small sensor, a dry finger) produced most of the highest impostor scores:
on the 49,920 impostor pairs of the four FVC2002 folders pooled, 0.41 % of the
pairs with under 20 minutiae reached the pooled 0.1 % threshold, against 0.05 to
0.11 % of the others. :func:`normalise` therefore maps the raw LSS-R score to
``NULL_CENTRE + (raw - NULL_CENTRE) * sqrt(n_P / MAX_NP)``: unchanged for prints
with enough minutiae, pulled towards the typical impostor score when the evidence
is thin, which equalises the impostor tails (0.14 / 0.07 / 0.13 % in the same
three groups) at no cost in EER.

Global consolidation (:mod:`biometrics.fingerprint.global_pairing`). LSS-R never
checks the rest of the two prints: a few look-alike minutiae that happen to be
mutually compatible score an impostor like a genuine print. So the relaxed pairs
also align the prints (the best supported of the 5 best pairs as the anchor of a
rigid transform, refitted by least squares on the pairs it finds), every minutia
with a cylinder is paired under that alignment (mutually nearest, within 15
pixels and 0.5 radians), and the paired fraction ``m^2 / (n_A' * n_B')`` of the
common region (minutiae inside the other print's hull, or paired) is measured,
less the two pairs any alignment finds by construction (see that module: on the
same folders it took the mean EER from 1.59 to 1.44 % and the largest 1e-4 tail
threshold from 0.145 to 0.122, the figures below are from before it).
Orientation field (:mod:`biometrics.fingerprint.orientation_field`). Under the
same refitted alignment the two prints' coarse orientation fields are compared,
and the combined score below is multiplied by a factor in [0.25, 1] that grows
with the share of common foreground blocks that agree (1 when every block does):
the minutiae cannot tell a dry genuine mate from an impostor with a few look-alike
minutiae, the fields usually can (see that module for the figures). So the score
of :func:`scores` is ``combine(...) * factor``; before it, it was:

The score returned by :func:`scores` is the geometric mean of the LSS-R evidence
and that fraction, ``sqrt(max(normalised - NULL_CENTRE, 0) * fraction)``
(:func:`combine`): 0 for the half of impostor comparisons whose LSS-R does not
exceed the impostor centre (and the pairing is skipped for them), high only when
both the local structures and the global geometry agree. On the four FVC2002
folders (all pairs, 2,880 impostor and 280 genuine per folder) the EER went from
1.07 / 1.78 / 3.57 / 1.43 % to 1.07 / 1.41 / 3.21 / 1.07 % (mean 1.96 -> 1.69 %),
FNMR at FMR 0.1 % from 1.8 / 3.6 / 10.4 / 6.1 % to 1.1 / 2.5 / 8.6 / 4.6 %, and on a
synthetic population (100 fingers, 3 realistic impressions, seed 7) the EER from
2.00 to 1.33 %. The evidence normalisation still holds for the combined score: on
the four folders' impostor pairs pooled, the share above the pooled 99.9th
percentile is 0.11 / 0.12 / 0.12 / 0.00 % for prints of under 20 / 20-29 / 30-39 /
40+ cylinders. Cost (one core, blocks of 64 templates): 74 -> 97 us per
comparison on FVC2002 DB1, 89 -> 121 on DB2, 103 -> 159 on synthetic prints of
48 cylinders (the pairing is (T, n, K) float32 work, twice); 1:1 about 0.55 ->
1.0 ms. 1:N with the pre-filter: 136k -> 122k (DB1), 139k -> 120k (DB2)
comparisons per CPU-second on one core, measured interleaved on a shared machine.

Other forms of the final score, measured against this one with the calibration
refitted exactly (four FVC2002 folders, pairs across them, 200 synthetic
fingers; the mean over the folders of the FNMR at the 1e-4 threshold is 4.91 %
with this form): the excess weighted more or less than the fraction
(``excess^w fraction^(1-w)``, w 0.3 to 0.7: 5.18 to 6.34 %); the excess counted
from a higher centre (``excess - e0``, e0 0.002 to 0.015: 4.91 % at best, and
the impostor bulk collapsing to 0 unsettles the tail fits); a second term that
lets a strong excess pass a weak field (4.73 % at best, synthetic false
matches up); the pair and overlap counts as extra factors (4.91 % at best: this
form); a logistic regression over the logs of the excess, the fraction, the
counts and the field share (EER 1.06 -> 0.88 %, but FNMR at 1e-4 9.0 %: it fits
the bulk, and the heavier impostor tail raises the threshold to 0.054); and
cohort score normalisation (each print's scores against other fingers of its
folder, of other folders or of synthetic ones: with the cohort's mean subtracted
the FNMR at the folders' largest impostor scores stayed as it was, z-scored or
divided by the cohort's level it rose, on every cohort). What limits the
FNMR at 1e-4 is the few hardest mates of a folder (FVC2002 DB2 finger 109 alone
holds 13 of its 14 failures at 0.0392), whose minutiae and fields both look
like an impostor's.

Second pass (:func:`_second_pass`, 2026-12-03). Of the true pairs of the refused
mates, only 58 % are mutually-best cylinder pairs (92 % in passing mates): the
spurious neighbours of a dry or speckled print corrupt the cylinders, so the
LSS-R evidence rests on a few pairs while the alignment pairs many. A comparison
scoring under ``SECOND_PASS_BELOW`` (0.06, 1.5 x the 1e-4 threshold) whose
alignment paired at least ``SECOND_PASS_MIN_PAIRS`` (8) minutiae is consolidated
again from exactly those pairs (their cylinder similarities, relaxed, then
aligned, paired and field-weighed as in the first pass), and keeps
``max(first, SECOND_PASS_WEIGHT * second)``. Those pairs are consistent by
construction, so they relax high for impostors too: at weight 1 and no minimum
the impostor tail rose with the mates (largest FVC2002 impostor 0.040 -> 0.062,
refitted 1e-4 threshold 0.0392 -> 0.0672, mean FNMR at it 4.91 -> 10.18 %),
hence the weight and the minimum.

Measured on the cached templates with the calibration refitted exactly each
time (four FVC2002 B folders, pairs across them, 200 synthetic fingers seed
1000); FNMR at the refitted 1e-4 threshold as refused pairs of 280 on DB1-4
(before: 6 / 14 / 19 / 16, mean 4.91 %). Without the minimum the weight was
picked on DB1 and DB3 alone (0.25 / 0.3 / 0.35 / 0.4 / 0.45 / 0.5: DB1 + DB3
refused 6+20 / 6+20 / 5+19 / 5+19 / 5+19 / 6+20); at 0.4 the mean was 4.64 %
(5 / 13 / 19 / 15) but the tail's shape grew (the pairs across folders' 0.21 ->
0.24), and the thresholds far out with it: 1e-6 0.093 -> 0.106, 1e-8 0.254 ->
0.329, which took the verifier's finger identification capacity at identify_fpir
3e-9 from 181 comparisons to 28 (verifier.ranking); the folders held out in
turn (``--leave-one-out``) refitted their 1e-4 threshold at up to 0.048. The
impostors it lifts pair few minutiae, the mates many (6 to 18 under the
alignment for the refused ones): with the minimum of 8 pairs (11 kept the
figures of before: 4.91 %; 6 kept the heavier tail, 1e-8 at 0.282) and the
weight 0.4, thresholds 1e-3 0.0246 -> 0.0242 and 1e-4 0.0392 -> 0.0386 (DB4 sets
both), 1e-6 0.0931 and 1e-8 0.257 (the identification capacity 165 at 3e-9,
55 million at 1e-3, against 60 million); refused at 1e-4 5 / 13 / 19 / 16 (mean
4.73 %), at 1e-3 mean 3.13 -> 2.77 %; EER 0.99 / 0.40 / 1.43 / 1.43 -> 1.02 /
0.40 / 0.99 / 1.43 %; synthetic seed 0 (tuned on by nothing): FNMR at 1e-4 3.83 %
as before, EER 0.83 -> 0.67 %, false matches at 1e-4 2 -> 3 (limit 25) and at 1e-3
81 -> 96 (limit 201); held out by folder, the refitted 1e-4 thresholds 0.032 /
0.042 / 0.032 / 0.037 without DB1 / DB2 / DB3 / DB4 (0.031 to 0.038 before),
at most one false match on the folder left out (limit 1). Weight 0.5 with the
minimum would refuse 5 / 13 / 18 / 14 (4.46 %) but the tail grows again (1e-8
0.279, identification capacity at 1e-3 26 million) and DB1's EER rises to 1.07
%: not taken. A small gain: two pairs of 1,120, no folder halves.

Measured and not taken: a second pass on the next-best distinct alignment (the
first alignment's paired minutiae, or only its pairs, taken out of the
similarities, the rest consolidated again, the maximum kept) lifted none of the
55 refused mates (one gained 0.003): their first alignment is not wrong, their
evidence is weak. A weighted mean or a geometric mean of the two passes instead
of the maximum did no better than it (4.82 to 5.18 % without the minimum).
Cost: the second pass redoes the consolidation (not the similarities) for the
scores under the band with enough pairs. 1:N per core (``bench.fingerprint``,
one worker, gallery of 2,000): 164k / 146k / 183k / 131k comparisons per second
on FVC2002 DB1-4 and 122k on the synthetic population (a shared machine: the
first round measured 127k to 141k); a gallery of synthetic strangers searched by
FVC2002 probes (every candidate an impostor) 184k -> 162k per CPU-second, best
of five rounds, measured back to back. Symmetry is as before (6 of the 51,040
pairs of the four folders differ by over 1e-6 between the two directions).

Measured and not taken (2026-12-03; cached FVC2002 B templates and 200
synthetic fingers seed 1000, the calibration refitted exactly each time; at the
time 6 / 15 / 17 / 11 of 280 genuine pairs refused on DB1-4 at the refitted
1e-4 threshold 0.0375, mean 4.38 %, mean EER 0.71 %, synthetic seed 0 FNMR at
1e-4 4.00 %): 20 relaxed pairs instead of ``MAX_RELAX`` 16 (threshold 0.0372,
the same 6 / 15 / 17 / 11, synthetic 4.83 %: the mates refused have too few
true pairs among their mutually-best ones, not too few places for them), and
``MIN_COMMON`` 0.5 instead of 0.6 (threshold 0.0375, the same refusals).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from biometrics.fingerprint import global_pairing, orientation_field
from biometrics.fingerprint.cylinders import N_SPATIAL, ND, Cylinders

MIN_COMMON = 0.6
MAX_ANGLE = np.pi / 2
MIN_NP, MAX_NP, MU_NP, TAU_NP = 4, 12, 20.0, 0.4
W_R, N_REL = 0.5, 5
MAX_RELAX = 16  # pairs entering relaxation (paper: min(n_A, n_B)); see module docstring
MU_1, TAU_1 = 5.0, -1.6
MU_2, TAU_2 = np.pi / 12, -15.0  # paper: -30; see the module docstring
MU_3, TAU_3 = np.pi / 12, -15.0
# Median raw impostor score (FVC2002 four folders pooled), measured with tau -30 and kept:
# tau -15 moved it by 2e-4 (see the module docstring).
NULL_CENTRE = 0.0156
# Each relaxed pair's initial similarity is weighted by (r_a * r_b) ** RELIABILITY_POWER, the two
# minutiae's chances of recurring (their qualities), over the mean weight of the comparison's
# relaxed pairs: see reliability_weights.
RELIABILITY_POWER = 3
MAX_RELIABILITY_WEIGHT = 4.0  # a pair weighs at most this many times a comparison's mean (reliability_weights)
# Compatibilities below this (float32's smallest normal number) are taken as 0: see consolidate.
RHO_FLOOR = float(np.finfo(np.float32).tiny)
# Second pass (_second_pass): scores under SECOND_PASS_BELOW (1.5 x the 1e-4 threshold when it was set, 0.039;
# 1.7 x today's 0.0352: above it a comparison passes the default verification either way; the duplicate check's
# 1e-6 threshold, 0.072 (0.086 at the fit before), lies above, where a mate scoring 0.06 to 0.072 gets no second
# pass, a bound the calibration's fit includes) take
# SECOND_PASS_WEIGHT x the score of the pairs the alignment paired...
SECOND_PASS_BELOW = 0.06
SECOND_PASS_WEIGHT = 0.4
SECOND_PASS_MIN_PAIRS = 8  # ...when the alignment paired at least this many minutiae (the free pairs included)


def _sigmoid(v: np.ndarray | float, mu: float, tau: float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-tau * (np.asarray(v, np.float64) - mu)))


# Columns of a stored cylinder row: all four are gathered with one row copy, and
# each is a strided view that BLAS reads directly.
_F = N_SPATIAL * ND
_VALUES = slice(0, _F)  # the cylinder's cell values
_VALID = slice(_F, _F + N_SPATIAL)  # 1 on valid spatial cells
_ENERGY = slice(_F + N_SPATIAL, _F + 2 * N_SPATIAL)  # sum over directions of the squared values
_DIRECTION = slice(_F + 2 * N_SPATIAL, _F + 2 * N_SPATIAL + 2)  # cos, sin of the minutia angle
WIDTH = _F + 2 * N_SPATIAL + 2


@dataclass(frozen=True, slots=True)
class Stack:
    """Cylinders of T templates as one row per real cylinder, template after template.

    The storage of a gallery: a subset of it becomes a :class:`Packed` set for
    scoring with one row gather (:func:`gather`), with no padding rows copied.
    The orientation fields are stored likewise, each at its own size
    (:class:`biometrics.fingerprint.orientation_field.Fields`), and read in place.
    """

    rows: np.ndarray  # float32 (R, WIDTH), R = count.sum(): see _Columns
    pos: np.ndarray  # complex64 (T, K): x + iy, 500-dpi pixels; 0 past a template's count
    unit: np.ndarray  # complex64 (T, K): exp(i * angle)
    count: np.ndarray  # int64 (T,) cylinders per template
    start: np.ndarray  # int64 (T,) first row of each template
    hull_normals: np.ndarray  # complex64 (T, K): hull of the cylinder centres, zero-padded (global_pairing.pad_planes)
    hull_offsets: np.ndarray  # float32 (T, K)
    reliability: np.ndarray  # float32 (T, K): each cylinder's minutia's chance of recurring; 0 past the count
    fields: orientation_field.Fields  # orientation fields, each at its own size (ragged, not padded)

    @property
    def templates(self) -> int:
        return len(self.count)


@dataclass(frozen=True, slots=True)
class Packed:
    """Cylinders of T templates laid out for matrix products, with no padding rows.

    Templates are sorted by decreasing cylinder count and rows are cylinder-major
    (every template's first cylinder, then every second one, ...): the local
    similarities of the real rows then fill a (K, T) grid by K contiguous slice
    copies, the layout the consolidation reduces fastest. ``order`` maps the sorted
    templates back to the caller's order (:func:`scores` answers in that order).
    """

    rows: np.ndarray  # float32 (R, WIDTH): see _Columns; with row_index, the whole gallery's rows
    pos: np.ndarray  # complex64 (T, K), sorted templates
    unit: np.ndarray  # complex64 (T, K)
    count: np.ndarray  # int64 (T,), sorted templates (decreasing)
    offsets: np.ndarray  # int64 (K + 1,): rows of cylinder rank p are offsets[p]:offsets[p + 1]
    order: np.ndarray  # int64 (T,): caller's index of each sorted template
    hull_normals: np.ndarray  # complex64 (T, K), sorted templates
    hull_offsets: np.ndarray  # float32 (T, K)
    reliability: np.ndarray  # float32 (T, K), sorted templates
    fields: orientation_field.Fields  # the stack's fields (T' templates), not gathered (see field_index)
    has_field: np.ndarray  # bool (T,), sorted templates
    field_index: np.ndarray  # int64 (T,): each sorted template's field is fields[field_index]
    # Rows not copied (gather(..., copy=False)): ``rows`` is the stack's storage and
    # packed row r is rows[row_index[r]]; local_similarity copies them pass by pass.
    row_index: np.ndarray | None = None

    @property
    def templates(self) -> int:
        return len(self.count)

    @property
    def width(self) -> int:
        return self.pos.shape[1]

    @property
    def real_rows(self) -> int:
        """Rows of real cylinders in this set (R)."""
        return int(self.offsets[-1])

    def _packed_rows(self) -> np.ndarray:
        return self.rows if self.row_index is None else self.rows[self.row_index]

    @property
    def values(self) -> np.ndarray:
        return self._packed_rows()[:, _VALUES]

    @property
    def valid(self) -> np.ndarray:
        return self._packed_rows()[:, _VALID]

    @property
    def energy(self) -> np.ndarray:
        return self._packed_rows()[:, _ENERGY]

    @property
    def direction(self) -> np.ndarray:
        return self._packed_rows()[:, _DIRECTION]


def _energy(c: Cylinders) -> np.ndarray:
    v = c.values.reshape(len(c), N_SPATIAL, ND)
    return np.einsum("nsd,nsd->ns", v, v).astype(np.float32)


def _direction(angle: np.ndarray) -> np.ndarray:
    return np.stack([np.cos(angle), np.sin(angle)], axis=1).astype(np.float32)


def _grid(count: np.ndarray, flat: np.ndarray) -> np.ndarray:
    """Per-row values (R,) laid out as a zero-padded (T, K) grid."""
    t = len(count)
    k = int(max(count.max(initial=0), 1))
    out = np.zeros((t, k), flat.dtype)
    out[np.arange(k)[None, :] < count[:, None]] = flat
    return out


def stack(cylinders: list[Cylinders]) -> Stack:
    """Stack cylinder sets (one per template), template after template."""
    count = np.array([len(c) for c in cylinders], np.int64)
    start = (np.cumsum(count) - count).astype(np.int64)
    live = [c for c in cylinders if len(c)]
    width = int(max(count.max(initial=0), 1))  # the width of _grid's arrays
    normals, offsets = global_pairing.pad_planes([global_pairing.hull_planes(c.x, c.y) for c in cylinders], width)
    fields = orientation_field.pack([c.field for c in cylinders])
    if not live:
        grid = np.zeros((len(count), 1), np.complex64)
        none = np.zeros(grid.shape, np.float32)
        return Stack(np.zeros((0, WIDTH), np.float32), grid, grid, count, start, normals, offsets, none, fields)
    angle = np.concatenate([c.angle for c in live])
    xy = np.concatenate([c.x for c in live]) + 1j * np.concatenate([c.y for c in live])
    rows = np.empty((len(angle), WIDTH), np.float32)
    rows[:, _VALUES] = np.concatenate([c.values for c in live])
    rows[:, _VALID] = np.concatenate([c.valid for c in live])
    v = rows[:, _VALUES].reshape(-1, N_SPATIAL, ND)
    rows[:, _ENERGY] = np.einsum("nsd,nsd->ns", v, v)
    rows[:, _DIRECTION] = _direction(angle)
    return Stack(
        rows,
        _grid(count, xy.astype(np.complex64)),
        _grid(count, np.exp(1j * angle).astype(np.complex64)),
        count,
        start,
        normals,
        offsets,
        _grid(count, np.concatenate([c.reliability for c in live]).astype(np.float32)),
        fields,
    )


def gather(stacked: Stack, templates: np.ndarray, buffer: np.ndarray | None = None, copy: bool = True) -> Packed:
    """The templates at the given positions of a stack, packed for scoring (one row gather).

    With ``buffer`` (float32, (rows, WIDTH), C-contiguous), the rows are copied into
    its first rows when they fit, and the Packed set is a view of it: valid until the
    buffer is reused: megabytes of rows copied into fresh arrays come from new memory
    mappings, whose page faults cost as much as the copy itself. With ``copy=False``
    (a 1:N search's candidates) no row is copied here: the set refers to the stack's
    rows and fields (valid until the stack changes: a removal compacts both in place) and
    :func:`local_similarity` copies the rows a
    pass at a time, while they are used; ``buffer`` is not used then.
    """
    templates = np.asarray(templates, np.int64)
    order = np.argsort(-stacked.count[templates], kind="stable")
    chosen = templates[order]
    count = stacked.count[chosen]
    k = int(max(count.max(initial=0), 1))
    rank, which = np.nonzero(np.arange(k)[:, None] < count[None, :])  # cylinder-major, templates in order
    rows = stacked.start[chosen][which] + rank
    per_rank = (count[None, :] > np.arange(k)[:, None]).sum(axis=1)
    index = None
    if not copy:
        gathered, index = stacked.rows, rows
    elif buffer is not None and len(buffer) >= len(rows):
        # mode="clip": no bounds-check copy (the rows are valid by construction).
        gathered = np.take(stacked.rows, rows, axis=0, out=buffer[: len(rows)], mode="clip")
    else:
        gathered = stacked.rows[rows]
    return Packed(
        gathered,
        stacked.pos[chosen, :k],
        stacked.unit[chosen, :k],
        count,
        np.concatenate([[0], np.cumsum(per_rank)]).astype(np.int64),
        order,
        stacked.hull_normals[chosen, :k],
        stacked.hull_offsets[chosen, :k],
        stacked.reliability[chosen, :k],
        stacked.fields,
        stacked.fields.has[chosen],
        chosen,
        index,
    )


def gather_buffer(rows: int, old: np.ndarray | None = None) -> np.ndarray:
    """A :func:`gather` buffer of at least ``rows`` rows: ``old`` if it is big enough, else a new one."""
    if old is not None and len(old) >= rows:
        return old
    return np.empty((rows, WIDTH), np.float32)


def scratch_for(gallery: Packed, n: int, old: np.ndarray | None = None) -> np.ndarray:
    """A buffer for the widest pass of :func:`local_similarity` over ``gallery`` with an ``n``-cylinder probe."""
    return gather_buffer(int(np.diff(passes(gallery.real_rows, n)).max(initial=0)), old)


def pack(cylinders: list[Cylinders]) -> Packed:
    """Cylinder sets (one per template) packed for scoring."""
    return gather(stack(cylinders), np.arange(len(cylinders)))


_COS_MAX = float(np.cos(MAX_ANGLE)) - 1e-6


PASS_PRODUCTS = 16384  # gallery rows x probe cylinders per pass of local_similarity, at least


def passes(rows: int, n: int) -> np.ndarray:
    """Row bounds of :func:`local_similarity`'s passes over ``rows`` gallery rows for a probe of ``n`` cylinders.

    Equal passes of at least PASS_PRODUCTS / n rows each (one pass when there are
    fewer): enough for every product to stay a full-size BLAS call. Each entry of a
    product is then the same sum as in one product over all the rows: on the build
    measured OpenBLAS takes another code path, summing in another order, only for
    products of under about a million multiply-adds (a pass of 14 rows against a
    48-cylinder probe changed some similarities by 4e-5 before the square root), and
    a pass of PASS_PRODUCTS x 80 (the valid-cell products) is above that.
    """
    size = max(1, -(-PASS_PRODUCTS // max(n, 1)))
    count = max(1, rows // size)
    return (np.arange(count + 1, dtype=np.int64) * rows) // count


def local_similarity(probe: Cylinders, gallery: Packed, scratch: np.ndarray | None = None) -> np.ndarray:
    """Cylinder similarities, shape (n_probe, K, T); 0 where not comparable (and past a template's count).

    Template-minor: the consolidation's best-partner searches then reduce over
    outer axes (elementwise maxima of contiguous rows), several times faster in
    numpy than reductions along a short innermost axis.

    The products are taken gallery rows first ((R, n) results: the gathered rows
    are the left operand, the probe's few columns the right one), which OpenBLAS
    ran about 20 % faster than the (n, R) orientation on a search's 64 candidates
    with the rows in cache (its packing of the strided gallery rows is cheaper
    that way; in a search, where the rows come from memory, about 5 %); each
    entry is the same sum of the same products, and for probes of two cylinders
    or more the similarities came out the same bit for bit on the build measured
    (tests/test_fingerprint_match.py compares them with the probe-first
    formulation). A one-cylinder probe's product is a matrix-vector one, summed
    in another order: its similarities may differ in the last bits (up to 1.7e-4
    after the square root's cancellation, measured), and its score is 0 either
    way (one pair is below FREE_PAIRS). Other BLAS kernels sum in other orders,
    and the order may depend on an entry's place in the product: with
    OpenBLAS's Haswell kernels (an AMD EPYC VM with AVX2 but no AVX-512; the
    build measured ran its SkylakeX ones) a cylinder against its own copy came
    out 1.0 in one layout and 0.9990 in another, and a print's score against its
    own copy differs by up to 8e-4 relative between a search and 1:1 matching
    (other pairs under 1e-4). No decision rests on such digits; the tests
    compare layouts within them (tests/conftest.py).

    Pass by pass (fifth round): the rows are taken a few hundred at a time
    (:func:`passes`), and each pass's four products and its similarity arithmetic
    run while its rows and results are in the core's cache. A set gathered with
    ``copy=False`` has its rows copied here, pass by pass, into ``scratch`` (float32
    (rows, WIDTH), reused when big enough): a search's candidates are then read from
    the gallery once, not copied out and read back (megabytes that outgrow the
    cache). Same products, same values as one pass over all rows (see :func:`passes`).
    """
    t, k = gallery.templates, gallery.width
    n = len(probe)
    total = gallery.real_rows
    if n == 0 or t == 0 or total == 0:
        return np.zeros((n, k, t), np.float32)
    # -2 a.b directly: scaling one factor by -2 scales every partial sum exactly.
    values_t = (np.float32(-2.0) * probe.values).T
    # |a| squared on the common cells and the common cell counts: one product.
    energy_valid = np.hstack([_energy(probe).T, probe.valid.T])
    valid_t = probe.valid.T
    direction_t = _direction(probe.angle).T
    sim = np.empty((total, n), np.float32)
    bounds = passes(total, n)
    if gallery.row_index is not None:
        widest = int(np.diff(bounds).max())
        if scratch is None or len(scratch) < widest:
            scratch = np.empty((widest, WIDTH), np.float32)
    for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
        if gallery.row_index is None:
            rows = gallery.rows[lo:hi]
        else:  # mode="clip": no bounds-check copy (the rows are valid by construction)
            rows = np.take(gallery.rows, gallery.row_index[lo:hi], axis=0, out=scratch[: hi - lo], mode="clip")
        _similarities(rows, values_t, energy_valid, valid_t, direction_t, sim[lo:hi])
    out = np.empty((n, k, t), np.float32)
    if total == k * t:  # every template has k cylinders: the rows are the grid
        out[...] = sim.reshape(k, t, n).transpose(2, 0, 1)
        return out
    out.fill(0.0)
    for p in range(k):  # templates are sorted by count: rank p's rows are the first few templates
        lo, hi = int(gallery.offsets[p]), int(gallery.offsets[p + 1])
        out[:, p, : hi - lo] = sim[lo:hi].T
    return out


def _similarities(
    rows: np.ndarray,
    values_t: np.ndarray,
    energy_valid: np.ndarray,
    valid_t: np.ndarray,
    direction_t: np.ndarray,
    out: np.ndarray,
) -> None:
    """One pass of :func:`local_similarity`: the similarities (rows, n) of stored rows to the probe, into ``out``."""
    n = out.shape[1]
    cross = np.matmul(rows[:, _VALUES], values_t, out=out)  # -2 a.b
    both = rows[:, _VALID] @ energy_valid
    norm_a, common = both[:, :n], both[:, n:]
    norm_b = rows[:, _ENERGY] @ valid_t
    facing = rows[:, _DIRECTION] @ direction_t  # cos of the direction difference
    ok = (common >= MIN_COMMON * N_SPATIAL) & (facing >= _COS_MAX)
    # 1 - |a - b| / (|a| + |b|), computed in place to keep the arrays in cache.
    cross += norm_a
    cross += norm_b
    np.maximum(cross, 0.0, out=cross)
    np.sqrt(cross, out=cross)
    denominator = np.sqrt(norm_a)
    denominator += np.sqrt(norm_b)
    np.maximum(denominator, 1e-12, out=denominator)
    cross /= denominator
    np.subtract(1.0, cross, out=cross)
    cross *= ok


def consolidate(
    sim: np.ndarray,
    probe: Cylinders,
    gallery: Packed,
    transform: dict[str, np.ndarray] | None = None,
    second_pass: bool = True,
) -> np.ndarray:
    """Score per template, shape (T,), from similarities shaped (n, K, T): LSS-R, then the global pairing."""
    n, k, t = sim.shape
    if t == 0 or n == 0 or k == 0:
        return np.zeros(t, np.float64)
    n_b = gallery.count
    n_r = np.minimum(np.minimum(n, n_b), MAX_RELAX)  # per template
    r = int(min(n, k, MAX_RELAX))
    # Candidates: mutually best pairs (i's best partner is j and j's best is i).
    # One-to-one and symmetric in the two prints, and it keeps a minutia with many
    # look-alikes from filling the relaxation on its own. A pair is mutual when its
    # similarity is both its row's and its column's maximum (exact ties, which
    # duplicate removal makes rare, may keep more than one; the largest j is taken).
    row_max = sim.max(axis=1)  # (n, T): best over the template's cylinders
    col_max = sim.max(axis=0)  # (K, T): best over the probe's cylinders
    both = (sim == row_max[:, None, :]) & (sim == col_max[None, :, :])
    both &= sim > 0
    # 1 + the largest mutual j per (i, template), 0 where there is none (k <= MAX_CYLINDERS fits int8).
    last = (both * np.arange(1, k + 1, dtype=np.int8 if k < 127 else np.int16)[None, :, None]).max(axis=1)
    has = last > 0  # (n, T)
    row_j = (last.astype(np.int64) - 1).T  # (T, n); -1 where no mutual partner
    cand_v = np.where(has, row_max, np.float32(0.0)).T  # (T, n)
    pick = np.argpartition(cand_v, n - r, axis=1)[:, n - r :] if r < n else np.tile(np.arange(n), (t, 1))
    vals = np.take_along_axis(cand_v, pick, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")
    pick = np.take_along_axis(pick, order, axis=1)
    vals = np.take_along_axis(vals, order, axis=1)
    i, j = pick, np.maximum(np.take_along_axis(row_j, pick, axis=1), 0)
    rank = np.arange(r)[None, :]
    live = (rank < n_r[:, None]) & (vals > 0)
    lam0 = np.where(live, vals, np.float32(0.0))
    lam0 *= reliability_weights(probe.reliability[i], np.take_along_axis(gallery.reliability, j, axis=1), live)
    pa = (probe.x + 1j * probe.y).astype(np.complex64)[i]
    ua = np.exp(1j * probe.angle).astype(np.complex64)[i]
    pb = np.take_along_axis(gallery.pos, j, axis=1)
    ub = np.take_along_axis(gallery.unit, j, axis=1)
    # Angles are compared as unit complex numbers: the chord |e^ia - e^ib| equals the
    # angle difference to within 1 % below pi/6 (where each angle factor is still
    # about 0.02) and 2.5 % at pi/4, where it has fallen below 5e-4.
    va = pa[:, :, None] - pa[:, None, :]
    vb = pb[:, :, None] - pb[:, None, :]
    da, db = np.abs(va), np.abs(vb)
    rel = ua[:, :, None] * np.conj(ua[:, None, :]) - ub[:, :, None] * np.conj(ub[:, None, :])
    # Radial angle: minutia direction against the direction to the other minutia
    # (with y pointing down, e^{i*theta} * v/|v| carries theta minus v's angle).
    va *= ua[:, :, None]
    # Times the float32 reciprocal: what numpy's complex division by a real divisor computed
    # on the build measured (Smith's rule with a zero imaginary part), without its complex
    # arithmetic; another build may differ in the last bit, which no score depends on.
    va *= np.reciprocal(np.maximum(da, np.float32(1e-6)))
    vb *= ub[:, :, None]
    vb *= np.reciprocal(np.maximum(db, np.float32(1e-6)))
    va -= vb
    da -= db
    rho = _sigmoid32(np.abs(da), MU_1, TAU_1)
    rho *= _sigmoid32(np.abs(rel), MU_2, TAU_2)
    rho *= _sigmoid32(np.abs(va), MU_3, TAU_3)
    # Compatibilities under float32's smallest normal number are set to 0 with the pairs
    # that are not live: such subnormals (a product of three sigmoids, 6 % of the
    # entries in a synthetic search) made every relaxation product several times slower
    # (each arithmetic operation on one takes a microcode assist), and what they add to a
    # relaxed similarity (under 16 x 1.2e-38) is far below its last bit.
    keep = rho >= np.float32(RHO_FLOOR)
    keep &= live[:, :, None]
    keep &= live[:, None, :]
    rho = np.where(keep, rho, np.float32(0.0))
    rho[:, np.arange(r), np.arange(r)] = 0.0
    live_count = live.sum(axis=1)
    norm = np.maximum(live_count - 1, 1)[:, None].astype(np.float32)
    lam = lam0
    for _ in range(N_REL):  # fixed small number of iterations, each over all templates
        lam = W_R * lam + (1.0 - W_R) * np.matmul(rho, lam[:, :, None])[:, :, 0] / norm
    eff = np.where(live, lam / np.maximum(lam0, 1e-12), -1.0)
    nominal = MIN_NP + np.rint(_sigmoid(np.minimum(n, n_b), MU_NP, TAU_NP) * (MAX_NP - MIN_NP))
    n_p = np.minimum(nominal, live_count)
    best = np.argsort(-eff, axis=1, kind="stable")
    lam_sorted = np.take_along_axis(lam, best, axis=1)
    total = np.where(rank < n_p[:, None], lam_sorted, 0.0).sum(axis=1)
    # Divide by the nominal n_P even when fewer pairs exist: few pairs is weak evidence.
    raw = total / np.maximum(nominal, 1)
    excess = np.where(n_p > 0, np.maximum(normalise(raw, nominal) - NULL_CENTRE, 0.0), 0.0)
    # Global consolidation: the relaxed pairs (weighted by relaxed similarity) align the
    # prints, every minutia is paired under that alignment (global_pairing). Only where
    # LSS-R found some evidence: elsewhere the score is 0 whatever the pairing (about
    # half of the impostor comparisons, the bulk of a 1:N search's candidates).
    fraction = np.zeros(t, np.float64)
    some = np.flatnonzero(excess > 0)
    found: dict[str, np.ndarray] = {}
    if len(some):
        rotation, anchor_a, anchor_b = global_pairing.align(
            pa[some], ua[some], pb[some], ub[some], np.where(live, lam, 0.0)[some]
        )
        fraction[some] = global_pairing.paired_fraction(
            (probe.x + 1j * probe.y).astype(np.complex64),
            np.exp(1j * probe.angle).astype(np.complex64),
            global_pairing.hull_planes(probe.x, probe.y),
            gallery.pos[some],
            gallery.unit[some],
            n_b[some],
            gallery.hull_normals[some],
            gallery.hull_offsets[some],
            rotation,
            anchor_a,
            anchor_b,
            found,
        )
    score = combine(excess, fraction)
    if len(some):
        # Orientation-field agreement under the same (refitted) alignment: orientation_field.
        share = np.full(len(some), orientation_field.MISSING_AGREEMENT)
        if probe.field is not None:
            both = np.flatnonzero(gallery.has_field[some])
            if len(both):
                share[both] = orientation_field.agreement(
                    probe.field,
                    gallery.fields,
                    found["rotation"][both],
                    found["probe_anchor"][both],
                    found["gallery_anchor"][both],
                    gallery.field_index[some[both]],
                )
        score[some] *= orientation_field.factor(share)
        second = _second_pass(sim, probe, gallery, score, some, found) if second_pass else np.zeros(len(some))
        if transform is not None:  # for a caller studying the comparison (debug.explain_comparison): not in scoring
            transform.update(some=some, share=share, second=second, **found)
    if transform is not None:
        transform.update(excess=excess, fraction=fraction)
    return score.astype(np.float64)


def reliability_weights(reliability_a: np.ndarray, reliability_b: np.ndarray, live: np.ndarray) -> np.ndarray:
    """Weights (T, r) of the relaxed pairs' initial similarities: ``(r_a r_b)^3`` over its mean on the live pairs.

    r_a, r_b (T, r) are the two minutiae's chances of recurring in another
    impression (their qualities / 100, :func:`biometrics.fingerprint.minutiae.reliability`).
    On a dry or faint print many minutiae are spurious: their cylinders find
    look-alike partners whose similarity is as high as a true pair's, enter the
    relaxation and, being incompatible with the true pairs, drag their relaxed
    similarities down. Weighting by the chance that both minutiae are real lets
    the reliable pairs lead the relaxation. Over the mean, so that a comparison's
    initial similarities keep their average: the evidence stays on the scale of
    NULL_CENTRE (absolute weights lowered every raw score, put more impostors
    and genuine pairs of poor prints at 0, and took DB3's EER from 1.8 to 4.3 %).
    The power sharpens the product (p = 1 / 2 / 3 / 4 / 6 / 8 gave a mean FNMR at
    the refitted 1e-4 threshold of 9.29 / 8.84 / 7.95 / 8.30 / 8.75 / 8.66 %
    on FVC2002, baseline 9.64 %; DB3's EER rose past p = 4). Equal reliabilities
    (a template whose qualities are all unknown: see the cylinders) weigh 1.
    Non-live pairs weigh 0.
    """
    w = reliability_a * reliability_b
    w = w**RELIABILITY_POWER
    w = np.where(live, w, np.float32(0.0)).astype(np.float32)
    mean = w.sum(axis=1, keepdims=True) / np.maximum(live.sum(axis=1, keepdims=True), 1).astype(np.float32)
    # Capped: qualities come from the device, and a template whose qualities single out a few minutiae
    # would otherwise let those few carry the evidence (a heavier impostor tail, measured by the review).
    weights = np.where(mean > 0, w / np.maximum(mean, np.float32(1e-30)), live.astype(np.float32))
    return np.minimum(weights, np.float32(MAX_RELIABILITY_WEIGHT))


def combine(excess: np.ndarray, fraction: np.ndarray) -> np.ndarray:
    """The score: geometric mean of the LSS-R evidence (excess over the impostor centre) and the paired fraction.

    Both must be high: many locally similar, mutually compatible pairs (LSS-R) and
    most minutiae of the common region paired under one alignment (global
    pairing). An impostor rarely has both, a genuine pair nearly always.
    """
    return np.sqrt(np.maximum(excess, 0.0) * np.clip(fraction, 0.0, 1.0))


def normalise(raw: np.ndarray, nominal_pairs: np.ndarray) -> np.ndarray:
    """Evidence-normalised score: the excess over the impostor centre scaled by sqrt(n_P / MAX_NP).

    Impostor scores then spread alike whatever the minutiae counts (see the module
    docstring); clipped at 0 so a score stays a similarity in [0, 1].
    """
    scale = np.sqrt(np.asarray(nominal_pairs, np.float64) / MAX_NP)
    return np.maximum(NULL_CENTRE + (np.asarray(raw, np.float64) - NULL_CENTRE) * scale, 0.0)


def _sigmoid32(v: np.ndarray, mu: float, tau: float) -> np.ndarray:
    """Logistic function in float32, in place on a temporary (overflow to inf gives 0, as it should)."""
    z = v.astype(np.float32)
    z -= np.float32(mu)
    z *= np.float32(-tau)
    np.clip(z, -60.0, 60.0, out=z)
    np.exp(z, out=z)
    z += 1.0
    np.reciprocal(z, out=z)
    return z


def scores(probe: Cylinders, gallery: Packed, scratch: np.ndarray | None = None) -> np.ndarray:
    """Scores (0..1) of the probe against every template: LSS-R evidence and global pairing combined (module docstring).

    These are the scores :func:`biometrics.fingerprint.calibration.threshold_for_fmr` is fitted on.
    ``scratch``: see :func:`local_similarity` (:func:`scratch_for` sizes it).
    """
    out = np.empty(gallery.templates, np.float64)
    out[gallery.order] = consolidate(local_similarity(probe, gallery, scratch), probe, gallery)
    return out


def _subset(gallery: Packed, templates: np.ndarray) -> Packed:
    """The given (sorted) templates of a packed set, for :func:`consolidate` (which reads no rows)."""
    return replace(
        gallery,
        pos=gallery.pos[templates],
        unit=gallery.unit[templates],
        count=gallery.count[templates],
        order=gallery.order[templates],
        hull_normals=gallery.hull_normals[templates],
        hull_offsets=gallery.hull_offsets[templates],
        reliability=gallery.reliability[templates],
        has_field=gallery.has_field[templates],
        field_index=gallery.field_index[templates],
    )


def _second_pass(
    sim: np.ndarray,
    probe: Cylinders,
    gallery: Packed,
    score: np.ndarray,
    some: np.ndarray,
    found: dict[str, np.ndarray],
) -> np.ndarray:
    """Raise, in place, the scores under ``SECOND_PASS_BELOW`` to ``SECOND_PASS_WEIGHT`` x the aligned pairs' score.

    The LSS-R evidence of the first pass comes from the mutually-best cylinder
    pairs; on a dry or speckled mate many true pairs are not mutually best (their
    cylinders hold spurious neighbours), so the evidence is that of a few pairs
    while the global pairing found many. Here the relaxation is run again on
    exactly the minutia pairs the alignment paired (``some``'s ``found``), with
    their cylinder similarities, and the comparison consolidated again from
    them (alignment, pairing, field); being consistent by construction, those
    pairs relax higher for an impostor too, hence the weight (module docstring).
    Returns the weighted second scores of ``some`` (0 where the pass did not run).
    """
    weighted = np.zeros(len(some))
    low = np.flatnonzero((score[some] < SECOND_PASS_BELOW) & (found["pairs"] >= SECOND_PASS_MIN_PAIRS))
    if not len(low):
        return weighted
    templates = some[low]
    b, i = np.nonzero(found["paired_probe"][low])
    j = found["partner"][low][b, i]
    kept = np.zeros((sim.shape[0], sim.shape[1], len(templates)), sim.dtype)
    kept[i, j, b] = sim[i, j, templates[b]]
    weighted[low] = SECOND_PASS_WEIGHT * consolidate(kept, probe, _subset(gallery, templates), second_pass=False)
    score[templates] = np.maximum(score[templates], weighted[low])
    return weighted

