"""The ZFM codec on its own: any split, any garbage, typed results."""

from __future__ import annotations

import struct

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.zfm.codec import (
    CorruptPacket,
    DataStream,
    Decoder,
    Garbage,
    Packet,
    ZfmProtocolError,
    command,
    data_packets,
    encode_packet,
    pack_image,
    parse_ack,
    parse_index_table,
    parse_system_parameters,
    unpack_image,
)
from drivers.zfm.constants import Command, PacketType

packets = st.builds(
    lambda t, p, a: encode_packet(t, p, a),
    st.sampled_from(list(PacketType)),
    st.binary(max_size=64),
    st.integers(0, 0xFFFFFFFF),
)


def decode_all(chunks: list[bytes]) -> list[Packet]:
    decoder = Decoder()
    return [e for chunk in chunks for e in decoder.feed(chunk) if isinstance(e, Packet)]


def test_a_known_command_has_the_manual_bytes() -> None:
    # GenImg to the default address: EF01 FFFFFFFF 01 0003 01 0005 (sum 01+00+03+01).
    assert command(Command.GEN_IMG) == bytes.fromhex("EF01FFFFFFFF010003010005")
    # VerifyPwd 0: checksum 01 + 00 07 + 13 + 00 00 00 00 = 0x1B
    assert command(Command.VERIFY_PWD, b"\0\0\0\0") == bytes.fromhex("EF01FFFFFFFF0100071300000000001B")


@settings(max_examples=200, deadline=None)
@given(st.lists(packets, min_size=1, max_size=8), st.data())
def test_any_split_decodes_the_same(stream: list[bytes], data) -> None:
    joined = b"".join(stream)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(joined)), max_size=12)))
    pieces = [joined[a:b] for a, b in zip([0, *cuts], [*cuts, len(joined)], strict=True)]
    whole = decode_all([joined])
    assert decode_all(pieces) == whole == decode_all([bytes([b]) for b in joined])
    assert [encode_packet(p.type, p.payload, p.address) for p in whole] == stream


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_random_garbage_only_gives_events(noise: bytes) -> None:
    decoder = Decoder()
    for event in decoder.feed(noise):
        assert isinstance(event, Packet | CorruptPacket | Garbage)
    assert decoder.buffered <= len(noise)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=50), packets)
def test_resynchronises_on_the_next_header_after_garbage(noise: bytes, packet: bytes) -> None:
    decoder = Decoder()
    # A corrupt packet first (last byte of its checksum flipped), then noise, then a good one.
    bad = bytearray(command(Command.GEN_IMG))
    bad[-1] ^= 0xFF
    events = decoder.feed(bytes(bad) + noise.replace(b"\xef\x01", b"\xef\x02") + packet)
    good = [e for e in events if isinstance(e, Packet)]
    assert good and encode_packet(good[-1].type, good[-1].payload, good[-1].address) == packet
    assert any(isinstance(e, CorruptPacket) for e in events)


def test_power_up_byte_is_garbage_before_the_first_packet() -> None:
    events = Decoder().feed(b"\x55" + encode_packet(PacketType.ACK, b"\x00"))
    assert events[0] == Garbage(b"\x55") and isinstance(events[1], Packet)


def test_data_streams_reassemble() -> None:
    blob = bytes(range(256)) * 3
    stream = DataStream()
    for event in Decoder().feed(data_packets(blob, 128)):
        stream.add(event)
    assert stream.done and stream.data == blob


def test_image_nibbles_round_trip() -> None:
    image = (np.arange(256 * 288) % 256).astype(np.uint8).reshape(288, 256)
    data = pack_image(image)
    assert len(data) == 36_864
    back = unpack_image(data, 256, 288)
    assert back.shape == (288, 256)
    assert np.array_equal(back >> 4, image >> 4)


def test_replies_parse_to_typed_results() -> None:
    params = struct.pack(">HHHHIHH", 0, 9, 300, 3, 0xFFFFFFFF, 2, 6)
    ack = parse_ack(Packet(0xFFFFFFFF, PacketType.ACK, b"\x00" + params), 16)
    sys = parse_system_parameters(ack)
    assert (sys.library_size, sys.packet_size, sys.baud) == (300, 128, 57600)
    table = parse_ack(Packet(0xFFFFFFFF, PacketType.ACK, b"\x00" + b"\x05" + b"\x00" * 30 + b"\x80"), 32)
    assert parse_index_table(table, 1) == [256, 258, 511]


def test_wrong_replies_raise_the_codec_error() -> None:
    for packet, length in [
        (Packet(0, PacketType.DATA, b"\x00"), 0),
        (Packet(0, PacketType.ACK, b""), 0),
        (Packet(0, PacketType.ACK, b"\x00\x01"), 16),
    ]:
        try:
            parse_ack(packet, length)
        except ZfmProtocolError:
            continue
        raise AssertionError(f"{packet} was accepted")
