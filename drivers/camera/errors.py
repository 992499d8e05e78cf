"""Typed errors of the camera driver. Each names the likely cause and the fix."""

from __future__ import annotations

from drivers.errors import DeviceError


class CameraError(DeviceError):
    """Base of every error the camera driver raises."""


class CameraUnavailable(CameraError):
    """No frame from the camera in time: it is unplugged, or its stream stalled."""


class CameraNodeMissingError(CameraUnavailable):
    """A local camera (a /dev/videoN node, a V4L2 index, a video file) that is not there.

    Raised by ``CameraSource.open`` (and ``CameraSource.check_present``, which doctor calls without opening),
    the one place that looks: OpenCV given a missing node only says it did not open, which read as "gives no
    frame" and named nothing to fix. A subclass of CameraUnavailable: plugging the camera in fixes it.
    ``setting`` is where the path is configured, as the caller knows it (the agent's device says
    ``[reader] source``, pointed at its own entry by ``fix_in_place``)."""

    def __init__(self, path: str, setting: str = "the path") -> None:
        super().__init__(
            f"the camera {path} does not exist",
            f"plug the camera in and check its USB cable (an unplugged camera has no node), or correct {setting} "
            "(`ls -l /dev/v4l/by-id` lists the cameras there are by the names that stay theirs across replugs, "
            "`ls /dev/video*` by number; `capture-agent devices` reads each once); a camera "
            "plugged in whose node never appears: watch `udevadm monitor --udev` while replugging it",
        )
        self.path = path

    def set_in(self, setting: str) -> CameraNodeMissingError:
        """The same error (of the same class: a missing file stays one), its fix naming where the caller
        configures the path."""
        return type(self)(self.path, setting)


def _relative_note(path: str) -> str:
    """What a fix adds for a relative file path: the daemon resolves it from its own working directory
    (``/`` under systemd), not from where the installer typed it, so doctor and the daemon may look in two places."""
    if path.startswith("/"):
        return ""
    return (
        f"; {path} is relative: the daemon looks for it from its working directory (/ under systemd), "
        "so write its absolute path"
    )


class CameraFileMissingError(CameraNodeMissingError):
    """A video file source (the test rig's recorded clip served as a camera) that is not there.

    Why its own class: the node's fix (plug the camera in, its USB cable, ``ls /dev/video*``, udevadm) is wrong
    advice for a file. A subclass of CameraNodeMissingError, so every handler of a missing local camera (the
    agent's device, doctor, discovery) keeps working, and the reopen loop keeps retrying it: a rig may copy the
    file in (or mount its share) after the agent started."""

    def __init__(self, path: str, setting: str = "the path") -> None:
        CameraUnavailable.__init__(
            self,
            f"the video file {path} does not exist",
            f"check the path, and that the file was copied there (`ls -l {path}`), or correct {setting}; the "
            "agent opens it once it is there" + _relative_note(path),
        )
        self.path = path


class CameraFileUnreadable(CameraUnavailable):
    """A video file source that is there but that the agent's user may not read (its mode, or a folder above it
    it may not pass through).

    Why typed: OpenCV only says it did not open, which read as "gives no frame" (or, for a closed folder,
    "does not exist" with a fix about USB cables). A CameraUnavailable, retried as before: a chmod fixes it
    with the agent running."""

    def __init__(self, path: str, user: str, *, folder: bool = False, setting: str = "the camera's source") -> None:
        if folder:
            message = f"the video file {path} cannot be reached by {user}: a folder above it is closed to this user"
            fix = (
                f"`ls -ld` each folder above {path}: the agent's user must be able to pass through (x) every one "
                f"(`chmod o+x FOLDER`, or give it to that user's group), or move the file where it can and correct "
                f"{setting}"
            )
        else:
            message = f"the video file {path} exists but {user} may not read it"
            fix = (
                f"make it readable by the agent's user (`ls -l {path}`; `chmod o+r {path}`, or give it to that "
                "user's group and `chmod g+r` it)"
            )
        super().__init__(message, fix)
        self.path = path


class CameraFileNotVideo(CameraUnavailable):
    """A video file source that is there and readable, but holds no video OpenCV can read: a folder, an empty
    file, another kind of file named .mp4, a copy cut short, a FIFO (whose open would wait forever for a writer).

    Why typed: OpenCV only says it did not open (or gives no frame), which read as an unplugged camera. A
    CameraUnavailable, retried as before: a rig copying a clip in place has a part of it there for a while."""

    def __init__(self, path: str, why: str, *, pipe: bool = False, setting: str = "the camera's source") -> None:
        if pipe:  # no file to fix: a live feed has its own kinds of source
            fix = (
                f"give {setting} the recorded video file itself; a live feed is served as an MJPEG stream "
                "(http://.../stream.mjpg, as `capture-simulator camera` serves one) or an rtsp:// URL"
            )
        else:
            fix = (
                f"point {setting} at a video file OpenCV reads (MP4, MKV or AVI; H.264 or MJPEG): `ffprobe {path}` "
                f"shows what it holds; check the copy is whole (`ls -l {path}` against the original's size): copy "
                f"a clip under another name, then `mv` it to {path}, so the agent never reads half of it"
            )
        super().__init__(f"the video file {path} {why}", fix)
        self.path, self.why = path, why


