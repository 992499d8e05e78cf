"""Where a camera's frames come from, and how OpenCV is asked to open it.

A source is written the way an installer would: ``/dev/v4l/by-id/...`` (udev's
name for one camera, kept across reboots and replugs), ``/dev/video0`` (or just
``0``: a number the kernel may give another camera next boot), ``rtsp://...``,
``http://.../stream.mjpg``, or a video file. Network streams get open and read
timeouts, so a camera that vanishes makes ``read()`` fail within seconds instead
of hanging the owner thread.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import cv2

from drivers.accounts import user_name
from drivers.camera.errors import (
    CameraFault,
    CameraFileMissingError,
    CameraFileNotVideo,
    CameraFileUnreadable,
    CameraNodeMissingError,
    CameraNodeNotDevice,
)

# A URL's scheme (RFC 3986 3.1), and the ones a camera stream may have.
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
STREAM_SCHEMES = frozenset({"rtsp", "rtsps", "http", "https"})

OPEN_TIMEOUT_MS = 3000
READ_TIMEOUT_MS = 2000
# Where device nodes are: read at each call (never copied), so a test can stand a folder of its own in for /dev
# (V4L2 nodes as plain files, udev's by-id links as symlinks to them); the agent never changes it.
DEV_ROOT = "/dev"
STABLE_NAME_FOLDERS = ("v4l/by-id", "v4l/by-path")  # udev's links to each V4L2 node, under DEV_ROOT


class CameraSourceError(ValueError):
    """A camera source the driver cannot use as written; the message says what to write instead."""

    def __init__(self, source: str) -> None:
        super().__init__(
            f"camera source {source!r} is neither a V4L2 device, a stream URL nor a file "
            "(use /dev/v4l/by-id/... or /dev/videoN, rtsp://..., http://.../stream.mjpg, or a video file path)"
        )


class CameraSourceCredentials(CameraSourceError, CameraFault):
    """A stream URL whose user or password holds an unencoded / ? or #: the authority (RFC 3986) ends at it,
    so what is left of it is no host (or a port: ``user:1234/5678@host``), and an @ further on shows where the
    credentials were meant to end (see :func:`credentials_unclear`). Refused rather than read as RFC 3986 reads
    it: the password would be sent, in the path, to a host named after the user."""

    def __init__(self, shown: str) -> None:
        CameraFault.__init__(
            self,
            f"the camera source {shown} has an unencoded / ? or # in its user or password",
            "percent-encode / ? # @ : in the camera password (and user): / as %2F, ? as %3F, # as %23, @ as %40, "
            ": as %3A; an @ that belongs to the camera's path is written %40 there too",
        )

    def __str__(self) -> str:
        return CameraFault.__str__(self)


class CameraSourceUrl(CameraSourceError, CameraFault):
    """A stream URL urllib cannot split: an unbalanced ``[`` or ``]``, or brackets around no IP address
    (``http://[``, ``http://[]``). urlsplit raised ValueError for it, inside the reader's open()."""

    def __init__(self, shown: str, reason: str) -> None:
        CameraFault.__init__(
            self,
            f"the camera source {shown} is no URL that can be read: {reason}",
            "write the camera's address in the URL as a name or an IPv4 address (http://192.168.1.20/video.mjpg), "
            "or an IPv6 address in brackets (http://[fe80::1]/video.mjpg); percent-encode [ and ] in a user or "
            "password (%5B, %5D)",
        )

    def __str__(self) -> str:
        return CameraFault.__str__(self)


class CameraSourceNoScheme(CameraSourceError, CameraFault):
    """A source that reads as a stream URL's ``user:password@host...`` with its ``scheme://`` missing or
    mistyped (``admin:pw@192.168.1.5:554/stream``, ``rtsp:/admin:pw@cam/x``, ``rtsp//admin:pw@cam/x``), or as its
    ``user@host...`` (no password, the user perhaps an e-mail address with its @) naming no file there is
    (``admin@cam.lan/stream``, ``john@example.com@cam/x``), a video file's name excepted (``video@1080p.mp4``, see
    :func:`scheme_less_user`). Read as a file path it
    "did not exist", and that message, user, password and all, went to the audit, ``devices`` and doctor, with a
    fix about USB cables. Shown redacted (:func:`redact_scheme_less`)."""

    def __init__(self, shown: str, *, password: bool = True) -> None:
        what = "a user and password" if password else "a user"
        file_note = (
            "a video file whose name holds : and @ is written as ./NAME or by its absolute path"
            if password
            else "a video file named so is not there: check its path (written as ./NAME or absolute, it is read "
            "as a file whatever its name)"
        )
        CameraFault.__init__(
            self,
            f"the camera source {shown} reads as a stream URL with {what} but no rtsp:// or http(s):// in front"
            + ("" if password else ", and no file of that name exists"),
            "write the full URL: rtsp://USER:PASSWORD@HOST:PORT/PATH, or http://... or https://... for an MJPEG "
            "stream, the password (and user) percent-encoded: @ as %40, : as %3A, / as %2F, ? as %3F, # as %23; "
            + file_note,
        )

    def __str__(self) -> str:
        return CameraFault.__str__(self)


class CameraLinkElsewhere(CameraSourceError, CameraFault):
    """A udev name of a camera (``/dev/v4l/by-id/...``, ``by-path/...``) that leads to no V4L2 node: to a disk, a
    serial port, outside /dev. Found when the source is parsed, and again at each open, since the link is followed
    anew then (a replug moves it): OpenCV given what it leads to would only say it did not open."""

    def __init__(self, name: str, target: str) -> None:
        CameraFault.__init__(
            self,
            f"the camera {name} leads to {target}, which is no V4L2 node (/dev/videoN)",
            "udev links each camera by its name in /dev/v4l/by-id and /dev/v4l/by-path: "
            "`ls -l /dev/v4l/by-id` shows where each leads; correct the camera's source to its name there, and "
            "remove a link made by hand (or by a local udev rule) that leads elsewhere",
        )

    def __str__(self) -> str:
        return CameraFault.__str__(self)


_SOURCES_FIX = (
    "set source to the camera: its udev name (`ls -l /dev/v4l/by-id`; `capture-agent devices` lists each camera "
    "with it), /dev/videoN or just N, rtsp://..., http://.../stream.mjpg, or a video file's absolute path"
)


class CameraSourceEmpty(CameraSourceError, CameraFault):
    """A source that is empty or only white space (``source = "  "``): the config takes it, as it is not empty.
    It was said as "camera source '' is neither a V4L2 device, a stream URL nor a file", showing nothing of what
    was written and naming no fix."""

    def __init__(self, written: str) -> None:
        shown = f" (only white space: {written!r})" if written else ""
        CameraFault.__init__(self, f"the camera source is empty{shown}", _SOURCES_FIX)

    def __str__(self) -> str:
        return CameraFault.__str__(self)


class CameraSourceNegativeIndex(CameraSourceError, CameraFault):
    """``-1`` (OpenCV's "the first camera it finds"): read as a video file named -1, it "did not exist", with a
    fix of `ls -l -1`. Refused: the agent opens one named camera, never whichever the kernel lists first."""

    def __init__(self, text: str) -> None:
        CameraFault.__init__(
            self,
            f"the camera source {text} is a negative number, which names no camera (OpenCV reads -1 as whichever "
            "camera it finds first; the agent opens one named camera)",
            _SOURCES_FIX,
        )

    def __str__(self) -> str:
        return CameraFault.__str__(self)


class CameraSourceFileUrl(CameraSourceError, CameraFault):
    """A video file written as a ``file://`` URL (copied from a browser or a file manager): it was refused as
    "neither a V4L2 device, a stream URL nor a file", which it is, naming no fix. The agent takes the path."""

    def __init__(self, shown: str, path: str) -> None:
        CameraFault.__init__(
            self,
            f"the camera source {shown} is a file:// URL: the agent takes a video file by its path",
            f"write the file's path itself: source = {path!r}" if path else "write the video file's absolute path",
        )

    def __str__(self) -> str:
        return CameraFault.__str__(self)


def _file_url_path(text: str) -> str:
    """The path of a ``file://`` URL on this machine, percent-decoded (``file:///srv/my%20clip.mp4`` is
    ``/srv/my clip.mp4``); "" when urllib cannot split it, or it names another host (its path is not here)."""
    try:
        parts = urlsplit(text)
    except ValueError:
        return ""
    return unquote(parts.path) if parts.netloc.lower() in ("", "localhost") else ""


def scheme_less_credentials(text: str) -> bool:
    """Whether ``text`` (no ``scheme://`` at its start) has the shape ``[scheme-ish]user:password@host...``: a
    ``:`` before an ``@``, and not written as a path (``/...``, ``./...``, ``../...``).

    Why a ``:`` and not any ``@``: an @ alone is common in file names (``clips/a@b.mp4``, ``rec@2.mkv``) and
    shows no password; a ``:`` before it is the user:password separator (a file named with a time,
    ``12:00@door.mp4``, is written ``./12:00@door.mp4``)."""
    if _SCHEME.match(text) or text.startswith(("/", "./", "../")):
        return False
    before, at, _ = text.rpartition("@")
    return bool(at) and ":" in before


# [a stream scheme mistyped: rtsp:/ rtsp// http:]user@host[:port][/ ? # ...]: a userinfo with no password and no
# / ? # : (each would end it or make it user:password), then what reads as host[:port] (checked by _HOST_PORT).
# The user may hold an unencoded @ (an e-mail address: ``john@example.com@cam/x``): it ends at the last @ before
# the first / ? #, as urllib and FFmpeg end a userinfo.
_USER_AT_HOST = re.compile(
    r"(?P<scheme>(?:rtsps?|https?)(?::/?|//))?[^/?#:\s]+@(?P<host>[^/?#]*)(?P<path>[/?#].*)?",
    re.IGNORECASE | re.DOTALL,
)
# What a video file's name ends with (case-insensitive): OpenCV's FFmpeg backend reads each.
VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".m4v", ".avi", ".mkv", ".mov", ".webm", ".mjpg", ".mjpeg", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp",
     ".ogv", ".h264", ".264", ".h265", ".265"}
)


