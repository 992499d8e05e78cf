"""Fingerprint benchmark: all-pairs verification on a folder of ``F_I`` images.

    python -m bench.fingerprint --data DIR [--dpi 500] [--workers N] [--pad-to 448x478] [--hardest K]
    python -m bench.fingerprint --synthetic 200 [--impressions 3] [--seed 0] [--profile realistic] [--hardest K]
    python -m bench.fingerprint --calibrate DIR[:DPI]... [--synthetic 200] [--leave-one-out]
    python -m bench.fingerprint --explain IMAGE [--against OTHER] --out DIR

Every unordered pair of images is compared once: same F is a genuine pair,
different F an impostor pair (FVC "all pairs" protocol; 280 genuine and 2,880
impostor pairs for 10 fingers x 8 impressions). ``--synthetic N`` does the same on
N fingers of the synthetic generator (simulators.fingers), ``--impressions`` each,
taken with the generator's "realistic" capture profile (FVC-like distortion, dry
skin, partial contact; ``--profile cooperative`` for careful placement).
Prints one JSON object on stdout (rates in percent, see "units"); progress goes
to stderr.

``fmr_at_threshold`` and ``fnmr_at_threshold`` are the measured rates at the
verifier's thresholds for target FMRs of 1e-3 and 1e-4 (calibration.threshold_for_fmr);
``false_matches`` counts the impostor pairs at or above each threshold and
``false_match_limit_95`` is the most a threshold keeping its promise would let
through 95 % of the time (the 95 % quantile of Binomial(impostor pairs, target)).
``--calibrate ... --leave-one-out`` adds, for each folder, the thresholds refitted
without it (and without its pairs across folders) and the same counts on it: how
the calibration does on a sensor it has never seen.

``comparisons_per_s`` is measured on the 1:N path: probes searched against a
gallery of ``--gallery`` templates (the folder's templates repeated under distinct
ids): the pre-filter ranks every entry, the best max(64, 3 %) get the full MCC
LSS-R score (biometrics.fingerprint.prefilter); best of 5 rounds of 10 probes
(like timeit), with the median round alongside; probes are encoded before the
clock starts. ``comparisons_per_s_per_core`` is the same with one worker, and
``comparisons_per_cpu_s_per_core`` its best round by the process's CPU time (not
inflated by other processes holding the cores on a shared machine).
``add_search_ms`` is the median latency of one enrollment's add followed by its
duplicate search (top 2) on the same gallery (one worker, BLAS as below), with
the best of 10 rounds as ``add_search_ms_best``: the template's cylinders are
built, and the search brings the packed gallery up to date incrementally.
``prefilter_recall`` is the percentage of the genuine pairs accepted at the 1e-4
threshold whose mate the pre-filter keeps (see all_pairs). The gallery is scored
in ``--search-workers`` threads (default: one per core) with single-threaded
BLAS, the deployment that GalleryIndex documents for throughput: run as a
program, this module sets OPENBLAS_NUM_THREADS=1 before numpy loads unless the
environment already sets it (the JSON reports both settings).
``--hardest K`` adds ``hardest``: the K weakest genuine and K strongest impostor
pairs, each with every factor of its score (bench.fingerprint_pairs).
``identification`` is an open-set 1:N experiment on the same prints (protocol in
bench.fingerprint_identification): galleries of the first two impressions of
4/5 of the fingers, searched by the other fifth (strangers) and by the enrolled
fingers' other impressions (mates), cut at the verifier's identification
threshold for that gallery (identify_fpir 1e-3, one view): ``fnir_at_fpir_1e-3``
and ``fpir_measured``, and the same at the 1:1 threshold
(``fnir_at_verify_threshold``, ``fpir_at_verify_threshold``).
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
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from bench.cli import BenchError, BenchParser, at_least, bench_main, parallel_map
from bench.fingerprint_identification import FOLDS, identification
from bench.machine import vector_units_here
from biometrics.fingerprint import GalleryIndex, extract, prefilter, threshold_for_fmr
from biometrics.fingerprint.allocator import keep_freed_memory
from biometrics.fingerprint.image import MAX_DPI, MIN_DPI
from biometrics.fingerprint.matcher import cylinders_of
from biometrics.fingerprint.types import FingerprintTemplate
from biometrics.tail import pair_units

NAME = re.compile(r"^(\d+)_(\d+)\.(tif|tiff|png|bmp|pgm)$", re.IGNORECASE)


def all_pairs(templates: list, fingers: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Scores of every unordered pair (symmetrised), whether each pair is the same finger, pre-filter recall.

    The recall is the fraction of the genuine pairs accepted at the 1e-4 threshold
    whose mate the 1:N pre-filter keeps: the mate's pre-score is beaten by at most
    prefilter.CANDIDATE_FRACTION of the probe's impostors (what it would be in a
    large gallery of such impostors), in both directions of the pair.
    """
    index = GalleryIndex()
    for n, tpl in enumerate(templates):
        index.add(n, tpl)
    cyl = [cylinders_of(t) for t in templates]
    matrix = np.stack([index.scores(c) for c in cyl])
    pre = np.stack([index.prescores(c) for c in cyl])
    sym = (matrix + matrix.T) / 2.0
    iu, ju = np.triu_indices(len(templates), k=1)
    same = fingers[iu] == fingers[ju]
    accepted = same & (sym[iu, ju] >= threshold_for_fmr(1e-4))
    kept = []
    for i, j in zip(iu[accepted], ju[accepted], strict=True):
        for a, b in ((i, j), (j, i)):  # a probes, b is its mate in the gallery
            impostors = pre[a][fingers != fingers[a]]
            kept.append(float((impostors > pre[a, b]).mean()) <= prefilter.CANDIDATE_FRACTION)
    recall = float(np.mean(kept)) if kept else 1.0
    return sym[iu, ju], same, recall


