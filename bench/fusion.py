"""Score-level fusion of a finger and a face: error rates of each modality alone and fused, on chimeric people.

    python -m bench.fusion [--fingers ../shared/data/fvc2002] [--faces ../shared/data/att_faces]
                           [--per-db 10] [--impressions 8] [--fmr 0.001] [--workers 1]

No public set here has a finger and a face of the same people, so each person
is *chimeric*: finger F of FVC2002 database D (set B: 10 fingers x 8
impressions per database) is paired with one ORL person (40 people x 10
images), the pairing fixed by order (DB1 fingers with s1..s10, DB2 with
s11..s20, ...), and impression I of the finger with the person's image I. A
sample is (finger impression, face image). Pairs are formed within a database,
as bench.fingerprint does (all unordered pairs: same finger is genuine,
otherwise impostor), so a finger impostor is never a comparison across sensors.

The assumption this rests on: a person's finger and face scores are
independent, given whether the pair is genuine. Chimeric people are independent
by construction, so the fused rates here are what independence gives; real
people whose finger and face scores go together (a poor capture day, one
impostor who resembles someone in both) would do worse. Take the fused figures
as an upper bound of what fusion buys, not a measurement on people.

Fusion: each score is mapped to ``-log10 FMR(score)`` through its modality's
own calibration (the inverse of ``biometrics.fingerprint.threshold_for_fmr``
and of ``biometrics.face.threshold_for_fmr``), and the two are added. If the
calibrations hold and the scores are independent, the sum is ``-log10(p1 p2)``
for two independent p-values, whose false match rate at a threshold ``T`` is
``p (1 + ln(1/p))`` with ``p = 10^-T`` (Fisher's method for two p-values): the
fused threshold for ``--fmr`` solves that, and ``fmr_at_threshold`` checks it.
Both calibrations were fitted on these very data sets (fingers on FVC2002
pooled with synthetic fingers, faces on ORL), so the check is in-sample.

Printed (JSON on stdout, fractions): for ``finger``, ``face`` and ``fused``,
``eer``, ``tar_at_far1``, ``tar_at_far01`` and at the modality's threshold for
``--fmr``: ``threshold``, ``fmr_at_threshold``, ``tar_at_threshold``; with the
numbers of people, genuine and impostor pairs. An image in which no face is
found scores as the lowest face score (a failure to acquire is a reject).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import cv2
import numpy as np

from bench.cli import BenchError, BenchParser, at_least, bench_main, parallel_map
from bench.face import error_rates
from bench.face import list_images as face_images
from bench.fingerprint import all_pairs as finger_pairs
from bench.fingerprint import list_images as finger_images
from biometrics.face import threshold_for_fmr as face_threshold
from biometrics.fingerprint import extract
from biometrics.fingerprint import threshold_for_fmr as finger_threshold

DATABASES = (("DB1_B", 500), ("DB2_B", 569), ("DB3_B", 500), ("DB4_B", 500))
GRID = np.logspace(-0.5, -12.0, 400)  # FMRs over which each calibration is inverted
ASSUMPTION = "chimeric people: a finger of FVC2002 and a face of ORL; finger and face scores assumed independent"


def _progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def log_fmr(scores: np.ndarray, threshold_for_fmr) -> np.ndarray:
    """``-log10 FMR(score)`` by the calibration's own threshold curve (0 below its range, 12 above)."""
    thresholds = np.maximum.accumulate(np.array([threshold_for_fmr(float(f)) for f in GRID]))
    return np.interp(scores, thresholds, -np.log10(GRID), left=0.0, right=12.0)


def fused_threshold(fmr: float) -> float:
    """The sum ``T`` of two independent ``-log10`` p-values whose false match rate is ``fmr``.

    P(-log10(U1 U2) >= T) = p (1 + ln(1/p)) with p = 10^-T; solved for p by bisection in log space.
    """
    if not 0.0 < fmr < 1.0:
        raise ValueError(f"fmr={fmr!r} must be strictly between 0 and 1")
    lo, hi = 1e-300, fmr  # p(1 + ln 1/p) >= p, so the root is below fmr
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        if mid * (1.0 - math.log(mid)) > fmr:
            hi = mid
        else:
            lo = mid
    return -math.log10(math.sqrt(lo * hi))


def at_threshold(genuine: np.ndarray, impostor: np.ndarray, threshold: float) -> dict[str, float]:
    return {
        "threshold": round(float(threshold), 4),
        "fmr_at_threshold": float((impostor >= threshold).mean()),
        "tar_at_threshold": float((genuine >= threshold).mean()),
    }


def face_scores(paths: list[Path]) -> np.ndarray:
    """Cosine of every unordered pair of the images (in triu order); -1 for a pair with no face found."""
    from biometrics.face.align import align
    from biometrics.face.detect import Detector
    from biometrics.face.embed import Embedder

    detector, embedder = Detector(), Embedder()
    vectors = np.zeros((len(paths), 128), np.float32)
    found = np.zeros(len(paths), bool)
    for n, path in enumerate(paths):
        frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if frame is None:
            raise BenchError(f"cannot read {path}", "replace it with an image, or remove it from the folder")
        faces = detector.detect(frame)
        if faces:
            vector = np.asarray(embedder.embed(align(frame, faces[0])), np.float32)
            vectors[n, : len(vector)] = vector
            found[n] = True
    iu, ju = np.triu_indices(len(paths), k=1)
    scores = (vectors @ vectors.T)[iu, ju]
    return np.where(found[iu] & found[ju], scores, -1.0)


