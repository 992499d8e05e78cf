"""Synthetic fingers with ground-truth minutiae (SFinGe-like), and replay of image folders.

Tests and simulated readers need fingerprints whose minutiae are known and of
which any number of different impressions can be taken; data sets give neither
ground truth nor unlimited impressions. The generator follows the SFinGe recipe
(Cappelli, Maio, Maltoni):

1. **Orientation field** from singular points with the Sherlock-Monro zero-pole
   model, ``theta(z) = theta0 + 1/2 (sum arg(z - delta) - sum arg(z - core))``,
   one configuration per finger class (arch, tented arch, left and right loop,
   whorl, drawn at their natural frequencies); the plain arch has no singular
   point and uses a bump-shaped flow. Singular points are spread widely (loop
   size and slant, whorl spacing) and a smooth per-finger deviation is added to
   the model: fingers of one class must not share their flow.
   Each singular point's angle function is also bent by a random monotone warp
   (Vizcaya and Gerhardt's correction), so loops differ in shape, not only in
   where their points lie.
2. **Ridge period map**: a smooth random field around a per-finger mean (7.4 to
   10.2 pixels at 500 dpi, the range of real fingers).
3. **Ridge growth**: a random seed image is filtered again and again with the
   Gabor filter tuned to each pixel's orientation and period (one
   ``cv2.filter2D`` per orientation/period bin, blended per pixel, then a
   saturating non-linearity) until a ridge pattern fills the finger. Growth runs
   at half resolution (4x fewer pixels, 4x smaller kernels) and is upsampled.
   Growth leaves mostly the minutiae the flow forces, and those all point one
   way along a class's flow; so 25 to 45 pairs of opposite dislocations (short
   ridges, ridges that stop and start again) are then blended in at random
   places (:func:`dislocation_pairs`). Without them different synthetic fingers
   of a class matched each other far more than real ones do.
4. **Ground truth**: the grown pattern is binarised, cleaned (specks, holes,
   spurs), thinned, and minutiae are read off the skeleton (crossing number 1 is
   an ending, 3 a bifurcation). The master image is rendered from that same
   cleaned ridge map, so what the image shows and the ground truth agree.

Impressions apply rotation, translation, an elastic displacement (drag and twist
around where the finger first touched, Cappelli's model), pressure (ridge
thickness by erosion or dilation), patches of dry and wet skin and creases
(different in every impression), dry skin printing faint broken ridges, partial
contact, background and noise, and move the ground-truth minutiae through the
same mapping (those off the contact area are dropped). How the parameters are
drawn is a capture profile (:data:`PROFILES`): "cooperative" (a careful user,
the default for simulated readers) or "realistic" (FVC2002's spread of
impressions, with its share of genuine pairs that fail, for population
benchmarks).

Ground-truth minutiae (:class:`TrueMinutiae`) have the fields and conventions
of the extractor's (``biometrics.fingerprint.types.Minutiae``), so a test or a
benchmark compares the two directly; the simulators import nothing of the
algorithms they are there to test (DESIGN.md: drivers' public constants only).
Pixel coordinates with y down, angle in radians counter-clockwise as seen, an ending's direction pointing
into its ridge, a bifurcation's pointing into the valley between its branches.

Everything is deterministic from the seeds. Masters are cached (``lru_cache``),
so taking many impressions of a finger pays the growth once.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np
import structlog

from simulators.errors import SimulatorError
from simulators.images import read_image

log = structlog.get_logger()

DPI = 500
MASTER_SIZE = (416, 544)  # (width, height) of the master canvas; a finger is about 0.7 x 1 inch
DEFAULT_SIZE = (300, 400)  # (width, height): a 500 dpi optical sensor's window
FINGER_CLASSES = ("arch", "tented_arch", "left_loop", "right_loop", "whorl")
_CLASS_WEIGHTS = (0.037, 0.029, 0.338, 0.317, 0.279)  # natural frequencies (Wilson, Candela, Watson 1993)

_ORIENTATION_BINS = 16
_GROWTH_ITERATIONS = 14
_GROWTH_SCALE = 0.5
_DETAIL = (0.50, 0.80)  # radians, amplitude of the smooth per-finger orientation deviation
_ANGLE_WARP = 0.25  # radians, spread of the warp of each singular point's angle function
_PERIOD = (7.4, 10.2)  # pixels at 500 dpi, range of the per-finger mean ridge period (FVC2002 measures 7.6-7.9)
_ITERATIONS = (16, 20)  # growth iterations per master
_PAIRS = (25, 45)  # dislocation pairs (short ridges, interruptions, enclosures) per master
_PAIR_LENGTH = (3.5, 7.5)  # periods

KIND_ENDING = 1  # ISO/IEC 19794-2 minutia types, the extractor's codes
KIND_BIFURCATION = 2


@dataclass(frozen=True, slots=True)
class TrueMinutiae:
    """The minutiae a synthetic finger was grown with, as parallel arrays of equal length.

    Ground truth for tests and benchmarks of the extractor: the same fields,
    dtypes and conventions as its own minutiae, with every quality 100.
    """

    x: np.ndarray  # float32
    y: np.ndarray  # float32
    angle: np.ndarray  # float32, radians
    kind: np.ndarray  # uint8: KIND_ENDING or KIND_BIFURCATION
    quality: np.ndarray  # uint8

    def __len__(self) -> int:
        return len(self.x)


# ---------------------------------------------------------------- small geometry helpers


def _rotate(dx: np.ndarray, dy: np.ndarray, phi: float) -> tuple[np.ndarray, np.ndarray]:
    """Rotate pixel-space vectors (y down) by ``phi`` counter-clockwise as seen."""
    c, s = math.cos(phi), math.sin(phi)
    return dx * c + dy * s, -dx * s + dy * c


SEED_RANGE = (-(2**63), 2**63)
"""Seeds, finger ids and impression numbers a generator takes: those that fit a signed 64-bit word.

