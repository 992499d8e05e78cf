"""A network camera for test rigs: MJPEG over HTTP on 127.0.0.1, the protocol real IP cameras speak.

``GET /stream.mjpg`` answers ``multipart/x-mixed-replace`` with one JPEG part
per frame, the protocol of most IP cameras' MJPEG streams. The camera driver
reads it over that real protocol with its own bounded multipart reader
(:mod:`drivers.camera.stream`) and decodes each frame with ``cv2.imdecode``;
``cv2.VideoCapture`` (FFmpeg) opens the same URL too, for a comparison.

What the rig controls: the scene (a folder of images shown in turn, a still,
nothing in front of the camera, darkness, glare), the frame rate, unplug /
replug (every connection dropped and the port closed; back on the same port),
and garbage: every part a JPEG whose header reads right (its size) but that no
decoder can decode, as a broken camera's firmware sends, until the next scene.
Each frame carries its sequence number in a bar code along its top rows, so a
reader can tell which frame it got and when it was sent (:meth:`sent_at`):
that is how the camera's frame latency is measured.
"""

from __future__ import annotations

import contextlib
import math
import socket
import threading
import time
from collections import OrderedDict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np

from drivers.camera.camera import MAX_SIDE
from simulators.errors import SimulatorError
from simulators.images import folders_inside, read_image, shown

BOUNDARY = "frame"
CODE_BITS = 20  # frame numbers in the bar code (wraps after 1 M frames)
CODE_CELL = 6  # pixels a bit: survives JPEG (the code is 120 pixels wide)
CODE_ROWS = 8
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".pgm", ".bmp", ".tif", ".tiff"}
# The smallest frame: as wide as the frame-number bar code, and tall enough for a face the detector finds.
MIN_WIDTH, MIN_HEIGHT = CODE_BITS * CODE_CELL, 32
MAX_FPS = 120.0  # the fastest real cameras; a rate is what paces the stream, so it must be a real one
MIN_FPS = 0.1  # a frame every 10 s: slower leaves a reader's read timeout waiting on a live camera
SHUTDOWN_POLL_S = 0.05  # how often the HTTP server looks for a stop (unplug, stop): see replug


def check_size(size: tuple[int, int]) -> tuple[int, int]:
    """(width, height) of a frame the camera can serve and the agent's camera driver accepts."""
    width, height = size
    if not (MIN_WIDTH <= width <= MAX_SIDE and MIN_HEIGHT <= height <= MAX_SIDE):
        raise SimulatorError(
            f"a {width}x{height} frame is outside what the camera serves",
            f"give a size from {MIN_WIDTH}x{MIN_HEIGHT} to {MAX_SIDE}x{MAX_SIDE}, e.g. 640x480",
        )
    return int(width), int(height)


def check_fps(fps: float) -> float:
    """A frame rate that paces a stream: :data:`MIN_FPS` to :data:`MAX_FPS` (0 would divide, NaN never wait)."""
    if isinstance(fps, bool) or not (isinstance(fps, int | float) and math.isfinite(fps) and MIN_FPS <= fps <= MAX_FPS):
        raise SimulatorError(
            f"{fps!r} frames a second is no camera's rate", f"give a number from {MIN_FPS:g} to {MAX_FPS:g}, e.g. 15"
        )
    return float(fps)


def stamp(frame: np.ndarray, seq: int) -> np.ndarray:
    """Write ``seq`` as black/white cells into the top rows (vectorised)."""
    bits = (seq >> np.arange(CODE_BITS - 1, -1, -1)) & 1
    row = np.repeat(bits.astype(np.uint8) * 255, CODE_CELL)
    out = frame.copy()
    out[:CODE_ROWS, : row.size] = row[None, :, None] if out.ndim == 3 else row[None, :]
    return out


