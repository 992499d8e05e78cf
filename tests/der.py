"""DER by hand, for the tests and fuzz/ that make X.509 and PKCS#10 no library would: one copy of each builder.

Definite lengths only, as DER has. Nothing here checks what it builds: making what a
parser must refuse is the point.
"""

from __future__ import annotations


def head(length: int) -> bytes:
    """A DER length: one byte under 128, else 0x80 | the count of big-endian bytes that follow."""
    if length < 0x80:
        return bytes([length])
    raw = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def tlv(tag: int, body: bytes) -> bytes:
    """One element: tag, length, body."""
    return bytes([tag]) + head(len(body)) + body


def seq(*parts: bytes) -> bytes:
    return tlv(0x30, b"".join(parts))


def integer(value: int) -> bytes:
    """A non-negative INTEGER (a leading zero byte where the top bit would read as a sign)."""
    return tlv(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def oid(dotted: str) -> bytes:
    """An OBJECT IDENTIFIER: the first two arcs in one byte, the others base 128."""
    first, second, *rest = (int(part) for part in dotted.split("."))
    out = bytes([first * 40 + second])
    for number in rest:
        chunk = [number & 0x7F]
        number >>= 7
        while number:
            chunk.append(0x80 | (number & 0x7F))
            number >>= 7
        out += bytes(reversed(chunk))
    return tlv(0x06, out)


def bits(body: bytes) -> bytes:
    """A BIT STRING of whole bytes (no unused bits)."""
    return tlv(0x03, b"\x00" + body)


def element(data: bytes, pos: int) -> tuple[int, int]:
    """(start of the contents, end) of the element at ``pos``."""
    length, pos = data[pos + 1], pos + 2
    if length & 0x80:
        count = length & 0x7F
        length, pos = int.from_bytes(data[pos : pos + count], "big"), pos + count
    return pos, pos + length


def children(der: bytes) -> list[bytes]:
    """The elements (each whole, tag and length included) inside one SEQUENCE or SET."""
    at, end = element(der, 0)
    out = []
    while at < end:
        _, child_end = element(der, at)
        out.append(der[at:child_end])
        at = child_end
    return out
