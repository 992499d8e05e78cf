"""A person in front of the simulated camera: ORL face images posed as the liveness prompts ask.

ORL / AT&T faces are 92x112 grey images of 40 people, some looking at the
camera and some turned. A person here is a frontal image and one turned to the
person's right; the mirror image of the turn is the turn to the left. Each is
scaled x2 onto a plain wall of the camera's size, as a face at arm's length.
What the person does on each prompt (and how late) is the caller's: a test or
the demo switches the camera's scene on the session's prompts.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from simulators.errors import SimulatorError
from simulators.images import read_image

WALL = 120  # the grey of the wall behind the person


def on_canvas(face: np.ndarray, size: tuple[int, int] = (320, 240)) -> np.ndarray:
    """``face`` (grey or BGR) scaled x2 and centred on a plain wall of ``size`` (width, height), BGR."""
    width, height = size
    if face.ndim == 2:
        face = cv2.cvtColor(face, cv2.COLOR_GRAY2BGR)
    h, w = face.shape[0] * 2, face.shape[1] * 2
    if h > height or w > width:
        raise ValueError(f"a {w}x{h} face does not fit a {width}x{height} camera")
    canvas = np.full((height, width, 3), WALL, np.uint8)
    top, left = (height - h) // 2, (width - w) // 2
    canvas[top : top + h, left : left + w] = cv2.resize(face, (w, h), interpolation=cv2.INTER_LINEAR)
    return canvas


def poses(
    folder: Path, frontal: str, turned: str, size: tuple[int, int] = (320, 240), *, turned_to: str = "right"
) -> dict[str, np.ndarray]:
    """The frames of a person for each prompt code: ``look_at_camera``, ``turn_head_right``, ``turn_head_left``.

    ``turned`` is an image of the person turned to their ``turned_to`` side; its mirror image is the other
    turn. Why the side: ORL's people turn either way, and the images whose landmarks move least from the
    frontal one (so that a rig's one-frame switch passes the daemon's tracker, see README "Faces in a rig")
    are turned to the person's left.
    """
    if turned_to not in ("left", "right"):
        raise SimulatorError(f"turned_to {turned_to!r} is no side", 'give turned_to="left" or "right"')

    def read(name: str) -> np.ndarray:
        fix = "give a folder of the ORL / AT&T faces (s1 ... s40, each holding 1.pgm ... 10.pgm)"
        return read_image(Path(folder) / f"{name}.pgm", color=True, fix=fix)

    image = read(turned)
    mirrored = np.ascontiguousarray(image[:, ::-1])
    right, left = (image, mirrored) if turned_to == "right" else (mirrored, image)
    return {
        "look_at_camera": on_canvas(read(frontal), size),
        "turn_head_right": on_canvas(right, size),
        "turn_head_left": on_canvas(left, size),
    }
