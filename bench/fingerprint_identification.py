"""Open-set 1:N identification on a benchmark's prints: what the verifier's identification threshold delivers.

The all-pairs rates say how one comparison behaves; an identification makes a
comparison with every enrolled template, and the verifier raises its threshold
with the gallery so that a stranger is named at most ``identify_fpir`` of the
time (verifier.ranking). This experiment measures the price: how often a person
who is enrolled is not named.

Protocol (:func:`folds`): the fingers are dealt into ``FOLDS`` folds in rotation
(the n-th finger, in sorted label order, into fold n mod FOLDS; fewer folds when
there are fewer fingers). In fold k, the gallery holds the first ``enrolled``
impressions (in the data's order) of every finger outside fold k, one subject per
finger: ENROLLED, 2, like an enrollment of several captures, or 1 when no finger
has more than two impressions. Non-mated searches: every impression of the fingers
of fold k (strangers to that gallery). Mated searches: the impressions not enrolled
of the fingers of fold k + 1 (enrolled in that gallery). Over the folds every
finger is a stranger once and every impression not enrolled is searched once as
a mate. Each search is one view through GalleryIndex.search with the verifier's
``IDENTIFY_TOP_K`` and its candidates are cut by verifier.ranking.ranked, at the
threshold the verifier would use for that gallery and one view
(identification_threshold, ``identify_fpir`` 1e-3) and, for comparison, at the
1:1 threshold (target FMR 1e-4, the verifier's default).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from biometrics.fingerprint import GalleryIndex, threshold_for_fmr
from biometrics.fingerprint.matcher import Cylinders, cylinders_of
from biometrics.fingerprint.types import FingerprintTemplate
from verifier.ranking import IDENTIFY_TOP_K, identification_threshold, ranked

FOLDS = 5  # each fold's gallery holds 4/5 of the fingers
ENROLLED = 2  # impressions per finger in the gallery (the verifier's enrollment takes 3 captures of a finger)
IDENTIFY_FPIR = 1e-3  # the verifier's default identify_fpir
VERIFY_FMR = 1e-4  # the verifier's default target_fmr
VIEWS = 1  # finger views per identification (a kiosk may send more: the threshold then rises again)


@dataclass(frozen=True)
class Fold:
    """Indices into the benchmark's templates: one gallery and the searches made against it."""

    gallery: np.ndarray  # enrolled templates (fingers outside this fold)
    mated: np.ndarray  # probes whose finger is enrolled in the gallery, not themselves enrolled
    strangers: np.ndarray  # probes whose finger is not in the gallery


def impression_rank(fingers: np.ndarray) -> np.ndarray:
    """Each image's position among its own finger's images (0 for the first), in the order given."""
    order = np.argsort(fingers, kind="stable")
    ordered = fingers[order]
    starts = np.r_[0, np.flatnonzero(ordered[1:] != ordered[:-1]) + 1]
    run_start = np.repeat(starts, np.diff(np.r_[starts, len(fingers)]))
    rank = np.empty(len(fingers), np.int64)
    rank[order] = np.arange(len(fingers)) - run_start
    return rank


def enrolled_impressions(fingers: np.ndarray) -> int:
    """ENROLLED, or fewer so that a finger with the most impressions keeps one to search with."""
    most = int(np.unique(fingers, return_counts=True)[1].max())
    return max(1, min(ENROLLED, most - 1))


def folds(fingers: np.ndarray, count: int = FOLDS, enrolled: int = ENROLLED) -> list[Fold]:
    """The rotation of the module docstring: in fold k, fold k's fingers are strangers, fold k + 1's are searched."""
    finger = np.unique(fingers, return_inverse=True)[1]
    k = min(count, int(finger.max()) + 1)
    fold_of = finger % k
    is_enrolled = impression_rank(fingers) < enrolled
    return [
        Fold(
            gallery=np.flatnonzero((fold_of != f) & is_enrolled),
            mated=np.flatnonzero((fold_of == (f + 1) % k) & ~is_enrolled),
            strangers=np.flatnonzero(fold_of == f),
        )
        for f in range(k)
    ]


def search_fold(
    cylinders: list[Cylinders], fingers: np.ndarray, fold: Fold, probes: np.ndarray, workers: int
) -> list[dict[str, float]]:
    """Each probe's best score per subject, as the verifier's identify collects them from one view."""
    index = GalleryIndex(workers=workers)
    try:
        for n in fold.gallery:
            index.add(str(fingers[n]), cylinders[n])
        return [
            {str(s): float(score) for s, score in index.search(cylinders[p], top_k=IDENTIFY_TOP_K)} for p in probes
        ]
    finally:
        index.close()