def read_stamp(frame: np.ndarray) -> int:
    """The frame number written by :func:`stamp` (a camera frame, possibly JPEG-blurred)."""
    grey = frame if frame.ndim == 2 else frame.mean(axis=2)
    cells = grey[CODE_ROWS // 2, CODE_CELL // 2 : CODE_BITS * CODE_CELL : CODE_CELL]
    bits = (cells > 127).astype(np.int64)
    return int((bits << np.arange(CODE_BITS - 1, -1, -1)).sum())


def undecodable(jpeg: bytes) -> bytes:
    """``jpeg`` (a baseline JPEG from cv2.imencode) with its components' sampling factors zeroed: its header
    still gives its size, and no decoder decodes it (libjpeg: "Bogus sampling factors")."""
    data = bytearray(jpeg)
    sof = data.index(b"\xff\xc0")
    for component in range(data[sof + 9]):
        data[sof + 10 + 3 * component + 1] = 0
    return bytes(data)


def _load(path: Path, size: tuple[int, int]) -> np.ndarray:
    image = read_image(path, color=True, fix="replace it with a JPEG or PNG, or remove it from the folder")
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


class SimulatedCamera:
    """An MJPEG camera on a free port of 127.0.0.1. Use as a context manager, or start() / stop()."""

    def __init__(self, size: tuple[int, int] = (640, 480), fps: float = 15.0, quality: int = 85) -> None:
        self.size = check_size(size)
        self.fps = fps
        self.quality = quality
        self.port = 0
        self._scene: list[np.ndarray] = [self._nothing()]
        self._frames: list[np.ndarray] = self._scene
        self._garbage = False  # parts no decoder can decode (see garbage()), until the next scene
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._clients: set[socket.socket] = set()
        self._seq = 0
        self._sent: OrderedDict[int, float] = OrderedDict()
        self.plugged = False
        # Set when the camera is unplugged: a stream between two frames wakes at once instead of sleeping out a
        # slow camera's frame interval (seconds at a low fps) after its server has stopped. One per plug-in.
        self._unplugged = threading.Event()

    @property
    def fps(self) -> float:
        """Frames a second; a rig may change it while streams run (checked: see :func:`check_fps`)."""
        return self._fps

    @fps.setter
    def fps(self, value: float) -> None:
        self._fps = check_fps(value)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/stream.mjpg"

    # ------------------------------------------------------------ scenes
    def _nothing(self) -> np.ndarray:
        """An empty room: a soft grey gradient, no face, no finger."""
        w, h = self.size
        ramp = np.linspace(90, 150, w, dtype=np.float32)[None, :].repeat(h, axis=0)
        return np.repeat(ramp[:, :, None], 3, axis=2).astype(np.uint8)

    def _set(self, scene: list[np.ndarray] | None = None, effect: str = "none") -> None:
        """The scene (base images) and an effect on it; the frames served are computed once here."""
        with self._lock:
            if scene is not None:
                self._scene = scene
            base = self._scene
        if effect == "dark":
            frames = [f // 12 for f in base]
        elif effect == "glare":
            frames = [np.clip(f.astype(np.int16) * 3 + 120, 0, 255).astype(np.uint8) for f in base]
        else:
            frames = list(base)
        with self._lock:
            self._frames = frames
            self._garbage = False

    def show_folder(self, folder: Path) -> int:
        name = shown(folder)
        if not Path(folder).is_dir():
            raise SimulatorError(f"{name} is not a folder", "give a folder of images (JPEG, PNG, PGM, BMP, TIFF)")
        paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            raise SimulatorError(
                f"no images in {name}",
                f"put images ({', '.join(sorted(IMAGE_SUFFIXES))}) in it, or give another{folders_inside(folder)}",
            )
        self._set([_load(p, self.size) for p in paths])
        return len(paths)

    def show(self, image: np.ndarray) -> None:
        """A still: this image on every frame (8-bit grey, BGR or BGRA, resized to the camera's size).

        Anything else is a SimulatorError here. Why: a two-channel image was taken, and every stream then died on
        its first frame with OpenCV's traceback on stderr (a camera that opened and sent nothing); a float image
        was served black.
        """
        if (
            not isinstance(image, np.ndarray)
            or image.dtype != np.uint8
            or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 3, 4)))
            or 0 in image.shape
        ):
            shape, dtype = getattr(image, "shape", None), getattr(image, "dtype", type(image).__name__)
            raise SimulatorError(
                f"an image of {dtype} and shape {shape} is no camera frame",
                "give an 8-bit grey (HxW), BGR (HxWx3) or BGRA (HxWx4) image, e.g. from cv2.imread",
            )
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[:, :, 0]
        frame = cv2.resize(image, self.size, interpolation=cv2.INTER_AREA)
        if frame.ndim == 2:
            frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
        elif frame.shape[2] == 4:
            frame = cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
        self._set([frame])

    def nothing(self) -> None:
        """Nobody in front of the camera."""
        self._set([self._nothing()])

    def dark(self) -> None:
        """The scene with the lights off."""
        self._set(effect="dark")

    def glare(self) -> None:
        """The scene washed out by a light behind it."""
        self._set(effect="glare")

    def garbage(self) -> None:
        """A broken camera: every part a JPEG of the camera's size, by its header, that does not decode (its
        components' sampling factors are zero); the next scene (show, nothing, dark, glare) ends it."""
        with self._lock:
            self._garbage = True

    @property
    def streams(self) -> int:
        """Streams being served now: a test reads it to know a stopped camera left no stream thread behind."""
        with self._lock:
            return len(self._clients)

    @property
    def next_seq(self) -> int:
        """The frame number (its stamp, :func:`read_stamp`) the next frame will carry: every frame from it on shows
        the scene set before it was read. Why: a test waited a fixed time after a change of scene for the frames to
        show it, which a loaded machine can outlast (frames in flight, a driver that has not yet read them)."""
        with self._lock:
            return self._seq

    def sent_at(self, seq: int) -> float | None:
        """When frame ``seq`` left the camera (time.monotonic), for latency figures."""
        with self._lock:
            return self._sent.get(seq)

    # ------------------------------------------------------------ serving
    def start(self) -> SimulatedCamera:
        self.replug()
        return self

    def stop(self) -> None:
        self.unplug()

    def __enter__(self) -> SimulatedCamera:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def replug(self) -> None:
        """Listen (again) on the same port."""
        if self._server is not None:
            return
        camera = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # no access log on stderr
                pass

            def do_GET(self) -> None:
                if self.path.split("?")[0] != "/stream.mjpg":
                    self.send_error(404, "the stream is at /stream.mjpg")
                    return
                camera._serve_stream(self)

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._server = Server(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        # serve_forever looks for shutdown() every poll interval (0.5 s by default): each unplug and stop waited
        # that long, for nothing. Twenty looks a second cost nothing next to the frames it serves.
        self._thread = threading.Thread(target=self._server.serve_forever, args=(SHUTDOWN_POLL_S,),
                                        name="camera-sim", daemon=True)
        self._unplugged = threading.Event()
        self._thread.start()
        self.plugged = True

    def unplug(self) -> None:
        """The camera is gone: every stream cut, the port closed."""
        server, self._server = self._server, None
        self.plugged = False
        self._unplugged.set()
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with self._lock:
            clients = list(self._clients)
        for sock in clients:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(5)

    def _next_frame(self) -> tuple[int, bytes]:
        with self._lock:
            frames, garbage = self._frames, self._garbage
            seq = self._seq
            self._seq += 1
        frame = stamp(frames[seq % len(frames)], seq)
        ok, jpeg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        if not ok:
            raise RuntimeError("JPEG encoding failed")
        return seq, undecodable(jpeg.tobytes()) if garbage else jpeg.tobytes()

    def _serve_stream(self, handler: BaseHTTPRequestHandler) -> None:
        sock = handler.connection
        with self._lock:
            self._clients.add(sock)
        try:
            handler.send_response(200)
            handler.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
            handler.send_header("Cache-Control", "no-cache")
            handler.end_headers()
            next_at = time.monotonic()
            unplugged = self._unplugged
            while not unplugged.is_set():
                seq, jpeg = self._next_frame()
                part = (
                    f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n".encode()
                    + jpeg
                    + b"\r\n"
                )
                with self._lock:
                    self._sent[seq] = time.monotonic()
                    while len(self._sent) > 1000:
                        self._sent.popitem(last=False)
                handler.wfile.write(part)
                handler.wfile.flush()
                next_at += 1.0 / self.fps
                unplugged.wait(max(0.0, next_at - time.monotonic()))
        except OSError:
            pass  # the client went away, or the camera was unplugged
        finally:
            with self._lock:
                self._clients.discard(sock)
