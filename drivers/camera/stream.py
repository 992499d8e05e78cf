"""An http(s) MJPEG camera read by the driver itself: a socket, the multipart codec, bounded bytes.

FFmpeg (what ``cv2.VideoCapture`` uses for a URL) buffers whatever a camera
declares: a part of ``Content-Length: 2147483000`` grew the agent to 1.8 GB,
a 16000x16000 JPEG to 2.6 GB. Here the bytes go through
:class:`~drivers.camera.mjpeg.MultipartDecoder` (a part of at most
``max_part_bytes``) and each JPEG's size is read from its SOF header before
``cv2.imdecode`` runs; OpenCV still decodes every frame the agent takes.
Credentials in the URL are sent only when the camera asks, with Digest when it
offers it (:mod:`drivers.camera.httpauth`).
"""

from __future__ import annotations

import errno
import os
import re
import select
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np

from drivers.camera import httpauth, resolve
from drivers.camera.chunked import ChunkedDecoder, ChunkError
from drivers.camera.errors import (
    CameraBasicInClear,
    CameraFault,
    CameraFrameTooLarge,
    CameraNotMjpeg,
    CameraStreamBroken,
    CameraUnavailable,
)
from drivers.camera.mjpeg import (
    MAX_PART_BYTES,
    ConflictingLength,
    Event,
    MjpegError,
    MultipartDecoder,
    NotJpeg,
    NotMultipart,
    Part,
    PartTooLarge,
    SkippedPart,
    boundary_of,
    jpeg_size,
)
from drivers.camera.source import CameraSourceCredentials, CameraSourceUrl, credentials_unclear, redact_url

CHUNK = 64 * 1024
POLL_S = 0.1  # how often a blocked read looks at the stop event and the deadline
HEAD_MAX = 16 * 1024  # a response head's bytes
REDIRECTS_MAX = 3  # followed to the same scheme, host and port only
DRAIN_READS_MAX = 256  # reads once a part is whole before it is handed over: 16 MB at most
CUT_PARTS_MAX = 10  # parts in a row cut short of their Content-Length: the stream is broken
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def is_http(url: str) -> bool:
    return url.lower().startswith(("http://", "https://"))


@dataclass(frozen=True)
class JpegPart:
    body: bytes = field(repr=False)  # a frame: never in a repr, a log line or a traceback's locals (invariant 1)
    width: int
    height: int


@dataclass(frozen=True)
class TLSFloor:
    """What an https camera's TLS must meet: a minimum version and an OpenSSL cipher string.

    Drivers are hardware only and import nothing of the protocol's: the agent passes the project's
    own floor (protocol.tls, the verifier channel's: ECDHE with AEAD) when it makes the camera.
    Without one: TLS 1.2 and OpenSSL's default suites.
    """

    minimum: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2
    ciphers: str = ""  # "": OpenSSL's defaults


DEFAULT_TLS_FLOOR = TLSFloor()


