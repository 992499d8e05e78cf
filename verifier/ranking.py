"""The answer of a 1:N identification, fingers and faces alike: its threshold, and the candidates above it.

One module so that both modalities cut and rank the same way (the same cut, the
same order for equal scores, the same rounding as the answer's ``threshold``).

Why the threshold depends on the search (:func:`identification_threshold`): a
stranger's probe is compared with every enrolled template the device may see, and
each comparison is a chance of a false match. At the 1:1 threshold (a false match
rate of 1e-4), a gallery of 2,000 templates searched with 3 views is 6,000 chances:
about 45 % of strangers would have been named as someone (1 - (1 - 1e-4)^6000).
The identification threshold therefore keeps the false positive identification
rate (FPIR, ISO/IEC 19795-1) at ``identify_fpir`` per identification (or the
modality's own ``finger_identify_fpir`` / ``face_identify_fpir``, when set: the
two score tails differ, faces reaching their highest score first): the
per-comparison rate is that divided by the comparisons made, and never looser than
the 1:1 threshold (identification never names someone verification would refuse).
The price is paid in false negatives: the larger the search, the stricter the
threshold. A kiosk that must identify among many grants it fewer groups, or
verifies a claimed id instead.

Where that price becomes everything: scores are bounded (a finger's
:func:`biometrics.fingerprint.mcc_match.scores` lie in [0, 1], a face's cosine of
two unit embeddings in [-1, 1]), so past some search the threshold is above any
score a probe can reach and the identification could name no one, its own subject
included. With the default ``identify_fpir`` (1e-3) that happens for faces at
about 376,000 comparisons (five faces against some 75,000 embeddings), for
fingers only past 4.0 billion (487 million before the orientation-field
agreement came to read between block centres, 55 million before the
extractor's reliability floor rose: each refit of the fingerprint calibration
lightened its far tail). What the verifier does about it
(:func:`identification_capacity`, :func:`warn_if_unreachable`, :func:`unreachable_problem`):

- A setting that makes it happen for every search, even one probe against one
  template (``identify_fpir`` or ``target_fmr`` too small for the modality's
  calibration), is a configuration error: the verifier refuses to start
  (``SettingsError`` naming the key in force and the value to write). Nothing about it depends on the
  data, so no later event can make it right, and starting would only hide it.
- A gallery that grows past the capacity while the verifier runs is not refused
  at start: 1:1 verification, enrollment and certificates still work, and an
  outage at the next restart (a reboot, weeks after the enrollment that crossed
  the line) would be the worst moment to learn it. The capacity is logged at
  start, and each identification past it is refused (:func:`unreachable_problem`):
  a 422 ``identification-unreachable`` problem that says the search is too large,
  and whose fix is :data:`UNREACHABLE_FIX`, without the counts (a device must not
  learn its groups' gallery size from it); ``identification_unreachable`` (a
  warning with the fix, the comparisons, the templates searched and the largest
  search) is logged beside it for the operator. No matching is done for it.
- Why a refusal and not an empty 200, as it once was: an empty candidate list
  says "nobody enrolled matches this probe", which the verifier cannot know
  here; a kiosk told an enrolled person "nobody recognised", and the installer,
  who alone can fix it, never learned why. Why 422 (Unprocessable Content): the
  request is well formed and allowed, but the search it asks for (its views
  times the templates this device may see) cannot be carried out at the
  configured ``identify_fpir``. Not 409, whose conflict a client resolves and
  resubmits: the same identification fails the same way until the operator
  changes a setting or the device's groups (fewer views is the device's only
  part). Not 503: no retry helps, and the agent would retry it. Not 500:
  nothing failed. The agent raises ``IdentificationUnreachableError`` and shows
  its fix, never "nobody recognised".
- The threshold is never clamped to the highest score: that would name
  strangers more often than ``identify_fpir`` promises, silently, which is the
  very failure the threshold exists to prevent.

What the answer says of the threshold (:func:`reported_threshold`): the
decision is made at the exact threshold, but the answer's ``threshold`` is that
of the search's decade: its views times the largest power of ten at most the
templates searched (1 for 1 to 9, 10 for 10 to 99, ...). Why: the exact one is a
known function of the views and the templates of the device's groups, so a
device that reads it (4 decimals tell 40 templates from 41) learns its groups'
gallery size, and sees each enrollment into them; the 422 above was made not to
say it, and the 200 must not either. Why the decade of the templates and not
the threshold cut to fewer digits: a device chooses its views, and the cut
values of a few view counts would pin the size down between them; the decade is
a function of the gallery alone, so no choice of views tells more than it. Why
its lower end: the reported threshold (rounded down to the 4 decimals of the
scores) is then at most the one applied, so every candidate's score is at or
above it, as a kiosk reading the answer expects. The
exact one is in the verifier's log when an identification is refused.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import structlog

from protocol.problems import problem_type
from verifier.problems import Problem
from verifier.settings import SettingsError

log = structlog.get_logger()

IDENTIFY_TOP_K = 10  # candidates an identification answers at most
MAX_SCORE = 1.0  # the highest score of either modality: a finger's mcc_match score, a face's cosine
# What the refusal of a too small rate says of its key's default: an override's is identify_fpir's rate.
_DEFAULTS = {key: "or leave it out: identify_fpir then applies" for key in ("finger_identify_fpir",
                                                                           "face_identify_fpir")}
UNREACHABLE_FIX = problem_type("identification-unreachable").fix  # one text: the registry's, the log's, the answer's


def identification_threshold(
    threshold_for_fmr: Callable[[float], float], fpir: float, comparisons: int, verify_threshold: float
) -> float:
    """The score a candidate needs so that an identification of ``comparisons`` comparisons (probe views times
    enrolled templates searched) names a stranger at most ``fpir`` of the time; at least ``verify_threshold``."""
    if comparisons <= 0:
        return verify_threshold
    return max(verify_threshold, threshold_for_fmr(fpir / comparisons))


def search_decade(templates: int) -> int:
    """The largest power of ten at most ``templates`` (0 for none): all a device may learn of its gallery's size."""
    return 10 ** (len(str(templates)) - 1) if templates > 0 else 0


