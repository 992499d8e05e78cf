"""`capture-simulator zfm --model r307`: a simulated serial module for a test rig.

Prints one JSON line with the port to open, then serves until SIGTERM or Ctrl-C.
A finger from the synthetic generator can be left on the sensor (``--finger``).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

import structlog

from drivers.zfm.constants import PROFILES


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="capture-simulator", description=__doc__)
    sub = parser.add_subparsers(dest="device", required=True)
    zfm = sub.add_parser("zfm", help="a ZFM / R30x / R50x / AS608 module on a pseudo-terminal")
    zfm.add_argument("--model", default="r307", choices=sorted(PROFILES))
    zfm.add_argument("--link", help="stable path (a symlink) for the port, kept across unplug/replug")
    zfm.add_argument("--password", type=lambda v: int(v, 0), default=0)
    zfm.add_argument("--seed", type=int, default=0, help="synthetic finger generator seed")
    zfm.add_argument("--finger", type=int, help="leave this synthetic finger on the sensor")
    zfm.add_argument("--real-speed", action="store_true", help="pace output at the real baud rate")
    args = parser.parse_args(argv)
    # stdout carries the one JSON line a rig reads; logs go to stderr.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=sys.stderr))

    from simulators.fingers import FingerGenerator
    from simulators.zfm import SimulatedModule

    sim = SimulatedModule(
        args.model,
        link=Path(args.link) if args.link else None,
        password=args.password,
        finger_source=FingerGenerator(args.seed).image,
        real_speed=args.real_speed,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with sim:
        if args.finger is not None:
            sim.place(finger=args.finger)
        print(json.dumps({"event": "listening", "port": sim.port, "model": args.model}), flush=True)
        stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
