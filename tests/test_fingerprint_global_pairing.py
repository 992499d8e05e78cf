"""Global consolidation of MCC comparisons: hulls, alignment, one-to-one pairing and the paired fraction."""

from __future__ import annotations

import numpy as np
import pytest

from biometrics.fingerprint import global_pairing as gp
from biometrics.fingerprint import match, mcc_match, orientation_field
from biometrics.fingerprint.matcher import cylinders_of
from biometrics.fingerprint.types import Minutiae


def _minutiae(x: np.ndarray, y: np.ndarray, angle: np.ndarray) -> Minutiae:
    n = len(x)
    return Minutiae(
        x.astype(np.float32),
        y.astype(np.float32),
        (angle % (2 * np.pi)).astype(np.float32),
        np.ones(n, np.uint8),
        np.full(n, 60, np.uint8),
    )


def _finger(rng: np.random.Generator, n: int = 40) -> Minutiae:
    return _minutiae(rng.uniform(40, 360, n), rng.uniform(40, 460, n), rng.uniform(0, 2 * np.pi, n))


def _touch(m: Minutiae, rng: np.random.Generator, degrees: float, shift: complex, jitter: float = 2.0) -> Minutiae:
    """The finger touched again: rotated by ``degrees`` (clockwise as seen, y down), shifted, jittered."""
    a = np.radians(degrees)
    z = np.exp(1j * a) * (m.x + 1j * m.y) + shift + np.array([1, 1j]) @ rng.normal(0, jitter, (2, len(m)))
    return _minutiae(z.real, z.imag, m.angle - a)


def _fraction(probe: Minutiae, gallery: Minutiae, rotation: complex, shift: complex) -> float:
    """Paired fraction of two minutiae sets (as 500-dpi cylinders) under a given transform."""
    a, b = cylinders_of(probe), cylinders_of(gallery)
    packed = mcc_match.pack([b])
    return float(
        gp.paired_fraction(
            (a.x + 1j * a.y).astype(np.complex64),
            np.exp(1j * a.angle).astype(np.complex64),
            gp.hull_planes(a.x, a.y),
            packed.pos,
            packed.unit,
            packed.count,
            packed.hull_normals,
            packed.hull_offsets,
            np.array([rotation], np.complex64),
            np.zeros(1, np.complex64),
            np.array([shift], np.complex64),
        )[0]
    )


def test_hull_half_planes_hold_the_inside_and_reject_the_outside():
    x = np.array([0.0, 100.0, 100.0, 0.0, 50.0])
    y = np.array([0.0, 0.0, 100.0, 100.0, 50.0])  # a square and its centre
    normals, offsets = gp.pad_planes([gp.hull_planes(x, y), gp.hull_planes(x[::-1], y[::-1])], 5)
    assert normals.shape == (2, 5)
    assert np.count_nonzero(normals, axis=1).tolist() == [4, 4]  # four edges, whatever the winding
    px = np.array([[50.0, 1.0, 99.0, 101.0, -1.0, 50.0]] * 2, np.float32)
    py = np.array([[50.0, 1.0, 99.0, 50.0, 50.0, 130.0]] * 2, np.float32)
    inside = gp._inside(px, py, normals, offsets)
    np.testing.assert_array_equal(inside, [[True, True, True, False, False, False]] * 2)
    # Two points have no area: they count as overlapping everything (no evidence either way).
    n, c = gp.hull_planes(np.array([0.0, 10.0]), np.array([0.0, 0.0]))
    assert gp._inside(np.array([[500.0]], np.float32), np.array([[-500.0]], np.float32), n[None], c[None]).all()


def test_a_second_touch_pairs_nearly_all_its_minutiae_and_a_stranger_few():
    rng = np.random.default_rng(3)
    finger = _finger(rng)
    again = _touch(finger, rng, 20.0, 15 - 10j)
    # The gallery is `again`; the probe `finger` maps onto it by exp(i a) z + shift.
    truth = complex(np.exp(1j * np.radians(20.0)))
    assert _fraction(finger, again, truth, 15 - 10j) > 0.8
    assert _fraction(finger, _finger(rng), truth, 15 - 10j) < 0.25
    # The same prints under a wrong transform (rotated 30 degrees further) pair little.
    assert _fraction(finger, again, truth * complex(np.exp(1j * np.radians(30.0))), 15 - 10j) < 0.25