Each is folded into 64 bits of seed material, so wider ones would alias: finger 2**64 was
finger 0, and -1 was 2**64 - 1. Refusing them keeps one number, one finger."""


def check_seed_number(value: int, what: str) -> int:
    """``value`` as an int if it is within :data:`SEED_RANGE`, else a SimulatorError naming the range."""
    number = int(value)
    low, high = SEED_RANGE
    if not low <= number < high:
        raise SimulatorError(
            f"{what} {str(number)[:24]}{'...' if len(str(number)) > 24 else ''} is outside the generator's range",
            f"give a {what} from -2**63 to 2**63 - 1 (wider numbers would name the same finger as a smaller one)",
        )
    return number


def _entropy(*values: int) -> list[int]:
    """Seed material for numpy from any ints within :data:`SEED_RANGE` (negative ones included)."""
    return [int(v) & 0xFFFFFFFFFFFFFFFF for v in values]


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> np.ndarray:
    """A smooth random field in about [-1, 1]: a coarse grid of noise upsampled with cubic interpolation."""
    h, w = shape
    gh = max(2, round(cells * h / max(h, w)))
    gw = max(2, round(cells * w / max(h, w)))
    coarse = rng.uniform(-1.0, 1.0, (gh, gw)).astype(np.float32)
    return cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)


def _ellipse_mask(shape: tuple[int, int], cx: float, cy: float, ax: float, ay: float) -> np.ndarray:
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return (((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2 <= 1.0).astype(np.uint8)


# ---------------------------------------------------------------- orientation and period


@dataclass(frozen=True)
class SingularPoints:
    """Cores and deltas in master pixel coordinates."""

    cores: tuple[tuple[float, float], ...]
    deltas: tuple[tuple[float, float], ...]


def singular_points(finger_class: str, rng: np.random.Generator, center: tuple[float, float]) -> SingularPoints:
    """Positions of the singular points of a finger class, spread as much as real fingers' are.

    Real fingers of one class differ above all in where their cores and deltas lie
    (loop size, delta distance and side angle, whorl spacing); fingers whose
    singular points sit in the same places have nearly the same ridge flow, and
    their minutiae look alike to a matcher. So the jitter is wide: the loop's
    core-to-delta distance ranges over 120 to 230 pixels at 500 dpi, its angle
    over about 40 degrees.
    """
    cx, cy = center
    j = lambda s: float(rng.normal(0.0, s))  # noqa: E731
    if finger_class == "arch":
        return SingularPoints((), ())
    if finger_class == "tented_arch":
        core = (cx + j(25), cy - 20 + j(30))
        return SingularPoints((core,), ((core[0] + j(10), core[1] + rng.uniform(45, 100)),))
    if finger_class in ("left_loop", "right_loop"):
        side = -1.0 if finger_class == "right_loop" else 1.0
        core = (cx + j(30), cy - 40 + j(35))
        distance = rng.uniform(120, 230)
        angle = math.radians(rng.uniform(38, 78))  # below the core, towards the delta's side
        delta = (core[0] + side * distance * math.cos(angle), core[1] + distance * math.sin(angle))
        return SingularPoints((core,), (delta,))
    if finger_class == "whorl":
        mid = (cx + j(20), cy - 30 + j(25))
        spread, tilt = rng.uniform(30, 60), rng.uniform(0, 2 * math.pi)
        c1 = (mid[0] - spread * math.cos(tilt) / 2, mid[1] - spread * math.sin(tilt) / 2)
        c2 = (mid[0] + spread * math.cos(tilt) / 2, mid[1] + spread * math.sin(tilt) / 2)
        drop = rng.uniform(90, 160)
        d1 = (mid[0] - rng.uniform(95, 165), mid[1] + drop + j(20))
        d2 = (mid[0] + rng.uniform(95, 165), mid[1] + drop + j(20))
        return SingularPoints((c1, c2), (d1, d2))
    raise ValueError(f"unknown finger class {finger_class!r}: use one of {', '.join(FINGER_CLASSES)}")


def orientation_field(
    shape: tuple[int, int], points: SingularPoints, rng: np.random.Generator, center: tuple[float, float]
) -> np.ndarray:
    """Ridge orientation in radians in [0, pi), counter-clockwise as seen (y down)."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    if not points.cores and not points.deltas:
        # Plain arch: ridges are level sets of F = y + a * bump(x) * ramp(y) (pixel y down):
        # they bulge upwards in the middle, less and less towards the crease.
        cx, cy = center
        sx = rng.uniform(90, 130)
        a = rng.uniform(50, 90)
        bump = np.exp(-(((xx - cx) / sx) ** 2))
        ramp = 1.0 / (1.0 + np.exp((yy - cy - 60) / 60.0))
        fy, fx = np.gradient(yy + a * bump * ramp)
        # The tangent (fy, -fx) in pixel space, as an angle counter-clockwise as seen.
        theta = np.arctan2(fx, fy)
    else:
        # Sherlock-Monro zero-pole model. The angles are taken in pixel space (y down),
        # where the model's signs flip: measured as seen, this is + cores - deltas.
        # Each point's angle function is bent by a random monotone warp g(a) = a + sum c_n sin(n a + p_n)
        # (Vizcaya and Gerhardt's correction, as in SFinGe): loops of one class then differ in shape
        # (how wide, how tilted, how the ridges recurve), not only in where their points lie.
        # g(a + 2 pi) = g(a) + 2 pi, so each point keeps its Poincare index.
        acc = np.zeros((h, w))
        for sign, pts in ((-1.0, points.cores), (1.0, points.deltas)):
            for px, py in pts:
                a = np.arctan2(yy - py, xx - px)
                c = rng.normal(0.0, _ANGLE_WARP, 3) / np.arange(1, 4)
                c *= min(1.0, 0.7 / max(float(np.sum(np.abs(c) * np.arange(1, 4))), 1e-9))  # g' > 0.3
                phase = rng.uniform(0, 2 * np.pi, 3)
                acc += sign * (a + sum(c[n] * np.sin((n + 1) * a + phase[n]) for n in range(3)))
        theta0 = rng.normal(0.0, 0.08)
        theta = theta0 + 0.5 * acc
    # Orientation detail: a smooth per-finger deviation from the model (the zero-pole model
    # alone gives every finger of a class the same flow away from its singular points).
    # Smooth and small, so it adds no singular point.
    detail = rng.uniform(*_DETAIL) * _smooth_noise(rng, (h, w), int(rng.integers(3, 6)))
    theta = theta + detail
    return np.mod(theta, np.pi).astype(np.float32)


