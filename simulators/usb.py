"""USB devices without hardware: a pyusb backend object to hand to ``usb.core.find``.

pyusb lets the caller pass the backend; this one enumerates the devices a test
declares and answers their device descriptors, which is what discovery reads.
Transfers are not simulated (no USB reader protocol is driven yet).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

from usb.backend import IBackend


@dataclass(frozen=True)
class FakeUsbDevice:
    vendor_id: int
    product_id: int
    bus: int = 1
    address: int = 2
    device_class: int = 0


class SimulatedUsbBackend(IBackend):
    def __init__(self, devices: list[FakeUsbDevice]) -> None:
        self.devices = devices

    def enumerate_devices(self):
        return iter(self.devices)

    def get_device_descriptor(self, dev: FakeUsbDevice) -> SimpleNamespace:
        return SimpleNamespace(
            bLength=18,
            bDescriptorType=1,
            bcdUSB=0x0200,
            bDeviceClass=dev.device_class,
            bDeviceSubClass=0,
            bDeviceProtocol=0,
            bMaxPacketSize0=64,
            idVendor=dev.vendor_id,
            idProduct=dev.product_id,
            bcdDevice=0x0100,
            iManufacturer=0,
            iProduct=0,
            iSerialNumber=0,
            bNumConfigurations=1,
            address=dev.address,
            bus=dev.bus,
            port_number=1,
            port_numbers=(1,),
            speed=2,
        )