def test_pairing_is_one_to_one():
    """Three probe minutiae crowding one gallery minutia make one pair, not three."""
    rng = np.random.default_rng(4)
    gallery = _finger(rng, 30)
    probe = _minutiae(
        np.r_[gallery.x, gallery.x[0] + 3.0, gallery.x[0] - 3.0],
        np.r_[gallery.y, gallery.y[0] + 3.0, gallery.y[0]],
        np.r_[gallery.angle, gallery.angle[0], gallery.angle[0]],
    )
    a, b = cylinders_of(probe), cylinders_of(gallery)
    packed = mcc_match.pack([b])
    real = np.arange(packed.pos.shape[1])[None, :] < packed.count[:, None]
    moved = (a.x + 1j * a.y).astype(np.complex64)[None, :]
    paired_a, paired_b, _ = gp._pair(
        moved, np.exp(1j * a.angle).astype(np.complex64)[None, :], packed.pos, packed.unit, real
    )
    assert paired_a.sum() == paired_b.sum() == len(b)  # every gallery minutia paired once
    assert paired_a.sum() < len(a)  # the crowding extras found no partner of their own


def test_alignment_follows_the_consensus_not_the_single_best_pair():
    """The most similar relaxed pair is a look-alike that contradicts the others: the transform
    most pairs agree with wins."""
    rng = np.random.default_rng(5)
    r = 10
    pa = (rng.uniform(0, 300, r) + 1j * rng.uniform(0, 300, r)).astype(np.complex64)
    ua = np.exp(1j * rng.uniform(0, 2 * np.pi, r)).astype(np.complex64)
    rot = np.exp(1j * np.radians(25.0))
    pb, ub = (rot * pa + (40 + 5j)).astype(np.complex64), (ua * np.conj(rot)).astype(np.complex64)
    ub[0] *= np.exp(1j * 1.0)  # pair 0 is a look-alike: its direction (so its transform) is wrong
    pb[0] += 60
    weight = np.r_[1.0, np.full(r - 1, 0.5)]
    rotation, anchor_a, anchor_b = gp.align(pa[None], ua[None], pb[None], ub[None], weight[None])
    assert abs(rotation[0] - rot) < 1e-3
    probe_point = 123 + 45j
    assert abs(rotation[0] * (probe_point - anchor_a[0]) + anchor_b[0] - (rot * probe_point + 40 + 5j)) < 1e-2


def test_scores_combine_local_evidence_with_the_paired_fraction():
    rng = np.random.default_rng(6)
    finger = _finger(rng)
    # Minutiae without a field: the score is the combined minutiae score times the field factor of a pair
    # taken to agree at MISSING_AGREEMENT (orientation_field); the minutiae score of the touch is high.
    missing = orientation_field.factor(np.array([orientation_field.MISSING_AGREEMENT]))[0]
    assert match(finger, _touch(finger, rng, 10.0, 5 + 5j)) / missing > 0.3
    # combine(): the geometric mean, 0 without LSS-R evidence, bounded by 1.
    np.testing.assert_allclose(
        mcc_match.combine(np.array([0.0, 0.04, 0.04, 0.5]), np.array([1.0, 0.25, 1.0, 3.0])),
        [0.0, 0.1, 0.2, np.sqrt(0.5)],
    )


@pytest.mark.parametrize("degrees", [0.0, 35.0, -60.0])
def test_scores_are_symmetric_and_rotation_invariant(degrees):
    rng = np.random.default_rng(7)
    finger = _finger(rng)
    again = _touch(finger, rng, degrees, -20 + 10j)
    assert match(finger, again) == pytest.approx(match(again, finger), rel=0.05)
    assert match(finger, again) > 0.3


