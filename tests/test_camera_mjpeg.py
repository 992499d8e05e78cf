"""The camera driver against hostile and broken MJPEG cameras: bounded bytes, refused sizes, no splicing.

The codec is fed every split of its streams; the driver reads a hostile HTTP
camera on 127.0.0.1 (a free port, stopped by each test). Memory is measured as
bytes the codec holds and sizes it refused, never by time.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
import structlog

from drivers.camera.camera import Camera, CameraError
from drivers.camera.errors import (
    CameraFrameSize,
    CameraFramesUndecodable,
    CameraFrameTooLarge,
    CameraNotMjpeg,
    CameraStreamBroken,
)
from drivers.camera.mjpeg import (
    DroppedPart,
    HeadersTooLarge,
    MultipartDecoder,
    NotJpeg,
    NotMultipart,
    Part,
    PartTooLarge,
    boundary_of,
    jpeg_size,
)
from drivers.camera.stream import TLSFloor
from protocol.tls import MINIMUM_VERSION, TLS12_CIPHERS
from simulators.camera import read_stamp, stamp
from tests.conftest import TestCA


def jpeg(w: int, h: int, seq: int = 0) -> bytes:
    image = stamp(np.full((h, w, 3), 100, np.uint8), seq) if w >= 128 else np.full((h, w, 3), 100, np.uint8)
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 80])
    assert ok
    return data.tobytes()


def part(body: bytes, length: int | None = None) -> bytes:
    n = len(body) if length is None else length
    return b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % n + body + b"\r\n"


def feed_split(decoder: MultipartDecoder, data: bytes, step: int) -> list:
    events = []
    for i in range(0, len(data), step):
        events += decoder.feed(data[i : i + step])
    return events


# ---------------------------------------------------------------- the codec
@pytest.mark.parametrize("step", [1, 3, 64, 1000, 10**6])
def test_parts_come_out_whole_at_every_split_and_a_part_cut_short_is_dropped_not_spliced(step) -> None:
    a, b, c = jpeg(320, 240, 1), jpeg(320, 240, 2), jpeg(320, 240, 3)
    stream = b"preamble\r\n" + part(a) + part(b[: len(b) // 2], length=len(b)) + part(c) + b"--frame\r\n\r\n" + a
    stream += b"\r\n--frame--\r\n"
    decoder = MultipartDecoder(b"frame")
    events = feed_split(decoder, stream, step)
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["Part", "DroppedPart", "Part", "Part"]
    assert [e.body for e in events if isinstance(e, Part)] == [a, c, a]  # c is whole: not glued to half of b
    assert isinstance(events[1], DroppedPart) and f"{len(b) // 2} of the {len(b)}" in events[1].reason


@pytest.mark.parametrize("step", [1, 3, 64, 1000, 10**6])
def test_parts_nobody_would_take_are_counted_never_held_and_one_cut_short_still_shows(step) -> None:
    """``keep = False``: a part with a Content-Length is passed over as it is fed (no copy, no scan); the next
    boundary's place tells one that ended where it said from one cut short."""

    a, b, c = jpeg(320, 240, 1), jpeg(320, 240, 2), jpeg(320, 240, 3)
    stream = part(a) + part(b) + part(c[: len(c) // 2], length=len(c)) + part(a) + part(b) + part(c)
    decoder = MultipartDecoder(b"frame")
    decoder.keep = False
    events, held = [], []
    for i in range(0, len(stream), step):
        events += decoder.feed(stream[i : i + step])
        held.append(decoder.buffered)
    assert [type(e).__name__ for e in events[:3]] == ["SkippedPart", "SkippedPart", "DroppedPart"]
    assert [e.size for e in events[:2]] == [len(a), len(b)]
    assert "did not end where its Content-Length" in events[2].reason
    assert max(held) < 200  # a part's head and a boundary's bytes at most: never a body
    decoder.keep = True  # someone asks: the next part whose head comes is kept whole
    events = decoder.feed(part(a) + b"--frame\r\n")
    assert [e.body for e in events if isinstance(e, Part)] == [a]


@pytest.mark.parametrize("step", [1, 7, 10**6])
def test_the_delimiter_in_the_middle_of_a_line_is_data_not_the_end_of_a_part(step) -> None:
    """RFC 2046: a delimiter starts a line. A body holding "--frame" mid-line (JPEG bytes may) stays whole."""
    tricky = b"\xff\xd8 data--frame more\r\nx--frame\r\n end \xff\xd9"
    unsized = b"--frame\r\nContent-Type: image/jpeg\r\n\r\n" + tricky + b"\r\n"
    stream = part(tricky) + unsized + part(b"next") + b"--frame--\r\n"
    events = feed_split(MultipartDecoder(b"frame"), stream, step)
    assert [e.body for e in events if isinstance(e, Part)] == [tricky, tricky, b"next"]
    assert not [e for e in events if isinstance(e, DroppedPart)]


def test_a_declared_length_over_the_cap_is_refused_before_its_bytes() -> None:
    decoder = MultipartDecoder(b"frame", max_part_bytes=1 << 20)
    with pytest.raises(PartTooLarge) as refused:
        decoder.feed(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: 2147483000\r\n\r\n" + b"\x55" * 1000)
    assert refused.value.size == 2147483000 and refused.value.limit == 1 << 20


def test_a_part_with_no_length_and_no_end_is_refused_at_the_cap() -> None:
    cap = 1 << 20
    decoder = MultipartDecoder(b"frame", max_part_bytes=cap)
    decoder.feed(b"--frame\r\nContent-Type: image/jpeg\r\n\r\n")
    held = []
    with pytest.raises(PartTooLarge) as refused:
        for _ in range(100):  # 100 x 64 kB offered: 6.4 MB
            decoder.feed(b"\x55" * 65536)
            held.append(decoder.buffered)
    assert max(held) <= cap and refused.value.size == cap + 1 and not refused.value.declared


def test_headers_and_preambles_are_bounded() -> None:
    with pytest.raises(HeadersTooLarge):
        MultipartDecoder(b"frame").feed(b"--frame\r\nX-Junk: " + b"a" * 20000)
    decoder = MultipartDecoder(b"frame", max_part_bytes=100_000)
    with pytest.raises(NotMultipart):
        for _ in range(10):
            decoder.feed(b"\x00" * 20000)
    assert decoder.buffered < 100
    with pytest.raises(NotMultipart, match="text/html"):
        boundary_of("text/html; charset=utf-8")
    assert boundary_of('multipart/x-mixed-replace; boundary="frame"') == b"frame"


def test_a_jpeg_part_repr_holds_no_frame_bytes() -> None:
    from drivers.camera.stream import JpegPart

    body = jpeg(64, 48)
    shown = repr(JpegPart(body, 64, 48))
    assert "64" in shown and "48" in shown
    assert "body" not in shown and repr(body[:8])[2:-1] not in shown and "\\x" not in shown


def test_jpeg_size_is_read_from_the_header_without_decoding() -> None:
    assert jpeg_size(jpeg(320, 240)) == (320, 240)
    small = jpeg(16, 16)
    at = small.index(b"\xff\xc0")
    bomb = small[: at + 5] + struct.pack(">HH", 16000, 16000) + small[at + 9 :]
    assert jpeg_size(bomb) == (16000, 16000)
    with pytest.raises(NotJpeg):
        jpeg_size(b"\x00" * 100)


def chunked(pieces: list[bytes], extension: bytes = b"") -> bytes:
    """``pieces`` in the chunked transfer coding, each a chunk, then the last chunk and no trailer."""
    return b"".join(b"%x%s\r\n" % (len(p), extension) + p + b"\r\n" for p in pieces) + b"0\r\n\r\n"


@pytest.mark.parametrize("step", [1, 3, 7, 1000, 10**6])
def test_a_chunked_stream_is_undone_at_every_split_holding_no_chunk_data(step) -> None:
    from drivers.camera.chunked import ChunkedDecoder

    a, b = jpeg(320, 240, 1), jpeg(320, 240, 2)
    payload = part(a) + part(b)
    wire = chunked([payload[:50], payload[50:5000], payload[5000:]], b";ext=1") + b"after the end: ignored"
    dechunk, decoder = ChunkedDecoder(), MultipartDecoder(b"frame")
    events, held = [], []
    for i in range(0, len(wire), step):
        for piece in dechunk.feed(wire[i : i + step]):
            events += decoder.feed(piece)
        held.append(dechunk.buffered)
    assert [e.body for e in events if isinstance(e, Part)] == [a, b]
    assert dechunk.ended and max(held) < 16  # a chunk-size line at most: chunk data is handed on, never held


@pytest.mark.parametrize(
    ("wire", "why"),
    [
        (b"zz\r\nabc", "no hex number"),
        (b"-5\r\nabcde\r\n", "no hex number"),
        (b"3\r\nabcX\r\n", "did not end where its size said"),
        (b"1" * 2000, "runs past 1024 bytes"),
        (b"0\r\n" + b"X-Pad: aaaa\r\n" * 1000, "trailer runs past"),
    ],
)
def test_broken_chunk_framing_is_a_typed_error(wire, why) -> None:
    from drivers.camera.chunked import ChunkedDecoder, ChunkError

    with pytest.raises(ChunkError, match=why):
        ChunkedDecoder().feed(wire)


# ---------------------------------------------------------------- the driver on a hostile camera
class LoopbackServer:
    """A TCP server on a free port of 127.0.0.1: each connection goes to ``handle(index, conn)`` on its own thread."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)  # here, not in the thread: close() may come before the thread runs
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        index = 0
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self.handle, args=(index, conn), daemon=True).start()
            index += 1

    def handle(self, index: int, conn: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


class HostileCamera(LoopbackServer):
    """Writes an MJPEG response head, then whatever ``body(server, conn)`` sends."""

    def __init__(self, body, content_type: bytes = b"multipart/x-mixed-replace; boundary=frame") -> None:
        self.body, self.content_type = body, content_type
        self.sent = 0
        self.done = threading.Event()
        self.go = threading.Event()
        super().__init__()
        self.url = f"http://127.0.0.1:{self.port}/stream.mjpg"

    def send(self, conn: socket.socket, data: bytes) -> None:
        conn.sendall(data)
        self.sent += len(data)

    def handle(self, index: int, conn: socket.socket) -> None:
        with conn:
            try:
                conn.recv(4096)
                self.send(conn, b"HTTP/1.0 200 OK\r\nContent-Type: " + self.content_type + b"\r\n\r\n")
                self.body(self, conn)
            except OSError:
                pass
            self.stop.wait(30)


@pytest.fixture
def hostile():
    servers: list[HostileCamera] = []

    def make(body, **kw) -> HostileCamera:
        servers.append(HostileCamera(body, **kw))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


def endless(server: HostileCamera, conn: socket.socket, head: bytes) -> None:
    server.send(conn, head)
    blob = b"\x55" * 65536
    while not server.stop.is_set():
        server.send(conn, blob)


def test_a_two_gigabyte_part_is_refused_from_its_header(hostile) -> None:
    server = hostile(lambda s, c: endless(s, c, b"--frame\r\nContent-Length: 2147483000\r\n\r\n"))
    camera = Camera(server.url, reconnect=False, max_part_bytes=1 << 20)
    assert not camera.open_once(timeout_s=10)
    assert isinstance(camera.fault, CameraFrameTooLarge) and "2147483000 bytes" in str(camera.fault)
    assert camera.latest() is None and camera.decoded == 0


def test_a_part_with_no_length_is_cut_off_at_the_cap(hostile) -> None:
    server = hostile(lambda s, c: endless(s, c, b"--frame\r\nContent-Type: image/jpeg\r\n\r\n" + jpeg(320, 240)[:200]))
    cap = 1 << 20
    camera = Camera(server.url, reconnect=False, max_part_bytes=cap)
    assert not camera.open_once(timeout_s=10)
    assert isinstance(camera.fault, CameraFrameTooLarge)
    held = camera.fault.size
    assert held == cap + 1  # "at least cap + 1": how far past the cap it read depends on the reads, not the part


def test_a_frame_too_large_is_refused_before_decoding(hostile) -> None:
    big = part(jpeg(5000, 4000))  # a real JPEG, small on the wire; 60 MB of pixels once decoded

    def body(server: HostileCamera, conn: socket.socket) -> None:
        while not server.stop.is_set():
            server.send(conn, big)
            server.stop.wait(0.05)

    server = hostile(body)
    camera = Camera(server.url, reconnect=False, max_side=4096)
    assert not camera.open_once(timeout_s=10)
    assert isinstance(camera.fault, CameraFrameSize)
    assert (camera.fault.width, camera.fault.height) == (5000, 4000)
    assert "camera's own resolution" in camera.fault.fix  # a stream's size is set on the camera, not in the config
    assert camera.decoded == 0 and camera.latest() is None


def test_parts_cut_short_are_never_spliced_into_a_frame(hostile) -> None:
    frames = [jpeg(320, 240, seq) for seq in range(1, 4)]

    def body(server: HostileCamera, conn: socket.socket) -> None:
        server.send(conn, part(frames[0]))
        server.go.wait(10)  # the first frame is taken before the next parts come
        server.send(conn, part(frames[1][: len(frames[1]) // 2], length=len(frames[1])))
        server.send(conn, part(frames[2]))
        server.done.set()

    server = hostile(body)
    with Camera(server.url, reconnect=False) as camera:
        first = camera.wait_frame(timeout_s=10)
        server.go.set()
        assert server.done.wait(10)
        second = camera.wait_frame(after=first.seq, timeout_s=10)
        assert [read_stamp(first.pixels), read_stamp(second.pixels)] == [1, 3]
        assert np.abs(second.pixels.astype(int) - cv2.imdecode(np.frombuffer(frames[2], np.uint8), 1)).max() == 0
        assert camera.reader is not None and camera.reader.dropped == 1


def test_a_stream_of_parts_always_cut_short_is_a_fault(hostile) -> None:
    data = jpeg(320, 240)

    def body(server: HostileCamera, conn: socket.socket) -> None:
        while not server.stop.is_set():
            server.send(conn, part(data[: len(data) // 2], length=len(data)))
            server.stop.wait(0.01)

    camera = Camera(hostile(body).url, reconnect=False)
    assert not camera.open_once(timeout_s=10)
    assert isinstance(camera.fault, CameraStreamBroken) and camera.decoded == 0


def test_a_stream_that_is_not_mjpeg_says_so(hostile) -> None:
    noise = part(bytes(range(256)) * 40)

    def body(server: HostileCamera, conn: socket.socket) -> None:
        while not server.stop.is_set():
            server.send(conn, noise)
            server.stop.wait(0.01)

    camera = Camera(hostile(body).url, reconnect=False)
    assert not camera.open_once(timeout_s=10)
    assert isinstance(camera.fault, CameraNotMjpeg) and "not MJPEG" in str(camera.fault)
    page = hostile(lambda s, c: s.send(c, b"<html>camera login</html>"), content_type=b"text/html")
    camera = Camera(page.url, reconnect=False)
    assert not camera.open_once(timeout_s=10)
    assert isinstance(camera.fault, CameraNotMjpeg) and "text/html" in str(camera.fault)


def undecodable() -> bytes:
    """A progressive JPEG of 2048x2048 whose last scan is one no progressive JPEG has (DC and AC at once).

    Its size reads from its header, and OpenCV works through the scans before it (tens of ms) and then fails:
    slower to fail than the camera sends it, so a part is always pending for a wait that just failed one.
    """
    pixels = np.random.default_rng(1).integers(0, 255, (2048, 2048, 3), np.uint8)
    ok, encoded = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, 90, cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    assert ok
    data = bytearray(encoded.tobytes())
    last_scan = data.rfind(b"\xff\xda")
    at = last_scan + 5 + 2 * data[last_scan + 4]  # past the scan's components: Ss, Se, Ah/Al
    data[at : at + 3] = b"\x00\x3f\x00"
    return bytes(data)


def good_then_garbage(garbage: bytes):
    """A camera that gives one good frame, then (once told to go) ``garbage`` parts as fast as it can, forever."""

    def body(server: HostileCamera, conn: socket.socket) -> None:
        server.send(conn, part(jpeg(320, 240, 1)))
        server.go.wait(10)
        while not server.stop.is_set():
            server.send(conn, garbage)

    return body


def wait_in_thread(camera: Camera, after: int, timeout_s: float, cancel: threading.Event | None = None):
    """``camera.wait_frame`` on a thread of its own: (the thread, what it returned or raised)."""
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(camera.wait_frame(after, timeout_s, cancel))
        except Exception as exc:  # what the wait raised is the outcome under test
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def test_a_wait_on_parts_that_never_decode_ends_with_a_fault_naming_the_camera_not_a_hang(hostile) -> None:
    """The wait took part after undecodable part (one was always pending) and never looked at its deadline."""
    server = hostile(good_then_garbage(part(undecodable())))
    events: list[tuple[str, dict]] = []
    camera = Camera(server.url, reconnect=False, on_event=lambda kind, data: events.append((kind, data)))
    try:
        with structlog.testing.capture_logs() as logs:
            assert camera.open_once(timeout_s=10)
            first = camera.latest()
            assert first is not None
            server.go.set()
            # The fault (BAD_PARTS_MAX undecodable parts) ends the wait; its deadline is far beyond, so a loaded
            # machine decoding slowly reaches the fault first (at 2 s it once timed out before the tenth part).
            thread, outcome = wait_in_thread(camera, first.seq, timeout_s=30)
            thread.join(120)  # a bound on a hang only: the wait gives up long before
            assert not thread.is_alive(), "the wait on undecodable parts never returned"
        (raised,) = outcome
        assert isinstance(raised, CameraFramesUndecodable)
        assert "cannot be decoded" in str(raised) and "check the camera" in raised.fix
        faults = [e for e in logs if e["event"] == "camera_fault"]
        assert faults and faults[0]["error"] == "CameraFramesUndecodable" and "check the camera" in faults[0]["fix"]
        assert all(isinstance(v, str | int | float | None) for e in faults for v in e.values())  # no frame bytes
        assert [kind for kind, _ in events].count("camera_fault") == 1  # reported once, not per part
    finally:
        camera.stop()


def test_a_wait_on_parts_that_never_decode_ends_when_cancelled(hostile, monkeypatch) -> None:
    from drivers.camera import camera as camera_module

    monkeypatch.setattr(camera_module, "BAD_PARTS_MAX", 1 << 30)  # no fault ends the wait: only the cancel can
    server = hostile(good_then_garbage(part(undecodable())))
    camera = Camera(server.url, reconnect=False)
    camera.idle_after_s = 0.0  # the owner never decodes ahead: the wait alone takes the parts, one always pending
    try:
        assert camera.open_once(timeout_s=10)
        first = camera.latest()
        assert first is not None
        cancel = threading.Event()
        server.go.set()
        thread, outcome = wait_in_thread(camera, first.seq, timeout_s=3600, cancel=cancel)
        for _ in range(600):  # until the wait is taking undecodable parts
            if camera.decoded > 5:
                break
            threading.Event().wait(0.05)
        assert camera.decoded > 5
        cancel.set()
        thread.join(60)  # a bound on a hang only
        assert not thread.is_alive(), "a cancelled wait on undecodable parts never returned"
        (raised,) = outcome
        assert isinstance(raised, CameraError) and "cancelled" in str(raised)
    finally:
        camera.stop()


def test_a_wait_on_parts_that_are_no_jpeg_ends_at_its_deadline_with_the_fault(hostile) -> None:
    """Parts that are no JPEG at all fail in the reader: the owner ends the connection with the fault, and the
    wait gives it up at its deadline (this path always did; pinned beside the one that did not)."""
    server = hostile(good_then_garbage(part(bytes(range(256)) * 40)))
    camera = Camera(server.url, reconnect=False)
    try:
        assert camera.open_once(timeout_s=10)
        first = camera.latest()
        assert first is not None
        server.go.set()
        # The owner ending the connection ends the wait; the deadline is a bound for a loaded machine, whose
        # owner thread may not have read the garbage within a short one (the wait then said "no frame").
        thread, outcome = wait_in_thread(camera, first.seq, timeout_s=30)
        thread.join(60)
        assert not thread.is_alive()
        (raised,) = outcome
        assert isinstance(raised, CameraNotMjpeg) and "not MJPEG" in str(raised)
    finally:
        camera.stop()


def test_parts_nobody_asks_for_are_passed_over_undecoded_and_the_next_consumer_gets_a_newer_one(hostile) -> None:
    count = 300
    parts = [part(jpeg(320, 240, seq)) for seq in range(1, count + 1)]

    def body(server: HostileCamera, conn: socket.socket) -> None:
        server.send(conn, parts[0])
        server.go.wait(10)
        for data in parts[1:]:  # as fast as the socket takes them, with nobody asking for a frame
            server.send(conn, data)
        server.done.set()
        seq = count
        while not server.stop.is_set():  # the camera goes on, slower: a consumer comes meanwhile
            seq += 1
            server.send(conn, part(jpeg(320, 240, seq)))
            server.stop.wait(0.02)

    server = hostile(body)
    camera = Camera(server.url, reconnect=False)
    assert camera.open_once(timeout_s=10)  # the first part is decoded: the camera's size, a real JPEG
    try:
        opened = camera.latest()
        assert opened is not None and read_stamp(opened.pixels) == 1
        server.go.set()
        assert server.done.wait(10)
        for _ in range(200):  # until the driver has read past the burst (each part counted as it went by)
            if camera.reader is not None and camera.reader.skipped >= count - 1:
                break
            threading.Event().wait(0.05)
        assert camera.reader is not None and camera.reader.skipped >= count - 1
        assert camera.decoded == 1  # nobody took the 299 others: none was decoded
        newest = camera.wait_frame(after=opened.seq, timeout_s=10)
        assert read_stamp(newest.pixels) > count  # one the camera sent once asked: never one out of the burst
        assert newest.seq == read_stamp(newest.pixels)  # frame numbers still count every part the camera sent
        assert camera.wait_frame(timeout_s=10).seq >= newest.seq  # asked again at once: never an older frame
    finally:
        camera.stop()


def test_a_consumer_back_after_idle_never_gets_the_frame_from_before_while_the_owner_decodes(hostile,
                                                                                              monkeypatch) -> None:
    """The owner decodes the first part kept for a returning consumer outside the lock: meanwhile the consumer
    was handed the frame decoded before the idle time (a face session saw a 3.7 s gap: "face lost")."""
    from drivers.camera import stream as mjpeg_stream

    def body(server: HostileCamera, conn: socket.socket) -> None:
        seq = 0
        while not server.stop.is_set():
            seq += 1
            server.send(conn, part(jpeg(320, 240, seq)))
            server.stop.wait(0.02)

    real, owner_decodes = mjpeg_stream.decode, threading.Event()

    def decode(p):  # the owner's decoding ahead is slow once the camera is open: the window stays open
        if camera.owner_ident == threading.get_ident() and camera.latest() is not None:
            owner_decodes.set()
            threading.Event().wait(0.3)
        return real(p)

    monkeypatch.setattr(mjpeg_stream, "decode", decode)
    camera = Camera(hostile(body).url, reconnect=False)
    camera.idle_after_s = 0.05  # idle soon after the last ask
    assert camera.open_once(timeout_s=10)
    try:
        before = camera.wait_frame(timeout_s=10)  # asks: the owner decodes ahead for a while
        skipped = camera.reader.skipped if camera.reader is not None else 0
        for _ in range(200):  # until nobody asking has made the owner pass parts over
            if camera.reader is not None and camera.reader.skipped > skipped + 3:
                break
            threading.Event().wait(0.02)
        back = camera.wait_frame(timeout_s=10)  # after=0: the newest frame, whatever was seen
        assert owner_decodes.is_set()  # the owner was decoding the new part when the consumer came back
        assert read_stamp(back.pixels) > read_stamp(before.pixels) + 3 and back.seq > before.seq + 3
    finally:
        camera.stop()


def test_a_consumer_waiting_longer_than_the_idle_time_is_still_served(hostile) -> None:
    """Waiting counts as asking: parts are kept while a consumer waits, however slow the camera."""

    def body(server: HostileCamera, conn: socket.socket) -> None:
        seq = 0
        while not server.stop.is_set():
            seq += 1
            server.send(conn, part(jpeg(320, 240, seq)))
            server.stop.wait(0.15)  # slower than the idle time below: each wait outlasts it

    camera = Camera(hostile(body).url, reconnect=False)
    camera.idle_after_s = 0.01
    assert camera.open_once(timeout_s=10)
    try:
        seen = [camera.wait_frame(timeout_s=5)]
        for _ in range(2):
            seen.append(camera.wait_frame(after=seen[-1].seq, timeout_s=5))
        assert [read_stamp(f.pixels) for f in seen] == sorted({read_stamp(f.pixels) for f in seen})
    finally:
        camera.stop()


# ---------------------------------------------------------------- the agent: a typed, audited device fault
def test_frames_out_of_range_are_an_audited_device_fault_with_a_fix_that_works(hostile) -> None:
    import asyncio

    from agent.config import DeviceSection, parse_config
    from agent.devices.errors import DeviceFault
    from agent.devices.supervisor import DeviceSupervisor
    from agent.errors import AgentError, ConfigError
    from biometrics.face.image import MAX_SIDE

    good, big = part(jpeg(320, 240)), part(jpeg(5000, 4000))
    switch = threading.Event()

    def body(server: HostileCamera, conn: socket.socket) -> None:
        while not server.stop.is_set():
            server.send(conn, big if switch.is_set() else good)
            server.stop.wait(0.04)

    server = hostile(body)
    recorded: list[tuple[str, dict]] = []

    async def scenario() -> None:
        supervisor = DeviceSupervisor(
            [("door", DeviceSection(kind="camera", source=server.url, width=640, height=480))],
            lambda kind, data: recorded.append((kind, data)),
        )
        (camera,) = supervisor.devices
        await supervisor.open_all()
        try:
            assert camera.connected
            first = await asyncio.to_thread(camera.wait_frame, 0, 10.0)
            switch.set()  # the camera is set to 5000x4000 mid-session
            with pytest.raises(DeviceFault) as caught:
                seq = first.seq
                for _ in range(100):
                    seq = (await asyncio.to_thread(camera.wait_frame, seq, 2.0)).seq
            await asyncio.sleep(0.1)  # the audit event is recorded on the loop
        finally:
            await supervisor.close()
        fault = caught.value
        assert isinstance(fault, AgentError) and "5000x4000" in fault.message
        assert "camera's own resolution" in fault.fix and "do not resize a stream" in fault.fix
        assert [k for k, d in recorded if k == "device_fault" and "5000x4000" in d["error"]]

    asyncio.run(scenario())
    assert parse_config({"device": [{"kind": "camera", "source": "0", "width": MAX_SIDE, "height": 480}]})
    with pytest.raises(ConfigError, match=f"to {MAX_SIDE}"):
        parse_config({"device": [{"kind": "camera", "source": "0", "width": MAX_SIDE + 1, "height": 480}]})


def test_a_camera_that_never_gives_a_frame_in_range_is_audited_at_open(hostile) -> None:
    import asyncio

    from agent.config import DeviceSection
    from agent.devices.supervisor import DeviceSupervisor

    tiny = part(jpeg(16, 16))

    def body(server: HostileCamera, conn: socket.socket) -> None:
        while not server.stop.is_set():
            server.send(conn, tiny)
            server.stop.wait(0.04)

    server = hostile(body)
    recorded: list[tuple[str, dict]] = []

    async def scenario() -> None:
        supervisor = DeviceSupervisor([("door", DeviceSection(kind="camera", source=server.url))],
                                      lambda kind, data: recorded.append((kind, data)))
        await supervisor.open_all()
        await supervisor.close()

    asyncio.run(scenario())
    (fault,) = [d for k, d in recorded if k == "device_fault"]
    assert "16x16" in fault["error"] and "camera's own resolution" in fault["fix"]


# ---------------------------------------------------------------- a bad Content-Length, a driver bug
@pytest.mark.parametrize("value", [b"\xb2", b"1\xb9", b"\xd9\xa3", b"-5", b"+5", b" 5 5", b"0x10", b"5\x00"])
def test_a_content_length_that_is_no_ascii_number_is_no_length_and_never_an_untyped_error(value) -> None:
    body = jpeg(32, 32)
    decoder = MultipartDecoder(b"frame")
    events = decoder.feed(b"--frame\r\nContent-Length: " + value + b"\r\n\r\n" + body + b"\r\n--frame\r\n")
    assert [e.body for e in events if isinstance(e, Part)] == [body]  # framed by the boundary instead


@pytest.mark.parametrize("digits", [11, 5000])
def test_a_content_length_of_many_digits_is_refused_as_too_large(digits) -> None:
    decoder = MultipartDecoder(b"frame", max_part_bytes=1 << 20)
    with pytest.raises(PartTooLarge) as refused:
        decoder.feed(b"--frame\r\nContent-Length: " + b"9" * digits + b"\r\n\r\n\xff\xd8")
    assert refused.value.declared and refused.value.size > refused.value.limit


def test_repeated_content_lengths_must_agree() -> None:
    from drivers.camera.mjpeg import ConflictingLength

    body = jpeg(32, 32)
    n = b"%d" % len(body)
    same = MultipartDecoder(b"frame").feed(
        b"--frame\r\nContent-Length: " + n + b"\r\nContent-Length: " + n + b", " + n + b"\r\n\r\n" + body + b"\r\n"
    )
    assert [e.body for e in same if isinstance(e, Part)] == [body]
    for head in (b"Content-Length: 10\r\nContent-Length: 12", b"Content-Length: 10, 12"):
        with pytest.raises(ConflictingLength):
            MultipartDecoder(b"frame").feed(b"--frame\r\n" + head + b"\r\n\r\n" + body + b"\r\n--frame\r\n")


def test_a_bad_port_is_a_fault_naming_the_fix_and_the_owner_thread_ends_cleanly() -> None:
    from drivers.camera.errors import CameraFault

    with socket.create_server(("127.0.0.1", 0)) as free:
        bad = f"http://127.0.0.1:{free.getsockname()[1] + 70000}/video.mjpg"  # over 65535
    died: list[BaseException | None] = []
    hook, threading.excepthook = threading.excepthook, lambda args: died.append(args.exc_value)
    try:
        camera = Camera(bad, reconnect=False)
        assert not camera.open_once(timeout_s=10)
    finally:
        threading.excepthook = hook
    assert died == []
    assert isinstance(camera.fault, CameraFault) and "port" in str(camera.fault) and "65535" in camera.fault.fix


def test_an_unexpected_error_in_the_owner_is_a_fault_the_camera_is_unplugged_and_reopened(hostile, monkeypatch) -> None:
    from drivers.camera import stream as mjpeg_stream

    frame = part(jpeg(320, 240, 1))

    def body(server: HostileCamera, conn: socket.socket) -> None:
        while not server.stop.is_set():
            server.send(conn, frame)
            server.stop.wait(0.02)

    real, calls = mjpeg_stream.jpeg_size, []

    def flaky(data: bytes) -> tuple[int, int]:
        calls.append(1)
        if len(calls) == 3:  # once, after the camera gave frames: a bug, not a fault of the camera
            raise ValueError("a bug in the driver")
        return real(data)

    monkeypatch.setattr(mjpeg_stream, "jpeg_size", flaky)
    events: list[str] = []
    replugged = threading.Event()

    def on_event(kind: str, data: dict) -> None:
        events.append(kind)
        if events.count("camera_plugged") == 2:
            replugged.set()

    died: list[BaseException | None] = []
    hook, threading.excepthook = threading.excepthook, lambda args: died.append(args.exc_value)
    camera = Camera(hostile(body).url, on_event=on_event)
    try:
        camera.start()
        seq = 0
        for _ in range(100):  # a consumer at work: every part's header is read as it comes
            if replugged.is_set():
                break
            with contextlib.suppress(CameraError):
                seq = camera.wait_frame(after=seq, timeout_s=1).seq
        assert replugged.wait(20)
        assert camera.connected
        assert events[:4] == ["camera_plugged", "camera_fault", "camera_unplugged", "camera_plugged"]
        assert died == [] and [t for t in threading.enumerate() if t.name.startswith("camera ")]
    finally:
        camera.stop()
        threading.excepthook = hook
    assert not camera.connected


def test_a_jpeg_with_an_exif_orientation_is_decoded_at_its_header_size(hostile) -> None:
    from drivers.camera.stream import JpegPart, decode

    plain = jpeg(320, 240, 7)
    # EXIF APP1 with one IFD0 entry: Orientation (0x0112), SHORT, 6 = rotate 90 degrees
    tiff = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 1) + struct.pack("<HHIHH", 0x0112, 3, 1, 6, 0)
    app1 = b"Exif\x00\x00" + tiff + struct.pack("<I", 0)
    turned = plain[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + plain[2:]
    assert jpeg_size(turned) == (320, 240)
    pixels = decode(JpegPart(turned, 320, 240))
    assert pixels is not None and pixels.shape == (240, 320, 3) and read_stamp(pixels) == 7
    data = part(turned)

    def body(server: HostileCamera, conn: socket.socket) -> None:
        while not server.stop.is_set():
            server.send(conn, data)
            server.stop.wait(0.02)

    with Camera(hostile(body).url, reconnect=False) as camera:
        first = camera.wait_frame(timeout_s=10)
        frames = [first]
        for _ in range(2 * 10):  # more than the undecodable parts in a row that make a fault (10)
            frames.append(camera.wait_frame(after=frames[-1].seq, timeout_s=10))
        assert camera.fault is None and {read_stamp(f.pixels) for f in frames} == {7}


# ---------------------------------------------------------------- the HTTP exchange: deadlines, authentication
class ScriptedCamera(LoopbackServer):
    """Hands each connection's request to ``serve(server, index, conn, request)`` (after ``wrap``: TLS)."""

    def __init__(self, serve, wrap=None) -> None:
        self.serve, self.wrap = serve, wrap
        self.requests: list[bytes] = []
        super().__init__()

    def url(self, path: str = "/video.mjpg", userinfo: str = "", scheme: str = "http") -> str:
        return f"{scheme}://{userinfo}127.0.0.1:{self.port}{path}"

    def handle(self, index: int, conn: socket.socket) -> None:
        try:
            if self.wrap is not None:
                conn = self.wrap(conn)
            with conn:
                request = b""
                while b"\r\n\r\n" not in request:
                    data = conn.recv(4096)
                    if not data:
                        return
                    request += data
                self.requests.append(request)
                self.serve(self, index, conn, request)
        except OSError:
            pass


@pytest.fixture
def scripted():
    servers: list[ScriptedCamera] = []

    def make(serve, **kw) -> ScriptedCamera:
        servers.append(ScriptedCamera(serve, **kw))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


MJPEG_HEAD = b"HTTP/1.0 200 OK\r\nContent-Type: multipart/x-mixed-replace; boundary=frame\r\n\r\n"


def frames_until_stopped(server: ScriptedCamera, conn: socket.socket, seq: int = 1) -> None:
    data = part(jpeg(320, 240, seq))
    conn.sendall(MJPEG_HEAD)
    while not server.stop.is_set():
        conn.sendall(data)
        server.stop.wait(0.03)


def owner_threads(camera: Camera) -> int:
    return sum(1 for t in threading.enumerate() if t.name == f"camera {camera.source.redacted}")


def test_a_response_head_trickled_a_byte_at_a_time_is_cut_at_the_open_deadline(scripted) -> None:
    from drivers.camera.errors import CameraUnavailable
    from drivers.camera.stream import MjpegReader

    def slow(server: ScriptedCamera, index: int, conn: socket.socket, request: bytes) -> None:
        conn.sendall(b"HTTP/1.0 200 OK\r\nX-Slow: ")
        while not server.stop.is_set():  # a byte every 0.1 s, each well within any per-read timeout
            conn.sendall(b"a")
            server.stop.wait(0.1)

    server = scripted(slow)
    reader = MjpegReader(server.url(), server.url(), open_timeout_s=0.5, read_timeout_s=2)
    try:
        with pytest.raises(CameraUnavailable, match=r"within 0\.5 s"):
            reader.open()
    finally:
        reader.release()


def test_a_camera_slow_to_answer_never_gets_two_owner_threads(scripted) -> None:
    def serve(server: ScriptedCamera, index: int, conn: socket.socket, request: bytes) -> None:
        if index == 0:  # the first connection: the head a byte every 0.2 s, for as long as it is read
            for byte in MJPEG_HEAD:
                if server.stop.is_set():
                    return
                conn.sendall(bytes([byte]))
                server.stop.wait(0.2)
        frames_until_stopped(server, conn)

    server = scripted(serve)
    camera = Camera(server.url(), reconnect=False)
    try:
        assert not camera.open_once(timeout_s=0.5)
        assert owner_threads(camera) == 0 and not camera.owner_alive  # it saw the stop inside the slow head
        assert camera.open_once(timeout_s=10)
        assert owner_threads(camera) == 1
    finally:
        camera.stop()
    assert owner_threads(camera) == 0


def digest_camera(algorithm: str, qop: str | None):
    """A camera taking only Digest: 401 with a challenge to a request with none; checks the answer itself."""
    import hashlib

    h = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}[algorithm]

    def hx(text: str) -> str:
        return h(text.encode()).hexdigest()

    def serve(server: ScriptedCamera, index: int, conn: socket.socket, request: bytes) -> None:
        head = request.decode("latin-1")
        line = [x for x in head.split("\r\n") if x.lower().startswith("authorization:")]
        if not line:
            qop_param = f', qop="{qop}"' if qop else ""
            conn.sendall(b'HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm="cam", Digest realm="cam", '
                         b'nonce="n0nce", opaque="op", algorithm=' + algorithm.encode() + qop_param.encode()
                         + b"\r\nContent-Length: 0\r\n\r\n")
            return
        import re as re_

        fields = dict(re_.findall(r'(\w+)="?([^",]*)"?', line[0].split(" ", 2)[2]))
        uri = head.split(" ")[1]
        ha1, ha2 = hx("admin:cam:s3cret pass"), hx(f"GET:{uri}")
        if qop:
            expected = hx(f"{ha1}:n0nce:{fields.get('nc')}:{fields.get('cnonce')}:auth:{ha2}")
        else:
            expected = hx(f"{ha1}:n0nce:{ha2}")
        ok = line[0].split(":", 1)[1].strip().startswith("Digest ") and fields.get("response") == expected
        ok = ok and fields.get("uri") == uri and fields.get("opaque") == "op" and fields.get("username") == "admin"
        if not ok:
            conn.sendall(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n")
            return
        frames_until_stopped(server, conn)

    return serve


@pytest.mark.parametrize(("algorithm", "qop"), [("MD5", "auth"), ("SHA-256", "auth"), ("MD5", None)])
def test_credentials_go_only_after_a_challenge_and_by_digest_when_offered(scripted, algorithm, qop) -> None:
    server = scripted(digest_camera(algorithm, qop))
    with Camera(server.url(userinfo="admin:s3cret%20pass@"), reconnect=False) as camera:
        assert camera.wait_frame(timeout_s=10).seq >= 1
    first, answered = server.requests[0], server.requests[1]
    assert b"authorization" not in first.lower()  # nothing sent unasked
    assert b"Authorization: Digest " in answered
    assert all(b"s3cret" not in r and b"Basic" not in r for r in server.requests)  # never the password in clear


def basic_only(server: ScriptedCamera, index: int, conn: socket.socket, request: bytes) -> None:
    import base64

    token = base64.b64encode(b"admin:pw").decode()
    if f"Authorization: Basic {token}".encode() not in request:
        conn.sendall(b'HTTP/1.0 401 Unauthorized\r\nWWW-Authenticate: Basic realm="cam"\r\n\r\n')
        return
    frames_until_stopped(server, conn)


@pytest.mark.parametrize(
    "challenge",
    [
        b'WWW-Authenticate: Basic realm="cam"\r\n',
        b'WWW-Authenticate: Digest realm="cam", nonce="n", algorithm=SHA-512-256, qop="auth"\r\n'
        b'WWW-Authenticate: Basic realm="cam"\r\n',
        b'WWW-Authenticate: Digest realm="cam", nonce="n", qop="auth-conf", Basic realm="cam"\r\n',
    ],
)
def test_basic_is_never_sent_over_plain_http_and_the_fault_names_digest_or_https(scripted, challenge) -> None:
    from drivers.camera.errors import CameraBasicInClear

    def serve(server: ScriptedCamera, index: int, conn: socket.socket, request: bytes) -> None:
        conn.sendall(b"HTTP/1.0 401 Unauthorized\r\n" + challenge + b"\r\n")

    server = scripted(serve)
    events: list = []
    camera = Camera(server.url(userinfo="admin:s3cret-PW@"), reconnect=False, on_event=lambda k, d: events.append(d))
    assert not camera.open_once(timeout_s=10)
    assert isinstance(camera.fault, CameraBasicInClear)
    assert "enable Digest on the camera, or use https" in camera.fault.fix
    assert "allow_basic_over_http" in camera.fault.fix
    assert len(server.requests) == 1 and b"authorization" not in server.requests[0].lower()
    assert "s3cret" not in repr(events)


def test_a_basic_only_camera_gets_basic_after_its_challenge_when_its_config_allows_it(scripted) -> None:
    server = scripted(basic_only)
    with Camera(server.url(userinfo="admin:pw@"), reconnect=False, allow_basic_over_http=True) as camera:
        assert camera.wait_frame(timeout_s=10).seq >= 1
    assert b"authorization" not in server.requests[0].lower()


def test_an_unknown_scheme_is_named(scripted) -> None:
    def negotiate(server: ScriptedCamera, index: int, conn: socket.socket, request: bytes) -> None:
        conn.sendall(b"HTTP/1.0 401 Unauthorized\r\nWWW-Authenticate: Negotiate\r\n\r\n")

    camera = Camera(scripted(negotiate).url(userinfo="admin:pw@"), reconnect=False)
    assert not camera.open_once(timeout_s=10)
    assert camera.open_error is not None and "Negotiate" in str(camera.open_error.args[0])
    assert "Digest" in camera.open_error.fix


@pytest.mark.parametrize(
    "userinfo",
    ["adm%0D%0AX-Injected:%20yes:pw@", "admin:pw%0D%0AX-Injected:%20yes@", "adm%00in:pw@", "admin:p%7Fw@"],
)
def test_a_control_character_in_the_user_or_password_is_a_typed_fault_before_any_request(scripted, userinfo) -> None:
    server = scripted(lambda s, i, c, r: c.sendall(b'HTTP/1.0 401 Unauthorized\r\nWWW-Authenticate: Digest '
                                                   b'realm="cam", nonce="n", qop="auth"\r\n\r\n'))
    camera = Camera(server.url(userinfo=userinfo), reconnect=False)
    assert not camera.open_once(timeout_s=10)
    assert camera.fault is not None and "control character" in camera.fault.fix
    assert ("user" if userinfo.startswith("adm%") else "password") in camera.fault.fix
    shown = str(camera.fault)
    assert "Injected" not in shown and "pw" not in shown and "\x00" not in shown
    assert all(b"Injected" not in r for r in server.requests)


def test_a_user_name_beyond_latin_1_goes_as_username_star_and_its_digest_is_right(scripted) -> None:
    import hashlib
    import re as re_
    import urllib.parse

    user, password = "Иван", "pw"

    def serve(server: ScriptedCamera, index: int, conn: socket.socket, request: bytes) -> None:
        head = request.decode("latin-1")
        line = [x for x in head.split("\r\n") if x.lower().startswith("authorization:")]
        if not line:
            conn.sendall(b'HTTP/1.0 401 Unauthorized\r\nWWW-Authenticate: Digest realm="cam", nonce="n0", '
                         b'qop="auth", algorithm=SHA-256\r\n\r\n')
            return
        fields = dict(re_.findall(r'([\w*]+)="?([^",]*)"?', line[0].split(" ", 2)[2]))

        def hx(text: str) -> str:
            return hashlib.sha256(text.encode()).hexdigest()

        uri = head.split(" ")[1]
        expected = hx(f"{hx(f'{user}:cam:{password}')}:n0:{fields.get('nc')}:{fields.get('cnonce')}:auth:"
                      f"{hx(f'GET:{uri}')}")
        named = fields.get("username*") == "UTF-8''" + urllib.parse.quote(user, safe="")
        if named and "username" not in fields and fields.get("response") == expected:
            frames_until_stopped(server, conn)
        else:
            conn.sendall(b"HTTP/1.0 403 Forbidden\r\n\r\n")

    server = scripted(serve)
    userinfo = urllib.parse.quote(user, safe="") + ":pw@"
    with Camera(server.url(userinfo=userinfo), reconnect=False) as camera:
        assert camera.wait_frame(timeout_s=10).seq >= 1
    assert all(r.isascii() for r in server.requests)


def refusing(status: bytes, extra: bytes = b""):
    def serve(server: ScriptedCamera, index: int, conn: socket.socket, request: bytes) -> None:
        conn.sendall(b"HTTP/1.0 " + status + b"\r\n" + extra + b"Content-Length: 0\r\n\r\n")

    return serve


@pytest.mark.parametrize(
    ("status", "userinfo", "in_fix"),
    [
        (b"401 Unauthorized", "", "user and password in the source URL"),
        (b"403 Forbidden", "viewer:pw@", "viewer (live view) right"),
        (b"404 Not Found", "", "path against the camera's manual"),
    ],
)
def test_an_open_refused_reaches_the_supervisor_with_its_fix(scripted, status, userinfo, in_fix) -> None:
    import asyncio

    from agent.config import DeviceSection
    from agent.devices.supervisor import DeviceSupervisor

    server = scripted(refusing(status, b'WWW-Authenticate: Digest realm="c", nonce="n"\r\n'))
    url = server.url("/videostream.cgi?user=admin&pwd=open sesame", userinfo)
    recorded: list[tuple[str, dict]] = []

    async def scenario() -> None:
        supervisor = DeviceSupervisor([("door", DeviceSection(kind="camera", source=url))],
                                      lambda kind, data: recorded.append((kind, data)))
        await supervisor.open_all()
        await supervisor.close()

    asyncio.run(scenario())
    (fault,) = [d for k, d in recorded if k == "device_fault"]
    assert status.split(b" ")[0].decode() in fault["error"] and in_fix in fault["fix"]
    assert "sesame" not in repr(recorded)  # the query's password is redacted from what is audited
    assert b"pwd=open%20sesame" in server.requests[0]  # a space is percent-encoded, not a broken request line


def test_a_redirect_elsewhere_names_the_location_and_one_to_the_same_camera_is_followed(scripted) -> None:
    def moved(server: ScriptedCamera, index: int, conn: socket.socket, request: bytes) -> None:
        if request.startswith(b"GET /old "):
            conn.sendall(b"HTTP/1.0 302 Found\r\nLocation: /video.mjpg\r\n\r\n")
        elif request.startswith(b"GET /away "):
            conn.sendall(b"HTTP/1.0 301 Moved\r\nLocation: http://cam.example:8080/mjpg/video.mjpg?pwd=x\r\n\r\n")
        else:
            frames_until_stopped(server, conn)

    server = scripted(moved)
    with Camera(server.url("/old"), reconnect=False) as camera:
        assert camera.wait_frame(timeout_s=10).seq >= 1
    camera = Camera(server.url("/away"), reconnect=False)
    assert not camera.open_once(timeout_s=10)
    assert camera.open_error is not None
    assert "http://cam.example:8080/mjpg/video.mjpg?pwd=***" in camera.open_error.fix


def test_a_relative_redirect_is_followed_with_credentials_in_the_url_and_a_3xx_without_location_is_refused(
    scripted,
) -> None:
    def moved(server: ScriptedCamera, index: int, conn: socket.socket, request: bytes) -> None:
        if request.startswith(b"GET /old "):
            conn.sendall(b"HTTP/1.0 302 Found\r\nLocation: /video.mjpg\r\n\r\n")
        elif request.startswith(b"GET /nowhere "):
            conn.sendall(b"HTTP/1.0 302 Found\r\nContent-Length: 0\r\n\r\n")
        elif request.startswith(b"GET /creds "):
            conn.sendall(b"HTTP/1.0 302 Found\r\nLocation: //eve:LOCSECRET@127.0.0.1:%d/video.mjpg\r\n\r\n"
                         % server.port)
        else:
            frames_until_stopped(server, conn)

    server = scripted(moved)
    with Camera(server.url("/old", userinfo="admin:pw@"), reconnect=False) as camera:
        assert camera.wait_frame(timeout_s=10).seq >= 1
    assert server.requests[1].startswith(b"GET /video.mjpg ")

    server = scripted(moved)
    camera = Camera(server.url("/nowhere"), reconnect=False)
    assert not camera.open_once(timeout_s=10)
    assert camera.open_error is not None and "no Location" in camera.open_error.args[0]
    assert len(server.requests) == 1  # refused at once, not asked again

    server = scripted(moved)
    camera = Camera(server.url("/creds"), reconnect=False)
    assert not camera.open_once(timeout_s=10)
    assert camera.open_error is not None and "credentials" in camera.open_error.args[0]
    assert "LOCSECRET" not in str(camera.open_error) and len(server.requests) == 1


ESP_BOUNDARY = b"123456789000000000000987654321"
ESP_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: multipart/x-mixed-replace;boundary=" + ESP_BOUNDARY
            + b"\r\nTransfer-Encoding: chunked\r\nAccess-Control-Allow-Origin: *\r\n\r\n")


def esp32_camera(server: ScriptedCamera, index: int, conn: socket.socket, request: bytes) -> None:
    """As ESP-IDF's HTTP server streams (the ESP32-CAM firmware): HTTP/1.1 and chunks whatever the request's
    version; each frame's boundary, part head and JPEG a chunk of their own."""
    conn.sendall(ESP_HEAD)
    seq = 1
    while not server.stop.is_set():
        body = jpeg(320, 240, seq)
        head = b"Content-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(body)
        conn.sendall(chunked([b"\r\n--" + ESP_BOUNDARY + b"\r\n", head, body])[: -len(b"0\r\n\r\n")])
        seq += 1
        server.stop.wait(0.03)


def test_a_camera_that_chunks_its_stream_all_the_same_gives_its_frames(scripted) -> None:
    """Refused before as "not MJPEG": a chunked body is not for an HTTP/1.0 request, yet ESP32-CAMs send one."""
    server = scripted(esp32_camera)
    with Camera(server.url(), reconnect=False) as camera:
        first = camera.wait_frame(timeout_s=10)
        second = camera.wait_frame(after=first.seq, timeout_s=10)
        assert first.pixels.shape == (240, 320, 3)
        assert read_stamp(second.pixels) > read_stamp(first.pixels) >= 1
        assert camera.fault is None and camera.reader is not None and camera.reader.dropped == 0


@pytest.mark.parametrize(
    ("head", "body", "fault", "said"),
    [
        (ESP_HEAD, b"5\r\n--123\r\nzz\r\n", CameraStreamBroken, "no hex number"),
        (ESP_HEAD.replace(b"chunked", b"gzip, chunked"), b"", CameraNotMjpeg, "gzip, chunked"),
    ],
    ids=["chunk-size-no-hex", "gzip-then-chunked"],
)
def test_a_transfer_coding_that_cannot_be_undone_is_a_fault_naming_it(scripted, head, body, fault, said) -> None:
    server = scripted(lambda s, i, c, r: c.sendall(head + body) or s.stop.wait(30))
    camera = Camera(server.url(), reconnect=False)
    assert not camera.open_once(timeout_s=10)
    assert isinstance(camera.fault, fault) and said in str(camera.fault) and camera.fault.fix


def test_a_query_holding_an_at_sign_reaches_the_camera_as_written(scripted) -> None:
    server = scripted(lambda s, i, c, r: frames_until_stopped(s, c))
    with Camera(server.url("/videostream.cgi?user=admin&pwd=ab@cd"), reconnect=False) as camera:
        assert camera.wait_frame(timeout_s=10).seq >= 1
        assert camera.source.redacted.endswith("/videostream.cgi?user=***&pwd=***")
    assert server.requests[0].startswith(b"GET /videostream.cgi?user=admin&pwd=ab@cd HTTP/1.0\r\n")
    assert b"authorization" not in server.requests[0].lower()


@pytest.mark.parametrize("path", ["/snap@2x.jpg", "/a/b@c"])
def test_an_at_sign_in_the_path_reaches_the_camera_as_written(scripted, path) -> None:
    """An @ after the authority is the path's (RFC 3986): it was refused as a password holding a /."""
    server = scripted(lambda s, i, c, r: frames_until_stopped(s, c))
    events: list = []
    with Camera(server.url(path), reconnect=False, on_event=lambda k, d: events.append((k, d))) as camera:
        assert camera.wait_frame(timeout_s=10).seq >= 1
        shown = camera.source.redacted
    assert server.requests[0].startswith(f"GET {path} HTTP/1.0\r\n".encode())
    # what precedes a path's @ could be a password's tail: the path is not shown up to it, the camera is
    assert shown == f"http://127.0.0.1:{server.port}/" + "/".join("***" for _ in path.strip("/").split("/"))
    assert ("camera_plugged", {"source": shown, "width": 320, "height": 240, "fps": 0.0}) in events


def test_a_digits_only_password_with_a_slash_reaches_no_host(scripted) -> None:
    """``localhost:PORT/5678@cam`` is, as RFC 3986 reads it, host localhost, port PORT, path /5678@cam: a
    password 'PORT/5678' would be sent in a request path to whatever answers there. Refused before any
    connection, naming %2F, with none of it in the message or the audit."""
    from agent.config import DeviceSection
    from agent.devices.supervisor import DeviceSupervisor
    from drivers.camera.source import CameraSourceCredentials
    from drivers.camera.stream import MjpegReader

    server = scripted(lambda s, i, c, r: frames_until_stopped(s, c))
    url = f"http://localhost:{server.port}/5678@cam/video.mjpg"
    with pytest.raises(CameraSourceCredentials) as caught:
        Camera(url, reconnect=False)
    assert "/ as %2F" in caught.value.fix
    assert "5678" not in str(caught.value) and str(server.port) not in str(caught.value)
    reader = MjpegReader(f"http://localhost:{server.port}/5678@cam", "shown", open_timeout_s=10, read_timeout_s=1)
    with pytest.raises(CameraSourceCredentials):
        reader.open(threading.Event())
    reader.release()
    recorded: list = []
    supervisor = DeviceSupervisor([("door", DeviceSection(kind="camera", source=url))],
                                  lambda k, d: recorded.append((k, d)))
    assert supervisor.devices == [] and [k for k, _ in recorded] == ["device_fault"]
    assert "%2F" in recorded[0][1]["fix"] and "5678" not in repr(recorded)
    assert server.requests == []


def test_port_zero_is_no_valid_port_not_port_80() -> None:
    camera = Camera("http://127.0.0.1:0/video.mjpg", reconnect=False)
    assert not camera.open_once(timeout_s=10)
    assert camera.fault is not None and "no valid port" in camera.fault.args[0]


def test_stop_ends_an_open_stuck_in_a_slow_name_lookup_and_the_lookup_with_it(hanging_resolver) -> None:
    from drivers.camera.errors import CameraUnavailable
    from drivers.camera.stream import MjpegReader

    stop = threading.Event()
    reader = MjpegReader("http://camera.invalid/video.mjpg", "shown", open_timeout_s=30, read_timeout_s=1)
    threading.Thread(target=lambda: hanging_resolver.wait_asked() and stop.set(), daemon=True).start()  # mid-lookup
    try:
        with pytest.raises(CameraUnavailable, match="closed while opening"):
            reader.open(stop)
        assert not hanging_resolver.release.is_set()  # open() came back while the resolver still hangs
        assert hanging_resolver.lookups() == []  # its lookup was ended and reaped, not left to run
    finally:
        reader.release()


def test_a_stopped_camera_leaves_no_thread_and_no_lookup_behind(hanging_resolver) -> None:
    """A lookup thread outlived ``stop`` (getaddrinfo cannot be interrupted), one more at every reopen."""
    camera = Camera("http://camera.invalid:8080/video.mjpg")
    ours = {f"camera {camera.source.redacted}", "camera name lookup"}
    camera.start()
    try:
        assert hanging_resolver.wait_asked()
    finally:
        camera.stop()
    assert [t.name for t in threading.enumerate() if t.name in ours] == []
    assert hanging_resolver.lookups() == [] and not camera.owner_alive


def test_a_name_is_looked_up_in_a_child_and_an_address_literal_in_process(scripted) -> None:
    from drivers.camera import resolve

    def never() -> float:
        raise AssertionError("an address literal was looked up by a child")

    addresses = resolve.lookup("localhost", 8080, lambda: 0.1)  # /etc/hosts, through the child
    assert ("127.0.0.1", 8080) in [a[4][:2] for a in addresses] or ("::1", 8080) in [a[4][:2] for a in addresses]
    assert resolve.lookup("127.0.0.1", 9, never)[0][4] == ("127.0.0.1", 9)
    server = scripted(lambda s, i, c, r: frames_until_stopped(s, c))
    with Camera(f"http://localhost:{server.port}/video.mjpg", reconnect=False) as camera:
        assert camera.wait_frame(timeout_s=10).seq >= 1


def test_the_open_deadline_covers_every_address_not_each_one(monkeypatch) -> None:
    from drivers.camera.errors import CameraUnavailable
    from drivers.camera.stream import MjpegReader

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []  # fill its accept queue: a further connect is never answered (the SYN is dropped)
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    real = socket.getaddrinfo
    tried: list = []

    def three(host, *args, **kwargs):
        return real("127.0.0.1", port, socket.AF_INET, socket.SOCK_STREAM)[:1] * 3

    real_socket = socket.socket

    class Counting(real_socket):
        def connect_ex(self, address):
            tried.append(address)
            return super().connect_ex(address)

    monkeypatch.setattr(socket, "getaddrinfo", three)
    monkeypatch.setattr(socket, "socket", Counting)
    reader = MjpegReader(f"http://camera.local:{port}/v", "shown", open_timeout_s=0.5, read_timeout_s=1)
    try:
        with pytest.raises(CameraUnavailable, match=r"within 0\.5 s"):
            reader.open(threading.Event())
        assert len(tried) == 1  # the one deadline ran out on the first address: no fresh time per address
    finally:
        reader.release()
        for filler in fillers:
            filler.close()
        listener.close()


def test_digest_session_without_qop_a_utf8_realm_and_an_unterminated_quote() -> None:
    import hashlib

    from drivers.camera import httpauth

    (sess,) = httpauth.challenges(['Digest realm="r", nonce="n", algorithm=MD5-sess'])
    with pytest.raises(httpauth.AuthUnsupported, match="without qop"):  # its cnonce would never be sent
        httpauth.digest(sess, "u", "p", "GET", "/")
    # a realm the camera sends in UTF-8 (the head is read as Latin-1): hashed as the bytes it sent
    (utf8,) = httpauth.challenges(
        ['Digest realm="K\u00e4se", nonce="n", qop=auth, algorithm=SHA-256'.encode().decode("latin-1")]
    )
    answer = httpauth.digest(utf8, "u", "p", "GET", "/", cnonce="x")
    ha1 = hashlib.sha256("u:K\u00e4se:p".encode()).hexdigest()
    ha2 = hashlib.sha256(b"GET:/").hexdigest()
    assert hashlib.sha256(f"{ha1}:n:00000001:x:auth:{ha2}".encode()).hexdigest() in answer
    # an unterminated quoted value drops its challenge, never a value cut short
    assert httpauth.challenges(['Digest realm="cam", nonce="abc']) == []
    assert [c.scheme for c in httpauth.challenges(['Basic realm="b", Digest realm="d, nonce=n'])] == ["basic"]


def test_a_folded_challenge_is_read_and_a_stale_nonce_is_answered_again(scripted) -> None:
    import re as re_

    def serve(server: ScriptedCamera, index: int, conn: socket.socket, request: bytes) -> None:
        nonce = re_.search(rb'nonce="([^"]*)"', request)
        if nonce is None:  # the challenge, folded over two lines (obs-fold)
            conn.sendall(b'HTTP/1.0 401 Unauthorized\r\nWWW-Authenticate: Digest realm="cam",\r\n nonce="n1", '
                         b'qop="auth"\r\n\r\n')
        elif nonce.group(1) == b"n1":  # that nonce has expired meanwhile
            conn.sendall(b'HTTP/1.0 401 Unauthorized\r\nWWW-Authenticate: Digest realm="cam", nonce="n2", '
                         b'qop="auth", stale=true\r\n\r\n')
        else:
            frames_until_stopped(server, conn)

    server = scripted(serve)
    with Camera(server.url(userinfo="admin:pw@"), reconnect=False) as camera:
        assert camera.wait_frame(timeout_s=10).seq >= 1
    assert [b'nonce="n2"' in r for r in server.requests[:3]] == [False, False, True]


def test_heads_are_split_on_line_feeds_only_never_on_other_unicode_line_breaks(scripted) -> None:
    decoder = MultipartDecoder(b"frame")
    body = jpeg(64, 48)
    data = (b"--frame\r\nX-Note: a\x85Content-Length: 3\r\nContent-Length: %d\r\n\r\n" % len(body)) + body + b"\r\n"
    events = decoder.feed(data + b"--frame\r\n")
    assert [type(e) for e in events] == [Part] and events[0].body == body

    def serve(server: ScriptedCamera, index: int, conn: socket.socket, request: bytes) -> None:
        conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: multipart/x-mixed-replace; boundary=frame\r\n"
                     b"X-Note: a\x0bTransfer-Encoding: chunked\r\n\r\n")
        frames_until_stopped(server, conn)

    server = scripted(serve)
    with Camera(server.url(), reconnect=False) as camera:
        assert camera.wait_frame(timeout_s=10).seq >= 1


def test_a_long_response_head_in_one_read_is_refused_and_a_reader_refuses_an_unencoded_password(scripted) -> None:
    from drivers.camera.source import CameraSourceCredentials
    from drivers.camera.stream import MjpegReader

    server = scripted(lambda s, i, c, r: c.sendall(b"HTTP/1.0 200 OK\r\nX-Pad: " + b"a" * 40000 + b"\r\n"
                                                   b"Content-Type: multipart/x-mixed-replace; boundary=f\r\n\r\n"))
    reader = MjpegReader(server.url(), "shown", open_timeout_s=10, read_timeout_s=1)
    try:
        with pytest.raises(CameraNotMjpeg, match="runs past"):
            reader.open(threading.Event())
    finally:
        reader.release()
    server = scripted(lambda s, i, c, r: frames_until_stopped(s, c))
    reader = MjpegReader(f"http://admin:pa/ss@127.0.0.1:{server.port}/v", "shown", open_timeout_s=10, read_timeout_s=1)
    with pytest.raises(CameraSourceCredentials):
        reader.open(threading.Event())
    reader.release()
    assert server.requests == []


def self_signed_tls(folder: Path, dns_names: tuple[str, ...] = (), ciphers: str | None = None):
    """An https camera's server side: a certificate for 127.0.0.1 (and ``dns_names``) from a CA of its own,
    whose file is what a camera's ``ca_file`` names; ``ciphers`` limits the server to TLS 1.2 suites."""
    import ssl

    authority = TestCA("camera", folder)
    cert_file, key_file = authority.issue("camera", ["127.0.0.1", *dns_names])
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    if ciphers is not None:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        context.set_ciphers(ciphers)
    return (lambda conn: context.wrap_socket(conn, server_side=True)), str(authority.ca_file)


def test_an_https_camera_of_a_ca_it_was_not_given_is_refused_with_a_fix_naming_ca_file(scripted, tmp_path) -> None:
    wrap, _ = self_signed_tls(tmp_path)
    server = scripted(lambda s, i, c, r: frames_until_stopped(s, c), wrap=wrap)
    camera = Camera(server.url(scheme="https"), reconnect=False)
    assert not camera.open_once(timeout_s=10)
    assert camera.open_error is not None and "does not trust" in camera.open_error.args[0]
    assert "self-signed" in camera.open_error.fix and "ca_file" in camera.open_error.fix
    assert "update-ca-certificates" not in camera.open_error.fix  # not the whole device's trust store
    assert server.requests == []  # no request byte (nor a credential) went to a camera not trusted


# What the agent gives its cameras (agent/devices/kinds.py): the verifier channel's TLS floor.
PROJECT_FLOOR = TLSFloor(MINIMUM_VERSION, TLS12_CIPHERS)


def test_the_agents_camera_device_gives_the_driver_the_projects_tls_floor() -> None:
    from agent.config import DeviceSection
    from agent.devices.kinds import CameraDevice

    device = CameraDevice(DeviceSection(kind="camera", source="https://127.0.0.1:1/stream.mjpg"), "face")
    try:
        assert device.camera.tls_floor == PROJECT_FLOOR
    finally:
        device.stop()  # made, never opened: its owner thread ends


def test_an_https_camera_with_its_ca_file_is_trusted_by_that_file_alone(scripted, tmp_path) -> None:
    import ssl

    from drivers.camera.stream import tls_context

    wrap, ca = self_signed_tls(tmp_path)
    server = scripted(lambda s, i, c, r: frames_until_stopped(s, c), wrap=wrap)
    with Camera(server.url(scheme="https"), reconnect=False, ca_file=ca) as camera:
        assert camera.wait_frame(timeout_s=10).seq >= 1
    context = tls_context(ca, "shown", PROJECT_FLOOR)
    assert context.cert_store_stats()["x509_ca"] == 1  # only the camera's CA, not the system's store
    assert context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    suites = [c for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert suites and all(c["aead"] and c["kea"] == "kx-ecdhe" for c in suites)
    system = tls_context("", "shown", PROJECT_FLOOR)  # no ca_file: the system's store, the same suites
    assert system.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert all(c["aead"] for c in system.get_ciphers() if c["protocol"] == "TLSv1.2")
    assert tls_context("", "shown").minimum_version >= ssl.TLSVersion.TLSv1_2  # the driver's own floor


def test_a_wildcard_certificate_or_a_suite_without_aead_is_refused_before_any_request(scripted, tmp_path) -> None:
    wrap, ca = self_signed_tls(tmp_path, dns_names=("*.cams.example",))
    server = scripted(lambda s, i, c, r: frames_until_stopped(s, c), wrap=wrap)
    camera = Camera(server.url(scheme="https", userinfo="admin:pw@"), reconnect=False, ca_file=ca)
    assert not camera.open_once(timeout_s=10)
    assert camera.open_error is not None and "wildcard" in camera.open_error.args[0]
    assert server.requests == []

    wrap, ca = self_signed_tls(tmp_path, ciphers="ECDHE-ECDSA-AES128-SHA256")  # CBC: no AEAD
    server = scripted(lambda s, i, c, r: frames_until_stopped(s, c), wrap=wrap)
    camera = Camera(server.url(scheme="https"), reconnect=False, ca_file=ca, tls_floor=PROJECT_FLOOR)
    assert not camera.open_once(timeout_s=10)
    assert camera.open_error is not None and "TLS handshake" in camera.open_error.args[0]
    assert server.requests == []


def test_basic_goes_over_https_after_its_challenge_and_never_over_plain_http(scripted, tmp_path) -> None:
    """A Basic-only camera over TLS (a CA of its own on 127.0.0.1): asked first, answered with Basic, frames come.
    The same camera over plain http is refused without the config's opt-in, with no Authorization sent."""
    import base64

    from drivers.camera.errors import CameraBasicInClear

    wrap, ca = self_signed_tls(tmp_path)
    server = scripted(basic_only, wrap=wrap)
    with Camera(server.url(scheme="https", userinfo="admin:pw@"), reconnect=False, ca_file=ca,
                tls_floor=PROJECT_FLOOR) as camera:
        frame = camera.wait_frame(timeout_s=10)
        assert frame.pixels.shape == (240, 320, 3) and read_stamp(frame.pixels) == 1
    first, answered = server.requests[0], server.requests[1]
    assert b"authorization" not in first.lower()  # nothing sent before the camera asked
    assert b"Authorization: Basic " + base64.b64encode(b"admin:pw") + b"\r\n" in answered

    plain = scripted(basic_only)
    camera = Camera(plain.url(userinfo="admin:pw@"), reconnect=False)
    assert not camera.open_once(timeout_s=10)
    assert isinstance(camera.fault, CameraBasicInClear)
    assert len(plain.requests) == 1 and b"authorization" not in plain.requests[0].lower()


def devices_json(*args: str) -> tuple[int, list[dict]]:
    """`capture-agent devices --json ARGS` in a process of its own: its exit status and its findings."""
    import json
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "agent.cli", "devices", "--json", "--only-named", *args],
                          capture_output=True, text=True, timeout=90)
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, json.loads(done.stdout)


