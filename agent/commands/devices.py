"""`capture-agent devices`: readers and cameras on this machine, and whether the agent may use them."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import TYPE_CHECKING, Any

from agent.options import add_common_arguments

if TYPE_CHECKING:
    from agent.config import DeviceSection
    from drivers.discovery import Finding


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "devices",
        help="list serial modules, USB fingerprint readers and cameras",
        description="What this machine has for the daemon to drive: serial ports answering the module handshake, "
        "known USB fingerprint readers and what libfprint can drive, cameras (/dev/video* with the by-id name "
        "to put in the config, and each --camera read once); for each, what it can do and whether this user "
        "may open it, with the fix. The serial ports and cameras the config names (as the daemon reads it: "
        "--config, else $CAPTURE_AGENT_CONFIG, else /etc/capture-agent/agent.toml) are probed as if named here, "
        "each with the config entry it comes from. "
        "Exit 1 when a --port or --camera named here is not usable, 0 otherwise (a configured one counts as named).",
    )
    add_common_arguments(parser)  # --config: the devices it names are probed as the daemon would open them
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


@dataclasses.dataclass(frozen=True)
class Configured:
    """The serial ports and cameras the config names, each with where it is set (``[reader]``, a [[device]])."""

    ports: dict[str, str]  # port -> its config entry
    cameras: dict[str, tuple[str, DeviceSection]]  # the source as a finding shows it -> (its entry, its section)


def configured(args: argparse.Namespace) -> Configured:
    """What the config the daemon would read names: its serial modules' ports and its cameras' sources.

    Why: discovery probed only the ports pyserial lists and the /dev/video nodes, so a module on a port it does
    not list (/dev/serial0 on some boards, a pty) and a stream camera were missing unless typed again with
    --port and --camera, and a configured device that could not be opened went unsaid.
    """
    from agent.config import load_config
    from agent.devices.supervisor import config_place, configured_devices
    from agent.errors import ConfigError
    from drivers.discovery import camera_shown

    ports: dict[str, str] = {}
    cameras: dict[str, tuple[str, DeviceSection]] = {}
    try:
        config = load_config(getattr(args, "config", None))
    except ConfigError as exc:
        # Said, then discovery goes on: it is what an installer runs to learn what to write in the config, so a
        # config it cannot read (mid-edit, closed to this user) must not leave it listing nothing (it exited 2).
        print(f"warning: the config's devices are not probed: {exc.message}", file=sys.stderr)
        print(f"fix: {exc.fix}", file=sys.stderr)
        return Configured(ports, cameras)
    for name, section in configured_devices(config):
        if section.kind == "zfm" and section.port:
            ports.setdefault(section.port, config_place(name, section))
        elif section.kind == "camera" and section.source:
            cameras.setdefault(camera_shown(section.source), (config_place(name, section), section))
    return Configured(ports, cameras)


def camera_options(section: DeviceSection) -> dict[str, Any]:
    """What the daemon gives the Camera of this [[device]] besides its source (agent.devices.kinds.CameraDevice)."""
    from agent.devices.kinds import camera_bounds

    options = {**camera_bounds(), "allow_basic_over_http": section.allow_basic_over_http}
    if section.ca_file:
        options["ca_file"] = section.ca_file
    if section.width and section.height:
        options["size"] = (section.width, section.height)
    if section.fps:
        options["fps"] = section.fps
    return options


def find(args: argparse.Namespace, config: Configured) -> list[Finding]:
    """Discovery with the configured ports and cameras probed as named, each of them marked with its entry."""
    from agent.devices.kinds import camera_bounds
    from drivers.discovery import cameras, discover

    options = camera_bounds()  # as the daemon's: its bounds, its TLS floor, and the camera's ca_file if given
    if args.camera_ca:  # absolute, as ca_file must be: the reader is handed it as it would be from the config
        options["ca_file"] = os.path.abspath(args.camera_ca)
    ports = [*args.port, *(p for p in config.ports if p not in args.port)]
    findings = discover(ports, extra_cameras=args.camera, stream_options=options, named_only=args.only_named)
    seen = {(f.kind, f.path) for f in findings}
    for shown, (_, section) in config.cameras.items():
        if ("camera", shown) not in seen:  # each read as its own entry says (its ca_file, its Basic over http)
            findings += cameras([section.source], stream_options=camera_options(section), nodes_too=False)
    for finding in findings:
        entry = config.ports.get(finding.path) if finding.kind == "serial" else None
        if finding.kind == "camera" and finding.path in config.cameras:
            entry = config.cameras[finding.path][0]
        if entry is not None:
            finding.details = {"config": entry, **finding.details}
    return findings


def run(args: argparse.Namespace) -> int:
    from agent.logs import configure_logging

    configure_logging("error", "console")
    config = configured(args)
    findings = find(args, config)
    if args.json:
        print(json.dumps([dataclasses.asdict(f) for f in findings], indent=2))
        return 1 if asked_for_and_unusable(args, findings, config) else 0
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
    return 1 if asked_for_and_unusable(args, findings, config) else 0


def asked_for_and_unusable(args: argparse.Namespace, findings: list[Finding], config: Configured) -> bool:
    """Whether a --port or --camera named on the command line, or one the config names, is not usable (absent,
    closed, no module, no frame).

    Why an exit code: `capture-agent devices --port /dev/serial0 && ...` in an installer's script must stop
    there; what discovery finds on its own (a console UART that answers nothing) is only listed.
    """
    from drivers.discovery import camera_shown

    asked = {("serial", port) for port in [*args.port, *config.ports]}
    asked |= {("camera", camera_shown(src)) for src in args.camera} | {("camera", c) for c in config.cameras}
    return any(
        (f.kind, f.path) in asked and not (f.accessible and not f.fix and f.capabilities) for f in findings
    )