def _fraction_of_points(a: np.ndarray, ua: np.ndarray, b: np.ndarray, ub: np.ndarray) -> float:
    """Paired fraction of two point sets (complex positions, unit directions) under the identity transform."""
    normals, offsets = gp.pad_planes([gp.hull_planes(b.real, b.imag)], len(b))
    return float(
        gp.paired_fraction(
            a.astype(np.complex64),
            ua.astype(np.complex64),
            gp.hull_planes(a.real, a.imag),
            b.astype(np.complex64)[None],
            ub.astype(np.complex64)[None],
            np.array([len(b)]),
            normals,
            offsets,
            np.ones(1, np.complex64),
            np.zeros(1, np.complex64),
            np.zeros(1, np.complex64),
        )[0]
    )


def test_the_pairs_an_alignment_makes_by_construction_are_no_evidence():
    """Two prints that share only FREE_PAIRS minutiae (what aligning any two prints pairs) score a fraction of 0;
    each further pair counts."""
    rng = np.random.default_rng(8)
    corners = np.array([0, 200, 200 + 200j, 200j])
    b = np.r_[corners, rng.uniform(20, 180, 8) + 1j * rng.uniform(20, 180, 8)]
    a = np.r_[corners * 0.99 + (1 + 1j), rng.uniform(20, 180, 8) + 1j * rng.uniform(20, 180, 8)]
    # Every gallery minutia points along +x and every probe minutia the other way: none pairs.
    # All 12 probe minutiae lie inside the gallery's hull, the gallery's 8 inner ones inside the probe's.
    ub, ua = np.ones(12, complex), -np.ones(12, complex)
    assert _fraction_of_points(a, ua, b, ub) == 0.0
    a[4:6], ua[4:6] = b[4:6], ub[4:6]
    assert _fraction_of_points(a, ua, b, ub) == 0.0  # two pairs: any alignment of two prints finds them
    free = gp.FREE_PAIRS
    for shared in (free, free + 3):
        a[4 : 4 + shared], ua[4 : 4 + shared] = b[4 : 4 + shared], ub[4 : 4 + shared]
        expected = (shared - free) ** 2 / ((12 - free) * (8 - free))
        assert _fraction_of_points(a, ua, b, ub) == pytest.approx(expected)


def test_a_small_overlap_counts_at_least_min_overlap_minutiae_beyond_the_free_pairs():
    """Four shared minutiae in an overlap of four: two beyond the free pairs, out of at least MIN_OVERLAP."""
    rng = np.random.default_rng(9)
    corners = np.array([0, 200, 200 + 200j, 200j])
    inner = rng.uniform(20, 180, 4) + 1j * rng.uniform(20, 180, 4)
    b, a = np.r_[corners, inner], np.r_[corners * 0.99 + (1 + 1j), inner]
    ub, ua = np.ones(8, complex), np.r_[-np.ones(4), np.ones(4)].astype(complex)  # the corners do not pair
    floor = gp.MIN_OVERLAP
    assert floor > 4 - gp.FREE_PAIRS
    assert _fraction_of_points(a, ua, b, ub) == pytest.approx(
        (4 - gp.FREE_PAIRS) ** 2 / (max(8 - gp.FREE_PAIRS, floor) * floor)
    )