def _progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def list_images(folder: Path) -> list[tuple[str, int, Path]]:
    items = []
    for p in sorted(folder.iterdir()):
        m = NAME.match(p.name)
        if m:
            items.append((m.group(1), int(m.group(2)), p))
    return items


def images_of(folder: Path) -> list[tuple[str, int, Path]]:
    """The F_I images of ``folder``, at least two, or a BenchError naming what to give instead."""
    if not folder.is_dir():
        raise BenchError(f"{folder} is not a folder", "give a folder of F_I.tif images, e.g. fvc2002/DB1_B")
    items = list_images(folder)
    if len(items) < 2:
        raise BenchError(
            f"{len(items)} F_I images in {folder}",
            "give a folder of two or more images named finger_impression.tif (1_1.tif, 1_2.tif, ...)",
        )
    return items


def check_pairs(fingers: list[str] | np.ndarray, where: str) -> None:
    """All-pairs rates need a genuine pair (a finger seen twice) and an impostor pair (two fingers).

    Without either, the EER is NaN, which json.dumps writes as a bare NaN that
    no JSON reader accepts.
    """
    counts = np.unique(np.asarray(fingers), return_counts=True)[1]
    if len(counts) < 2:
        raise BenchError(
            f"{where} has images of one finger only: no impostor pairs", "give images of two fingers or more"
        )
    if counts.max() < 2:
        raise BenchError(
            f"{where} has one image of each finger: no genuine pairs", "give two impressions of a finger or more"
        )


def calibration_folder(spec: str) -> tuple[Path, int]:
    """``DIR[:DPI]`` of --calibrate: the folder and its resolution (500 when not given)."""
    path, _, dpi_text = spec.partition(":")
    if dpi_text and not (dpi_text.isascii() and dpi_text.isdigit()):
        raise BenchError(f"--calibrate {spec}: {dpi_text!r} is no resolution", "write DIR or DIR:DPI, e.g. DB2_B:569")
    dpi = int(dpi_text or 500)
    check_dpi(dpi, f"--calibrate {spec}")
    return Path(path), dpi


