"""The orientation field a template carries: wire format, agreement under an alignment, part in the score."""

from __future__ import annotations

import struct
from dataclasses import replace

import cv2
import numpy as np
import pytest

from biometrics.fingerprint import GalleryIndex, extract, match
from biometrics.fingerprint import orientation_field as of
from biometrics.fingerprint.extract import analyse
from biometrics.fingerprint.iso19794_2 import ORIENTATION_AREA_TYPE, TemplateFormatError, decode, encode
from biometrics.fingerprint.types import OrientationField


def _rotated(image: np.ndarray, degrees: float) -> np.ndarray:
    """The image turned counter-clockwise (as seen) about its centre, same size."""
    h, w = image.shape
    m = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), degrees, 1.0)
    return cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR, borderValue=235)


def _field(image: np.ndarray) -> OrientationField:
    a = analyse(image, 500)
    return of.from_maps(a.orientation, a.coherence, a.mask)


@pytest.fixture(scope="module")
def fingers(finger_generator):
    """Clean impressions of two fingers of different pattern classes (simulators.fingers)."""
    return [finger_generator.finger(i).clean_impression().image for i in (0, 1)]


@pytest.fixture(scope="module")
def field(fingers):
    return _field(fingers[0])


def _agreement_under_rotation(probe: OrientationField, other: OrientationField, degrees: float, shape) -> float:
    """Agreement with the transform that a counter-clockwise turn by ``degrees`` about the image centre is."""
    h, w = shape
    centre = complex((w - 1) / 2, (h - 1) / 2)
    rotation = np.array([np.exp(-1j * np.radians(degrees))])  # y down: counter-clockwise as seen is exp(-i phi)
    gallery = of.pack([of.vectors(other)])
    return float(of.agreement(of.vectors(probe), gallery, rotation, np.array([centre]), np.array([centre]))[0])


def test_a_print_agrees_with_a_rotated_copy_of_itself_and_not_with_another_pattern(fingers, field):
    image = fingers[0]
    turned = _field(_rotated(image, 30.0))
    assert _agreement_under_rotation(field, turned, 30.0, image.shape) > 0.8
    # The same copy under a transform 30 degrees off (the field's angles then disagree everywhere).
    assert _agreement_under_rotation(field, turned, 0.0, image.shape) < 0.3
    other = _field(_rotated(fingers[1], 30.0))
    assert _agreement_under_rotation(field, other, 30.0, image.shape) < 0.5


def test_the_factor_is_bounded_and_rewards_agreement():
    share = np.linspace(0.0, 1.0, 101)
    f = of.factor(share)
    assert np.all(np.diff(f) >= 0)
    assert f[-1] == 1.0
    # A pair's score never rises above its minutiae score, nor falls below a quarter of it.
    assert f[0] == pytest.approx(0.25)
    assert np.all(f[share <= 0.84] == pytest.approx(0.25))  # the impostor bulk all at the floor


def test_fields_that_agree_as_a_mates_do_keep_the_minutiae_score():
    # Genuine mates' shares gather at 0.9 to 1 (median 0.96 with the coherence power): an aligned pair whose
    # fields agree keeps (nearly) all its score, so a print with few reliable minutiae can still reach the threshold.
    assert np.all(of.factor(np.array([0.96, 0.98])) == 1.0)
    assert of.factor(np.array([0.93]))[0] > 0.65
    # The penalty falls steeply between the impostors' upper shares and the mates'.
    assert of.factor(np.array([0.85]))[0] < 0.3 < of.factor(np.array([0.9]))[0] - 0.15


def _blocks(angle: np.ndarray, coherence: np.ndarray) -> OrientationField:
    """A field from per-block orientations (radians, [0, pi)) and coherences (0..1) on a 10 x 16 grid."""
    units = np.round(np.mod(2.0 * angle, 2.0 * np.pi) * 256.0 / (2.0 * np.pi)).astype(np.int64) % 256
    return OrientationField(of.BLOCK, units.astype(np.uint8), np.round(coherence * 255.0).astype(np.uint8))


def _identity_share(a: OrientationField, b: OrientationField) -> float:
    gallery = of.pack([of.vectors(b)])
    one, zero = np.array([1.0 + 0j]), np.array([0j])
    return float(of.agreement(of.vectors(a), gallery, one, zero, zero)[0])