def test_devices_reads_an_https_camera_of_a_private_ca_given_with_camera_ca(scripted, tmp_path) -> None:
    """The daemon trusts an https camera's own CA by its ca_file; `devices --camera URL` had no way to: a camera
    with a private CA was "not trusted" there, and the fix named only the config. ``--camera-ca FILE`` is that
    ca_file for the command, under the daemon's TLS floor."""
    wrap, ca = self_signed_tls(tmp_path)
    server = scripted(lambda s, i, c, r: frames_until_stopped(s, c), wrap=wrap)
    url = server.url(scheme="https")
    status, findings = devices_json("--camera", url)
    (untrusted,) = [f for f in findings if f["path"] == url]
    assert status == 1 and "does not trust" in untrusted["description"], untrusted
    assert "--camera-ca" in untrusted["fix"] and "ca_file" in untrusted["fix"], untrusted
    assert server.requests == []  # nothing sent to a camera not trusted
    status, findings = devices_json("--camera", url, "--camera-ca", ca)
    (trusted,) = [f for f in findings if f["path"] == url]
    assert status == 0 and trusted["capabilities"] == ["camera"], trusted
    assert (trusted["description"], trusted["details"]["width"], trusted["details"]["height"]) == (
        "camera (MJPEG)", 320, 240)
    status, findings = devices_json("--camera", url, "--camera-ca", str(tmp_path / "missing.pem"))
    (unread,) = [f for f in findings if f["path"] == url]
    assert status == 1 and "cannot be read" in unread["description"] and "--camera-ca" in unread["fix"], unread


