"""Public constants of the ZFM / R30x / R50x / AS608 UART protocol.

Facts from the modules' user manuals (ZhianTec ZFM, Hangzhou Grow R30x/R50x,
Synochip AS608) and checked against independent client code. Every field is
big-endian. A packet is::

    EF 01 | address (4) | type (1) | length (2) = len(payload) + 2 | payload | checksum (2)

with checksum = 16-bit sum of type, the two length bytes and the payload. The
simulators may import this module (constants only); the codec and the driver
build on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

HEADER = b"\xef\x01"
DEFAULT_ADDRESS = 0xFFFFFFFF
DEFAULT_PASSWORD = 0x00000000
DEFAULT_BAUD = 57600
BAUD_UNIT = 9600  # the system parameter holds baud / 9600 (1..12)
POWER_UP_BYTE = 0x55  # R50x modules send it once they are ready after power-up
HEADER_LEN = 9  # EF 01, address, type, length
MAX_PAYLOAD = 256 + 2  # largest data packet (256 bytes) plus room for a command's extra bytes


class PacketType(IntEnum):
    COMMAND = 0x01
    DATA = 0x02
    ACK = 0x07
    END_DATA = 0x08


class Command(IntEnum):
    GEN_IMG = 0x01
    IMG2TZ = 0x02
    MATCH = 0x03
    SEARCH = 0x04
    REG_MODEL = 0x05
    STORE = 0x06
    LOAD_CHAR = 0x07
    UP_CHAR = 0x08
    DOWN_CHAR = 0x09
    UP_IMAGE = 0x0A
    DOWN_IMAGE = 0x0B
    DELETE_CHAR = 0x0C
    EMPTY = 0x0D
    SET_SYS_PARA = 0x0E
    READ_SYS_PARA = 0x0F
    SET_PWD = 0x12
    VERIFY_PWD = 0x13
    GET_RANDOM_CODE = 0x14
    HIGH_SPEED_SEARCH = 0x1B
    TEMPLATE_NUM = 0x1D
    READ_INDEX_TABLE = 0x1F
    AURA_LED = 0x35
    SOFT_RESET = 0x3D
    HANDSHAKE = 0x40


class SysParam(IntEnum):
    """Parameter numbers of SetSysPara."""

    BAUD = 4
    SECURITY = 5
    PACKET_SIZE = 6


# Data packet size code (system parameter) -> bytes per data packet.
PACKET_SIZES = {0: 32, 1: 64, 2: 128, 3: 256}

CONFIRMATION = {
    0x00: "ok",
    0x01: "error receiving the packet",
    0x02: "no finger on the sensor",
    0x03: "failed to take the finger's image",  # GenImg: a finger is there (wet, smudged, or a dirty window)
    0x06: "image too disorderly to make a template",
    0x07: "too few feature points to make a template",
    0x08: "fingers do not match",
    0x09: "no matching finger in the library",
    0x0A: "failed to combine the character files",
    0x0B: "page id beyond the library",
    0x0C: "error reading the template or invalid template",
    0x0D: "error uploading the template",
    0x0E: "module cannot receive the following data packets",
    0x0F: "error uploading the image",
    0x10: "failed to delete the template",
    0x11: "failed to clear the library",
    0x13: "wrong password",
    0x15: "no valid primary image in the buffer",
    0x18: "error writing flash",
    0x1A: "invalid register number",
    0x20: "wrong address",
    0x21: "password must be verified first",
}
OK = 0x00
NO_FINGER = 0x02
IMAGING_FAILED = 0x03  # GenImg's "fail to collect finger": routine with wet or smudged fingers
NOT_FOUND = 0x09
NO_MATCH = 0x08


class LedColor(IntEnum):
    """R50x aura LED colours (AuraLedConfig)."""

    RED = 1
    BLUE = 2
    PURPLE = 3
    GREEN = 4
    YELLOW = 5
    CYAN = 6
    WHITE = 7


class LedMode(IntEnum):
    BREATHING = 1
    FLASHING = 2
    ON = 3
    OFF = 4
    FADE_ON = 5
    FADE_OFF = 6


@dataclass(frozen=True)
class ModelProfile:
    """What differs between models of the family."""

    name: str
    image_width: int
    image_height: int
    capacity: int  # templates in flash
    char_buffers: int
    template_bytes: int  # UpChar size
    packet_size_code: int  # default data packet size (PACKET_SIZES key)
    system_id: int  # the "system identifier code" of ReadSysPara
    has_led: bool = False
    power_up_byte: bool = False

    @property
    def image_bytes(self) -> int:
        """UpImage size: two 4-bit pixels per byte."""
        return self.image_width * self.image_height // 2


PROFILES = {
    "r307": ModelProfile("r307", 256, 288, 1000, 2, 512, 2, 0x0000),
    "as608": ModelProfile("as608", 256, 288, 300, 2, 512, 2, 0x0009),
    "r503": ModelProfile("r503", 192, 192, 200, 6, 1536, 2, 0x0503, has_led=True, power_up_byte=True),
}


def profile_for(system_id: int, capacity: int) -> ModelProfile:
    """The model profile a module's system parameters point to (R307 layout by default)."""
    for profile in PROFILES.values():
        if profile.system_id == system_id and profile.capacity == capacity:
            return profile
    for profile in PROFILES.values():
        if profile.capacity == capacity:
            return profile
    return PROFILES["r307"]