def test_uncertain_blocks_that_disagree_cost_a_mate_little_and_confident_ones_cost_fully():
    # A mate's fields disagree mostly where the field is uncertain (foreground border, core and deltas,
    # coherence 0.1 to 0.3): 100 confident blocks agree, 60 uncertain ones are 45 degrees off. Weighted by the
    # coherences' plain product the share was 0.94 (a factor of about 0.9 at most); at COHERENCE_POWER it is
    # above 0.99 and the pair keeps its whole score.
    angle = np.full((10, 16), 0.6)
    confident = np.arange(160).reshape(10, 16) < 100
    coherence = np.where(confident, 0.9, 0.3)
    probe = _blocks(angle, coherence)
    mate = _blocks(np.where(confident, angle, angle + np.pi / 4), coherence)
    share = _identity_share(probe, mate)
    assert share > 0.99
    assert of.factor(np.array([share]))[0] == 1.0
    # The same 60 blocks disagreeing as confidently as the rest agree count in full: an impostor's way.
    strong = _blocks(np.where(confident, angle, angle + np.pi / 4), np.full((10, 16), 0.9))
    assert _identity_share(_blocks(angle, np.full((10, 16), 0.9)), strong) == pytest.approx(100 / 160, abs=0.01)


def test_where_the_flow_turns_a_shifted_mate_agrees_between_block_centres():
    # A block's vector is the orientation at its centre, and a point moved from the other print lands anywhere
    # in a block. Flow turning 1.5 degrees a pixel (as around a core) and a mate shifted by half a block: read at
    # the nearest block every point is 12 degrees off, over the tolerance, although the prints agree there; read
    # between the four surrounding centres it agrees (the edge blocks read past the last centre do not).
    shape = (12, 20)
    x = np.arange(shape[1]) * of.BLOCK + (of.BLOCK - 1) / 2.0
    turning = np.radians(1.5)  # per pixel, along x
    ones = np.ones(shape)
    template = _blocks(np.mod(np.broadcast_to(turning * x, shape), np.pi), ones)
    probe = _blocks(np.mod(np.broadcast_to(turning * (x + of.BLOCK / 2), shape), np.pi), ones)
    gallery = of.pack([of.vectors(template)])
    one = np.array([1.0 + 0j])
    share = of.agreement(of.vectors(probe), gallery, one, np.array([0j]), np.array([of.BLOCK / 2 + 0j]))[0]
    assert share > 0.9
    # Whichever print is the probe (the inverse transform).
    back = of.agreement(of.vectors(template), of.pack([of.vectors(probe)]), one, np.array([of.BLOCK / 2 + 0j]),
                        np.array([0j]))[0]
    assert back == pytest.approx(share, abs=1e-6)
    # Unshifted (the transform half a block off the truth) the same fields disagree.
    assert of.agreement(of.vectors(probe), gallery, one, np.array([0j]), np.array([0j]))[0] < 0.1


def test_the_field_round_trips_through_the_iso_record(fingers):
    t = extract(fingers[0], 500)
    assert t.orientation is not None and (t.orientation.coherence > 0).mean() > 0.3
    [back] = decode(encode(t))
    np.testing.assert_array_equal(back.orientation.angle, t.orientation.angle)
    np.testing.assert_array_equal(back.orientation.coherence, t.orientation.coherence)
    assert back.orientation.block == t.orientation.block == of.BLOCK
    np.testing.assert_array_equal(back.minutiae.x, np.floor(t.minutiae.x + 0.5).clip(0, t.width - 1))