def test_a_ca_file_that_cannot_be_read_is_said_even_when_the_camera_does_not_answer(tmp_path) -> None:
    """The CA file was read only once the camera answered: behind a camera unplugged, or a wrong port, a mistyped
    ca_file (or --camera-ca) stayed hidden, and the next run, with the camera back, failed on it."""
    import socket

    with socket.create_server(("127.0.0.1", 0)) as closed:  # a port nothing listens on once this is closed
        url = f"https://127.0.0.1:{closed.getsockname()[1]}/stream.mjpg"
    status, findings = devices_json("--camera", url, "--camera-ca", str(tmp_path / "missing.pem"))
    (unread,) = [f for f in findings if f["path"] == url]
    assert status == 1 and "missing.pem" in unread["description"] and "cannot be read" in unread["description"]
    assert "--camera-ca" in unread["fix"], unread


def test_an_unreadable_ca_file_is_a_fault_naming_ca_file(scripted, tmp_path) -> None:
    wrap, _ = self_signed_tls(tmp_path)
    server = scripted(lambda s, i, c, r: frames_until_stopped(s, c), wrap=wrap)
    camera = Camera(server.url(scheme="https"), reconnect=False, ca_file=str(tmp_path / "missing.pem"))
    assert not camera.open_once(timeout_s=10)
    assert camera.fault is not None and "ca_file" in camera.fault.fix