def _video_file_name(shape: re.Match[str]) -> bool:
    """Whether a :data:`_USER_AT_HOST` match reads as a video file's name: what follows its last ``@`` ends with a
    video extension (:data:`VIDEO_EXTENSIONS`), with no / ? # after it and no mistyped scheme before."""
    if shape["scheme"] or shape["path"]:
        return False
    return os.path.splitext(shape["host"])[1].lower() in VIDEO_EXTENSIONS


def scheme_less_user(text: str) -> bool:
    """Whether ``text`` (no ``scheme://`` at its start) reads as a stream URL's ``user@host[:port]/...`` with its
    scheme missing or mistyped (``admin@cam.lan/stream``, ``rtsp//admin@10.0.0.5/x``) and names no file there is.

    Why existence decides: the shape is a file name's too (``door@cam.lan/x.avi``), and a file that is there is
    opened as one; one that is not there was said to "not exist" with the user in the message. The user may hold
    an unencoded @ (``john@example.com@cam/x``, ``ops@corp.example@10.0.0.5/stream``): all up to the last @ is
    the user, masked whole.

    Why a video file's name is no URL, there or not (``video@1080p.mp4``, ``rec@2.avi``, ``a@b@c.mkv``): what
    follows its last @ ends with a video extension (:data:`VIDEO_EXTENSIONS`), and nothing (no / ? #) follows
    that. A camera's URL names a host there, and a host is followed by the stream's path (``cam.lan/stream``); a
    name ending in .mp4 with no path is a recording's, and a recording on a share not yet mounted must stay a file
    that is missing for now, retried by the camera's reopen loop as any missing file is, not be refused when the
    config is read. A host followed by a path (``admin@cam.mp4/stream``, ``admin@10.0.0.5/x.mp4``) or a mistyped
    scheme in front (``rtsp//admin@clip.mp4``) still reads as a URL missing its scheme. Written with a folder
    (``clips/door@2x.avi``) it is no ``user@host`` at all: a user holds no /.

    Not written as a path (``/...``, ``./...``, ``../...``): those are files, whatever their name. Taken as
    :meth:`CameraSource.parse` takes it, stripped: `` admin@cam/x`` (a space pasted in front) is refused there,
    and was shown as written, its user in the clear, where the raw text is shown (``devices --camera``)."""
    text = text.strip()
    if _SCHEME.match(text) or text.startswith(("/", "./", "../")):
        return False
    shape = _USER_AT_HOST.fullmatch(text)
    if shape is None or _HOST_PORT.fullmatch(shape["host"]) is None or _video_file_name(shape):
        return False
    return not os.path.lexists(text)