def check_dpi(dpi: int, option: str = "--dpi") -> None:
    if not MIN_DPI <= dpi <= MAX_DPI:
        raise BenchError(
            f"{option}: {dpi} dpi is no fingerprint sensor's", f"give the sensor's resolution, {MIN_DPI} to {MAX_DPI}"
        )


def pad_to(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The image centred on a (width, height) canvas of its own background (median border grey).

    Keeps the resolution: a way to time extraction on a larger sensor's image size
    (e.g. 448x478) with prints whose identities are known.
    """
    w, h = size
    ih, iw = img.shape
    if iw > w or ih > h:
        raise BenchError(
            f"--pad-to {w}x{h} is smaller than a {iw}x{ih} image", "give a canvas at least the images' size"
        )
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
    out = np.full((h, w), int(np.median(border)), np.uint8)
    y, x = (h - ih) // 2, (w - iw) // 2
    out[y : y + ih, x : x + iw] = img
    return out


def _extract_one(args: tuple[str, int, tuple[int, int] | None]) -> tuple[FingerprintTemplate, float]:
    path, dpi, size = args
    img = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise BenchError(f"cannot read {path}", "replace it with a greyscale image, or remove it from the folder")
    if size is not None:
        img = pad_to(img, size)
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


TARGETS = (1e-3, 1e-4)


def binomial_limit_95(n: int, p: float) -> int:
    """Smallest k with P(Binomial(n, p) <= k) >= 0.95: the most false matches a true rate p gives 95 % of the time."""
    k, term = 0, (1.0 - p) ** n
    total = term
    while total < 0.95 and k < n:
        term *= (n - k) / (k + 1) * p / (1.0 - p)
        k += 1
        total += term
    return k


def at_thresholds(genuine: np.ndarray, impostor: np.ndarray) -> dict[str, object]:
    """Measured FMR / FNMR (percent) at the calibrated thresholds, with false-match counts and their 95 % limits."""
    fmr, fnmr, count, limit, thr = {}, {}, {}, {}, {}
    for target in TARGETS:
        key = f"{target:.0e}"
        t = threshold_for_fmr(target)
        k = int((impostor >= t).sum())
        thr[key] = round(t, 5)
        count[key] = k
        limit[key] = binomial_limit_95(len(impostor), target)
        fmr[key] = round(100.0 * k / max(len(impostor), 1), 4)
        fnmr[key] = round(100.0 * float((genuine < t).mean()) if len(genuine) else 0.0, 3)
    return {
        "thresholds": thr,
        "fmr_at_threshold": fmr,
        "fnmr_at_threshold": fnmr,
        "false_matches": count,
        "false_match_limit_95": limit,
    }


def throughput(
    templates: list[FingerprintTemplate], gallery_size: int, probes: int = 10, rounds: int = 5, workers: int = 1
) -> tuple[float, float, float]:
    """Comparisons per second of GalleryIndex.search against ``gallery_size`` templates.

    Returns (best round, median round, best round by CPU time): like timeit, the
    best of several rounds discounts interference from other processes on a
    shared machine; the CPU-time rate (comparisons per CPU-second of this
    process, all its threads) does not count the time other processes hold the
    cores, so on a loaded machine it is the per-core figure to compare. The
    probes are encoded (cylinders built, about 5 ms each) before the clock
    starts: that cost is once per search whatever the gallery size, not per
    comparison.
    """
    index = GalleryIndex(workers=workers)
    cyl = [cylinders_of(t) for t in templates]
    for n in range(gallery_size):
        index.add(n, cyl[n % len(cyl)])
    index.search(cyl[0], top_k=1)  # builds the packed matrices once
    rates, cpu_rates = [], []
    for r in range(rounds):
        t0, c0 = time.perf_counter(), time.process_time()
        for p in range(probes):
            index.search(cyl[(r * probes + p) * 7 % len(cyl)], top_k=5)
        rates.append(probes * gallery_size / (time.perf_counter() - t0))
        cpu_rates.append(probes * gallery_size / max(time.process_time() - c0, 1e-9))
    return max(rates), float(np.median(rates)), max(cpu_rates)


def add_search_latency(
    templates: list[FingerprintTemplate], gallery_size: int, rounds: int = 10
) -> tuple[float, float]:
    """Milliseconds of one enrollment's add + duplicate search on a gallery of ``gallery_size`` (median, best).

    What the verifier pays per enrollment: the template is added (cylinders and
    sketch built) and the next search brings the packed gallery up to date
    (incrementally: GalleryIndex) before ranking it. The gallery is built and
    searched once before the clock starts; each round adds one more template.
    """
    index = GalleryIndex()
    for n in range(gallery_size):
        index.add(n, templates[n % len(templates)])
    index.search(templates[0], top_k=2)
    times = []
    for r in range(rounds):
        tpl = templates[(r * 13 + 5) % len(templates)]
        t0 = time.perf_counter()
        index.add(("new", r), tpl)
        index.search(tpl, top_k=2)
        times.append(time.perf_counter() - t0)
    return 1000.0 * float(np.median(times)), 1000.0 * min(times)


def extract_folder(
    folder: Path, dpi: int, workers: int, size: tuple[int, int] | None = None
) -> tuple[list[FingerprintTemplate], np.ndarray, np.ndarray]:
    """Templates, finger labels and extraction times (s) of a folder of F_I images (padded to ``size``)."""
    items = images_of(folder)
    _progress(f"extracting {len(items)} images at {dpi} dpi")
    jobs = [(str(p), dpi, size) for _, _, p in items]
    results = parallel_map(_extract_one, jobs, workers, initializer=keep_freed_memory, label="images")
    return [r[0] for r in results], np.array([f for f, _, _ in items]), np.array([r[1] for r in results])


def _synthetic_one(args: tuple[int, int, int, str]) -> list[tuple[FingerprintTemplate, float]]:
    from simulators.fingers import FingerGenerator

    seed, finger_id, impressions, profile = args
    finger = FingerGenerator(seed).finger(finger_id)
    out = []
    for i in range(impressions):
        imp = finger.impression(i, profile=profile)
        t0 = time.perf_counter()
        tpl = extract(imp.image, imp.dpi)
        out.append((tpl, time.perf_counter() - t0))
    return out


def extract_synthetic(
    count: int, impressions: int, seed: int, workers: int, profile: str = "realistic"
) -> tuple[list[FingerprintTemplate], np.ndarray, np.ndarray]:
    """Templates of ``impressions`` random impressions of ``count`` synthetic fingers, labels, extraction times.

    ``profile`` is the generator's capture profile (simulators.fingers.PROFILES): "realistic"
    draws impressions with the spread of FVC2002's (distortion, dry skin, partial contact).
    """
    _progress(f"synthetic population: {count} fingers x {impressions} {profile} impressions (seed {seed})")
    jobs = [(seed, f, impressions, profile) for f in range(count)]
    results = parallel_map(_synthetic_one, jobs, workers, initializer=keep_freed_memory, chunksize=4, label="fingers")
    flat = [r for per_finger in results for r in per_finger]
    fingers = np.repeat(np.arange(count), impressions).astype(str)
    return [r[0] for r in flat], fingers, np.array([r[1] for r in flat])


def run(
    templates: list[FingerprintTemplate],
    fingers: np.ndarray,
    times: np.ndarray,
    dpi: int,
    gallery_size: int,
    search_workers: int = 1,
    names: list[str] | None = None,
    hardest: int = 0,
) -> dict[str, object]:
    """The benchmark's figures (module docstring); ``hardest`` > 0 adds the hardest pairs, named by ``names``."""
    _progress("matching all pairs")
    pair_scores, same, recall = all_pairs(templates, fingers)
    hard: dict[str, object] = {}
    if hardest > 0:
        from bench.fingerprint_pairs import hardest_pairs

        _progress(f"explaining the {hardest} hardest genuine and impostor pairs")
        labels = names or [str(n) for n in range(len(templates))]
        hard["hardest"] = hardest_pairs(templates, labels, pair_scores, same, hardest)
    genuine, impostor = pair_scores[same], pair_scores[~same]
    rates = error_rates(genuine, impostor)

    _progress(f"1:N throughput on a gallery of {gallery_size}")
    cps, cps_median, _ = throughput(templates, gallery_size, workers=search_workers)
    _progress(f"1:N throughput on a gallery of {gallery_size}, one worker")
    per_core, per_core_median, per_core_cpu = throughput(templates, gallery_size, workers=1)
    _progress(f"enrollment add + search on a gallery of {gallery_size}")
    add_search, add_search_best = add_search_latency(templates, gallery_size)
    _progress(f"open-set identification: {FOLDS} folds, each finger a stranger in one")
    open_set = identification(templates, fingers, workers=search_workers)
    return {
        "eer": round(100 * rates["eer"], 3),
        "fmr100": round(100 * rates["fmr100"], 3),
        "fmr1000": round(100 * rates["fmr1000"], 3),
        **at_thresholds(genuine, impostor),
        "units": "percent",
        "extract_ms_median": round(float(np.median(times)) * 1000, 2),
        "comparisons_per_s": round(cps),
        "comparisons_per_s_median": round(cps_median),
        "comparisons_per_s_per_core": round(per_core),
        "comparisons_per_s_per_core_median": round(per_core_median),
        "comparisons_per_cpu_s_per_core": round(per_core_cpu),
        "add_search_ms": round(add_search, 2),
        "add_search_ms_best": round(add_search_best, 2),
        "prefilter_candidates": f"max({prefilter.MIN_CANDIDATES}, {prefilter.CANDIDATE_FRACTION:.0%} of the gallery)",
        "prefilter_recall": round(100.0 * recall, 2),
        "genuine": int(same.sum()),
        "impostor": int((~same).sum()),
        "impostor_max": round(float(impostor.max(initial=0.0)), 5),
        "impostor_p99": round(float(np.percentile(impostor, 99)), 5) if len(impostor) else 0.0,
        "impostor_median": round(float(np.median(impostor)), 5) if len(impostor) else 0.0,
        "genuine_median": round(float(np.median(genuine)), 4) if len(genuine) else 0.0,
        "genuine_p10": round(float(np.percentile(genuine, 10)), 4) if len(genuine) else 0.0,
        "images": len(templates),
        "image_size": f"{templates[0].width}x{templates[0].height}",
        "minutiae_median": float(np.median([len(t.minutiae) for t in templates])),
        "dpi": dpi,
        "gallery_size": gallery_size,
        "search_workers": search_workers,
        "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS", ""),
        "cpu_vector_units": vector_units_here(),  # the throughput follows them (bench.machine)
        "identification": open_set,
        **hard,
    }


