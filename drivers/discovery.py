"""What readers and cameras this machine has, and whether this user may open them.

Bounded everywhere: a serial port gets one short handshake (ports side by side), cameras are probed
only where a /dev/video node exists, USB is enumerated once. Each finding says
what would fix access when it is denied.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import structlog

from drivers.accounts import user_name
from drivers.usb_ids import USB_SERIAL_ADAPTERS, identify
from drivers.zfm.driver import ZfmModule
from drivers.zfm.errors import ModuleError, PortBusyError

if TYPE_CHECKING:
    from serial.tools.list_ports_common import ListPortInfo

    from drivers.camera.source import CameraSource

log = structlog.get_logger()

DISCOVERY_BAUDS = (57600, 115200)  # the factory default, and the speed the agent raises modules to
SERIAL_PROBES_AT_ONCE = 8  # ports probed at the same time: each is one thread waiting on its line, bounded
ACCESS_FIX = (
    "add the agent's user to the capture-readers group and install systemd/60-capture-agent.rules "
    "(udevadm control --reload && udevadm trigger); for serial ports the dialout group also works"
)


@dataclass
class Finding:
    kind: str  # serial, usb, camera
    path: str
    accessible: bool
    description: str = ""
    details: dict = field(default_factory=dict)
    fix: str = ""
    capabilities: list[str] = field(default_factory=list)  # fingerprint-image, match-on-sensor, camera


def _may_open(path: str) -> bool:
    return os.access(path, os.R_OK | os.W_OK)


def _named_path_problem(kind: str, path: str, missing_fix: str) -> Finding | None:
    """The finding for a path asked for by name that is not there, or that this user cannot even look at; None
    when it is there to be judged.

    Why not ``os.path.exists``: it says False for a path inside a folder this user may not pass through
    (EACCES), and "does not exist" then sent the installer looking for an unplugged adapter when the fix
    was that folder's mode.
    """
    try:
        os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return Finding(kind, path, False, "does not exist", fix=missing_fix)
    except PermissionError:
        return _closed_finding(kind, path)
    except OSError:  # a name too long, a loop of links: the open that follows says what it says
        return None
    return None


def _closed_to_user(kind: str, path: str) -> Finding | None:
    """The finding for a path this user cannot even look at (a folder above it closed), else None."""
    try:
        os.stat(path)
    except PermissionError:
        return _closed_finding(kind, path)
    except OSError:  # not there, a name too long, a loop of links: the open that follows says what it says
        return None
    return None


def _closed_finding(kind: str, path: str) -> Finding:
    """A path inside a folder this user may not pass through (EACCES): the fix is that folder's mode."""
    return Finding(
        kind,
        path,
        False,
        f"cannot be looked at by {user_name()}: a folder above it is closed to this user",
        fix=f"`ls -ld` each folder above {path}: the agent's user must be able to pass through (x) every one "
        "(`chmod o+x FOLDER`, or give it to that user's group), or move the file where it can",
    )


def serial_ports(extra: list[str], reply_timeout_s: float = 0.3, *, listed_too: bool = True) -> list[Finding]:
    """Every serial port listed (unless not ``listed_too``), and those asked for by name, each probed for a
    module; sorted by path.

    Why concurrently: a port where nothing answers costs the full reply timeout at
    each discovery baud, and probed one after another those waits added up (a PC
    lists /dev/ttyS0..S3: seconds spent on nothing). Each port is still probed by
    its own ZfmModule, in its own worker; at most SERIAL_PROBES_AT_ONCE at a time.
    """
    from serial.tools import list_ports

    listed = {p.device: p for p in list_ports.comports()}
    paths = sorted(set(listed) | set(extra)) if listed_too else sorted(set(extra))
    if not paths:
        return []
    with ThreadPoolExecutor(min(SERIAL_PROBES_AT_ONCE, len(paths)), thread_name_prefix="serial-probe") as pool:
        return list(pool.map(lambda path: _serial_port(path, listed.get(path), reply_timeout_s), paths))


def _serial_port(path: str, info: ListPortInfo | None, reply_timeout_s: float) -> Finding:
    """One port's finding: not there, closed to this user, or what answered its handshake (or why nothing did)."""
    absent = _named_path_problem(  # a port asked for by name that is not there: not a matter of its group
        "serial",
        path,
        "check the name (`ls /dev/ttyUSB* /dev/ttyACM* /dev/serial*` lists the ports there are); "
        "a USB adapter that is unplugged has no port: plug it in",
    )
    if absent is not None:
        return absent
    adapter = USB_SERIAL_ADAPTERS.get((info.vid, info.pid)) if info and info.vid else None
    finding = Finding("serial", path, _may_open(path), adapter or (info.description if info else ""))
    if not finding.accessible:
        finding.fix = ACCESS_FIX
        return finding
    _handshake(finding, ZfmModule(path, reply_timeout_s=reply_timeout_s), reply_timeout_s)
    return finding