def _with_area(t, data: bytes, header_counted: bool = False) -> bytes:
    """The record of ``t`` (no field) with one orientation area of the given bytes."""
    record = encode(replace(t, orientation=None))
    length = len(data) + (4 if header_counted else 0)
    ext = struct.pack(">HH", ORIENTATION_AREA_TYPE, length) + data
    body = record[:-2] + struct.pack(">H", len(ext)) + ext
    return body[:8] + struct.pack(">I", len(body)) + body[12:]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x01\x10", "shorter than its 4-byte header"),
        (bytes([2, 16, 1, 1, 0, 0]), "format version 2"),
        (bytes([1, 0, 1, 1, 0, 0]), "blocks of 0 pixels"),
        (bytes([1, 8, 1, 1, 0, 0]), "blocks of 8 pixels, this reader compares 16"),
        # A grid far larger than the image (memory and comparison time out of proportion to the print) is refused.
        (bytes([1, 16, 100, 100]) + bytes(2 * 100 * 100), "100x100 blocks, more than"),
        (bytes([1, 16, 2, 2, 0, 0, 0]), "need 12"),
    ],
)
def test_a_malformed_orientation_area_is_refused_with_a_typed_error(fingers, data: bytes, message: str):
    t = extract(fingers[0], 500)
    with pytest.raises(TemplateFormatError, match=message):
        decode(_with_area(t, data))


@pytest.mark.parametrize("header_counted", [False, True])
def test_an_orientation_area_is_read_under_either_length_rule(fingers, header_counted: bool):
    t = extract(fingers[0], 500)
    data = bytes([1, 16, 1, 2, 7, 9, 255, 0])
    [back] = decode(_with_area(t, data, header_counted))
    np.testing.assert_array_equal(back.orientation.angle, [[7, 9]])
    np.testing.assert_array_equal(back.orientation.coherence, [[255, 0]])


def test_a_template_without_a_field_is_encoded_as_before_and_still_matches(finger_generator):
    finger = finger_generator.finger(2)
    a, b = (extract(finger.impression(i).image, 500) for i in range(2))
    old_a, old_b = replace(a, orientation=None), replace(b, orientation=None)
    record = encode(old_a)
    assert record.endswith(b"\x00\x00")  # no extended data, as before the field existed
    assert decode(record)[0].orientation is None
    with_field = match(a, b)
    old = match(old_a, old_b)
    assert old > 0 and with_field > 0
    # Without a field the pair is taken to agree like a high impostor: never scored above the fused genuine pair.
    assert old <= with_field
    assert match(a, old_b) == pytest.approx(old)


def test_gallery_with_and_without_fields_scores_like_pairwise_matching(finger_generator, assert_same_scores):
    """Stack, growth of the field grid (a larger image later), removal: the same scores as 1:1 matching
    (to the BLAS kernel's rounding: see conftest)."""
    finger = finger_generator.finger(3)
    small = [extract(finger.impression(i).image, 500) for i in range(3)]
    big_image = cv2.copyMakeBorder(finger.impression(3).image, 40, 40, 40, 40, cv2.BORDER_CONSTANT, value=235)
    big = extract(big_image, 500)
    items = [small[0], replace(small[1], orientation=None), small[2]]
    index = GalleryIndex()
    for n, t in enumerate(items):
        index.add(n, t)
    index.scores(small[0])  # packs the first three
    index.add(3, big)  # a larger field grid than any stacked so far
    index.remove(1)
    kept = [items[0], items[2], big]
    for probe in (small[0], big, replace(small[2], orientation=None)):
        assert_same_scores(index.scores(probe), [match(probe, t) for t in kept])