def redact_scheme_less(text: str) -> str:
    """A :func:`scheme_less_credentials` (or :func:`scheme_less_user`) source with all up to its last ``@``
    masked and only the host after it kept (``***@192.168.1.5:554/***``): where its user and password end cannot
    be told."""
    _, _, after = text.rpartition("@")
    host, rest = re.match(r"([^/?#]*)(.*)", after, re.DOTALL).groups()  # type: ignore[union-attr]
    return f"***@{host}" + ("/***" if rest else "")


def _authority_shown(text: str) -> str:
    """Scheme and host as written, a userinfo masked: for a URL that urllib cannot split (redact_url would show
    the scheme only, which names nothing to fix). Cut at 80 characters."""
    split = split_authority(text)
    if split is None:
        return "***"
    scheme, authority, _ = split
    _, at, host = authority.rpartition("@")
    shown = f"{scheme}://{'***@' if at else ''}{host}"
    return shown if len(shown) <= 80 else shown[:80] + "..."


def check_url(text: str) -> None:
    """CameraSourceUrl unless urllib splits ``text`` and reads its host (what the MJPEG reader and the
    redirect logic do): ``http://[`` made urlsplit raise ValueError, ``http://[]`` its ``.hostname`` on some
    Pythons; a URL with no host at all is refused the same way."""
    try:
        parts = urlsplit(text)
        host = parts.hostname
        parts.username  # noqa: B018 (read for the ValueError it may raise)
    except ValueError as exc:
        raise CameraSourceUrl(_authority_shown(text), str(exc)) from None
    if not host:
        raise CameraSourceUrl(_authority_shown(text), "it has no host")