class MjpegReader:
    """One connection to an MJPEG camera: ``next_part()`` gives its JPEG parts, sizes read, undecoded.

    The HTTP exchange is the reader's own (a socket, HTTP/1.0; a body chunked all the same is undone): the
    whole of ``open()`` has one deadline, and ``stop`` is checked at least every ``POLL_S``, so a camera sending
    its head a byte at a time holds the owner no longer than the open timeout. Credentials in the URL are sent
    only when the camera asks (a 401 challenge): Digest when offered, Basic else (over https, or http when the
    camera's config sets ``allow_basic_over_http``)."""

    backend = "MJPEG"

    def __init__(
        self, url: str, shown: str, *, open_timeout_s: float, read_timeout_s: float,
        max_part_bytes: int = MAX_PART_BYTES, allow_basic_over_http: bool = False, ca_file: str = "",
        tls_floor: TLSFloor = DEFAULT_TLS_FLOOR,
    ) -> None:
        self.url, self.shown = url, shown
        self.ca_file = ca_file  # an https camera's CA: trusted alone (else the system's store)
        self.tls_floor = tls_floor
        self.allow_basic_over_http = allow_basic_over_http  # the camera's config opts in: Basic over http://
        self.open_timeout_s, self.read_timeout_s = open_timeout_s, read_timeout_s
        self.max_part_bytes = max_part_bytes
        self._sock: socket.socket | None = None
        self._decoder: MultipartDecoder | None = None
        self._early = b""  # body bytes that came with the response head
        self._chunks: ChunkedDecoder | None = None  # a camera that chunks its stream (it should not, to HTTP/1.0)
        self._scratch = bytearray(CHUNK)  # every read of the stream lands here first
        self._view = memoryview(self._scratch)
        self._parts: list[Part] = []
        self.dropped = 0  # parts cut short, dropped rather than spliced
        self.skipped = 0  # whole parts never handed over: a newer one came before, or nobody would take them
        self.auth_scheme: str | None = None  # what the camera asked for, when it did
        self._cut_in_a_row = 0

    @property
    def buffered(self) -> int:
        return self._decoder.buffered if self._decoder is not None else 0

    # ---------------------------------------------------------------- the response head
    def open(self, stop: threading.Event | None = None) -> None:
        """Connect and read the response head: CameraUnavailable if unreachable or refused (its fix names what
        to change), CameraNotMjpeg if not MJPEG. Returns within ``open_timeout_s`` (or soon after ``stop``)."""
        if credentials_unclear(self.url):  # as CameraSource.parse: an unencoded / ? # in the user or password
            raise CameraSourceCredentials(self.shown)
        try:  # "http://[" and "http://[]": urlsplit (or .hostname) raises ValueError; as CameraSource.parse
            url = urllib.parse.urlsplit(self.url)
            host, tls = url.hostname or "", url.scheme.lower() == "https"
            url.username  # noqa: B018 (read for the ValueError it may raise)
        except ValueError as exc:
            raise CameraSourceUrl(self.shown, str(exc)) from None
        try:
            port = url.port
        except ValueError:  # "host:http", "host:99999": urlsplit splits it, .port refuses it
            raise CameraFault(
                f"the camera URL {self.shown} has no valid port",
                "write the port in the source URL as a number 1..65535 (http://host:8080/...), or leave it out",
            ) from None
        if not host:
            raise CameraFault(f"the camera URL {self.shown} has no host", "write the camera's address in the URL")
        if port == 0:
            raise CameraFault(
                f"the camera URL {self.shown} has no valid port",
                "write the port in the source URL as a number 1..65535 (http://host:8080/...), or leave it out",
            )
        port = (443 if tls else 80) if port is None else port
        user = urllib.parse.unquote(url.username) if url.username is not None else None
        password = urllib.parse.unquote(url.password or "")
        for what, value in (("user", user or ""), ("password", password)):
            if _CONTROL.search(value):  # a percent-encoded CR LF would add header lines to the request
                raise CameraFault(
                    f"the camera URL {self.shown} has a control character in its {what}",
                    f"remove the control character (a percent-encoded CR, LF, tab or NUL: %0D %0A %09 %00...) from "
                    f"the {what} in the source URL",
                )
        target = _target(url.path, url.query)
        deadline = time.monotonic() + self.open_timeout_s
        authorization: str | None = None
        restaled = False
        for _ in range(REDIRECTS_MAX + 3):  # a challenge, a stale nonce's and a few redirects
            status, reason, headers = self._exchange(host, port, tls, target, authorization, deadline, stop)
            stale = authorization is not None and not restaled and any(  # the nonce expired: answer once more
                c.scheme == "digest" and c.params.get("stale", "").lower() == "true"
                for c in httpauth.challenges(headers.get("www-authenticate", []))
            )
            if status == 401 and user is not None and (authorization is None or stale):
                restaled = restaled or stale
                try:
                    self.auth_scheme, authorization = httpauth.answer(
                        headers.get("www-authenticate", []), user, password, "GET", target, tls=tls,
                        allow_basic_over_http=self.allow_basic_over_http,
                    )
                except httpauth.BasicInClear as exc:
                    raise CameraBasicInClear(self.shown, str(exc)) from None
                except httpauth.AuthUnsupported as exc:
                    raise CameraUnavailable(
                        f"the camera {self.shown} asks for an authentication the agent does not speak ({exc})",
                        "set the camera to accept Digest (or Basic, over https) authentication in its user or "
                        "security settings, or use its rtsp:// URL",
                    ) from None
                self._close()
                continue
            if status in (301, 302, 303, 307, 308):
                raw = (headers.get("location") or [""])[0].strip()
                if not raw:
                    raise CameraUnavailable(
                        f"the camera {self.shown} answered HTTP {status} with no Location",
                        "set source to the stream URL the camera's manual gives",
                    )
                try:
                    credentials = urllib.parse.urlsplit(raw).username is not None  # on the Location as sent
                except ValueError:
                    credentials = True
                if credentials:  # not shown: a scheme-relative //user:pw@host would not be redacted
                    raise CameraUnavailable(
                        f"the camera {self.shown} answered HTTP {status} to a URL holding credentials",
                        "set source to the stream URL the camera's manual gives",
                    )
                origin = f"{url.scheme.lower()}://{_host_header(host, port, tls)}"  # no userinfo to copy
                try:
                    location = urllib.parse.urljoin(origin + target, raw)
                    moved = urllib.parse.urlsplit(location)
                except ValueError:  # a Location urllib cannot split (an unbalanced [): no URL to follow or name
                    raise CameraFault(
                        f"the camera {self.shown} answered HTTP {status} with a Location that is no URL",
                        "set source to the stream URL the camera's manual gives",
                    ) from None
                try:
                    default = 443 if moved.scheme.lower() == "https" else 80
                    there = (moved.scheme.lower(), moved.hostname, default if moved.port is None else moved.port)
                    same = there == (url.scheme.lower(), host, port)
                except ValueError:
                    same = False
                if same and not moved.username:
                    target, authorization = _target(moved.path, moved.query), None
                    self._close()
                    continue
                raise CameraUnavailable(
                    f"the camera {self.shown} answered HTTP {status}: its stream is at {redact_url(location)}",
                    f"set source to {redact_url(location)} (with the camera's user and password in it if it needs "
                    "them)",
                )
            break
        else:
            raise CameraUnavailable(f"the camera {self.shown} redirected too many times",
                                    "set source to the stream URL the camera's manual gives")
        if status != 200:
            raise CameraUnavailable(f"the camera {self.shown} answered HTTP {status} {reason}",
                                    _status_fix(status, user is not None, authorization is not None))
        try:
            boundary = boundary_of((headers.get("content-type") or [""])[0])
        except NotMultipart as exc:
            raise CameraNotMjpeg(self.shown, str(exc)) from None
        codings = [c.strip().lower() for v in headers.get("transfer-encoding", []) for c in v.split(",") if c.strip()]
        codings = [c for c in codings if c != "identity"]
        if codings == ["chunked"]:  # not for HTTP/1.0, yet some cameras do (ESP-IDF's server): undone here
            self._chunks = ChunkedDecoder()
        elif codings:
            raise CameraNotMjpeg(self.shown, f"the camera encodes its stream ({', '.join(codings)}; "
                                 "Transfer-Encoding), so its parts cannot be read")
        self._decoder = MultipartDecoder(boundary, max_part_bytes=self.max_part_bytes)

    def _exchange(
        self, host: str, port: int, tls: bool, target: str, authorization: str | None, deadline: float,
        stop: threading.Event | None,
    ) -> tuple[int, str, dict[str, list[str]]]:
        """One request and its response head, all before ``deadline``: (status, reason, headers by name)."""

        def left() -> float:
            if stop is not None and stop.is_set():
                raise CameraUnavailable(f"the camera {self.shown} was closed while opening", "none needed")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise CameraUnavailable(
                    f"the camera {self.shown} did not answer within {self.open_timeout_s:g} s",
                    "check it is plugged in and reachable from this device, and the URL's host and port",
                )
            return min(remaining, POLL_S)

        try:
            # The CA file before the network: a ca_file that cannot be read was said only once the camera
            # answered, so behind a camera that did not (unplugged, a wrong port) its mistake stayed hidden.
            context = tls_context(self.ca_file, self.shown, self.tls_floor) if tls else None
            sock = self._connect(host, port, left)
            if context is not None:
                sock = context.wrap_socket(sock, server_hostname=host, do_handshake_on_connect=False)
                self._sock = sock
                while True:
                    sock.settimeout(left())
                    try:
                        sock.do_handshake()
                        break
                    except (TimeoutError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                        continue
                wild = [name for name in _cert_names(sock.getpeercert() or {}) if "*" in name]
                if wild:  # before any request byte (and any credential)
                    raise CameraUnavailable(
                        f"the camera {self.shown} has a wildcard TLS certificate ({', '.join(dict.fromkeys(wild))})",
                        "put a certificate issued for the camera's own host name on the camera (its web page): the "
                        "agent never accepts a wildcard",
                    )
            request = [f"GET {target} HTTP/1.0", f"Host: {_host_header(host, port, tls)}",
                       "Accept: multipart/x-mixed-replace, image/jpeg", "User-Agent: capture-agent"]
            if authorization is not None:
                request.append(f"Authorization: {authorization}")
            sock.settimeout(max(0.05, deadline - time.monotonic()))
            sock.sendall(self._request_bytes(request))
            head = b""
            while b"\r\n\r\n" not in head and b"\n\n" not in head:
                if len(head) > HEAD_MAX:
                    raise CameraNotMjpeg(self.shown, f"the response head runs past {HEAD_MAX} bytes")
                sock.settimeout(left())
                try:
                    data = sock.recv(CHUNK)
                except TimeoutError:
                    continue
                if not data:
                    raise CameraUnavailable(f"the camera {self.shown} closed the connection before answering",
                                            "check the URL's port is the camera's web port (http or https)")
                head += data
        except ssl.SSLCertVerificationError as exc:
            raise CameraUnavailable(
                f"the camera {self.shown} has a TLS certificate this device does not trust ({exc.verify_message})",
                "a camera's own certificate is often self-signed: set ca_file in the camera's [[device]] entry to "
                "the CA certificate (PEM) that signed the camera's certificate (or to the camera's self-signed "
                "certificate itself; `capture-agent devices --camera URL --camera-ca FILE` reads it so); the host "
                "name in the URL must be one the certificate names",
            ) from None
        except ssl.SSLError as exc:
            raise CameraUnavailable(
                f"the camera {self.shown} failed the TLS handshake ({exc.reason or type(exc).__name__})",
                "check the URL's scheme and port: https:// must point at the camera's https port; the agent speaks "
                "TLS 1.2 or 1.3 with ECDHE and AEAD suites (AES-GCM, ChaCha20) only: enable them on the camera, or "
                "update its firmware",
            ) from None
        except OSError as exc:  # refused, unreachable, a name that does not resolve
            raise CameraUnavailable(
                f"the camera {self.shown} did not answer: {type(exc).__name__}: {exc.strerror or exc}",
                "check it is plugged in and reachable from this device, and the URL's host and port",
            ) from None
        cut = min(i + n for i, n in ((head.find(b"\r\n\r\n"), 4), (head.find(b"\n\n"), 2)) if i >= 0)
        if cut > HEAD_MAX:  # one read can bring a whole long head: the bound holds for it too
            raise CameraNotMjpeg(self.shown, f"the response head runs past {HEAD_MAX} bytes")
        self._early = head[cut:]
        lines = [line.rstrip(b"\r").decode("latin-1") for line in head[:cut].split(b"\n")]  # not str.splitlines
        match = re.fullmatch(r"HTTP/1\.[01] +([0-9]{3})(?: +(.*))?", lines[0].strip()) if lines else None
        if match is None:
            raise CameraNotMjpeg(self.shown, "the answer is not HTTP/1.x")
        headers: dict[str, list[str]] = {}
        last: list[str] | None = None
        for line in lines[1:]:
            if line[:1] in (" ", "\t") and last:  # an obsolete folded line: the previous value goes on
                last[-1] = f"{last[-1]} {line.strip()}".strip()
                continue
            name, sep, value = line.partition(":")
            if sep:
                last = headers.setdefault(name.strip().lower(), [])
                last.append(value.strip())
            else:
                last = None
        return int(match.group(1)), (match.group(2) or "").strip()[:80], headers

    def _request_bytes(self, lines: list[str]) -> bytes:
        """The request head: ASCII, but an ``Authorization`` value echoing a challenge's Latin-1 bytes (a realm);
        no control character anywhere. A typed error else, never one holding the request text."""
        out = []
        for line in lines:
            if _CONTROL.search(line):
                raise CameraFault(
                    f"the request to the camera {self.shown} would carry a control character",
                    "check the source URL's host, and the camera's authentication settings (its realm or nonce)",
                )
            try:
                out.append(line.encode("latin-1" if line.startswith("Authorization: ") else "ascii"))
            except UnicodeEncodeError:
                raise CameraFault(
                    f"the camera URL {self.shown} has characters other than ASCII in its host",
                    "write the camera's host as an IP address or its ASCII (xn--) name",
                ) from None
        return b"\r\n".join(out) + b"\r\n\r\n"

    def _connect(self, host: str, port: int, left) -> socket.socket:
        """A connected socket, the name looked up and each address tried within the open deadline, ``stop``
        looked at every ``POLL_S`` (``left()`` raises when either ends): a slow resolver or an address that
        drops the SYN never holds the owner past them, and the lookup ends with the open (:mod:`resolve`)."""
        addresses = resolve.lookup(host, port, left)
        last: OSError = OSError(f"no address for {host}")
        for family, kind, proto, _, address in addresses:
            sock = socket.socket(family, kind, proto)
            self._sock = sock  # closed by release() whatever happens here
            sock.setblocking(False)
            error = sock.connect_ex(address)
            while error in (errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EALREADY):
                if select.select([], [sock], [], left())[1]:
                    error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if not error:
                return sock
            self._close()
            last = OSError(error, os.strerror(error))
        raise last

    # ---------------------------------------------------------------- the parts
    def next_part(
        self, stop: threading.Event | None = None, wanted: Callable[[], bool] | None = None
    ) -> JpegPart | None:
        """The newest JPEG part with its size (not decoded); None when the stream ends, stalls past the timeout,
        or ``stop`` is set.

        Every byte already arrived is read before a part is handed over, so the part is the newest the camera
        sent, never one out of a backlog in the socket buffer (``skipped`` counts those passed over).
        ``wanted()``, asked at every read, says whether a part would be taken: while it is False, parts with a
        Content-Length are passed over as they come (``skipped``), their bytes read into one scratch buffer and
        no further (no copy, no boundary scan, no JPEG header), and this call goes on reading; the first part
        whose head comes once it is True again is kept. The socket is read without a timeout of its own: the
        reader blocks in ``select`` only when nothing has arrived, at most ``POLL_S`` (to look at ``stop``).
        A part that is no JPEG raises NotJpeg (the caller counts them); a stream that breaks the codec's bounds,
        or whose parts are all cut short, raises a CameraFault.
        """
        assert self._sock is not None and self._decoder is not None
        sock, decoder = self._sock, self._decoder
        sock.settimeout(0)  # each read returns at once: what has arrived, or nothing
        if self._early:
            data, self._early = self._early, b""
            decoder.keep = wanted is None or wanted()
            self._feed(data)
        heard = time.monotonic()  # when the camera last sent a byte: quiet for read_timeout_s is a stall
        drained = 0  # reads since a part was whole: bounded, so a camera sending without pause is handed over
        while drained < DRAIN_READS_MAX and not self._ended():
            if stop is not None and stop.is_set():
                return None
            try:
                count = sock.recv_into(self._scratch)
            except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError) as exc:
                if self._parts:
                    break  # all that had arrived is read: the newest part goes
                quiet = time.monotonic() - heard
                if quiet >= self.read_timeout_s:
                    return None  # a stall: the stream is gone
                wait = min(POLL_S, self.read_timeout_s - quiet)
                writing = isinstance(exc, ssl.SSLWantWriteError)  # TLS has to answer first (a key update)
                select.select([] if writing else [sock], [sock] if writing else [], [], wait)
                continue
            except OSError:  # reset, or TLS closed: as the stream's end
                break
            if not count:
                break  # the camera closed the stream: a part whole before that still goes, then None
            heard = time.monotonic()
            decoder.keep = wanted is None or wanted()
            self._feed(self._view[:count])
            drained += bool(self._parts)
        if not self._parts:
            return None
        part = self._parts.pop()
        width, height = jpeg_size(part.body)  # NotJpeg for a part that is not one
        return JpegPart(part.body, width, height)

    def _ended(self) -> bool:
        """A chunked stream whose last chunk came has ended, as one whose connection closed."""
        return self._chunks is not None and self._chunks.ended

    def _feed(self, data: bytes | memoryview) -> None:
        assert self._decoder is not None
        events: list[Event] = []
        broken: ChunkError | None = None
        try:
            pieces = self._chunks.feed(data) if self._chunks is not None else [data]
        except ChunkError as exc:  # the payload undone before the break still goes to the parts' decoder
            pieces, broken = exc.payload, exc
        try:
            for piece in pieces:
                events += self._decoder.feed(piece)
            if broken is not None:
                raise broken
        except MjpegError as exc:
            # The parts parsed before the error in the same read count as if they had come in reads of
            # their own: the counters do not depend on how the camera's bytes were split.
            self._count(events + exc.events)
            if isinstance(exc, PartTooLarge):
                raise CameraFrameTooLarge(self.shown, str(exc), size=exc.size) from None
            if isinstance(exc, ConflictingLength | ChunkError):
                raise CameraStreamBroken(self.shown, str(exc)) from None
            raise CameraNotMjpeg(self.shown, str(exc)) from None  # NotMultipart, HeadersTooLarge
        self._take(events)

    def _count(self, events: list[Event]) -> None:
        """The events before an error: counted (skipped, dropped), no part kept, no fault of their own raised.

        A part whole from an earlier read and not yet handed over is passed over the same way: the fault
        goes up instead of it, whether it came in the read that failed or in one before.
        """
        self.skipped += len(self._parts)
        self._parts.clear()
        for event in events:
            if isinstance(event, Part | SkippedPart):
                self.skipped += 1  # whole, but never handed over: the stream failed right after it
            else:
                self.dropped += 1

    def _take(self, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, Part):
                self.skipped += len(self._parts)  # a newer part came before the older was handed over
                self._parts[:] = [event]  # the newest only: the older are never decoded
                self._cut_in_a_row = 0
            elif isinstance(event, SkippedPart):  # passed over unread: nobody would have taken it
                self.skipped += 1
                self._cut_in_a_row = 0
            else:
                self.dropped += 1
                self._cut_in_a_row += 1
                if self._cut_in_a_row >= CUT_PARTS_MAX:
                    raise CameraStreamBroken(
                        self.shown, f"{self._cut_in_a_row} parts in a row were {event.reason}"
                    )

    def _close(self) -> None:
        if self._sock is not None:
            self._sock.close()
        self._sock = None

    def release(self) -> None:
        self._close()
        self._decoder = self._chunks = None
        self._early = b""
        self._parts.clear()