Sample = tuple[str, np.ndarray, np.ndarray | None]  # a calibration group: name, impostor scores, units


@dataclass(frozen=True)
class CalibrationData:
    """Every calibration group's impostor pairs, and what a held-out check needs besides.

    ``across`` and ``population`` are None when there is one folder or no
    synthetic population; ``across_folders`` gives the two folders of each pair
    across folders, shape (pairs, 2), so a held-out folder's pairs can be dropped.
    """

    folders: list[Sample]  # one group per folder (one sensor each)
    genuine: list[np.ndarray]  # each folder's genuine scores
    across: Sample | None
    population: Sample | None
    across_folders: np.ndarray

    @property
    def groups(self) -> list[Sample]:
        """The groups the calibration is fitted on, in the order fit_groups reports them."""
        return self.folders + [g for g in (self.across, self.population) if g is not None]


def calibration_samples(
    specs: list[str], synthetic: int, impressions: int, seed: int, workers: int, profile: str = "realistic"
) -> CalibrationData:
    """Extract and score every folder (and the synthetic population): the calibration's data."""
    all_templates: list[FingerprintTemplate] = []
    labels: list[str] = []
    folder_of: list[int] = []
    folders: list[Sample] = []
    genuine: list[np.ndarray] = []
    for n, spec in enumerate(specs):
        folder, dpi = calibration_folder(spec)
        _progress(f"calibration: {folder} at {dpi} dpi")
        templates, fingers, _ = extract_folder(folder, dpi, workers)
        pair_scores, same, _ = all_pairs(templates, fingers)
        folders.append((folder.name, pair_scores[~same], pair_units(fingers)[~same]))
        genuine.append(pair_scores[same])
        all_templates += templates
        labels += [f"{n}:{f}" for f in fingers]
        folder_of += [n] * len(templates)
    across: Sample | None = None
    across_folders = np.zeros((0, 2), np.int64)
    if len(specs) > 1:
        _progress("calibration: pairs across folders")
        pair_scores, same, _ = all_pairs(all_templates, np.array(labels))
        f = np.array(folder_of)
        iu, ju = np.triu_indices(len(f), k=1)
        keep = f[iu] != f[ju]
        across = ("across folders", pair_scores[keep], pair_units(np.array(labels))[keep])
        across_folders = np.stack([f[iu][keep], f[ju][keep]], axis=1)
    population: Sample | None = None
    if synthetic:
        templates, fingers, _ = extract_synthetic(synthetic, impressions, seed, workers, profile)
        pair_scores, same, _ = all_pairs(templates, fingers)
        population = (f"synthetic {synthetic} fingers seed {seed}", pair_scores[~same], pair_units(fingers)[~same])
    return CalibrationData(folders, genuine, across, population, across_folders)


