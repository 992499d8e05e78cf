"""Fingerprint benchmark: all-pairs verification on a folder of ``F_I`` images.

    python -m bench.fingerprint --data DIR [--dpi 500] [--workers N]

Every unordered pair of images is compared once: same F is a genuine pair,
different F an impostor pair (FVC "all pairs" protocol; 280 genuine and 2,880
impostor pairs for 10 fingers x 8 impressions). Prints one JSON object on stdout
(rates in percent, see "units"); progress goes to stderr.

``comparisons_per_s`` is measured on the 1:N path: probes searched against a
gallery of ``--gallery`` templates (the folder's templates repeated under distinct
ids), i.e. full MCC LSS-R scores against every gallery entry; best of 5 rounds of
10 probes (like timeit), with the median round alongside. The gallery is scored
in ``--search-workers`` threads (default: one per core) with single-threaded
BLAS, the deployment that GalleryIndex documents for throughput: run as a
program, this module sets OPENBLAS_NUM_THREADS=1 before numpy loads unless the
environment already sets it (the JSON reports both settings).
"""

from __future__ import annotations

import os

# Must precede the first numpy import in this process (BLAS reads it at load time);
# only when run as the benchmark, so importing this module changes nothing.
if __name__ == "__main__":
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import json
import re
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from biometrics.fingerprint import GalleryIndex, extract
from biometrics.fingerprint.types import FingerprintTemplate

NAME = re.compile(r"^(\d+)_(\d+)\.(tif|tiff|png|bmp|pgm)$", re.IGNORECASE)