# host[:port] of an authority: a name (letters, digits, . - _ ~ and %-escapes), an IPv4 address or a [bracketed]
# IPv6 one (a zone as %25...); the port digits only (empty is allowed, as RFC 3986 allows it)
_HOST_PORT = re.compile(r"(?:[A-Za-z0-9._~%-]+|\[[0-9A-Za-z:.%_~-]+\])(?::[0-9]*)?")


def split_authority(text: str) -> tuple[str, str, str] | None:
    """(scheme, authority, the rest) of a URL, or None without ``://``. The authority ends at the first / ? or #
    (RFC 3986 section 3.2, as urllib and FFmpeg split it): an @ after that is the path's, query's or fragment's."""
    scheme, sep, rest = text.partition("://")
    if not sep:
        return None
    end = re.search(r"[/?#]", rest)
    at = end.start() if end else len(rest)
    return scheme, rest[:at], rest[at:]


_IPV4 = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}")
# an address after an @, not a name: an IPv4 or [IPv6] literal, or anything with a port
_ADDRESS = re.compile(r"(?:[0-9]{1,3}(?:\.[0-9]{1,3}){3}|\[[^\]]*\]|[^:]*:[0-9]*)(?::[0-9]*)?")


def credentials_unclear(text: str) -> bool:
    """True when an @ after a URL's authority reads as the end of a userinfo written with an unencoded / ? or #:
    read as RFC 3986 says, part of a credential would be sent in the path to the wrong host, or logged as one.

    Two shapes are the same text: ``http://cam:8080/snap@2x.jpg`` (a path, RFC 3986's reading) and
    ``http://user:1234/5678@host`` (a password with a /, its digits read as a port). This tells them apart by
    what a mistaken userinfo leaves, and refuses those, and the ones that cannot be told apart (an @ meant for
    the path can be written %40):

    - the authority is no ``[userinfo@]host[:port]``: a password's / ? # ended it early (``admin:pa/ss@cam``);
    - else, when what comes after the last @ reads as ``host[:port]`` (then / ? # or the end), and what comes
      before it is no list of ``name=value`` (a query's, a DVR path's), any of:

      - a ``:`` before that @ (``admin/x:pw@cam``: a user with a /, then its password);
      - an authority with a port, and: a path after the host that follows the @
        (``user:1234/ab@host/video.mjpg``), or only digits and / ? # up to the @ (``user:1234/5678@host``: a
        digits-only password), or an empty port (``user:/pw@host``), or a "host" before that port that is no
        IP address and not localhost (``admin:12/ab@cam``, ``john.doe:12/ab@cam.local``: a user name's shape,
        dotted or not; ``cam.lan:8080/snap@2x.jpg`` is the same text, and refused with it);
      - an address after the @ (``.../x@10.0.0.5``, ``...@cam:554``), not a name.

      The authority may hold a userinfo already: a password with both @ and / (``admin:p@ss/w0rd@10.0.0.5``)
      ends it at its first @, and the same signs tell that from a path's @ (``u:p@cam/snap@2x.jpg``).

    Any other @ after the authority is data, as RFC 3986 reads it: a path's (``/snap@2x.jpg``, ``/a/b@c``,
    ``127.0.0.1:8080/a/b@c``, ``127.0.0.1:8080/snap@2x.jpg``), a query's (``?user=admin&pwd=a@b``)."""
    split = split_authority(text)
    if split is None:
        return False
    _, authority, rest = split
    if "@" not in rest:
        return False
    host_port = authority.rpartition("@")[2]
    if not _HOST_PORT.fullmatch(host_port):
        return True
    between, _, after = rest.rpartition("@")
    if re.search(r"[=&;]", between):
        return False
    host, tail = re.match(r"([^/?#]*)(.*)", after, re.DOTALL).groups()  # type: ignore[union-attr]
    if not _HOST_PORT.fullmatch(host):
        return False
    name, colon, port = host_port.rpartition("]")[2].partition(":")  # an IPv6 literal's own colons are no port
    digits_only = re.fullmatch(r"[/?#][0-9/?#]*", between) is not None
    address = host_port.startswith("[") or _IPV4.fullmatch(name) is not None or name.lower() == "localhost"
    return (
        ":" in between
        or (colon == ":" and (not port or tail.startswith("/") or digits_only or not address))
        or _ADDRESS.fullmatch(host) is not None
    )


