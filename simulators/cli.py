"""`capture-simulator zfm --model r307` / `capture-simulator camera`: simulated devices for a test rig.

Prints one JSON line with the port to open, then serves until SIGTERM or Ctrl-C.
A finger from the synthetic generator, or from a folder of F_I.tif images
(--images), can be left on the sensor (--finger), and a rig scripts the person
at the sensor by writing lines to standard input:

    place FINGER [IMPRESSION]     put a finger on the sensor (default: its first impression)
    lift                          take it off
    smudge                        a print with no ridges on the sensor (a smudged or very dry finger): the
                                  agent's quality gate refuses it, as it would a real one
    pace on | off                 send at the real line speed, or instantly
    unplug | replug               pull the module out, plug it back (a plugged one: nothing)
    list [COUNT]                  print the fingers there are, one JSON line each, on stdout (1-1000)

Finger, impression and count are ASCII digits, at most 9 of them.

People and fingers: the simulator knows fingers, not people. Every finger
number is a different finger (with --images: the F of F_I.tif); its
impressions 0, 1, 2... are different placements of that same finger. A rig
makes each person from finger numbers of their own, two per person since a
step-up asks for another finger: ana = fingers 0 and 1, dan = 2 and 3. Enroll
(3 captures of 2 fingers, `capture-agent enroll`'s default) with `place 0 0`,
`place 0 1`, `place 0 2`, then `place 1 0`, `place 1 1`, `place 1 2`; verify
with a fresh impression (`place 0 3`, and `place 1 3` for a step-up). Another
--seed gives other fingers.
`capture-simulator zfm --list-fingers` lists them (class, minutiae).

`capture-simulator camera` serves MJPEG over HTTP on 127.0.0.1 (OpenCV opens
the printed URL) and reads these lines:

    show DIR | still FILE         images of a folder in turn, or one image
    nothing | dark | glare        an empty scene, the scene darkened, the scene in glare
    garbage                       frames that do not decode (a broken camera), until the next scene
    fps N                         frames a second, 0.1 to 120
    unplug | replug               drop every stream and close the port, listen again

and answers each on stdout ({"event": COMMAND, "url": ..., "plugged": ...}).

A script line it cannot do is answered on stderr with one JSON line
({"event": "bad_place" | "bad_command" | "unknown_command", "line": ..., "error": ...})
and the simulator keeps serving (standard input is read as bytes: one that is
not UTF-8 makes a bad line, never the end of the script). A bad option is one line on stderr,
`capture-simulator: error: ... (fix: ...)`, exit 2. SIGTERM or Ctrl-C close
the port (the pty and its --link, or the camera's socket) and exit 0; before
it serves (listing fingers, making the first one), exit 130.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

import structlog

from drivers.zfm.constants import PROFILES
from simulators.errors import SimulatorError, UnknownCommand

MAX_DIGITS = 9  # a finger, impression or count: more digits are no rig's number (2**64 aliased finger 0)
MAX_LIST_COUNT = 1000  # synthetic fingers take about a second each: a longer list is no rig's
MAX_LINE_BYTES = 64 * 1024  # a script line longer than this is refused, not held
_DIGITS = re.compile(rf"[0-9]{{1,{MAX_DIGITS}}}")  # ASCII only: str.isdigit() and int() take '²' and '٣'
_NEGATIVE = re.compile(r"-[0-9]+")
_RATE = re.compile(r"[0-9]{1,9}(?:\.[0-9]{1,9})?|\.[0-9]{1,9}")  # fps: plain decimals, no nan/inf/1e9/_
MODULE_COMMANDS = "place FINGER [IMPRESSION], smudge, lift, pace on|off, unplug, replug, list [COUNT]"
SMUDGE_GREY = 200  # a light, even print with no ridges: what a smudge or a very dry finger leaves
CAMERA_COMMANDS = "show DIR, still FILE, nothing, dark, glare, garbage, fps N, unplug, replug"


def _number(text: str, what: str) -> int:
    """A finger, impression or count as a rig writes it: ASCII digits, at most :data:`MAX_DIGITS` of them.

    ``int()`` alone takes '٣', '1_0' and ' 7 ', and any size: the synthetic generator seeds from the
    number's low 64 bits, so finger 2**64 would silently be finger 0, another person's.
    """
    if _NEGATIVE.fullmatch(text):
        raise SimulatorError(f"{what} {text} is negative", f"give {what} as a whole number from 0")
    if not _DIGITS.fullmatch(text):
        shown = text if len(text) <= 40 else text[:40] + "..."
        raise SimulatorError(
            f"{what} {shown!r} is not a number of at most {MAX_DIGITS} ASCII digits",
            f"give {what} as a whole number from 0 to {10**MAX_DIGITS - 1}, in the digits 0-9",
        )
    return int(text)


def _count(text: str) -> int:
    """How many fingers to list: 1 to :data:`MAX_LIST_COUNT` (0 would answer nothing, a million never end)."""
    count = int(text) if _DIGITS.fullmatch(text.strip()) else 0
    if not 1 <= count <= MAX_LIST_COUNT:
        raise SimulatorError(
            f"{text!r} is no count of fingers to list",
            f"give a count from 1 to {MAX_LIST_COUNT} (the default is {DEFAULT_LIST_COUNT})",
        )
    return count


def _rate(text: str) -> float:
    """A frame rate as a rig writes it (``fps 15``, ``fps 0.5``): a plain decimal, then checked by check_fps."""
    from simulators.camera import MAX_FPS, MIN_FPS, check_fps

    if not _RATE.fullmatch(text):
        shown = text if len(text) <= 40 else text[:40] + "..."
        raise SimulatorError(
            f"{shown!r} frames a second is not a number",
            f"give a plain decimal from {MIN_FPS:g} to {MAX_FPS:g}, e.g. fps 15",
        )
    return check_fps(float(text))


def _json_line(answer: dict[str, object]) -> None:
    print(json.dumps(answer), flush=True)


def _say(event: str, line: str, error: object) -> None:
    """One JSON line on stderr for a script line the simulator could not do (it keeps serving)."""
    answer = {"event": event, "line": _printable(line.strip()), "error": _printable(str(error))}
    print(json.dumps(answer), file=sys.stderr, flush=True)


def _printable(text: str) -> str:
    """``text`` with the bytes that were not UTF-8 written as ``\\xNN``.

    Why: a line is decoded with surrogateescape (:func:`_stdin_lines`), and json.dumps wrote
    its stray bytes as lone surrogate escapes (``"\\udcff"``), which strict JSON parsers
    (the project's own ``protocol.wire.loads`` among them) refuse: a rig reading the
    answers could not parse the very line that reported its mistake.
    """
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _stdin_lines() -> Iterator[str]:
    """Standard input's lines, read as bytes off its file descriptor and decoded as file names are.

    A text-mode ``sys.stdin`` raises UnicodeDecodeError on a non-UTF-8 byte, which ended
    the control thread: the rig could no longer script the device. Decoded with
    ``os.fsdecode`` (surrogateescape), any byte passes, and a path the rig gives to
    ``show`` or ``still`` reaches the file system as the bytes it wrote. A line over
    :data:`MAX_LINE_BYTES` is answered as a bad command and its bytes are dropped.
    """
    try:
        fd = sys.stdin.fileno() if sys.stdin is not None else -1
    except (OSError, ValueError):  # no standard input at all (closed, or a stream with no descriptor)
        return
    if fd < 0:
        return
    with open(fd, "rb", closefd=False) as stream:
        while True:
            try:
                raw = stream.readline(MAX_LINE_BYTES + 1)
            except OSError:
                return
            if not raw:
                return
            if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                while raw and not raw.endswith(b"\n"):  # the rest of the overlong line
                    raw = stream.readline(MAX_LINE_BYTES)
                _say(
                    "bad_command",
                    "",
                    SimulatorError(
                        f"a script line runs past {MAX_LINE_BYTES} bytes", "write one command a line, each shorter"
                    ),
                )
                continue
            yield os.fsdecode(raw)


def _commands(sim, source: object) -> None:
    """Standard-input control lines from a rig (end of input just ends the control).

    A line that cannot be done is reported on stderr as one JSON line and the
    simulator keeps serving: a rig's typo must not take the module away.
    """
    for line in _stdin_lines():
        if not line.split():
            continue
        try:
            module_command(sim, source, line)
        except UnknownCommand as exc:
            _say("unknown_command", line, exc)
        except KeyError as exc:  # no such image in the folder
            _say("bad_place", line, exc.args[0] if exc.args else exc)
        except (SimulatorError, ValueError, OSError) as exc:
            _say("bad_place" if line.split()[0] == "place" else "bad_command", line, exc)


def module_command(
    sim, source: object, line: str, *, emit: Callable[[dict[str, object]], None] = _json_line
) -> None:
    """Do one script line for a simulated serial module (what the CLI does with each line of standard input).

    ``source`` is the module's finger source (a FingerGenerator or a FolderFingerSource): ``place`` and
    ``list`` look fingers up in it. ``list`` hands each finger to ``emit`` as it is made (by default one
    JSON line on stdout). UnknownCommand for a line whose first word is no command; SimulatorError for a
    known command with arguments it cannot take, or a finger or impression a folder lacks (each names
    the fix).
    """
    words = line.split()
    if not words:
        return
    command, args = words[0], words[1:]
    if command == "place":
        if len(args) not in (1, 2):
            raise SimulatorError(f"place takes 1 or 2 numbers, not {len(args)}", "write place FINGER [IMPRESSION]")
        finger = _number(args[0], "the finger")
        impression = _number(args[1], "the impression") if len(args) > 1 else _first_impression(source, finger)
        _check_in_folder(source, finger, impression)
        sim.place(finger=finger, impression=impression)
    elif command == "pace":
        if args not in (["on"], ["off"]):
            raise SimulatorError(f"pace takes on or off, not {' '.join(args)!r}", "write pace on, or pace off")
        sim.real_speed = args[0] == "on"  # output at the real line speed (baud/10 bytes a second) or instant
    elif command == "list":
        if len(args) > 1:
            raise SimulatorError(f"list takes at most one count, not {len(args)}", "write list, or list COUNT")
        count = _count(args[0]) if args else DEFAULT_LIST_COUNT
        for entry in finger_list(source, count):
            emit({"event": "finger", **entry})
    elif command == "smudge":
        if args:
            raise SimulatorError("smudge takes nothing after it", "write smudge alone")
        import numpy as np

        sim.place(np.full((sim.profile.image_height, sim.profile.image_width), SMUDGE_GREY, np.uint8))
    elif command in ("lift", "unplug", "replug"):
        if args:
            raise SimulatorError(f"{command} takes nothing after it", f"write {command} alone")
        getattr(sim, command)()
    else:
        raise UnknownCommand(f"{_shown(command)!r} is no command of the module", f"use one of: {MODULE_COMMANDS}")


def _shown(word: str) -> str:
    return word if len(word) <= 40 else word[:40] + "..."


def camera_command(camera, line: str) -> dict[str, object] | None:
    """Do one script line for a simulated camera; the answer to print ({"event", "url", "plugged"}), None if blank.

    UnknownCommand for a line whose first word is no command; SimulatorError (a ValueError) for a command
    it cannot do, naming the fix; OSError from the file system as it comes.
    """
    words = line.split(maxsplit=1)
    if not words:
        return None
    command, rest = words[0], (words[1].strip() if len(words) > 1 else "")
    if command in ("show", "still"):
        if not rest:
            what = "DIR" if command == "show" else "FILE"
            raise SimulatorError(f"{command} needs a {what.lower()}", f"write {command} {what}")
        if command == "show":
            camera.show_folder(Path(rest))
        else:
            from simulators.images import read_image

            camera.show(read_image(Path(rest), color=True, fix="give a JPEG or PNG file"))
    elif command in ("nothing", "dark", "glare", "garbage", "unplug", "replug"):
        if rest:
            raise SimulatorError(f"{command} takes nothing after it", f"write {command} alone")
        getattr(camera, command)()
    elif command == "fps":
        camera.fps = _rate(rest)
    else:
        raise UnknownCommand(f"{_shown(command)!r} is no command of the camera", f"use one of: {CAMERA_COMMANDS}")
    return {"event": command, "url": camera.url, "plugged": camera.plugged}


def _camera_commands(camera) -> None:
    for line in _stdin_lines():
        try:
            answer = camera_command(camera, line)
        except UnknownCommand as exc:
            _say("unknown_command", line, exc)
            continue
        except (ValueError, OSError) as exc:
            _say("bad_command", line, exc)
            continue
        if answer is not None:
            _json_line(answer)


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


# Set once the simulator says where it listens: from then on a signal only sets _STOP. Raised as a
# KeyboardInterrupt it could land between that line (which a rig reads, then may stop the simulator at
# once) and the wait for the stop, in the command thread's start, and end as "interrupted", exit 130:
# a clean stop reported as a failure (seen under load, about 2 runs in 12).
_SERVING = threading.Event()


def _serve(listening: dict[str, object], commands: Callable[[], None]) -> None:
    """Say where it listens, take script lines in a thread, and serve until SIGTERM or Ctrl-C; then ignore any
    further signal.

    A second signal during the clean-up would otherwise cut it short: a pty or
    a port link left behind, a traceback instead of a clean exit.
    """
    _SERVING.set()
    print(json.dumps(listening), flush=True)
    threading.Thread(target=commands, daemon=True).start()
    while not _STOP.wait(1.0):
        pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _camera(args: argparse.Namespace) -> int:
    from simulators.camera import SimulatedCamera

    camera = SimulatedCamera(_size(args.size), fps=args.fps)
    if args.images is not None:
        camera.show_folder(args.images)
    with camera:
        _serve({"event": "listening", "url": camera.url}, lambda: _camera_commands(camera))
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


def _folder_impressions(source: object, finger: int) -> list[int] | None:
    """The impressions of ``finger`` a folder source holds, sorted; None for the generator (it has them all)."""
    keys = getattr(source, "keys", None)
    if keys is None:
        return None
    return sorted(i for f, i in keys() if f == finger)


def _first_impression(source: object, finger: int) -> int:
    """FVC folders number impressions from 1, the generator from 0: the first there is."""
    found = _folder_impressions(source, finger)
    if found is None:
        return 0
    _check_in_folder(source, finger, found[0] if found else 0)
    return found[0]


def _check_in_folder(source: object, finger: int, impression: int) -> None:
    """SimulatorError naming what the folder holds when it has no image of ``finger``'s ``impression``.

    Why: the folder's own numbering is the rig's usual slip (FVC numbers fingers from 101 and
    impressions from 1, the generator both from 0), and "no image 101_0" alone did not say which to use.
    """
    found = _folder_impressions(source, finger)
    if found is None or impression in found:
        return
    if not found:
        pairs = source.keys  # type: ignore[attr-defined]  # a folder's (finger, impression) pairs
        fingers = sorted({f for f, _ in pairs()})
        raise SimulatorError(
            f"no image of finger {finger} in the folder",
            f"place one of its fingers, {fingers[0]} to {fingers[-1]} (`list` shows each with its impressions)",
        )
    raise SimulatorError(
        f"no impression {impression} of finger {finger} in the folder",
        f"its impressions there are {', '.join(map(str, found))}: write place {finger} {found[0]}",
    )


class _Parser(argparse.ArgumentParser):
    """argparse, raising a SimulatorError naming the command's ``--help`` for a usage mistake.

    Why: argparse printed its usage block and ``error: ...`` with no fix, unlike every other
    refusal of the simulator (one line, ``capture-simulator: error: ... (fix: ...)``, exit 2),
    which a rig's log shows as one line. Subparsers are made of this class too.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.set_defaults(command_prog=self.prog)  # the deepest command given wins: its --help is the fix

    def error(self, message: str) -> NoReturn:
        shows = "lists its devices" if self._subparsers is not None else "shows its options"
        raise SimulatorError(message, f"`{self.prog} --help` {shows}")


def _installed_version() -> str:
    """As protocol.usage.installed_version (which this package may not import: tests/test_architecture.py)."""
    import importlib.metadata

    try:
        return importlib.metadata.version("capture-agent")
    except importlib.metadata.PackageNotFoundError:
        return "(version unknown: not installed, run from a source tree)"


def _parser() -> argparse.ArgumentParser:
    raw = argparse.RawDescriptionHelpFormatter  # keep the command list and paragraphs as written
    parser = _Parser(prog="capture-simulator", description=__doc__, formatter_class=raw)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_installed_version()}",
                        help="print the installed version and exit")
    sub = parser.add_subparsers(dest="device", required=True, metavar="{zfm,camera}")
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
    zfm.add_argument("--finger", help="leave this finger on the sensor")  # checked as script lines are
    zfm.add_argument("--impression", help="which impression of --finger (default: the first)")
    zfm.add_argument("--real-speed", action="store_true", help="pace output at the real baud rate")
    zfm.add_argument(
        "--list-fingers",
        action="store_true",
        help="print the fingers there are (one JSON line each) and exit, without serving",
    )
    zfm.add_argument(
        "--count", default=str(DEFAULT_LIST_COUNT), help="how many synthetic fingers --list-fingers shows"
    )
    zfm.add_argument(
        "--baud", type=int, default=57600, help="the module's line speed, 9600 x 1..12 (it answers only at it)"
    )
    cam = sub.add_parser("camera", help="a camera serving MJPEG over HTTP on 127.0.0.1")
    cam.add_argument("--size", default="640x480", help="frame size WIDTHxHEIGHT, 120x32 to 4096x4096")
    cam.add_argument("--fps", type=float, default=15.0, help="frames a second, 0.1 to 120")
    cam.add_argument("--images", type=Path, help="show the images of this folder in turn")
    return parser


