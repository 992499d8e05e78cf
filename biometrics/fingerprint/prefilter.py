"""A cheap first pass for 1:N search: rank the gallery, then score only the best candidates in full.

The full MCC LSS-R score costs 50 to 120 us per template on one core (a 480-wide
matrix product per cylinder pair, then the relaxation). Identification among tens
of thousands cannot afford it for every entry, so each template also gets a
*sketch*: the cylinders of its best-quality minutiae with each pair of adjacent
direction bins summed (480 values -> 240, full spatial resolution), centred and
scaled to unit length (a correlation: every cylinder is dense somewhere, so plain
cosines of these non-negative vectors all sit high and rank poorly), plus the
minutia direction (cos, sin) times DIRECTION_WEIGHT, a mild bonus for facing the
same way. The probe keeps PROBE_ROWS rows, each gallery template GALLERY_ROWS.
A template's raw pre-score is the mean, over the probe's TOP_ROWS best-matched
rows, of each row's best match in the template, each row's match measured against
its own spread over the gallery (see "Probe-row normalisation" below): one matrix
product and a few reductions. In a gallery of at least MIN_CANDIDATES templates both sides are
projected on the gallery's own BASIS_DIM principal directions (:func:`projection`),
about a third of the full sketch's work and memory, and each template's typical impostor pre-score
(:func:`centres`, the median against HUB_SAMPLE of the gallery's own templates,
estimated when the gallery is packed) is subtracted from its raw pre-score:
about 4.5 us per template on one core.

History of the choices (the current constants are below the module docstring;
later paragraphs supersede earlier ones). Chosen on the FVC2002 folders (B sets)
and a synthetic population (200 fingers x 3 impressions), by the share of the
genuine pairs that the full score accepts at the 1e-4 threshold whose mate ranks within the kept fraction of the probe's
impostors (the recall ``bench.fingerprint`` reports): coarser sketches lose it
(2 x 2 spatial cells pooled, uncentred: 97.5 to 100 % at 5 %; a 64- or
96-dimensional principal subspace, or low-frequency DCT terms: worse still: the
identity is in the fine detail); fewer gallery rows lose it (12 instead of 16:
98.1 % on DB1 at 5 %). The 160-dimensional principal subspace of the gallery's
own rows (97 % of their energy) keeps the recall of the full sketch (128
dimensions start to lose it). The probe's rows are the cheap side (the gallery's
rows are what is read from memory for every template) and they buy the most:
with 24 probe rows, 5 % of the gallery kept 99.22 / 99.80 / 100 / 99.79 % of the
mates on DB1-4 and 99.25 % on the synthetic population; with 32 rows, 3 % keeps
99.42 / 99.61 / 100 / 99.79 % and 99.50 % (20 rows at 5 %: DB1 98.06 %), so the
full score, the expensive stage, runs on 40 % fewer candidates.

Hard captures (FVC-like distortion, partial contact, dry skin: the synthetic
generator's ``realistic`` profile) broke that choice: with the 1e-4 threshold
refitted to 0.0656, 200 such fingers (seed 0) kept only 91.9 % of their accepted
mates at 3 % (seed 7: 92.1 %). Two causes, two changes. (1) Hubness: templates
with many dense, generic cylinders find a close row in any probe and outrank the
true mate of a hard probe; subtracting each template's own impostor level
(:func:`centres`) lifts the synthetic recall to 94.3 / 95.9 % and FVC2002 DB1-4
from 99.06 / 99.62 / 99.07 / 99.79 to 99.25 / 99.81 / 99.30 / 99.79 %. (2)
Coverage: in a small-overlap pair the cylinders that the full score pairs lie
past the gallery's 16 best-quality ones (ranks 22 to 46 of 48 in the worst
pairs), so 24 gallery rows: 96.5 / 96.6 % synthetic, 99.81 / 99.43 / 99.07 /
99.79 % FVC2002 (all at 3 %). What is left is a budget limit, not a choice of
rows: the pre-score's cost is GALLERY_ROWS x PROBE_ROWS x dimensions, and the
expected number of truly corresponding rows in a small overlap grows with the
same product; fewer dimensions for more rows lose more precision than the rows
win (32 x 32 rows at 128 dimensions: 96.7 %, 48 x 32 at 48: 84.7 % at 5 %), rows
chosen to spread over the print instead of by quality lose (89.8 % at 3 %
unnormalised), a validity-aware (MCC-like) row similarity changes nothing
(91.8 %), and even every row (48 x 48) reaches only 96.6 % unnormalised. The
remaining misses need geometry (which pairs agree), that is the full score.

Averaging the probe's TOP_ROWS = 5 best-matched rows instead of 3 (same cost:
one partition) moved the recall at 3 % (same templates, hub-centred, 24 x 32
rows) from 96.20 to 96.64 % on the synthetic population (seed 0) and on FVC2002
DB1-4 from 99.81 / 99.42 / 99.10 / 99.79 to 99.62 / 99.81 / 99.55 / 99.79 %
(4 rows: 96.55 %, DB3 99.10 %; 6: 96.38 %; 8: 96.47 %, DB1 99.24 %): a mate
seen in a small overlap has few rows that match it well, and a top-3 mean lets
an impostor with three lucky rows outrank it. On an FVC folder one pair is
0.2 %, so these are small moves, not a cure. What the synthetic population
still loses is out of reach of a second stage at any affordable fraction: its
accepted mates rank within the best 10 / 15 / 25 % of the impostors in 98.8 /
98.9 / 99.5 % of the pairs (top-3 mean), so even a perfect second stage over
the best 15 % stays under 99 %, and the second stages tried over the best 15 to
25 % fell short well before that: :func:`mcc_match.consolidate` (LSS-R, with
geometry) fed with the sketch rows' similarities (98.0 % at 15 %, about 30 us
per candidate: ten times the budget), and a pairwise check of distances,
relative directions and radial angles among each candidate's 8 best row matches
(96.8 %; 97.3 % added to the pre-score, at 25 %). A cheaper first pass over the
gallery's first 8 or 12 rows ahead of this one loses mates (92 to 95.7 %).
Estimating each template's centre from HUB_SAMPLE = 64 sample probes instead of
32 (a better median; only a fit costs more) moved it further, to 97.08 % on the
synthetic population and 99.81 / 99.62 / 99.55 / 99.79 % on DB1-4 (128: 97.26 %
but DB3 99.33 %; the 75th percentile instead of the median: 96.91 %).

Binarised cylinders compared with popcount (MCC's bit variant) were considered:
in numpy, XOR plus ``bitwise_count`` over every cylinder pair moves more memory
than the float product it replaces, and a Hamming distance of 0/1 vectors computed
as a matrix product costs the same as the float one. The saving has to come from
fewer, smaller rows, which is what pooling and the projection give. The float product
itself runs near the core's peak when its rows are in cache (measured: the pre-filter's
cost follows its multiply-adds, not its block size; since the third round the
same products are taken as small batches, up to 30 % faster per block on one core:
:func:`block_best`), so what is left to trade is rows and dimensions, as above. (A
gallery of 2,000 templates is 36 MB of projected rows, more than this VM's share of
the last-level cache: there the products ran at half their in-cache rate until the
fourth round's read-ahead, see below.)

Probe-row normalisation (second round). The top-rows mean above lets a probe's
generic rows (dense cylinders of common ridge flow, which find a close row in
every template) decide the ranking. Each probe row's best match in each template
is now scored against that row's own distribution over the gallery (mean and
spread over every template searched: :func:`row_stats`), and the pre-score is the
mean of the TOP_ROWS best of these z-scores (:func:`aggregate`), hub-centred as
before. With the earlier rows (32 x 24, 160 dimensions) the recall at 3 % went
from 96.98 to 98.40 % on the synthetic population (seed 0; FVC2002 DB1-4 99.81 /
99.62 / 98.77 / 99.40 -> 100 / 99.81 / 99.38 / 99.60 %), and it changed which
rows pay: with it, the gallery's rows matter more than the probe's or the
dimensions (same cost, about 130k products per template: 32 x 32 rows at 128
dimensions 98.9 to 99.1 %, 24 x 40 at 128 99.0 %, 32 x 40 at 96 98.9 %; 145k:
32 x 40 at 112 99.3 %, 32 x 32 at 144 99.2 %, 48 x 32 at 112 98.9 %; 166k:
32 x 32 at 160 99.4 %; all with the 1e-4 threshold of 0.1452). The refit
threshold that came with the paired fraction's free pairs (0.1765) accepts fewer
of the hardest genuine pairs, and there the dimensions buy little: 32 x 40 rows
keep at 64, 72, 80, 96 and 112 dimensions
respectively 98.97 / 99.25 / 99.53 / 99.44 / 99.72 % (32 x 32 at 96: 99.25 %, 24
x 40 at 96: 99.25 %). Hence PROBE_ROWS = 32, GALLERY_ROWS = 40 and BASIS_DIM =
80 (104k products per template, 124k before this round): 99.53 % synthetic and
99.62 / 99.81 / 100 / 100 % on DB1-4, and 1:N about 13 % faster than before
(CPU time, measured interleaved). On a second synthetic population (seed 1) the
recall went from 98.08 % (before this round) to 99.14 % (96 and 112 dimensions:
99.14 % too, 64: 98.56 %); TOP_ROWS = 5 stays (3 to 8 rows: 99.07 to 99.53 % on
seed 0, 98.85 to 99.14 % on seed 1). After the extractor's flow term and the threshold's refit
to 0.1617 (seed 0 templates extracted again): 97.08 % before this round, 98.81 %
at 80 dimensions, 98.91 % at 96, 99.18 % at 112 (32 x 40 rows; 40 x 40 at 80:
98.72 %, 32 x 48 at 80: 98.81 %, 32 x 32 at 128: 98.91 %). 112 dimensions would
pay for that with the whole speed gain (1:N at the speed of the earlier rows,
where 80 dimensions are 18 % faster by CPU time, measured interleaved), so 80 it is.
(28 probe rows cost more, not less: a product 28 columns wide runs slower than
one 32 wide.) Normalising each template's pre-score by its own spread as well as
its centre changed nothing measurable (98.9 to 99.1 %); the row statistics as
median and MAD instead of mean and spread: no better. A cheaper first pass over
the first 48 or 64 principal dimensions keeps only 99.47 % of the mates within
its best 25 %, so a two-stage pre-filter would lose what this one wins.
Then the row statistics left out each row's best match (:func:`row_stats`: a
probe that is itself in the gallery, at a refit or in the benchmark, no longer
inflates every row's spread): 98.81 % synthetic, 99.81 / 99.81 / 98.72 / 100 % on
FVC2002 DB1-4 (their galleries are only 80 templates).

Third round: issue 14 asks for 100,000 comparisons per second per core with this
recall at 99 % or more on every set. The search was first made cheaper without
changing any full score (the global pairing reduces over its few costs below 1,
and :func:`block_best` takes its products SUB_BLOCK templates at a time), and the
time gained went into dimensions. At 3 %, 40 gallery rows kept 98.91 / 98.91 /
99.09 / 99.18 % of the synthetic population's mates (seed 0) at 96, 104, 110 and
112 dimensions, and DB3 (the worst FVC2002 folder) 99.36 / 99.36 / 99.57 / 99.57 %;
at 112 dimensions seed 7 kept 99.81 % (99.25 % at 80) and DB1-4 99.81 / 100 /
99.57 / 100 %. 36 gallery rows at 112 kept 99.09 % (seed 0) and the same on
FVC2002 for 10 % fewer products, but after the extractor's next changes (same
code otherwise) seed 0 fell to 98.99 % with 36 rows and 99.17 % with 40 (80
dimensions: 98.44 %; 40 rows at 96 or 104: 98.99 %; 36 rows at 128: 99.26 % for
about the cost of 40 at 112, and slower), DB1-4 99.62 / 100 / 100 / 100 %. 32
gallery rows lose it (98.91 %, seed 0 before those changes), and so do 24 probe
rows at 112 or 128 dimensions (98.81 / 99.00 %); 28 probe rows at 96 dimensions
kept 99.18 %, but a product 28 columns wide runs as slowly as a 32-wide one of 112
dimensions. Hence GALLERY_ROWS = 40 and BASIS_DIM = 112: 39 % more multiply-adds
per template than 80 dimensions, paid for by the cheaper search. The synthetic
recall at seed 0 is one or two mates above the 99 % line (9 misses of 1,088):
these are small moves on few pairs. At the calibration's final refit (1e-4 at
0.142, a stricter threshold: fewer hard pairs count) the benchmark measured
99.19 % synthetic and 99.62 / 100 / 99.79 / 100 % on DB1-4.

Fourth round: the same rankings and full scores, bit for bit, for less CPU time (the
synthetic population's 1:N search sat at 97 to 99k comparisons per second per core,
at the 100k line). Profiled per search of the 2,000-template synthetic gallery: the
pre-filter's products 9 ms of 21, the candidates' local similarities 4.5, their
consolidation 4 (half of it the global pairing), the gather of their rows 1.7.
:func:`block_best` was bound by memory, not by its multiply-adds: its small batched
products read their operands in place and reach 150 GFLOP/s on one core with a batch
in cache, 73 with the gallery streamed from memory; a strided pass that touches one
float per cache line of a batch just before its products (a sequential read, which
the hardware prefetches) brings that back to about 8.2 ms from 8.7 (SUB_BLOCK = 48:
a batch in the 2 MB L2; 32 to 96 were within noise of it, reading every other line
was slower than not reading ahead). It pays only for one thread scanning alone: with
two threads scanning blocks at once it made searches slower than without it, so a
gallery searched on several worker threads does without it. The rest: the local
similarities' products taken gallery rows first (:func:`mcc_match.local_similarity`),
the hull test laid out edge-major, the pairing costs' squared lengths and the
relaxation's geometry without einsum or complex division, the probe's pooled sketch
by one addition (:func:`_pool`). Measured interleaved with the previous code on the
same 2,000 templates (single-threaded BLAS, rounds of 10 probes as ``bench.fingerprint``
times them, 12 to 16 rounds each): on one worker, median 101k -> 112k comparisons per
second (best round 104k -> 115k; without the read-ahead 97k -> 103k), on two worker
threads 126k -> 135k; the same candidates and scores on every probe, and the
prescores and the full scans of the four FVC2002 folders unchanged too.
``bench.fingerprint --synthetic 200 --workers 2`` then reported 112.6k, 106.0k and
103.0k comparisons per second per core in three runs (median rounds 104k, 100k and
96k; other jobs shared the machine), with the same recall, 99.19 %; FVC2002 DB1-4
125k / 117k / 132k / 107k, recall 99.62 / 100 / 99.79 / 100 %, EER and FNMR
unchanged. Tried and dropped: float16 gallery rows (numpy's and OpenCV's conversions
cost more than the memory they save), reading the candidates' rows ahead of their
gather or gathering them in cache-sized chunks (the gather is bound by memory either
way), (t, n) layouts for :func:`row_stats` and :func:`aggregate` (no faster), one
product for the valid-cell counts and both energies (twice the multiply-adds, slower).

Fifth round: again the same rankings and scores, bit for bit on the OpenBLAS kernel
measured (SkylakeX; other kernels, such as Haswell's or Zen's, differ in the last bits,
up to about 1e-7 in a score, as one product already did between group sizes). The pre-filter's
products are near their floor on this VM (per search, about 1.6 ms to stream its 36 MB
of rows and 4.2 ms of products with a batch in cache, 7.5 to 8.3 ms together; batches
laid out contiguously or of 24 to 64 templates, or a reused product buffer: no faster;
float16 rows would cost about 12 ms of numpy conversions per search, and int8 rows
would change the rankings). So the candidates' side went: their rows are no longer
gathered into a buffer and read back, they are copied and used a few hundred at a time
(:func:`mcc_match.local_similarity`; in one profile under load, gather plus local
similarities 8.8 -> 7.0 ms per search), and the relaxation no longer multiplies
subnormal compatibilities (:data:`mcc_match.RHO_FLOOR`). Interleaved with the fourth
round's code on the same gallery (one worker, single-threaded BLAS, rounds of 10
searches, other jobs on the 2-core machine), median paired ratios: the passes alone
1.026 and 1.109 by wall time, 1.025 and 1.066 by CPU time; with the relaxation's floor
too, 1.114, 1.070 and (on a calm machine, 20 rounds: medians 111k -> 122k) 1.099 by
wall time, 1.092, 1.067 and 1.096 by CPU time (sessions of 12 to 24 rounds); on two
worker threads 1.076; the same prescores, candidates and full scores on all 600
synthetic and 80 DB2 probes. ``bench.fingerprint --synthetic 200 --workers 2`` reported
125.2k comparisons per second per core (median round 123.0k) against 112.8k (108.9k)
for the fourth round's code run just after it, FVC2002 DB2 125.8k (123.7k) against
115.1k (114.2k), every accuracy figure identical (recall 99.19 and 100 %).
Tried and dropped: the candidates' rows read template by template (runs of consecutive
rows) instead of rank by rank (no faster).

Sixth round (same prescores, candidates and full scores bit for bit, checked on every
probe of FVC2002 DB1 and DB2 against a gallery of 2,000 and in all pairs): each block is
stored as SLABS slabs, one per :func:`block_best` batch, each batch's GALLERY_ROWS x
SUB_BLOCK rows one contiguous 0.9 MB run (:func:`slab_best`), where a batch used to be
40 runs of 22 kB at a stride of 228 kB (57 pages) across the block. The read-ahead then
streams one sequential run. The fifth round found contiguous batches no faster; measured
again with whole searches alternated round by round in one process against the old
layout (one worker, single-threaded BLAS, DB1 gallery of 2,000 as ``bench.fingerprint``
builds it, 30 rounds of 10 searches, CPU time): paired median ratios 1.079, 1.070 and
1.028 on DB1, 1.035 and 1.038 on DB2, with the block scans alone 9.9 -> 8.9 ms per search
(median of 8 rounds; 11.4 -> 9.7 in 16 rounds). The batches themselves must not move:
OpenBLAS's small-matrix kernel sums an entry in an order that depends on the batch's
width and the entry's place in it (most widths from 2 to 47 give other last bits than
48, measured on random rows), so a slab holds exactly one batch of :func:`batches`. The
price is the last slab's unused columns (528 slots per block of 512: 3 % more memory).
Then each batch's products went ROW_CHUNK gallery rows at a time (:func:`slab_best`: a
whole batch and its products overflow this VM's 1 MB L2 per core), a gain of 0 to 4 %.
Both together, against the fifth round's code in one process (the same gallery of 2,000,
rounds of 10 searches alternated, 30 each, CPU time; identical candidates, scores and
prescores on all 80 probes checked first): paired median ratios 1.065 and 1.043 on DB1,
1.035 and 1.031 on DB2, 1.071 on DB3, 1.060 on DB4. ``bench.fingerprint --data DIR --workers 1 --search-workers 1``
pinned to one core, runs alternated with the fifth round's code while other tenants
loaded the host: DB1 ``comparisons_per_s_per_core`` 113.8k -> 150.1k (median of five
runs), its median round 96.6k -> 142.1k, ``comparisons_per_cpu_s_per_core`` 131.6k ->
150.2k (an earlier batch of four runs: CPU 144k -> 150k); DB2 121.8k -> 114.5k, 114.7k
-> 91.1k and 135.3k -> 127.2k in the same five runs, 129k -> 133k by CPU time in the
batch of four: runs in separate processes moved by more than this round's gain, the
paired rounds above did not. EER, FNMR and pre-filter recall identical in every run
(DB1 0.987 %, 1.429 / 2.143 %, 99.09 %; DB2 0.714 %, 4.643 / 6.429 %, 99.62 %). Not
measured: searches spread over two worker threads (the blocks are then scanned without
read-ahead, in the same slabs).

The pre-score only chooses which templates get the full score; the scores
reported and thresholded are always the full ones (:func:`mcc_match.scores`).
How many candidates survive is :func:`candidates`' rule; what fraction of the
genuine mates that the full score would accept fall outside it is measured by
``bench.fingerprint`` (``prefilter_recall``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from biometrics.fingerprint.cylinders import CELL_X, CELL_Y, N_SPATIAL, ND, NS, RADIUS, Cylinders

PROBE_ROWS = 32  # cylinders come sorted by minutia quality: the best ones
GALLERY_ROWS = 40  # per enrolled template; the cost is PROBE_ROWS x GALLERY_ROWS row products (see the docstring)
SPATIAL_BLOCK = 1  # cells per block side (coarser loses too much: see the module docstring)
DIRECTION_BLOCK = 2  # direction bins per block
DIRECTION_WEIGHT = 0.5
TOP_ROWS = 5  # 3 until the incremental gallery: see the module docstring
MIN_CANDIDATES = 64  # galleries up to this size are scored in full
CANDIDATE_FRACTION = 0.03
BASIS_DIM = 112  # principal directions kept (of 240): see projection()
SKETCH_ROWS = max(PROBE_ROWS, GALLERY_ROWS)  # a stored sketch serves as probe and as gallery entry
BASIS_SAMPLE = 8192  # gallery sketch rows the principal directions are estimated from
BLOCK_TEMPLATES = 512  # templates per pre-scoring block (one thread's work item)
SUB_BLOCK = 48  # templates per batch of products inside a block (see block_best)
LINE_FLOATS = 16  # float32 per 64-byte cache line: block_best's read-ahead touches one of each
SLABS = -(-BLOCK_TEMPLATES // SUB_BLOCK)  # batches per stored block, each its own contiguous slab (slab_best)
ROW_CHUNK = 20  # gallery rows per product call in slab_best: a chunk's rows and products fit a 1 MB L2
HUB_SAMPLE = 64  # gallery templates probed at each fit to centre each template's pre-scores (32 lost mates)
MIN_SPREAD = 1e-3  # floor of a probe row's spread over the gallery (a gallery of one or identical templates)


def _pooling() -> np.ndarray:
    """0/1 matrix (N_SPATIAL * ND, D) summing cells into spatial x direction blocks."""
    cell = 2.0 * RADIUS / NS
    side = int(np.ceil(NS / SPATIAL_BLOCK))
    bx = np.floor((CELL_X + RADIUS) / (cell * SPATIAL_BLOCK)).astype(np.int64)
    by = np.floor((CELL_Y + RADIUS) / (cell * SPATIAL_BLOCK)).astype(np.int64)
    _, block = np.unique(by * side + bx, return_inverse=True)
    nd = ND // DIRECTION_BLOCK
    column = (block[:, None] * nd + np.arange(ND)[None, :] // DIRECTION_BLOCK).ravel()  # per (cell, direction)
    pool = np.zeros((N_SPATIAL * ND, int(block.max() + 1) * nd), np.float32)
    pool[np.arange(N_SPATIAL * ND), column] = 1.0
    return pool


POOL = _pooling()
SKETCH_WIDTH = POOL.shape[1] + 2


def _pool(values: np.ndarray) -> np.ndarray:
    """``values @ POOL``: with full spatial resolution and pairs of direction bins, one addition of strided views.

    A cylinder's values are cell-major with the ND direction bins of a cell
    adjacent, so POOL sums each even bin with the next one: the same two terms
    as the product (whose other terms are exact zeros), hence the same values,
    without a 480 x 240 product per template (a tenth of a millisecond per search).
    """
    if SPATIAL_BLOCK == 1 and DIRECTION_BLOCK == 2:
        return values[:, 0::2] + values[:, 1::2]
    return values @ POOL


def sketch(c: Cylinders, rows: int = SKETCH_ROWS) -> np.ndarray:
    """Sketch rows of a template's best ``rows`` cylinders, float32 (min(n, rows), SKETCH_WIDTH)."""
    k = min(len(c), rows)
    pooled = _pool(c.values[:k])
    pooled -= pooled.mean(axis=1, keepdims=True)  # correlation, not cosine: every cylinder is dense somewhere
    pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-6)
    a = c.angle[:k]
    turn = DIRECTION_WEIGHT * np.stack([np.cos(a), np.sin(a)], axis=1)
    return np.hstack([pooled, turn]).astype(np.float32)