def _origin(text: str) -> str:
    """Scheme, host and port of a URL, nothing else: what redact_url shows of them (``scheme://***`` when the
    host cannot be told from a credential)."""
    shown = redact_url(text)
    scheme, _, rest = shown.partition("://")
    host = re.split(r"[/?#]", rest, maxsplit=1)[0].rpartition("@")[2]
    return f"{scheme}://{host}"


def redact_url(text: str) -> str:
    """``text`` with a URL's credentials masked: fit for logs, audit events and ``/health``.

    The authority is what comes before the first / ? or # (RFC 3986, as FFmpeg and urllib split it); its
    userinfo, everything up to its *last* ``@``, becomes ``***`` (a password may hold ``@``:
    ``http://u:p@ss@host/`` logs in as ``u`` with ``p@ss``). Every query value becomes ``***`` and keeps its
    key (cheap IP cameras take ``?user=admin&pwd=...``), and so does every ``name=value`` in the path (DVRs
    take ``rtsp://host/user=admin&password=...&channel=1``); a path segment still holding an ``@``, and every
    segment before it, is masked whole (what precedes a path's @ may be the tail of a password that held an
    unencoded /), and so is a fragment, a query piece with no ``=`` or an ``@`` in its key. Scheme, host, port
    and the rest of the path stay. Text that is not a URL (a device node, a file path) is returned unchanged.

    When where the credentials end cannot be told (:func:`credentials_unclear`: a user or password holding an
    unencoded / ? or #), everything up to the last ``@`` is masked, wherever it is: masking too much is
    harmless, a leak is not. When what comes before that @ holds ? # = & ; (it may be a query's value, not a
    userinfo) or what follows is no host, only the scheme is shown. A URL written without its scheme
    (:func:`scheme_less_credentials`: ``admin:pw@cam/x``; :func:`scheme_less_user`: ``admin@cam/x`` naming no
    file there is) is masked as :func:`redact_scheme_less` does.
    """
    if scheme_less_credentials(text) or scheme_less_user(text):
        return redact_scheme_less(text)
    if "://" not in text:
        return text
    masked = False
    if credentials_unclear(text):
        scheme, _, rest = text.partition("://")
        before, _, after = rest.rpartition("@")
        host = re.split(r"[/?#]", after, maxsplit=1)[0]
        if any(c in before for c in "?#=&;") or not _HOST_PORT.fullmatch(host):
            return f"{scheme}://***"
        text, masked = f"{scheme}://{after}", True
    try:
        parts = urlsplit(text)
    except ValueError:  # e.g. an unbalanced [ in the host: show the scheme only
        return text.split("://", 1)[0] + "://***"
    host = parts.netloc.rpartition("@")[2]
    netloc = f"***@{host}" if masked or "@" in parts.netloc else host
    segments = re.sub(r"=[^&;/]*", "=***", parts.path).split("/")
    last_at = max((i for i, segment in enumerate(segments) if "@" in segment), default=-1)
    # up to the last segment holding an @, every segment: what precedes that @ may be a password's tail
    path = "/".join("***" if segment and i <= last_at else segment for i, segment in enumerate(segments))
    keys = [piece.partition("=")[0] if "=" in piece else "@" for piece in parts.query.split("&")]
    query = "&".join("***" if "@" in key else f"{key}=***" for key in keys)  # a bare piece or an odd key: masked
    return urlunsplit((parts.scheme, netloc, path, query if parts.query else "", "***" if parts.fragment else ""))


