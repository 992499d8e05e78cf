"""`python -m bench.camera_idle`: CPU time of a camera's owner thread while nobody takes its frames.

An MJPEG camera sends frames whether or not a session wants them; the agent
keeps its connection open between sessions, so what the owner thread spends
on frames nobody takes is spent all day. A camera server in a child process
(pre-encoded JPEGs with frame numbers, sent at ``--fps``, 0: as fast as the
socket takes them) feeds one :class:`~drivers.camera.camera.Camera`; after its
first frame nobody asks for another for ``--seconds`` (counted from when the
owner stops decoding ahead for the consumer that asked last). The owner
thread's CPU clock (``pthread_getcpuclockid``) over that time is the figure,
with the parts the camera sent meanwhile (the owner reads them all: a reader
that fell behind would find a backlog, and hand over stale frames).

Figures are this machine's, under whatever load it has: compare runs made
side by side.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import cv2
import numpy as np

from bench.cli import BenchError, BenchParser, bench_main

FRAMES = 16  # distinct pre-encoded frames served in turn


def _serve(size: tuple[int, int], fps: float) -> None:
    """The camera: prints its port, then serves each connection its MJPEG stream until the client goes."""
    from simulators.camera import stamp

    width, height = size
    rng = np.random.default_rng(7)
    scene = rng.integers(60, 200, (height, width, 3), dtype=np.uint8)  # noise: a JPEG of a realistic weight
    scene = cv2.GaussianBlur(scene, (5, 5), 0)
    parts = []
    for seq in range(FRAMES):
        ok, data = cv2.imencode(".jpg", stamp(scene, seq), [cv2.IMWRITE_JPEG_QUALITY, 80])
        assert ok
        body = data.tobytes()
        parts.append(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(body) + body + b"\r\n")
    server = socket.create_server(("127.0.0.1", 0))
    print(json.dumps({"port": server.getsockname()[1], "part_bytes": len(parts[0])}), flush=True)
    sent = [0]  # parts sent, over every connection

    def stream(conn: socket.socket) -> None:
        with conn:
            try:
                conn.recv(4096)
                conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: multipart/x-mixed-replace; boundary=frame\r\n\r\n")
                next_at, i = time.monotonic(), 0
                while True:
                    conn.sendall(parts[i % FRAMES])
                    i += 1
                    sent[0] += 1
                    if fps:
                        next_at += 1 / fps
                        time.sleep(max(0.0, next_at - time.monotonic()))
            except OSError:
                return

    def accept() -> None:
        while True:
            conn, _ = server.accept()
            threading.Thread(target=stream, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    for _ in sys.stdin:  # each line asks how many parts went out so far
        print(json.dumps({"sent": sent[0]}), flush=True)


def measure(port: int, seconds: float, sent: Callable[[], int]) -> dict:
    from drivers.camera.camera import Camera

    camera = Camera(f"http://127.0.0.1:{port}/stream.mjpg", reconnect=False)
    assert camera.open_once(timeout_s=10)
    try:
        first = camera.wait_frame(timeout_s=10)
        (owner,) = [t for t in threading.enumerate() if t.name == f"camera {camera.source.redacted}"]
        assert owner.ident is not None
        clock = time.pthread_getcpuclockid(owner.ident)
        time.sleep(camera.idle_after_s + 0.5)  # past the time a consumer's last ask keeps the owner decoding ahead
        decoded, parts = camera.decoded, sent()
        cpu0, wall0 = time.clock_gettime(clock), time.monotonic()
        time.sleep(seconds)  # nobody asks for a frame
        cpu1, wall1 = time.clock_gettime(clock), time.monotonic()
        decoded, parts = camera.decoded - decoded, sent() - parts
        newest = camera.wait_frame(after=first.seq, timeout_s=10)  # a consumer again: a frame still comes
        assert newest.seq > first.seq
    finally:
        camera.stop()
    wall, cpu = wall1 - wall0, cpu1 - cpu0
    return {
        "seconds": round(wall, 2),
        "owner_cpu_s": round(cpu, 3),
        "owner_cpu_percent": round(100 * cpu / wall, 1),
        "parts_per_s": round(parts / wall, 1),  # sent by the camera meanwhile (and read: the socket is drained)
        "owner_cpu_us_per_part": round(1e6 * cpu / max(1, parts), 1),
        "decoded_while_idle": decoded,
    }


def _frame_size(text: str) -> tuple[int, int]:
    """``WxH`` as (width, height), within what a camera sends and the simulated one's bar code needs."""
    width, sep, height = text.lower().partition("x")
    if not (sep and width.isascii() and width.isdigit() and height.isascii() and height.isdigit()):
        raise BenchError(f"--size {text!r} is not WIDTHxHEIGHT", "give e.g. --size 1280x720")
    size = (int(width), int(height))
    if not (120 <= size[0] <= 4096 and 32 <= size[1] <= 4096):
        raise BenchError(f"--size {text} is outside what the camera serves", "give 120x32 to 4096x4096")
    return size


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    """The command line, each value checked before the camera starts (a typo said at once, in one line)."""
    parser = BenchParser(
        prog="python -m bench.camera_idle", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", default="1280x720", help="the camera's frame size, WxH")
    parser.add_argument("--fps", type=float, default=0.0, help="frames a second the camera sends (0: at once)")
    parser.add_argument("--seconds", type=float, default=5.0, help="how long nobody takes a frame")
    args = parser.parse_args(argv)
    args.frame = _frame_size(args.size)
    if not 0 <= args.fps <= 1000:  # NaN too
        raise BenchError(f"--fps {args.fps:g} is no camera's rate", "give 0 (as fast as the socket takes) to 1000")
    if not 0 < args.seconds <= 3600:
        raise BenchError(f"--seconds {args.seconds:g} gives no idle window", "give more than 0, up to 3600")
    return args


@bench_main("python -m bench.camera_idle")
def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    width, height = args.frame
    child = subprocess.Popen(
        [sys.executable, "-m", "bench.camera_idle", SERVE, f"{width}x{height}", str(args.fps)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert child.stdin is not None and child.stdout is not None

    def sent() -> int:
        child.stdin.write("\n")  # type: ignore[union-attr]
        child.stdin.flush()  # type: ignore[union-attr]
        return int(json.loads(child.stdout.readline())["sent"])  # type: ignore[union-attr]

    try:
        hello = json.loads(child.stdout.readline())
        figures = measure(hello["port"], args.seconds, sent)
    finally:
        child.terminate()
        child.wait(10)
    print(json.dumps({"size": args.size, "fps": args.fps or "unpaced", "part_bytes": hello["part_bytes"], **figures}))
    return 0


# The camera's child process (started by main, stopped by its SIGTERM): outside bench_main, whose
# "interrupted" line and exit 130 are for a person's Ctrl-C, not for the child's usual end.
SERVE = "--serve-camera"


def _serve_child(argv: list[str]) -> int:
    width, height = (int(v) for v in argv[0].split("x"))
    _serve((width, height), float(argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(_serve_child(sys.argv[2:]) if sys.argv[1:2] == [SERVE] else main())