def charged_templates(templates: int) -> int:
    """What a search of ``templates`` templates is charged per probe view against the device's matching allowance
    (``device_comparisons_per_min``): one figure for every gallery of a decade, the decade's geometric middle.

    Why not the templates themselves: the allowance's 429 onset then told a device its groups' gallery size
    (an enrollment's: the whole gallery's) to the template, which :func:`reported_threshold` was made not to tell.
    The charge is within a factor of 3.2 of the comparisons made, either way, and tells only the decade.
    """
    decade = search_decade(templates)
    return math.ceil(decade * math.sqrt(10)) if decade else 0


def reported_threshold(
    threshold_for_fmr: Callable[[float], float], fpir: float, *, views: int, templates: int, verify_threshold: float
) -> float:
    """The ``threshold`` an identification's answer gives: the one of ``views`` times the decade of the
    ``templates`` searched (:func:`search_decade`), to 4 decimals as the candidates' scores are; never above the
    threshold applied, and the same for every gallery of one decade (the module docstring says why)."""
    comparisons = views * search_decade(templates)
    return rounded_down(identification_threshold(threshold_for_fmr, fpir, comparisons, verify_threshold))


def rounded_down(threshold: float, decimals: int = 4) -> float:
    """``threshold`` to ``decimals`` places, never above it: rounded to nearest, a decade's threshold of 0.08608
    read 0.0861, above the 0.08608 applied to a gallery of exactly that decade (1,000 templates, one view, at the
    fingerprint calibration of the time)."""
    scale = 10**decimals
    down = math.floor(threshold * scale) / scale
    if down > threshold:  # threshold * scale rounded up to the next whole number in floating point
        down = (math.floor(threshold * scale) - 1) / scale
    return round(down, decimals)


def lowest_reachable_fmr(threshold_for_fmr: Callable[[float], float], *, max_score: float = MAX_SCORE) -> float:
    """The smallest false match rate whose threshold a score can still reach (at most ``max_score``).

    Bisected on a log scale (a threshold only rises as the rate falls); the answer errs on the reachable side.
    """
    lo, hi = -300.0, math.log10(0.5)  # log10 of rates: the threshold at hi is reachable, at lo not (checked next)
    if threshold_for_fmr(10.0**hi) > max_score:
        return 1.0  # not even a rate of one half: nothing is reachable
    if threshold_for_fmr(10.0**lo) <= max_score:
        return 10.0**lo
    for _ in range(100):
        mid = (lo + hi) / 2
        if threshold_for_fmr(10.0**mid) <= max_score:
            hi = mid
        else:
            lo = mid
    return 10.0**hi


