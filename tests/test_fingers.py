"""The synthetic finger generator: determinism, geometry of the ground truth, and fingerprint-likeness."""

from __future__ import annotations

import hashlib
import math
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from simulators import fingers
from simulators.errors import SimulatorError
from simulators.fingers import FINGER_CLASSES, FingerGenerator, FolderFingerSource, fit_to_size

REPO = Path(__file__).resolve().parents[1]


def _digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _ridge_period(image: np.ndarray) -> float:
    """Dominant ridge period of the centre of an image, in pixels, from its 2-D power spectrum.

    The 128-pixel window is zero-padded to 256 so the spectrum is sampled finely
    enough to tell periods near 12 pixels apart (128 / 10 = 12.8, 128 / 11 = 11.6).
    """
    h, w = image.shape
    crop = image[h // 2 - 64 : h // 2 + 64, w // 2 - 64 : w // 2 + 64].astype(np.float64)
    crop = (crop - crop.mean()) * np.outer(np.hanning(128), np.hanning(128))
    power = np.abs(np.fft.fftshift(np.fft.fft2(crop, s=(256, 256)))) ** 2
    fy, fx = np.mgrid[-128:128, -128:128]
    radius = np.hypot(fx, fy)
    power[radius < 8] = 0  # illumination, not ridges
    r = radius[np.unravel_index(np.argmax(power), power.shape)]
    return 256.0 / r


# ---------------------------------------------------------------- determinism


def test_same_seed_gives_the_same_bytes_even_in_another_process(finger_generator) -> None:
    finger = finger_generator.finger(0)
    imp = finger.impression(5)
    here = _digest(finger.master_image, finger.minutiae.x, finger.minutiae.angle, imp.image, imp.minutiae.x)
    fingers._master.cache_clear()
    again = FingerGenerator(1).finger(0)
    assert (
        _digest(
            again.master_image,
            again.minutiae.x,
            again.minutiae.angle,
            again.impression(5).image,
            again.impression(5).minutiae.x,
        )
        == here
    )
    code = (
        "import hashlib, numpy as np\n"
        "from simulators.fingers import FingerGenerator\n"
        "f = FingerGenerator(1).finger(0); i = f.impression(5)\n"
        "h = hashlib.sha256()\n"
        "for a in (f.master_image, f.minutiae.x, f.minutiae.angle, i.image, i.minutiae.x):\n"
        "    h.update(np.ascontiguousarray(a).tobytes())\n"
        "print(h.hexdigest())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip().splitlines()[-1] == here  # (log lines may come first)


def test_different_seeds_give_different_fingers_and_impressions(finger_generator) -> None:
    a = finger_generator.finger(0)
    b = finger_generator.finger(1)
    c = FingerGenerator(2).finger(0)
    for other in (b, c):
        diff = np.abs(a.master_image.astype(int) - other.master_image.astype(int))
        assert (diff > 60).mean() > 0.2  # ridges in other places, not a few changed pixels
    i1, i2 = a.impression(1).image, a.impression(2).image
    assert (np.abs(i1.astype(int) - i2.astype(int)) > 60).mean() > 0.1


def test_negative_and_large_seeds_are_accepted() -> None:
    imp = FingerGenerator(-3).finger(2**40).impression(-1, size=(64, 64))
    assert imp.image.shape == (64, 64)


@pytest.mark.parametrize(
    "make",
    [
        lambda: FingerGenerator(2**63),
        lambda: FingerGenerator(-(2**63) - 1),
        lambda: FingerGenerator(0).finger(2**64),
        lambda: FingerGenerator(0).finger(-(2**63) - 1),
        lambda: FingerGenerator(0).finger(1).impression(2**64 + 1),
    ],
    ids=["seed-2**63", "seed-below-range", "finger-2**64", "finger-below-range", "impression-2**64+1"],
)
def test_numbers_that_would_alias_a_smaller_finger_are_refused_naming_the_range(make) -> None:
    """Seed material is 64 bits wide: finger 2**64 was finger 0 before this was refused."""
    with pytest.raises(SimulatorError, match="outside the generator's range") as caught:
        make()
    assert "2**63" in caught.value.fix


def test_the_ends_of_the_range_are_distinct_fingers() -> None:
    low = FingerGenerator(0).finger(-(2**63)).impression(0, size=(64, 64)).image
    high = FingerGenerator(0).finger(2**63 - 1).impression(0, size=(64, 64)).image
    assert not np.array_equal(low, high)


# ---------------------------------------------------------------- orientation model


@pytest.mark.parametrize("finger_class", FINGER_CLASSES)
def test_singular_points_have_the_poincare_index_of_cores_and_deltas(finger_class: str) -> None:
    rng = np.random.default_rng(0)
    shape, center = (544, 416), (208.0, 272.0)
    points = fingers.singular_points(finger_class, rng, center)
    theta = fingers.orientation_field(shape, points, rng, center).astype(np.float64)

    def index(px: float, py: float, r: float = 12.0) -> float:
        t = np.linspace(0, 2 * np.pi, 64, endpoint=False)  # counter-clockwise as seen
        o = theta[np.rint(py - r * np.sin(t)).astype(int), np.rint(px + r * np.cos(t)).astype(int)]
        d = np.diff(np.r_[o, o[0]])
        return float((np.mod(d + np.pi / 2, np.pi) - np.pi / 2).sum() / (2 * np.pi))

    assert [round(index(*c), 2) for c in points.cores] == [0.5] * len(points.cores)
    assert [round(index(*d), 2) for d in points.deltas] == [-0.5] * len(points.deltas)
    expected = {"arch": (0, 0), "tented_arch": (1, 1), "left_loop": (1, 1), "right_loop": (1, 1), "whorl": (2, 2)}
    assert (len(points.cores), len(points.deltas)) == expected[finger_class]


# ---------------------------------------------------------------- ground truth


def test_master_minutiae_are_plausible(finger_generator) -> None:
    for finger_id in range(3):
        f = finger_generator.finger(finger_id)
        m = f.minutiae
        h, w = f.master_image.shape
        assert 25 <= len(m) <= 150, f"finger {finger_id}: {len(m)} minutiae"
        assert ((m.x >= 0) & (m.x < w) & (m.y >= 0) & (m.y < h)).all()
        assert set(np.unique(m.kind)) <= {1, 2} and len(set(m.kind.tolist())) == 2
        assert ((m.angle >= 0) & (m.angle < 2 * np.pi)).all()
        assert f.finger_class in FINGER_CLASSES


def test_minutiae_directions_agree_with_the_image(finger_generator) -> None:
    """An ending points into its ridge (dark ahead); a fork points into the valley between its branches."""
    agree = total = 0
    for finger_id in range(3):
        imp = finger_generator.finger(finger_id).clean_impression()
        m, img = imp.minutiae, imp.image.astype(np.float64)
        h, w = img.shape

        def grey(r: float, m=m, img=img, h=h, w=w) -> np.ndarray:
            x = np.clip(np.rint(m.x + r * np.cos(m.angle)).astype(int), 0, w - 1)
            y = np.clip(np.rint(m.y - r * np.sin(m.angle)).astype(int), 0, h - 1)
            return img[y, x]

        ahead = np.mean([grey(r) for r in (4, 5, 6)], axis=0)
        behind = np.mean([grey(-r) for r in (4, 5, 6)], axis=0)
        ok = np.where(m.kind == 1, ahead < behind, ahead > behind)
        agree += int(ok.sum())
        total += len(m)
    assert agree / total >= 0.85


def test_impression_minutiae_lie_in_the_image_and_contact_area(finger_generator) -> None:
    f = finger_generator.finger(1)
    for seed in range(4):
        imp = f.impression(seed)
        h, w = imp.image.shape
        m = imp.minutiae
        assert ((m.x >= -0.5) & (m.x < w - 0.5) & (m.y >= -0.5) & (m.y < h - 0.5)).all()
        assert imp.contact_mask[np.rint(m.y).astype(int), np.rint(m.x).astype(int)].all()
        assert len(m) >= 10


def test_rigid_impression_moves_minutiae_by_the_same_rotation_and_shift(finger_generator) -> None:
    f = finger_generator.finger(2)
    rot, shift = 25.0, (12.0, -8.0)
    imp = f.impression(3, rotation=rot, shift=shift, distortion=0.0)
    mh, mw = f.master_image.shape
    h, w = imp.image.shape
    phi = math.radians(rot)
    dx, dy = f.minutiae.x - mw / 2, f.minutiae.y - mh / 2
    ex = dx * math.cos(phi) + dy * math.sin(phi) + w / 2 + shift[0]  # counter-clockwise as seen, y down
    ey = -dx * math.sin(phi) + dy * math.cos(phi) + h / 2 + shift[1]
    ea = np.mod(f.minutiae.angle + phi, 2 * np.pi)
    m = imp.minutiae
    assert len(m) >= 10
    d = np.hypot(m.x[:, None] - ex[None, :], m.y[:, None] - ey[None, :])
    j = d.argmin(axis=1)
    assert d.min(axis=1).max() < 0.05
    np.testing.assert_array_equal(m.kind, f.minutiae.kind[j])
    turn = np.angle(np.exp(1j * (m.angle.astype(np.float64) - ea[j])))
    assert np.abs(turn).max() < 1e-3


def test_elastic_warp_forward_inverts_the_sampling_map(finger_generator) -> None:
    imp = finger_generator.finger(0).impression(4, distortion=6.0)
    map_x, map_y = imp.warp.to_master()
    rng = np.random.default_rng(0)
    ys = rng.integers(20, imp.image.shape[0] - 20, 200)
    xs = rng.integers(20, imp.image.shape[1] - 20, 200)
    px, py = imp.warp.forward(map_x[ys, xs], map_y[ys, xs])
    assert np.hypot(px - xs, py - ys).max() < 1.0
    assert np.hypot(*imp.warp.displacement).max() == pytest.approx(6.0, rel=0.05)


# ---------------------------------------------------------------- images


def test_images_look_like_fingerprints(finger_generator) -> None:
    for finger_id in range(3):
        imp = finger_generator.finger(finger_id).impression(0)
        img = imp.image
        assert img.dtype == np.uint8 and img.shape == (400, 300)
        period = _ridge_period(img)
        assert 6.5 <= period <= 12.5, f"ridge period {period:.1f} px is not a 500 dpi finger's"
        on = imp.contact_mask.astype(bool)
        dark = (img[on] < 128).mean()
        assert 0.15 <= dark <= 0.85, f"ridge/valley balance {dark:.2f}"  # dry or wet patches, still ridges and valleys
        clean = finger_generator.finger(finger_id).clean_impression()
        dark = (clean.image[clean.contact_mask > 0] < 128).mean()
        assert 0.35 <= dark <= 0.65, f"clean ridge/valley balance {dark:.2f}"
        assert on.mean() > 0.4
        if (~on).any():
            assert np.median(img[~on]) > 180  # background is light


def test_pressure_thickens_ridges_and_contact_limits_the_area(finger_generator) -> None:
    f = finger_generator.finger(0)
    base = {"rotation": 0.0, "shift": (0.0, 0.0), "distortion": 0.0, "noise": 0.0}
    dark = []
    for pressure in (-1.0, 0.0, 1.0):
        imp = f.impression(1, pressure=pressure, contact=1.0, **base)
        dark.append((imp.image[imp.contact_mask > 0] < 128).mean())
    assert dark[0] < dark[1] < dark[2]
    full = f.impression(1, pressure=0.0, contact=1.0, **base)
    partial = f.impression(1, pressure=0.0, contact=0.5, **base)
    assert partial.contact_mask.sum() < 0.6 * full.contact_mask.sum()
    assert len(partial.minutiae) < len(full.minutiae)


@pytest.mark.parametrize("size", [(256, 288), (192, 192), (300, 400)])
def test_impressions_come_in_the_sizes_readers_need(finger_generator, size) -> None:
    imp = finger_generator.finger(0).impression(2, size=size)
    assert imp.image.shape == (size[1], size[0])
    assert finger_generator.image(0, 2, size).shape == (size[1], size[0])
    assert imp.dpi == 500


def test_unknown_parameters_and_sizes_are_refused(finger_generator) -> None:
    f = finger_generator.finger(0)
    with pytest.raises(TypeError, match="unknown impression parameter"):
        f.impression(0, rotaton=3)
    with pytest.raises(ValueError, match="size"):
        f.impression(0, size=(5, 5))


# ---------------------------------------------------------------- folder replay


def test_folder_source_replays_f_i_images(tmp_path: Path) -> None:
    for finger_id, impression in ((1, 1), (1, 2), (12, 1)):
        img = np.full((50, 40), finger_id * 10 + impression, np.uint8)
        cv2.imwrite(str(tmp_path / f"{finger_id}_{impression}.tif"), img)
    (tmp_path / "notes.txt").write_text("not an image")
    source = FolderFingerSource(tmp_path)
    assert len(source) == 3
    assert source.keys() == [(1, 1), (1, 2), (12, 1)]
    assert source.fingers == [1, 12]
    assert int(source.load(12, 1)[0, 0]) == 121
    assert source.image(1, 2, (60, 30)).shape == (30, 60)
    assert [(f, i) for f, i, _ in source] == source.keys()
    with pytest.raises(KeyError):
        source.load(3, 3)
    with pytest.raises(FileNotFoundError):
        FolderFingerSource(tmp_path / "missing")


def test_folder_source_reads_a_real_data_set(shared_data_dir: Path) -> None:
    folder = shared_data_dir / "fvc2002" / "DB1_B"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent")
    source = FolderFingerSource(folder)
    assert len(source) == 80
    img = source.image(101, 1, (256, 288))
    assert img.shape == (288, 256) and img.dtype == np.uint8
    assert 6.0 <= _ridge_period(source.load(101, 1)) <= 13.0


def test_fit_to_size_crops_and_pads_around_the_centre() -> None:
    img = np.arange(20, dtype=np.uint8).reshape(4, 5)
    assert fit_to_size(img, (3, 2)).tolist() == [[6, 7, 8], [11, 12, 13]]
    padded = fit_to_size(img, (7, 6))
    assert padded.shape == (6, 7) and padded[0, 0] == 255 and padded[1, 1] == 0


# ---------------------------------------------------------------- a population of distinct people


def test_singular_points_spread_like_real_fingers() -> None:
    """Loops differ in size and slant: the core-to-delta distance and angle vary widely between fingers."""
    rng = np.random.default_rng(3)
    distance, angle = [], []
    for _ in range(300):
        p = fingers.singular_points("left_loop", rng, (208.0, 272.0))
        (cx, cy), (dx, dy) = p.cores[0], p.deltas[0]
        distance.append(math.hypot(dx - cx, dy - cy))
        angle.append(math.degrees(math.atan2(dy - cy, dx - cx)))
    assert np.ptp(distance) > 90 and np.std(distance) > 25
    assert np.ptp(angle) > 30


def test_fingers_differ_in_period_and_class(finger_generator) -> None:
    masters = [finger_generator.finger(i).master for i in range(6)]
    periods = [m.mean_period for m in masters]
    assert np.ptp(periods) > 0.8  # 7.4 to 10.2 pixels drawn per finger
    assert len({m.finger_class for m in masters}) >= 2
    counts = [len(m.minutiae) for m in masters]
    assert np.ptp(counts) > 10  # minutiae density varies between fingers


def test_a_small_population_of_distinct_fingers_does_not_collide(finger_generator) -> None:
    """Six fingers, two impressions each: every impostor pair below the 1e-4 threshold, every genuine above."""
    from biometrics.fingerprint import extract, match, threshold_for_fmr

    threshold = threshold_for_fmr(1e-4)
    moderate = {"distortion": 4.0, "contact": 1.0, "pressure": 0.0, "noise": 8.0}
    tpls = {
        f: [extract(finger_generator.finger(f).impression(seed, **moderate).image) for seed in (1, 2)] for f in range(6)
    }
    for f, (a, b) in tpls.items():
        assert match(a, b) >= threshold, f
    worst = max(match(tpls[f][0], tpls[g][1]) for f in tpls for g in tpls if f != g)
    assert worst < threshold, worst


# ---------------------------------------------------------------- what makes synthetic people as distinct as real ones


def test_a_dislocation_pair_puts_two_minutiae_facing_each_other_into_straight_ridges() -> None:
    """Straight ridges have no minutia; one pair of opposite dislocations adds exactly two, facing each other.

    Such pairs (a short ridge, a ridge that stops and starts again) point both ways
    along the flow, unlike the minutiae ridge growth forces, which all point one way.
    """
    h, w, period = 200, 200, 9.0
    yy = np.mgrid[0:h, 0:w][0].astype(np.float32)
    field = np.cos(2 * np.pi * yy / period).astype(np.float32)
    theta = np.zeros((h, w), np.float32)  # ridges along x
    periods = np.full((h, w), period, np.float32)
    inside = np.zeros((h, w), np.uint8)
    inside[20:-20, 20:-20] = 1

    def found(f: np.ndarray):
        return fingers.skeleton_minutiae(fingers.clean_ridges(f, period), inside, theta, period)

    assert len(found(field)) == 0
    # The pair's centre is drawn uniformly: draw until it lies well inside (deterministic per seed).
    for seed in range(20):
        rng = np.random.default_rng(seed)
        out = fingers.dislocation_pairs(field, theta, periods, rng, 1)
        changed = np.argwhere(np.abs(out - field) > 0.5)
        if len(changed) and (changed.min(axis=0) > 40).all() and (changed.max(axis=0) < 160).all():
            break
    m = found(out)
    assert len(m) == 2, len(m)
    gap = math.hypot(float(m.x[0] - m.x[1]), float(m.y[0] - m.y[1]))
    assert 3.0 * period <= gap <= 8.0 * period
    turn = abs(math.remainder(float(m.angle[0] - m.angle[1]), 2 * math.pi))
    assert turn > math.radians(135)  # opposite directions along the ridges


def test_elastic_displacement_is_nil_where_the_finger_sticks_and_grows_outwards() -> None:
    rng = np.random.default_rng(3)
    d = fingers._displacement(rng, (400, 300), 15.0, (150.0, 200.0), 180.0)
    size = np.hypot(d[0], d[1])
    assert size.max() == pytest.approx(15.0, rel=1e-3)
    assert size[190:211, 140:161].max() < 0.05 * 15.0  # the sticking core
    assert size[0:40].mean() > 5 * size[150:250, 100:200].mean()


def test_realistic_profile_takes_harder_impressions(finger_generator) -> None:
    """FVC-like captures: more distortion, smaller contact and dry skin (faint, broken ridges) than careful ones."""
    f = finger_generator.finger(2)
    coop = [f.impression(s).params for s in range(8)]
    real = [f.impression(s, profile="realistic").params for s in range(8)]
    assert np.mean([p.distortion for p in real]) > 1.5 * np.mean([p.distortion for p in coop])
    assert np.mean([p.contact for p in real]) < np.mean([p.contact for p in coop])
    assert FingerGenerator(1, "realistic").image(2, 5).tobytes() == f.impression(5, profile="realistic").image.tobytes()

    fixed = {"rotation": 0.0, "shift": (0.0, 0.0), "distortion": 0.0, "pressure": 0.0, "noise": 0.0, "contact": 1.0}
    wet, dry = (f.impression(1, dryness=d, **fixed) for d in (0.0, 0.7))
    on = wet.contact_mask > 0
    assert dry.image[on].std() < 0.85 * wet.image[on].std()  # fainter
    assert (dry.image[on] < 128).mean() < 0.8 * (wet.image[on] < 128).mean()  # ridges broken up


def test_unknown_capture_profile_is_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match="cooperative, realistic"):
        FingerGenerator(0, "sloppy")
    with pytest.raises(ValueError, match="cooperative, realistic"):
        FingerGenerator(0).finger(0).impression(0, profile="sloppy")