def held_out_check(groups: list[Sample], impostor: np.ndarray, genuine: np.ndarray) -> dict[str, object]:
    """Thresholds fitted on ``groups`` alone, and what they let through on a sensor they never saw.

    The promise is about sensors the calibration has not seen (a kiosk's reader
    is rarely one of the calibration's): the held-out folder's impostor pairs at
    each target's threshold, against the most a threshold keeping its promise
    would let through 95 % of the time, and its genuine pairs' refusals.
    """
    from biometrics.fingerprint.calibration import fit_groups

    fits = fit_groups(groups)
    out: dict[str, dict[str, object]] = {
        k: {} for k in ("thresholds", "set_by", "false_matches", "false_match_limit_95", "fnmr_at_threshold")
    }
    for target in TARGETS:
        key = f"{target:.0e}"
        worst = max(fits, key=lambda g: g.threshold(target))
        t = worst.threshold(target)
        out["thresholds"][key] = round(t, 5)
        out["set_by"][key] = worst.name
        out["false_matches"][key] = int((impostor >= t).sum())
        out["false_match_limit_95"][key] = binomial_limit_95(len(impostor), target)
        out["fnmr_at_threshold"][key] = round(100.0 * float((genuine < t).mean()) if len(genuine) else 0.0, 3)
    return dict(out)


