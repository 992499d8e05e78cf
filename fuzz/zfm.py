"""Fuzz the sans-I/O ZFM codec (drivers.zfm.codec): arbitrary bytes in arbitrary splits, then every reply parser.

Input: 4 bytes of split lengths, then the serial stream. Typed error: ZfmProtocolError.
Also checked: the events do not depend on the split (adjacent Garbage merged: where a
chunk ends may cut skipped bytes in two, but never a packet, a corruption or their order).
"""

from __future__ import annotations

import contextlib
import sys

from drivers.zfm.codec import (
    Ack,
    CorruptPacket,
    DataStream,
    Decoder,
    Garbage,
    Packet,
    ZfmProtocolError,
    parse_ack,
    parse_index_table,
    parse_search,
    parse_system_parameters,
    parse_u16,
    parse_u32,
    unpack_image,
)
from fuzz.common import SplitDependence, splits


def _normalised(events: list) -> list:
    out: list = []
    for event in events:
        if isinstance(event, Garbage) and out and isinstance(out[-1], Garbage):
            out[-1] = Garbage(out[-1].data + event.data)
        else:
            out.append(event)
    return out


def _parse(packet: Packet, stream: DataStream) -> None:
    for parse in (parse_system_parameters, parse_search, parse_u16, parse_u32):
        with contextlib.suppress(ZfmProtocolError):
            parse(parse_ack(packet, 0))
    with contextlib.suppress(ZfmProtocolError):
        parse_index_table(Ack(packet.payload[0] if packet.payload else 0, packet.payload[1:]), packet.address % 4)
    with contextlib.suppress(ZfmProtocolError):
        stream.add(packet)


def TestOneInput(data: bytes) -> None:
    sizes, stream_bytes = data[:4], data[4:]
    whole = Decoder()
    events_whole = whole.feed(stream_bytes)
    split = Decoder()
    events_split: list = []
    for piece in splits(stream_bytes, sizes):
        events_split += split.feed(piece)
    if _normalised(events_whole) != _normalised(events_split) or whole.buffered != split.buffered:
        raise SplitDependence("the ZFM decoder gave other events for the same bytes in other pieces")
    stream = DataStream(limit=4096)
    for event in events_whole:
        if isinstance(event, Packet):
            _parse(event, stream)
        elif not isinstance(event, CorruptPacket | Garbage):
            raise AssertionError(f"the ZFM decoder gave an event of type {type(event).__name__}")
    width = (sizes[0] if sizes else 0) % 32 * 2
    with contextlib.suppress(ZfmProtocolError):
        unpack_image(stream.data, width, (len(stream.data) * 2 // width) if width else 0)


if __name__ == "__main__":
    from fuzz.common import main

    main("zfm", TestOneInput, sys.argv)
