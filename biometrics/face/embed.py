"""The embedding: SFace's 128 numbers for an aligned face, L2-normalised float32.

The input is what ``cv2.FaceRecognizerSF`` feeds the net: the 112x112 BGR crop
as RGB, pixel values unscaled. ``FaceRecognizerSF.feature()`` fails on OpenCV 5
with the int8 SFace model because it sets the net's input without a name, which
OpenCV 5's new graph engine refuses when the graph has initialisers among its
inputs. The net is therefore read here directly (from the very bytes whose
digest was checked) and its input set by name, ``data`` in the pinned graph. On
OpenCV 5 that runs the new engine, measured to give the classic engine's
features (cosine 0.9999999) in about 60 % of its time (20 ms against 33 ms,
one core); OpenCV 4.x gives the same features as ``FaceRecognizerSF.feature``.

Test-time flip augmentation (the crop and its mirror embedded, averaged,
re-normalised) was measured on ORL and not adopted: EER 0.611 % -> 0.555 % (one
genuine pair of 1,800), TAR at FAR 0.1 % unchanged at 99.2 %, held-out FMR at
the 0.1 % threshold 0.46 % -> 0.45 %, for twice the embedding time (about 38 ms
CPU on one core whether as two calls or one batch of two through either engine:
this int8 net's cost is linear in the batch: 20.2 ms for one, 39.7 ms for a
batch of two on the new engine), over the 30 ms budget. Flipping only the faces
the landmarks say are turned (|yaw| over 15, 20 or 25 degrees: 16, 5.5 and 2 %
of ORL's images, so the median time stays) gave the same 0.555 % with bilinear
alignment, and with the Lanczos alignment now used it lost a pair (0.50 % ->
0.555 %): not adopted either.
"""

from __future__ import annotations

import cv2
import numpy as np

from biometrics.face import models
from biometrics.face.align import CROP_SIZE
from biometrics.face.errors import FaceImageError

DIM = 128
MODEL_NAME = models.SFACE.name


INPUT_NAME = "data"  # the input of the pinned SFace graph


def read_net(model: models.CheckedModel) -> cv2.dnn.Net:
    """The checked model's bytes as an OpenCV net (OpenCV's default engine)."""
    return cv2.dnn.readNetFromONNX(np.frombuffer(model.data, np.uint8))


class Embedder:
    """SFace loaded once from its checked bytes; one instance per thread."""

    model_name = MODEL_NAME
    dim = DIM

    def __init__(self, model: models.CheckedModel | None = None) -> None:
        checked = models.check(models.SFACE) if model is None else model
        if checked.spec != models.SFACE:
            raise models.FaceModelError(f"the embedder runs {models.SFACE.name}, not {checked.spec.name}")
        self._net = read_net(checked)

    def embed(self, aligned: np.ndarray) -> np.ndarray:
        """(128,) float32 unit vector of an aligned 112x112 BGR crop (from :func:`biometrics.face.align.align`)."""
        if not (
            isinstance(aligned, np.ndarray) and aligned.dtype == np.uint8 and aligned.shape == (CROP_SIZE, CROP_SIZE, 3)
        ):
            shape = getattr(aligned, "shape", None)
            raise FaceImageError(f"embed takes the 112x112x3 uint8 crop made by align(), got {shape}")
        blob = cv2.dnn.blobFromImage(aligned, 1.0, (CROP_SIZE, CROP_SIZE), (0, 0, 0), swapRB=True, crop=False)
        self._net.setInput(blob, INPUT_NAME)
        out = np.asarray(self._net.forward(), np.float32).reshape(-1)
        norm = float(np.linalg.norm(out))
        if out.shape != (DIM,) or not np.isfinite(norm) or norm == 0.0:
            raise FaceImageError("the embedding net gave no usable output for this crop; capture another frame")
        return out / norm