def _handshake(finding: Finding, module: ZfmModule, reply_timeout_s: float) -> None:
    """Fill ``finding`` with the module that answers at a discovery baud, or with why none did and its fix.

    A ModuleError stays this port's finding: raised out of its worker, it would
    end the whole discovery and lose every other port's finding with it.
    """
    try:
        opened = module.open_at_any_baud(DISCOVERY_BAUDS, probe_timeout_s=reply_timeout_s)
        finding.description = f"ZFM-family module, model profile {opened.profile.name}"
        finding.capabilities = ["fingerprint-image"]
        finding.details = {
            "capacity": opened.params.library_size,
            "packet_size": opened.params.packet_size,
            "baud": opened.params.baud,
            "security_level": opened.params.security_level,
        }
    except ModuleError as exc:
        adapter_name = finding.description if finding.description not in ("", "n/a") else ""
        said = "in use by another process" if isinstance(exc, PortBusyError) else "no fingerprint module answered"
        finding.description = ", ".join(filter(None, [adapter_name, said]))
        finding.details = {"handshake": str(exc.args[0])}
        finding.fix = exc.fix
    finally:
        module.close()


def usb_readers(backend: object | None = None) -> list[Finding]:
    """Known fingerprint readers on USB (``backend``: a pyusb backend, default libusb)."""
    try:
        import usb.core

        devices = list(usb.core.find(find_all=True, backend=backend))
    except Exception as exc:  # NoBackendError and friends: libusb missing
        return [
            Finding(
                "usb",
                "-",
                False,
                f"USB enumeration unavailable: {type(exc).__name__}",
                fix="install libusb (Debian: apt-get install libusb-1.0-0)",
            )
        ]
    findings = []
    for dev in devices:
        name = identify(dev.idVendor, dev.idProduct)
        if name is None:
            continue
        node = f"/dev/bus/usb/{dev.bus:03d}/{dev.address:03d}"
        accessible = _may_open(node)
        findings.append(
            Finding(
                "usb",
                node,
                accessible,
                f"{name} ({dev.idVendor:04x}:{dev.idProduct:04x})",
                fix="" if accessible else ACCESS_FIX,
            )
        )
    return findings


def _probe_stream(finding: Finding, source: CameraSource, options: Mapping[str, Any]) -> None:
    """An http(s) MJPEG camera read as the daemon reads it (drivers.camera.probe), not through FFmpeg."""
    from drivers.camera.errors import CameraError
    from drivers.camera.probe import look_at_stream

    try:
        look = look_at_stream(source, **options)
    except CameraError as exc:
        finding.description = f"gives no frame the agent can use: {exc.args[0]}"
        finding.fix = getattr(exc, "fix", "")
        return
    finding.description = f"camera ({look.backend})"
    finding.capabilities = ["camera"]
    finding.details = {"width": look.width, "height": look.height}
    if look.fps is not None:
        finding.details["fps"] = look.fps  # measured between the frames read


def _probe_camera(finding: Finding, source: str, options: Mapping[str, Any] = MappingProxyType({})) -> None:
    """Read ``source`` once, as the agent would open it; ``options``: what the agent gives an MJPEG Camera."""
    import cv2

    from drivers.camera.errors import (
        CameraError,
        CameraFileNotVideo,
        CameraFileUnreadable,
        CameraNodeMissingError,
    )
    from drivers.camera.source import NO_FRAME, CameraSource, CameraSourceError
    from drivers.camera.stream import is_http

    try:
        camera = CameraSource.parse(source)
        if camera.kind == "stream" and is_http(camera.text):
            _probe_stream(finding, camera, options)
            return
        capture = camera.open()
    except CameraSourceError as exc:  # its message shows the source without credentials (CameraSourceCredentials)
        fix = getattr(exc, "fix", "")  # the typed ones (a credential, an unreadable URL) say why, then the fix
        finding.description = f"not a camera source: {exc.args[0]}" if fix else "not a camera source"
        finding.fix = fix or str(exc)
        return
    except CameraNodeMissingError as exc:  # asked for by name and not there, as a serial port: no permission matter
        finding.accessible, finding.description, finding.fix = False, "does not exist", exc.fix
        return
    except CameraError as exc:  # a video file that cannot be read as one (its mode, a folder, not a video), a file
        finding.accessible = not isinstance(exc, CameraFileUnreadable)  # where a /dev/videoN node should be
        finding.description, finding.fix = str(exc.args[0]), exc.fix
        return
    try:
        ok, frame = capture.read() if capture.isOpened() else (False, None)
        if (not ok or frame is None) and camera.kind == "file":
            empty = CameraFileNotVideo(camera.text, NO_FRAME)
            finding.description, finding.fix = str(empty.args[0]), empty.fix
            return
        if not ok or frame is None:
            finding.description = "gives no frame (not a camera, a metadata node, or unreachable)"
            return
        finding.description = f"camera ({capture.getBackendName()})"
        finding.capabilities = ["camera"]
        finding.details = {
            "width": int(frame.shape[1]),
            "height": int(frame.shape[0]),
            "fps": round(float(capture.get(cv2.CAP_PROP_FPS)), 2),
        }
    finally:
        capture.release()


