"""`capture-agent devices`: readers and cameras on this machine, and whether the agent may use them."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os

from agent.options import add_common_arguments


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "devices",
        help="list serial modules, USB fingerprint readers and cameras",
        description="What this machine has for the daemon to drive: serial ports answering the module handshake, "
        "known USB fingerprint readers and what libfprint can drive, cameras (/dev/video* with the by-id name "
        "to put in the config, and each --camera read once); for each, what it can do and whether this user "
        "may open it, with the fix. Exit 1 when a --port or --camera named here is not usable, 0 otherwise.",
    )
    add_common_arguments(parser)  # accepted like every command's (README); discovery itself needs no config
    parser.add_argument("--port", action="append", default=[], help="also probe this serial port (repeatable)")
    parser.add_argument(
        "--camera", action="append", default=[], help="also probe this camera: URL, /dev/videoN or file (repeatable)"
    )
    parser.add_argument(
        "--camera-ca",
        metavar="FILE",
        default="",
        help="trust this CA certificate (PEM) alone for each https --camera, as a camera's ca_file does in the "
        "daemon's [[device]] entry (a camera with a private CA or its own self-signed certificate)",
    )
    parser.add_argument(
        "--only-named",
        action="store_true",
        help="probe only the serial ports and cameras named with --port and --camera: no other serial port gets "
        "the module's handshake (another UART may carry a GPS, a modem or a console) and no other camera is "
        "opened; USB readers are listed either way",
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from agent.devices.kinds import camera_bounds
    from agent.logs import configure_logging
    from drivers.discovery import discover

    configure_logging("error", "console")
    options = camera_bounds()  # as the daemon's: its bounds, its TLS floor, and the camera's ca_file if given
    if args.camera_ca:  # absolute, as ca_file must be: the reader is handed it as it would be from the config
        options["ca_file"] = os.path.abspath(args.camera_ca)
    findings = discover(args.port, extra_cameras=args.camera, stream_options=options, named_only=args.only_named)
    if args.json:
        print(json.dumps([dataclasses.asdict(f) for f in findings], indent=2))
        return 1 if asked_for_and_unusable(args, findings) else 0
    for f in findings:
        mark = "ok  " if f.accessible and not f.fix else "FIX "
        print(f"[{mark}] {f.kind:<6} {f.path}  {f.description}")
        if f.capabilities:
            print(f"         can: {', '.join(f.capabilities)}")
        for key, value in f.details.items():
            print(f"         {key}: {value}")
        if f.fix:
            print(f"         fix: {f.fix}")
    kinds = {f.kind for f in findings}
    for kind, what in (("serial", "serial ports"), ("usb", "known USB fingerprint readers"), ("camera", "cameras")):
        if kind not in kinds:
            searched = args.only_named and kind != "usb"
            print(f"[none] {kind:<6} " + (f"no {what} named (--only-named: none other probed)" if searched
                                          else f"no {what} found"))
    return 1 if asked_for_and_unusable(args, findings) else 0


def asked_for_and_unusable(args: argparse.Namespace, findings: list) -> bool:  # type: ignore[type-arg]
    """Whether a --port or --camera named on the command line is not usable (absent, closed, no module, no frame).

    Why an exit code: `capture-agent devices --port /dev/serial0 && ...` in an installer's script must stop
    there; what discovery finds on its own (a console UART that answers nothing) is only listed.
    """
    from drivers.discovery import camera_shown

    asked = {("serial", port) for port in args.port}
    asked |= {("camera", camera_shown(src)) for src in args.camera}
    return any(
        (f.kind, f.path) in asked and not (f.accessible and not f.fix and f.capabilities) for f in findings
    )
