"""Image files for the simulators, read as bytes and decoded by OpenCV: any path, a typed error naming the fix.

``cv2.imread`` takes a path as a C string: a name that is not UTF-8 (a folder
copied from another system; the simulator CLI passes such names on as
surrogate escapes) is not found, or fails inside OpenCV, and a file it cannot
decode is an anonymous None. Here Python opens the file (``Path.read_bytes``
takes any name the file system has) and ``cv2.imdecode`` decodes the bytes;
every way it can fail is an :class:`~simulators.errors.UnreadableImage` that
says which file and what to do.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from simulators.errors import UnreadableImage

MAX_IMAGE_FILE_BYTES = 64 << 20  # a 4096x4096 PNG is well under this; larger is no test image
DEFAULT_FIX = "replace it with a JPEG, PNG, PGM, BMP or TIFF image, or remove it"


def shown(path: str | os.PathLike[str]) -> str:
    """A path for a message: bytes that are not UTF-8 (surrogate escapes) as \\udcXX, never an encoding error."""
    return os.fspath(path).encode("utf-8", "backslashreplace").decode("utf-8")


def read_image(path: str | os.PathLike[str], *, color: bool = False, fix: str = DEFAULT_FIX) -> np.ndarray:
    """The image in ``path``: uint8 grey (``color`` False) or BGR; UnreadableImage naming ``fix`` if it is none.

    The file is read whole first (bounded by :data:`MAX_IMAGE_FILE_BYTES`), so a missing file, a folder,
    a file this user may not read, an empty one and one OpenCV cannot decode each get their own message.
    """
    where = Path(path)
    name = shown(where)
    try:
        size = where.stat().st_size
        if where.is_dir():
            raise UnreadableImage(f"{name} is a folder, not an image", "give an image file", name)
        if size > MAX_IMAGE_FILE_BYTES:
            raise UnreadableImage(
                f"{name} holds {size} bytes, more than the {MAX_IMAGE_FILE_BYTES} of any test image", fix, name
            )
        data = where.read_bytes()
    except FileNotFoundError:
        missing_fix = fix if fix != DEFAULT_FIX else "give the path of an image file"  # the caller's says which
        raise UnreadableImage(f"{name} does not exist", missing_fix, name) from None
    except PermissionError:
        raise UnreadableImage(
            f"{name} may not be read by this user", "make it readable (chmod a+r) or give another", name
        ) from None
    except OSError as exc:  # a name too long, a loop of links, an I/O error
        raise UnreadableImage(
            f"{name} cannot be read: {exc.strerror or exc}", "give the path of a readable image file", name
        ) from None
    image = None
    if data:
        try:
            image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR if color else cv2.IMREAD_GRAYSCALE)
        except cv2.error:  # OpenCV refuses some broken headers by raising rather than returning None
            image = None
    if image is None:
        empty = " (it is empty)" if not data else ""
        raise UnreadableImage(f"{name} is not a readable image{empty}", fix, name)
    return image
