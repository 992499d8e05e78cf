"""`capture-simulator zfm --model r307` / `capture-simulator camera`: simulated devices for a test rig.

Prints one JSON line with the port to open, then serves until SIGTERM or Ctrl-C.
A finger from the synthetic generator, or from a folder of F_I.tif images
(--images), can be left on the sensor (--finger), and a rig scripts the person
at the sensor by writing lines to standard input:

    place FINGER [IMPRESSION]     put a finger on the sensor (default: its first impression)
    lift                          take it off
    pace on | off                 send at the real line speed, or instantly
    unplug | replug               pull the module out, plug it back
    list [COUNT]                  print the fingers there are, one JSON line each, on stdout

People and fingers: the simulator knows fingers, not people. Every finger
number is a different finger (with --images: the F of F_I.tif); its
impressions 0, 1, 2... are different placements of that same finger. A rig
makes each person from finger numbers of their own, two per person since a
step-up asks for another finger: ana = fingers 0 and 1, dan = 2 and 3. Enroll
with `place 0 0`, `place 0 1`, then `place 1 0`, `place 1 1`; verify with a
fresh impression (`place 0 2`). Another --seed gives other fingers.
`capture-simulator zfm --list-fingers` lists them (class, minutiae).

`capture-simulator camera` serves MJPEG over HTTP on 127.0.0.1 (OpenCV opens
the printed URL) and reads these lines:

    show DIR | still FILE         images of a folder in turn, or one image
    nothing | dark | glare        an empty scene, the scene darkened, the scene in glare
    fps N                         frames a second
    unplug | replug               drop every stream and close the port, listen again
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


def _commands(sim, source: object) -> None:
    """Standard-input control lines from a rig (end of input just ends the control)."""
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] == "place" and len(words) >= 2:
            try:
                finger = int(words[1])
                impression = int(words[2]) if len(words) > 2 else _first_impression(source, finger)
                sim.place(finger=finger, impression=impression)
            except (KeyError, ValueError) as exc:  # no such image, or not a number: say so, keep serving
                reason = str(exc.args[0] if exc.args else exc)
                print(json.dumps({"event": "bad_place", "line": line.strip(), "error": reason}), file=sys.stderr)
        elif words[0] == "lift":
            sim.lift()
        elif words[0] == "pace" and len(words) == 2 and words[1] in ("on", "off"):
            sim.real_speed = words[1] == "on"  # output at the real line speed (baud/10 bytes a second) or instant
        elif words[0] == "unplug":
            sim.unplug()
        elif words[0] == "replug":
            sim.replug()
        elif words[0] == "list":
            count = int(words[1]) if len(words) > 1 and words[1].isdigit() else DEFAULT_LIST_COUNT
            for entry in finger_list(source, count):
                print(json.dumps({"event": "finger", **entry}), flush=True)
        else:
            print(json.dumps({"event": "unknown_command", "line": line.strip()}), file=sys.stderr, flush=True)


def _camera_commands(camera) -> None:
    for line in sys.stdin:
        words = line.split(maxsplit=1)
        if not words:
            continue
        command, rest = words[0], (words[1].strip() if len(words) > 1 else "")
        try:
            if command == "show":
                camera.show_folder(Path(rest))
            elif command == "still":
                import cv2

                image = cv2.imread(rest, cv2.IMREAD_COLOR)
                if image is None:
                    raise ValueError(f"{rest} is not an image OpenCV can read")
                camera.show(image)
            elif command in ("nothing", "dark", "glare", "unplug", "replug"):
                getattr(camera, command)()
            elif command == "fps":
                camera.fps = float(rest)
            else:
                raise ValueError("unknown command")
        except (ValueError, OSError) as exc:
            print(json.dumps({"event": "bad_command", "line": line.strip(), "error": str(exc)}), file=sys.stderr)
            continue
        print(json.dumps({"event": command, "url": camera.url, "plugged": camera.plugged}), flush=True)


def _camera(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from simulators.camera import SimulatedCamera

    width, _, height = args.size.partition("x")
    camera = SimulatedCamera((int(width), int(height)), fps=args.fps)
    if args.images is not None:
        try:
            camera.show_folder(args.images)
        except (ValueError, OSError) as exc:
            parser.error(str(exc))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with camera:
        print(json.dumps({"event": "listening", "url": camera.url}), flush=True)
        threading.Thread(target=_camera_commands, args=(camera,), daemon=True).start()
        stop.wait()
    return 0


DEFAULT_LIST_COUNT = 8


def finger_list(source: object, count: int = DEFAULT_LIST_COUNT) -> list[dict[str, object]]:
    """The fingers a rig may place: from a folder, all of them with their impressions; from the generator,
    the first ``count`` (it has as many as asked for), with their pattern class and minutiae count."""
    keys = getattr(source, "keys", None)
    if keys is not None:  # a folder of F_I.tif images
        found: dict[int, list[int]] = {}
        for finger, impression in keys():
            found.setdefault(finger, []).append(impression)
        return [{"finger": f, "impressions": found[f]} for f in sorted(found)]
    fingers = []
    for finger_id in range(count):
        finger = source.finger(finger_id)  # type: ignore[attr-defined]
        fingers.append(
            {
                "finger": finger_id,
                "class": finger.finger_class,
                "minutiae": len(finger.minutiae),
                "impressions": "0, 1, 2, ... (each a new placement)",
            }
        )
    return fingers


def _first_impression(source: object, finger: int) -> int:
    """FVC folders number impressions from 1, the generator from 0: the first there is."""
    keys = getattr(source, "keys", None)
    if keys is None:
        return 0
    found = [i for f, i in keys() if f == finger]
    if not found:
        raise KeyError(f"no image of finger {finger} in the folder: pick a finger with an F_I.tif present")
    return min(found)


def main(argv: Sequence[str] | None = None) -> int:
    raw = argparse.RawDescriptionHelpFormatter  # keep the command list and paragraphs as written
    parser = argparse.ArgumentParser(prog="capture-simulator", description=__doc__, formatter_class=raw)
    sub = parser.add_subparsers(dest="device", required=True)
    zfm = sub.add_parser(
        "zfm",
        help="a ZFM / R30x / R50x / AS608 module on a pseudo-terminal",
        description=__doc__,
        formatter_class=raw,
    )
    zfm.add_argument("--model", default="r307", choices=sorted(PROFILES))
    zfm.add_argument("--link", help="stable path (a symlink) for the port, kept across unplug/replug")
    zfm.add_argument("--password", type=lambda v: int(v, 0), default=0)
    zfm.add_argument("--seed", type=int, default=0, help="synthetic finger generator seed")
    zfm.add_argument("--images", type=Path, help="folder of F_I.tif images to use instead of synthetic fingers")
    zfm.add_argument("--finger", type=int, help="leave this finger on the sensor")
    zfm.add_argument("--impression", type=int, help="which impression of --finger (default: the first)")
    zfm.add_argument("--real-speed", action="store_true", help="pace output at the real baud rate")
    zfm.add_argument(
        "--list-fingers",
        action="store_true",
        help="print the fingers there are (one JSON line each) and exit, without serving",
    )
    zfm.add_argument(
        "--count", type=int, default=DEFAULT_LIST_COUNT, help="how many synthetic fingers --list-fingers shows"
    )
    zfm.add_argument("--baud", type=int, default=57600, help="the module's line speed (it answers only at it)")
    cam = sub.add_parser("camera", help="a camera serving MJPEG over HTTP on 127.0.0.1")
    cam.add_argument("--size", default="640x480", help="frame size WIDTHxHEIGHT")
    cam.add_argument("--fps", type=float, default=15.0)
    cam.add_argument("--images", type=Path, help="show the images of this folder in turn")
    args = parser.parse_args(argv)
    if args.device == "camera":
        structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=sys.stderr))
        return _camera(args, parser)
    # stdout carries the one JSON line a rig reads; logs go to stderr.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=sys.stderr))

    from simulators.fingers import FingerGenerator, FolderFingerSource
    from simulators.zfm import SimulatedModule

    try:
        source = FolderFingerSource(args.images) if args.images else FingerGenerator(args.seed)
    except FileNotFoundError as exc:
        parser.error(str(exc))
    if args.list_fingers:
        for entry in finger_list(source, args.count):
            print(json.dumps(entry), flush=True)
        return 0
    sim = SimulatedModule(
        args.model,
        link=Path(args.link) if args.link else None,
        password=args.password,
        finger_source=source.image,
        real_speed=args.real_speed,
        baud=args.baud,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with sim:
        if args.finger is not None:
            try:
                impression = args.impression if args.impression is not None else _first_impression(source, args.finger)
                sim.place(finger=args.finger, impression=impression)
            except KeyError as exc:
                parser.error(str(exc.args[0]))
        print(json.dumps({"event": "listening", "port": sim.port, "model": args.model}), flush=True)
        threading.Thread(target=_commands, args=(sim, source), daemon=True).start()
        stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
