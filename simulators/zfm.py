"""A ZFM / R307 / R503 / AS608 fingerprint module on a pseudo-terminal.

A test rig (or a test) gets a serial port path that any client can open, our
driver or an independent one, and speaks the module's UART protocol behind it.
It has its own packet parsing and encoding, deliberately sharing nothing with the
driver's codec but the public constants, so a bug in one cannot hide in the other.

What the test controls: which finger is on the sensor (``place`` / ``lift``),
faults on the next replies (wrong checksum, dropped, split, garbage first, a
failed imaging, a data stream that never ends, a line that turns to noise),
silence, unplug and replug (the port path is a symlink that survives it), the
power-up ``55`` byte of R50x modules, and real line speed (output paced at
baud/10 bytes per second, since a pty itself is instant).

On-module templates are the simulator's own (the real algorithm is
proprietary): a random projection of the ridge detail, so the same image scores
300 against itself and different fingers score near 0.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import os
import secrets
import select
import struct
import termios
import threading
import time
import tty
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import structlog

from drivers.zfm.constants import (
    BAUD_UNIT,
    DEFAULT_ADDRESS,
    DEFAULT_BAUD,
    IMAGING_FAILED,
    PACKET_SIZES,
    POWER_UP_BYTE,
    PROFILES,
    Command,
    ModelProfile,
    PacketType,
)
from simulators.errors import SimulatorError

log = structlog.get_logger()

MATCH_THRESHOLD = 150  # of 300; scores at or above mean "same finger"
FEATURE_GRID = 16
# The longest packet a module takes: a data packet of the largest size, plus its checksum.
# A header claiming more is noise that happens to contain EF 01; waiting for its body
# would swallow every real packet after it, so the parser skips it instead.
MAX_PACKET_LENGTH = max(PACKET_SIZES.values()) + 2


class Fault(enum.Enum):
    BAD_CHECKSUM = "bad_checksum"  # the next reply's checksum is wrong
    DROP = "drop"  # the next reply is not sent
    SPLIT = "split"  # the next reply arrives in two parts, 50 ms apart
    GARBAGE = "garbage"  # noise bytes before the next reply
    # From the next reply on the module answers nothing and the line carries a steady stream of
    # bytes that are no packet (another device on the port, a floating RX wire), until quiet().
    # A reply with a data stream still sends its acknowledgement: the stream turns to noise.
    NOISE = "noise"
    # The next reply's data stream never ends: its acknowledgement, then DATA packets and no END_DATA,
    # until quiet().
    ENDLESS_STREAM = "endless_stream"
    # The next GenImg finds a finger but fails to image it (code 0x03: a wet or smudged finger).
    IMAGING_FAILED = "imaging_failed"


class Babble(enum.Enum):
    """What the line carries by itself, whatever the client sends (see Fault.NOISE, Fault.ENDLESS_STREAM)."""

    NONE = "none"
    NOISE = "noise"
    DATA = "data"


BABBLE_TURN_S = 0.01  # how often the serving thread adds babble to the line

def _frame(kind: int, payload: bytes, address: int) -> bytes:
    body = struct.pack(">BH", kind, len(payload) + 2) + payload
    return b"\xef\x01" + struct.pack(">I", address) + body + struct.pack(">H", sum(body) & 0xFFFF)


@functools.lru_cache(maxsize=4)
def _projection(pixels: int) -> np.ndarray:
    """Fixed pseudo-random +-1 patterns, one per template byte (seeded: the same on every run)."""
    rng = np.random.default_rng(0x2F0)
    return rng.choice(np.array([-1.0, 1.0], np.float32), size=(pixels, FEATURE_GRID**2))


def _features(image: np.ndarray) -> np.ndarray:
    """The module's own template: a random projection of the ridge detail.

    Identical images give identical templates (score 300); the ridge detail of
    different fingers is nearly orthogonal, so they score near 0. It is no
    matcher for two impressions of one finger, which real tests of the agent do
    with biometrics/, not with the module.
    """
    img = cv2.resize(image, (96, 108), interpolation=cv2.INTER_AREA).astype(np.float32)
    detail = (img - cv2.GaussianBlur(img, (0, 0), 2)).reshape(-1)
    vector = detail @ _projection(detail.size)
    norm = float(np.linalg.norm(vector)) or 1.0
    return np.clip(np.round(vector / norm * 127 * 8), -127, 127).astype(np.int8)


def _score(a: bytes, b: bytes) -> int:
    fa = np.frombuffer(a[: FEATURE_GRID**2], np.int8).astype(np.float32)
    fb = np.frombuffer(b[: FEATURE_GRID**2], np.int8).astype(np.float32)
    denom = float(np.linalg.norm(fa) * np.linalg.norm(fb)) or 1.0
    return int(max(0.0, float(fa @ fb) / denom) * 300)


def check_baud(baud: int) -> None:
    """A module runs at 9600 x N baud, N from 1 to 12 (its system parameter); any other speed is none it has."""
    if not (isinstance(baud, int) and baud % BAUD_UNIT == 0 and 1 <= baud // BAUD_UNIT <= 12):
        raise SimulatorError(
            f"baud {baud!r} is not a speed a module runs at",
            f"give a multiple of {BAUD_UNIT} from {BAUD_UNIT} to {12 * BAUD_UNIT} ({DEFAULT_BAUD} is the default)",
        )


def check_password(password: int) -> None:
    """The module's password is 32 bits (VfyPwd sends 4 bytes): another value no client could ever send."""
    if not (isinstance(password, int) and 0 <= password <= 0xFFFFFFFF):
        raise SimulatorError(
            f"password {password!r} does not fit the module's 32 bits",
            "give a number from 0 to 0xFFFFFFFF (0, the default, means none)",
        )