def _finger_template(job: tuple[str, int]):
    path, dpi = job
    image = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise BenchError(f"cannot read {path}", "replace it with a greyscale image, or remove it from the folder")
    return extract(image, dpi)


def _by_number(paths: list[Path]) -> list[Path]:
    return sorted(paths, key=lambda p: (len(p.stem), p.stem))  # 1, 2, ..., 10


def chimeric_pairs(fingers: Path, faces: Path, per_db: int, impressions: int,
                   workers: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Finger scores, face scores and genuine flags of every within-database pair of chimeric samples."""
    by_person: dict[str, list[Path]] = {}
    for person, path in face_images(faces):
        by_person.setdefault(person, []).append(path)
    people = sorted(by_person, key=lambda name: (len(name), name))  # s1, s2, ..., s40
    finger_all, face_all, same_all, count = [], [], [], 0
    for db, dpi in DATABASES:
        folder = fingers / db
        if not folder.is_dir() or count + per_db > len(people):
            continue
        shots: dict[str, list[Path]] = {}
        for finger, _, path in finger_images(folder):
            shots.setdefault(finger, []).append(path)
        chosen = sorted(shots)[:per_db]
        few = min(len(shots[finger]) for finger in chosen)
        if few < impressions:  # taken silently, the figures would be of fewer samples than asked
            raise BenchError(f"a finger of {folder} has {few} impressions; --impressions {impressions} needs as many",
                             f"give --impressions {few} or fewer")
        samples = [(finger, shot, path) for finger in chosen
                   for shot, path in enumerate(_by_number(shots[finger])[:impressions])]
        paths = []
        for finger, shot, _ in samples:
            images = _by_number(by_person[people[count + chosen.index(finger)]])
            if shot >= len(images):
                raise BenchError(f"{people[count + chosen.index(finger)]} has {len(images)} face images; "
                                 f"--impressions {impressions} needs as many", f"give --impressions {len(images)}")
            paths.append(images[shot])
        _progress(f"{db}: {len(samples)} samples of {len(chosen)} chimeric people")
        jobs = [(str(path), dpi) for _, _, path in samples]
        templates = parallel_map(_finger_template, jobs, workers, label=f"{db} fingers")
        scores, same, _ = finger_pairs(templates, np.array([finger for finger, _, _ in samples]))
        finger_all.append(scores)
        face_all.append(face_scores(paths))
        same_all.append(same)
        count += len(chosen)
    if not finger_all:
        raise BenchError(f"no FVC2002 database (DB1_B ... DB4_B) in {fingers}",
                         "give --fingers the folder holding DB1_B ... DB4_B (fvc2002 of the data sets)")
    return np.concatenate(finger_all), np.concatenate(face_all), np.concatenate(same_all), count


def run(fingers: Path, faces: Path, per_db: int, impressions: int, fmr: float, workers: int) -> dict[str, object]:
    cv2.setNumThreads(1)
    finger, face, same, people = chimeric_pairs(fingers, faces, per_db, impressions, workers)
    finger_lf, face_lf = log_fmr(finger, finger_threshold), log_fmr(face, face_threshold)
    fused = finger_lf + face_lf
    result: dict[str, object] = {"people": people, "genuine": int(same.sum()), "impostor": int((~same).sum()),
                                 "fmr": fmr, "assumption": ASSUMPTION}
    for name, scores, threshold in (
        ("finger", finger, finger_threshold(fmr)),
        ("face", face, face_threshold(fmr)),
        ("fused", fused, fused_threshold(fmr)),
    ):
        figures = error_rates(scores[same], scores[~same])
        figures.update(at_threshold(scores[same], scores[~same], threshold))
        result[name] = {k: round(v, 5) if isinstance(v, float) else v for k, v in figures.items()}
    return result


@bench_main("python -m bench.fusion")
def main(argv: list[str] | None = None) -> int:
    ap = BenchParser(prog="python -m bench.fusion", description=__doc__.splitlines()[0])
    ap.add_argument("--fingers", type=Path, default=Path("../shared/data/fvc2002"), help="folder of DB1_B ... DB4_B")
    ap.add_argument("--faces", type=Path, default=Path("../shared/data/att_faces"), help="folder of sN/*.pgm")
    ap.add_argument("--per-db", type=int, default=10, help="fingers (chimeric people) taken from each database")
    ap.add_argument("--impressions", type=int, default=8, help="samples per chimeric person (at least 2)")
    ap.add_argument("--fmr", type=float, default=0.001, help="target false match rate of the thresholds")
    ap.add_argument("--workers", type=int, default=1, help="processes for fingerprint extraction")
    args = ap.parse_args(argv)
    if args.impressions < 2 or args.per_db < 2:
        ap.error("--impressions and --per-db must be at least 2 (genuine and impostor pairs)")
    at_least(args.workers, 1, "--workers")
    if not 0.0 < args.fmr < 1.0:
        raise BenchError(f"--fmr {args.fmr:g} is not a rate", "give a false match rate between 0 and 1, e.g. 0.001")
    for option, folder in (("--fingers", args.fingers), ("--faces", args.faces)):
        if not folder.is_dir():  # the defaults are relative: ../shared/data beside the checkout, run from its root
            raise BenchError(
                f"{option} {folder} is not a folder",
                f"give {option} the data set's folder (a default is relative to the current folder)",
            )
    print(json.dumps(run(args.fingers, args.faces, args.per_db, args.impressions, args.fmr, args.workers)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