def video_node(path: str) -> bool:
    """Whether ``path`` is written as a V4L2 node: DEV_ROOT/videoN."""
    return re.fullmatch(re.escape(DEV_ROOT) + r"/video\d+", path) is not None


def stable_name(path: str) -> bool:
    """Whether ``path`` is written as one of udev's names for a V4L2 node: DEV_ROOT/v4l/by-id/NAME or by-path."""
    folder, _, name = path.rpartition("/")
    stable = {f"{DEV_ROOT}/{sub}" for sub in STABLE_NAME_FOLDERS}
    return folder in stable and name not in ("", ".", "..")


def stable_names() -> dict[str, list[str]]:
    """Each V4L2 node that udev names, and its names (by-id first, then by-path): what an installer copies into
    the config, as a /dev/videoN number can change across reboots and replugs."""
    import glob

    names: dict[str, list[str]] = {}
    for sub in STABLE_NAME_FOLDERS:
        for link in sorted(glob.glob(f"{DEV_ROOT}/{sub}/*")):
            target = os.path.realpath(link)
            if video_node(target):
                names.setdefault(target, []).append(link)
    return names


NOT_A_VIDEO = "is no video OpenCV can open (another kind of file, a format it does not read, or a copy cut short)"
NO_FRAME = "opens as a video but holds no frame OpenCV can decode"