def leave_one_out(data: CalibrationData) -> list[dict[str, object]]:
    """Each folder held out in turn: the calibration refitted without it (and without its pairs across folders)."""
    folders, across, population = data.folders, data.across, data.population
    checks = []
    for k, (name, impostor, _) in enumerate(folders):
        groups = [g for i, g in enumerate(folders) if i != k]
        if across is not None and len(folders) > 2:  # two others still have pairs across them
            keep = (data.across_folders != k).all(axis=1)
            groups.append((across[0], across[1][keep], None if across[2] is None else across[2][keep]))
        if population is not None:
            groups.append(population)
        if not groups:
            raise BenchError("--leave-one-out has nothing to fit without the held-out folder",
                             "give a second folder or --synthetic N")
        checks.append({"held_out": name, **held_out_check(groups, impostor, data.genuine[k])})
    return checks


def calibrate(
    specs: list[str],
    synthetic: int,
    impressions: int,
    seed: int,
    workers: int,
    profile: str = "realistic",
    hold_out: bool = False,
) -> dict[str, object]:
    """Fit biometrics.fingerprint.calibration's per-group impostor models on impostor pairs only.

    Groups: each folder's own impostor pairs (one sensor each), the pairs across
    folders (every template of every folder against those of the others), and the
    synthetic population if ``synthetic`` > 0. ``hold_out`` adds the
    leave-one-sensor-out check (:func:`leave_one_out`).
    """
    from biometrics.fingerprint.calibration import MIN_SHAPE_UNITS, fit_group, fit_groups

    data = calibration_samples(specs, synthetic, impressions, seed, workers, profile)
    samples = data.groups
    fits = fit_groups(samples)
    own = [  # what a small group's own bound would be, beside what it borrowed
        g if g.tail.units >= MIN_SHAPE_UNITS else fit_group(name, scores, units, g.tail.xi)
        for g, (name, scores, units) in zip(fits, samples, strict=True)
    ]
    result: dict[str, object] = {
        "groups": [
            {
                "name": g.name,
                # "borrowed": the large groups' tail length on this group's spread (calibration.fit_groups)
                "scale": "own" if g.tail.sigma == mine.tail.sigma else "borrowed",
                "own_sigma_upper": mine.tail.sigma,
                "pairs": g.tail.pairs,
                "quantiles": [round(q, 5) for q in g.tail.quantiles],
                "tail_rate": g.tail.tail_rate,
                "sigma": g.tail.sigma,
                "xi": g.tail.xi,
                "units": g.tail.units,
                "threshold_1e-3": round(g.threshold(1e-3), 4),
                "threshold_1e-4": round(g.threshold(1e-4), 4),
            }
            for g, mine in zip(fits, own, strict=True)
        ],
        "python": "\n".join(
            f"    Group({g.name!r},\n          ImpostorTail({g.tail.pairs}, "
            f"({', '.join(f'{q:.5f}' for q in g.tail.quantiles)}), "
            f"{g.tail.tail_rate:.5f}, {g.tail.sigma:.5f}, {g.tail.xi:.4f}, {g.tail.units:.1f})),"
            for g in fits
        ),
    }
    if hold_out:
        result["leave_one_out"] = leave_one_out(data)
    return result


