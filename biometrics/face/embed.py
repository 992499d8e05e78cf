"""The embedding: SFace's 128 numbers for an aligned face, L2-normalised float32.

OpenCV 5's new DNN graph engine fails on the int8 block-quantised SFace inside
``FaceRecognizerSF.feature()``; the classic engine (``cv2.dnn.ENGINE_CLASSIC``,
selected when this OpenCV has it) runs it and gives the features OpenCV 4.x
gives. The input is what ``FaceRecognizerSF`` feeds the net: the 112x112 BGR
crop as RGB, pixel values unscaled.
"""

from __future__ import annotations

import cv2
import numpy as np

from biometrics.face import models
from biometrics.face.align import CROP_SIZE
from biometrics.face.errors import FaceImageError

DIM = 128
MODEL_NAME = models.SFACE.name


def read_net(model: models.CheckedModel) -> cv2.dnn.Net:
    """The checked model as an OpenCV net, on the classic engine when this OpenCV has a choice of engines.

    OpenCV 5.0's from-memory reader ignores the engine argument (the new engine
    then fails at ``setInput``), so on 5.x the net is read from the checked path.
    """
    engine = getattr(cv2.dnn, "ENGINE_CLASSIC", None)
    if engine is None:  # OpenCV 4.x: one engine, load the very bytes that were hashed
        return cv2.dnn.readNetFromONNX(np.frombuffer(model.data, np.uint8))
    return cv2.dnn.readNetFromONNX(str(model.path), engine)


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
        self._net.setInput(blob)
        out = np.asarray(self._net.forward(), np.float32).reshape(-1)
        norm = float(np.linalg.norm(out))
        if out.shape != (DIM,) or not np.isfinite(norm) or norm == 0.0:
            raise FaceImageError("the embedding net gave no usable output for this crop; capture another frame")
        return out / norm