def camera_shown(source: str) -> str:
    """A camera source as a finding names it: a stream URL without its credentials, else as written.

    Why not ``CameraSource.parse(source).redacted``: parsing refuses a source it cannot use (a password with an
    unencoded /), and that refusal is a finding of its own, shown under this name, not a traceback."""
    from drivers.camera.source import redact_url

    return redact_url(source)


def cameras(
    extra: list[str] = (),  # type: ignore[assignment]
    max_index: int = 4,
    stream_options: Mapping[str, Any] = MappingProxyType({}),
    *,
    nodes_too: bool = True,
) -> list[Finding]:
    """V4L2 nodes (up to ``max_index``; none unless ``nodes_too``) and the camera sources given (stream URLs,
    files), each read once.

    ``stream_options``: what the agent gives the Camera of an http(s) stream besides its URL (the size bounds,
    the TLS floor), so the stream is read here as the daemon will read it."""
    from drivers.camera import source as camera_source

    findings = []
    names = camera_source.stable_names()  # udev's by-id (and by-path) names: what the config should say
    nodes = sorted(glob.glob(f"{camera_source.DEV_ROOT}/video*"))[:max_index] if nodes_too else []
    for node in nodes:
        accessible = _may_open(node)
        finding = Finding(
            "camera", node, accessible, fix="" if accessible else "add the agent's user to the video group"
        )
        if accessible:
            _probe_camera(finding, node)
        stable: dict[str, str] = {}
        for name in names.get(node, []):  # "by-id": ..., "by-path": ... (the first of each)
            stable.setdefault(name.split("/")[-2], name)
        finding.details = {**stable, **finding.details}  # shown first: what an installer copies, not the number
        findings.append(finding)
    for source in extra:
        # a stream URL written without its scheme (user:password@host, or user@host naming no file) is no path:
        # named masked, refused by parse
        scheme_less = camera_source.scheme_less_credentials(source) or camera_source.scheme_less_user(source)
        local = "://" not in source and not scheme_less
        # Not there: the driver's own check says so in _probe_camera (CameraNodeMissingError). There but closed
        # to this user: said here, since OpenCV would only say "no frame", as for a file of no video.
        closed = _closed_to_user("camera", source) if local else None
        if closed is None and local and os.path.exists(source) and not os.access(source, os.R_OK):
            closed = Finding(
                "camera",
                source,
                False,
                f"exists but {user_name()} may not read it",
                fix="add the agent's user to the video group" if source.startswith("/dev/") else
                f"make it readable by the agent's user (`ls -l {source}`; `chmod o+r`, or give it to that "
                "user's group)",
            )
        if closed is not None:
            findings.append(closed)
            continue
        finding = Finding("camera", camera_shown(source), True)
        _probe_camera(finding, source, stream_options)
        findings.append(finding)
    return findings


def fprint_readers() -> list[Finding]:
    """Readers libfprint can drive (USB, or its virtual drivers when their variables are set)."""
    from drivers.fprint import unavailable_reason

    reason = unavailable_reason()
    if reason:
        return [Finding("usb", "-", False, "libfprint missing: USB fingerprint readers cannot be used", fix=reason)]
    from drivers.fprint.errors import FprintError
    from drivers.fprint.reader import list_readers

    try:
        readers = list_readers()
    except FprintError as exc:
        return [Finding("usb", "-", False, str(exc.args[0]), fix=exc.fix)]
    findings = []
    for info in readers:
        capabilities = (["fingerprint-image"] if info.image else []) + (["match-on-sensor"] if info.on_sensor else [])
        findings.append(
            Finding(
                "usb",
                info.selector,
                True,
                f"{info.name} (libfprint driver {info.driver})",
                details={"scan_type": info.scan_type, "enroll_stages": info.enroll_stages, "dpi": info.dpi},
                capabilities=capabilities,
            )
        )
    return findings


def discover(
    extra_serial: list[str],
    usb_backend: object | None = None,
    extra_cameras: list[str] = (),  # type: ignore[assignment]
    stream_options: Mapping[str, Any] = MappingProxyType({}),
    *,
    named_only: bool = False,
) -> list[Finding]:
    """What this machine has for the agent. ``named_only``: of serial ports and cameras, only those named.

    Why ``named_only``: probing a serial port writes the module's handshake to it at each discovery baud, and
    another UART may carry a GPS, a modem or a console that should get no such bytes; each camera node is
    opened and read. USB readers are listed either way: listing one writes nothing to it.
    """
    return [
        *serial_ports(extra_serial, listed_too=not named_only),
        *usb_readers(usb_backend),
        *fprint_readers(),
        *cameras(list(extra_cameras), stream_options=stream_options, nodes_too=not named_only),
    ]
