"""Orientation-field agreement under the minutiae alignment: the matcher's second, non-minutiae source.

Why. Minutiae evidence alone cannot separate two cases that drive most errors
at strict thresholds: a genuine mate with few reliable minutiae (dry, speckled,
small prints) and an impostor whose few look-alike minutiae fooled the
alignment. Under the alignment the matcher already computes
(:func:`biometrics.fingerprint.global_pairing.paired_fraction`'s refitted
transform), a genuine mate's ridge orientation agrees almost everywhere in the
common foreground, an impostor's in part of it only (as in Tico and Kuosmanen,
and Gu, Zhou and Zhang's "combining global structure and local cues").

What. Each template carries a coarse field (:class:`OrientationField`: blocks of
16 pixels at 500 dpi, doubled angle and coherence). The probe's foreground
blocks are moved by the transform onto the template's grid and read the
template's doubled-angle vectors there, interpolated between the four
surrounding block centres (a neighbour off the foreground reads as 0); a block
*agrees* when the two orientations (the probe's turned by the transform's
rotation) are within ``AGREE_DEGREES`` (9 degrees; 10 while the nearest block was
read, see "Read between block centres" below).
The agreement is the share of agreeing blocks (both prints' blocks, so that it
is symmetric), each weighted by the product of the two coherences raised to
``COHERENCE_POWER`` (2.5; :func:`vectors` stores each block's coherence so
raised, :func:`agreement`), and the minutiae score is multiplied by
:func:`factor`: 1 from ``FULL_AGREEMENT`` (0.96) up,
``exp(-SLOPE * (FULL_AGREEMENT - share))`` below it, never under ``FLOOR``
(0.25, reached at a share of 0.845), so that a pair's score never rises above
its minutiae score and the impostor tail stays light.

Why this shape (the figures in this paragraph and the next are with blocks weighted by the plain
coherence product, before ``COHERENCE_POWER``; the constants then were (0.95, 8), re-picked with the
power below). Genuine mates' shares gather at 0.9 to 1 (FVC2002 medians 0.92
to 0.96; 59 to 80 % of the genuine pairs are at 0.9 or above), impostors' far
lower (median 0.36, 99th percentile 0.78; a share of 0.9 or above in about 1e-4
of the impostor pairs of every calibration group: 17 of 179,100 synthetic, 4 of
38,400 across folders, at most 1 of 2,880 per folder). The first factor,
``(0.01 / (1 - share + 0.01)) ** 0.3``, already cost an aligned genuine pair
whose fields agree 42 % of its score at a share of 0.95 and 51 % at 0.9, so a
print with few reliable minutiae (FVC2002 DB3 finger 105: shares 0.87 to 0.95,
minutiae scores 0.02 to 0.09) could not reach the threshold. This factor leaves
such a pair its score and spends the penalty where impostors are: it falls
steeply through 0.78 to 0.95.

Measured (the field's first fusion had taken the mean FNMR at the 1e-4
threshold from 9.64 to 7.41 %; tools harness: per pair the minutiae score and the share captured once
on the cached templates, every rule refitted exactly as the calibration does,
fit_groups over the four FVC2002 B folders, the pairs across them and 200
synthetic fingers seed 1000). Against the first factor, at the refitted
thresholds (1e-3 0.0332 -> 0.0253, 1e-4 0.0504 -> 0.0389, FVC2002 DB4 sets
both): FNMR at 1e-4 2.86 / 5.00 / 10.36 / 8.21 % (mean 6.61) -> 2.14 / 4.64 /
7.86 / 6.07 % (mean 5.18); at 1e-3 mean 4.02 -> 3.39 %; EER 1.07 / 0.69 / 1.43
/ 1.43 -> 0.99 / 0.40 / 1.43 / 1.43 % (mean 1.15 -> 1.06); on the synthetic
benchmark population (seed 0, tuned on by nothing) false matches at 1e-4 1 -> 2
of 179,100 (limit 25), FNMR at 1e-4 4.17 -> 4.33 %, EER 0.83 -> 1.00 %. The two
constants were picked on a grid (FULL_AGREEMENT 0.9 to 0.98, SLOPE 2 to 16; the
floor kept at the first factor's 0.25); picked on fingers 101-105 alone and on
106-110 alone, the same (0.95, 8) comes out, and the held-out halves improve
(106-110: 10.89 -> 8.75 %, 101-105: 2.32 -> 1.61 %). Neighbours (0.94 to 0.96,
SLOPE 8 to 10) give 5.3 to 5.8 %; with the floor free as well (0.2 to 0.4),
the halves pick (0.92, 10, 0.25) and (0.98, 8, 0.2), held-out 8.93 and 1.61 %.
Rejected on the same harness: a logistic in the share (as good, at best 5.1
to 5.3 %, one more constant), the first factor's family at any exponent
(6.5 % at best), and sum rules that add evidence for agreement itself
(``S * factor + w * ramp(share)``, 6.1 % at best; a log-likelihood-ratio style
``S + w (share - a)``, 6.6 % at best).

Why the coherence power. Where a genuine mate's fields disagree under the
alignment, they mostly do so where the field itself is uncertain: at the
foreground's border (blocks mixing background) and around the core and deltas
(coherence 0.1 to 0.3), while the well-defined ridge flow agrees; an impostor's
fields disagree in confident blocks as well. Weighting a block by the
coherences' product (power 1) let a few dozen uncertain blocks cost a mate 5 to
15 points of share (FVC2002 DB3 finger 110: shares 0.62 to 0.83, the impostor
range). At power 2.5 the uncertain blocks count little and those shares rise
by 0.05 to 0.12 (110: 0.74 to 0.92), while impostors' rise less. It is free in
a search: the power is taken once per template, when its vectors are made.
Measured on the same harness (shares recomputed offline from the cached fields
and the captured alignments, bit-identical to the matcher's at power 1, every
rule refitted exactly), against power 1 with (0.95, 8): thresholds 1e-3 0.0253
-> 0.0246, 1e-4 0.0388 -> 0.0392 (DB4 sets both; DB2 0.0389, DB3 0.0361); FNMR at 1e-4 2.14
/ 4.64 / 7.86 / 6.07 % (mean 5.18) -> 2.14 / 5.00 / 6.79 / 5.71 % (mean 4.91);
at 1e-3 mean 3.39 -> 3.12 %; EER unchanged (0.99 / 0.40 / 1.43 / 1.43 %, mean
1.061); synthetic seed 0: false matches at 1e-4 2 -> 2 (limit 25), at 1e-3 71
-> 81, FNMR at 1e-4 4.33 -> 3.83 %, EER 1.00 -> 0.83 %. The factor's two
constants were re-picked with the power (grid 0.93 to 0.99 x 6 to 14): the
plateau is broad in the mean (4.7 to 5.0 % for powers 1.5 to 3 around
(0.96 to 0.99, 8 to 12)), DB3's 6.79 % (19 of 280 pairs) sits at its edge
(neighbouring constants give 7.14 %, 20 pairs: the remaining failures have
minutiae scores under the threshold, which no field factor can lift). Picked
on fingers 101-105 alone, 106-110 held out: 8.75 -> 8.57 %; the other way
1.61 -> 1.79 % (one pair). Rejected on the same harness (best over the factor
grid, mean FNMR at 1e-4): tolerant tests that let a block agree with any of its
8 neighbours (8.8 %) or within 8 pixels (7.6 %), a wider angle (12 degrees
5.5 %, 15 degrees 9.2 %), a linear credit from 10 to 20 degrees (6.4 %),
removing each pair's mean orientation offset (6.5 to 6.9 %), coherence power
0.5 (5.5 %), border blocks weighed 0 (5.2 %) or 0.25 to 0.75 on top of the
power (4.6 to 4.8 %, no better), blocks far from the paired minutiae weighed
0.3 or 0 (4.6 to 5.3 %, and a distance per block and pair to pay); all of
these lift impostors' shares as much as mates'.

Why 16-pixel blocks. Finer fields were extracted and compared on the same
harness (every template re-extracted, the compared-blocks floor scaled with the
block area, the calibration refitted exactly). 12 pixels: FNMR at 1e-4 the
same (mean 4.91 %). 8 pixels: EER 1.06 -> 0.88 %, FNMR at 1e-4 2.14 / 4.64 /
7.14 / 5.36 % (mean 4.82) with these factor constants, 2.14 / 4.29 / 7.14 /
4.64 % (mean 4.55) with the factor re-picked (0.95, 12); both halves of the
fingers and the synthetic population gain a little (FNMR at 1e-4 3.83 -> 3.50 %,
3 false matches). A field four times the size in every template (about 2.6 KB
for a 300 x 300 image), four times the agreement's work in every search, and
every stored template to re-extract, for a third of a point: not taken.

Distortion is not what lowers the hardest mates' shares (measured 2026-11-30).
On FVC2002 DB4's failing mates the blocks' orientation differences are spread,
not offset (the share within 5 / 10 / 15 / 20 degrees, for instance 0.59 / 0.85
/ 0.94 / 0.97): removing a pair's weighted mean offset (angles only, or turning
the map about the pairs' centre) lifts none of them, and comparing the fields
under a moving-least-squares rigid map of the paired minutiae (Gaussian weights
of 80 pixels, plus 0.1 of the global fit), which follows the distortion, lifted
five of them by 0 to 0.003. About 0.05 more share on its mates alone
(impostors untouched) would meet that folder's halving target (16 -> 9
refusals at the threshold); nothing measured gives it to mates only.

Nor is the rotation between the impressions (measured 2026-12-02, every genuine
pair of the four FVC2002 B folders, share under the matcher's own alignment):
the median share is 0.94 to 0.98 in every band of rotation from 0-5 to 20-40
degrees on every folder, and the refusals at the 1e-4 threshold are spread over
the bands (DB4: 4 / 4 / 0 / 2 / 4 pairs in 0-5, 5-10, 10-15, 15-20 and 20-40
degrees), so resampling a turned grid of blocks costs mates nothing measurable.
(Past 40 degrees it does: measured again 2026-12-03, FVC2002 DB3's 14 genuine
pairs turned by over 40 degrees have a median share of 0.84, 5 of them refused
at the 1e-4 threshold, all of the dry finger 110; DB1's 14 turned by 30 to 40
degrees 0.83, none refused.)

Read between block centres: taken (measured 2026-12-03, taken the same day).
A block's vector is the orientation at its centre, and a point moved from the
other print lands anywhere in the block, up to 11 pixels from that centre:
where the flow turns (1 to 2 degrees a pixel around a core or a delta) the
nearest block is off by more than the tolerance although the prints agree
there. So :func:`agreement` interpolates the doubled-angle vectors
bilinearly between the four surrounding centres (:func:`_interpolate`; a
neighbour off the foreground read as 0), with the tolerance 9 degrees instead
of 10 (the nearest block was read before). Why it was tried: of the 49
genuine FVC2002 pairs refused at the refitted 1e-4 threshold
0.0375 (6 / 15 / 17 / 11 of 280 on DB1-4; DB2's are finger 109 but one, whose
impressions are wet, smudged, partial or faint), 27 sit at this factor's floor
(share under 0.845), 4 have no LSS-R evidence at all and 11 a common region of
8 minutiae or fewer. Measured with the cached templates (four B folders, pairs
across them, 200 synthetic fingers seed 1000), the calibration refitted
exactly each time; before: thresholds 1e-3 0.0235, 1e-4 0.0375 (DB3), 1e-6
0.0862, 1e-8 0.194, EER 0.35 / 0.35 / 1.07 / 1.07 % (mean 0.71), synthetic
seed 0 (tuned on by nothing) FNMR at 1e-4 4.00 % (24 of 600), 5 false matches.
Interpolated at 10 degrees the shares rose for impostors too (DB3's largest
impostor score 0.024 -> 0.043, a small print pairing 6 minutiae): threshold
0.0409, refused 7 / 16 / 16 / 10, EER mean 0.62 %, synthetic 3.00 %; with
FULL_AGREEMENT 0.97 or 0.98 6 / 15 / 17 / 10 at 0.0396 and 6 / 15 / 16 / 10 at
0.0376 (EER 0.71 and 0.80 %). At 9 degrees (picked on DB1 + DB3, which refuse
7 + 16 at 10 degrees, 6 + 16 at 9 and 7 + 20 at 8): thresholds 1e-3 0.0232,
1e-4 0.0352 (DB3), 1e-6 0.072, 1e-8 0.161 (the same from ``bench.fingerprint
--calibrate``); refused 6 / 15 / 16 / 11 (mean FNMR 4.38 -> 4.29 %), EER
unchanged (mean 0.71 %), synthetic FNMR at 1e-4 3.33 % (20 of 600), false
matches 0 on every folder and 8 of 179,100 synthetic (limit 25) at 1e-4, 132
at 1e-3 (126 before, limit 201). Held out, DB2 and DB4 refuse what they did (15
and 11): one FVC2002 pair and four synthetic ones. 8 degrees refused 7 / 14 /
20 / 15 (EER 0.98 %); 9 degrees with the nearest block 7 / 15 / 20 / 12 (EER
0.82 %): the narrower test needs the interpolation. Cost: four lookups per
block instead of one, 1:N on a gallery of 2,000 FVC2002 templates 138k -> 130k
comparisons per CPU-second (one core, one run each, shared machine). Why it
waited: its lighter far tail raises the finger identification capacity at
the default identify_fpir from about 487 million comparisons to 4.0 billion
(verifier.ranking), and at the smallest identify_fpir faces allow (about
2.7e-9, where a face's capacity is one comparison) a finger's is then some
10,900: the end-to-end tests of an identification past its capacity
(tests/test_kiosk_walk.py, tests/test_biometric_api.py) needed a gallery past
that, which their enrollments cannot build within the verifier's matching
limits in a test's time. They now set the verifier's ``finger_identify_fpir``
from the calibration in force (tests/conftest.py ``finger_fpir_for``), so the
gain (one FVC2002 pair of 1,120, four synthetic of 600, a lighter far tail) is
taken. Reproduced when taken (the code as it is here, ``bench.fingerprint
--calibrate`` as :mod:`biometrics.fingerprint.calibration` says, its constants
refitted): the same thresholds (1e-3 0.0232, 1e-4 0.0352, 1e-6 0.0719, 1e-8
0.161; capacity 4.05 billion), and ``bench.fingerprint`` refuses 6 / 15 / 16 /
11 of 280 genuine pairs at 1e-4 (5 / 8 / 11 / 6 at 1e-3), EER 0.35 / 0.35 /
1.07 / 1.07 %, false matches 0 on every folder at 1e-4 (2 on DB3 at 1e-3, limit
6); synthetic seed 0 FNMR at 1e-4 3.33 % (20 of 600; 1.33 % at 1e-3), false
matches 8 at 1e-4 and 133 at 1e-3 (limits 25 and 201).

Nor is an alignment the minutiae missed something the fields could supply
(measured 2026-12-02, FVC2002 DB2, fields only): the best share over a grid of
rigid transforms (rotations -40 to 40 degrees by 2, shifts of up to 128 pixels
by 8) reaches 0.73 to 0.99 on finger 109's 28 genuine pairs (0.86 to 0.95 on
most of its failing ones, whose shares under the matcher's alignment are 0.46
to 0.53), but also 0.39 to 1.0 on DB2's 25 highest-scoring impostor pairs and
0.43 to 0.86 on 25 random ones: a field registered freely agrees with an
impostor's as well, so it cannot stand in for the minutiae's alignment.

Nor does extraction explain FVC2002 DB2 finger 109, which holds 14 of that
folder's 15 refusals at the 1e-4 threshold (measured 2026-12-03; its eight
impressions are wet, smeared, partial, turned by about 35 degrees or faint).
Twelve of its 14 refused pairs are taken to the factor's floor by shares of
0.46 to 0.79, most while pairing minutiae well under the matcher's alignment
(12 to 16 paired of 16 to 33 in the common region for 1-3, 1-6, 3-5, 3-6,
4-6); the other two (5-7, 5-8) pair 5 minutiae. Mapped pixel by pixel under
that alignment (the per-pixel field weighted as the blocks are; shares within
0.09 of the matcher's), the disagreeing region is mostly clean, coherent ridge
flow in both prints, not the smudges or the wet patch (which the coherence
power already discounts), and the orientation differences are offset or turn
across the print rather than spread: a weighted mean offset of 4 to 10
degrees in 10 of the 14 pairs, differences on both sides (-25 to +25 degrees)
in pair 3-6; removing each pair's mean offset lifts 1-3 from 0.69 to 0.86 and
1-4 from 0.77 to 0.90 but leaves 3-5, 3-6, 4-5, 4-6 and 4-8 at 0.49 to 0.60.
That is elastic distortion between the impressions (or an alignment off by a
few degrees in part of the print), which the rejected offset removal and
moving-least-squares map above do not fix without lifting impostors. Two
extraction changes aimed at it did not reach it either
(:mod:`biometrics.fingerprint.enhance`: smudged cells cut from the mask, wet
regions brightened; the latter left 13 of finger 109's pairs refused).

Nor would a ridge-period field beside it pay for itself (measured 2026-12-03,
tools harness as above: per 16-pixel block the local period from the band-passed
image's gradient-to-signal energy ratio, the estimator of
:func:`biometrics.fingerprint.enhance.ridge_measures` over Gaussian windows of
sigma 8, compared in log under the matcher's alignment, both prints' blocks,
weighted as here). The period share (blocks within 8 or 10 % of each other)
separates in the bulk: genuine mates 0.96 within 10 % (median; 0.91 for those
scoring under 0.06), impostors scoring above 0.015 0.65 (90th percentile 0.83);
FVC2002 DB4's failing mates agree at 0.81 to 0.97, DB2 finger 109's at 0.50 to
0.91, an impostor's level. Folded into the share (``share + a (period share - b)``
into :func:`factor` as it is; grid of a 0.25 to 0.75, b 0.8 to 0.9, five tests,
with and without each pair's mean log-period offset removed) the best rule gave
a mean FNMR at the refitted 1e-4 threshold of 3.66 % (5 / 12 / 15 / 9 of 280
pairs, threshold 0.0388, EER 1.06 -> 0.88 %) against 4.91 %, and a separate factor
of the same shape 4.20 % at best. But held out by fingers the gain shrinks
(picked on 106-110, fingers 101-105 refuse 9 -> 7 or 9 pairs, two rules tied;
picked on 101-105, 106-110 refuse 46 -> 34 to 48, median 42), no folder halves,
and four of the six good rules checked sit on the calibration's edge: refitted
without DB1, DB2 or DB3 (``--leave-one-out``) their 1e-4 threshold jumps from
0.031 to 0.047-0.055 (FNMR there 3.6 to 10.4 %): the pairs across the three
folders left are too few to lend their longer tail, and DB4's own scale estimate then exceeds
the synthetic population's borrowed one (its top impostor, 105_1 against 108_8
at 0.040, a small common region whose periods agree, keeps its score), which
under the current score it does not. The steadiest rule (within 8 %, a 0.5,
b 0.8, no offset removed: 4.29 %, 5 / 13 / 17 / 13 pairs, leave-one-out
thresholds 0.030 to 0.033) took the synthetic population no rule was tuned on
(200 fingers, seed 0) from 3.83 to 4.50 % FNMR at its threshold (false matches
2 and 2); the best rule and one within 10 % (a 0.5, b 0.85) to 4.83 %. Not
taken: a second field in every template, the ISO record and the 1:N stack, and
a verifier check against a forged one, for about one failing pair in eight on
FVC2002 and none on the synthetic population.

A template without a field (made before it) is taken to agree with the share
``MISSING_AGREEMENT``: the 99th percentile of FVC2002 impostors whose minutiae
score exceeds 0.03 (both directions' mean, per pair: 0.873 with the coherence
power, 0.853 without), so that old templates do not let impostors through above
the calibrated rate; their genuine scores are lower than with a field (re-enrol
to benefit).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from biometrics.fingerprint.types import FingerprintTemplate, OrientationField

BLOCK = 16  # block side, pixels at 500 dpi
MIN_FOREGROUND = 0.5  # share of a block's pixels in the segmentation mask for it to count as foreground
AGREE_DEGREES = 9.0  # two blocks agree within this orientation difference
COHERENCE_POWER = 2.5  # a block weighs its coherence to this power (module docstring: why)
FULL_AGREEMENT = 0.96  # from this share up the factor is 1 (genuine mates' shares gather at 0.9 to 1)
SLOPE = 12.0  # below it the factor falls as exp(-SLOPE * (FULL_AGREEMENT - share))...
FLOOR = 0.25  # ...to this, reached at a share of 0.845
MISSING_AGREEMENT = 0.87  # agreement taken for a pair where either side has no field (see module docstring)
MIN_COVERAGE = 0.8  # share of a template's minutiae its own field must cover (minutiae_coverage)
MIN_WEIGHT_SPREAD = 0.3  # least weight_spread of a field the verifier accepts (honest fields: 0.40 and up)
MIN_EFFECTIVE_BLOCKS = 40.0  # compared blocks (by weight, both directions) below which a share proves nothing
FEW_BLOCKS_SHARE = 0.32  # the share such a comparison is capped at: FVC2002 impostors' median

_COS_AGREE = float(np.cos(2.0 * np.radians(AGREE_DEGREES)))  # cos of the doubled-angle difference


def from_maps(orientation: np.ndarray, coherence: np.ndarray, mask: np.ndarray) -> OrientationField:
    """The coarse field of per-pixel maps at 500 dpi (gradient direction in [0, pi), coherence 0..1, foreground).

    Per block: the mean of ``coherence * exp(2i theta)`` over its foreground
    pixels; background where under MIN_FOREGROUND of the block is foreground.
    Partial blocks at the right and bottom edges are dropped.
    """
    h, w = mask.shape
    rows, cols = h // BLOCK, w // BLOCK
    if rows == 0 or cols == 0:
        z = np.zeros((max(rows, 0), max(cols, 0)), np.uint8)
        return OrientationField(BLOCK, z, z.copy())
    h, w = rows * BLOCK, cols * BLOCK
    m = mask[:h, :w].astype(np.float32)
    # float32 with OpenCV (a few hundred microseconds; numpy's complex exp took 6 ms on a 388x374 image):
    # coherence * (cos 2theta, sin 2theta) on the foreground, and block means by area resampling (exact
    # for whole blocks), divided by the block's foreground share: the mean over its foreground pixels.
    x, y = cv2.polarToCart(coherence[:h, :w] * m, orientation[:h, :w] * np.float32(2.0))
    size = (cols, rows)
    share = cv2.resize(m, size, interpolation=cv2.INTER_AREA)
    mean_x = cv2.resize(x, size, interpolation=cv2.INTER_AREA)
    mean_y = cv2.resize(y, size, interpolation=cv2.INTER_AREA)
    mean = (mean_x + 1j * mean_y) / np.maximum(share, 1e-6)
    foreground = share >= MIN_FOREGROUND
    angle = np.round(np.mod(np.angle(mean), 2.0 * np.pi) * (256.0 / (2.0 * np.pi))).astype(np.int64) % 256
    strength = np.clip(np.round(np.abs(mean) * 255.0), 1, 255).astype(np.uint8)
    return OrientationField(BLOCK, angle.astype(np.uint8), np.where(foreground, strength, 0).astype(np.uint8))


def vectors(field: OrientationField) -> np.ndarray:
    """complex64 (rows, columns): coherence ** COHERENCE_POWER * exp(2i theta), 0 on background blocks.

    The magnitude is the block's weight in :func:`agreement` (the product of the
    two prints' magnitudes): raised once here, so a comparison pays nothing for it.
    """
    phase = field.angle.astype(np.float32) * np.float32(2.0 * np.pi / 256.0)
    return (block_weights(field.coherence) * np.exp(1j * phase)).astype(np.complex64)


def block_weights(coherence: np.ndarray) -> np.ndarray:
    """float32 weights of blocks of stored coherences (uint8, 0 = background): (coherence / 255) ** COHERENCE_POWER."""
    return np.power(coherence.astype(np.float32) / np.float32(255.0), np.float32(COHERENCE_POWER))


def minutiae_coverage(template: FingerprintTemplate) -> float:
    """Share of the template's minutiae that lie on a foreground block of its own field (1.0 without minutiae).

    Why: the agreement counts only blocks in both foregrounds, so a field whose
    foreground is a block or two agrees completely by chance one time in a few,
    and would lift a crafted impostor's score up to fourfold. A field extracted
    from the same image as the minutiae covers them (at least 93 % of each
    FVC2002 and synthetic template's, 100 % for most); the verifier refuses a
    view whose field covers under ``MIN_COVERAGE``, which leaves a forged field
    no smaller than the print it claims. A minutia in the partial block just past
    the grid's last row or column (from_maps drops partial edge blocks) counts as
    covered; one farther out, or any minutia of an empty grid, does not (a grid
    shrunk away from the minutiae would otherwise cover them all).
    """
    field = template.orientation
    m = template.minutiae
    if field is None or len(m) == 0:
        return 1.0
    scale = 500.0 / max(template.resolution_dpi, 1)
    bx = np.floor(m.x * scale / field.block).astype(np.int64)
    by = np.floor(m.y * scale / field.block).astype(np.int64)
    rows, cols = field.coherence.shape
    on_grid = (bx >= 0) & (bx < cols) & (by >= 0) & (by < rows)
    past_edge = (bx >= 0) & (bx <= cols) & (by >= 0) & (by <= rows) & ~on_grid
    covered = past_edge & (rows > 0) & (cols > 0)
    covered[on_grid] = field.coherence[by[on_grid], bx[on_grid]] > 0
    return float(covered.mean())


def weight_spread(field: OrientationField) -> float:
    """How evenly a field's foreground blocks share its weight: (sum w)^2 / (n sum w^2), in (0, 1] (1.0 when empty).

    Why: a block weighs its coherence to the power COHERENCE_POWER, so a block
    sent with coherence 1 is foreground (it covers minutiae) but weighs about
    1e-6. A device could send its whole foreground so, and full coherence only on
    the few blocks around its minutiae, where an alignment on those minutiae
    makes the fields agree by construction: in a review's trial that lifted the
    factor of 17 of 666 aligned impostor pairs above its floor (2 with the
    honest fields), within reach of the 1e-3 threshold. The spread is the
    effective share of the foreground that carries the weight; extracted fields
    have 0.40 to 1 (medians 0.76 to 0.85 on FVC2002 and the synthetic
    populations, 1,520 templates), the trial's 0.12, and the verifier refuses a
    view under ``MIN_WEIGHT_SPREAD``.
    """
    w = block_weights(field.coherence[field.coherence > 0]).astype(np.float64)
    if len(w) == 0:
        return 1.0
    return float(np.square(w.sum()) / (len(w) * np.square(w).sum()))


@dataclass(frozen=True, slots=True)
class Fields:
    """Vector fields (:func:`vectors`) of T templates, each stored at its own size: no template pays for another's.

    A gallery's fields are of every size (a print's own image decides its grid),
    so they are stored ragged, as the cylinders are: one flat array of every
    template's grid, and the foreground blocks as rows. Padded to the largest
    grid, one enrolled record claiming a large image (a 64 x 64 field) made every
    template that large and every 1:N search slower (22 to 33 % here, 60 % in a
    review's run); stored so, a
    template costs memory and comparison time in proportion to its own field.

    * ``cells``: complex64 (N,): every template's grid, row-major, template after
      template; ``cells[0]`` is 0, the block every point outside its template's grid reads.
    * ``start``, ``rows``, ``cols``: int64 (T,): template t's grid is
      ``cells[start[t]:start[t] + rows[t] * cols[t]]`` shaped (rows[t], cols[t]).
    * ``blocks``: complex64 (B, 2): the foreground blocks as rows, template after
      template: the block centre (500-dpi position, x + iy) and its vector.
    * ``block_start``, ``block_count``: int64 (T,): template t's blocks are
      ``blocks[block_start[t]:block_start[t] + block_count[t]]``.
    * ``has``: bool (T,): which templates carry a field.
    """

    cells: np.ndarray
    start: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    blocks: np.ndarray
    block_start: np.ndarray
    block_count: np.ndarray
    has: np.ndarray

    @property
    def templates(self) -> int:
        return len(self.has)


def pack(fields: list[np.ndarray | None]) -> Fields:
    """Vector fields (:func:`vectors`, or None for a template without one) stored ragged (:class:`Fields`)."""
    t = len(fields)
    has = np.array([f is not None for f in fields], bool)
    rows = np.array([f.shape[0] if f is not None else 0 for f in fields], np.int64)
    cols = np.array([f.shape[1] if f is not None else 0 for f in fields], np.int64)
    size = rows * cols
    start = (1 + np.cumsum(size) - size).astype(np.int64)
    cells = np.concatenate(
        [np.zeros(1, np.complex64)] + [f.astype(np.complex64).reshape(-1) for f in fields if f is not None]
    )
    owner = np.repeat(np.arange(t), size)
    local = np.arange(len(cells) - 1) - np.repeat(start - 1, size)  # each cell's index in its own grid
    fg = np.flatnonzero(cells[1:] != 0)  # foreground: coherence > 0, so the vector is not 0 (at least 1e-6)
    owner, local = owner[fg], local[fg]
    blocks = np.empty((len(fg), 2), np.complex64)
    blocks[:, 0] = _centres(local % cols[owner], local // cols[owner])
    blocks[:, 1] = cells[1:][fg]
    block_count = np.bincount(owner, minlength=t).astype(np.int64)
    block_start = (np.cumsum(block_count) - block_count).astype(np.int64)
    return Fields(cells, start, rows, cols, blocks, block_start, block_count, has)


def _interpolate(
    cells: np.ndarray, start: np.ndarray | int, rows: np.ndarray | int, cols: np.ndarray | int, points: np.ndarray
) -> np.ndarray:
    """Vectors read at ``points`` (complex 500-dpi positions) bilinearly between the four surrounding block centres.

    ``cells`` is a flat array of grids with ``cells[0]`` = 0; the grid a point is
    read in starts at ``start`` and is ``rows`` x ``cols`` (each broadcast with
    ``points``). A neighbour outside the grid reads ``cells[0]``; one off the
    foreground is 0 already: either lends nothing, so a point at the foreground's
    edge reads a shorter vector and weighs less. complex64, shaped as ``points``.

    Why between centres: a block's vector is the orientation at its centre, and a
    point moved from the other print lands anywhere in a block, up to 11 pixels
    from it; where the flow turns (1 to 2 degrees a pixel around a core or a
    delta) the nearest block is off by more than AGREE_DEGREES although the
    prints agree there (module docstring: measured).
    """
    half = np.float32((BLOCK - 1) / 2.0)
    u = (points.real - half) / np.float32(BLOCK)
    v = (points.imag - half) / np.float32(BLOCK)
    c0 = np.floor(u)
    r0 = np.floor(v)
    fx = (u - c0).astype(np.float32)
    fy = (v - r0).astype(np.float32)
    c0 = c0.astype(np.int64)
    r0 = r0.astype(np.int64)
    left = (c0 >= 0) & (c0 < cols)  # the left neighbour's column is on the grid
    right = (c0 >= -1) & (c0 < cols - 1)
    top = (r0 >= 0) & (r0 < rows)
    bottom = (r0 >= -1) & (r0 < rows - 1)
    base = start + r0 * cols + c0
    out = np.take(cells, np.where(top & left, base, 0)) * ((1 - fx) * (1 - fy))
    out += np.take(cells, np.where(top & right, base + 1, 0)) * (fx * (1 - fy))
    out += np.take(cells, np.where(bottom & left, base + cols, 0)) * ((1 - fx) * fy)
    out += np.take(cells, np.where(bottom & right, base + cols + 1, 0)) * (fx * fy)
    return out


def _centres(xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """Complex 500-dpi positions of the centres of the blocks at columns ``xx``, rows ``yy``."""
    return ((xx * BLOCK + (BLOCK - 1) / 2.0) + 1j * (yy * BLOCK + (BLOCK - 1) / 2.0)).astype(np.complex64)


# The comparison rule: _compare per pair of blocks, _share per comparison. agreement only moves the blocks
# onto each other and sums.
def _compare(probe: np.ndarray, turn: np.ndarray, template: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(weight, agreeing weight) of pairs of blocks' vectors (complex64, broadcast), float32.

    ``turn``: the transform's rotation squared (doubled angles turn by it). The
    product ``probe * turn * conj(template)`` has the product of the two blocks'
    weights as modulus (their coherences raised to COHERENCE_POWER by
    :func:`vectors`; 0 where either block is background: such pairs weigh 0) and
    the doubled orientation difference as angle: a pair agrees within AGREE_DEGREES.
    """
    product = probe * turn * np.conj(template)
    weight = np.abs(product)
    return weight, np.where(product.real > np.float32(_COS_AGREE) * weight, weight, np.float32(0.0))


def _share(agreeing: np.ndarray, total: np.ndarray, squares: np.ndarray) -> np.ndarray:
    """Per comparison, from the sums of the agreeing weights, the weights and their squares: the share, capped.

    Few compared blocks prove nothing: a share from a handful is 0 or 1 by
    chance, and a device could send a field cut down to one block to get 1 one
    time in a few. Below MIN_EFFECTIVE_BLOCKS (counted by weight, (sum w)^2 /
    sum w^2, so that coherence games do not inflate the count) the share is
    capped at a typical impostor's.
    """
    share = np.where(total > 0, agreeing / np.maximum(total, 1e-12), 0.0)
    effective = np.square(total) / np.maximum(squares, 1e-24)
    return np.where(effective < MIN_EFFECTIVE_BLOCKS, np.minimum(share, FEW_BLOCKS_SHARE), share)


def agreement(
    probe: np.ndarray,
    gallery: Fields,
    rotation: np.ndarray,
    probe_anchor: np.ndarray,
    gallery_anchor: np.ndarray,
    which: np.ndarray | None = None,
) -> np.ndarray:
    """Weighted share of the common foreground blocks whose orientations agree, (T,) in [0, 1].

    probe: (R, C) vectors; gallery: the templates' fields (:class:`Fields`); the
    transforms (T,) as :func:`biometrics.fingerprint.global_pairing.align` gives
    them, for the templates ``which`` of the gallery (all of them when None; the
    fields are read in place, not gathered; a probe point z maps to
    ``rotation * (z - probe_anchor) + gallery_anchor``, 500-dpi pixels, y down).
    A direction theta in the probe becomes theta + arg(rotation) in the template
    (positions and gradient vectors turn alike), so the doubled angle turns by
    rotation squared. Both prints' foreground blocks are sampled, each where it
    lands in the other, between the four block centres around it
    (:func:`_interpolate`; the template's mapped back by the inverse transform):
    the share is the same whichever print is the probe, as the minutiae score is.
    0 where the two foregrounds do not overlap. A block pair weighs the product of
    the two vectors' magnitudes (coherences raised to ``COHERENCE_POWER`` by
    :func:`vectors`; the vector read between centres is shorter where its
    neighbours disagree or lie off the foreground).

    Each template costs in proportion to its own field: the probe's blocks are
    looked up in the template's own grid (bounds of its own size, four cells
    each), and only the
    template's foreground blocks are moved back onto the probe, summed per
    template (no padded grid, no loop over templates).
    """
    t = len(rotation)
    yy, xx = np.nonzero(probe)
    if t == 0 or len(yy) == 0:
        return np.zeros(t, np.float64)
    which = np.arange(t) if which is None else np.asarray(which, np.int64)
    # complex64 throughout (positions to within 1e-3 pixel, angles far finer than the 9-degree test).
    rot = (rotation / np.maximum(np.abs(rotation), 1e-12)).astype(np.complex64)
    probe_anchor = probe_anchor.astype(np.complex64)
    gallery_anchor = gallery_anchor.astype(np.complex64)
    turn = rot * rot
    # The probe's foreground blocks, moved onto each template's own grid: (T, P) lookups in the flat cells.
    z = _centres(xx, yy)
    moved = rot[:, None] * (z[None, :] - probe_anchor[:, None]) + gallery_anchor[:, None]
    rows, cols = gallery.rows[which][:, None], gallery.cols[which][:, None]
    read = _interpolate(gallery.cells, gallery.start[which][:, None], rows, cols, moved)
    weight, agreeing = _compare(probe[yy, xx][None, :], turn[:, None], read)
    total = weight.sum(axis=1).astype(np.float64)
    agree = agreeing.sum(axis=1).astype(np.float64)
    squares = np.square(weight, dtype=np.float64).sum(axis=1)
    # Each template's foreground blocks (rows, template after template), moved back onto the probe.
    count = gallery.block_count[which]
    offset = np.cumsum(count) - count  # each template's first row among the gathered ones
    blocks = np.take(gallery.blocks, np.repeat(gallery.block_start[which] - offset, count) + np.arange(count.sum()), 0)
    back = np.repeat(np.conj(rot), count) * (blocks[:, 0] - np.repeat(gallery_anchor, count))
    back += np.repeat(probe_anchor, count)
    own = np.append(np.complex64(0), probe.reshape(-1))  # the probe's grid as flat cells, [0] read outside it
    rows, cols = probe.shape
    weight, agreeing = _compare(_interpolate(own, 1, rows, cols, back), np.repeat(turn, count), blocks[:, 1])
    some = count > 0  # per template, in float64 (reduceat: a template without blocks would read its neighbour's)
    if some.any():
        total[some] += np.add.reduceat(weight, offset[some], dtype=np.float64)
        agree[some] += np.add.reduceat(agreeing, offset[some], dtype=np.float64)
        squares[some] += np.add.reduceat(np.square(weight, dtype=np.float64), offset[some])
    return _share(agree, total, squares)


def factor(share: np.ndarray) -> np.ndarray:
    """The minutiae score's multiplier for an agreement share, in [FLOOR, 1] (module docstring: why this shape).

    1 from ``FULL_AGREEMENT`` up, ``exp(-SLOPE * (FULL_AGREEMENT - share))`` below, never under ``FLOOR``.
    """
    s = np.clip(np.asarray(share, np.float64), 0.0, 1.0)
    return np.maximum(np.exp(-SLOPE * np.maximum(FULL_AGREEMENT - s, 0.0)), FLOOR)
