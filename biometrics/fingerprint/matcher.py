"""Public matching API: 1:1 scores and a vectorised 1:N gallery.

Scores are in [0, 1] (higher = more similar): MCC LSS-R evidence, normalised for
its strength, combined with the fraction of the common region's minutiae paired
under one global alignment, and weighed by how well the two orientation fields
agree under that alignment (see :mod:`biometrics.fingerprint.mcc_match`);
see :mod:`biometrics.fingerprint.calibration` for choosing a threshold from a
target false match rate.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Container, Hashable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import TypeVar

import numpy as np

from biometrics.fingerprint import mcc_match, orientation_field, prefilter
from biometrics.fingerprint.cylinders import MAX_CYLINDERS, Cylinders, build
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
        built = build(item.minutiae, REFERENCE_DPI / float(item.resolution_dpi))
        if item.orientation is None:
            return built
        if item.orientation.block != orientation_field.BLOCK:
            raise TemplateError(
                f"orientation field of {item.orientation.block}-pixel blocks: the matcher compares "
                f"{orientation_field.BLOCK}-pixel blocks; extract the template with this release"
            )
        return replace(built, field=orientation_field.vectors(item.orientation))
    if isinstance(item, Minutiae):
        return build(item, 1.0)
    raise TemplateError(f"cannot match a {type(item).__name__}: pass a FingerprintTemplate or Minutiae")


def match(a: FingerprintTemplate | Minutiae, b: FingerprintTemplate | Minutiae) -> float:
    """Similarity of two fingerprints in [0, 1], ``a`` as the probe.

    Symmetric to within rounding on all but a handful of pairs: of the 51,040
    pairs of the four FVC2002 B folders pooled, 6 differ by more than 1e-6 between
    the two directions, by at most 0.014. Benchmarks take the mean of both.
    """
    ca, cb = cylinders_of(a), cylinders_of(b)
    if len(ca) == 0 or len(cb) == 0:
        return 0.0
    return float(mcc_match.scores(ca, mcc_match.pack([cb]))[0])


# Per-template arrays of a growing stack, one slot per cylinder rank (zero-padded).
_PER_SLOT = (
    ("_pos", np.complex64),
    ("_unit", np.complex64),
    ("_hull_normals", np.complex64),
    ("_hull_offsets", np.float32),
    ("_reliability", np.float32),
)
# Per-template scalars of a growing stack: cylinder rows, then the orientation field's cells and blocks.
_PER_TEMPLATE = (
    ("_count", np.int64),
    ("_start", np.int64),
    ("_field_start", np.int64),
    ("_field_rows", np.int64),
    ("_field_cols", np.int64),
    ("_block_start", np.int64),
    ("_block_count", np.int64),
    ("_has_field", np.bool_),
)


class _Segments:
    """Rows of variable-length segments (one per template) that grow in place: the stack's ragged storages.

    Storage grows by half when full (an append copies only its own rows, and the
    occasional growth copies the storage once); a removal leaves its rows
    unreferenced until they make up a quarter of the storage, when the live
    segments are compacted in one copy. The first ``reserved`` rows are kept as
    they are (the field cells' zero block).
    """

    def __init__(self, tail: tuple[int, ...], dtype: type, reserved: int = 0) -> None:
        self.data = np.zeros((reserved, *tail), dtype)
        self.used = reserved  # rows written (reserved, live and garbage)
        self.garbage = 0
        self._reserved = reserved

    def append(self, rows: np.ndarray) -> int:
        """Write ``rows`` after the used ones; return where they start."""
        at, r = self.used, len(rows)
        if at + r > len(self.data):
            grown = np.zeros((max(len(self.data) * 3 // 2, at + r, 1024), *self.data.shape[1:]), self.data.dtype)
            grown[:at] = self.data[:at]
            self.data = grown
        self.data[at : at + r] = rows
        self.used += r
        return at

    def compact(self, start: np.ndarray, count: np.ndarray) -> np.ndarray | None:
        """After removals (``garbage`` counted by the caller): the live segments' new starts, or None if kept.

        Compacts (one copy) when the unreferenced rows exceed a quarter of the storage.
        """
        if self.garbage <= self.used // 4:
            return None
        first = self._reserved + np.cumsum(count) - count
        rows = np.repeat(start - first, count) + np.arange(self._reserved, self._reserved + int(count.sum()))
        self.data = self.data[np.concatenate([np.arange(self._reserved), rows])]
        self.used, self.garbage = len(self.data), 0
        return first.astype(np.int64)


class _GrowingStack:
    """A :class:`mcc_match.Stack` that grows in place: adds append rows, removals leave garbage rows.

    Three ragged storages (:class:`_Segments`), each template's own share only:
    the cylinder rows, the orientation fields' grid cells and their foreground
    blocks (:class:`orientation_field.Fields`). A removal drops the template from
    the per-template arrays and leaves its rows unreferenced until they make up a
    quarter of a storage, when that storage's live rows are compacted in one copy.
    """

    def __init__(self) -> None:
        self._rows = _Segments((mcc_match.WIDTH,), np.float32)
        self._cells = _Segments((), np.complex64, reserved=1)  # cells[0] is the 0 block (orientation_field.Fields)
        self._blocks = _Segments((2,), np.complex64)
        self._pos = np.zeros((0, MAX_CYLINDERS), np.complex64)
        self._unit = np.zeros((0, MAX_CYLINDERS), np.complex64)
        self._hull_normals = np.zeros((0, MAX_CYLINDERS), np.complex64)  # zero-padded like positions
        self._hull_offsets = np.zeros((0, MAX_CYLINDERS), np.float32)
        self._reliability = np.zeros((0, MAX_CYLINDERS), np.float32)
        for name, dtype in _PER_TEMPLATE:
            setattr(self, name, np.zeros(0, dtype))
        self._t = 0

    def append(self, cylinders: list[Cylinders]) -> None:
        if not cylinders:
            return
        s = mcc_match.stack(cylinders)
        f = s.fields
        t, k = s.templates, s.pos.shape[1]
        if self._t + t > len(self._count) or k > self._pos.shape[1]:
            cap = max(2 * len(self._count), self._t + t, 64)
            width = max(self._pos.shape[1], k)
            for name, dtype in _PER_SLOT:
                grid = np.zeros((cap, width), dtype)
                old = getattr(self, name)
                grid[: self._t, : old.shape[1]] = old[: self._t]
                setattr(self, name, grid)
            for name, dtype in _PER_TEMPLATE:
                vec = np.zeros(cap, dtype)
                vec[: self._t] = getattr(self, name)[: self._t]
                setattr(self, name, vec)
        sl = slice(self._t, self._t + t)
        for name, _ in _PER_SLOT:  # slots may hold removed templates' values
            getattr(self, name)[sl] = 0
        self._pos[sl, :k], self._unit[sl, :k] = s.pos, s.unit
        self._hull_normals[sl, :k], self._hull_offsets[sl, :k] = s.hull_normals, s.hull_offsets
        self._reliability[sl, :k] = s.reliability
        self._count[sl], self._start[sl] = s.count, s.start + self._rows.append(s.rows)
        self._field_start[sl] = f.start - 1 + self._cells.append(f.cells[1:])  # the stack's own cells[0] is not
        self._field_rows[sl], self._field_cols[sl], self._has_field[sl] = f.rows, f.cols, f.has
        self._block_start[sl], self._block_count[sl] = f.block_start + self._blocks.append(f.blocks), f.block_count
        self._t += t

    def remove(self, keep: np.ndarray) -> None:
        """Keep the templates where ``keep`` is true, in order."""
        idx = np.nonzero(keep)[0]
        gone = ~keep
        self._rows.garbage += int(self._count[: self._t][gone].sum())
        self._cells.garbage += int((self._field_rows[: self._t] * self._field_cols[: self._t])[gone].sum())
        self._blocks.garbage += int(self._block_count[: self._t][gone].sum())
        for name in [n for n, _ in _PER_SLOT] + [n for n, _ in _PER_TEMPLATE]:
            arr = getattr(self, name)
            arr[: len(idx)] = arr[idx]
        self._t = t = len(idx)
        for storage, start, count in (
            (self._rows, self._start, self._count[:t]),
            (self._cells, self._field_start, self._field_rows[:t] * self._field_cols[:t]),
            (self._blocks, self._block_start, self._block_count[:t]),
        ):
            moved = storage.compact(start[:t], count)
            if moved is not None:
                start[:t] = moved

    def view(self) -> mcc_match.Stack:
        t = self._t
        fields = orientation_field.Fields(
            self._cells.data[: self._cells.used],
            self._field_start[:t],
            self._field_rows[:t],
            self._field_cols[:t],
            self._blocks.data[: self._blocks.used],
            self._block_start[:t],
            self._block_count[:t],
            self._has_field[:t],
        )
        return mcc_match.Stack(
            self._rows.data[: self._rows.used],
            self._pos[:t],
            self._unit[:t],
            self._count[:t],
            self._start[:t],
            self._hull_normals[:t],
            self._hull_offsets[:t],
            self._reliability[:t],
            fields,
        )


_scans = 0  # pre-filter scans running now, in any gallery of this process
_scans_lock = threading.Lock()


@contextlib.contextmanager
def _scan_slot() -> Iterator[int]:
    """Count this scan among the running ones; yields how many others ran when it started.

    Two searches scanning at once share the memory bandwidth that block_best's
    read-ahead relies on: measured on the 2-core VM, two threads searching one
    gallery ran about 7 % slower with it than without (and the blocks of one
    search spread over two threads 4 to 15 %).
    """
    global _scans
    with _scans_lock:
        others = _scans
        _scans += 1
    try:
        yield others
    finally:
        with _scans_lock:
            _scans -= 1


class GalleryIndex:
    """Enrolled templates, searched all at once with matrix products.

    Several templates may share a subject id (several fingers or impressions);
    a search reports each subject once, with its best score.

    Cost: cylinders and a pre-filter sketch are built once per add (about 5 ms).
    The gallery is kept packed incrementally (see
    :class:`biometrics.fingerprint.prefilter.SketchIndex`): the first search after
    an add lays out only the new templates (their rows appended to the stack,
    their sketches projected, their hub centres estimated against the stored
    sample probes: about 1.5 ms each in a gallery of 2,000, against 1.8 s CPU to
    pack those 2,000 from scratch), and a removal compacts without refitting
    (about 30 ms). The pre-filter's principal subspace and every template's
    centre are refitted only when the gallery has changed size by a quarter
    since the last fit (with 64 of its own templates pre-scored against all of
    it: about 0.6 s CPU per 2,000 templates), so an enrollment's duplicate search
    costs about one search (``bench.fingerprint``'s ``add_search_ms``).
    :meth:`scores` gives every template the full score (50 to 120 us per
    template per core, growing with the product of the cylinder counts).
    :meth:`search` ranks the gallery with the pre-filter (about 4.5 us per
    template) and fully scores only its best max(64, 3 %) (see
    :mod:`biometrics.fingerprint.prefilter`): see ``bench.fingerprint``'s
    ``comparisons_per_s_per_core`` for measured figures. For throughput, run with
    single-threaded BLAS (OPENBLAS_NUM_THREADS=1) and ``workers`` = the number of
    cores: blocks are then scored in parallel threads. Memory: about 148 KB per
    template of 35 cylinders (stacked for scoring with their validity and energy
    per cell, 642 float32 per cylinder: 90 KB; the pre-filter's sketch and its
    projection, in slabs 3 % larger than the templates they hold: 58 KB), at most
    181 KB (48 cylinders), plus the orientation field
    at its own size (8 bytes a block of its grid and 16 more per foreground
    block: 6 to 9 KB for FVC2002 prints; 96 KB for the largest, 64 x 64 blocks,
    which no other template pays for) and the minutiae's reliabilities, plus up
    to half of each storage again as growth room and removed rows not yet compacted, and each search
    thread's pass buffer (mcc_match.local_similarity: 1 to 2 MB for a probe of
    48 cylinders, at most GROUP templates' rows, 8 MB, for small probes). Not thread-safe:
    guard add/remove/search with one lock if threads share it.
    """

    def __init__(self, workers: int | None = None) -> None:
        # Threads only pay off when BLAS itself is single-threaded (OPENBLAS_NUM_THREADS=1);
        # otherwise the BLAS threads of parallel blocks compete for the same cores.
        self._workers = workers if workers is not None else 1
        self._executor: ThreadPoolExecutor | None = None
        self._ids: list[Hashable] = []
        self._stack = _GrowingStack()
        self._pending: list[Cylinders] = []  # added since the last search: not yet stacked
        self._sketches = prefilter.SketchIndex()
        self._local = threading.local()  # each worker thread's pass buffer (mcc_match.local_similarity)

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
        c = cylinders_of(template)
        self._ids.append(subject_id)
        self._pending.append(c)
        self._sketches.add(prefilter.sketch(c))

    def remove(self, subject_id: Hashable) -> int:
        """Remove every template of ``subject_id``; return how many were removed."""
        keep = np.array([s != subject_id for s in self._ids], bool)
        removed = int((~keep).sum())
        if removed:
            self._flush()
            self._ids = [sid for sid, k in zip(self._ids, keep, strict=True) if k]
            self._stack.remove(keep)
            self._sketches.remove(keep)
        return removed

    def _flush(self) -> None:
        if self._pending:
            self._stack.append(self._pending)
            self._pending = []

    def _pack(self) -> mcc_match.Stack:
        """The stack with every template, and the pre-filter brought up to date (incrementally)."""
        self._flush()
        self._sketches.sync(self._best_rows)
        return self._stack.view()

    def scores(self, probe: FingerprintTemplate | Minutiae | Cylinders) -> np.ndarray:
        """Score of the probe against every enrolled template, in insertion order."""
        out = np.zeros(len(self._ids), np.float64)
        cp = cylinders_of(probe)
        if len(cp) == 0 or not self._ids:
            return out
        self._flush()  # the full score needs the stack only, not the pre-filter's fit
        packed = self._stack.view()
        starts = list(range(0, len(self._ids), CHUNK))

        def run(lo: int) -> None:
            hi = min(lo + CHUNK, len(self._ids))
            out[lo:hi] = mcc_match.scores(cp, mcc_match.gather(packed, np.arange(lo, hi)))

        self._map(starts, run)
        return out

    def _score_among(self, cp: Cylinders, packed: mcc_match.Stack, templates: np.ndarray) -> np.ndarray:
        """Full scores of the given templates, their rows read from the stack pass by pass (no gathered copy).

        A search's candidates are megabytes of rows: copied out into a buffer and read
        back by the products, they were read twice from memory and written once
        (mcc_match.local_similarity copies a pass at a time instead, while it is used);
        this thread's pass buffer is reused (a fresh array is fresh pages to fault in).
        """
        chosen = mcc_match.gather(packed, templates, copy=False)
        scratch = mcc_match.scratch_for(chosen, len(cp), getattr(self._local, "scratch", None))
        self._local.scratch = scratch
        return mcc_match.scores(cp, chosen, scratch)

    def _map(self, work: list[T], fn: Callable[[T], None]) -> None:
        """Apply ``fn`` to each work item, on the worker threads when there are several."""
        if len(work) > 1 and self._workers > 1:
            # numpy and BLAS release the GIL: blocks run in parallel on the cores.
            list(self._pool().map(fn, work))
        else:
            for item in work:
                fn(item)

    def _probe_sketch(self, cp: Cylinders) -> np.ndarray:
        return self._sketches.probe(prefilter.sketch(cp, prefilter.PROBE_ROWS))  # the probe side's rows only

    def _best_rows(self, sp: np.ndarray) -> np.ndarray:
        """Each row of a (projected) probe sketch's best match in every packed template, (n, T): slab_best."""
        blocks = self._sketches.slabs()
        out = np.zeros((len(sp), sum(t for _, t in blocks)), np.float32)
        probe_t = np.ascontiguousarray(sp.T)
        step = prefilter.BLOCK_TEMPLATES
        with _scan_slot() as others:
            # Reading each batch ahead pays when one thread has the memory to itself
            # (prefilter.block_best): not when this search spreads its blocks over threads
            # (as _map decides), nor while another search scans (the verifier's match workers).
            alone = others == 0 and not (len(blocks) > 1 and self._workers > 1)

            def run(b: int) -> None:
                slabs, t = blocks[b]
                out[:, b * step : b * step + t] = prefilter.slab_best(probe_t, slabs, t, alone)

            self._map(list(range(len(blocks))), run)
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
        best = self._best_rows(self._probe_sketch(cp))
        out = prefilter.aggregate(best, prefilter.row_stats(best))
        out -= self._sketches.centres
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
            out[sel] = self._score_among(cp, packed, pool[sel])

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