def all_pairs(templates: list, fingers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scores of every unordered pair (symmetrised) and whether each pair is the same finger."""
    index = GalleryIndex()
    for n, tpl in enumerate(templates):
        index.add(n, tpl)
    matrix = np.stack([index.scores(t) for t in templates])
    sym = (matrix + matrix.T) / 2.0
    iu, ju = np.triu_indices(len(templates), k=1)
    return sym[iu, ju], fingers[iu] == fingers[ju]


def _progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def list_images(folder: Path) -> list[tuple[str, int, Path]]:
    items = []
    for p in sorted(folder.iterdir()):
        m = NAME.match(p.name)
        if m:
            items.append((m.group(1), int(m.group(2)), p))
    return items


def _extract_one(args: tuple[str, int]) -> tuple[FingerprintTemplate, float]:
    path, dpi = args
    img = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise SystemExit(f"cannot read {path}")
    t0 = time.perf_counter()
    tpl = extract(img, dpi)
    return tpl, time.perf_counter() - t0


def error_rates(genuine: np.ndarray, impostor: np.ndarray) -> dict[str, float]:
    """EER and FNMR at FMR 1 % / 0.1 %, as fractions; accept when score >= threshold."""
    thresholds = np.unique(np.concatenate([genuine, impostor, [np.inf]]))
    g = np.sort(genuine)
    i = np.sort(impostor)
    fnmr = np.searchsorted(g, thresholds, side="left") / len(g)  # genuine below threshold
    fmr = (len(i) - np.searchsorted(i, thresholds, side="left")) / len(i)  # impostor at or above
    k = int(np.argmin(np.abs(fmr - fnmr)))
    # Where the curves cross between two thresholds, take the midpoint of the crossing step.
    eer = (fmr[k] + fnmr[k]) / 2.0
    if k + 1 < len(thresholds) and fmr[k] > fnmr[k] and fmr[k + 1] < fnmr[k + 1]:
        eer = min(eer, (max(fmr[k + 1], fnmr[k]) + min(fmr[k], fnmr[k + 1])) / 2.0)

    def fnmr_at(target: float) -> float:
        ok = fmr <= target
        return float(fnmr[ok].min()) if ok.any() else 1.0

    return {"eer": float(eer), "fmr100": fnmr_at(0.01), "fmr1000": fnmr_at(0.001)}


def throughput(
    templates: list[FingerprintTemplate], gallery_size: int, probes: int = 10, rounds: int = 5, workers: int = 1
) -> tuple[float, float]:
    """Comparisons per second of GalleryIndex.search against ``gallery_size`` templates.

    Returns (best round, median round): like timeit, the best of several rounds
    discounts interference from other processes on a shared machine.
    """
    index = GalleryIndex(workers=workers)
    for n in range(gallery_size):
        index.add(n, templates[n % len(templates)])
    index.search(templates[0], top_k=1)  # builds the packed matrices once
    rates = []
    for r in range(rounds):
        t0 = time.perf_counter()
        for p in range(probes):
            index.search(templates[(r * probes + p) * 7 % len(templates)], top_k=5)
        rates.append(probes * gallery_size / (time.perf_counter() - t0))
    return max(rates), float(np.median(rates))


def run(folder: Path, dpi: int, workers: int, gallery_size: int, search_workers: int = 1) -> dict[str, object]:
    items = list_images(folder)
    if len(items) < 2:
        raise SystemExit(f"no F_I images in {folder}")
    _progress(f"extracting {len(items)} images at {dpi} dpi")
    jobs = [(str(p), dpi) for _, _, p in items]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            results = list(pool.map(_extract_one, jobs))
    else:
        results = [_extract_one(j) for j in jobs]
    templates = [r[0] for r in results]
    times = np.array([r[1] for r in results])
    fingers = np.array([f for f, _, _ in items])

    _progress("matching all pairs")
    pair_scores, same = all_pairs(templates, fingers)
    genuine, impostor = pair_scores[same], pair_scores[~same]
    rates = error_rates(genuine, impostor)

    _progress(f"1:N throughput on a gallery of {gallery_size}")
    cps, cps_median = throughput(templates, gallery_size, workers=search_workers)
    return {
        "eer": round(100 * rates["eer"], 3),
        "fmr100": round(100 * rates["fmr100"], 3),
        "fmr1000": round(100 * rates["fmr1000"], 3),
        "units": "percent",
        "extract_ms_median": round(float(np.median(times)) * 1000, 2),
        "comparisons_per_s": round(cps),
        "comparisons_per_s_median": round(cps_median),
        "genuine": int(same.sum()),
        "impostor": int((~same).sum()),
        "images": len(templates),
        "minutiae_median": float(np.median([len(t.minutiae) for t in templates])),
        "dpi": dpi,
        "gallery_size": gallery_size,
        "search_workers": search_workers,
        "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS", ""),
    }


def calibrate(specs: list[str]) -> dict[str, object]:
    """Fit the impostor model of biometrics.fingerprint.calibration on impostor pairs only."""
    from biometrics.fingerprint.calibration import fit_impostor_model

    impostors = []
    for spec in specs:
        path, _, dpi_text = spec.partition(":")
        folder, dpi = Path(path), int(dpi_text or 500)
        _progress(f"calibration: {folder} at {dpi} dpi")
        items = list_images(folder)
        templates = [_extract_one((str(p), dpi))[0] for _, _, p in items]
        fingers = np.array([f for f, _, _ in items])
        pair_scores, same = all_pairs(templates, fingers)
        impostors.append(pair_scores[~same])
    quantiles, beta = fit_impostor_model(np.concatenate(impostors))
    return {
        "impostor_quantiles": [[f, round(q, 5)] for f, q in quantiles],
        "tail_beta": round(beta, 6),
        "impostor": int(sum(len(i) for i in impostors)),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.fingerprint", description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, help="folder of F_I.tif images")
    ap.add_argument("--dpi", type=int, default=500, help="resolution of the images (FVC2002 DB2: 569)")
    ap.add_argument("--workers", type=int, default=1, help="processes for extraction")
    ap.add_argument("--gallery", type=int, default=2000, help="gallery size for the 1:N throughput figure")
    ap.add_argument(
        "--search-workers",
        type=int,
        default=os.cpu_count() or 1,
        help="GalleryIndex threads (default: one per core; pays off with single-threaded BLAS)",
    )
    ap.add_argument(
        "--calibrate",
        nargs="+",
        metavar="DIR[:DPI]",
        help="fit the impostor model on these folders instead of benchmarking",
    )
    args = ap.parse_args(argv)
    if not args.calibrate and args.data is None:
        ap.error("--data DIR is required")
    if args.calibrate:
        print(json.dumps(calibrate(args.calibrate)))
        return 0
    print(json.dumps(run(args.data, args.dpi, args.workers, args.gallery, args.search_workers)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
