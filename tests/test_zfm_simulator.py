"""The serial simulator's fidelity to clients that write the way real hosts do.

Some PyPI clients write each byte of a packet with its own ``write()`` call, so the
simulator sees a packet in many reads, one of which may end on the first header
byte ``EF``. A real module keeps that byte and waits for the rest; so must the
simulator. The client here is written from the datasheet, sharing no code with
the simulator or our driver.
"""

from __future__ import annotations

import os
import struct
import time

import serial


def _command(code: int, args: bytes = b"") -> bytes:
    payload = bytes([code]) + args
    body = struct.pack(">BH", 0x01, len(payload) + 2) + payload
    return b"\xef\x01\xff\xff\xff\xff" + body + struct.pack(">H", sum(body) & 0xFFFF)


def _read_ack(port: serial.Serial) -> tuple[int, bytes]:
    head = port.read(9)
    assert len(head) == 9, f"no reply (got {head!r})"
    assert head[:2] == b"\xef\x01" and head[6] == 0x07
    (length,) = struct.unpack(">H", head[7:9])
    rest = port.read(length)
    assert len(rest) == length
    body = head[6:] + rest[:-2]
    assert struct.unpack(">H", rest[-2:])[0] == sum(body) & 0xFFFF
    return rest[0], rest[1:-2]


def test_byte_per_write_client_gets_every_reply(zfm_sim) -> None:
    """500 commands, every byte its own write(): not one reply is lost."""
    commands = [
        (0x40, b""),  # Handshake
        (0x1D, b""),  # TemplateNum
        (0x0F, b""),  # ReadSysPara
        (0x13, b"\x00\x00\x00\x00"),  # VerifyPwd
    ]
    with serial.Serial(zfm_sim.port, 57600, timeout=2) as port:
        for n in range(500):
            code, args = commands[n % len(commands)]
            for byte in _command(code, args):
                port.write(bytes([byte]))
                port.flush()
            confirmation, data = _read_ack(port)
            assert confirmation == 0x00, f"command {n}: confirmation {confirmation:#x}"
            if code == 0x0F:
                assert struct.unpack(">H", data[4:6])[0] == zfm_sim.profile.capacity
    assert len(zfm_sim.commands) == 500


def test_lone_header_byte_after_noise_is_kept(zfm_sim) -> None:
    """Noise, then a packet whose first byte arrives alone, as on a line that just came up."""
    packet = _command(0x40)
    with serial.Serial(zfm_sim.port, 57600, timeout=2) as port:
        port.write(b"\x00\x13\x37" + packet[:1])
        port.flush()
        time.sleep(0.1)  # the simulator reads the noise and the lone EF on their own
        port.write(packet[1:])
        assert _read_ack(port)[0] == 0x00


def test_noise_that_looks_like_a_header_does_not_swallow_the_next_packets(zfm_sim) -> None:
    """EF 01 in line noise with a length no module takes (61,185 bytes): the packets after it still answer.

    Waiting for that body would eat every real command for the next several seconds,
    so the module would look dead to a client scanning for its baud rate.
    """
    noise = b"\xef\x01\xff\xff\xff\xff\x01\xef\x01"  # kind 01, then a length of 0xEF01
    with serial.Serial(zfm_sim.port, 57600, timeout=2) as port:
        port.write(noise)
        port.flush()
        time.sleep(0.1)
        port.write(_command(0x40))
        assert _read_ack(port)[0] == 0x00
    assert zfm_sim.commands == [0x40]


def test_a_half_packet_does_not_survive_an_unplug(zfm_sim) -> None:
    """The first half of a command, then the cable is pulled: after the replug the module starts afresh.

    Left in the simulator's buffer, the stale half would join the next client's first
    command into one corrupt packet, so the reopened port's first command would fail.
    """
    packet = _command(0x40)
    with serial.Serial(zfm_sim.port, 57600, timeout=2) as port:
        port.write(packet[:7])  # the header and the kind, not the length
        port.flush()
        time.sleep(0.1)
        zfm_sim.unplug()
        zfm_sim.replug()
    with serial.Serial(zfm_sim.port, 57600, timeout=2) as port:
        port.write(packet)
        assert _read_ack(port)[0] == 0x00
    assert zfm_sim.commands == [0x40]


def test_an_unplugged_ptys_numbers_stay_taken_until_the_serving_thread_lets_them_go(zfm_sim) -> None:
    """Unplug closes the pty in the serving thread, not under it: the thread may be about to read the
    master, and a number freed here could go to the next file opened (the replugged pty's slave, a
    socket), on which that read would then wait for good. While the thread cannot take its lock, a file
    opened after the unplug gets neither number; once it can, it closes them and the module replugs."""
    old = {zfm_sim._master, zfm_sim._slave}
    zfm_sim.unplug()
    with zfm_sim._lock:  # the serving thread's next turn waits here before closing them
        opened = os.open(os.devnull, os.O_RDONLY)
        try:
            assert opened not in old
        finally:
            os.close(opened)
    deadline = time.monotonic() + 2
    while zfm_sim._retired and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not zfm_sim._retired
    zfm_sim.replug()
    with serial.Serial(zfm_sim.port, 57600, timeout=2) as port:
        port.write(_command(0x40))
        assert _read_ack(port)[0] == 0x00


