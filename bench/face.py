"""Face benchmark: all-pairs verification on a folder of ``sN/*.pgm`` (or other image formats).

    python -m bench.face --data DIR [--fmr 0.001]
    python -m bench.face --calibrate DIR      # fit biometrics.face.calibration's impostor model

Every image of every subfolder (one subfolder per person) goes through the
pipeline's steps: detection (with the crop padding and integer upscale that
biometrics.face.detect applies to face-sized frames), alignment, embedding.
Every unordered pair of embedded images is scored once (same subfolder: genuine
pair; otherwise impostor). An image in which no face is found is a failure to
acquire (``fta``, a fraction) and takes part in no pair. Rates are fractions.

Timings run on one core (``cv2.setNumThreads(1)``): ``*_ms_median`` is the
median wall time of a step, ``*_cpu_ms_median`` its median CPU time on the
calling thread, the steadier figure on a shared machine (``*_cpu_ms_p90``: its
90th percentile). The embedding's time includes the alignment. Detection is also timed
on 640x480 frames made from the first images (each upscaled x2 and centred on a
replicated border, so the face is camera-sized), the size of a VGA camera frame;
``feedback_640x480_cpu_ms_median`` adds the quality assessment to it: what a
camera session spends before it can show a frame's prompt.

``eer_frontal_pairs`` and ``tar_at_far01_frontal_pairs`` are the same rates on
the pairs whose two images both pass the quality gate's pose limits (what a live
session, which asks ``look_at_camera`` first, enrolls and compares); the
headline rates count every pair, turned heads included.

``threshold`` is biometrics.face's cosine threshold for the target ``--fmr``
(from its impostor model, fitted on ORL: on ORL itself ``fmr_at_threshold`` is
the fit's own check, on another set it is a test of it), with the FMR and FNMR
measured at it. ``held_out_*`` checks the calibration method on people it never
saw: the same impostor model (bounds counting pairs of people, see
biometrics.face.calibration) fitted on the pairs of every other person, its
threshold applied to the pairs of the rest (``held_out_fmr``, ``held_out_fnmr``);
then over 100 random halvings of the people, in how many the held-out FMR
exceeded the target (``held_out_over_target``) and its 95th percentile
(``held_out_fmr_p95``). The promise holds when about 5 in 100 or fewer exceed it.
Fewer than 1,000 impostor pairs on a half: these are null.

On ORL (92x112, one core, CPU ms on a shared 2-core machine):
before (bilinear alignment, tail counted in image pairs): eer 0.00611,
tar_at_far01 0.99222, held_out_fmr 0.00463 at a 0.001 target; after (Lanczos
alignment, tail bounds over pairs of people): eer 0.005, tar_at_far1 0.995,
tar_at_far01 0.99278, fta 0, threshold 0.4334 (fnmr_at_threshold 0.01389),
held_out_fmr 0.00063, held_out_over_target 3/100,
detect 6.8 ms, embed 22.6 ms.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np

from bench.cli import BenchError, BenchParser, bench_main
from biometrics.face.align import align
from biometrics.face.calibration import fit_impostor_model, threshold_for_fmr
from biometrics.face.detect import Detector, geometry_for
from biometrics.face.embed import Embedder
from biometrics.face.pose import pose_of
from biometrics.face.quality import MAX_PITCH, MAX_ROLL, MAX_YAW, assess
from biometrics.tail import pair_units

HALVINGS = 100  # random halvings of the people for held_out_over_target
EXTENSIONS = {".pgm", ".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".ppm", ".webp"}
VGA = (640, 480)


def _progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def list_images(folder: Path) -> list[tuple[str, Path]]:
    """(person, path) for every image of every subfolder, in a stable order."""
    items = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        items.extend((sub.name, p) for p in sorted(sub.iterdir()) if p.suffix.lower() in EXTENSIONS)
    return items


def images_of(folder: Path) -> list[tuple[str, Path]]:
    """The images of ``folder``'s people, or a BenchError naming what to give: genuine and impostor pairs need
    two people, one of them with two images (else the rates are NaN, which is no JSON)."""
    if not folder.is_dir():
        raise BenchError(f"{folder} is not a folder", "give a folder of per-person subfolders of images (sN/*.pgm)")
    items = list_images(folder)
    per_person = Counter(person for person, _ in items)
    if len(per_person) < 2:
        raise BenchError(
            f"need images of at least two people in subfolders of {folder}",
            "give a folder of per-person subfolders of images (sN/*.pgm), e.g. att_faces",
        )
    if max(per_person.values()) < 2:
        raise BenchError(
            f"each person in {folder} has one image: no genuine pairs", "give two images of a person or more"
        )
    return items


def check_pairs(people: np.ndarray, found: int, total: int) -> None:
    """After detection: the images a face was found in must still make a genuine and an impostor pair."""
    counts = np.unique(people, return_counts=True)[1]
    if len(counts) < 2 or counts.max() < 2:
        raise BenchError(
            f"a face was found in {found} of {total} images: too few for a genuine and an impostor pair",
            "give images with one face each, at least two of one person and one of another",
        )


def _timed(fn, *args):
    w, c = time.perf_counter(), time.thread_time()
    out = fn(*args)
    return out, (time.perf_counter() - w) * 1000.0, (time.thread_time() - c) * 1000.0


def error_rates(genuine: np.ndarray, impostor: np.ndarray) -> dict[str, float]:
    """EER and TAR at FAR 1 % / 0.1 %, as fractions; accept when score >= threshold."""
    thresholds = np.unique(np.concatenate([genuine, impostor, [np.inf]]))
    g, i = np.sort(genuine), np.sort(impostor)
    fnmr = np.searchsorted(g, thresholds, side="left") / len(g)
    fmr = (len(i) - np.searchsorted(i, thresholds, side="left")) / len(i)
    k = int(np.argmin(np.abs(fmr - fnmr)))
    eer = (fmr[k] + fnmr[k]) / 2.0
    if k + 1 < len(thresholds) and fmr[k] > fnmr[k] and fmr[k + 1] < fnmr[k + 1]:
        eer = min(eer, (max(fmr[k + 1], fnmr[k]) + min(fmr[k], fnmr[k + 1])) / 2.0)

    def tar_at(target: float) -> float:
        ok = fmr <= target
        return float(1.0 - fnmr[ok].min()) if ok.any() else 0.0

    return {"eer": float(eer), "tar_at_far1": tar_at(0.01), "tar_at_far01": tar_at(0.001)}


def embed_folder(folder: Path) -> dict[str, object]:
    """Run every image through detection, alignment and embedding; collect embeddings and timings."""
    items = images_of(folder)
    detector, embedder = Detector(), Embedder()
    people, vectors, failed, frontal = [], [], [], []
    det_ms, det_cpu, emb_ms, emb_cpu, sizes = [], [], [], [], set()
    for n, (person, path) in enumerate(items):
        frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if frame is None:
            raise BenchError(f"cannot read {path}", "replace it with an image, or remove it from the folder")
        sizes.add((frame.shape[1], frame.shape[0]))
        faces, wall, cpu = _timed(detector.detect, frame)
        det_ms.append(wall)
        det_cpu.append(cpu)
        if not faces:
            failed.append(str(path.relative_to(folder)))
            continue
        vector, wall, cpu = _timed(lambda f, fc: embedder.embed(align(f, fc)), frame, faces[0])
        emb_ms.append(wall)
        emb_cpu.append(cpu)
        people.append(person)
        vectors.append(vector)
        p = pose_of(faces[0].landmarks)
        frontal.append(abs(p.yaw) <= MAX_YAW and abs(p.pitch) <= MAX_PITCH and abs(p.roll) <= MAX_ROLL)
        if n % 50 == 0:
            _progress(f"{n}/{len(items)} images")
    check_pairs(np.array(people), len(people), len(items))
    return {
        "items": items, "people": np.array(people), "vectors": np.array(vectors, np.float32), "failed": failed,
        "frontal": np.array(frontal, bool), "det_ms": det_ms, "det_cpu": det_cpu, "emb_ms": emb_ms,
        "emb_cpu": emb_cpu, "sizes": sorted(sizes), "detector": detector,
    }


def all_pairs(vectors: np.ndarray, people: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cosine of every unordered pair and whether the pair is one person."""
    scores = vectors @ vectors.T
    iu, ju = np.triu_indices(len(vectors), k=1)
    return scores[iu, ju], people[iu] == people[ju]


