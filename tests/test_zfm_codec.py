"""The ZFM codec on its own: any split, any garbage, typed results."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.zfm.codec import (
    Ack,
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
    parse_search,
    parse_system_parameters,
    parse_u16,
    parse_u32,
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


@pytest.mark.parametrize(
    ("parse", "size"),
    [(parse_system_parameters, 16), (parse_search, 4), (parse_u16, 2), (parse_u32, 4)],
)
def test_a_short_acknowledgement_is_the_codec_error_not_a_struct_error(parse, size: int) -> None:
    for short in range(size):
        with pytest.raises(ZfmProtocolError, match=f"expected {size}"):
            parse(Ack(0, bytes(short)))


def test_a_short_index_page_is_an_error_not_a_shorter_list() -> None:
    with pytest.raises(ZfmProtocolError, match="expected 32"):
        parse_index_table(Ack(0, b"\xff" * 31), 0)


def test_a_damaged_length_does_not_swallow_the_next_packet() -> None:
    """A length byte flipped to a larger (possible) value claims the good packet behind it: once the
    claimed bytes are there, the checksum fails and the decoder resynchronises on the next EF 01."""
    good = encode_packet(PacketType.ACK, b"\x00\x00\x05")
    damaged = bytearray(good)
    damaged[8] = 0x40  # length 64 instead of 5
    for tail in (bytes(60), b"\x55" * 60):  # whatever follows (the next reply, noise) completes the claim
        events = Decoder().feed(bytes(damaged) + good + tail)
        assert isinstance(events[0], CorruptPacket)
        assert [e for e in events if isinstance(e, Packet)] == [Packet(0xFFFFFFFF, PacketType.ACK, b"\x00\x00\x05")]


@settings(max_examples=200, deadline=None)
@given(packets, st.integers(0, 8), st.integers(0, 0xFF), st.lists(packets, min_size=1, max_size=3))
def test_any_corrupted_packet_leaves_the_ones_after_it_intact(bad: bytes, index: int, flip: int, after) -> None:
    """One byte of a packet damaged (header, length, payload or checksum): every later packet still decodes."""
    damaged = bytearray(bad)
    damaged[2 + index % (len(bad) - 2)] ^= flip or 1
    tail = b"".join(after)
    decoded = decode_all([bytes(damaged) + tail + bytes(MAX_CLAIM)])
    wanted = [Packet(p.address, p.type, p.payload) for p in decode_all([tail])]
    assert decoded[-len(wanted):] == wanted


MAX_CLAIM = 0xFFFF  # the largest length a header can claim: enough bytes after the tail to settle any claim


def test_a_stream_longer_than_its_limit_is_refused() -> None:
    stream = DataStream(limit=256)
    decoder = Decoder()
    for event in decoder.feed(encode_packet(PacketType.DATA, bytes(128)) * 2):
        stream.add(event)
    with pytest.raises(ZfmProtocolError, match="more than 256 bytes"):
        stream.add(Packet(0, PacketType.DATA, bytes(1)))
    exact = DataStream(limit=256)
    for event in Decoder().feed(data_packets(bytes(256), 128)):
        exact.add(event)
    assert exact.done and exact.size == 256
