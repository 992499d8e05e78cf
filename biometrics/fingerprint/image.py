"""Input checks and resolution normalisation.

Every algorithm downstream is written for 500 dpi (ridge period about 9 pixels),
so images at other resolutions are resampled once here and coordinates are mapped
back at the end. Checks run first so that a bad capture gets a typed error naming
the fix instead of a numpy exception from deep inside the pipeline.
"""

from __future__ import annotations

import cv2
import numpy as np

from biometrics.fingerprint.errors import FingerprintImageError

REFERENCE_DPI = 500
MIN_SIDE_MM = 6.0  # below this a finger cannot hold enough minutiae to match
MIN_DPI, MAX_DPI = 250, 1200
BLANK_STD = 2.0  # grey levels: a sensor with nothing on it is this flat


def check_image(image: object, resolution_dpi: int, *, allow_blank: bool = False) -> np.ndarray:
    """Return ``image`` as a 2-D uint8 array or raise FingerprintImageError.

    ``allow_blank`` is for quality assessment, where an empty sensor is an answer
    (``place_finger``) rather than an error.
    """
    if not isinstance(image, np.ndarray):
        raise FingerprintImageError(
            f"expected a numpy array, got {type(image).__name__}: pass the capture as np.ndarray"
        )
    if not isinstance(resolution_dpi, int | np.integer) or not MIN_DPI <= int(resolution_dpi) <= MAX_DPI:
        raise FingerprintImageError(
            f"resolution_dpi={resolution_dpi!r} is outside {MIN_DPI}..{MAX_DPI}: pass the sensor's resolution"
        )
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim != 2:
        raise FingerprintImageError(
            f"expected a 2-D greyscale image, got shape {image.shape}: convert colour captures to grey first"
        )
    if image.dtype != np.uint8:
        raise FingerprintImageError(
            f"expected dtype uint8, got {image.dtype}: scale the capture to 0..255 and cast to uint8"
        )
    min_side = int(np.ceil(MIN_SIDE_MM / 25.4 * int(resolution_dpi)))
    if min(image.shape) < min_side:
        raise FingerprintImageError(
            f"image {image.shape[1]}x{image.shape[0]} is too small: at {resolution_dpi} dpi each side "
            f"needs at least {min_side} pixels ({MIN_SIDE_MM} mm); capture a larger area"
        )
    if not allow_blank and float(cv2.meanStdDev(image)[1][0, 0]) < BLANK_STD:
        raise FingerprintImageError("the image is blank: place a finger on the sensor and capture again")
    return image


def to_reference_resolution(image: np.ndarray, resolution_dpi: int) -> tuple[np.ndarray, float]:
    """Resample to 500 dpi; return the image and the scale (reference pixels per input pixel)."""
    scale = REFERENCE_DPI / float(resolution_dpi)
    if abs(scale - 1.0) < 1e-3:
        return image, 1.0
    h, w = image.shape
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    interp = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR
    return cv2.resize(image, size, interpolation=interp), scale


def shrink(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``cv2.resize(image, size, interpolation=cv2.INTER_AREA)`` to a smaller (width, height), the same values.

    OpenCV averages whole blocks on a fast path only when both factors are
    integers; otherwise it takes a general path several times slower. When the
    width divides and the height does not (a 374-pixel-high FVC2002 DB1 image
    in quarters), averaging along x alone (fast path) and then along y alone
    (general path, on an image a factor narrower) gives the same values bit for
    bit: the general path also sums along x first, with the same weights of
    exactly 1/factor (tests compare the two on many shapes and value ranges).
    Floating-point images only: an integer image would be rounded between the
    two passes, so it takes OpenCV's single pass.
    """
    h, w = image.shape[:2]
    width, height = size
    if w % width or not h % height or image.dtype.kind != "f":
        return cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    narrow = cv2.resize(image, (width, h), interpolation=cv2.INTER_AREA)
    return cv2.resize(narrow, size, interpolation=cv2.INTER_AREA)