def period_map(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Ridge period in pixels at 500 dpi: a per-finger mean with smooth variation."""
    mean = rng.uniform(*_PERIOD)
    return (mean + rng.uniform(0.4, 1.0) * _smooth_noise(rng, shape, 4)).astype(np.float32)


# ---------------------------------------------------------------- ridge growth


def _gabor(theta: float, period: float) -> np.ndarray:
    """Even Gabor kernel: ridges along ``theta`` (ccw as seen), zero mean, unit L1 norm."""
    sigma_across = 0.45 * period
    sigma_along = 0.7 * period
    r = math.ceil(2.5 * max(sigma_across, sigma_along))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1].astype(np.float64)
    ux, uy = math.cos(theta), -math.sin(theta)  # along the ridge, pixel space
    along = xx * ux + yy * uy
    across = -xx * uy + yy * ux
    k = np.exp(-0.5 * ((along / sigma_along) ** 2 + (across / sigma_across) ** 2)) * np.cos(2 * np.pi * across / period)
    k -= k.mean()
    return (k / np.abs(k).sum()).astype(np.float32)


def grow_ridges(
    theta: np.ndarray,
    period: np.ndarray,
    rng: np.random.Generator,
    iterations: int = _GROWTH_ITERATIONS,
) -> np.ndarray:
    """A ridge pattern (about +1 on ridges, -1 in valleys) following ``theta`` and ``period``.

    Iterative contextual filtering from random noise, vectorised per bin: every
    iteration filters the whole image once per (orientation, period) bin and
    blends the responses with per-pixel interpolation weights.
    """
    h, w = theta.shape
    sh, sw = round(h * _GROWTH_SCALE), round(w * _GROWTH_SCALE)
    # Orientation is doubled-angle averaged when shrinking, so it stays continuous.
    c2 = cv2.resize(np.cos(2 * theta), (sw, sh), interpolation=cv2.INTER_AREA)
    s2 = cv2.resize(np.sin(2 * theta), (sw, sh), interpolation=cv2.INTER_AREA)
    th = np.mod(0.5 * np.arctan2(s2, c2), np.pi)
    per = cv2.resize(period, (sw, sh), interpolation=cv2.INTER_AREA) * _GROWTH_SCALE

    pos = th / (np.pi / _ORIENTATION_BINS)
    b0 = np.floor(pos).astype(np.int64) % _ORIENTATION_BINS
    f = (pos - np.floor(pos)).astype(np.float32)
    p_lo, p_hi = float(per.min()), float(per.max()) + 1e-3
    g = np.clip((per - p_lo) / (p_hi - p_lo), 0.0, 1.0).astype(np.float32)
    bins: list[tuple[np.ndarray, np.ndarray]] = []
    for b in range(_ORIENTATION_BINS):
        w_orient = np.where(b0 == b, 1.0 - f, 0.0) + np.where((b0 + 1) % _ORIENTATION_BINS == b, f, 0.0)
        if not w_orient.any():
            continue
        for p, w_per in ((p_lo, 1.0 - g), (p_hi, g)):
            weight = (w_orient * w_per).astype(np.float32)
            if weight.any():
                bins.append((_gabor(b * np.pi / _ORIENTATION_BINS, p), weight))

    img = rng.normal(0.0, 1.0, (sh, sw)).astype(np.float32)
    for _ in range(iterations):
        out = np.zeros_like(img)
        for kernel, weight in bins:
            out += weight * cv2.filter2D(img, cv2.CV_32F, kernel, borderType=cv2.BORDER_REFLECT)
        img = np.tanh(3.0 * out / (float(out.std()) + 1e-6))
    return cv2.resize(img, (w, h), interpolation=cv2.INTER_CUBIC)


# ---------------------------------------------------------------- skeleton and minutiae


def _neighbour_code(binary: np.ndarray) -> np.ndarray:
    """8-bit code of each pixel's neighbours, P2 (north) = bit 0, clockwise."""
    p = np.pad(binary.astype(np.uint8), 1)
    h, w = binary.shape
    offsets = ((0, 1), (0, 2), (1, 2), (2, 2), (2, 1), (2, 0), (1, 0), (0, 0))  # N, NE, E, SE, S, SW, W, NW
    code = np.zeros((h, w), np.uint8)
    for bit, (dy, dx) in enumerate(offsets):
        code |= p[dy : dy + h, dx : dx + w] << bit
    return code


def _tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lookup tables over the 256 neighbour codes: Zhang-Suen deletions (two passes) and crossing numbers."""
    first = np.zeros(256, bool)
    second = np.zeros(256, bool)
    crossing = np.zeros(256, np.uint8)
    for code in range(256):
        n = [(code >> i) & 1 for i in range(8)]  # P2..P9
        b = sum(n)
        a = sum(1 for i in range(8) if n[i] == 0 and n[(i + 1) % 8] == 1)
        p2, p4, p6, p8 = n[0], n[2], n[4], n[6]
        first[code] = 2 <= b <= 6 and a == 1 and p2 * p4 * p6 == 0 and p4 * p6 * p8 == 0
        second[code] = 2 <= b <= 6 and a == 1 and p2 * p4 * p8 == 0 and p2 * p6 * p8 == 0
        crossing[code] = sum(abs(n[i] - n[(i + 1) % 8]) for i in range(8)) // 2
    return first, second, crossing


_DELETE_FIRST, _DELETE_SECOND, _CROSSING = _tables()


def thin(binary: np.ndarray) -> np.ndarray:
    """Zhang-Suen thinning of a 0/1 image to a one-pixel-wide skeleton (vectorised by lookup tables)."""
    img = (binary > 0).astype(np.uint8)
    for _ in range(64):
        changed = False
        for table in (_DELETE_FIRST, _DELETE_SECOND):
            delete = (img == 1) & table[_neighbour_code(img)]
            if delete.any():
                img[delete] = 0
                changed = True
        if not changed:
            break
    return img


def _remove_small(binary: np.ndarray, min_area: int) -> np.ndarray:
    """Drop connected components of 1s smaller than ``min_area``."""
    _, labels, stats, _ = cv2.connectedComponentsWithStats(binary.astype(np.uint8), connectivity=8)
    keep = stats[:, cv2.CC_STAT_AREA] >= min_area
    keep[0] = False
    return keep[labels].astype(np.uint8)


def clean_ridges(field: np.ndarray, period: float) -> np.ndarray:
    """Binary ridge map (1 = ridge) without specks, holes or hair-thin spurs."""
    ridges = (field > 0).astype(np.uint8)
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
    ridges = cv2.morphologyEx(ridges, cv2.MORPH_OPEN, k)
    ridges = cv2.morphologyEx(ridges, cv2.MORPH_CLOSE, k)
    min_area = int(1.5 * period * period)
    ridges = _remove_small(ridges, min_area)
    valleys = _remove_small(1 - ridges, min_area)
    return (1 - valleys).astype(np.uint8)


def _direction_sign(
    ridges: np.ndarray, x: np.ndarray, y: np.ndarray, theta: np.ndarray, want_ridge: np.ndarray
) -> np.ndarray:
    """Choose theta or theta + pi: the way along which the ridge map is ridge (endings) or valley (forks)."""
    h, w = ridges.shape
    radii = np.arange(3.0, 9.0)

    def mean_along(t: np.ndarray) -> np.ndarray:
        px = x[:, None] + radii[None, :] * np.cos(t)[:, None]
        py = y[:, None] - radii[None, :] * np.sin(t)[:, None]
        ix = np.clip(np.rint(px).astype(np.int64), 0, w - 1)
        iy = np.clip(np.rint(py).astype(np.int64), 0, h - 1)
        return ridges[iy, ix].mean(axis=1)

    forward, backward = mean_along(theta), mean_along(theta + np.pi)
    flip = np.where(want_ridge, backward > forward, backward < forward)
    return np.mod(theta + np.where(flip, np.pi, 0.0), 2 * np.pi)


def _local_direction(skeleton: np.ndarray, x: np.ndarray, y: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Refine the field orientation at each minutia with the skeleton's own local direction.

    The structure tensor of skeleton pixels within a few pixels gives the ridge
    direction at the minutia itself (the model field may differ slightly there).
    """
    sk = skeleton.astype(np.float32)
    gx = cv2.Sobel(cv2.GaussianBlur(sk, (0, 0), 1.5), cv2.CV_32F, 1, 0)
    gy = cv2.Sobel(cv2.GaussianBlur(sk, (0, 0), 1.5), cv2.CV_32F, 0, 1)
    jxx = cv2.GaussianBlur(gx * gx, (0, 0), 4.0)
    jyy = cv2.GaussianBlur(gy * gy, (0, 0), 4.0)
    jxy = cv2.GaussianBlur(gx * gy, (0, 0), 4.0)
    ix, iy = x.astype(np.int64), y.astype(np.int64)
    # Gradient direction (pixel space) -> ridge direction is perpendicular; convert to ccw-as-seen.
    grad = 0.5 * np.arctan2(2 * jxy[iy, ix], jxx[iy, ix] - jyy[iy, ix])
    local = np.mod(-(grad + np.pi / 2), np.pi)
    # Fall back on the model field where the skeleton is too sparse to tell.
    energy = np.hypot(jxx[iy, ix] - jyy[iy, ix], 2 * jxy[iy, ix])
    return np.where(energy > 1e-4, local, theta).astype(np.float64)


def skeleton_minutiae(ridges: np.ndarray, inside: np.ndarray, theta: np.ndarray, period: float) -> TrueMinutiae:
    """Endings and bifurcations of a clean binary ridge map, within ``inside``."""
    skeleton = thin(ridges)
    cn = _CROSSING[_neighbour_code(skeleton)]
    kind_map = np.where(skeleton == 1, np.where(cn == 1, KIND_ENDING, np.where(cn == 3, KIND_BIFURCATION, 0)), 0)
    kind_map[inside == 0] = 0
    ys, xs = np.nonzero(kind_map)
    kinds = kind_map[ys, xs].astype(np.uint8)
    # Minutiae closer than ~0.8 period to another are skeleton artefacts (spurs, bridges,
    # tiny islands, split forks): drop the whole cluster.
    if len(xs):
        d2 = (xs[:, None] - xs[None, :]) ** 2 + (ys[:, None] - ys[None, :]) ** 2
        np.fill_diagonal(d2, 1 << 30)
        lonely = d2.min(axis=1) > (0.8 * period) ** 2
        xs, ys, kinds = xs[lonely], ys[lonely], kinds[lonely]
    x = xs.astype(np.float64)
    y = ys.astype(np.float64)
    t = _local_direction(skeleton, x, y, theta[ys, xs].astype(np.float64))
    angle = _direction_sign(ridges, x, y, t, kinds == KIND_ENDING)
    return TrueMinutiae(
        x=x.astype(np.float32),
        y=y.astype(np.float32),
        angle=angle.astype(np.float32),
        kind=kinds,
        quality=np.full(len(xs), 100, np.uint8),
    )


def dislocation_pairs(
    field: np.ndarray, theta: np.ndarray, period: np.ndarray, rng: np.random.Generator, count: int
) -> np.ndarray:
    """``field`` with ``count`` pairs of opposite ridge dislocations at random places and lengths.

    Grown ridges keep mostly the minutiae the flow forces (where ridges diverge a
    new one must start), and those all point the same way along the flow: in a
    region every ending faces one way and every fork the other. A matcher's
    cylinders then agree across fingers of one class (on 60 fingers, turning a
    quarter of the minutiae around brought the 99th-percentile impostor score from
    0.038 to 0.027, inside FVC2002's range; on FVC2002 the same changed little).
    Real ridges also stop short, start between two others, split and rejoin,
    anywhere: pairs of minutiae that face each other. A pair of dislocations of
    opposite sign (Larkin and Fletcher's spiral phase, ``cos(2 pi d / T + arg(z - a)
    - arg(z - b) + phi)``) is exactly that: between ``a`` and ``b`` there is one
    ridge more (or less) and far from them nothing changes, so the pair blends
    into the grown pattern when ``phi`` is taken from the pattern itself. Pairs
    are 3.5 to 7.5 periods long: shorter islands are cleaned away as specks, and
    an extractor rightly takes short gaps for a broken ridge and drops them.
    """
    h, w = field.shape
    out = field.copy()
    for _ in range(count):  # a few dozen patches: a loop over pairs, not pixels
        cy, cx = float(rng.uniform(0.06 * h, 0.94 * h)), float(rng.uniform(0.06 * w, 0.94 * w))
        t = float(period[int(cy), int(cx)])
        th = float(theta[int(cy), int(cx)])
        length = float(rng.uniform(*_PAIR_LENGTH)) * t
        r = math.ceil(length / 2 + 2.5 * t)
        y0, y1, x0, x1 = max(0, int(cy) - r), min(h, int(cy) + r + 1), max(0, int(cx) - r), min(w, int(cx) + r + 1)
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        ux, uy = math.cos(th), -math.sin(th)  # along the ridge, pixel space
        along = (xx - cx) * ux + (yy - cy) * uy
        across = -(xx - cx) * uy + (yy - cy) * ux
        carrier = 2 * np.pi * across / t
        patch = out[y0:y1, x0:x1]
        env = np.exp(-0.5 * ((np.maximum(np.abs(along) - length / 2, 0) / (1.2 * t)) ** 2 + (across / (1.5 * t)) ** 2))
        phi = float(np.angle(np.sum(env * patch * np.exp(-1j * carrier))))
        sign = 1.0 if rng.random() < 0.5 else -1.0
        spiral = np.arctan2(across, along + length / 2) - np.arctan2(across, along - length / 2)
        template = np.cos(carrier + sign * spiral + phi).astype(np.float32)
        out[y0:y1, x0:x1] = patch + env.astype(np.float32) * (template - patch)
    return out


# ---------------------------------------------------------------- masters


@dataclass(frozen=True)
class Master:
    """Everything about a virtual finger that does not depend on the impression."""

    finger_class: str
    singular_points: SingularPoints
    ridges: np.ndarray  # uint8 0/1, master canvas
    finger_mask: np.ndarray  # uint8 0/1
    minutiae: TrueMinutiae
    mean_period: float


def _finger_mask(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A fingertip silhouette: an ellipse, a bit wider at the bottom."""
    h, w = shape
    cx, cy = w / 2 + rng.normal(0, 5), h / 2 + rng.normal(0, 5)
    ax, ay = rng.uniform(0.38, 0.44) * w, rng.uniform(0.42, 0.47) * h
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    widen = 1.0 + 0.15 * np.clip((yy - cy) / ay, 0, 1)
    return ((((xx - cx) / (ax * widen)) ** 2 + ((yy - cy) / ay) ** 2) <= 1.0).astype(np.uint8)


@lru_cache(maxsize=64)
def _master(seed: int, finger_id: int) -> Master:
    rng = np.random.default_rng(_entropy(seed, finger_id, 0x46494E47))
    w, h = MASTER_SIZE
    shape = (h, w)
    finger_class = str(rng.choice(FINGER_CLASSES, p=_CLASS_WEIGHTS))
    center = (w / 2 + rng.normal(0, 12), h / 2 + rng.normal(0, 12))
    points = singular_points(finger_class, rng, center)
    theta = orientation_field(shape, points, rng, center)
    period = period_map(shape, rng)
    # Fewer growth iterations leave more ridge breaks and forks: minutiae density varies per finger.
    field = grow_ridges(theta, period, rng, int(rng.integers(*_ITERATIONS)))
    mean_period = float(period.mean())
    field = dislocation_pairs(field, theta, period, rng, int(rng.integers(*_PAIRS)))
    ridges = clean_ridges(field, mean_period)
    mask = _finger_mask(shape, rng)
    inside = cv2.erode(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (25, 25)))
    minutiae = skeleton_minutiae(ridges, inside, theta, mean_period)
    log.debug("synthetic_finger", seed=seed, finger=finger_id, finger_class=finger_class, minutiae=len(minutiae))
    return Master(finger_class, points, ridges, mask, minutiae, mean_period)


def _render_master(master: Master) -> np.ndarray:
    soft = cv2.GaussianBlur(master.ridges.astype(np.float32), (0, 0), 1.0)
    img = 235.0 - 185.0 * soft * master.finger_mask
    return np.clip(img, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- impressions


# How impression parameters are drawn (ranges; "shift" is a standard deviation in pixels).
# "cooperative": a user placing the finger with care, as simulated readers and the
# demo assume; "realistic": the spread of a public data set's captures (FVC2002), with
# its share of poor impressions, for population benchmarks.
PROFILES: dict[str, dict[str, tuple[float, ...]]] = {
    "cooperative": {
        "rotation": (-30.0, 30.0),
        "shift": (28.0,),
        "distortion": (3.0, 12.0),
        "pressure": (-0.8, 0.8),
        "noise": (6.0, 20.0),
        "contact": (0.55, 1.0),
        "dryness": (0.0, 0.3),
    },
    "realistic": {
        "rotation": (-30.0, 30.0),
        "shift": (40.0,),
        "distortion": (12.0, 26.0),
        "pressure": (-1.0, 1.0),
        "noise": (8.0, 30.0),
        "contact": (0.45, 0.9),
        "dryness": (0.0, 0.75),
    },
}


@dataclass(frozen=True)
class ImpressionParams:
    """How one impression was taken (random where not given)."""

    size: tuple[int, int] = DEFAULT_SIZE  # (width, height)
    rotation: float = 0.0  # degrees, counter-clockwise as seen
    shift: tuple[float, float] = (0.0, 0.0)  # pixels, of the finger centre from the image centre
    distortion: float = 0.0  # pixels, peak elastic displacement
    pressure: float = 0.0  # -1 (light, thin ridges) .. +1 (hard, thick ridges)
    noise: float = 0.0  # grey levels, standard deviation
    contact: float = 1.0  # 0..1, size of the contact area relative to the full fingertip
    dryness: float = 0.0  # 0..1: dry skin prints faint, broken ridges (pores, gaps) over part of the finger


@dataclass(frozen=True)
class Warp:
    """The mapping between master and impression coordinates of one impression."""

    master_center: tuple[float, float]
    image_center: tuple[float, float]
    rotation: float  # radians
    shift: tuple[float, float]
    displacement: np.ndarray  # (2, h, w) float32, master pixels, indexed by impression pixel

    def to_master(self) -> tuple[np.ndarray, np.ndarray]:
        """For every impression pixel, the master pixel it shows (maps for cv2.remap)."""
        _, h, w = self.displacement.shape
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        dx = xx - self.image_center[0] - self.shift[0]
        dy = yy - self.image_center[1] - self.shift[1]
        rx, ry = _rotate(dx, dy, -self.rotation)
        mx = rx + self.master_center[0] + self.displacement[0]
        my = ry + self.master_center[1] + self.displacement[1]
        return mx.astype(np.float32), my.astype(np.float32)

    def forward(self, mx: np.ndarray, my: np.ndarray, iterations: int = 8) -> tuple[np.ndarray, np.ndarray]:
        """Impression coordinates of master points (fixed-point inversion of :meth:`to_master`)."""
        _, h, w = self.displacement.shape
        mx = np.asarray(mx, np.float64)
        my = np.asarray(my, np.float64)
        px = np.zeros_like(mx)
        py = np.zeros_like(my)
        disp_x = np.zeros_like(mx)
        disp_y = np.zeros_like(my)
        for _ in range(iterations):
            rx, ry = _rotate(mx - self.master_center[0] - disp_x, my - self.master_center[1] - disp_y, self.rotation)
            px = rx + self.image_center[0] + self.shift[0]
            py = ry + self.image_center[1] + self.shift[1]
            ix = np.clip(np.rint(px).astype(np.int64), 0, w - 1)
            iy = np.clip(np.rint(py).astype(np.int64), 0, h - 1)
            disp_x = self.displacement[0][iy, ix].astype(np.float64)
            disp_y = self.displacement[1][iy, ix].astype(np.float64)
        return px, py


@dataclass(frozen=True)
class Impression:
    """One synthetic capture: the image and its ground-truth minutiae."""

    image: np.ndarray  # uint8, (height, width)
    minutiae: TrueMinutiae
    dpi: int = DPI
    params: ImpressionParams = dataclasses.field(default_factory=ImpressionParams)
    warp: Warp | None = None
    contact_mask: np.ndarray | None = None  # uint8 0/1: where the finger touched


def _random_params(
    rng: np.random.Generator, size: tuple[int, int], given: dict[str, object], profile: str = "cooperative"
) -> ImpressionParams:
    try:
        p = PROFILES[profile]
    except KeyError:
        raise ValueError(f"unknown capture profile {profile!r}: use one of {', '.join(PROFILES)}") from None
    drawn = {
        "rotation": float(rng.uniform(*p["rotation"])),
        "shift": (float(rng.normal(0, p["shift"][0])), float(rng.normal(0, p["shift"][0]))),
        "distortion": float(rng.uniform(*p["distortion"])),
        "pressure": float(rng.uniform(*p["pressure"])),
        "noise": float(rng.uniform(*p["noise"])),
        "contact": float(rng.uniform(*p["contact"])),
        "dryness": float(rng.uniform(*p["dryness"])),
    }
    unknown = set(given) - set(drawn)
    if unknown:
        raise TypeError(f"unknown impression parameter(s) {sorted(unknown)}: use {sorted(drawn)} or size")
    drawn.update({k: v for k, v in given.items() if v is not None})
    return ImpressionParams(size=(int(size[0]), int(size[1])), **drawn)  # type: ignore[arg-type]


def _displacement(
    rng: np.random.Generator, shape: tuple[int, int], amplitude: float, centre: tuple[float, float], radius: float
) -> np.ndarray:
    """Elastic displacement of the skin, nil where it first touched and growing outwards (Cappelli's model).

    A finger pressed on glass sticks where it first touches (around ``centre``,
    within about a third of the contact ``radius``); the rest of the skin is
    dragged and twisted by the sideways force and torque of the press, more and
    more towards the edge of the contact. So the displacement is a drag (a
    translation) and a twist (a rotation about the centre) weighted by a smooth
    ramp from the sticking core outwards, plus a smooth random part. Between two
    impressions of a finger this changes distances and angles between minutiae
    far apart by up to about 10 %, as in real prints; the peak is ``amplitude``.
    """
    h, w = shape
    if amplitude <= 0:
        return np.zeros((2, h, w), np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    vx, vy = xx - centre[0], yy - centre[1]
    r = np.hypot(vx, vy) / max(radius, 1.0)
    core = float(rng.uniform(0.2, 0.45))
    s = np.clip((r - core) / (1.1 - core), 0.0, 1.0)
    ramp = s * s * (3 - 2 * s)  # smoothstep: no kink at the sticking core's edge
    twist = float(rng.uniform(-1.0, 1.0))  # relative share of rotation
    drag = rng.normal(0.0, 1.0, 2)
    rand = 0.35
    dx = ramp * (twist * -vy / max(radius, 1.0) + drag[0] * 0.5 + rand * _smooth_noise(rng, shape, 3))
    dy = ramp * (twist * vx / max(radius, 1.0) + drag[1] * 0.5 + rand * _smooth_noise(rng, shape, 3))
    peak = max(float(np.hypot(dx, dy).max()), 1e-6)
    return (np.stack([dx, dy]) * (amplitude / peak)).astype(np.float32)


def _skin_condition(binary: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Patches of dry and wet skin and a few creases, different in every impression.

    Real impressions of one finger disagree mostly through such local damage (a dry
    patch breaks ridges into spurious endings, a wet one merges them into spurious
    forks, a crease cuts across them); pressure alone thickens or thins evenly. So
    two synthetic impressions share most but not all of their minutiae, as real ones.
    """
    h, w = binary.shape
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
    state = _smooth_noise(rng, (h, w), int(rng.integers(5, 10)))
    level = rng.uniform(0.45, 0.8)
    dry = state > level
    wet = state < -level
    out = binary.copy()
    if dry.any():
        eroded = cv2.erode(binary, k)
        specks = _smooth_noise(rng, (h, w), max(8, w // 6)) > 0.45  # ridges break in places, not evenly
        out = np.where(dry, np.where(specks, 0, eroded), out).astype(np.uint8)
    if wet.any():
        out = np.where(wet, cv2.dilate(binary, k), out).astype(np.uint8)
    for _ in range(int(rng.integers(0, 4))):  # creases: thin pale lines across the ridges
        x0, y0 = float(rng.uniform(0, w)), float(rng.uniform(0, h))
        phi = float(rng.uniform(0, np.pi))
        length = float(rng.uniform(0.2, 0.6)) * max(w, h)
        x1, y1 = x0 + length * math.cos(phi), y0 + length * math.sin(phi)
        cv2.line(out, (round(x0), round(y0)), (round(x1), round(y1)), 0, int(rng.integers(2, 5)))
    return out


def _dry_skin(binary: np.ndarray, rng: np.random.Generator, dryness: float) -> tuple[np.ndarray, np.ndarray]:
    """Dry skin over part of the finger: ridges broken into dots and dashes, and printed faint.

    The commonest reason real impressions of one finger disagree: where the skin is
    dry, ridges touch the glass only in places (pores and gaps a few pixels long)
    and print pale, so an extractor finds endings that are not there and misses
    minutiae that are; where it is dry changes with every press. Returns the broken
    ridge map and the fraction (0..1) by which the contrast fades per pixel.
    """
    h, w = binary.shape
    where = np.clip(0.5 + 0.8 * _smooth_noise(rng, (h, w), int(rng.integers(3, 6))) + (dryness - 0.5), 0.0, 1.0)
    where *= dryness
    grain = _smooth_noise(rng, (h, w), max(8, max(h, w) // 5))  # blobs of about 5 pixels: pores and gaps
    holes = grain > 1.0 - 1.1 * where
    out = np.where(holes, 0, binary).astype(np.uint8)
    return out, (0.55 * where).astype(np.float32)


def make_impression(
    master: Master, seed: tuple[int, ...], size: tuple[int, int], profile: str = "cooperative", **given: object
) -> Impression:
    """An impression of ``master``; parameters left out (or None) are drawn from ``seed`` (ranges of ``profile``)."""
    w, h = int(size[0]), int(size[1])
    if not (16 <= w <= 4096 and 16 <= h <= 4096):
        raise ValueError(f"impression size {w}x{h}: give (width, height) between 16 and 4096 pixels")
    rng = np.random.default_rng(_entropy(*seed, 0x494D50))
    params = _random_params(rng, (w, h), given, profile)
    mh, mw = master.ridges.shape
    # Partial contact: the part of the fingertip that touched, an ellipse around a random centre.
    c = float(np.clip(params.contact, 0.05, 1.0))
    ccx = w / 2 + params.shift[0] + rng.normal(0, 10) * (1 - c) * 3
    ccy = h / 2 + params.shift[1] + rng.normal(0, 10) * (1 - c) * 3
    warp = Warp(
        master_center=(mw / 2, mh / 2),
        image_center=(w / 2, h / 2),
        rotation=math.radians(params.rotation),
        shift=params.shift,
        displacement=_displacement(rng, (h, w), params.distortion, (ccx, ccy), c * 0.47 * (mw * mh) ** 0.5),
    )
    map_x, map_y = warp.to_master()
    ridges = cv2.remap(master.ridges.astype(np.float32), map_x, map_y, cv2.INTER_LINEAR, borderValue=0)
    finger = cv2.remap(master.finger_mask.astype(np.float32), map_x, map_y, cv2.INTER_LINEAR, borderValue=0)

    # Pressure: hard presses flatten ridges (thicker), light ones thin and break them.
    binary = (ridges > 0.5).astype(np.uint8)
    steps = round(abs(params.pressure) * 1.4)  # at most one step: two close the valleys of a 9-pixel period
    if steps:
        k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
        op = cv2.dilate if params.pressure > 0 else cv2.erode
        binary = op(binary, k, iterations=steps)
    if params.pressure < -0.3:  # dry skin: ridges break up in places
        breaks = _smooth_noise(rng, (h, w), 40) > 0.75
        binary[breaks] = 0
    binary = _skin_condition(binary, rng)
    faint = np.zeros((h, w), np.float32)
    if params.dryness > 0:
        binary, faint = _dry_skin(binary, rng, float(params.dryness))

    contact_ellipse = _ellipse_mask((h, w), ccx, ccy, c * 0.47 * mw, c * 0.47 * mh)
    contact = ((finger > 0.5) & (contact_ellipse > 0)).astype(np.uint8)
    soft_contact = cv2.GaussianBlur(contact.astype(np.float32), (0, 0), 3.0)

    ink = cv2.GaussianBlur(binary.astype(np.float32), (0, 0), 0.9) * soft_contact
    background = 228.0 + 12.0 * _smooth_noise(rng, (h, w), 2)
    contrast = (175.0 + 25.0 * _smooth_noise(rng, (h, w), 3)) * (1.0 - faint)
    img = background - contrast * ink
    if params.noise > 0:
        img += rng.normal(0.0, params.noise, (h, w)).astype(np.float32)
    image = np.clip(img, 0, 255).astype(np.uint8)

    m = master.minutiae
    px, py = warp.forward(m.x, m.y)
    qx, qy = warp.forward(m.x + 4.0 * np.cos(m.angle), m.y - 4.0 * np.sin(m.angle))
    angle = np.mod(np.arctan2(-(qy - py), qx - px), 2 * np.pi)
    ix = np.rint(px).astype(np.int64)
    iy = np.rint(py).astype(np.int64)
    on_image = (ix >= 0) & (iy >= 0) & (ix < w) & (iy < h)
    keep = on_image.copy()
    keep[on_image] = contact[iy[on_image], ix[on_image]] > 0
    minutiae = TrueMinutiae(
        x=px[keep].astype(np.float32),
        y=py[keep].astype(np.float32),
        angle=angle[keep].astype(np.float32),
        kind=m.kind[keep],
        quality=m.quality[keep],
    )
    return Impression(image=image, minutiae=minutiae, dpi=DPI, params=params, warp=warp, contact_mask=contact)


# ---------------------------------------------------------------- public API


class FingerSource(Protocol):
    """What a simulated reader needs: an image of finger ``finger_id``, impression ``impression``."""

    def image(self, finger_id: int, impression: int, size: tuple[int, int] | None = None) -> np.ndarray:
        """A uint8 image; ``size`` = (width, height), or the source's own size when None."""
        ...


@dataclass(frozen=True)
class VirtualFinger:
    """A synthetic finger: its master (ground truth) and a factory of impressions."""

    seed: int
    finger_id: int
    master: Master

    @property
    def finger_class(self) -> str:
        return self.master.finger_class

    @property
    def master_image(self) -> np.ndarray:
        """The finger as a perfect 500 dpi print on the master canvas (:data:`MASTER_SIZE`)."""
        return _render_master(self.master)

    @property
    def minutiae(self) -> TrueMinutiae:
        """Ground-truth minutiae in master coordinates."""
        return self.master.minutiae

    def impression(
        self, seed: int, *, size: tuple[int, int] = DEFAULT_SIZE, profile: str = "cooperative", **params: object
    ) -> Impression:
        """Impression number ``seed`` of this finger, ``size`` = (width, height) pixels at 500 dpi.

        Keyword parameters (see :class:`ImpressionParams`) fix what is otherwise
        drawn at random: ``rotation`` (degrees), ``shift`` ((dx, dy) pixels),
        ``distortion`` (pixels), ``pressure`` (-1..1), ``noise`` (grey levels),
        ``contact`` (0..1). ``profile`` says how the others are drawn (:data:`PROFILES`:
        "cooperative", or "realistic" for FVC-like spread and failures).
        ``clean_impression`` gives an undistorted one.
        """
        number = check_seed_number(seed, "impression number")
        return make_impression(self.master, (self.seed, self.finger_id, number), size, profile, **params)

    def clean_impression(self, size: tuple[int, int] = DEFAULT_SIZE, **params: object) -> Impression:
        """The finger centred, unrotated, undistorted, normal pressure, little noise, full contact."""
        fixed: dict[str, object] = {
            "rotation": 0.0,
            "shift": (0.0, 0.0),
            "distortion": 0.0,
            "pressure": 0.0,
            "noise": 3.0,
            "contact": 1.0,
        }
        fixed.update(params)
        return self.impression(0, size=size, **fixed)


class FingerGenerator:
    """Virtual fingers, deterministic from ``seed``: ``FingerGenerator(7).finger(3)`` is always the same finger.

    ``profile`` is how :meth:`image` takes impressions (see :data:`PROFILES`).
    """

    def __init__(self, seed: int = 0, profile: str = "cooperative") -> None:
        if profile not in PROFILES:
            raise ValueError(f"unknown capture profile {profile!r}: use one of {', '.join(PROFILES)}")
        self.seed = check_seed_number(seed, "generator seed")
        self.profile = profile

    def finger(self, finger_id: int) -> VirtualFinger:
        number = check_seed_number(finger_id, "finger id")
        return VirtualFinger(self.seed, number, _master(self.seed, number))

    def image(self, finger_id: int, impression: int, size: tuple[int, int] | None = None) -> np.ndarray:
        """:class:`FingerSource` interface: the image of one impression (:data:`DEFAULT_SIZE` when None)."""
        return self.finger(finger_id).impression(impression, size=size or DEFAULT_SIZE, profile=self.profile).image


_FVC_NAME = re.compile(r"^(\d+)_(\d+)\.(tif|tiff|png|bmp)$", re.IGNORECASE)


class FolderFingerSource:
    """Replays ``F_I.tif`` images (finger F, impression I, as in the FVC data sets) from a folder."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise FileNotFoundError(f"{self.path} is not a folder: point it at a folder of F_I.tif images")
        self._files: dict[tuple[int, int], Path] = {}
        for p in sorted(self.path.iterdir()):
            m = _FVC_NAME.match(p.name)
            if m:
                self._files[(int(m.group(1)), int(m.group(2)))] = p
        if not self._files:
            raise FileNotFoundError(f"no F_I.tif images in {self.path}: name them finger_impression.tif")

    def __len__(self) -> int:
        return len(self._files)

    def keys(self) -> list[tuple[int, int]]:
        """(finger, impression) pairs, sorted."""
        return sorted(self._files)

    @property
    def fingers(self) -> list[int]:
        return sorted({f for f, _ in self._files})

    def load(self, finger_id: int, impression: int) -> np.ndarray:
        """The image as stored (uint8 greyscale)."""
        try:
            path = self._files[(finger_id, impression)]
        except KeyError:
            raise KeyError(f"no image {finger_id}_{impression} in {self.path}") from None
        return read_image(path, fix="replace it with a greyscale TIFF, PNG or BMP, or remove it")

    def image(self, finger_id: int, impression: int, size: tuple[int, int] | None = None) -> np.ndarray:
        """:class:`FingerSource` interface; with ``size`` (width, height) the image is centre-cropped
        or padded with white to that size (a small sensor sees the middle of the finger)."""
        img = self.load(finger_id, impression)
        return img if size is None else fit_to_size(img, size)

    def __iter__(self) -> Iterator[tuple[int, int, np.ndarray]]:
        for finger_id, impression in self.keys():
            yield finger_id, impression, self.load(finger_id, impression)


def fit_to_size(img: np.ndarray, size: tuple[int, int], fill: int = 255) -> np.ndarray:
    """Centre-crop or pad ``img`` to ``size`` = (width, height)."""
    w, h = int(size[0]), int(size[1])
    out = np.full((h, w), fill, np.uint8)
    ih, iw = img.shape[:2]
    sx, sy = max(0, (iw - w) // 2), max(0, (ih - h) // 2)
    dx, dy = max(0, (w - iw) // 2), max(0, (h - ih) // 2)
    cw, ch = min(w, iw), min(h, ih)
    out[dy : dy + ch, dx : dx + cw] = img[sy : sy + ch, sx : sx + cw]
    return out
