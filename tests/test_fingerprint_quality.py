"""Capture quality: scores and feedback codes for typical bad captures."""

from __future__ import annotations

import numpy as np
import pytest

from biometrics.fingerprint import FingerprintImageError, assess_quality

VOCABULARY = {
    "place_finger",
    "lift_finger",
    "press_harder",
    "finger_too_dry",
    "move_left",
    "move_right",
    "move_up",
    "move_down",
    "too_fast",
    "clean_sensor",
    "sensor_too_hot",
    "hold_still",
}


def test_a_good_capture_scores_high_without_feedback(synthetic_print):
    q = assess_quality(synthetic_print(0).image)
    assert q.score >= 80
    assert q.feedback == ()


def test_a_blank_sensor_asks_to_place_a_finger():
    q = assess_quality(np.full((300, 300), 230, np.uint8))
    assert q.score == 0
    assert q.feedback == ("place_finger",)


@pytest.mark.parametrize(
    "surface",
    [
        np.tile(np.linspace(0, 255, 300).astype(np.uint8), (300, 1)),  # smooth gradient
        ((np.indices((300, 300)).sum(axis=0) // 3) % 2 * 255).astype(np.uint8),  # texture finer than ridges
    ],
)
def test_a_surface_without_ridges_is_not_a_finger(surface):
    q = assess_quality(surface)
    assert q.score == 0
    assert q.feedback == ("place_finger",)
    assert q.reasons == ("no_ridges",)


def test_an_off_centre_finger_is_asked_to_move_towards_the_centre(synthetic_print):
    img = synthetic_print(1).image
    shifted = np.full_like(img, 235)
    shifted[:, 120:] = img[:, :-120]  # finger pushed to the right, cut by the edge
    q = assess_quality(shifted)
    assert "move_left" in q.feedback
    assert q.score < assess_quality(img).score
    mirrored = assess_quality(np.ascontiguousarray(shifted[:, ::-1]))
    assert "move_right" in mirrored.feedback


def test_a_small_contact_area_asks_to_press_harder(synthetic_print):
    img = synthetic_print(2).image
    small = np.full_like(img, 235)
    small[130:190, 120:180] = img[130:190, 120:180]  # a fingertip barely touching
    q = assess_quality(small)
    assert q.score < 50
    assert "press_harder" in q.feedback
    assert "small_area" in q.reasons


def test_a_smudged_capture_scores_low(synthetic_print):
    img = synthetic_print(3).image.astype(np.float32)
    rng = np.random.default_rng(0)
    smudge = np.where(img < 235, 60 + rng.normal(0, 25, img.shape), img)
    q = assess_quality(np.clip(smudge, 0, 255).astype(np.uint8))
    assert q.score < 50
    assert q.feedback and set(q.feedback) <= VOCABULARY


@pytest.mark.parametrize("seed", range(4))
def test_feedback_uses_only_the_project_vocabulary(synthetic_print, seed):
    assert set(assess_quality(synthetic_print(seed).image).feedback) <= VOCABULARY


def test_quality_still_rejects_images_it_cannot_read():
    with pytest.raises(FingerprintImageError):
        assess_quality(np.zeros((300, 300), np.float64))
