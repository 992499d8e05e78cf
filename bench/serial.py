"""`python -m bench.serial`: image download time against the wire limit.

The simulated module runs at real line speed (its output paced at baud/10 bytes
a second, 8N1), and our driver downloads a full image (UpImage: 36,864 bytes of
4-bit pixels on R307, in 128-byte data packets). The wire limit is the bytes on
the wire (acknowledgement plus every data packet with its 11 bytes of framing)
divided by baud/10; the ratio says how close the driver gets to it.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from agent.logs import configure_logging
from bench.cli import BenchParser, at_least, bench_main
from drivers.zfm.constants import PROFILES
from drivers.zfm.driver import ZfmModule
from simulators.fingers import FingerGenerator
from simulators.zfm import SimulatedModule

FRAMING = 11  # EF 01, address, type, length, checksum


def wire_bytes(model: str, packet_size: int = 128) -> int:
    profile = PROFILES[model]
    packets = -(-profile.image_bytes // packet_size)
    ack = FRAMING + 1
    return ack + profile.image_bytes + packets * FRAMING


def measure(model: str, baud: int, rounds: int, work: Path) -> dict:
    sim = SimulatedModule(model, link=work / f"tty-{baud}", finger_source=FingerGenerator(1).image, real_speed=True)
    with sim, ZfmModule(sim.port) as driver:
        if baud != driver.baud:
            driver.set_baud(baud)
        sim.place(finger=0)
        driver.wait_for_finger(5)
        times = []
        for _ in range(rounds):
            started = time.perf_counter()
            driver.download_image()
            times.append(time.perf_counter() - started)
            print(f"{model} at {baud}: {times[-1]:.3f} s", file=sys.stderr)
    limit = wire_bytes(model) * 10 / baud
    median = statistics.median(times)
    return {
        "baud": baud,
        "download_s_median": round(median, 3),
        "wire_limit_s": round(limit, 3),
        "ratio_to_wire_limit": round(median / limit, 3),
    }


@bench_main("python -m bench.serial")
def main(argv: list[str] | None = None) -> int:
    parser = BenchParser(prog="python -m bench.serial", description=__doc__)
    parser.add_argument("--model", default="r307", choices=sorted(PROFILES))
    parser.add_argument("--rounds", type=int, default=3, help="image downloads per speed (default 3)")
    args = parser.parse_args(argv)
    at_least(args.rounds, 1, "--rounds", "a median needs a download")
    configure_logging("warning", "json", stream=sys.stderr)  # stdout carries only the JSON figures
    with tempfile.TemporaryDirectory(prefix="bench-serial-") as tmp:
        results = [measure(args.model, baud, args.rounds, Path(tmp)) for baud in (57600, 115200)]
    print(
        json.dumps(
            {
                "model": args.model,
                "image_bytes": PROFILES[args.model].image_bytes,
                "wire_bytes": wire_bytes(args.model),
                "results": results,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
