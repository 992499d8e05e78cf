"""``python -m bench.fingerprint --explain IMAGE --out DIR``: the extraction's stages as PNG images.

For a person tuning the pipeline (see biometrics.fingerprint.debug): one PNG per
stage, all at 500 dpi, written only into the folder given. Minutiae are drawn on
the skeleton, endings in red and bifurcations in blue, a tick along the direction.
Prints (as JSON) the files written and the minutiae count after each stage.

``--explain IMAGE --against OTHER --out DIR`` also compares the two prints
(debug.explain_comparison, IMAGE as the probe) and writes ``comparison.png``:
both final skeletons side by side, a green line joining each pair of minutiae
the matcher paired under its alignment; the JSON gets the score's factors.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from bench.cli import BenchError
from bench.fingerprint_pairs import factors
from biometrics.fingerprint.debug import STAGES, ComparisonExplanation, Explanation, explain, explain_comparison
from biometrics.fingerprint.types import KIND_ENDING, Minutiae


def _grey(a: np.ndarray) -> np.ndarray:
    """Any float image stretched to 0..255."""
    lo, hi = np.percentile(a, [1, 99])
    return np.clip((a - lo) / max(hi - lo, 1e-6) * 255.0, 0, 255).astype(np.uint8)


def _orientation(e: Explanation) -> np.ndarray:
    """Ridge direction as short line segments every 12 pixels, inside the mask."""
    out = cv2.cvtColor(e.image, cv2.COLOR_GRAY2BGR) // 2 + 100
    h, w = e.image.shape
    for y in range(6, h, 12):
        for x in range(6, w, 12):  # one segment per 12x12 block: a few hundred, not per pixel
            if e.mask[y, x]:
                t = float(e.orientation[y, x])
                dx, dy = 5.0 * np.cos(t), 5.0 * np.sin(t)  # image coordinates: y down
                shade = int(80 + 175 * float(e.coherence[y, x]))
                p0, p1 = (round(x - dx), round(y - dy)), (round(x + dx), round(y + dy))
                cv2.line(out, p0, p1, (0, shade // 2, shade), 1, cv2.LINE_AA)
    return out


def _minutiae(e: Explanation, m: Minutiae) -> np.ndarray:
    base = np.where(e.skeleton > 0, 0, 255).astype(np.uint8)
    base = np.where(e.mask, base, 200).astype(np.uint8)
    out = cv2.cvtColor(base, cv2.COLOR_GRAY2BGR)
    for x, y, a, k in zip(m.x, m.y, m.angle, m.kind, strict=True):
        colour = (0, 0, 255) if k == KIND_ENDING else (255, 0, 0)
        centre = (round(float(x)), round(float(y)))
        cv2.circle(out, centre, 4, colour, 1)
        tip = (round(float(x) + 10 * np.cos(a)), round(float(y) - 10 * np.sin(a)))
        cv2.line(out, centre, tip, colour, 1)
    return out


def render(e: Explanation) -> dict[str, np.ndarray]:
    """Name -> image (uint8 grey or BGR) of every stage."""
    images = {
        "01_image_500dpi": e.image,
        "02_mask": (e.mask * 255).astype(np.uint8),
        "03_orientation": _orientation(e),
        "04_coherence": (np.clip(e.coherence, 0, 1) * 255).astype(np.uint8),
        "05_normalised": _grey(e.normalised),
        "06_enhanced": _grey(-e.enhanced),
        "07_ridges": ((1 - e.ridges) * 255).astype(np.uint8),
        "08_skeleton": ((1 - e.skeleton) * 255).astype(np.uint8),
    }
    for n, stage in enumerate(STAGES):
        images[f"{9 + n:02d}_minutiae_{stage}"] = _minutiae(e, e.minutiae[stage])
    return images


PAIR_GAP = 16  # pixels between the two prints of comparison.png
PAIRED = (0, 160, 0)  # BGR green: a line per paired minutia


def render_comparison(probe: Explanation, gallery: Explanation, c: ComparisonExplanation) -> np.ndarray:
    """Both prints' final minutiae on their skeletons, side by side, each paired couple joined by a line."""
    left, right = _minutiae(probe, probe.minutiae["final"]), _minutiae(gallery, gallery.minutiae["final"])
    height = max(left.shape[0], right.shape[0])
    canvas = np.full((height, left.shape[1] + PAIR_GAP + right.shape[1], 3), 255, np.uint8)
    canvas[: left.shape[0], : left.shape[1]] = left
    offset = left.shape[1] + PAIR_GAP
    canvas[: right.shape[0], offset:] = right
    for xa, ya, xb, yb in c.paired:
        cv2.line(canvas, (round(float(xa)), round(float(ya))), (offset + round(float(xb)), round(float(yb))), PAIRED, 1)
    return canvas


def _read(image_path: Path) -> np.ndarray:
    img = cv2.imread(str(image_path), cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise BenchError(f"cannot read {image_path}", "give a greyscale image file (tif, png, bmp, pgm)")
    return img


def _write(path: Path, picture: np.ndarray) -> str:
    if not cv2.imwrite(str(path), picture):
        raise BenchError(f"cannot write {path}", f"check that {path.parent} is writable, or give another --out")
    return path.name


def explain_to_folder(image_path: Path, out: Path, dpi: int = 500, against: Path | None = None) -> dict[str, object]:
    """Write the stages of ``image_path`` (and, with ``against``, their comparison) into ``out``; the JSON summary."""
    try:  # before the work: a folder that cannot be made is said at once
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = exc.strerror or exc
        raise BenchError(f"cannot make the folder {out}: {reason}", "give --out a folder you may write") from None
    e = explain(_read(image_path), dpi)
    written = [_write(out / f"{name}.png", picture) for name, picture in render(e).items()]
    compared: dict[str, object] = {}
    if against is not None:
        other = explain(_read(against), dpi)
        c = explain_comparison(e.template, other.template)
        written.append(_write(out / "comparison.png", render_comparison(e, other, c)))
        compared = {"against": against.name, "comparison": factors(c)}
    return {
        "image": image_path.name,
        "dpi": dpi,
        "period_px": round(e.period, 2),
        "quality": e.quality.score,
        "minutiae": {stage: len(e.minutiae[stage]) for stage in STAGES},
        "files": written,
        "out": str(out),
        **compared,
    }