class CameraFault(CameraError):
    """The camera answers, but what it sends cannot be used: no waiting or replugging fixes it."""


class CameraNodeNotDevice(CameraFault):
    """A V4L2 node path (``/dev/videoN``) that holds a regular file or a folder: something wrote a file under the
    node's name (a tool given /dev/video0 as its output with no v4l2loopback module makes a plain file), and the
    kernel cannot make the camera's node there while it stays.

    Why a fault: OpenCV only said it did not open ("gives no frame"); no replug fixes it, removing the file does.
    Found after a failed open only, so a camera that opens is never looked at twice."""

    def __init__(self, node: str, what: str, via: str = "") -> None:
        reached = f" (where the camera {via} leads)" if via and via != node else ""
        super().__init__(
            f"the camera node {node}{reached} is {what}, not a device node: no camera can appear there while it stays",
            f"see what it is (`ls -ld {node}`), remove it (`rm -r {node}`: a file some tool wrote in place of the "
            "node), then replug the camera (or `udevadm trigger`) so the kernel makes its node",
        )
        self.node = node


class CameraBasicInClear(CameraFault):
    """An http:// camera asks for Basic authentication: the agent will not send its password in clear."""

    def __init__(self, source: str, offered: str) -> None:
        super().__init__(
            f"the camera {source} asks for Basic authentication ({offered}) over plain http://: the agent does "
            "not send its password in clear",
            "enable Digest on the camera, or use https (its user or security settings); for a camera that has "
            "nothing else, set allow_basic_over_http = true in its [[device]] entry",
        )


class CameraNotMjpeg(CameraFault):
    """An http(s) source whose stream is not MJPEG (multipart/x-mixed-replace of JPEG parts)."""

    def __init__(self, source: str, why: str) -> None:
        super().__init__(
            f"the stream of the camera {source} is not MJPEG: {why}",
            "point source at the camera's MJPEG stream URL (often /video.mjpg, /mjpg/video.mjpg or "
            "/stream.mjpg; see its manual), or at its rtsp:// URL for an H.264 stream",
        )


class CameraFramesUndecodable(CameraFault):
    """JPEG parts that OpenCV cannot decode, many in a row: a broken (or hostile) camera, not a stream URL mistake.

    Why its own fault: their headers read as JPEG of a sane size, so the stream is MJPEG; what is wrong is the
    camera's encoding (a firmware fault, a format the decoder does not take), and the fix is on the camera.
    """

    def __init__(self, source: str, parts: int) -> None:
        super().__init__(
            f"the camera {source} sends JPEG frames that cannot be decoded ({parts} in a row)",
            "check the camera: set its stream format to MJPEG (baseline JPEG) in its settings, restart it, and "
            "update its firmware; if it goes on, replace it",
        )
        self.parts = parts


class CameraFrameTooLarge(CameraFault):
    """An MJPEG part larger than the driver reads (a hostile or misconfigured camera)."""

    def __init__(self, source: str, why: str, *, size: int | None = None) -> None:
        super().__init__(
            f"the camera {source} sends frames the agent refuses to read: {why}",
            "lower the camera's resolution or JPEG quality in its own settings (its web page), or use a stream "
            "URL of a smaller size",
        )
        self.size = size  # bytes the part declared, or the bytes held when it was refused (None: not known)


class CameraStreamBroken(CameraFault):
    """An MJPEG stream whose framing is broken (parts cut short of their Content-Length, again and again)."""

    def __init__(self, source: str, why: str) -> None:
        super().__init__(
            f"the MJPEG stream of the camera {source} is broken: {why}",
            "check the camera's network link (Wi-Fi signal, cable) and its firmware; lowering its resolution or "
            "frame rate in its own settings lightens the link",
        )


class CameraFrameSize(CameraFault):
    """Frames outside the sizes the agent accepts; the fix depends on what can set the camera's size."""

    def __init__(self, source: str, kind: str, width: int, height: int, low: int, high: int) -> None:
        if kind == "v4l2":
            fix = f"set width and height of this camera's [[device]] to a size it supports within {low}..{high}"
        elif kind == "file":
            fix = f"use a video whose frames are {low}..{high} pixels per side"
        else:  # a stream's size is the camera's: width and height in the config cannot change it
            fix = (
                f"set the camera's own resolution (its web page or settings) to {low}..{high} pixels per side, "
                "or use a stream URL of such a size; width and height in the config do not resize a stream"
            )
        super().__init__(f"the camera {source} gives frames of {width}x{height} pixels, outside {low}..{high}", fix)
        self.width, self.height = width, height
