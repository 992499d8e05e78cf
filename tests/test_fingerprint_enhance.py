"""The analysis steps measure what they stand for: ridge period, orientation, foreground."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from biometrics.fingerprint import enhance


def _waves(period: float, angle: float, shape: tuple[int, int] = (200, 220), noise: float = 0.0) -> np.ndarray:
    """A unit sinusoid of ``period`` pixels whose gradient points along ``angle``, with optional white noise."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    wave = np.cos(2 * np.pi / period * (xx * np.cos(angle) + yy * np.sin(angle)))
    rng = np.random.default_rng(int(period * 100 + angle * 10))
    return (wave + noise * rng.standard_normal(shape)).astype(np.float32)


@pytest.mark.parametrize("period", [6.5, 8.0, 9.5, 11.0, 12.5])
def test_ridge_period_of_sinusoids_is_their_period_at_any_orientation(period):
    mask = np.zeros((200, 220), bool)
    mask[30:-30, 30:-30] = True
    for angle in (0.0, 0.5, 1.2, 2.6):
        got = enhance.ridge_period(_waves(period, angle, noise=0.1), mask)
        assert got == pytest.approx(period, abs=0.3), f"angle {angle}"


def test_orientation_is_the_gradient_direction_at_every_pixel_of_the_interior():
    for angle in (0.1, 0.8, 1.6, 2.9):
        norm = _waves(9.0, angle, noise=0.3)
        theta, coherence = enhance.orientation_field(norm)
        inner = (slice(20, -20), slice(20, -20))
        err = np.abs(np.angle(np.exp(2j * (theta[inner] - angle)))) / 2  # angles modulo pi
        assert theta.shape == norm.shape and coherence.shape == norm.shape
        assert np.degrees(err).max() < 3.0
        assert coherence[inner].min() > 0.5


def test_segmentation_covers_the_contact_and_little_else(finger_generator):
    from biometrics.fingerprint import analyse

    for finger in range(3):
        impression = finger_generator.finger(finger).impression(0)
        contact = impression.contact_mask > 0
        mask = analyse(impression.image).mask
        near = cv2.dilate(contact.view(np.uint8), np.ones((9, 9), np.uint8)).view(bool)
        assert (mask & contact).sum() > 0.95 * contact.sum(), f"finger {finger}"
        assert (mask & ~near).sum() < 0.06 * mask.sum(), f"finger {finger}"


def test_gabor_output_buffer_of_the_wrong_type_is_refused_not_left_zero():
    """A float64 or mis-shaped ``out`` would make OpenCV write elsewhere: the call refuses it."""
    norm = np.zeros((40, 50), np.float32)
    theta = np.zeros_like(norm)
    for bad in (np.zeros((40, 50), np.float64), np.zeros((40, 49), np.float32)):
        with pytest.raises(ValueError, match="float32 array of shape"):
            enhance.gabor_enhance(norm, theta, 9.0, out=bad)


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (5, 1), (33, 47)])
def test_label_mask_is_255_exactly_where_the_label_is(shape):
    # The 1x1 box takes another OpenCV call than the others (compare refuses it).
    labels = np.random.default_rng(shape[1]).integers(0, enhance.N_ORIENTATIONS + 1, shape).astype(np.uint8)
    for j in range(enhance.N_ORIENTATIONS):
        got = enhance._label_mask(labels, j)
        assert got.dtype == np.uint8 and got.shape == shape
        assert np.array_equal(got, np.where(labels == j, 255, 0))