def test_a_field_larger_than_its_image_is_not_encoded(fingers):
    t = extract(fingers[0], 500)
    rows, cols = t.height // of.BLOCK + 3, t.width // of.BLOCK
    grid = np.ones((rows, cols), np.uint8)
    with pytest.raises(TemplateFormatError, match="does not fit"):
        encode(replace(t, orientation=OrientationField(of.BLOCK, grid, grid)))
    # One block of slack for the resolution's rounding: a grid up to the image's own size plus one still travels.
    fits = np.ones((t.height // of.BLOCK + 1, cols), np.uint8)
    [back] = decode(encode(replace(t, orientation=OrientationField(of.BLOCK, fits, fits))))
    assert back.orientation.angle.shape == fits.shape


def test_an_extracted_field_covers_its_minutiae_and_a_one_block_field_does_not(fingers):
    t = extract(fingers[0], 500)
    assert of.minutiae_coverage(t) >= of.MIN_COVERAGE
    grid = t.orientation.coherence
    one_block = np.zeros_like(grid)
    one_block[tuple(np.argwhere(grid > 0)[0])] = 200
    tiny = replace(t, orientation=OrientationField(of.BLOCK, t.orientation.angle, one_block))
    assert of.minutiae_coverage(tiny) < of.MIN_COVERAGE
    assert of.minutiae_coverage(replace(t, orientation=None)) == 1.0  # nothing to check without a field


def weight_hidden_near_minutiae(template, heavy: int = 30):
    """The template's own field, its foreground kept but weighing ~1e-6 except the blocks nearest its minutiae."""
    f = template.orientation
    coherence = f.coherence.copy()
    yy, xx = np.nonzero(coherence)
    scale = 500.0 / template.resolution_dpi / of.BLOCK
    centre_y, centre_x = np.median(template.minutiae.y) * scale, np.median(template.minutiae.x) * scale
    nearest = np.argsort(np.hypot(yy - centre_y, xx - centre_x))[:heavy]
    coherence[yy, xx] = 1
    coherence[yy[nearest], xx[nearest]] = 255
    return replace(template, orientation=OrientationField(of.BLOCK, f.angle, coherence))


def test_a_field_hiding_its_weight_around_its_minutiae_spreads_it_less_than_an_extracted_one(fingers):
    """Coverage counts any foreground block, so a field sent with coherence 1 everywhere but next to its
    minutiae passes it while weighing almost nothing elsewhere (a review lifted impostors' field factor
    so); its weight spread gives it away."""
    for image in fingers[:3]:
        t = extract(image, 500)
        assert of.weight_spread(t.orientation) >= of.MIN_WEIGHT_SPREAD
        crafted = weight_hidden_near_minutiae(t)
        assert of.minutiae_coverage(crafted) >= of.MIN_COVERAGE  # the coverage rule alone lets it through
        assert of.weight_spread(crafted.orientation) < of.MIN_WEIGHT_SPREAD
    uniform = OrientationField(of.BLOCK, np.zeros((4, 4), np.uint8), np.full((4, 4), 90, np.uint8))
    assert of.weight_spread(uniform) == pytest.approx(1.0)


def test_a_grid_shrunk_away_from_the_minutiae_does_not_cover_them(fingers):
    """Minutiae past the grid counted as covered (from_maps drops partial edge blocks); only the partial
    block just past the last row or column may, and an empty grid covers nothing."""
    t = extract(fingers[0], 500)
    for rows, cols in ((0, 0), (0, 5), (1, 3)):
        grid = np.full((rows, cols), 200, np.uint8)
        shrunk = replace(t, orientation=OrientationField(of.BLOCK, grid, grid))
        assert of.minutiae_coverage(shrunk) < of.MIN_COVERAGE, (rows, cols)
    # The grid without its last row and column: minutiae in the dropped partial blocks still count.
    f = t.orientation
    trimmed = OrientationField(of.BLOCK, f.angle[:-1, :-1].copy(), f.coherence[:-1, :-1].copy())
    assert of.minutiae_coverage(replace(t, orientation=trimmed)) >= of.minutiae_coverage(t) - 0.05


def test_a_field_cut_down_to_a_few_blocks_cannot_claim_full_agreement(fingers, field):
    """Against itself a whole field agrees fully; the same field kept to one block would too, by chance,
    so a share from fewer than MIN_EFFECTIVE_BLOCKS compared blocks is capped at a typical impostor's."""
    shape = fingers[0].shape
    assert _agreement_under_rotation(field, field, 0.0, shape) > 0.95
    one_block = np.zeros_like(field.coherence)
    one_block[tuple(np.argwhere(field.coherence > 0)[len(np.argwhere(field.coherence > 0)) // 2])] = 255
    tiny = OrientationField(of.BLOCK, field.angle, one_block)
    assert _agreement_under_rotation(tiny, field, 0.0, shape) == pytest.approx(of.FEW_BLOCKS_SHARE)


def test_device_supplied_qualities_cannot_single_out_a_few_pairs():
    from biometrics.fingerprint.cylinders import RELIABILITY_FLOOR, _reliability
    from biometrics.fingerprint.mcc_match import MAX_RELIABILITY_WEIGHT, reliability_weights

    assert _reliability(np.array([1, 45, 80, 100, 0], np.uint8)).tolist() == pytest.approx(
        [RELIABILITY_FLOOR, 0.45, 0.8, 1.0, 1.0]
    )
    r = np.full((1, 12), RELIABILITY_FLOOR, np.float32)
    r[0, 0] = 1.0  # one minutia claimed certain, the rest at the floor
    w = reliability_weights(r, np.ones_like(r), np.ones((1, 12), bool))
    assert w.max() == pytest.approx(MAX_RELIABILITY_WEIGHT)


def test_a_template_made_in_process_with_other_blocks_is_refused_by_the_matcher(fingers):
    from biometrics.fingerprint.errors import TemplateError

    t = extract(fingers[0], 500)
    eight = replace(t, orientation=OrientationField(8, t.orientation.angle, t.orientation.coherence))
    with pytest.raises(TemplateError, match="16-pixel blocks"):
        match(eight, t)


def test_the_comparison_can_be_inspected_alignment_and_field_share(finger_generator):
    """consolidate hands a caller the alignment and the field share it scored with (as explain does for extraction)."""
    from biometrics.fingerprint import mcc_match
    from biometrics.fingerprint.matcher import cylinders_of

    finger = finger_generator.finger(2)
    a, b = (cylinders_of(extract(finger.impression(i).image, 500)) for i in (0, 1))
    gallery = mcc_match.pack([b])
    seen: dict = {}
    score = mcc_match.consolidate(mcc_match.local_similarity(a, gallery), a, gallery, seen)[0]
    assert score == pytest.approx(match(a, b))
    assert set(seen) >= {"some", "share", "rotation", "probe_anchor", "gallery_anchor"}
    assert seen["share"][0] > 0.8, "the same finger's fields agree under the alignment"


def _with_large_field(t, seed: int = 0):
    """``t`` claiming a 1024 x 1024 image with a full 64 x 64 field, the largest the decoder accepts
    (iso19794_2.field_limits): its own field in the top-left corner, random orientations on every other block."""
    from biometrics.fingerprint.iso19794_2 import field_limits

    rows, cols = field_limits(1024, 1024, t.resolution_dpi)
    rng = np.random.default_rng(seed)
    angle = rng.integers(0, 256, (rows, cols)).astype(np.uint8)
    coherence = np.full((rows, cols), 200, np.uint8)
    r, c = t.orientation.angle.shape
    angle[:r, :c] = t.orientation.angle
    coherence[:r, :c] = np.where(t.orientation.coherence > 0, t.orientation.coherence, 200)
    field = OrientationField(of.BLOCK, angle, coherence)
    [big] = decode(encode(replace(t, width=1024, height=1024, orientation=field)))
    assert big.orientation.angle.shape == (rows, cols) and rows * cols >= 60 * 60
    return big


def test_a_stack_stores_each_field_at_its_own_size_whatever_the_largest(synthetic_templates):
    """A template with the largest field the decoder accepts costs the stack its own grid and blocks only:
    the others are stored exactly as their own fields, not padded to its grid (which made every 1:N search
    22 to 60 % slower and every template's field memory tenfold)."""
    from biometrics.fingerprint import mcc_match
    from biometrics.fingerprint.matcher import cylinders_of

    templates = [t for ts in synthetic_templates.values() for t in ts]
    items = [*templates, _with_large_field(templates[0]), replace(templates[1], orientation=None)]
    fields = mcc_match.stack([cylinders_of(t) for t in items]).fields
    own = [t.orientation for t in items[:-1]]
    assert len(fields.cells) == 1 + sum(f.angle.size for f in own)  # one shared 0 block: outside every grid
    assert fields.cells[0] == 0
    assert len(fields.blocks) == sum(int((f.coherence > 0).sum()) for f in own)
    assert fields.has.tolist() == [True] * len(own) + [False]
    assert fields.block_count[-1] == fields.rows[-1] * fields.cols[-1] == 0
    for n, f in enumerate(own):
        assert (fields.rows[n], fields.cols[n]) == f.angle.shape
        grid = fields.cells[fields.start[n] : fields.start[n] + f.angle.size].reshape(f.angle.shape)
        np.testing.assert_array_equal(grid, of.vectors(f))
        blocks = fields.blocks[fields.block_start[n] : fields.block_start[n] + fields.block_count[n]]
        yy, xx = np.nonzero(f.coherence)
        np.testing.assert_array_equal(blocks[:, 1], of.vectors(f)[yy, xx])
        np.testing.assert_array_equal(blocks[:, 0], (xx * of.BLOCK + 7.5) + 1j * (yy * of.BLOCK + 7.5))


def test_gallery_fields_stay_unpadded_through_adds_and_compacting_removals(synthetic_templates, assert_same_scores):
    """Growth, a large field added to a packed gallery and removals that compact the field storage: scores
    equal 1:1 matching and a gallery built afresh (to the BLAS kernel's rounding: see conftest); the storage
    holds the live templates' own cells only once compacted."""
    templates = [t for ts in synthetic_templates.values() for t in ts]
    big = _with_large_field(templates[0])
    index = GalleryIndex()
    for n, t in enumerate(templates[:8]):
        index.add(n, t)
    index.scores(templates[0])  # stacks the first eight
    index.add("big", big)
    index.add(8, replace(templates[8], orientation=None))
    for n, t in enumerate(templates[9:], start=9):
        index.add(n, t)
    probes = (templates[0], big, templates[4], replace(templates[5], orientation=None))
    kept = [*templates[:8], big, replace(templates[8], orientation=None), *templates[9:]]
    for probe in probes:
        got = index.scores(probe)
        assert_same_scores(got, [match(probe, t) for t in kept])
    assert index.scores(big)[8] > 0.3 and index.scores(templates[0])[8] > 0.3  # the large field is compared

    def own_sizes(ts):  # cells of their grids, foreground blocks
        fs = [t.orientation for t in ts if t.orientation is not None]
        return 1 + sum(f.angle.size for f in fs), sum(int((f.coherence > 0).sum()) for f in fs)

    assert index.remove("big") == 1  # over a quarter of the cells and blocks: they are compacted
    fields = index._stack.view().fields
    assert (len(fields.cells), len(fields.blocks)) == own_sizes(kept[:8] + kept[9:])
    for n in (1, 2):  # under a quarter: left unreferenced until later removals
        assert index.remove(n) == 1
    live = [t for n, t in enumerate(kept) if n not in (1, 2, 8)]
    fresh = GalleryIndex()
    for n, t in enumerate(live):
        fresh.add(n, t)
    for probe in probes:
        assert_same_scores(index.scores(probe), fresh.scores(probe))
        assert_same_scores(index.scores(probe), [match(probe, t) for t in live])
    for n in (3, 4, 5):
        assert index.remove(n) == 1
    live = [t for n, t in enumerate(kept) if n not in (1, 2, 3, 4, 5, 8)]
    fields = index._stack.view().fields
    cells, blocks = own_sizes(live)
    assert 0 <= len(fields.cells) - cells <= len(fields.cells) // 4  # unreferenced: at most a quarter
    assert 0 <= len(fields.blocks) - blocks <= len(fields.blocks) // 4
    assert_same_scores(index.scores(probes[0]), [match(probes[0], t) for t in live])


def test_one_large_field_grows_a_gallerys_memory_by_its_own_size_only(synthetic_templates):
    """Enrolling the largest field the decoder accepts costs the gallery that field (its 64 x 64 blocks, grid
    and foreground rows: 96 KB) and not a copy of it per enrolled template (padded: 2 MB for this gallery's
    64 template slots)."""
    import tracemalloc

    templates = [t for ts in synthetic_templates.values() for t in ts]
    big = _with_large_field(templates[0])

    def growth(extra) -> int:
        tracemalloc.start()  # before the gallery is built: the storage that growth frees is counted too
        try:
            index = GalleryIndex()
            for n, t in enumerate(templates):
                index.add(n, t)
            index.scores(templates[1])  # stacks them
            before = tracemalloc.get_traced_memory()[0]
            index.add("extra", extra)
            index.scores(templates[1])  # stacks the new one
            return tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()

    own = big.orientation.angle.size * (8 + 16)  # complex64 cell per block, (centre, vector) row per foreground block
    # The same template without a field grows the cylinder storage alike: the difference is the field's (and
    # the field storages' growth room: at most half of the twelve small fields' 100 KB).
    assert growth(big) - growth(replace(big, orientation=None)) < 2 * own