def tls_context(ca_file: str, shown: str, floor: TLSFloor = DEFAULT_TLS_FLOOR) -> ssl.SSLContext:
    """The TLS client context of an https camera: ``floor``'s versions and suites (the agent gives the
    project's: ECDHE with AEAD only), the host name checked; ``ca_file`` trusted alone when given, the
    system's store else."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED, check_hostname
    context.minimum_version = max(floor.minimum, ssl.TLSVersion.TLSv1_2)
    if floor.ciphers:
        context.set_ciphers(floor.ciphers)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    if ca_file:
        try:
            context.load_verify_locations(cafile=ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise CameraFault(
                f"the CA file {ca_file} of the camera {shown} cannot be read ({type(exc).__name__})",
                "set ca_file in the camera's [[device]] entry (or `capture-agent devices --camera-ca`) to a "
                "readable PEM file of the CA certificate that signed the camera's certificate",
            ) from None
    else:
        context.load_default_certs()
    return context


def _cert_names(peer: dict) -> list[str]:
    names = [value for kind, value in peer.get("subjectAltName", ()) if kind == "DNS"]
    names += [value for rdn in peer.get("subject", ()) for key, value in rdn if key == "commonName"]
    return names


def _target(path: str, query: str) -> str:
    """The request target: what the URL holds, with bytes no request line may carry percent-encoded (a space,
    a control character: they would split the request or its headers)."""
    target = (path or "/") + (f"?{query}" if query else "")
    return urllib.parse.quote(target, safe="/?&=%:@!$'()*+,;~-._[]")


def _host_header(host: str, port: int, tls: bool) -> str:
    shown = f"[{host}]" if ":" in host else host
    return shown if port == (443 if tls else 80) else f"{shown}:{port}"


def _status_fix(status: int, had_user: bool, answered: bool) -> str:
    if status == 401 and answered:
        return ("check the user and password in the source URL (http://user:password@host/...; percent-encode "
                "@ : / in them): the camera refused them")
    if status == 401:
        return "put the camera's user and password in the source URL (http://user:password@host/...)"
    if status == 403:
        return ("the camera's user may not view its stream: give that user the viewer (live view) right in the "
                "camera's user settings, or put another user in the URL" if had_user else
                "put a user allowed to view the stream in the source URL (http://user:password@host/...)")
    if status == 404:
        return "check the URL's path against the camera's manual (often /video.mjpg, /mjpg/video.mjpg, /stream.mjpg)"
    if status == 503:
        return "the camera serves too many viewers at once: close another viewer, or raise its limit in its settings"
    return "check the URL against the camera's manual"


def decode(part: JpegPart) -> np.ndarray | None:
    """The part's pixels (BGR), or None when OpenCV cannot decode it or it is not the size its header says."""
    # EXIF orientation is not applied: the pixels keep the size the SOF header gave (and the size check read)
    pixels = cv2.imdecode(np.frombuffer(part.body, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if pixels is None or pixels.shape[:2] != (part.height, part.width):
        return None
    return pixels


__all__ = ["JpegPart", "MjpegReader", "NotJpeg", "decode", "is_http"]