def identification_capacity(
    modality: str, threshold_for_fmr: Callable[[float], float], *, fpir: float, verify_threshold: float,
    max_score: float = MAX_SCORE, setting: str = "identify_fpir",
) -> int:
    """The most comparisons (probe views times templates searched) an identification of ``modality`` can make
    at ``fpir`` with a threshold a score can still reach; logged at start (see the module docstring).

    ``setting`` is the key ``fpir`` came from (``identify_fpir``, or the modality's own ``face_identify_fpir`` or
    ``finger_identify_fpir``): the refusal names the one to raise, and the log the one in force.

    Raises SettingsError, at start, when not even one comparison could name anyone: a setting no gallery can
    make right, so the verifier refuses it rather than refuse every identification (``identification-unreachable``).
    """
    if verify_threshold > max_score:
        raise SettingsError(
            f"target_fmr sets the {modality} threshold at {verify_threshold:.4f}, above the highest {modality} "
            f"score ({max_score}): no {modality} could ever be verified or identified",
            fix="raise target_fmr, e.g. target_fmr = 0.0001",
        )
    lowest = lowest_reachable_fmr(threshold_for_fmr, max_score=max_score)
    capacity = math.floor(fpir / lowest) if lowest < 1.0 else 0
    if capacity < 1:
        at_least = _rounded_up(lowest)  # the value named must itself be reachable: never rounded below
        raise SettingsError(
            f"{setting} = {fpir!r} puts the {modality} identification threshold above the highest {modality} "
            f"score ({max_score}) even for one probe against one template: no {modality} could ever be identified",
            fix=f"raise {setting} to at least {at_least:g} ({_DEFAULTS.get(setting, 'the default is 0.001')})",
        )
    log.info("identification_capacity", modality=modality, identify_fpir=fpir, setting=setting,
             largest_search=capacity)
    return capacity


def _rounded_up(rate: float, *, figures: int = 2) -> float:
    """``rate`` to ``figures`` significant figures, never below it: a value an operator can write that is still
    at least ``rate`` (rounding to the nearest could land just below it and name a rate refused again)."""
    step = 10.0 ** (math.floor(math.log10(rate)) - figures + 1)
    value = float(f"{math.ceil(rate / step) * step:.{figures}g}")
    while value < rate:  # the product above rounded down by an ulp
        value = float(f"{value + step:.{figures}g}")
    return value


def warn_if_unreachable(modality: str, threshold: float, comparisons: int, capacity: int, *,
                        max_score: float = MAX_SCORE, **fields: object) -> bool:
    """Log ``identification_unreachable`` (a warning with the fix) when ``threshold`` is above any score: the
    identification could name nobody, whoever the probe is. True when it did: the caller then refuses it
    (:func:`unreachable_problem`) rather than search."""
    if threshold <= max_score:
        return False
    log.warning(
        "identification_unreachable", modality=modality, comparisons=comparisons, largest_search=capacity,
        threshold=round(threshold, 4), max_score=max_score, fix=UNREACHABLE_FIX, **fields,
    )
    return True


def unreachable_problem(modality: str, *, views: int) -> Problem:
    """The refusal of an identification past the capacity (why a refusal, why 422: the module docstring).

    It says that the search is too large and, in :data:`UNREACHABLE_FIX`, what to do (raise identify_fpir, narrow
    the device's groups, fewer views, 1:1); of the counts it names only the device's own ``views``. Why: it said
    the comparisons the search needed and the templates this device may search, exactly, in its detail and as
    extension members, so any device could read the size of its groups' gallery by asking for a search too large.
    The counts are the operator's: ``identification_unreachable`` and the audited refusal log them.
    """
    return Problem(
        "identification-unreachable",
        f"this {modality} identification ({views} view{'s' * (views != 1)}) would search more templates than the "
        f"verifier's identify_fpir (or {modality}_identify_fpir) allows: its threshold would be above any "
        f"{modality} score, so nobody could be named, an enrolled person included (the verifier's log has the counts)",
        UNREACHABLE_FIX,
    )


def searched_groups(allowed: frozenset[str] | None) -> str:
    """The groups an identification searched, as its audit lines say them: sorted names, or ``*`` for all."""
    return ",".join(sorted(allowed)) if allowed is not None else "*"


def ranked(best: dict[str, float], threshold: float, top_k: int = IDENTIFY_TOP_K) -> list[dict[str, object]]:
    """``best`` (each subject's best score) as the answer's candidates: at or above ``threshold``, best first
    (equal scores by subject id, so an answer does not depend on the gallery's order), at most ``top_k``."""
    above = sorted(
        ((score, subject) for subject, score in best.items() if score >= threshold), key=lambda c: (-c[0], c[1])
    )
    return [{"subject": subject, "score": round(score, 4)} for score, subject in above[:top_k]]
