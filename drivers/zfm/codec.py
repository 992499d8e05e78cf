"""Sans-I/O codec of the ZFM packet protocol: bytes in, events out.

Like h11 and h2, the codec owns no file descriptor and no clock. The driver
feeds it whatever the serial port returned (one byte or a thousand, split
anywhere) and acts on the events; tests feed it every split of every stream.

Events:

* :class:`Packet` — a complete packet whose checksum verified;
* :class:`CorruptPacket` — a packet-shaped run whose checksum or length is
  wrong. The decoder then drops only its two header bytes and resynchronises
  on the next ``EF 01``: a damaged length field claims bytes that belong to
  the packets after it, and dropping the whole claimed length would swallow
  them (the bytes of the corrupt packet itself come out as :class:`Garbage`);
* :class:`Garbage` — bytes skipped before a header (line noise, a power-up
  ``55``, a half packet from before the port was opened).

Commands are built by :func:`command`; replies decode to typed results by the
``parse_*`` functions, which raise :class:`ZfmProtocolError` for a reply that is
not what the command gets.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from drivers.zfm.constants import (
    BAUD_UNIT,
    CONFIRMATION,
    DEFAULT_ADDRESS,
    HEADER,
    HEADER_LEN,
    MAX_PAYLOAD,
    OK,
    PACKET_SIZES,
    Command,
    PacketType,
)


class ZfmProtocolError(Exception):
    """A reply that is not the protocol (the codec's only exception type)."""


@dataclass(frozen=True)
class Packet:
    address: int
    type: int
    payload: bytes


@dataclass(frozen=True)
class CorruptPacket:
    reason: str
    skipped: int


@dataclass(frozen=True)
class Garbage:
    data: bytes


Event = Packet | CorruptPacket | Garbage


def checksum(packet_type: int, payload: bytes) -> int:
    length = len(payload) + 2
    return (packet_type + (length >> 8) + (length & 0xFF) + sum(payload)) & 0xFFFF


def encode_packet(packet_type: int, payload: bytes, address: int = DEFAULT_ADDRESS) -> bytes:
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    return (
        HEADER
        + struct.pack(">IBH", address, packet_type, len(payload) + 2)
        + payload
        + struct.pack(">H", checksum(packet_type, payload))
    )


def command(code: Command, *args: int | bytes, address: int = DEFAULT_ADDRESS) -> bytes:
    """A command packet; int args are single bytes, bytes args are copied as they are."""
    body = bytearray([code])
    for arg in args:
        body += arg if isinstance(arg, bytes) else bytes([arg])
    return encode_packet(PacketType.COMMAND, bytes(body), address)


def u16(value: int) -> bytes:
    return struct.pack(">H", value)


def u32(value: int) -> bytes:
    return struct.pack(">I", value)


def data_packets(data: bytes, packet_size: int, address: int = DEFAULT_ADDRESS) -> bytes:
    """A data stream: DATA packets of ``packet_size`` bytes, the last one END_DATA."""
    chunks = [data[i : i + packet_size] for i in range(0, len(data), packet_size)] or [b""]
    out = bytearray()
    for index, chunk in enumerate(chunks):
        kind = PacketType.END_DATA if index == len(chunks) - 1 else PacketType.DATA
        out += encode_packet(kind, chunk, address)
    return bytes(out)


class Decoder:
    """Incremental packet decoder. Feed bytes in any split; collect events."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Event]:
        self._buffer += data
        events: list[Event] = []
        while True:
            start = self._buffer.find(HEADER)
            if start < 0:
                # Keep a trailing EF: it may be the first half of a header.
                keep = 1 if self._buffer.endswith(HEADER[:1]) else 0
                if len(self._buffer) > keep:
                    events.append(Garbage(bytes(self._buffer[: len(self._buffer) - keep])))
                    del self._buffer[: len(self._buffer) - keep]
                return events
            if start > 0:
                events.append(Garbage(bytes(self._buffer[:start])))
                del self._buffer[:start]
            if len(self._buffer) < HEADER_LEN:
                return events
            address, packet_type, length = struct.unpack(">IBH", self._buffer[2:HEADER_LEN])
            if packet_type not in PacketType.__members__.values() or not 2 <= length <= MAX_PAYLOAD + 2:
                events.append(CorruptPacket(f"impossible header (type {packet_type:#04x}, length {length})", 2))
                del self._buffer[:2]  # resynchronise on the next EF 01
                continue
            total = HEADER_LEN + length
            if len(self._buffer) < total:
                return events
            payload = bytes(self._buffer[HEADER_LEN : total - 2])
            (received,) = struct.unpack(">H", self._buffer[total - 2 : total])
            if received != checksum(packet_type, payload):
                # The length may be the damaged field: what it claims may hold the next packets.
                events.append(CorruptPacket("checksum mismatch", 2))
                del self._buffer[:2]  # resynchronise on the next EF 01
                continue
            events.append(Packet(address, packet_type, payload))
            del self._buffer[:total]


# ---------------------------------------------------------------- replies


@dataclass(frozen=True)
class Ack:
    code: int
    data: bytes = b""

    @property
    def ok(self) -> bool:
        return self.code == OK

    @property
    def message(self) -> str:
        return CONFIRMATION.get(self.code, f"unknown confirmation code {self.code:#04x}")


@dataclass(frozen=True)
class SystemParameters:
    status: int
    system_id: int
    library_size: int
    security_level: int
    address: int
    packet_size: int  # bytes per data packet
    baud: int


@dataclass(frozen=True)
class SearchResult:
    page: int
    score: int


def parse_ack(packet: Packet, data_len: int = 0) -> Ack:
    """An acknowledgement with ``data_len`` bytes after the confirmation code."""
    if packet.type != PacketType.ACK:
        raise ZfmProtocolError(f"expected an acknowledgement, got packet type {packet.type:#04x}")
    if not packet.payload:
        raise ZfmProtocolError("empty acknowledgement")
    ack = Ack(packet.payload[0], packet.payload[1:])
    if ack.ok and len(ack.data) < data_len:
        raise ZfmProtocolError(f"acknowledgement too short: {len(ack.data)} data bytes, expected {data_len}")
    return ack


def _data(ack: Ack, size: int, what: str) -> bytes:
    """The first ``size`` data bytes of an acknowledgement, or the codec's error (never struct.error)."""
    if len(ack.data) < size:
        raise ZfmProtocolError(f"{what}: acknowledgement of {len(ack.data)} data bytes, expected {size}")
    return ack.data[:size]


def parse_system_parameters(ack: Ack) -> SystemParameters:
    status, system_id, library, security, address, size_code, baud_n = struct.unpack(
        ">HHHHIHH", _data(ack, 16, "system parameters")
    )
    if size_code not in PACKET_SIZES:
        raise ZfmProtocolError(f"unknown data packet size code {size_code}")
    return SystemParameters(status, system_id, library, security, address, PACKET_SIZES[size_code], baud_n * BAUD_UNIT)


def parse_search(ack: Ack) -> SearchResult:
    page, score = struct.unpack(">HH", _data(ack, 4, "search result"))
    return SearchResult(page, score)


def parse_u16(ack: Ack) -> int:
    return int(struct.unpack(">H", _data(ack, 2, "16-bit value"))[0])


def parse_u32(ack: Ack) -> int:
    return int(struct.unpack(">I", _data(ack, 4, "32-bit value"))[0])


def parse_index_table(ack: Ack, page: int) -> list[int]:
    """Template slots in use from one 32-byte index page (LSB first in each byte).

    A short page is an error, not a shorter list: slots past its end would read as free.
    """
    bits = np.unpackbits(np.frombuffer(_data(ack, 32, "index table page"), np.uint8), bitorder="little")
    return [int(i) + page * 256 for i in np.flatnonzero(bits)]


class StreamOverflowError(ZfmProtocolError):
    """A data stream longer than the reply it answers can be (still the codec's error type)."""

    def __init__(self, received: int, limit: int) -> None:
        super().__init__(f"data stream of more than {limit} bytes (at least {received} received) without its end")
        self.received = received
        self.limit = limit


class DataStream:
    """Collects DATA packets until END_DATA; the payloads joined.

    ``limit``: the most bytes the stream may hold (an image's or a template's
    size). Past it the stream is refused at once: a line repeating DATA packets
    and never sending END_DATA would otherwise grow the buffer for as long as
    it lasts, and the size alone says the reply is not the one asked for.
    """

    def __init__(self, limit: int | None = None) -> None:
        self._parts: list[bytes] = []
        self._size = 0
        self.limit = limit
        self.done = False

    def add(self, packet: Packet) -> None:
        if packet.type not in (PacketType.DATA, PacketType.END_DATA):
            raise ZfmProtocolError(f"expected a data packet, got type {packet.type:#04x}")
        if self.done:
            raise ZfmProtocolError("data after the end-of-data packet")
        self._size += len(packet.payload)
        if self.limit is not None and self._size > self.limit:
            raise StreamOverflowError(self._size, self.limit)
        self._parts.append(packet.payload)
        self.done = packet.type == PacketType.END_DATA

    @property
    def size(self) -> int:
        return self._size

    @property
    def data(self) -> bytes:
        return b"".join(self._parts)


def unpack_image(data: bytes, width: int, height: int) -> np.ndarray:
    """UpImage bytes (two 4-bit pixels per byte, high nibble first) to a uint8 image."""
    expected = width * height // 2
    if len(data) != expected:
        raise ZfmProtocolError(f"image of {len(data)} bytes, expected {expected} for {width}x{height}")
    packed = np.frombuffer(data, np.uint8)
    pixels = np.empty(packed.size * 2, np.uint8)
    pixels[0::2] = packed & 0xF0
    pixels[1::2] = (packed & 0x0F) << 4
    pixels |= pixels >> 4  # 0xF0 -> 0xFF: use the whole 8-bit range
    return pixels.reshape(height, width)


def pack_image(image: np.ndarray) -> bytes:
    """A uint8 image to DownImage bytes (the high nibble of each pixel)."""
    flat = image.astype(np.uint8).reshape(-1)
    return ((flat[0::2] & 0xF0) | (flat[1::2] >> 4)).tobytes()