def check_video_file(path: str) -> None:
    """Raise the typed error of a video file source this user cannot read as one, from its ``stat`` alone (nothing
    opened: doctor calls it beside a running daemon): CameraFileMissingError when not there,
    CameraFileUnreadable when its mode or a folder above it shuts this user out, CameraFileNotVideo for a folder,
    an empty file, a FIFO or a socket.

    Why before OpenCV: given any of these it only says it did not open (read as an unplugged camera, retried
    forever with no reason given), and given a FIFO nobody writes to, its open never returns, holding the
    camera's owner thread (or ``capture-agent devices``) for good."""
    try:
        info = os.stat(path)
    except PermissionError:
        raise CameraFileUnreadable(path, user_name(), folder=True) from None
    except OSError:  # not there, a link to nothing, a loop of links, a file where a folder should be
        raise CameraFileMissingError(path) from None
    if stat.S_ISDIR(info.st_mode):
        raise CameraFileNotVideo(path, "is a folder, not a video file")
    if stat.S_ISFIFO(info.st_mode):
        raise CameraFileNotVideo(
            path, "is a FIFO (named pipe), not a video file: its open would wait for a writer", pipe=True
        )
    if stat.S_ISSOCK(info.st_mode):
        raise CameraFileNotVideo(path, "is a socket, not a video file")
    if not os.access(path, os.R_OK):
        raise CameraFileUnreadable(path, user_name())
    if stat.S_ISREG(info.st_mode) and info.st_size == 0:
        raise CameraFileNotVideo(path, "is empty")


