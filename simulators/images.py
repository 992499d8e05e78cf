"""Image files for the simulators, read as bytes and decoded by OpenCV: any path, a typed error naming the fix.

``cv2.imread`` takes a path as a C string: a name that is not UTF-8 (a folder
copied from another system; the simulator CLI passes such names on as
surrogate escapes) is not found, or fails inside OpenCV, and a file it cannot
decode is an anonymous None. Here Python opens the file (``Path.read_bytes``
takes any name the file system has) and ``cv2.imdecode`` decodes the bytes;
every way it can fail is an :class:`~simulators.errors.UnreadableImage` that
says which file and what to do. Before OpenCV allocates anything, the size the
file's header declares is read (:mod:`simulators.image_headers`) and bounded by
:data:`MAX_IMAGE_PIXELS`: a small file can declare a huge image.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import cv2
import numpy as np

from simulators.errors import UnreadableImage
from simulators.image_headers import FORMATS, ImageHeaderError, declared_size

MAX_IMAGE_FILE_BYTES = 64 << 20  # a 4096x4096 PNG is well under this; larger is no test image
MAX_IMAGE_PIXELS = 8192 * 8192  # a 48-megapixel photo fits (8000x6000: 144 MB in colour); a bomb's 1e9 does not
DEFAULT_FIX = f"replace it with a {FORMATS} image, or remove it"


def shown(path: str | os.PathLike[str]) -> str:
    """A path for a message: bytes that are not UTF-8 (surrogate escapes) as \\udcXX, never an encoding error."""
    return os.fspath(path).encode("utf-8", "backslashreplace").decode("utf-8")


def folders_inside(folder: str | os.PathLike[str], *, most: int = 4) -> str:
    """``"; it holds folders (DB1_B, DB2_B, ...): give one of them"`` for a folder of folders, else "".

    Why: the data sets come as a folder of folders (att_faces/s1..s40, fvc2002/DB1_B..DB4_B); --images given
    the top one was told "no images in it: put images in it", as if the folder were empty.
    """
    try:
        names = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
    except OSError:
        return ""
    if not names:
        return ""
    listed = ", ".join(names[:most]) + (", ..." if len(names) > most else "")
    return f"; it holds folders ({listed}): give one of them, e.g. {Path(folder) / names[0]}"


def _unreadable(exc: OSError | ValueError, name: str, fix: str) -> UnreadableImage:
    """The typed error for a file that could not be opened or read, by what the OS said."""
    if isinstance(exc, FileNotFoundError):
        missing_fix = fix if fix != DEFAULT_FIX else "give the path of an image file"  # the caller's says which
        return UnreadableImage(f"{name} does not exist", missing_fix, name)
    if isinstance(exc, PermissionError):
        return UnreadableImage(
            f"{name} may not be read by this user", "make it readable (chmod a+r) or give another", name
        )
    if isinstance(exc, ValueError):  # a NUL byte in the name: no file can have it
        return UnreadableImage(
            f"{name!r} is no file name (it holds a NUL byte)", "give the path of an image file", name
        )
    # a name too long, a loop of links, an I/O error
    reason = exc.strerror or exc
    return UnreadableImage(f"{name} cannot be read: {reason}", "give the path of a readable image file", name)


def _check_declared_size(data: bytes, name: str, fix: str) -> None:
    """Refuse a file whose header is no known image's, or declares an empty or oversized one, before decoding."""
    try:
        declared = declared_size(data)
    except ImageHeaderError as exc:
        raise UnreadableImage(f"{name} is not a readable image: {exc}", fix, name) from None
    size = f"{declared.width}x{declared.height}"
    if declared.width == 0 or declared.height == 0:
        raise UnreadableImage(f"{name} is not a readable image: its {declared.format} header says {size}", fix, name)
    if declared.width * declared.height > MAX_IMAGE_PIXELS:
        raise UnreadableImage(
            f"{name} declares a {size} {declared.format} image, more than the {MAX_IMAGE_PIXELS:,} pixels "
            "(8192x8192) a simulator decodes",
            "scale it down: a camera scene is shown at the camera's size (at most 4096x4096) and a fingerprint "
            "is a few hundred pixels a side",
            name,
        )


def read_image(path: str | os.PathLike[str], *, color: bool = False, fix: str = DEFAULT_FIX) -> np.ndarray:
    """The image in ``path``: uint8 grey (``color`` False) or BGR; UnreadableImage naming ``fix`` if it is none.

    Only a regular file is read, whole and at most :data:`MAX_IMAGE_FILE_BYTES` of it, so a missing file, a
    folder, a device or pipe, a file this user may not read, an empty one, one of no format named in
    ``FORMATS``, one declaring more than :data:`MAX_IMAGE_PIXELS` and one OpenCV cannot decode each get
    their own message.
    """
    where = Path(path)
    name = shown(where)
    try:
        status = where.stat()
    except (OSError, ValueError) as exc:
        raise _unreadable(exc, name, fix) from None
    if stat.S_ISDIR(status.st_mode):
        raise UnreadableImage(f"{name} is a folder, not an image", "give an image file", name)
    if not stat.S_ISREG(status.st_mode):  # /dev/zero says 0 bytes and never ends; a FIFO blocks the reader
        raise UnreadableImage(
            f"{name} is not a regular file (a device, a pipe or a socket)", "give the path of an image file", name
        )
    try:
        with where.open("rb") as file:
            data = file.read(MAX_IMAGE_FILE_BYTES + 1)  # bounded even if the file grew since stat
    except (OSError, ValueError) as exc:
        raise _unreadable(exc, name, fix) from None
    if len(data) > MAX_IMAGE_FILE_BYTES:
        raise UnreadableImage(
            f"{name} holds more than the {MAX_IMAGE_FILE_BYTES} bytes of any test image", fix, name
        )
    if data:
        _check_declared_size(data, name, fix)
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