def projection(sketches: list[np.ndarray]) -> np.ndarray | None:
    """The gallery's own principal subspace of sketch rows, as a (SKETCH_WIDTH, BASIS_DIM + 2) matrix.

    The pre-score's cost is the bytes and products of the gallery's sketch rows;
    their energy is concentrated (on FVC2002 and synthetic galleries the first
    160 of 240 principal directions carry about 97 % of it), so projecting both
    sides on that subspace keeps the correlations that rank candidates while most
    of the work goes away (BASIS_DIM: see the module docstring). It is estimated on the gallery itself (up to
    BASIS_SAMPLE rows taken evenly across it), so it follows the sensor, and
    recomputed whenever the gallery is repacked. The direction columns pass
    through unchanged. None (no projection) for galleries smaller than
    MIN_CANDIDATES, which are scored in full anyway.
    """
    if len(sketches) < max(MIN_CANDIDATES, 1):
        return None
    step = max(1, len(sketches) * GALLERY_ROWS // BASIS_SAMPLE)
    rows = np.concatenate([s[:GALLERY_ROWS, :-2] for s in sketches[::step]]).astype(np.float64)
    _, vectors = np.linalg.eigh(rows.T @ rows)  # ascending eigenvalues
    basis = vectors[:, ::-1][:, :BASIS_DIM]
    out = np.zeros((SKETCH_WIDTH, BASIS_DIM + 2), np.float32)
    out[:-2, :-2] = basis
    out[-2:, -2:] = np.eye(2)
    return out


def pack(sketches: list[np.ndarray], project: np.ndarray | None = None) -> np.ndarray:
    """Stack the first GALLERY_ROWS rows of sketches row-rank major, (GALLERY_ROWS * T, SKETCH_WIDTH).

    Row r of template t sits at r * T + t, so the best match over a template's rows
    is an elementwise maximum of GALLERY_ROWS contiguous slices (vectorised), not a
    reduction along a short inner axis. Padding rows are zero. With ``project``
    (see :func:`projection`) the rows are stored projected; the probe's sketch
    must then be projected with the same matrix.
    """
    out = np.zeros((GALLERY_ROWS, len(sketches), SKETCH_WIDTH), np.float32)
    for i, s in enumerate(sketches):  # one copy per template
        r = min(len(s), GALLERY_ROWS)
        out[:r, i] = s[:r]
    flat = out.reshape(-1, SKETCH_WIDTH)
    return flat if project is None else flat @ project


def prescores(probe: np.ndarray, packed: np.ndarray) -> np.ndarray:
    """Pre-score of a probe sketch (its first PROBE_ROWS rows) against packed sketches (:func:`pack`), shape (T,).

    The probe's rows are normalised over these templates (:func:`aggregate`).
    """
    t = len(packed) // GALLERY_ROWS
    rows = np.ascontiguousarray(packed).reshape(GALLERY_ROWS, t, packed.shape[1])
    best = block_best(np.ascontiguousarray(probe[:PROBE_ROWS].T), rows)
    return aggregate(best, row_stats(best))


def hub_sample(total: int) -> np.ndarray:
    """Indices of the gallery templates used as probes to estimate :func:`centres` (evenly spread, sorted)."""
    if total < max(MIN_CANDIDATES, 2):
        return np.zeros(0, np.int64)
    return np.unique(np.linspace(0, total - 1, min(HUB_SAMPLE, total)).astype(np.int64))


def centres(raw: np.ndarray, sample: np.ndarray) -> np.ndarray:
    """Each template's typical impostor pre-score: the median of its pre-scores against the sample probes.

    ``raw`` is (len(sample), T), the pre-scores of the gallery's own templates
    ``sample`` as probes; a probe's score against itself is left out. Subtracted
    from every pre-score, it removes the template's own level ("hubness"): a
    template with many dense, generic cylinders finds a close row in any probe
    and outranks the true mate of a hard probe, while the mate's excess over its
    own level is what identifies it. The median ignores the few sample probes
    that are the template's own finger. Zeros when ``sample`` is empty.
    """
    total = raw.shape[1] if raw.ndim == 2 else 0
    if len(sample) == 0 or total == 0:
        return np.zeros(total, np.float32)
    scores = raw.astype(np.float32, copy=True)
    scores[np.arange(len(sample)), sample] = np.nan
    return np.nanmedian(scores, axis=0).astype(np.float32)


def candidates(pre: np.ndarray, keep_at_least: int = 0) -> np.ndarray:
    """Indices of the templates to score in full: the best max(MIN_CANDIDATES, CANDIDATE_FRACTION) by pre-score.

    ``keep_at_least`` raises the count (a search asking for many results). Returned
    sorted, so gathering them keeps memory order.
    """
    total = len(pre)
    m = max(MIN_CANDIDATES, int(np.ceil(CANDIDATE_FRACTION * total)), keep_at_least)
    if m >= total:
        return np.arange(total)
    return np.sort(np.argpartition(-pre, m - 1)[:m])


REFIT_CHANGE = 0.25  # refit the subspace and the centres once adds plus removes reach this fraction of the gallery


def _lines(rows: np.ndarray) -> np.ndarray | None:
    """(GALLERY_ROWS, t * D) view of a block's rows, one float per 64-byte cache line; None if not laid out so."""
    g, t, d = rows.shape
    item = rows.itemsize
    if t == 0 or rows.strides[2] != item or rows.strides[1] != d * item:
        return None
    flat = np.lib.stride_tricks.as_strided(rows, shape=(g, t * d), strides=(rows.strides[0], item), writeable=False)
    return flat[:, ::LINE_FLOATS]


def batches(t: int) -> list[tuple[int, int]]:
    """:func:`block_best`'s batches of templates, (lo, hi): SUB_BLOCK each, never one template alone.

    A batch of one would be a matrix-vector product, which BLAS sums in another
    order than the matrix products of the other batches: that template's best
    matches (and through :func:`row_stats` every pre-score) would then depend, in
    the last bit, on where it sits in its block. A last batch of one joins the one before.
    """
    bounds = [(lo, min(lo + SUB_BLOCK, t)) for lo in range(0, t, SUB_BLOCK)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds[-2:] = [(bounds[-2][0], t)]
    return bounds


def block_best(probe_t: np.ndarray, rows: np.ndarray, read_ahead: bool = True) -> np.ndarray:
    """Each probe row's best match in each template, (n, t), for a projected probe transposed ((D, n)).

    ``rows`` are (GALLERY_ROWS, t, D) (a block, or a view of its filled columns).
    The templates are taken SUB_BLOCK at a time, each a batch of GALLERY_ROWS small
    products whose similarities ((GALLERY_ROWS, SUB_BLOCK, n) float32, under 0.5 MB)
    are reduced while in cache. Measured on one core, the same multiply-adds ran
    about 30 % faster this way than as one tall product per block with the block in
    cache (and a tall product per 64 to 256 templates was no faster than per 512):
    the small batched products take another BLAS code path. In a whole search,
    where the blocks are read from memory, the gain was about 8 %. Its float32 sums may differ from the tall
    product's in the last bit for some probe widths (the best matches by at most 2.4e-7,
    measured); the full scores do not depend on it.

    Read ahead (fourth round): that BLAS path reads its operands where they lie,
    without packing them, and from main memory it runs at half its in-cache rate
    (a gallery of 2,000 templates is 36 MB of rows: measured 73 against 150
    GFLOP/s on one core of the 2-core VM, whose share of the last-level cache
    holds about 10 MB). So each batch is first read by a cheap pass that touches
    one float per cache line (a strided maximum: a sequential stream that the
    hardware prefetches at full bandwidth), and the product then finds it in the
    core's cache. Same products, same values; SUB_BLOCK = 48 keeps a batch (0.9 MB)
    in the 2 MB L2. Measured on its own, block_best took about 5 % less CPU time,
    and a whole search one worker about 5 % less. Only for one thread scanning
    alone (``read_ahead``, :class:`biometrics.fingerprint.matcher.GalleryIndex`
    sets it): with two threads scanning blocks at once on the 2-core VM, searches
    were 4 to 15 % slower with it than without (and about 7 % faster than before this
    round without it); two searches at once on one thread each, as the verifier's
    match workers run them, about 7 % slower (so a search started while another
    scans does not read ahead either).

    On OpenBLAS's Haswell kernels (an AMD EPYC VM with AVX2 but no AVX-512) these
    small products run far from the core's peak: 27 to 33 GFLOP/s with the rows read from memory,
    against 66 to 72 for a large square product on the same core, and a search of
    2,000 templates spent 15 to 19 of its 28 ms here. Each batch laid out as one
    contiguous (GALLERY_ROWS, SUB_BLOCK, D) slab and taken as one tall product
    measured 17.0 against 19.2 ms per 2,048 templates (interleaved, 12 rounds):
    about 7 % of a search, and not the same sums in the last bit; not taken.
    """
    t, n = rows.shape[1], probe_t.shape[1]
    if n == 0 or t == 0:
        return np.zeros((n, t), np.float32)
    out = np.empty((t, n), np.float32)
    lines = _lines(rows) if read_ahead else None
    d = rows.shape[2]
    for lo, hi in batches(t):
        if lines is not None:
            lines[:, lo * d // LINE_FLOATS : -(-hi * d // LINE_FLOATS)].max()  # read ahead (see above)
        np.max(np.matmul(rows[:, lo:hi], probe_t), axis=0, out=out[lo:hi])
    return np.ascontiguousarray(out.T)


def slab_best(probe_t: np.ndarray, slabs: np.ndarray, t: int, read_ahead: bool = True) -> np.ndarray:
    """:func:`block_best` of a block stored as slabs, (SLABS, GALLERY_ROWS, SUB_BLOCK, D), of which ``t`` are filled.

    Slab s holds the templates of block_best's batch s (:func:`batches`), each batch
    one contiguous 0.9 MB stretch of memory instead of GALLERY_ROWS stretches of 22 kB
    spread over the block (228 kB apart): the read-ahead then streams one sequential
    run, and the products read their rows from it (sixth round: :func:`block_best`'s
    products are memory-bound in a search). Same batches, same products of the same
    shapes, so the same values bit for bit: OpenBLAS's small-matrix kernel sums an
    entry in an order that depends on the batch's width and the entry's place in it
    (measured: most widths from 2 to 47 give other last bits than 48), so the
    batches must stay :func:`batches`' ones. A last batch of SUB_BLOCK + 1 (a lone
    template joined to the batch before it) is copied into one (GALLERY_ROWS,
    SUB_BLOCK + 1, D) array first: it spans two slabs.

    A batch's products are taken ROW_CHUNK gallery rows at a time, each chunk read
    ahead just before its products: the same products (one per gallery row, as
    numpy's batched matmul calls them), and a maximum is exact in any order. A whole
    batch (0.9 MB of rows and 0.25 MB of products) overflows this VM's 1 MB L2 per
    core; half of it does not. A small gain, where the products are widest: whole
    searches alternated round by round with the whole batch at once (one worker, 30
    rounds of 10), paired median ratios 1.013 to 1.037 on FVC2002 DB2 (three sessions,
    probes of 32 rows) and 0.992 to 1.027 on DB1 (five); chunks of 10 or 14 rows: 0.997
    and 1.003 on DB1.
    """
    n = probe_t.shape[1]
    if n == 0 or t == 0:
        return np.zeros((n, t), np.float32)
    out = np.empty((t, n), np.float32)
    flat = slabs.reshape(slabs.shape[0], slabs.shape[1], -1)  # (SLABS, GALLERY_ROWS, SUB_BLOCK * D), a view
    d = slabs.shape[3]
    g = slabs.shape[1]
    for lo, hi in batches(t):
        s, width = lo // SUB_BLOCK, hi - lo
        best = out[lo:hi]
        if width > SUB_BLOCK:  # the lone last template joins this batch (see batches): the copy reads both slabs
            rows = np.concatenate([slabs[s], slabs[s + 1, :, : width - SUB_BLOCK]], axis=1)
            np.maximum.reduce(np.matmul(rows, probe_t), axis=0, out=best)
            continue
        for r in range(0, g, ROW_CHUNK):
            if read_ahead:  # see block_best: one sequential run
                flat[s, r : r + ROW_CHUNK, : width * d : LINE_FLOATS].max()
            chunk = np.maximum.reduce(np.matmul(slabs[s, r : r + ROW_CHUNK, :width], probe_t), axis=0)
            if r == 0:
                best[...] = chunk
            else:
                np.maximum(best, chunk, out=best)
    return np.ascontiguousarray(out.T)


def row_stats(best: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each probe row's mean best match over a gallery and its spread, (n, 1) each (see :func:`aggregate`).

    Both leave out the row's single best match (from three templates on): that is
    the one template the row may truly match (the mate in a search, the probe
    itself when a hub sample of the gallery's own templates is scored at a refit,
    or in the benchmark), and one perfect match among a few hundred would inflate
    the spread that every other template's z-score is measured against.
    """
    n, t = best.shape
    if t == 0:
        ones = np.ones((n, 1), np.float32)
        return 0.0 * ones, ones
    if t < 3:
        return best.mean(axis=1, keepdims=True), np.maximum(best.std(axis=1, keepdims=True), np.float32(MIN_SPREAD))
    b = best.astype(np.float64)
    top = b.max(axis=1, keepdims=True)
    mean = (b.sum(axis=1, keepdims=True) - top) / (t - 1)
    var = np.maximum(((b * b).sum(axis=1, keepdims=True) - top * top) / (t - 1) - mean * mean, 0.0)
    return mean.astype(np.float32), np.maximum(np.sqrt(var), MIN_SPREAD).astype(np.float32)


def aggregate(best: np.ndarray, stats: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Raw pre-scores (t,) from :func:`block_best`'s (n, t): the mean of each template's TOP_ROWS best z-scores.

    Each probe row's best match is scored against that row's own distribution over
    the gallery (``stats``, :func:`row_stats`): a generic probe cylinder (dense,
    common ridge flow) finds a close row in every template and says nothing, while
    a distinctive one that finds its match stands out by several spreads. Without
    it the top-rows mean is dominated by the generic rows (see the module docstring).
    """
    n = best.shape[0]
    if n == 0:
        return np.zeros(best.shape[1], np.float32)
    z = best - stats[0]
    z /= stats[1]
    m = min(TOP_ROWS, n)
    if m < n:
        z = np.partition(z, n - m, axis=0)[n - m :]
    return z.mean(axis=0)


class SketchIndex:
    """The pre-filter's side of a gallery: sketches, principal subspace, packed blocks and hub centres.

    Kept up to date incrementally, so that an enrollment's duplicate search does
    not pay for the whole gallery again. Templates added since the last
    :meth:`sync` are pending: the next sync projects their sketches into the
    newest block and estimates each one's centre against the stored sample
    probes (HUB_SAMPLE sketches, already projected): well under a millisecond
    per template.
    The principal subspace, the blocks and every centre are refitted from
    scratch only when the templates added plus removed since the last fit reach
    REFIT_CHANGE of its size (or it first reaches MIN_CANDIDATES templates; a
    gallery whose people come and go at the same rate refits too): a refit costs about
    HUB_SAMPLE searches of the whole gallery, amortised over a quarter of its
    size in adds. Between fits the subspace is the one fitted on the older
    gallery (its energy spectrum changes slowly with a few more templates of the
    same sensor), and the earlier templates' centres are not re-estimated.
    Removal compacts the blocks and centres (one copy, no refit).
    """

    def __init__(self) -> None:
        self._sketches: list[np.ndarray] = []  # every template's SKETCH_ROWS sketch, insertion order
        self._projection: np.ndarray | None = None
        self._blocks: list[np.ndarray] = []  # (SLABS, GALLERY_ROWS, SUB_BLOCK, D) each, projected (slab_best)
        self._packed = 0  # templates laid out in the blocks (the rest are pending)
        self._centres = np.zeros(0, np.float32)
        self._probes: list[np.ndarray] = []  # the hub sample's projected probe sketches
        self._probe_stats: list[tuple[np.ndarray, np.ndarray]] = []  # their rows' row_stats at the fit
        self._fitted_at = -1  # gallery size at the last fit
        self._changed = 0  # templates added plus removed since the last fit

    def __len__(self) -> int:
        return len(self._sketches)

    @property
    def fitted_at(self) -> int:
        """Gallery size when the subspace and centres were last fitted (-1: never)."""
        return self._fitted_at

    def add(self, probe_sketch: np.ndarray) -> None:
        """Append a template by its :func:`sketch` (SKETCH_ROWS rows: a probe uses PROBE_ROWS, an entry the rest)."""
        self._sketches.append(np.asarray(probe_sketch, np.float32))
        self._changed += 1

    def remove(self, keep: np.ndarray) -> None:
        """Keep only the templates where ``keep`` (bool, one per template) is true; order is kept."""
        keep = np.asarray(keep, bool)
        self._sketches = [s for s, k in zip(self._sketches, keep, strict=True) if k]
        self._changed += int((~keep).sum())
        packed_keep = keep[: self._packed]
        if self._packed:
            stacked = np.concatenate(self.blocks(), axis=1)[:, packed_keep]
            self._packed = int(packed_keep.sum())
            self._blocks = []
            self._append_blocks(stacked)
            self._centres = self._centres[packed_keep]

    def _append_blocks(self, rows: np.ndarray) -> None:
        """Lay (GALLERY_ROWS, t, D) projected rows after the packed templates (self._packed counts them already).

        Template i of a block sits in slab i // SUB_BLOCK, column i % SUB_BLOCK (see :func:`slab_best`).
        """
        done = self._packed - rows.shape[1]
        pos = 0
        while pos < rows.shape[1]:
            slot = done % BLOCK_TEMPLATES
            if slot == 0:
                self._blocks.append(np.zeros((SLABS, GALLERY_ROWS, SUB_BLOCK, rows.shape[2]), np.float32))
            s, col = divmod(slot, SUB_BLOCK)
            take = min(SUB_BLOCK - col, BLOCK_TEMPLATES - slot, rows.shape[1] - pos)
            self._blocks[-1][s, :, col : col + take] = rows[:, pos : pos + take]
            pos += take
            done += take

    def _projected(self, sketches: list[np.ndarray]) -> np.ndarray:
        flat = pack([s[:GALLERY_ROWS] for s in sketches], self._projection)
        return flat.reshape(GALLERY_ROWS, len(sketches), -1)

    def needs_refit(self) -> bool:
        n, f = len(self._sketches), self._fitted_at
        if f < 0:
            return True
        if (n >= MIN_CANDIDATES) != (f >= MIN_CANDIDATES):
            return True
        # Adds plus removes, not the net size: a gallery where people leave as fast as
        # others join must still refit, or its subspace and hub sample describe people gone.
        return self._changed > REFIT_CHANGE * f

    def sync(self, best: Callable[[np.ndarray], np.ndarray]) -> None:
        """Bring the blocks and centres up to date: refit if due, else lay out the pending templates.

        ``best`` gives :func:`block_best` of a projected probe sketch against every
        packed template, (n, T) (the caller may spread the blocks over threads).
        """
        n = len(self._sketches)
        if self.needs_refit():
            self._fitted_at = -1  # until the fit below completes: a failure leaves it due, not half-done
            self._projection = projection([s[:GALLERY_ROWS] for s in self._sketches])
            self._blocks, self._packed = [], n
            self._append_blocks(self._projected(self._sketches))
            sample = hub_sample(n)
            self._probes = [self.probe(self._sketches[int(i)]) for i in sample]
            matches = [best(p) for p in self._probes]
            self._probe_stats = [row_stats(m) for m in matches]
            scored = [aggregate(m, st) for m, st in zip(matches, self._probe_stats, strict=True)]
            self._centres = centres(np.stack(scored) if scored else np.zeros((0, n), np.float32), sample)
            self._fitted_at, self._changed = n, 0
            return
        if self._packed == n:
            return
        fresh = self._sketches[self._packed :]
        rows = self._projected(fresh)
        new = np.zeros(len(fresh), np.float32)
        if self._probes:  # new templates are never sample probes: nothing to leave out
            # Each sample probe's rows keep the spread they had over the gallery at the fit.
            scored = [
                aggregate(block_best(np.ascontiguousarray(p.T), rows), st)
                for p, st in zip(self._probes, self._probe_stats, strict=True)
            ]
            new = np.median(np.stack(scored), axis=0).astype(np.float32)
        # Blocks and centres change together, after everything that can fail.
        self._packed = n
        self._append_blocks(rows)
        self._centres = np.concatenate([self._centres, new])

    def probe(self, probe_sketch: np.ndarray) -> np.ndarray:
        """A probe's sketch (its first PROBE_ROWS rows) in the gallery's current subspace."""
        rows = probe_sketch[:PROBE_ROWS]
        return rows if self._projection is None else rows @ self._projection

    def slabs(self) -> list[tuple[np.ndarray, int]]:
        """Each block of packed templates as stored, (SLABS, GALLERY_ROWS, SUB_BLOCK, D), and how many it holds.

        Call :meth:`sync` first. What :func:`slab_best` scans, in gallery order.
        """
        return [(b, min(self._packed - i * BLOCK_TEMPLATES, BLOCK_TEMPLATES)) for i, b in enumerate(self._blocks)]

    def blocks(self) -> list[np.ndarray]:
        """Projected sketch rows (GALLERY_ROWS, t, D) of the packed templates, block by block, in gallery order.

        Call :meth:`sync` first. Copies, in :func:`block_best`'s layout (the same best
        matches as :func:`slab_best` on the stored slabs): for removal and for checks.
        """
        out = []
        for b, t in self.slabs():
            rows = b.transpose(1, 0, 2, 3).reshape(GALLERY_ROWS, SLABS * SUB_BLOCK, b.shape[3])
            out.append(np.ascontiguousarray(rows[:, :t]))
        return out

    @property
    def centres(self) -> np.ndarray:
        """Each packed template's typical impostor pre-score (see :func:`centres`)."""
        return self._centres