def _zfm(args: argparse.Namespace) -> int:
    from simulators.fingers import FingerGenerator, FolderFingerSource
    from simulators.images import folders_inside
    from simulators.zfm import SimulatedModule, check_baud, check_password

    check_baud(args.baud)  # before any slow work: a typo is said at once
    check_password(args.password)
    count = _count(args.count) if args.list_fingers else DEFAULT_LIST_COUNT
    finger = _number(args.finger, "--finger") if args.finger is not None else None
    chosen = _number(args.impression, "--impression") if args.impression is not None else None
    if args.images is not None and not args.images.is_dir():
        raise SimulatorError(f"--images {args.images} is not a folder", "give a folder of F_I.tif images")
    try:
        source = FolderFingerSource(args.images) if args.images else FingerGenerator(args.seed)
    except FileNotFoundError:  # a folder, but none of its files is named F_I.tif
        raise SimulatorError(
            f"no F_I.tif images in {args.images}",
            "name them finger_impression.tif (1_1.tif, 1_2.tif, ...) as in the FVC sets, or give another folder"
            + folders_inside(args.images),
        ) from None
    if args.list_fingers:
        for entry in finger_list(source, count):
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
            impression = chosen if chosen is not None else _first_impression(source, finger)
            _check_in_folder(source, finger, impression)  # says which to pick
            sim.place(finger=finger, impression=impression)
        _serve({"event": "listening", "port": sim.port, "model": args.model}, lambda: _commands(sim, source))
    return 0


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM and SIGINT alike: whatever runs stops the same way, with-blocks closing the pty and the port.

    Before serving, work in progress (making fingers) is cut short by a KeyboardInterrupt; once serving,
    :func:`_serve` sees the stop and returns.
    """
    _STOP.set()
    if not _SERVING.is_set():
        raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Run one simulator; a bad option is one `error:` line naming the fix (exit 2), an interruption a clean exit.

    SIGTERM and Ctrl-C end serving with exit 0 (the usual way to stop it); if they
    come before it serves (listing fingers, making the first one), exit 130.
    """
    try:
        args, extra = _parser().parse_known_args(argv)
        if extra:  # argparse reports them from the top parser, whose help does not show the device's options
            raise SimulatorError(f"unrecognized arguments: {' '.join(extra)}",
                                 f"`{args.command_prog} --help` shows its options")
    except SimulatorError as exc:
        print(f"capture-simulator: error: {exc}", file=sys.stderr)
        return 2
    # stdout carries the JSON lines a rig reads; logs go to stderr, from info up (a finger's making is debug:
    # --list-fingers already prints it on stdout).
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
    )
    main_thread = threading.current_thread() is threading.main_thread()
    _STOP.clear()
    _SERVING.clear()
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