def test_a_backlog_in_the_socket_is_skipped_not_decoded_frame_by_frame(hostile, monkeypatch) -> None:
    from drivers.camera import stream as mjpeg_stream

    count = 8
    pad = b"\xff\xfe" + (60002).to_bytes(2, "big") + b"x" * 60000  # a comment segment: parts over one 64 kB read
    frames = [part(j[:2] + pad * 2 + j[2:]) for j in (jpeg(320, 240, seq) for seq in range(1, count + 1))]
    assert all(len(f) > 64 * 1024 for f in frames)
    sent_all = threading.Event()

    def body(server: HostileCamera, conn: socket.socket) -> None:
        server.send(conn, frames[0])
        server.go.wait(10)
        for data in frames[1:]:  # the camera sends on while the agent decodes one frame
            server.send(conn, data)
        sent_all.set()

    real, slow = mjpeg_stream.decode, threading.Event()

    def decode(p):  # a decode slower than the camera: it lasts until the camera has sent everything
        if slow.is_set():
            sent_all.wait(10)
        return real(p)

    monkeypatch.setattr(mjpeg_stream, "decode", decode)
    server = hostile(body)
    with Camera(server.url, reconnect=False) as camera:
        got = [camera.wait_frame(timeout_s=10)]
        slow.set()
        server.go.set()
        for _ in range(count):
            got.append(camera.wait_frame(after=got[-1].seq, timeout_s=10))
            if read_stamp(got[-1].pixels) == count:
                break
        stamps = [read_stamp(f.pixels) for f in got]
        assert stamps[-1] == count
        assert camera.decoded <= 3  # the first, the one decoding while the backlog came, the newest: none between
        assert camera.reader is not None and camera.reader.skipped >= count - 3
        assert got[-1].seq == count  # seq counts the parts the camera sent: a gap shows frames skipped


