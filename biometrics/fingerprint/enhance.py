"""Image analysis shared by quality assessment and minutiae extraction.

One pass computes what both need (foreground mask, local contrast, orientation
field and its coherence, ridge period), so a capture loop that checks quality and
then extracts never does the work twice. Everything runs at 500 dpi on whole
arrays with OpenCV filters; there is no loop over pixels.

The steps, and why:

* **Segmentation** by local standard deviation: ridges give strong local contrast,
  an empty sensor gives none. The threshold is relative to the image's own strong
  contrast (a percentile), so dry, wet and differently exposed sensors all work.
  Measured and not taken (2026-12-03, calibration refitted exactly): 0.30 of the
  strong contrast instead of 0.25, to cut faint low-contrast regions, took the
  mean FNMR of the four FVC2002 folders at the refitted 1e-4 threshold from 4.73
  to 9.46 % (DB3's impostor tail set the threshold at 0.0560).
  Measured and not taken (2026-12-03): smudged regions cut from the mask (the
  4x4 cells whose coherence, blurred as here, is under 0.3 removed after the
  holes are filled, so that they yield no minutiae and no field blocks), aimed
  at FVC2002 DB2 finger 109's smudged impressions: at the 1e-4 threshold of
  the time (0.0375) it refused 12 / 12 / 19 / 33 of 280 genuine pairs on DB1-4
  against 6 / 15 / 17 / 11, and DB2's largest impostor score rose 0.035 ->
  0.039 (under 0.4: DB2 16 refused); cores, deltas and creases of good prints
  are as incoherent as the smudges.
* **Normalisation** to zero local mean and unit local deviation: removes uneven
  pressure and illumination before filtering.
  Measured and held (2026-12-03): wet, over-pressed regions brightened before
  normalising. Where the 25-pixel local mean grey falls under 0.5 of the
  image's bright level (95th percentile of the local means), the grey level is
  blended towards ``255 (g / 255) ** 0.45`` (weight ramping to 1 at 0.25 of
  it), which widens the dark range where merged ridges keep only faint valleys
  (local normalisation alone is affine, so it cannot). Calibration refitted
  exactly (``bench.fingerprint --calibrate`` over the four FVC2002 B folders,
  pairs across them, 200 synthetic fingers seed 1000): thresholds 1e-3 0.0235
  -> 0.0238, 1e-4 0.0375 (DB3) -> 0.0355 (DB4), 1e-8 about 0.19 -> 0.112;
  refused at the refitted 1e-4 threshold 6 / 15 / 17 / 11 -> 5 / 16 / 8 / 14 of
  280 genuine pairs on DB1-4 (49 -> 43), EER 0.35 / 0.35 / 1.07 / 1.07 ->
  0.35 / 0.35 / 0.35 / 0.71 % (mean 0.71 -> 0.44), false matches at 1e-4 0 / 0
  / 0 / 1; synthetic seed 0 (tuned on by nothing) FNMR at 1e-4 4.00 -> 4.17 %
  (25 of 600), EER 0.83 -> 1.00 %, false matches 5 -> 6 (limit 25). The gain is
  DB3's (17 -> 8; fingers 105 and 110 left); it does not reach the wet finger it was
  aimed at (DB2 109 still refuses 13 of its pairs, see
  :mod:`biometrics.fingerprint.orientation_field`), and DB4 loses 3 pairs.
  Why held: the impostor far tail lightens (tail shape 0.138 ->
  0.082), so the finger identification capacity at identify_fpir 3e-9 goes
  from about 1,460 comparisons to 8.05 million, and the end-to-end tests of an
  identification past its capacity (tests/test_biometric_api.py,
  tests/test_kiosk_walk.py) cannot build such a gallery; it also costs 1.6 ms
  per image as written (a box blur, a lookup table and a float blend over the
  whole image), over the extraction budget. Taking it needed those tests
  redesigned first (done since, for the interpolated field agreement: they set
  ``finger_identify_fpir`` from the calibration, tests/conftest.py) and needs a
  cheaper blend; its figures are against the calibration of the time (1e-4
  0.0375), before the field agreement read between block centres. A global
  gamma instead (every pixel, no wet test) refused 6 / 12 / 17
  / 17 (0.8) and 7 / 17 / 18 / 17 (0.6) at the old 1e-4 threshold 0.0375:
  it costs the bright, dry prints what it gives the dark ones. The wet-only
  blend at gamma 0.6 (calibration refitted the same way) kept the tail's shape
  but raised the 1e-4 threshold to 0.0404 (DB4): 7 / 19 / 16 / 14 refused.
* **Orientation** from the gradient structure tensor averaged over about one ridge
  period, then smoothed again as doubled-angle unit vectors weighted by coherence,
  so confident regions repair noisy ones without averaging opposite directions to
  zero.
  Measured and not taken (2026-12-02; every FVC2002 B template re-extracted, the
  calibration refitted exactly as it is fitted: four folders, pairs across them,
  200 synthetic fingers seed 1000): the tensor taken on the band-passed image
  (the sigma-1 blur less a blur of sigma 3, 4 or 6, which takes the dark blobs
  of faint prints out of the gradients) refused 48 / 51 / 52 genuine pairs of
  1,120 at the refitted 1e-4 threshold (0.0407 / 0.0410 / 0.0407) against 55 at
  0.0392, but no folder's refusals halve and the mean EER rose (1.06 -> 1.59 /
  1.33 / 1.07 %; sigma 3 took FVC2002 DB3 to 3.57 %); the normalised image
  clipped to +-1 or +-1.5 (60 and 52 refusals at the current thresholds) or
  squashed by tanh (51) before the gradients did no better.
* **Ridge period** from the ratio of gradient energy to signal energy over the
  foreground (for a sinusoid it is the squared angular frequency), corrected for
  the discrete operators by measuring them on exact sinusoids, and clamped to the
  anatomical range (about 6 to 13 pixels at 500 dpi).
* **Contextual filtering** with an even Gabor filter tuned to the local
  orientation and the period: a bank of 16 orientations, each done as the sum of
  two separable filters (cos(a+b) = cos a cos b - sin a sin b), then a per-pixel
  selection by orientation. Its envelope is isotropic.
  Measured and not taken (2026-12-03): a longer envelope along the ridges only
  (the response blurred by a 1-D Gaussian of s periods along the local ridge
  direction, which is an envelope of sqrt(0.55^2 + s^2) periods along and 0.55
  across, since the carrier is constant along the ridge), aimed at the cause of
  most refusals at the 1e-4 threshold. That cause, from the 55 genuine FVC2002
  pairs refused at 0.0392: aligned on every minutia pair in turn (the best
  alignment any anchor gives), 31 still pair under half of a common region of
  more than 10 minutiae (DB2 109, DB3 110, DB4 108 / 109 / 110: spurious or
  missing minutiae in speckled or dry ridges), 18 share 10 minutiae or fewer (a
  small overlap: DB1 103 / 110, DB3 105, DB4 x_7), 6 pair well but score low
  on LSS-R or the field; and only 58 % of the best alignment's pairs are
  mutually-best cylinder pairs in them (92 % in passing mates), because the
  spurious neighbours corrupt the cylinders too. On DB4 110_4 the longer
  envelope took the minutiae from 28 to 16 and the pair with 110_5 from 0 to
  0.031, but over all templates re-extracted (calibration refitted exactly:
  four folders, pairs across them, 200 synthetic fingers seed 1000) it lost
  true minutiae with the false: s = 0.35 refused 8 / 19 / 33 / 27 of 280 pairs
  on DB1-4 at the refitted 1e-4 threshold 0.0469 (against 6 / 14 / 19 / 16 at
  0.0392; mean EER 1.06 -> 1.16 %), s = 0.8 13 / 27 / 42 / 47 at 0.0411 (EER
  3.30 %; minutiae per print 36 / 43 / 25 / 29 -> 31 / 37 / 20 / 24), and s =
  0.8 for the binarised ridges only (filtered energy, clarity and reliability
  unchanged) 16 / 32 / 42 / 45 at 0.0447 (EER 2.77 %). Of the 55 refused pairs
  s = 0.35 lifted 11 over 0.0392 while 16 passing ones fell under it, and the
  impostor tail rose (DB4's 1e-4 threshold 0.0392 -> 0.0469).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from biometrics.fingerprint.image import shrink

N_ORIENTATIONS = 16
MIN_PERIOD, MAX_PERIOD, DEFAULT_PERIOD = 6.0, 13.0, 9.0
FINE_PERCENTILE = 10.0  # the filter is tuned to the finer ridges of the finger
# Gaussian envelope of the Gabor filter, in periods: its frequency response has a
# standard deviation of 1 / (2 pi 0.55) = 0.29 of the tuned frequency, about the
# spread of local ridge frequencies around the tuned one over a finger. Measured again
# with the second round's matcher (calibration refitted exactly each time, four FVC2002
# folders, pairs across them, 200 synthetic fingers): the mean FNMR of the folders at the
# 1e-4 threshold was 11.9 / 6.2 / 4.9 / 8.8 / 8.5 % at 0.45 / 0.50 / 0.55 / 0.60 / 0.70
# (0.50 refused 5 / 18 / 22 / 24 of 280 pairs on DB1-4, against 6 / 14 / 19 / 16 here).
GABOR_SIGMA = 0.55
MIN_SEGMENT_COHERENCE = 0.2  # random texture stays below, ridges (even noisy ones) above


@dataclass(frozen=True, slots=True)
class Analysis:
    """Intermediate results at 500 dpi for one capture."""

    image: np.ndarray  # uint8, at 500 dpi
    scale: float  # 500 dpi pixels per input pixel
    normalised: np.ndarray  # float32, zero local mean, unit local deviation
    mask: np.ndarray  # bool, foreground (finger) pixels
    contrast: np.ndarray  # float32, local standard deviation in grey levels
    orientation: np.ndarray  # float32, ridge-normal (gradient) direction in [0, pi), image coordinates
    coherence: np.ndarray  # float32, 0..1, how well a single orientation explains the gradients
    period: float  # ridge period in pixels
    ridge_share: float = 0.0  # share of the foreground energy in the ridge band (about 0.5 for ridges)
    source_width: int = 0  # the input image, before resampling to 500 dpi
    source_height: int = 0
    source_dpi: int = 500

    @property
    def ridge_direction(self) -> np.ndarray:
        """Ridge direction (perpendicular to the gradient), in [0, pi), image coordinates."""
        return np.mod(self.orientation + np.pi / 2, np.pi).astype(np.float32)


def _local_stats(image: np.ndarray, ksize: int, squared: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Local mean and standard deviation, float32, of a uint8 image (``squared``: its float32 square, if at hand).

    The mean is the box's integer sum (exact in float32, below 2^24) divided by
    the box's area: the correctly rounded quotient is what cv2.blur of the
    float image gives (its double sum times the double reciprocal, rounded to
    float32, never lands across a float32 rounding boundary of a quotient by an
    integer), from the cheaper 8-bit integer filter.
    """
    mean = cv2.boxFilter(image, cv2.CV_32F, (ksize, ksize), normalize=False)
    mean /= ksize * ksize
    if squared is None:
        squared = np.square(image, dtype=np.float32)
    std = cv2.blur(squared, (ksize, ksize))
    std -= mean * mean  # in place from here: the same arithmetic without temporaries
    np.maximum(std, 0.0, out=std)
    np.sqrt(std, out=std)
    return mean, std