def check_counts(args: argparse.Namespace) -> None:
    """Counts and resolutions that give no figure (or a negative one) are refused before any work."""
    at_least(args.workers, 1, "--workers")
    at_least(args.search_workers, 1, "--search-workers")
    at_least(args.gallery, 1, "--gallery", "the 1:N throughput searches a gallery")
    at_least(args.impressions, 1, "--impressions")
    if args.synthetic:
        at_least(args.synthetic, 2, "--synthetic", "impostor pairs need two fingers")
    check_dpi(args.dpi)
    for spec in args.calibrate or ():
        calibration_folder(spec)


@bench_main("python -m bench.fingerprint")
def main(argv: list[str] | None = None) -> int:
    ap = BenchParser(prog="python -m bench.fingerprint", description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, help="folder of F_I.tif images")
    ap.add_argument("--dpi", type=int, default=500, help="resolution of the images (FVC2002 DB2: 569)")
    ap.add_argument("--workers", type=int, default=1, help="processes for extraction")
    ap.add_argument(
        "--pad-to", metavar="WxH", help="centre each image on a canvas this size (time extraction on larger images)"
    )
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
        help="fit the impostor model on these folders (and --synthetic N fingers) instead of benchmarking",
    )
    ap.add_argument(
        "--leave-one-out",
        action="store_true",
        help="with --calibrate: refit without each folder in turn and count what it lets through on that folder",
    )
    ap.add_argument("--synthetic", type=int, default=0, metavar="N", help="a population of N synthetic fingers")
    ap.add_argument("--impressions", type=int, default=3, help="impressions per synthetic finger")
    ap.add_argument("--seed", type=int, default=0, help="synthetic generator seed")
    ap.add_argument(
        "--profile",
        default="realistic",
        choices=("realistic", "cooperative"),
        help="synthetic capture profile: FVC-like spread of impressions, or careful placement",
    )
    ap.add_argument(
        "--hardest",
        type=int,
        default=0,
        metavar="K",
        help="also explain the K weakest genuine and K strongest impostor pairs (each factor of their scores)",
    )
    ap.add_argument("--explain", type=Path, metavar="IMAGE", help="write the extraction stages of IMAGE as PNGs")
    ap.add_argument(
        "--against", type=Path, metavar="OTHER", help="with --explain: also compare IMAGE with OTHER (comparison.png)"
    )
    ap.add_argument("--out", type=Path, help="folder for --explain's PNGs")
    args = ap.parse_args(argv)
    if args.hardest < 0:
        ap.error("--hardest takes a count of pairs (0 or more)")
    if args.against is not None and args.explain is None:
        ap.error("--against OTHER compares with the image of --explain IMAGE --out DIR: give both")
    if args.hardest and (args.calibrate or args.explain is not None):
        ap.error("--hardest explains a benchmark's pairs: give it with --data DIR or --synthetic N")
    check_counts(args)
    keep_freed_memory()  # what a daemon extracting capture after capture does (biometrics.fingerprint.allocator)
    if args.leave_one_out and not args.calibrate:
        ap.error("--leave-one-out checks a calibration: give it with --calibrate DIR...")
    if args.leave_one_out and len(args.calibrate) < 2 and not args.synthetic:
        ap.error("--leave-one-out refits without each folder: give a second folder or --synthetic N")
    if args.explain is not None:
        if args.out is None:
            ap.error("--explain IMAGE needs --out DIR")
        from bench.fingerprint_explain import explain_to_folder

        print(json.dumps(explain_to_folder(args.explain, args.out, args.dpi, args.against)))
        return 0
    if args.calibrate:
        fit = calibrate(
            args.calibrate, args.synthetic, args.impressions, args.seed, args.workers, args.profile, args.leave_one_out
        )
        print(json.dumps(fit))
        return 0
    if args.synthetic:
        if args.impressions < 2:
            ap.error("--impressions must be at least 2 (genuine pairs need two impressions of a finger)")
        templates, fingers, times = extract_synthetic(
            args.synthetic, args.impressions, args.seed, args.workers, args.profile
        )
        names = [f"{f}_{n % args.impressions + 1}" for n, f in enumerate(fingers)]
        result = run(templates, fingers, times, 500, args.gallery, args.search_workers, names, args.hardest)
        result.update(
            {
                "synthetic_fingers": args.synthetic,
                "impressions": args.impressions,
                "seed": args.seed,
                "profile": args.profile,
            }
        )
    elif args.data is not None:
        size = None
        if args.pad_to:
            m = re.fullmatch(r"(\d+)x(\d+)", args.pad_to)
            if not m:
                ap.error("--pad-to takes WIDTHxHEIGHT, e.g. 448x478")
            size = (int(m.group(1)), int(m.group(2)))
        check_pairs([f for f, _, _ in images_of(args.data)], str(args.data))  # before minutes of extraction
        templates, fingers, times = extract_folder(args.data, args.dpi, args.workers, size)
        names = [p.stem for _, _, p in list_images(args.data)]
        result = run(templates, fingers, times, args.dpi, args.gallery, args.search_workers, names, args.hardest)
    else:
        ap.error("give --data DIR, --synthetic N, --calibrate DIR... or --explain IMAGE --out DIR")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())  # the synthetic generator's debug lines are filtered out by bench_main
