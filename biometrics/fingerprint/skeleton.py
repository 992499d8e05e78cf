"""Binary ridge map to one-pixel skeleton, and crossing numbers on it.

All neighbourhood rules are lookup tables over the 256 configurations of the
eight neighbours. Thinning passes apply them to a changed box at once (a
handful of shifted-array operations and one table lookup, not a loop over
pixels); the staircase step gathers the codes of the few points where its rule
can fire. Images are 0/1 uint8 throughout: the codes are sums of 0/1 bits.

Neighbour bit order (clockwise from north): N, NE, E, SE, S, SW, W, NW.
"""

from __future__ import annotations

import cv2
import numpy as np

# (dy, dx) of the eight neighbours, clockwise from north.
OFFSETS = ((-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1))


def _bits(code: int) -> list[int]:
    return [(code >> i) & 1 for i in range(8)]


def _transitions(p: list[int]) -> int:
    """Number of 0->1 transitions around the neighbourhood."""
    return sum(1 for i in range(8) if p[i] == 0 and p[(i + 1) % 8] == 1)


def _build_zhang_suen() -> tuple[np.ndarray, np.ndarray]:
    first = np.zeros(256, bool)
    second = np.zeros(256, bool)
    for code in range(256):
        p = _bits(code)
        n, _, e, _, s, _, w, _ = p
        b = sum(p)
        if not (2 <= b <= 6 and _transitions(p) == 1):
            continue
        first[code] = n * e * s == 0 and e * s * w == 0
        second[code] = n * e * w == 0 and n * s * w == 0
    return first, second


def _components(positions: list[int], adjacent) -> list[set[int]]:
    comps: list[set[int]] = []
    todo = set(positions)
    while todo:
        stack = [todo.pop()]
        comp = set(stack)
        while stack:
            i = stack.pop()
            for j in list(todo):
                if adjacent(i, j):
                    todo.discard(j)
                    comp.add(j)
                    stack.append(j)
        comps.append(comp)
    return comps


def _build_simple() -> np.ndarray:
    """Pixels removable without changing topology (8-connected ridges, 4-connected valleys)."""
    table = np.zeros(256, bool)

    def adj8(i: int, j: int) -> bool:
        return max(abs(OFFSETS[i][0] - OFFSETS[j][0]), abs(OFFSETS[i][1] - OFFSETS[j][1])) == 1

    def adj4(i: int, j: int) -> bool:
        return abs(OFFSETS[i][0] - OFFSETS[j][0]) + abs(OFFSETS[i][1] - OFFSETS[j][1]) == 1

    for code in range(256):
        p = _bits(code)
        fg = [i for i in range(8) if p[i]]
        bg = [i for i in range(8) if not p[i]]
        if len(fg) < 2:  # isolated pixels and line ends are kept
            continue
        if len(_components(fg, adj8)) != 1:
            continue
        bg_comps = [c for c in _components(bg, adj4) if c & {0, 2, 4, 6}]
        table[code] = len(bg_comps) == 1
    return table