def _percentile(values: np.ndarray, q: float) -> float:
    """np.percentile(values, q) of a 1-D array (linear method), the same number at a fraction of the cost.

    Its two order statistics around the position np.percentile uses come from one
    partition, and numpy's own interpolation between them (:func:`_lerp`) gives
    its result; np.percentile's general machinery costs several times more here.
    """
    n = len(values)
    if n < 2:
        return float(np.percentile(values, q))
    virtual = (n - 1) * (q / 100.0)
    lo = min(int(np.floor(virtual)), n - 2)
    below, above = _adjacent_order_statistics(values, lo)
    return float(_lerp(below, above, virtual - lo))


def _adjacent_order_statistics(values: np.ndarray, k: int) -> tuple[np.generic, np.generic]:
    """The k-th and (k+1)-th smallest of ``values`` (0-based, k + 1 < len): one partition, then the least above.

    Partitioning for two positions at once costs several times one.
    """
    part = np.partition(values, k)
    return part[k], part[k + 1 :].min()


def _lerp(below: np.generic, above: np.generic, t: float) -> np.generic:
    """np.percentile's interpolation (numpy's ``_lerp``, in the values' dtype) at fraction ``t`` from ``below``."""
    diff = above - below
    return above - diff * (1 - t) if t >= 0.5 else below + diff * t