def test_the_boundary_is_read_from_the_boundary_parameter_only() -> None:
    assert boundary_of("multipart/x-mixed-replace; x-boundary=wrong; boundary=frame") == b"frame"
    assert boundary_of('multipart/x-mixed-replace; charset="a boundary=wrong"; boundary=frame') == b"frame"
    assert boundary_of('multipart/x-mixed-replace;boundary="my \\"frame\\""') == b'my "frame"'
    with pytest.raises(NotMultipart):
        boundary_of("multipart/x-mixed-replace; x-boundary=frame")


def test_a_part_whole_in_the_read_that_breaks_the_stream_is_counted_as_passed_over(hostile) -> None:
    """A whole part, then one declaring more than the cap, in one write: the fault goes up, and the whole part
    parsed before it in the same read (carried on the codec's error) is counted, not lost from the counters."""
    from drivers.camera.stream import MjpegReader

    server = hostile(lambda s, c: s.send(c, part(b"a" * 20) + b"--frame\r\nContent-Length: 2147483000\r\n\r\n"))
    reader = MjpegReader(server.url, server.url, open_timeout_s=5, read_timeout_s=5, max_part_bytes=1 << 10)
    reader.open()
    with pytest.raises(CameraFrameTooLarge, match="2147483000"):
        reader.next_part()
    reader.release()
    assert (reader.skipped, reader.dropped) == (1, 0)


