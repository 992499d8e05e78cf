"""`capture-simulator zfm --model r307` / `capture-simulator camera`: simulated devices for a test rig.

Prints one JSON line with the port to open, then serves until SIGTERM or Ctrl-C.
A finger from the synthetic generator, or from a folder of F_I.tif images
(--images), can be left on the sensor (--finger), and a rig scripts the person
at the sensor by writing lines to standard input:

    place FINGER [IMPRESSION]     put a finger on the sensor (default: its first impression)
    lift                          take it off
    pace on | off                 send at the real line speed, or instantly
    unplug | replug               pull the module out, plug it back (a plugged one: nothing)
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

and answers each on stdout ({"event": COMMAND, "url": ..., "plugged": ...}).

A script line it cannot do is answered on stderr with one JSON line
({"event": "bad_place" | "bad_command" | "unknown_command", "line": ..., "error": ...})
and the simulator keeps serving. A bad option is one line on stderr,
`capture-simulator: error: ... (fix: ...)`, exit 2. SIGTERM or Ctrl-C close
the port (the pty and its --link, or the camera's socket) and exit 0; before
it serves (listing fingers, making the first one), exit 130.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import structlog

from drivers.zfm.constants import PROFILES
from simulators.errors import SimulatorError


def _number(text: str, what: str) -> int:
    """A finger, impression or count as a rig writes it: a whole number from 0."""
    try:
        value = int(text)
    except ValueError:
        raise SimulatorError(f"{what} {text!r} is not a number", f"give {what} as a whole number from 0") from None
    if value < 0:
        raise SimulatorError(f"{what} {value} is negative", f"give {what} as a whole number from 0")
    return value


def _count(text: str) -> int:
    """How many fingers to list: at least one (a count of 0 would answer nothing at all)."""
    count = int(text) if text.strip().isdigit() else 0
    if count < 1:
        raise SimulatorError(f"{text!r} is no count of fingers to list", "give a count of 1 or more (the default is 8)")
    return count


def _say(event: str, line: str, error: object) -> None:
    print(json.dumps({"event": event, "line": line.strip(), "error": str(error)}), file=sys.stderr, flush=True)


def _commands(sim, source: object) -> None:
    """Standard-input control lines from a rig (end of input just ends the control).

    A line that cannot be done is reported on stderr as one JSON line and the
    simulator keeps serving: a rig's typo must not take the module away.
    """
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        try:
            _command(sim, source, words)
        except KeyError as exc:  # no such image in the folder
            _say("bad_place", line, exc.args[0] if exc.args else exc)
        except (SimulatorError, ValueError, OSError) as exc:
            _say("bad_place" if words[0] == "place" else "bad_command", line, exc)


def _command(sim, source: object, words: list[str]) -> None:
    command, line = words[0], " ".join(words)
    if command == "place" and len(words) in (2, 3):
        finger = _number(words[1], "the finger")
        impression = _number(words[2], "the impression") if len(words) > 2 else _first_impression(source, finger)
        sim.place(finger=finger, impression=impression)
    elif command == "lift" and len(words) == 1:
        sim.lift()
    elif command == "pace" and len(words) == 2 and words[1] in ("on", "off"):
        sim.real_speed = words[1] == "on"  # output at the real line speed (baud/10 bytes a second) or instant
    elif command == "unplug" and len(words) == 1:
        sim.unplug()
    elif command == "replug" and len(words) == 1:
        sim.replug()
    elif command == "list" and len(words) in (1, 2):
        count = _count(words[1]) if len(words) > 1 else DEFAULT_LIST_COUNT
        for entry in finger_list(source, count):
            print(json.dumps({"event": "finger", **entry}), flush=True)
    else:
        print(json.dumps({"event": "unknown_command", "line": line}), file=sys.stderr, flush=True)


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
                try:
                    camera.fps = float(rest)
                except ValueError as exc:  # not a number at all: the same advice as for a number out of range
                    raise SimulatorError(f"{rest!r} frames a second is not a number", "give e.g. fps 15") from exc
            else:
                raise ValueError("unknown command")
        except (ValueError, OSError) as exc:
            _say("bad_command", line, exc)
            continue
        print(json.dumps({"event": command, "url": camera.url, "plugged": camera.plugged}), flush=True)


def _size(text: str) -> tuple[int, int]:
    width, sep, height = text.partition("x")
    if not (sep and width.isdigit() and height.isdigit()):
        raise SimulatorError(f"--size {text!r} is not WIDTHxHEIGHT", "give the frame size as e.g. 640x480")
    return int(width), int(height)


# Set by SIGTERM / Ctrl-C, beside the KeyboardInterrupt they raise: numpy 2.4's Generator.choice(p=...)
# loses an exception raised by a signal handler while it runs (most of the time, measured), and the
# synthetic generator calls it at the start of every finger, right after the previous one is printed:
# just when a rig that reads a line and then stops the simulator sends its signal.
_STOP = threading.Event()


def _stop_requested() -> None:
    """Raise the KeyboardInterrupt a signal asked for, if something swallowed it on the way."""
    if _STOP.is_set():
        raise KeyboardInterrupt


def _serve() -> None:
    """Wait for SIGTERM or Ctrl-C (both raise KeyboardInterrupt here), then ignore any further one.

    A second signal during the clean-up would otherwise cut it short: a pty or
    a port link left behind, a traceback instead of a clean exit.
    """
    try:
        _stop_requested()
        while not _STOP.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _camera(args: argparse.Namespace) -> int:
    from simulators.camera import SimulatedCamera

    camera = SimulatedCamera(_size(args.size), fps=args.fps)
    if args.images is not None:
        camera.show_folder(args.images)
    with camera:
        print(json.dumps({"event": "listening", "url": camera.url}), flush=True)
        threading.Thread(target=_camera_commands, args=(camera,), daemon=True).start()
        _serve()
    return 0


DEFAULT_LIST_COUNT = 8


def finger_list(source: object, count: int = DEFAULT_LIST_COUNT) -> Iterator[dict[str, object]]:
    """The fingers a rig may place: from a folder, all of them with their impressions; from the generator,
    the first ``count`` (it has as many as asked for), with their pattern class and minutiae count.

    One at a time, as each is made (about a second a synthetic finger): a long list
    shows up line by line, and an interrupted one has printed what was done.
    """
    keys = getattr(source, "keys", None)
    if keys is not None:  # a folder of F_I.tif images
        found: dict[int, list[int]] = {}
        for finger, impression in keys():
            found.setdefault(finger, []).append(impression)
        yield from ({"finger": f, "impressions": found[f]} for f in sorted(found))
        return
    for finger_id in range(count):
        finger = source.finger(finger_id)  # type: ignore[attr-defined]
        yield {
            "finger": finger_id,
            "class": finger.finger_class,
            "minutiae": len(finger.minutiae),
            "impressions": "0, 1, 2, ... (each a new placement)",
        }


def _first_impression(source: object, finger: int) -> int:
    """FVC folders number impressions from 1, the generator from 0: the first there is."""
    keys = getattr(source, "keys", None)
    if keys is None:
        return 0
    found = [i for f, i in keys() if f == finger]
    if not found:
        raise KeyError(f"no image of finger {finger} in the folder: pick a finger with an F_I.tif present")
    return min(found)


def _parser() -> argparse.ArgumentParser:
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
    zfm.add_argument(
        "--password", type=lambda v: int(v, 0), default=0, help="the module's 32-bit password (0x... or decimal)"
    )
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
    zfm.add_argument(
        "--baud", type=int, default=57600, help="the module's line speed, 9600 x 1..12 (it answers only at it)"
    )
    cam = sub.add_parser("camera", help="a camera serving MJPEG over HTTP on 127.0.0.1")
    cam.add_argument("--size", default="640x480", help="frame size WIDTHxHEIGHT, 120x32 to 4096x4096")
    cam.add_argument("--fps", type=float, default=15.0, help="frames a second, above 0 and at most 120")
    cam.add_argument("--images", type=Path, help="show the images of this folder in turn")
    return parser


def _zfm(args: argparse.Namespace) -> int:
    from simulators.fingers import FingerGenerator, FolderFingerSource
    from simulators.zfm import SimulatedModule, check_baud, check_password

    check_baud(args.baud)  # before any slow work: a typo is said at once
    check_password(args.password)
    if args.list_fingers:
        _count(str(args.count))
    finger = _number(str(args.finger), "--finger") if args.finger is not None else None
    if args.impression is not None:
        _number(str(args.impression), "--impression")
    if args.images is not None and not args.images.is_dir():
        raise SimulatorError(f"--images {args.images} is not a folder", "give a folder of F_I.tif images")
    try:
        source = FolderFingerSource(args.images) if args.images else FingerGenerator(args.seed)
    except FileNotFoundError:  # a folder, but none of its files is named F_I.tif
        raise SimulatorError(
            f"no F_I.tif images in {args.images}",
            "name them finger_impression.tif (1_1.tif, 1_2.tif, ...) as in the FVC sets, or give another folder",
        ) from None
    if args.list_fingers:
        for entry in finger_list(source, args.count):
            print(json.dumps(entry), flush=True)
            _stop_requested()
        return 0
    sim = SimulatedModule(
        args.model,
        link=Path(args.link) if args.link else None,
        password=args.password,
        finger_source=source.image,
        real_speed=args.real_speed,
        baud=args.baud,
    )
    with sim:
        if finger is not None:
            try:
                impression = args.impression if args.impression is not None else _first_impression(source, finger)
                sim.place(finger=finger, impression=impression)
            except KeyError as exc:
                raise SimulatorError(str(exc.args[0])) from None  # it says which to pick
        print(json.dumps({"event": "listening", "port": sim.port, "model": args.model}), flush=True)
        threading.Thread(target=_commands, args=(sim, source), daemon=True).start()
        _serve()
    return 0


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM and SIGINT alike: whatever runs stops the same way, with-blocks closing the pty and the port."""
    _STOP.set()
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Run one simulator; a bad option is one `error:` line naming the fix (exit 2), an interruption a clean exit.

    SIGTERM and Ctrl-C end serving with exit 0 (the usual way to stop it); if they
    come before it serves (listing fingers, making the first one), exit 130.
    """
    args = _parser().parse_args(argv)
    # stdout carries the JSON lines a rig reads; logs go to stderr.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=sys.stderr))
    main_thread = threading.current_thread() is threading.main_thread()
    _STOP.clear()
    previous = None
    if main_thread:  # explicitly: a rig started from a shell's background job inherits SIGINT ignored
        previous = (signal.signal(signal.SIGINT, _interrupt), signal.signal(signal.SIGTERM, _interrupt))
    try:
        return _camera(args) if args.device == "camera" else _zfm(args)
    except SimulatorError as exc:
        print(f"capture-simulator: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("capture-simulator: interrupted", file=sys.stderr)
        return 130
    finally:
        if previous is not None:  # as they were: main() may run inside another program (a test)
            signal.signal(signal.SIGINT, previous[0])
            signal.signal(signal.SIGTERM, previous[1])


if __name__ == "__main__":
    sys.exit(main())