def test_state_tells_whether_bytes_reached_the_module_since_the_replug(zfm_sim) -> None:
    """A test that times out on a replugged module says which side failed: the line (no bytes),
    the framing (bytes waiting, no packet) or the link (pointing at another pty)."""
    packet = _command(0x40)
    with serial.Serial(zfm_sim.port, 57600, timeout=2) as port:
        port.write(packet[:7])
        port.flush()
        time.sleep(0.2)
        assert "bytes_since_plug=7 pending=7 packets_since_plug=0" in zfm_sim.state()
        assert "link_to_this_pty=True" in zfm_sim.state()
        zfm_sim.unplug()
        assert "link_to_this_pty=unplugged" in zfm_sim.state()
        zfm_sim.replug()
    assert "bytes_since_plug=0 pending=0 packets_since_plug=0" in zfm_sim.state()
    with serial.Serial(zfm_sim.port, 57600, timeout=2) as port:
        port.write(packet)
        assert _read_ack(port)[0] == 0x00
    assert f"bytes_since_plug={len(packet)} pending=0 packets_since_plug=1" in zfm_sim.state()


def test_a_crashing_handler_is_recorded_and_the_module_keeps_serving(tmp_path) -> None:
    """A bug in one command's handler answers that command with an error and is kept for the test
    to fail on (the zfm_sim fixture does); it does not silently kill the serving thread."""
    from simulators.zfm import SimulatedModule

    with SimulatedModule("r307", link=tmp_path / "tty") as sim:

        def broken(args: bytes) -> None:
            raise ZeroDivisionError("a bug")

        sim._gen_img = broken
        with serial.Serial(sim.port, 57600, timeout=2) as port:
            port.write(_command(0x01))  # GenImg
            assert _read_ack(port)[0] == 0x01
            port.write(_command(0x40))  # Handshake: still answered
            assert _read_ack(port)[0] == 0x00
        assert sim.errors == ["ZeroDivisionError: a bug"]
        assert "errors=['ZeroDivisionError: a bug']" in sim.state()


def _data(kind: int, payload: bytes) -> bytes:
    """A DATA (0x02) or END_DATA (0x08) packet, as a host writes a DownChar stream."""
    body = struct.pack(">BH", kind, len(payload) + 2) + payload
    return b"\xef\x01\xff\xff\xff\xff" + body + struct.pack(">H", sum(body) & 0xFFFF)


def _stream(data: bytes, size: int = 128) -> bytes:
    parts = [data[i : i + size] for i in range(0, len(data), size)]
    return b"".join(_data(0x08 if i == len(parts) - 1 else 0x02, part) for i, part in enumerate(parts))


def test_a_downloaded_template_of_the_wrong_size_is_answered_0x01_and_never_stored(zfm_sim) -> None:
    """DownChar with a short or an overlong template: confirmation 0x01 (packet error), the buffer left as it was;
    one of the right size is kept and comes back whole on UpChar."""
    size = zfm_sim.profile.template_bytes
    with serial.Serial(zfm_sim.port, 57600, timeout=2) as port:
        for wrong in (b"\x11" * 100, b"\x22" * (size + 1), b""):
            port.write(_command(0x09, b"\x01"))  # DownChar into buffer 1
            assert _read_ack(port)[0] == 0x00
            port.write(_stream(wrong) if wrong else _data(0x08, b""))
            assert _read_ack(port)[0] == 0x01, f"a template of {len(wrong)} bytes"
            port.write(_command(0x08, b"\x01"))  # UpChar: the buffer is still empty
            assert _read_ack(port)[0] == 0x0D
        endless = _data(0x02, b"\x33" * 128) * (size // 128 + 1)  # DATA past the size, no END_DATA yet
        port.write(_command(0x09, b"\x01"))
        assert _read_ack(port)[0] == 0x00
        port.write(endless)
        assert _read_ack(port)[0] == 0x01, "refused once it runs past the size, not held until it ends"
        good = bytes(range(256)) * (size // 256)
        port.write(_command(0x09, b"\x01") + _stream(good) + _command(0x08, b"\x01"))
        assert _read_ack(port)[0] == 0x00  # DownChar
        assert _read_ack(port)[0] == 0x00  # UpChar, its data stream after it
        received = b""
        while len(received) < size:
            head = port.read(9)
            (length,) = struct.unpack(">H", head[7:9])
            received += port.read(length)[:-2]
        assert received == good
    assert zfm_sim.chars[0] == good and not zfm_sim.errors