def _dense_mutual(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pairing rule over the dense costs: i and j each other's first minimum (row's first column, column's
    first row), kept below 1."""
    near = cost.argmin(axis=2)
    best = np.take_along_axis(cost, near[:, :, None], axis=2)[:, :, 0]
    column_first = cost.argmin(axis=1)  # (T, K): each column's first row at its minimum
    rows = np.arange(cost.shape[1])[None, :]
    paired_a = (best < 1.0) & (np.take_along_axis(column_first, near, axis=1) == rows)
    paired_b = np.zeros((cost.shape[0], cost.shape[2]), bool)
    t_idx, i_idx = np.nonzero(paired_a)
    paired_b[t_idx, near[t_idx, i_idx]] = True
    return paired_a, paired_b, near


@pytest.mark.parametrize("seed", range(6))
def test_pairing_over_the_costs_below_one_equals_the_dense_rule(seed):
    """Crowded costs with exact ties (a quarter below 1): the same pairs, and the same nearest
    template minutia wherever a cost is below the limit."""
    rng = np.random.default_rng(seed)
    t, n, k = (int(v) for v in rng.integers(1, 40, 3))
    cost = (np.round(rng.uniform(0.0, 4.0, (t, n, k)) * 8.0) / 8.0).astype(np.float32)
    cost[0, :, :] += 5.0  # a template with no cost below the limit: nothing paired
    paired_a, paired_b, near = gp._mutual_below_one(cost)
    dense_a, dense_b, dense_near = _dense_mutual(cost)
    np.testing.assert_array_equal(paired_a, dense_a)
    np.testing.assert_array_equal(paired_b, dense_b)
    below = (cost < 1.0).any(axis=2)
    np.testing.assert_array_equal(near[below], dense_near[below])
    assert not paired_a[0].any() and paired_a.any()


@pytest.mark.parametrize("seed", range(4))
def test_pairing_with_exact_ties_is_one_to_one_and_the_same_from_either_side(seed):
    """Duplicate minutiae make exact ties: no minutia is paired twice, and the transposed costs
    (the other print as the probe) pair the same minutiae."""
    rng = np.random.default_rng(100 + seed)
    t, n, k = 5, 12, 9
    cost = (np.round(rng.uniform(0.0, 2.0, (t, n, k)) * 4.0) / 4.0).astype(np.float32)
    cost[:, 1] = cost[:, 0]  # a duplicate probe minutia: a tie in every column
    cost[:, :, 3] = cost[:, :, 2]  # a duplicate template minutia: a tie in every row
    paired_a, paired_b, _ = gp._mutual_below_one(cost)
    back_b, back_a, _ = gp._mutual_below_one(np.ascontiguousarray(cost.transpose(0, 2, 1)))
    np.testing.assert_array_equal(paired_a, back_a)
    np.testing.assert_array_equal(paired_b, back_b)
    assert (paired_a.sum(axis=1) == paired_b.sum(axis=1)).all()  # one-to-one
    assert not (paired_a[:, 0] & paired_a[:, 1]).any() and not (paired_b[:, 2] & paired_b[:, 3]).any()
    assert paired_a.any()


def test_pairing_with_no_cost_below_one_pairs_nothing():
    cost = np.full((2, 3, 4), 1.0, np.float32)  # exactly at the limit is outside it
    paired_a, paired_b, near = gp._mutual_below_one(cost)
    assert not paired_a.any() and not paired_b.any() and near.shape == (2, 3)


def test_the_inside_test_over_the_used_hull_planes_equals_the_padded_one():
    """Hull arrays as wide as the cylinder counts are trimmed to the widest hull: same answer."""
    rng = np.random.default_rng(8)
    planes = [gp.hull_planes(rng.uniform(0, 300, m), rng.uniform(0, 300, m)) for m in (3, 12, 40, 2)]
    normals, offsets = gp.pad_planes(planes, 48)
    used_n, used_o = gp.used_planes(normals, offsets)
    assert used_n.shape[1] == max(len(p[0]) for p in planes) < 48
    x = rng.uniform(-50, 350, (4, 200)).astype(np.float32)
    y = rng.uniform(-50, 350, (4, 200)).astype(np.float32)
    inside = gp._inside(x, y, used_n, used_o)
    np.testing.assert_array_equal(inside, gp._inside(x, y, normals, offsets))
    assert inside[1].any() and not inside[1].all()
    assert inside[3].all()  # two points: the plane that holds everything
    empty_n, empty_o = gp.used_planes(np.zeros((2, 5), np.complex64), np.zeros((2, 5), np.float32))
    assert empty_n.shape == (2, 1) and gp._inside(x[:2], y[:2], empty_n, empty_o).all()


def _inside_reference(x: np.ndarray, y: np.ndarray, normals: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """The inside test as first written: (T, P, E) excesses reduced along the edges, per-template hulls."""
    excess = x[:, :, None] * normals.real.astype(np.float32)[:, None, :]
    excess += y[:, :, None] * normals.imag.astype(np.float32)[:, None, :]
    excess -= offsets[:, None, :]
    return excess.max(axis=2) <= 0.0


def test_the_edge_major_inside_test_equals_the_reference_for_own_and_shared_hulls():
    """Points inside and around the hulls: the edge-major layout and a hull shared by every
    template (the probe's, not broadcast) give exactly the answers of the reference layout."""
    rng = np.random.default_rng(12)
    planes = [gp.hull_planes(rng.uniform(0, 300, m), rng.uniform(0, 300, m)) for m in (5, 20, 48, 2, 9)]
    normals, offsets = gp.used_planes(*gp.pad_planes(planes, 48))
    x = rng.uniform(-20, 320, (5, 300)).astype(np.float32)
    y = rng.uniform(-20, 320, (5, 300)).astype(np.float32)
    inside = gp._inside(x, y, normals, offsets)
    np.testing.assert_array_equal(inside, _inside_reference(x, y, normals, offsets))
    assert inside.any() and not inside.all()
    shared_n, shared_o = planes[2]
    shared = gp._inside(x, y, shared_n, shared_o)
    wide = (np.broadcast_to(shared_n, (5, len(shared_n))), np.broadcast_to(shared_o, (5, len(shared_o))))
    np.testing.assert_array_equal(shared, _inside_reference(x, y, *wide))
    np.testing.assert_array_equal(shared, gp._inside(x, y, *wide))


def test_pairing_costs_equal_the_einsum_formulation_and_the_exact_distance():
    """The pairing costs, squared lengths summed without einsum, are the einsum-based ones they replaced
    (bit for bit on the build measured; einsum's summation order is numpy's choice, so within a rounding
    step here), and within float32 rounding of the exact scaled squared distance."""
    rng = np.random.default_rng(13)
    t, n, k = 30, 45, 48
    moved = (rng.uniform(0, 60, (t, n)) + 1j * rng.uniform(0, 60, (t, n))).astype(np.complex64)  # crowded
    turned = np.exp(1j * rng.uniform(0, 2 * np.pi, (t, n))).astype(np.complex64)
    pos = (rng.uniform(0, 60, (t, k)) + 1j * rng.uniform(0, 60, (t, k))).astype(np.complex64)
    unit = np.exp(1j * rng.uniform(0, 2 * np.pi, (t, k))).astype(np.complex64)
    real = np.arange(k)[None, :] < rng.integers(1, k + 1, t)[:, None]
    cost = gp._costs(moved, turned, pos, unit, real)
    sd, sa = np.float32(1.0 / gp.D_PAIR), np.float32(1.0 / gp._CHORD_PAIR)
    a = np.stack([moved.real * sd, moved.imag * sd, turned.real * sa, turned.imag * sa], axis=2)
    b = np.stack([np.where(real, pos.real * sd, np.float32(1e3)), pos.imag * sd, unit.real * sa, unit.imag * sa], 1)
    einsum = np.matmul(a, b) * np.float32(-2.0)
    einsum += np.einsum("tnc,tnc->tn", a, a)[:, :, None]
    einsum += np.einsum("tck,tck->tk", b, b)[:, None, :]
    np.testing.assert_allclose(cost, einsum, rtol=5e-7, atol=5e-7)
    exact = ((a[:, :, None, :].astype(np.float64) - b.transpose(0, 2, 1)[:, None, :, :]) ** 2).sum(axis=3)
    live = np.broadcast_to(real[:, None, :], cost.shape)
    np.testing.assert_allclose(cost[live], exact[live], atol=2e-4)
    assert (cost[live] < 1.0).sum() > 100  # crowded: many pairs inside the ellipse