def _build_crossing() -> np.ndarray:
    return np.array(
        [sum(abs(_bits(c)[i] - _bits(c)[(i + 1) % 8]) for i in range(8)) // 2 for c in range(256)], np.uint8
    )


ZS_FIRST, ZS_SECOND = _build_zhang_suen()
SIMPLE = _build_simple()
CROSSING = _build_crossing()
# uint8 copies for cv2.LUT, which applies a table to a whole image in one call.
_ZS_LUTS = (ZS_FIRST.astype(np.uint8), ZS_SECOND.astype(np.uint8))
_SIMPLE_LUT = SIMPLE.astype(np.uint8)


# Correlation kernel giving each pixel the sum of its neighbours' bit weights.
_CODE_KERNEL = np.zeros((3, 3), np.float32)
for _bit, (_dy, _dx) in enumerate(OFFSETS):
    _CODE_KERNEL[1 + _dy, 1 + _dx] = float(1 << _bit)


def neighbour_code(img: np.ndarray) -> np.ndarray:
    """8-bit code of each pixel's neighbours (image is 0/1 uint8), zero outside the image.

    The weights sum to 255, so the 8-bit correlation is exact (no saturation).
    """
    return cv2.filter2D(img, -1, _CODE_KERNEL, borderType=cv2.BORDER_CONSTANT)


Box = tuple[int, int, int, int]  # y0, y1, x0, x1


def _grow(box: Box, by: int, shape: tuple[int, ...]) -> Box:
    y0, y1, x0, x1 = box
    return max(0, y0 - by), min(shape[0], y1 + by), max(0, x0 - by), min(shape[1], x1 + by)


def _changed_box(kill: np.ndarray, at: Box) -> Box | None:
    """Bounding box (image coordinates) of the pixels set in ``kill``, a crop at ``at``; None if none."""
    x, y, w, h = cv2.boundingRect(kill)
    if w == 0:
        return None
    return at[0] + y, at[0] + y + h, at[2] + x, at[2] + x + w


def _union(a: Box | None, b: Box | None) -> Box | None:
    if a is None or b is None:
        return a if b is None else b
    return min(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), max(a[3], b[3])


def _delete_pass(img: np.ndarray, lut: np.ndarray, box: Box) -> Box | None:
    """Delete (in place) the pixels of ``box`` whose neighbourhood code ``lut`` marks; box of the deletions.

    The codes are computed on the box grown by one pixel, so that every pixel of
    the box sees its true neighbours (outside the image they are zero, as for
    the whole image).
    """
    outer = _grow(box, 1, img.shape)
    inner = (slice(box[0] - outer[0], box[1] - outer[0]), slice(box[2] - outer[2], box[3] - outer[2]))
    kill = cv2.LUT(neighbour_code(img[outer[0] : outer[1], outer[2] : outer[3]]), lut)[inner]
    region = img[box[0] : box[1], box[2] : box[3]]
    kill &= region
    changed = _changed_box(kill, box)
    if changed is not None:
        region ^= kill
    return changed


def thin(binary: np.ndarray, max_iterations: int = 30) -> np.ndarray:
    """Zhang-Suen thinning, then removal of staircase pixels, to a one-pixel 8-connected skeleton.

    Each sub-iteration only revisits the bounding box of what the previous two
    deleted, grown by a pixel: elsewhere no neighbourhood changed since the same
    rule last left those pixels alone, so it would leave them alone again. The
    result is that of running every pass over the whole image, with about half
    the pixels visited (late passes only touch the few ridges still thick).
    """
    img = (binary != 0).astype(np.uint8)
    full = (0, img.shape[0], 0, img.shape[1])
    recent: list[Box | None] = [full, full]
    for _ in range(max_iterations):
        for lut in _ZS_LUTS:
            active = _union(recent[-1], recent[-2])
            recent.append(None if active is None else _delete_pass(img, lut, _grow(active, 1, img.shape)))
        if recent[-1] is None and recent[-2] is None:
            break
    _remove_staircases(img)
    return img


def _remove_staircases(img: np.ndarray) -> None:
    """Remove (in place) simple pixels in four interleaved sub-fields: staircase pixels of the skeleton.

    Pixels of one sub-field are never neighbours, so removing them together is
    safe. The rule is that of a pass over the whole image per sub-field, but
    evaluated only where it can fire: a pixel can be simple in a later sub-field
    only if it was simple in the skeleton as it came (one neighbourhood-code
    pass finds those: about a quarter of a Zhang-Suen skeleton's pixels) or a
    neighbour has been removed since (its code changed); every other pixel keeps
    the code it had. Those points (a few thousand on a 400x400 print) have their codes
    gathered from a zero-padded copy: one pass over the image instead of four.
    """
    h, w = img.shape
    stride = w + 2
    pad = np.zeros((h + 2, stride), np.uint8)  # zero outside the image, as for neighbour_code
    pad[1:-1, 1:-1] = img
    flat = pad.ravel()
    offsets = _pad_offsets(stride)
    simple = cv2.LUT(neighbour_code(img), _SIMPLE_LUT)
    simple &= img
    y, x = np.divmod(np.flatnonzero(simple.view(bool)), w)  # numpy lists a boolean array's entries fast
    first = (y + 1) * stride + x + 1  # flat indices in the padded copy
    field = 2 * (y & 1) + (x & 1)  # sub-field 2 py + px, in the order they are visited
    # Per sub-field, the points that may be simple when its turn comes: its simple pixels, then
    # the neighbours of every pixel removed before (repeats do no harm).
    queued: list[list[np.ndarray]] = [[first[field == f]] for f in range(4)]
    for f in range(4):
        points = np.concatenate(queued[f]) if len(queued[f]) > 1 else queued[f][0]
        points = points[flat.take(points) == 1]
        # Neighbour by neighbour (rows of 8 x n: numpy's loops run along the points), bits
        # 0/1 times their powers of two, at most 255.
        codes = _BIT_WEIGHTS @ flat.take(offsets[:, None] + points)
        kill = points[SIMPLE.take(codes)]
        flat[kill] = 0
        py, px = divmod(f, 2)
        for (dy, dx), offset in zip(OFFSETS, offsets, strict=True):
            later = 2 * ((py + dy) % 2) + (px + dx) % 2
            if later > f:
                queued[later].append(kill + offset)
    img[...] = pad[1:-1, 1:-1]


_BIT_WEIGHTS = (1 << np.arange(8)).astype(np.uint8)
_BIT_WEIGHTS.setflags(write=False)  # shared by every thread


def _pad_offsets(stride: int) -> np.ndarray:
    """Flat offsets of the eight neighbours (bit order) in an image of row stride ``stride``."""
    return np.array([dy * stride + dx for dy, dx in OFFSETS], np.intp)


def crossing_number(skeleton: np.ndarray) -> np.ndarray:
    """Crossing number at each skeleton pixel (0 elsewhere): 1 ending, 3+ bifurcation."""
    return cv2.LUT(neighbour_code(skeleton), CROSSING) * (skeleton == 1)
