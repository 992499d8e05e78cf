"""What readers and cameras this machine has, and whether this user may open them.

Bounded everywhere: a serial port gets one short handshake, cameras are probed
only where a /dev/video node exists, USB is enumerated once. Each finding says
what would fix access when it is denied.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field

import structlog

from drivers.usb_ids import USB_SERIAL_ADAPTERS, identify
from drivers.zfm.driver import ZfmModule
from drivers.zfm.errors import ModuleError

log = structlog.get_logger()

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


def _may_open(path: str) -> bool:
    return os.access(path, os.R_OK | os.W_OK)


def serial_ports(extra: list[str], reply_timeout_s: float = 0.3) -> list[Finding]:
    from serial.tools import list_ports

    ports = {p.device: p for p in list_ports.comports()}
    findings = []
    for path in sorted(set(ports) | set(extra)):
        info = ports.get(path)
        if not os.path.exists(path):  # a port asked for by name that is not there: not a permission matter
            findings.append(
                Finding(
                    "serial",
                    path,
                    False,
                    "does not exist",
                    fix="check the name (`ls /dev/ttyUSB* /dev/ttyACM* /dev/serial*` lists the ports there are); "
                    "a USB adapter that is unplugged has no port: plug it in",
                )
            )
            continue
        adapter = USB_SERIAL_ADAPTERS.get((info.vid, info.pid)) if info and info.vid else None
        finding = Finding("serial", path, _may_open(path), adapter or (info.description if info else ""))
        if not finding.accessible:
            finding.fix = ACCESS_FIX
            findings.append(finding)
            continue
        module = ZfmModule(path, reply_timeout_s=reply_timeout_s)
        try:
            opened = module.open()
            finding.description = f"ZFM-family module, model profile {opened.profile.name}"
            finding.details = {
                "capacity": opened.params.library_size,
                "packet_size": opened.params.packet_size,
                "baud": opened.params.baud,
                "security_level": opened.params.security_level,
            }
        except ModuleError as exc:
            adapter_name = finding.description if finding.description not in ("", "n/a") else ""
            finding.description = ", ".join(filter(None, [adapter_name, "no fingerprint module answered"]))
            finding.details = {"handshake": str(exc.args[0])}
            finding.fix = exc.fix
        finally:
            module.close()
        findings.append(finding)
    return findings


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


def cameras(max_index: int = 4) -> list[Finding]:
    findings = []
    for node in sorted(glob.glob("/dev/video*"))[:max_index]:
        accessible = _may_open(node)
        finding = Finding(
            "camera", node, accessible, fix="" if accessible else "add the agent's user to the video group"
        )
        if accessible:
            import cv2

            capture = cv2.VideoCapture(node, cv2.CAP_V4L2)
            try:
                finding.description = "opens" if capture.isOpened() else "does not open (metadata node?)"
                if capture.isOpened():
                    finding.details = {
                        "width": int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)),
                        "height": int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)),
                    }
            finally:
                capture.release()
        findings.append(finding)
    return findings


def discover(extra_serial: list[str], usb_backend: object | None = None) -> list[Finding]:
    return [*serial_ports(extra_serial), *usb_readers(usb_backend), *cameras()]