def _check_link(link: Path) -> None:
    """Refuse a link path that is not the simulator's to take: its folder missing, a file, another's live port.

    Making the link replaces whatever is at the path: a user's file would be lost,
    and a second simulator given the same path would steal the first's port (and
    the first, stopping, would then remove the second's link). A dangling link is
    what a killed simulator leaves: that one is replaced.
    """
    if not link.parent.is_dir():
        raise SimulatorError(
            f"the folder of the port link {link} does not exist", f"create {link.parent} or give --link another path"
        )
    if not os.path.lexists(link):
        return
    if not link.is_symlink():
        raise SimulatorError(
            f"{link} exists and is not a port link: the simulator would replace it",
            "give --link a path that does not exist yet (the simulator creates the link and removes it on exit)",
        )
    target = os.readlink(link)
    if os.path.exists(link):
        raise SimulatorError(
            f"{link} already links to {target}, a port in use (another simulator serving it?)",
            "stop that simulator, or give this one another --link; remove the link if nothing serves it",
        )


class SimulatedModule:
    """One module on a pty. Use as a context manager, or ``start()`` / ``stop()``."""

    def __init__(
        self,
        model: str = "r307",
        *,
        link: Path | None = None,
        password: int = 0,
        finger_source: Callable[[int, int, tuple[int, int]], np.ndarray] | None = None,
        real_speed: bool = False,
        baud: int = DEFAULT_BAUD,
        check_line_speed: bool = True,
    ) -> None:
        if model not in PROFILES:
            raise SimulatorError(f"unknown model {model!r}", f"use one of {', '.join(PROFILES)}")
        check_baud(baud)
        check_password(password)
        self.profile: ModelProfile = PROFILES[model]
        self.link = link
        self.password = password
        self.finger_source = finger_source
        self.real_speed = real_speed
        self.address = DEFAULT_ADDRESS
        self.baud = baud  # kept across unplug/replug, as the module keeps it in flash
        self.check_line_speed = check_line_speed
        self.security = 3
        self.packet_size_code = self.profile.packet_size_code
        self.led: tuple[int, int, int, int] | None = None  # (mode, speed, colour, cycles)
        self.library: dict[int, bytes] = {}
        self.chars: list[bytes | None] = [None] * self.profile.char_buffers
        self.image: np.ndarray | None = None
        self.commands: list[int] = []  # command codes received, for tests
        self.errors: list[str] = []  # handler crashes (a simulator bug): the fixture fails the test on any
        self.packets_since_plug = 0  # valid packets parsed on the current pty, for failure messages
        self.bytes_since_plug = 0  # bytes read off the current pty (bytes but no packets: framing; none: the line)
        self.pending = 0  # bytes waiting in the parser for the rest of a packet
        self.ignored_for_speed = 0  # of those, dropped because the client's line speed was wrong
        self._generation = 0  # bumped by every new pty: the serving thread starts a fresh buffer
        self._finger: np.ndarray | None = None
        self._faults: list[Fault] = []
        self._silent = False
        self._babble = Babble.NONE
        self._verified = password == 0
        self._master = -1
        self._slave = -1
        self._slave_name = ""
        self._retired: list[int] = []  # an unplugged pty's fds, closed by the serving thread (_close_pty)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._receiving: tuple[str, int, bytearray] | None = None  # (what, slot, data) of a download

    # ------------------------------------------------------------ control
    @property
    def port(self) -> str:
        return str(self.link) if self.link else self._slave_name

    def start(self) -> SimulatedModule:
        if self.link is not None:
            _check_link(self.link)
        self._open_pty()
        self._stop.clear()
        self._thread = threading.Thread(target=self._serve, name=f"zfm-{self.profile.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        self._close_pty()
        self._close_retired()
        self._unlink()

    def __enter__(self) -> SimulatedModule:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def place(self, image: np.ndarray | None = None, *, finger: int = 0, impression: int = 0) -> None:
        """Put a finger on the sensor: an image, or one from the finger source."""
        if image is None:
            if self.finger_source is None:
                raise ValueError("no finger source: pass an image")
            image = self.finger_source(finger, impression, (self.profile.image_width, self.profile.image_height))
        size = (self.profile.image_width, self.profile.image_height)
        self._finger = cv2.resize(image, size) if image.shape[::-1] != size else image.astype(np.uint8)

    def lift(self) -> None:
        self._finger = None

    def inject(self, *faults: Fault) -> None:
        with self._lock:
            self._faults.extend(faults)

    def silence(self, on: bool = True) -> None:
        self._silent = on

    def quiet(self) -> None:
        """End a babble (Fault.NOISE, Fault.ENDLESS_STREAM): the line is quiet and the module answers again."""
        self._babble = Babble.NONE

    @property
    def babbling(self) -> bool:
        return self._babble is not Babble.NONE

    def unplug(self) -> None:
        """The USB-serial adapter pulled out: the port disappears, clients get I/O errors."""
        self._close_pty()
        self._unlink()

    def _unlink(self) -> None:
        """Remove the link if it is still this module's: another simulator may have taken the path since."""
        if self.link is None or not self._slave_name:
            return
        with contextlib.suppress(OSError):
            if os.readlink(self.link) == self._slave_name:
                self.link.unlink()

    def replug(self) -> None:
        """Plugged back: a new pty behind the same link; R50x modules announce themselves with 55.

        A module already plugged in cannot be plugged again: nothing happens (a
        second pty would hide the first, whose client would hang on it, and leak it).
        """
        if self._master >= 0:
            return
        self._babble = Babble.NONE  # a module just powered up: whatever it was stuck in is over
        self._open_pty()
        if self.profile.power_up_byte:
            self._write(bytes([POWER_UP_BYTE]))

    # ------------------------------------------------------------ pty
    def state(self) -> str:
        """One line on what the module has seen since it was (re)plugged, for a failing test's message."""
        alive = self._thread is not None and self._thread.is_alive()
        linked = "-"
        if self.link is not None:
            linked = str(os.path.realpath(self.link) == self._slave_name if self._master >= 0 else "unplugged")
        return (
            f"simulator serving={alive} plugged={self._master >= 0} baud={self.baud} "
            f"bytes_since_plug={self.bytes_since_plug} pending={self.pending} "
            f"packets_since_plug={self.packets_since_plug} ignored_for_speed={self.ignored_for_speed} "
            f"link_to_this_pty={linked} errors={self.errors}"
        )

    def _open_pty(self) -> None:
        master, slave = os.openpty()
        tty.setraw(slave)
        attrs = termios.tcgetattr(slave)
        attrs[3] &= ~termios.ECHO
        termios.tcsetattr(slave, termios.TCSANOW, attrs)
        self.packets_since_plug = self.ignored_for_speed = self.bytes_since_plug = self.pending = 0
        self._master, self._slave = master, slave
        self._generation += 1
        self._slave_name = os.ttyname(slave)
        if self.link is not None:
            tmp = self.link.with_name(self.link.name + ".tmp")
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            try:
                os.symlink(self._slave_name, tmp)
                os.replace(tmp, self.link)
            except OSError as exc:
                with contextlib.suppress(OSError):
                    tmp.unlink()
                self._close_pty()
                raise SimulatorError(
                    f"cannot make the port link {self.link}: {exc.strerror or exc}",
                    "give --link a path in a folder this user may write to",
                ) from None

    def _close_pty(self) -> None:
        """Unplug the pty: forget it at once, and let the serving thread close its fds.

        The serving thread may be between its select() and its read() on the master
        at this moment. Closed from here, the master's number could go to the next
        file the process opens (the replugged pty's own slave, a socket) before that
        read, which would then wait on that file for good: a module deaf after its
        replug, however often the client retries. So the numbers stay taken until the
        serving thread, their only reader, closes them at the start of its next turn
        (within one select timeout); with no serving thread they are closed here.
        """
        with self._lock:
            self._retired += [fd for fd in (self._master, self._slave) if fd >= 0]
            self._master = self._slave = -1
        if self._thread is None or not self._thread.is_alive():
            self._close_retired()

    def _close_retired(self) -> None:
        with self._lock:
            retired, self._retired = self._retired, []
        for fd in retired:
            with contextlib.suppress(OSError):
                os.close(fd)

    def _write(self, data: bytes) -> None:
        if self._master < 0:
            return
        if not self.real_speed:
            with contextlib.suppress(OSError):
                os.write(self._master, data)
            return
        started = time.monotonic()
        for offset in range(0, len(data), 64):
            chunk = data[offset : offset + 64]
            with contextlib.suppress(OSError):
                os.write(self._master, chunk)
            due = started + (offset + len(chunk)) * 10 / self.baud  # 8N1: 10 bits a byte
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)

    # ------------------------------------------------------------ serving
    def _serve(self) -> None:
        buffer = bytearray()
        generation = -1
        while not self._stop.is_set():
            if self._retired:
                self._close_retired()  # this thread no longer holds their numbers: see _close_pty
            fd = self._master
            if fd < 0:
                time.sleep(0.02)
                continue
            if generation != self._generation:
                # A fresh pty is a module just powered up: nothing half-received survives it,
                # even when unplug and replug both fell between two turns of this loop.
                generation = self._generation
                buffer.clear()
                self.pending = 0
            babble = self._babble
            try:
                ready, _, _ = select.select([fd], [], [], BABBLE_TURN_S if babble is not Babble.NONE else 0.05)
                if babble is not Babble.NONE:
                    self._babble_turn(fd, babble)
                if not ready:
                    continue
                chunk = os.read(fd, 4096)
            except OSError:
                time.sleep(0.02)
                continue
            self.bytes_since_plug += len(chunk)
            buffer += chunk
            self._parse(buffer)
            self.pending = len(buffer)

    def _babble_turn(self, fd: int, babble: Babble) -> None:
        """One turn's worth of babble, at about the line's rate (baud/10 bytes a second).

        Written without blocking: once the client stops reading, the pty fills and
        the rest is dropped, as a line drops what nobody listens to; a blocked
        serving thread could not be stopped.
        """
        budget = max(1, int(self.baud / 10 * BABBLE_TURN_S))
        if babble is Babble.NOISE:
            data = secrets.token_bytes(budget).replace(b"\xef", b"\x00")  # never a header
        else:
            size = PACKET_SIZES[self.packet_size_code]
            data = _frame(PacketType.DATA, bytes(size), self.address) * max(1, budget // (size + 11))
        try:
            os.set_blocking(fd, False)
            os.write(fd, data)
        except OSError:
            pass  # the line is full (nobody reads) or gone
        finally:
            with contextlib.suppress(OSError):
                os.set_blocking(fd, True)

    def _parse(self, buffer: bytearray) -> None:
        """Take every whole packet off the front of ``buffer``; noise is dropped, a partial packet waits."""
        while True:
            start = buffer.find(b"\xef\x01")
            if start < 0:
                # Noise: drop it, but keep a trailing EF, which may be the first half of a
                # header whose 01 is still on the line (a client writing byte by byte).
                keep = buffer.endswith(b"\xef")
                buffer.clear()
                if keep:
                    buffer.append(0xEF)
                return
            del buffer[:start]
            if len(buffer) < 9:
                return
            kind, length = struct.unpack(">BH", buffer[6:9])
            if not 2 <= length <= MAX_PACKET_LENGTH:
                del buffer[:2]  # not a header: look for the next EF 01
                continue
            if len(buffer) < 9 + length:
                return
            body = bytes(buffer[6 : 9 + length - 2])
            (received,) = struct.unpack(">H", buffer[9 + length - 2 : 9 + length])
            del buffer[: 9 + length]
            if received != sum(body) & 0xFFFF:
                if not self._mute:
                    self._reply(0x01)  # error receiving the packet
                continue
            self.packets_since_plug += 1
            try:
                self._packet(kind, body[3:])
            except Exception as exc:  # a simulator bug: keep serving, say so, and let the test fail on it
                self.errors.append(f"{type(exc).__name__}: {exc}")
                log.error("simulator_handler_failed", command=body[3] if len(body) > 3 else None, error=self.errors[-1])
                self._reply(0x01)

    @property
    def _mute(self) -> bool:
        """Answers nothing: silenced, or its line carries noise."""
        return self._silent or self._babble is Babble.NOISE

    def _reply(self, code: int, data: bytes = b"", stream: bytes | None = None) -> None:
        out = _frame(PacketType.ACK, bytes([code]) + data, self.address)
        with self._lock:
            # IMAGING_FAILED waits for a GenImg that finds a finger (_gen_img takes it); the others are this reply's.
            head = self._faults[0] if self._faults else None
            fault = self._faults.pop(0) if head is not None and head is not Fault.IMAGING_FAILED else None
        if fault is Fault.NOISE:
            if stream is not None:
                self._write(out)  # the acknowledgement; the stream turns to noise
            self._babble = Babble.NOISE
            return
        if fault is Fault.ENDLESS_STREAM:
            self._write(out)  # the acknowledgement; then DATA packets that never end
            self._babble = Babble.DATA
            return
        if stream is not None:
            size = PACKET_SIZES[self.packet_size_code]
            parts = [stream[i : i + size] for i in range(0, len(stream), size)]
            for index, part in enumerate(parts):
                kind = PacketType.END_DATA if index == len(parts) - 1 else PacketType.DATA
                out += _frame(kind, part, self.address)
        if fault is Fault.DROP:
            return
        if fault is Fault.BAD_CHECKSUM:
            end = 12 + len(data)  # the acknowledgement's last checksum byte
            out = out[: end - 1] + bytes([out[end - 1] ^ 0x5A]) + out[end:]
        if fault is Fault.GARBAGE:
            out = secrets.token_bytes(7).replace(b"\xef", b"\x00") + out
        if fault is Fault.SPLIT:
            half = len(out) // 2
            self._write(out[:half])
            time.sleep(0.05)
            self._write(out[half:])
            return
        self._write(out)

    def _line_speed_matches(self) -> bool:
        """A module at 115200 reads a host at 57600 as noise: the pty tells the speed the client set."""
        if not self.check_line_speed or self._slave < 0:
            return True
        try:
            speed = termios.tcgetattr(self._slave)[5]
        except termios.error:
            return True
        return speed == getattr(termios, f"B{self.baud}", speed)

    def _packet(self, kind: int, payload: bytes) -> None:
        if self._mute:
            return
        if not self._line_speed_matches():
            self.ignored_for_speed += 1
            return
        if kind in (PacketType.DATA, PacketType.END_DATA):
            self._data(kind, payload)
            return
        if kind != PacketType.COMMAND or not payload:
            self._reply(0x01)
            return
        code, args = payload[0], payload[1:]
        self.commands.append(code)
        if not self._verified and code not in (Command.VERIFY_PWD, Command.HANDSHAKE):
            self._reply(0x21)  # password must be verified first
            return
        handler = self._handlers().get(code)
        if handler is None:
            self._reply(0x01)
            return
        try:
            handler(args)
        except (struct.error, IndexError):
            self._reply(0x01)

    def _data(self, kind: int, payload: bytes) -> None:
        """A DownChar / DownImage data stream: kept only when it is exactly a template's (an image's) size.

        A stream of any other size is answered with confirmation code 0x01 (error receiving the
        packet) and nothing is stored: a short template would sit in the buffer and be stored
        to the library, a long one grew the buffer for as long as the client sent. One past the
        size is refused at once; the rest of its packets are then ignored, as any data packet
        that comes unasked.
        """
        if self._receiving is None:
            return
        what, slot, data = self._receiving
        expected = self.profile.template_bytes if what == "char" else self.profile.image_bytes
        data += payload
        if len(data) > expected:
            self._receiving = None
            self._reply(0x01)
            return
        if kind != PacketType.END_DATA:
            return
        self._receiving = None
        if len(data) != expected:
            self._reply(0x01)
            return
        if what == "char":
            self.chars[slot] = bytes(data)
        else:
            unpacked = np.frombuffer(bytes(data), np.uint8)
            pixels = np.empty(unpacked.size * 2, np.uint8)
            pixels[0::2] = unpacked & 0xF0
            pixels[1::2] = (unpacked & 0x0F) << 4
            self.image = pixels.reshape(self.profile.image_height, self.profile.image_width)

    # ------------------------------------------------------------ commands
    def _handlers(self) -> dict[int, Callable[[bytes], None]]:
        return {
            Command.HANDSHAKE: lambda a: self._reply(0x00),
            Command.VERIFY_PWD: self._verify_password,
            Command.SET_PWD: self._set_password,
            Command.READ_SYS_PARA: self._read_sys_para,
            Command.SET_SYS_PARA: self._set_sys_para,
            Command.GEN_IMG: self._gen_img,
            Command.IMG2TZ: self._img2tz,
            Command.MATCH: self._match,
            Command.SEARCH: self._search,
            Command.HIGH_SPEED_SEARCH: self._search,
            Command.REG_MODEL: self._reg_model,
            Command.STORE: self._store,
            Command.LOAD_CHAR: self._load_char,
            Command.UP_CHAR: self._up_char,
            Command.DOWN_CHAR: self._down_char,
            Command.UP_IMAGE: self._up_image,
            Command.DOWN_IMAGE: self._down_image,
            Command.DELETE_CHAR: self._delete,
            Command.EMPTY: self._empty,
            Command.GET_RANDOM_CODE: lambda a: self._reply(0x00, secrets.token_bytes(4)),
            Command.TEMPLATE_NUM: lambda a: self._reply(0x00, struct.pack(">H", len(self.library))),
            Command.READ_INDEX_TABLE: self._index_table,
            Command.AURA_LED: self._led,
            Command.SOFT_RESET: self._soft_reset,
        }

    def _slot(self, number: int) -> int | None:
        return number - 1 if 1 <= number <= self.profile.char_buffers else None

    def _verify_password(self, args: bytes) -> None:
        ok = struct.unpack(">I", args[:4])[0] == self.password
        self._verified = self._verified or ok
        self._reply(0x00 if ok else 0x13)

    def _set_password(self, args: bytes) -> None:
        self.password = struct.unpack(">I", args[:4])[0]
        self._reply(0x00)

    def _read_sys_para(self, args: bytes) -> None:
        params = struct.pack(
            ">HHHHIHH",
            0,
            self.profile.system_id,
            self.profile.capacity,
            self.security,
            self.address,
            self.packet_size_code,
            self.baud // BAUD_UNIT,
        )
        self._reply(0x00, params)

    def _set_sys_para(self, args: bytes) -> None:
        number, value = args[0], args[1]
        if number == 4 and 1 <= value <= 12:
            self._reply(0x00)  # acknowledged at the old speed, then the line changes
            self.baud = value * BAUD_UNIT
        elif number == 5 and 1 <= value <= 5:
            self.security = value
            self._reply(0x00)
        elif number == 6 and value in PACKET_SIZES:
            self.packet_size_code = value
            self._reply(0x00)
        else:
            self._reply(0x1A)

    def _gen_img(self, args: bytes) -> None:
        if self._finger is None:
            self._reply(0x02)
            return
        with self._lock:
            failed = bool(self._faults) and self._faults[0] is Fault.IMAGING_FAILED
            if failed:
                self._faults.pop(0)
        if failed:
            self._reply(IMAGING_FAILED)  # the finger is there; its image could not be taken
            return
        self.image = self._finger.copy()
        self._reply(0x00)

    def _img2tz(self, args: bytes) -> None:
        slot = self._slot(args[0] if args else 1)
        if slot is None:
            self._reply(0x1A)
            return
        if self.image is None:
            self._reply(0x15)
            return
        features = _features(self.image).tobytes()
        self.chars[slot] = features + bytes(self.profile.template_bytes - len(features))
        self._reply(0x00)

    def _match(self, args: bytes) -> None:
        a, b = self.chars[0], self.chars[1]
        if a is None or b is None:
            self._reply(0x0C)
            return
        score = _score(a, b)
        self._reply(0x00 if score >= MATCH_THRESHOLD else 0x08, struct.pack(">H", score))

    def _search(self, args: bytes) -> None:
        slot = self._slot(args[0])
        start, count = struct.unpack(">HH", args[1:5])
        probe = self.chars[slot] if slot is not None else None
        if probe is None:
            self._reply(0x0C)
            return
        best_page, best = 0, 0
        for page, template in sorted(self.library.items()):
            if start <= page < start + count:
                score = _score(probe, template)
                if score > best:
                    best_page, best = page, score
        if best >= MATCH_THRESHOLD:
            self._reply(0x00, struct.pack(">HH", best_page, best))
        else:
            self._reply(0x09, struct.pack(">HH", 0, 0))

    def _reg_model(self, args: bytes) -> None:
        a, b = self.chars[0], self.chars[1]
        if a is None or b is None or _score(a, b) < MATCH_THRESHOLD:
            self._reply(0x0A)
            return
        self.chars[1] = a
        self._reply(0x00)

    def _store(self, args: bytes) -> None:
        slot = self._slot(args[0])
        (page,) = struct.unpack(">H", args[1:3])
        if slot is None or self.chars[slot] is None:
            self._reply(0x0C if slot is not None else 0x1A)
        elif page >= self.profile.capacity:
            self._reply(0x0B)
        else:
            self.library[page] = self.chars[slot]  # type: ignore[assignment]
            self._reply(0x00)

    def _load_char(self, args: bytes) -> None:
        slot = self._slot(args[0])
        (page,) = struct.unpack(">H", args[1:3])
        if slot is None:
            self._reply(0x1A)
        elif page not in self.library:
            self._reply(0x0C)
        else:
            self.chars[slot] = self.library[page]
            self._reply(0x00)

    def _up_char(self, args: bytes) -> None:
        slot = self._slot(args[0] if args else 1)
        if slot is None or self.chars[slot] is None:
            self._reply(0x0D)
            return
        self._reply(0x00, stream=self.chars[slot])

    def _down_char(self, args: bytes) -> None:
        slot = self._slot(args[0] if args else 1)
        if slot is None:
            self._reply(0x0E)
            return
        self._receiving = ("char", slot, bytearray())
        self._reply(0x00)

    def _up_image(self, args: bytes) -> None:
        if self.image is None:
            self._reply(0x0F)
            return
        flat = self.image.reshape(-1)
        self._reply(0x00, stream=((flat[0::2] & 0xF0) | (flat[1::2] >> 4)).tobytes())

    def _down_image(self, args: bytes) -> None:
        self._receiving = ("image", 0, bytearray())
        self._reply(0x00)

    def _delete(self, args: bytes) -> None:
        page, count = struct.unpack(">HH", args[:4])
        for p in range(page, page + count):
            self.library.pop(p, None)
        self._reply(0x00)

    def _empty(self, args: bytes) -> None:
        self.library.clear()
        self._reply(0x00)

    def _index_table(self, args: bytes) -> None:
        page = args[0] if args else 0
        bits = np.zeros(256, np.uint8)
        for slot in self.library:
            if page * 256 <= slot < (page + 1) * 256:
                bits[slot - page * 256] = 1
        self._reply(0x00, np.packbits(bits, bitorder="little").tobytes())

    def _led(self, args: bytes) -> None:
        if not self.profile.has_led:
            self._reply(0x01)
            return
        self.led = (args[0], args[1], args[2], args[3])
        self._reply(0x00)

    def _soft_reset(self, args: bytes) -> None:
        self._reply(0x00)
        self.chars = [None] * self.profile.char_buffers
        self.image = None
        self._write(bytes([POWER_UP_BYTE]))