def segment(contrast: np.ndarray, coherence: np.ndarray) -> np.ndarray:
    """Foreground mask from local contrast and orientation coherence, cleaned, holes filled.

    Contrast alone takes a textured sensor background for finger; ridges are also
    oriented (coherent), noise is not. Both must hold.

    Works on 4x4 blocks (the mask need not be finer than a third of a ridge
    period) and is brought back to full size at the end.
    """
    h, w = contrast.shape
    small = shrink(contrast, (max(1, w // 4), max(1, h // 4)))
    strong = _percentile(small.ravel(), 95.0)
    if strong <= 1e-6:
        return np.zeros(contrast.shape, bool)
    coh = shrink(coherence, (small.shape[1], small.shape[0]))
    coh = cv2.GaussianBlur(coh, (0, 0), 2.0)
    raw = ((small > max(0.25 * strong, 3.0)) & (coh > MIN_SEGMENT_COHERENCE)).astype(np.uint8)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    raw = cv2.morphologyEx(raw, cv2.MORPH_OPEN, kernel)
    raw = cv2.morphologyEx(raw, cv2.MORPH_CLOSE, kernel)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(raw, connectivity=8)
    if count <= 1:
        return np.zeros(contrast.shape, bool)
    areas = stats[1:, cv2.CC_STAT_AREA]
    keep = np.zeros(count, np.uint8)
    keep[1:] = areas >= 0.2 * areas.max()
    # Fill holes: background not reachable from the image border is foreground. A ring
    # of background around the image joins every part of it that touches the border
    # into one 4-connected component, the ring's (label 1, the first pixel's).
    inv = np.ones((labels.shape[0] + 2, labels.shape[1] + 2), np.uint8)
    inv[1:-1, 1:-1] = 1 - keep[labels]
    _, labels_b = cv2.connectedComponents(inv, connectivity=4)
    filled = (labels_b[1:-1, 1:-1] != 1).view(np.uint8)
    return cv2.resize(filled, (w, h), interpolation=cv2.INTER_NEAREST).view(bool)


def orientation_field(norm: np.ndarray, smooth: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Gradient direction in [0, pi) and coherence in [0, 1].

    The tensor is averaged at half resolution (orientation varies slowly compared
    with the pixel grid), which makes the wide Gaussian windows four times cheaper.
    ``smooth`` is norm blurred with sigma 1, when the caller has it (see :func:`_energies`).
    """
    h, w = norm.shape
    if smooth is None:
        smooth = cv2.GaussianBlur(norm, (0, 0), 1.0)
    gx = cv2.Sobel(smooth, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(smooth, cv2.CV_32F, 0, 1, ksize=3)
    half = (max(1, w // 2), max(1, h // 2))
    product = gx * gx  # one full-size buffer for the three products
    gxx = shrink(product, half)
    gyy = shrink(np.multiply(gy, gy, out=product), half)
    gxy = shrink(np.multiply(gx, gy, out=product), half)
    gxx = cv2.GaussianBlur(gxx, (0, 0), 2.5)
    gyy = cv2.GaussianBlur(gyy, (0, 0), 2.5)
    gxy = cv2.GaussianBlur(gxy, (0, 0), 2.5)
    c2 = gxx - gyy
    s2 = 2.0 * gxy
    energy = gxx + gyy + 1e-6
    mag = np.sqrt(c2 * c2 + s2 * s2)
    coherence = mag / energy
    # Second smoothing as doubled-angle unit vectors weighted by coherence.
    wgt = coherence / (mag + 1e-6)
    c2s = cv2.GaussianBlur(c2 * wgt, (0, 0), 3.5)
    s2s = cv2.GaussianBlur(s2 * wgt, (0, 0), 3.5)
    c2s = cv2.resize(c2s, (w, h), interpolation=cv2.INTER_LINEAR)
    s2s = cv2.resize(s2s, (w, h), interpolation=cv2.INTER_LINEAR)
    coherence = cv2.resize(coherence, (w, h), interpolation=cv2.INTER_LINEAR)
    # cv2.phase is atan2 in [0, 2 pi) to within 0.01 degree, 30 times faster than numpy's
    # float32 arctan2 here (which took an eighth of the whole extraction).
    theta = cv2.phase(c2s, s2s)
    theta *= 0.5
    np.subtract(theta, np.pi, out=theta, where=theta >= np.pi)  # in place, no gather and scatter
    # coherence = mag / energy is never negative (nor is its linear interpolation): only the
    # upper bound can bite, and np.minimum applies it at a fraction of np.clip's cost.
    return theta, np.minimum(coherence, 1.0, out=coherence)


def _energies(norm: np.ndarray, smooth: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """64 times the squared gradient, and the squared signal, of the band-passed image.

    ``smooth``: as for the orientation.

    The 3x3 Sobel operator is 8 times the derivative. The callers divide by 64
    only what they keep of the squared gradient (a sum, or the windows at the
    foreground's pixels): a power of two scales every float32 sum and product
    exactly, so the result is the same as dividing each pixel first, without a
    pass over the full-size image (about 0.04 ms on a 388x374 image).
    """
    if smooth is None:
        smooth = cv2.GaussianBlur(norm, (0, 0), 1.0)
    band = cv2.GaussianBlur(norm, (0, 0), 4.0)
    smooth = np.subtract(smooth, band, out=band)  # into the blur's buffer: one full-size array fewer
    gx = cv2.Sobel(smooth, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(smooth, cv2.CV_32F, 0, 1, ksize=3)
    gx *= gx
    gy *= gy
    gx += gy
    smooth *= smooth
    return gx, smooth


def _gradient_period(norm: np.ndarray, weight: np.ndarray) -> float:
    """Raw period estimate 2*pi / sqrt(E|grad I|^2 / E I^2) over the weighted pixels.

    For a sinusoid I = cos(w . x) the mean squared gradient is |w|^2 times the mean
    squared signal, whatever the orientation; the ratio of sums is a robust mean.
    """
    grad, sig = _energies(norm)
    g = float((grad * weight).sum()) / 64.0
    s = float((sig * weight).sum())
    if g <= 1e-9 or s <= 1e-9:
        return DEFAULT_PERIOD
    return float(2.0 * np.pi / np.sqrt(g / s))


def _calibration() -> tuple[np.ndarray, np.ndarray]:
    """Raw estimates of synthetic sinusoids of known period.

    The discrete derivative and the pre-smoothing bias the raw estimate (by about
    0.8 pixel); measuring the same operator on exact sinusoids gives the mapping
    back to the true period, with no data set involved.
    """
    yy, xx = np.mgrid[0:80, 0:80].astype(np.float32)
    weight = np.zeros((80, 80), np.float32)
    weight[12:-12, 12:-12] = 1.0
    true = np.arange(4.0, 17.0, 1.0)
    raw = []
    for p in true:  # 13 periods x 4 orientations, once at import
        est = [
            _gradient_period(np.cos(2 * np.pi / p * (xx * np.cos(a) + yy * np.sin(a))).astype(np.float32), weight)
            for a in (0.0, np.pi / 8, np.pi / 4, 3 * np.pi / 8)
        ]
        raw.append(np.mean(est))
    return np.array(raw), true


_RAW, _TRUE = _calibration()


def ridge_period(norm: np.ndarray, mask: np.ndarray) -> float:
    """Ridge period (pixels) the contextual filter is tuned to (see :func:`ridge_measures`)."""
    return ridge_measures(norm, mask)[0]


def ridge_measures(norm: np.ndarray, mask: np.ndarray, smooth: np.ndarray | None = None) -> tuple[float, float]:
    """Ridge period (pixels) the contextual filter is tuned to, and the ridge-band energy share.

    Local periods (the energy ratio over windows of about two periods) vary over
    a finger; the filter is tuned to the finer ridges (10th percentile of the local
    periods), because a filter tuned too coarse merges neighbouring ridges and
    erases minutiae, while one tuned a little fine only passes some extra noise.

    The share is the foreground energy left by the ridge band-pass over the
    energy of the normalised image: about 0.5 for ridges, near 0 for flat or
    smooth surfaces and for textures much finer than ridges.
    """
    mask8 = mask.view(np.uint8)
    if cv2.countNonZero(mask8) < 1024:
        return DEFAULT_PERIOD, 0.0
    grad, sig = _energies(norm, smooth)
    # Sums over the foreground by cv2.norm with the mask (double sums, one read-only pass each): a
    # quarter of the time of float32 dot products with the mask as weights (about 0.06 ms).
    total = cv2.norm(norm, cv2.NORM_L2SQR, mask=mask8)
    share = cv2.norm(sig, cv2.NORM_L1, mask=mask8) / total if total > 1e-6 else 0.0
    # Window sums at half resolution: the local period varies slowly.
    h, w = mask.shape
    half = (max(1, w // 2), max(1, h // 2))
    inside = cv2.resize(mask8, half, interpolation=cv2.INTER_NEAREST).view(bool)
    g = cv2.GaussianBlur(shrink(grad, half), (0, 0), 4.0)[inside]
    g *= 1.0 / 64.0  # the squared gradient itself (see _energies)
    s = cv2.GaussianBlur(shrink(sig, half), (0, 0), 4.0)[inside]
    if len(g) == 0:
        return DEFAULT_PERIOD, share
    return float(np.clip(_fine_period(g, s), MIN_PERIOD, MAX_PERIOD)), share


def _fine_period(g: np.ndarray, s: np.ndarray) -> float:
    """The FINE_PERCENTILE of the calibrated local periods 2 pi / sqrt(g / s), from two of them.

    The local period falls as the energy ratio g / s rises, and the calibration
    is increasing, so the percentile's two neighbouring order statistics are
    those of the ratio taken from the top: a partition of the ratios finds them,
    and only those two are turned into periods. numpy's interpolation between
    the two (:func:`_lerp`) then gives exactly np.percentile of all the local
    periods without computing them.
    """
    ratio = np.maximum(g, 1e-9)
    ratio /= np.maximum(s, 1e-9)
    n = len(ratio)
    if n < 2:
        return float(np.percentile(np.interp(2.0 * np.pi / np.sqrt(ratio), _RAW, _TRUE), FINE_PERCENTILE))
    virtual = (n - 1) * (FINE_PERCENTILE / 100.0)  # np.percentile's position in the sorted periods
    lo = int(np.floor(virtual))
    # The lo-th and (lo+1)-th smallest periods are the lo-th and (lo+1)-th largest ratios.
    smaller, larger = _adjacent_order_statistics(ratio, n - 2 - lo)
    pair = 2.0 * np.pi / np.sqrt(np.array([larger, smaller]))
    below, above = np.interp(pair, _RAW, _TRUE)
    return float(_lerp(below, above, virtual - lo))


# Rounded orientation index to label: N_ORIENTATIONS is orientation 0 again (and so on, for
# any non-negative angle, as np.rint(...) % n).
_WRAP_LUT = (np.arange(256) % N_ORIENTATIONS).astype(np.uint8)


# Filter planning (see _filter_jobs): strips of STRIP rows, and the fixed costs of one
# filter call and of one masked write in pixels of filtering (a sepFilter2D call costs
# about as much as filtering 2,000 more pixels).
STRIP = 48
CALL_PIXELS = 2000
WRITE_PIXELS = 1000

Box = tuple[int, int, int, int]  # y0, y1, x0, x1


def _strip_boxes(index: np.ndarray, n: int) -> list[list[Box | None]]:
    """Bounding box of each orientation label's pixels in each strip of STRIP rows (None where none).

    Each pixel sets its label's bit (one table lookup into 16-bit words); OR-ing
    the words over each strip's rows, and along each row, gives which labels
    each column of a strip and each row hold, in two reductions instead of one
    scan of the image per label.
    """
    if n > 31:
        raise ValueError(f"{n} orientation labels do not fit the 32-bit label sets: use at most 31")
    h, w = index.shape
    table = np.zeros(256, np.uint16 if n <= 16 else np.int32)
    table[:n] = np.left_shift(1, np.arange(n))
    m = -(-h // STRIP)
    coded = np.zeros((m * STRIP, w), table.dtype)  # whole strips, no labels below the image
    cv2.LUT(index, table, dst=coded[:h])
    bits = table[:n, None, None]
    across = np.bitwise_or.reduce(coded.reshape(m, STRIP, w), axis=1)[None] & bits != 0
    along = np.bitwise_or.reduce(coded, axis=1).reshape(m, STRIP)[None] & bits != 0
    starts = np.arange(0, m * STRIP, STRIP)
    boxes = np.stack(
        [
            starts + along.argmax(axis=2),
            starts + STRIP - along[..., ::-1].argmax(axis=2),
            across.argmax(axis=2),
            w - across[..., ::-1].argmax(axis=2),
        ],
        axis=2,
    ).tolist()
    held = across.any(axis=2).tolist()
    return [[tuple(b) if k else None for b, k in zip(bs, ks, strict=True)] for bs, ks in zip(boxes, held, strict=True)]


def _union(a: Box | None, b: Box | None) -> Box | None:
    """Bounding box of two boxes (either may be None)."""
    if a is None or b is None:
        return a if b is None else b
    return min(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), max(a[3], b[3])


def _filter_jobs(index: np.ndarray, n: int, half: int) -> list[tuple[int, Box, list[int]]]:
    """Which filter pairs to run over which boxes: (orientation, box (y0, y1, x0, x1), labels served).

    The orientations a and pi - a share both separable filters: cos(f x cos a) and
    the y factors are the same, sin(f x cos a) changes sign. With A and B the two
    separable responses, a's response is A - B and pi - a's is A + B. One pass over
    the union of their boxes serves both when that costs less than two passes.

    A label's pixels form a band that curves with the ridge flow, and its
    bounding box holds many other pixels (on FVC2002 images, the boxes of the
    16 labels add up to several times the foreground). So a label's pixels are
    boxed strip by strip (STRIP rows), and consecutive strips' boxes are joined
    while one box costs less than two (pixels filtered, the halo included, plus
    the fixed costs of the calls): about a fifth less filtering time on
    FVC2002 images, for a few tenths of a millisecond more planning. Every
    pixel is in exactly one box of a job serving its label.
    """
    h, w = index.shape

    def groups(strips: list[Box | None], filters: int) -> tuple[int, list[Box]]:
        """Consecutive strips' boxes joined while one box costs less than two; the total cost and the boxes.

        A box's cost: its crop (box and halo, within the image) times the filters,
        plus the calls' fixed costs; sepFilter2D's row pass also covers the
        half-width beyond the crop above and below. Written out inline: this
        runs a few hundred times per image.
        """
        fixed = filters * CALL_PIXELS + WRITE_PIXELS
        out: list[Box] = []
        total = spent = top = 0
        current: Box | None = None
        for box in strips:
            if box is None:
                continue
            y0, y1, x0, x1 = box
            left, right = (x0 - half if x0 > half else 0), (x1 + half if x1 + half < w else w)
            bottom = y1 + half if y1 + half < h else h
            alone = filters * (bottom - (y0 - half if y0 > half else 0) + half) * (right - left) + fixed
            if current is None:
                current, spent, top = box, alone, y0 - half if y0 > half else 0
                continue
            c0, c1 = current[2], current[3]
            left2 = left if x0 < c0 else (c0 - half if c0 > half else 0)
            right2 = right if x1 > c1 else (c1 + half if c1 + half < w else w)
            both = filters * (bottom - top + half) * (right2 - left2) + fixed
            if both > spent + alone:  # strips go down: a joined box runs from the current top to this bottom
                out.append(current)
                total += spent
                current, spent, top = box, alone, y0 - half if y0 > half else 0
            else:
                current, spent = (current[0], y1, min(c0, x0), max(c1, x1)), both
        if current is not None:
            out.append(current)
            total += spent
        return total, out

    per_strip = _strip_boxes(index, n)
    jobs = []
    for k in range(n // 2 + 1):
        filters = 2 if k % (n // 2) else 1
        present = [j for j in dict.fromkeys((k, (n - k) % n)) if any(per_strip[j])]
        alone = [(j, *groups(per_strip[j], filters)) for j in present]
        if len(present) == 2:
            together, boxes = groups(
                [_union(a, b) for a, b in zip(*(per_strip[j] for j in present), strict=True)], filters
            )
            if together <= alone[0][1] + alone[1][1]:
                jobs.extend((k, box, present) for box in boxes)
                continue
        jobs.extend((k, box, [j]) for j, _, boxes in alone for box in boxes)
    return jobs


def _label_mask(labels: np.ndarray, j: int) -> np.ndarray:
    """0/255 uint8 mask of the pixels labelled ``j``.

    cv2.compare with a scalar is the cheapest way (a third less than cv2.inRange,
    half a table lookup), but takes a 1x1 image's scalar for a 1x1 array of
    another type and refuses it; inRange gives the same mask there.
    """
    if labels.size == 1:
        return cv2.inRange(labels, j, j)
    return cv2.compare(labels, float(j), cv2.CMP_EQ)


def gabor_enhance(
    norm: np.ndarray, theta: np.ndarray, period: float, where: np.ndarray | None = None, out: np.ndarray | None = None
) -> np.ndarray:
    """Even Gabor response tuned per pixel to ``theta`` (gradient direction, radians >= 0) and ``period``.

    With ``where``, only those pixels get a response (0 elsewhere). Each filter
    then runs only over boxes holding the pixels it serves (see
    :func:`_filter_jobs`), plus the kernel's half-width: the halo holds the same
    pixels as the whole image, and where a box meets the image's edge the same
    border reflection applies, so the response is that of the whole-image
    filter. To the last bits only: OpenCV's vectorised and scalar loops round
    differently and a box's edges decide which one a pixel falls in (about 1e-6
    here, on responses of order 1). Templates of the FVC2002 images are the same
    with one box per label as with the strips of boxes. Mirror orientations
    share their filters.

    ``out``, if given, is a zeroed float32 array of ``norm``'s shape (a view into a
    larger image will do) that receives the response and is returned: the caller
    saves a copy.
    """
    n = N_ORIENTATIONS
    sigma = GABOR_SIGMA * period
    half = int(np.ceil(2.5 * sigma))
    t = np.arange(-half, half + 1, dtype=np.float32)
    g = np.exp(-(t * t) / (2 * sigma * sigma)).astype(np.float32)
    f = 2 * np.pi / period
    angles = np.arange(n, dtype=np.float32) * (np.pi / n)
    # Nearest of the n orientations; theta just below pi rounds to n, which is orientation 0.
    # convertScaleAbs is the float32 product and round-half-even of np.rint, straight to
    # bytes, and the table folds n to 0: one pass each instead of four with int32 copies.
    index = cv2.LUT(cv2.convertScaleAbs(theta, alpha=n / np.pi), _WRAP_LUT)
    if where is not None:
        np.copyto(index, n, where=~where)  # no orientation: not filtered
    # The separable factors of every orientation, computed at once.
    along_x = f * np.cos(angles)[:, None] * t[None, :]
    along_y = f * np.sin(angles)[:, None] * t[None, :]
    even_x, even_y = g * np.cos(along_x), g * np.cos(along_y)
    odd_x, odd_y = g * np.sin(along_x), g * np.sin(along_y)
    if out is None:
        out = np.zeros_like(norm)
    elif out.dtype != np.float32 or out.shape != norm.shape:
        # OpenCV would silently allocate its own output and leave ``out`` all zeros.
        raise ValueError(f"out must be a float32 array of shape {norm.shape}; got {out.dtype} {out.shape}")
    h, w = norm.shape
    # The filters' outputs go into two buffers allocated once (views of a crop's size).
    even_out, odd_out = np.empty_like(norm), np.empty_like(norm)
    for k, (y0, y1, x0, x1), served in _filter_jobs(index, n, half):
        ya, yb, xa, xb = max(0, y0 - half), min(h, y1 + half), max(0, x0 - half), min(w, x1 + half)
        crop = norm[ya:yb, xa:xb]
        inner = (slice(y0 - ya, y1 - ya), slice(x0 - xa, x1 - xa))
        a = cv2.sepFilter2D(crop, cv2.CV_32F, even_x[k], even_y[k], dst=even_out[: yb - ya, : xb - xa])[inner]
        # The second filter is zero at 0 (sin 0 = 0 along y) and at 90 degrees (cos = 0
        # along x, to within float rounding: 4e-8, a response a million times below the first).
        b = None
        if k % (n // 2):
            b = cv2.sepFilter2D(crop, cv2.CV_32F, odd_x[k], odd_y[k], dst=odd_out[: yb - ya, : xb - xa])[inner]
        labels = index[y0:y1, x0:x1]
        target = out[y0:y1, x0:x1]
        for j in served:
            # The response is written only where orientation j is wanted: OpenCV's masked
            # copy into the view of ``out`` (same shape and type), at a tenth of the time of
            # numpy's ``where=``. The sum or difference is taken over the whole box first,
            # then copied through the mask: the same float32 sums as OpenCV's masked
            # arithmetic, at about half its cost; and cv2.compare makes the 0/255 mask in
            # about half the time of a table lookup.
            wanted = _label_mask(labels, j)
            if b is None:
                response = a
            else:
                # The last label served needs b no more: its result goes into b's buffer.
                into = b if j == served[-1] else None
                response = cv2.subtract(a, b, dst=into) if j == k else cv2.add(a, b, dst=into)
            cv2.copyTo(response, wanted, target)
    return out


def analyse_reference(image: np.ndarray, scale: float) -> Analysis:
    """Analyse a uint8 image already at 500 dpi."""
    img = image.astype(np.float32)
    squared = img * img
    _, contrast = _local_stats(image, 17, squared)
    mean, std = _local_stats(image, 25, squared)
    norm = img - mean  # float32 throughout; (img - mean) / (std + 4) in place
    std += 4.0
    norm /= std
    smooth = cv2.GaussianBlur(norm, (0, 0), 1.0)  # shared by the orientation and the period
    theta, coherence = orientation_field(norm, smooth)
    mask = segment(contrast, coherence)
    period, share = ridge_measures(norm, mask, smooth)
    return Analysis(
        image=image,
        scale=scale,
        normalised=norm,
        mask=mask,
        contrast=contrast,
        orientation=theta,
        coherence=coherence,
        period=period,
        ridge_share=share,
    )