def test_a_part_whole_in_the_read_that_breaks_the_chunk_framing_is_counted_as_passed_over(hostile) -> None:
    """The same with the break in the chunked framing: the payload undone before it reaches the parts' decoder
    (it was lost with the chunk decoder's error, so the counters depended on how the bytes were split)."""
    from drivers.camera.stream import MjpegReader

    chunked_head = b"multipart/x-mixed-replace; boundary=frame\r\nTransfer-Encoding: chunked"
    broken = chunked([part(b"a" * 20)])[: -len(b"0\r\n\r\n")] + b"zz\r\n"
    server = hostile(lambda s, c: s.send(c, broken), content_type=chunked_head)
    reader = MjpegReader(server.url, server.url, open_timeout_s=5, read_timeout_s=5, max_part_bytes=1 << 10)
    reader.open()
    with pytest.raises(CameraStreamBroken, match="no hex number"):
        reader.next_part()
    reader.release()
    assert (reader.skipped, reader.dropped) == (1, 0)


def test_a_reconnected_camera_counts_its_undecodable_parts_afresh(hostile) -> None:
    """The count of parts in a row that did not decode outlived a reconnect (the first frame of the new
    connection did not reset it): one bad part after nine on the old connection ended a wait with
    CameraFramesUndecodable, a fault the new connection never had."""
    from drivers.camera.camera import BAD_PARTS_MAX

    bad = part(undecodable())
    connections: list[int] = []
    second_go = threading.Event()

    def body(server: HostileCamera, conn: socket.socket) -> None:
        connections.append(len(connections))
        server.send(conn, part(jpeg(320, 240, 1)))
        if len(connections) == 1:  # nine bad parts, taken one by one by the wait, then the line drops
            server.go.wait(10)
            for _ in range(BAD_PARTS_MAX - 1):
                tried = camera.decoded
                server.send(conn, bad)
                # The next only once the wait has tried this one: sent 0.3 s apart, a loaded machine let two
                # arrive before one was taken, the older dropped as a stale part, and only 8 were counted.
                for _ in range(1000):
                    if camera.decoded > tried or server.stop.wait(0.01):
                        break
            conn.shutdown(socket.SHUT_RDWR)
            return
        second_go.wait(10)  # reconnected: one bad part, then good frames
        server.send(conn, bad)
        server.stop.wait(0.5)
        while not server.stop.is_set():
            server.send(conn, part(jpeg(320, 240, 2)))
            server.stop.wait(0.05)

    server = hostile(body)
    camera = Camera(server.url, reconnect=True)
    camera.idle_after_s = 0.0  # the wait alone decodes the parts: each bad one is counted once, in order
    try:
        assert camera.open_once(timeout_s=10)
        first = camera.latest()
        assert first is not None
        server.go.set()
        again = camera.wait_frame(first.seq, timeout_s=30)  # past the nine bad parts: the new connection's frame
        assert len(connections) == 2 and camera.decoded >= BAD_PARTS_MAX, (connections, camera.decoded)
        second_go.set()
        frame = camera.wait_frame(again.seq, timeout_s=30)
        assert frame.seq > again.seq and camera.fault is None
    finally:
        camera.stop()