def pair_mask(flags: np.ndarray) -> np.ndarray:
    """For every unordered pair (in all_pairs' order), whether both of its images have ``flags`` set."""
    iu, ju = np.triu_indices(len(flags), k=1)
    return flags[iu] & flags[ju]


def vga_detection(
    detector: Detector, items: list[tuple[str, Path]], count: int = 40
) -> tuple[list, list, int, list]:
    """On 640x480 frames made from ``count`` images: detection wall and CPU times, faces found, and the
    CPU time of a frame's feedback (detection plus the quality assessment of the largest face)."""
    walls, cpus, found, feedback = [], [], 0, []
    for _, path in items[:: max(1, len(items) // count)][:count]:
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        img = cv2.resize(img, None, fx=2, fy=2, interpolation=cv2.INTER_LINEAR)[: VGA[1], : VGA[0]]
        top, left = (VGA[1] - img.shape[0]) // 2, (VGA[0] - img.shape[1]) // 2
        frame = cv2.copyMakeBorder(
            img, top, VGA[1] - img.shape[0] - top, left, VGA[0] - img.shape[1] - left, cv2.BORDER_REPLICATE
        )
        faces, wall, cpu = _timed(detector.detect, frame)
        walls.append(wall)
        cpus.append(cpu)
        found += bool(faces)
        _, _, quality_cpu = _timed(assess, cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY), faces[0] if faces else None)
        feedback.append(cpu + quality_cpu)
    return walls, cpus, found, feedback


def run(folder: Path, fmr: float) -> dict[str, object]:
    cv2.setNumThreads(1)
    got = embed_folder(folder)
    _progress("scoring all pairs")
    scores, same = all_pairs(got["vectors"], got["people"])
    genuine, impostor = scores[same], scores[~same]
    rates = error_rates(genuine, impostor)
    both = pair_mask(got["frontal"])
    gated = error_rates(scores[same & both], scores[~same & both]) if (same & both).any() else None
    threshold = threshold_for_fmr(fmr)
    held_out = held_out_check(scores, same, got["people"], fmr)
    vga_wall, vga_cpu, vga_found, vga_feedback = vga_detection(got["detector"], got["items"])
    width, height = got["sizes"][0]
    geo = geometry_for(width, height)
    prepared = ((width + 2 * geo.pad_x) * geo.scale, (height + 2 * geo.pad_y) * geo.scale)

    def med(x: list) -> float | None:  # None (JSON null) when nothing was timed: NaN is not JSON
        return round(float(np.median(x)), 2) if x else None

    def p90(x: list) -> float | None:
        return round(float(np.percentile(x, 90)), 2) if x else None

    return {
        "eer": round(rates["eer"], 5),
        "tar_at_far1": round(rates["tar_at_far1"], 5),
        "tar_at_far01": round(rates["tar_at_far01"], 5),
        "fta": round(len(got["failed"]) / len(got["items"]), 5),
        "eer_frontal_pairs": None if gated is None else round(gated["eer"], 5),
        "tar_at_far01_frontal_pairs": None if gated is None else round(gated["tar_at_far01"], 5),
        "frontal_images": int(got["frontal"].sum()),
        "detect_ms_median": med(got["det_ms"]),
        "detect_cpu_ms_median": med(got["det_cpu"]),
        "detect_cpu_ms_p90": p90(got["det_cpu"]),
        "embed_ms_median": med(got["emb_ms"]),
        "embed_cpu_ms_median": med(got["emb_cpu"]),
        "embed_cpu_ms_p90": p90(got["emb_cpu"]),
        "detect_640x480_ms_median": med(vga_wall),
        "detect_640x480_cpu_ms_median": med(vga_cpu),
        "detect_640x480_found": f"{vga_found}/{len(vga_wall)}",
        "feedback_640x480_cpu_ms_median": med(vga_feedback),
        "frame_size": f"{width}x{height}",
        "frame_sizes": len(got["sizes"]),
        "detector_input": f"{prepared[0]}x{prepared[1]}",
        "target_fmr": fmr,
        "threshold": round(threshold, 4),
        "fmr_at_threshold": round(float((impostor >= threshold).mean()), 5),
        "fnmr_at_threshold": round(float((genuine < threshold).mean()), 5),
        **held_out,
        "genuine": int(same.sum()),
        "impostor": int((~same).sum()),
        "images": len(got["items"]),
        "failed": got["failed"][:20],
        "threads": 1,
        "opencv": cv2.__version__,
        "units": "rates as fractions, times in ms",
    }


def held_out_check(scores: np.ndarray, same: np.ndarray, people: np.ndarray, fmr: float) -> dict[str, float]:
    """Fit the impostor model on the pairs of half the people, apply its threshold to the other half's pairs.

    The shipped threshold was fitted on ORL, so on ORL ``fmr_at_threshold`` only
    checks the fit; this figure does not reuse a single score it was fitted on.
    """
    names = np.unique(people)
    first = np.isin(people, names[::2])
    iu, ju = np.triu_indices(len(people), k=1)
    in_a, in_b = first[iu] & first[ju], ~first[iu] & ~first[ju]
    if (in_a & ~same).sum() < 1000 or not (in_b & same).any():  # too few people to fit a tail on half of them
        return dict.fromkeys(("held_out_threshold", "held_out_fmr", "held_out_fnmr", "held_out_over_target",
                              "held_out_fmr_p95"))
    units = pair_units(people)
    t = threshold_for_fmr(fmr, fit_impostor_model(scores[in_a & ~same], units[in_a & ~same]))
    over, fmrs = 0, []
    rng = np.random.default_rng(0)
    for _ in range(HALVINGS):
        first = np.isin(people, rng.permutation(names)[: len(names) // 2])
        fit, test = first[iu] & first[ju] & ~same, ~first[iu] & ~first[ju] & ~same
        if len(scores[fit]) < 1000 or not test.any():
            continue
        fmrs.append(float((scores[test] >= threshold_for_fmr(fmr, fit_impostor_model(scores[fit], units[fit]))).mean()))
        over += fmrs[-1] > fmr
    return {
        "held_out_threshold": round(t, 4),
        "held_out_fmr": round(float((scores[in_b & ~same] >= t).mean()), 5),
        "held_out_fnmr": round(float((scores[in_b & same] < t).mean()), 5),
        "held_out_over_target": f"{over}/{len(fmrs)}",
        "held_out_fmr_p95": round(float(np.percentile(fmrs, 95)), 5) if fmrs else None,
    }


def calibrate(folder: Path) -> dict[str, object]:
    """Fit biometrics.face.calibration's impostor model on the impostor pairs of ``folder``."""
    cv2.setNumThreads(1)
    got = embed_folder(folder)
    scores, same = all_pairs(got["vectors"], got["people"])
    model = fit_impostor_model(scores[~same], pair_units(got["people"])[~same])
    return {
        "model": f"ImpostorTail({model.pairs}, ({', '.join(f'{q:.5f}' for q in model.quantiles)}), "
                 f"{model.tail_rate:.5f}, {model.sigma:.6f}, {model.xi:.4f}, {model.units:.1f})",
        "threshold_1e-3": round(model.threshold(1e-3), 4),
        "threshold_1e-4": round(model.threshold(1e-4), 4),
        "impostor": int((~same).sum()),
        "people_pairs": len(np.unique(pair_units(got["people"])[~same])),
    }


@bench_main("python -m bench.face")
def main(argv: list[str] | None = None) -> int:
    ap = BenchParser(prog="python -m bench.face", description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, help="folder of per-person subfolders of images (sN/*.pgm)")
    ap.add_argument("--fmr", type=float, default=0.001, help="target FMR for the reported threshold, in (0, 1)")
    ap.add_argument("--calibrate", type=Path, metavar="DIR", help="fit the impostor model on DIR instead")
    args = ap.parse_args(argv)
    if not 0.0 < args.fmr < 1.0:
        raise BenchError(f"--fmr {args.fmr:g} is not a rate", "give a false match rate between 0 and 1, e.g. 0.001")
    if args.calibrate is not None:
        print(json.dumps(calibrate(args.calibrate)))
        return 0
    if args.data is None:
        ap.error("--data DIR (a folder of sN/ subfolders of images) is required")
    print(json.dumps(run(args.data, args.fmr)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
