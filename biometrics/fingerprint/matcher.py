"""Public matching API: 1:1 scores and a vectorised 1:N gallery.

Scores are in [0, 1] (higher = more similar): MCC LSS-R evidence, normalised for
its strength, combined with the fraction of the common region's minutiae paired
under one global alignment (see :mod:`biometrics.fingerprint.mcc_match`);
see :mod:`biometrics.fingerprint.calibration` for choosing a threshold from a
target false match rate.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Hashable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np

from biometrics.fingerprint import mcc_match, prefilter
from biometrics.fingerprint.cylinders import Cylinders, build
from biometrics.fingerprint.errors import TemplateError
from biometrics.fingerprint.types import FingerprintTemplate, Minutiae

T = TypeVar("T")
REFERENCE_DPI = 500
CHUNK = 128  # templates per block: intermediate arrays stay in cache, BLAS stays efficient
GROUP = 64  # pre-filter survivors scored per call


def cylinders_of(item: FingerprintTemplate | Minutiae | Cylinders) -> Cylinders:
    """MCC cylinders of a template (coordinates brought to 500 dpi) or of bare minutiae (assumed 500 dpi)."""
    if isinstance(item, Cylinders):
        return item
    if isinstance(item, FingerprintTemplate):
        if item.resolution_dpi <= 0:
            raise TemplateError(f"template resolution_dpi={item.resolution_dpi}: set the capture's resolution")
        return build(item.minutiae, REFERENCE_DPI / float(item.resolution_dpi))
    if isinstance(item, Minutiae):
        return build(item, 1.0)
    raise TemplateError(f"cannot match a {type(item).__name__}: pass a FingerprintTemplate or Minutiae")


def match(a: FingerprintTemplate | Minutiae, b: FingerprintTemplate | Minutiae) -> float:
    """Similarity of two fingerprints in [0, 1]; symmetric up to rounding."""
    ca, cb = cylinders_of(a), cylinders_of(b)
    if len(ca) == 0 or len(cb) == 0:
        return 0.0
    return float(mcc_match.scores(ca, mcc_match.pack([cb]))[0])


class GalleryIndex:
    """Enrolled templates, searched all at once with matrix products.

    Several templates may share a subject id (several fingers or impressions);
    a search reports each subject once, with its best score.

    Cost: cylinders and a pre-filter sketch are built once per add (about 5 ms);
    the first search after adds or removes repacks the gallery (with 32 of its own
    templates pre-scored against all of it, to centre the pre-scores: about 0.3 s
    per 2,000 templates). :meth:`scores`
    gives every template the full score (50 to 120 us per template per core,
    growing with the product of the cylinder counts). :meth:`search` ranks the
    gallery with the pre-filter (about 4 us per template) and fully scores only
    its best max(64, 3 %) (see :mod:`biometrics.fingerprint.prefilter`): see
    ``bench.fingerprint``'s ``comparisons_per_s_per_core`` for measured figures.
    For throughput, run with single-threaded BLAS (OPENBLAS_NUM_THREADS=1) and
    ``workers`` = the number of cores: blocks are then scored in parallel threads.
    Memory: about 180 KB per template of 35 cylinders (the cylinders as built, and
    stacked for scoring with their validity and energy per cell: 642 float32 per
    cylinder; plus the sketch), at most 250 KB (48 cylinders). Not
    thread-safe: guard add/remove/search with one lock if threads share it.
    """

    def __init__(self, workers: int | None = None) -> None:
        # Threads only pay off when BLAS itself is single-threaded (OPENBLAS_NUM_THREADS=1);
        # otherwise the BLAS threads of parallel blocks compete for the same cores.
        self._workers = workers if workers is not None else 1
        self._executor: ThreadPoolExecutor | None = None
        self._ids: list[Hashable] = []
        self._cylinders: list[Cylinders] = []
        self._sketches: list[np.ndarray] = []
        self._packed = mcc_match.stack([])
        self._sketch_blocks: list[np.ndarray] = []
        self._projection: np.ndarray | None = None
        self._centres = np.zeros(0, np.float32)
        self._dirty = True

    def __len__(self) -> int:
        return len(self._ids)

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self._workers, thread_name_prefix="gallery")
        return self._executor

    def close(self) -> None:
        """Stop the worker threads (they are also stopped at interpreter exit)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def __contains__(self, subject_id: object) -> bool:
        return subject_id in self._ids

    def subject_ids(self) -> set[Hashable]:
        """Every enrolled subject once."""
        return set(self._ids)

    def add(self, subject_id: Hashable, template: FingerprintTemplate | Minutiae | Cylinders) -> None:
        self._ids.append(subject_id)
        c = cylinders_of(template)
        self._cylinders.append(c)
        self._sketches.append(prefilter.sketch(c, prefilter.GALLERY_ROWS))  # the probe side keeps more rows
        self._dirty = True

    def remove(self, subject_id: Hashable) -> int:
        """Remove every template of ``subject_id``; return how many were removed."""
        keep = [i for i, s in enumerate(self._ids) if s != subject_id]
        removed = len(self._ids) - len(keep)
        self._ids = [self._ids[i] for i in keep]
        self._cylinders = [self._cylinders[i] for i in keep]
        self._sketches = [self._sketches[i] for i in keep]
        self._dirty = True
        return removed

    def _pack(self) -> mcc_match.Stack:
        if self._dirty:
            self._packed = mcc_match.stack(self._cylinders)
            n = len(self._sketches)
            self._projection = prefilter.projection(self._sketches)
            self._sketch_blocks = [
                prefilter.pack(self._sketches[i : i + prefilter.BLOCK_TEMPLATES], self._projection)
                for i in range(0, n, prefilter.BLOCK_TEMPLATES)
            ]
            sample = prefilter.hub_sample(n)
            raw = np.zeros((len(sample), n), np.float32)
            for row, i in enumerate(sample):
                raw[row] = self._raw_prescores(self._probe_sketch(self._cylinders[int(i)]))
            self._centres = prefilter.centres(raw, sample)
            self._dirty = False
        return self._packed

    def scores(self, probe: FingerprintTemplate | Minutiae | Cylinders) -> np.ndarray:
        """Score of the probe against every enrolled template, in insertion order."""
        out = np.zeros(len(self._ids), np.float64)
        cp = cylinders_of(probe)
        if len(cp) == 0 or not self._ids:
            return out
        packed = self._pack()
        starts = list(range(0, len(self._ids), CHUNK))

        def run(lo: int) -> None:
            hi = min(lo + CHUNK, len(self._ids))
            out[lo:hi] = mcc_match.scores(cp, mcc_match.gather(packed, np.arange(lo, hi)))

        self._map(starts, run)
        return out

    def _map(self, work: list[T], fn: Callable[[T], None]) -> None:
        """Apply ``fn`` to each work item, on the worker threads when there are several."""
        if len(work) > 1 and self._workers > 1:
            # numpy and BLAS release the GIL: blocks run in parallel on the cores.
            list(self._pool().map(fn, work))
        else:
            for item in work:
                fn(item)

    def _probe_sketch(self, cp: Cylinders) -> np.ndarray:
        sp = prefilter.sketch(cp, prefilter.PROBE_ROWS)
        return sp if self._projection is None else sp @ self._projection

    def _raw_prescores(self, sp: np.ndarray) -> np.ndarray:
        """Pre-scores of a (projected) probe sketch against every template, before centring."""
        out = np.zeros(len(self._ids), np.float32)
        step = prefilter.BLOCK_TEMPLATES

        def run(b: int) -> None:
            block = self._sketch_blocks[b]
            out[b * step : b * step + len(block) // prefilter.GALLERY_ROWS] = prefilter.prescores(sp, block)

        self._map(list(range(len(self._sketch_blocks))), run)
        return out

    def prescores(self, probe: FingerprintTemplate | Minutiae | Cylinders) -> np.ndarray:
        """Cheap pre-scores (see :mod:`biometrics.fingerprint.prefilter`) of every template, insertion order.

        Each template's typical impostor pre-score (prefilter.centres, estimated when
        the gallery is packed) is subtracted: the ranking compares excesses.
        """
        cp = cylinders_of(probe)
        if len(cp) == 0 or not self._ids:
            return np.zeros(len(self._ids), np.float32)
        self._pack()
        out = self._raw_prescores(self._probe_sketch(cp))
        out -= self._centres
        return out

    def candidate_scores(
        self, probe: FingerprintTemplate | Minutiae | Cylinders, among: np.ndarray | None = None, keep_at_least: int = 0
    ) -> tuple[np.ndarray, np.ndarray]:
        """(indices, full scores) of the templates the pre-filter keeps, among ``among`` (indices) if given.

        Galleries of up to prefilter.MIN_CANDIDATES templates (or subsets) are scored in full.
        """
        cp = cylinders_of(probe)
        pool = np.arange(len(self._ids)) if among is None else np.asarray(among, np.int64)
        if len(cp) == 0 or len(pool) == 0:
            return pool, np.zeros(len(pool), np.float64)
        packed = self._pack()
        if len(pool) > max(prefilter.MIN_CANDIDATES, keep_at_least):
            pre = self.prescores(cp)[pool]
            pool = pool[prefilter.candidates(pre, keep_at_least)]
        out = np.zeros(len(pool), np.float64)
        # A few groups (at least one per worker): few calls, arrays that stay in cache.
        groups = max(self._workers, int(np.ceil(len(pool) / GROUP)))
        work = [sel for sel in np.array_split(np.arange(len(pool)), groups) if len(sel)]

        def run(sel: np.ndarray) -> None:
            out[sel] = mcc_match.scores(cp, mcc_match.gather(packed, pool[sel]))

        self._map(work, run)
        return pool, out

    def search(
        self,
        probe: FingerprintTemplate | Minutiae | Cylinders,
        top_k: int = 5,
        among: Container[Hashable] | None = None,
    ) -> list[tuple[Hashable, float]]:
        """The ``top_k`` best subjects as (subject_id, score), best first; only those ``among`` if given.

        Scores are the full ones, computed for the templates the pre-filter keeps
        (all of them in galleries of up to prefilter.MIN_CANDIDATES).
        """
        if top_k <= 0 or not self._ids:
            return []
        allowed = None
        if among is not None:
            allowed = np.array([i for i, sid in enumerate(self._ids) if sid in among], np.int64)
        idx, s = self.candidate_scores(probe, allowed, keep_at_least=4 * top_k)
        best: dict[Hashable, float] = {}
        for o in np.argsort(-s, kind="stable"):  # stops after top_k distinct subjects
            i = idx[int(o)]
            sid = self._ids[int(i)]
            if sid not in best:
                best[sid] = float(s[o])
                if len(best) >= top_k:
                    break
        return list(best.items())