@dataclass(frozen=True)
class CameraSource:
    text: str
    kind: str  # v4l2, stream, file
    target: Any  # what cv2.VideoCapture takes: an index, a path or a URL

    @classmethod
    def parse(cls, text: str) -> CameraSource:
        written, text = text, text.strip()
        if not text:
            raise CameraSourceEmpty(written)
        if re.fullmatch(r"-\d+", text):
            raise CameraSourceNegativeIndex(text)
        if re.fullmatch(r"\d+", text):
            return cls(text, "v4l2", int(text))
        if video_node(text):
            return cls(text, "v4l2", text)
        if stable_name(text):
            # A link to a V4L2 node, opened by this name so a replug that renumbers the node is followed. Not there
            # (the camera unplugged): a missing camera, said by check_present. There: it must lead to a V4L2 node
            # (a link made by hand to a disk or a serial port is refused, as that node written plainly is).
            if os.path.lexists(text) and not video_node(os.path.realpath(text)):
                raise CameraLinkElsewhere(text, os.path.realpath(text))
            return cls(text, "v4l2", text)
        url = _SCHEME.match(text)
        if url:
            # Schemes are case-insensitive (RFC 3986 3.1): HTTP://user:pw@cam/ is a stream, not a file path that
            # "does not exist" with its password in the message. Another scheme is refused, shown redacted.
            scheme = url.group(1).lower()
            if scheme == "file":
                raise CameraSourceFileUrl(redact_url(text), _file_url_path(text))
            if scheme not in STREAM_SCHEMES:
                raise CameraSourceError(redact_url(text))
            text = scheme + text[url.end(1):]
            if credentials_unclear(text):  # where the credentials end cannot be told
                raise CameraSourceCredentials(_origin(text))
            check_url(text)
            return cls(text, "stream", text)
        if scheme_less_credentials(text):  # user:password@host with no scheme: not a file that "does not exist"
            raise CameraSourceNoScheme(redact_scheme_less(text))
        if scheme_less_user(text):  # user@host with no scheme, and no such file: not one that "does not exist"
            raise CameraSourceNoScheme(redact_scheme_less(text), password=False)
        if text and not text.startswith(DEV_ROOT + "/"):
            return cls(text, "file", str(Path(text)))
        raise CameraSourceError(text)

    @property
    def is_live(self) -> bool:
        return self.kind != "file"

    @property
    def node(self) -> str | None:
        """The local path this source opens (``0`` is ``/dev/video0``), or None for a stream URL."""
        if self.kind == "stream":
            return None
        return f"{DEV_ROOT}/video{self.target}" if isinstance(self.target, int) else str(self.target)

    def current_node(self) -> str | int:
        """What OpenCV is given to open this source now: a udev name (by-id, by-path) followed to the V4L2 node it
        leads to at this moment, else the target as parsed.

        Why at each call: a camera replugged into another port gets another /dev/videoN, and udev moves its
        by-id link there (or removes it, unplugged); the link read when the config was, opened later, would be
        another camera's node or none. CameraNodeMissingError naming the udev name when the link, or the node it
        leads to, is gone; CameraLinkElsewhere when it leads to no V4L2 node."""
        if self.kind == "v4l2" and isinstance(self.target, str) and stable_name(self.target):
            try:  # one resolution, checked and opened: no window between a check and a second look
                node = os.path.realpath(self.target, strict=True)
            except OSError:  # no link, a link to nothing, a loop: the camera is not there
                raise CameraNodeMissingError(self.text) from None
            if not video_node(node):
                raise CameraLinkElsewhere(self.text, node)
            return node
        if self.kind == "file":
            check_video_file(self.text)
            return self.target
        path = self.node
        if path is not None and not os.path.exists(path):
            raise CameraNodeMissingError(path)
        return self.target

    def check_present(self) -> None:
        """CameraNodeMissingError when the local node or file this source opens is not there (CameraLinkElsewhere
        for a udev name that leads to no V4L2 node; for a file, see :func:`check_video_file`).

        Why here: the one check of a missing camera, made by ``open`` and by whoever must not open it (doctor,
        beside a running daemon), so each caller says the same thing and names the same fix."""
        self.current_node()

    def open(self) -> cv2.VideoCapture:
        """A cv2.VideoCapture on this source (check ``isOpened()``); CameraNodeMissingError for a local camera
        that is not there (OpenCV would only say it did not open). A file is checked first (see
        :func:`check_video_file`), and one OpenCV cannot open is CameraFileNotVideo: its capture is always open."""
        node = self.current_node()  # a by-id link is followed at each open: to the node the camera has now
        if self.kind == "v4l2":
            capture = cv2.VideoCapture(node, cv2.CAP_V4L2)
            if not capture.isOpened():
                capture.release()
                self._check_node_is_device(node)
            return capture
        if self.kind == "stream":
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, OPEN_TIMEOUT_MS, cv2.CAP_PROP_READ_TIMEOUT_MSEC, READ_TIMEOUT_MS]
            return cv2.VideoCapture(self.target, cv2.CAP_FFMPEG, params)
        capture = cv2.VideoCapture(self.target)
        if not capture.isOpened():  # a readable regular file OpenCV finds no video in: say so, not "no frame"
            capture.release()
            raise CameraFileNotVideo(self.text, NOT_A_VIDEO)
        return capture

    def _check_node_is_device(self, node: str | int) -> None:
        """CameraNodeNotDevice when the node OpenCV could not open is a regular file or a folder (see there);
        else nothing, and the caller's capture says it did not open, as before (a busy or metadata node)."""
        path = f"{DEV_ROOT}/video{node}" if isinstance(node, int) else node
        try:
            info = os.stat(path)
        except OSError:  # gone since: the next open says it is missing
            return
        if stat.S_ISDIR(info.st_mode):
            what = "a folder"
        elif stat.S_ISREG(info.st_mode):
            what = f"a regular file of {info.st_size} bytes"
        else:
            return
        raise CameraNodeNotDevice(path, what, via=self.text if stable_name(self.text) else "")

    @property
    def redacted(self) -> str:
        """The source for logs, audit events and ``/health``: no credential of a stream URL (see redact_url)."""
        return redact_url(self.text)

    def __repr__(self) -> str:  # an object logged by accident shows no credential either
        return f"CameraSource({self.redacted!r}, kind={self.kind!r})"
