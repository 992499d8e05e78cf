"""`python -m bench.devices`: per device kind, from a finger or face presented to the image in memory.

- ``zfm``: a simulated R307 at its real line speed (output paced at baud/10
  bytes a second), opened the way the agent opens it (found at its speed,
  raised to 115200), then: finger placed → GenImg polled → UpImage done. Also
  at 57600 for comparison, unless ``--quick``.
- ``fprint``: libfprint's ``virtual_image`` reader: pixels sent → capture()
  returned through the libfprint thread (skipped, with the reason, without
  libfprint).
- ``camera``: the MJPEG simulator read by the agent's camera driver (its own
  multipart reader, frames decoded by OpenCV): a new scene shown → the first
  frame showing it in the owner's latest-frame slot; and frame latency, each
  frame's send time (its bar-code number) to its arrival.

Figures are milliseconds (p50, p99) on this machine, under whatever load it has.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from agent.logs import configure_logging
from bench.cli import BenchError, BenchParser, at_least, bench_main, progress


def _stats(values_s: list[float]) -> dict[str, float]:
    ms = np.asarray(values_s) * 1000
    return {"p50": round(float(np.percentile(ms, 50)), 1), "p99": round(float(np.percentile(ms, 99)), 1), "n": len(ms)}


def bench_zfm(rounds: int, baud: int, work: Path) -> dict:
    from drivers.zfm.driver import ZfmModule
    from simulators.fingers import FingerGenerator
    from simulators.zfm import SimulatedModule

    sim = SimulatedModule("r307", link=work / f"tty-{baud}", finger_source=FingerGenerator(1).image, real_speed=True)
    with sim, ZfmModule(sim.port) as driver:
        driver.open_at_any_baud()
        if driver.baud != baud:
            driver.set_baud(baud)
        presented, transfer = [], []
        for i in range(rounds):
            waiting = threading.Event()
            done: dict[str, object] = {}

            def capture(waiting: threading.Event = waiting, done: dict[str, object] = done) -> None:
                waiting.set()
                try:
                    driver.wait_for_finger(30)
                    done["genimg"] = time.perf_counter()
                    image = driver.download_image()
                    done["image"] = time.perf_counter()
                    del image  # only its arrival time matters
                except Exception as exc:  # said by the main thread; or the benchmark was stopped and closed the port
                    done["error"] = exc

            # A daemon: interrupted, the benchmark closes the port under it and exits without waiting for it.
            thread = threading.Thread(target=capture, daemon=True)
            thread.start()
            finger = sim.finger_source(i % 4, 0, (sim.profile.image_width, sim.profile.image_height))
            waiting.wait()
            time.sleep(0.05 + 0.05 * (i % 2))  # the person arrives at some point of the polling cycle
            started = time.perf_counter()
            sim.place(finger)
            thread.join(60)
            sim.lift()
            if "image" not in done:
                raise BenchError(
                    f"the simulated module gave no image at {baud} baud: {done.get('error', 'nothing within 60 s')}",
                    "run tests/test_zfm_driver.py: the driver and the simulator disagree",
                )
            presented.append(done["image"] - started)  # type: ignore[operator]
            transfer.append(done["image"] - done["genimg"])  # type: ignore[operator]
            print(f"zfm at {baud}: {presented[-1]:.2f} s", file=sys.stderr)
    return {"model": "r307", "baud": baud, "finger_to_image_ms": _stats(presented), "transfer_ms": _stats(transfer)}


def bench_fprint(rounds: int) -> dict:
    from drivers.fprint import unavailable_reason

    if unavailable_reason():
        return {"skipped": unavailable_reason()}
    from drivers.fprint.reader import FprintReader
    from simulators.fingers import FingerGenerator
    from simulators.fprint import VirtualImageFeeder

    with tempfile.TemporaryDirectory(prefix="fp-") as tmp:
        path = Path(tmp) / "image.sock"
        reader = FprintReader("virtual_image", env={"FP_VIRTUAL_IMAGE": str(path)})
        reader.open()
        feeder = VirtualImageFeeder(path)
        fingers = FingerGenerator(1)
        times = []
        try:
            for i in range(rounds):
                image = fingers.image(i % 4, i % 3, (256, 288))
                done: dict[str, float] = {}
                thread = threading.Thread(
                    target=lambda d=done: (reader.capture(10), d.update(t=time.perf_counter())), daemon=True
                )
                thread.start()
                while not reader.finger_needed():
                    time.sleep(0.005)
                started = time.perf_counter()
                feeder.image(image)
                thread.join(15)
                if "t" not in done:
                    raise BenchError("libfprint's virtual_image reader gave no image within 15 s",
                                     "run tests/test_fprint.py: the reader and the feeder disagree")
                times.append(done["t"] - started)
        finally:
            feeder.close()
            reader.close()
    return {"driver": "virtual_image", "image": "256x288", "finger_to_image_ms": _stats(times)}


def bench_camera(rounds: int, frames: int) -> dict:
    from drivers.camera.camera import Camera
    from simulators.camera import SimulatedCamera, read_stamp

    latencies, presented = [], []
    with SimulatedCamera((640, 480), fps=30) as sim, Camera(sim.url) as camera:
        last = camera.wait_frame(timeout_s=10)
        for _ in range(frames):
            last = camera.wait_frame(after=last.seq, timeout_s=5)
            sent = sim.sent_at(read_stamp(last.pixels))
            if sent is not None:
                latencies.append(last.received - sent)
        for i in range(rounds):
            level = 40 if i % 2 else 210
            started = time.perf_counter()
            sim.show(np.full((480, 640), level, np.uint8))
            while abs(float(last.pixels[40:].mean()) - level) > 20:
                last = camera.wait_frame(after=last.seq, timeout_s=5)
            presented.append(time.perf_counter() - started)
        info = camera.info
    assert info is not None
    return {
        "source": "mjpeg-http",
        "width": info.width,
        "height": info.height,
        "fps": 30,
        "face_to_frame_ms": _stats(presented),
        "frame_latency_ms": _stats(latencies),
    }


@bench_main("python -m bench.devices")
def main(argv: list[str] | None = None) -> int:
    parser = BenchParser(
        prog="python -m bench.devices", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3, help="serial captures per speed (each ~3.5-7 s)")
    parser.add_argument("--quick", action="store_true", help="115200 only for the serial module")
    args = parser.parse_args(argv)
    at_least(args.rounds, 1, "--rounds", "a percentile needs a capture")
    configure_logging("warning", "json", stream=sys.stderr)  # stdout carries only the JSON figures
    with tempfile.TemporaryDirectory(prefix="bench-devices-") as tmp:
        bauds = (115200,) if args.quick else (115200, 57600)
        zfm = [bench_zfm(args.rounds, baud, Path(tmp)) for baud in bauds]
    progress("fprint: 30 captures from libfprint's virtual_image reader")
    fprint = bench_fprint(30)
    progress("camera: 150 frames, then 20 scene changes")
    result = {"zfm": zfm, "fprint": fprint, "camera": bench_camera(20, 150)}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
