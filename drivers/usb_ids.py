"""USB fingerprint readers the agent knows by vendor (and product) id.

From the device tables of libfprint and the vendors' own documentation. A vendor
listed with ``products=None`` makes only fingerprint devices; for vendors that
also make other hardware (touchpads, touchscreens) only the listed products count.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class KnownReader:
    vendor_id: int
    name: str
    products: frozenset[int] | None = None  # None: every product of this vendor

    def matches(self, vendor_id: int, product_id: int) -> bool:
        return vendor_id == self.vendor_id and (self.products is None or product_id in self.products)


KNOWN_READERS = (
    KnownReader(0x05BA, "DigitalPersona U.are.U"),
    KnownReader(0x1491, "Futronic"),
    KnownReader(0x1162, "SecuGen"),
    KnownReader(0x16D1, "Suprema BioMini"),
    KnownReader(0x1B55, "ZKTeco"),
    KnownReader(0x147E, "UPEK / AuthenTec", frozenset({0x1000, 0x1001, 0x2016, 0x2020})),
    KnownReader(0x138A, "Validity / Synaptics", frozenset({0x0011, 0x0017, 0x0018, 0x0050, 0x0090, 0x0097})),
    KnownReader(0x06CB, "Synaptics", frozenset({0x00BD, 0x00DF, 0x00F9, 0x00FC, 0x00C2, 0x0100})),
    KnownReader(0x27C6, "Goodix", frozenset({0x5110, 0x5395, 0x538D, 0x550A, 0x5584, 0x609C, 0x639C})),
    KnownReader(0x04F3, "Elan", frozenset({0x0C26, 0x0C4B, 0x0C4C, 0x0C4D, 0x0C58, 0x0C7E})),
)

# USB-serial adapters that modules of the ZFM family sit behind.
USB_SERIAL_ADAPTERS = {
    (0x0403, 0x6001): "FTDI FT232R",
    (0x0403, 0x6015): "FTDI FT231X",
    (0x10C4, 0xEA60): "Silicon Labs CP210x",
    (0x1A86, 0x7523): "WCH CH340",
    (0x067B, 0x2303): "Prolific PL2303",
}


def identify(vendor_id: int, product_id: int) -> str | None:
    for reader in KNOWN_READERS:
        if reader.matches(vendor_id, product_id):
            return reader.name
    return None