def named(best: list[dict[str, float]], threshold: float) -> list[set[str]]:
    """The subjects each search would answer at ``threshold`` (verifier.ranking.ranked: the same cut and top_k)."""
    return [{str(c["subject"]) for c in ranked(b, threshold)} for b in best]


def percent(flags: np.ndarray) -> float:
    """Percentage of the searches flagged (0 when there were none)."""
    return round(100.0 * float(flags.mean()), 3) if len(flags) else 0.0


@dataclass(frozen=True)
class Outcome:
    """One fold's searches, each judged at the identification threshold (column 0) and at the 1:1 one (column 1)."""

    missed: np.ndarray  # (mated searches, 2): the mate is not among the candidates
    answered: np.ndarray  # (non-mated searches, 2): a stranger got a candidate
    not_returned: int  # mated searches whose mate the search did not return at any score


def run_fold(
    cylinders: list[Cylinders], fingers: np.ndarray, fold: Fold, thresholds: tuple[float, float], workers: int
) -> Outcome:
    """The fold's mated and non-mated searches against its gallery, cut at both thresholds."""
    found = search_fold(cylinders, fingers, fold, np.r_[fold.mated, fold.strangers], workers)
    mated, strangers = found[: len(fold.mated)], found[len(fold.mated) :]
    mates = fingers[fold.mated]
    missed = [[m not in names for m, names in zip(mates, named(mated, t), strict=True)] for t in thresholds]
    answered = [[bool(names) for names in named(strangers, t)] for t in thresholds]
    return Outcome(
        np.array(missed, bool).reshape(2, -1).T,
        np.array(answered, bool).reshape(2, -1).T,
        sum(m not in best for m, best in zip(mates, mated, strict=True)),
    )


def identification(templates: list[FingerprintTemplate], fingers: np.ndarray, workers: int = 1) -> dict[str, object]:
    """FNIR and FPIR of open-set identification at the verifier's identification threshold, per the protocol above.

    ``fnir_at_fpir_1e-3``: share (%) of mated searches whose mate is not among the
    candidates at the identification threshold; ``fpir_measured``: share (%) of
    non-mated searches answering any candidate there; the same two at the 1:1
    threshold. ``mates_not_returned`` counts the mated searches whose mate the
    search did not return at all (pre-filter or top_k), whatever the threshold.
    ``threshold`` and ``gallery_size`` are per fold.
    """
    from bench.fingerprint import binomial_limit_95

    fingers = np.asarray(fingers).astype(str)
    enrolled = enrolled_impressions(fingers)
    verify = threshold_for_fmr(VERIFY_FMR)
    cylinders = [cylinders_of(t) for t in templates]
    sizes, thresholds, outcomes = [], [], []
    for fold in folds(fingers, FOLDS, enrolled):
        threshold = identification_threshold(threshold_for_fmr, IDENTIFY_FPIR, VIEWS * len(fold.gallery), verify)
        sizes.append(len(fold.gallery))
        thresholds.append(threshold)
        outcomes.append(run_fold(cylinders, fingers, fold, (threshold, verify), workers))
    missed = np.concatenate([o.missed for o in outcomes])
    answered = np.concatenate([o.answered for o in outcomes])
    return {
        "folds": len(sizes),
        "enrolled_impressions": enrolled,
        "gallery_size": sizes,  # templates in each fold's gallery (one subject per finger)
        "views": VIEWS,
        "top_k": IDENTIFY_TOP_K,
        "identify_fpir": IDENTIFY_FPIR,
        "threshold": [round(t, 5) for t in thresholds],  # each fold's identification threshold
        "verify_threshold": round(verify, 5),
        "mated_searches": len(missed),
        "non_mated_searches": len(answered),
        "fnir_at_fpir_1e-3": percent(missed[:, 0]),
        "fpir_measured": percent(answered[:, 0]),
        "false_positives": int(answered[:, 0].sum()),
        "false_positive_limit_95": binomial_limit_95(len(answered), IDENTIFY_FPIR),
        "fnir_at_verify_threshold": percent(missed[:, 1]),
        "fpir_at_verify_threshold": percent(answered[:, 1]),
        "mates_not_returned": sum(o.not_returned for o in outcomes),
    }
