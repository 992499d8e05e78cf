"""The I/O shell around the ZFM codec: a pyserial port, bounded waits, typed errors.

All protocol knowledge lives in :mod:`drivers.zfm.codec`; this module only moves
bytes and turns silence, OS errors and refusals into errors that name the fix.
Every wait is bounded by a deadline. A corrupt reply is retried once (the
commands used here are safe to repeat), then reported.

Used from the agent's capture loop (in a worker thread: pyserial is blocking).
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import termios
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import serial
import structlog

from drivers.flock_holder import flock_holder
from drivers.zfm.codec import (
    Ack,
    CorruptPacket,
    DataStream,
    Decoder,
    Event,
    Garbage,
    Packet,
    SearchResult,
    StreamOverflowError,
    SystemParameters,
    ZfmProtocolError,
    command,
    data_packets,
    pack_image,
    parse_ack,
    parse_search,
    parse_system_parameters,
    parse_u16,
    parse_u32,
    u16,
    u32,
    unpack_image,
)
from drivers.zfm.constants import (
    BAUD_UNIT,
    DEFAULT_ADDRESS,
    DEFAULT_BAUD,
    IMAGING_FAILED,
    NO_FINGER,
    NOT_FOUND,
    PACKET_SIZES,
    Command,
    LedColor,
    LedMode,
    ModelProfile,
    SysParam,
    profile_for,
)
from drivers.zfm.errors import (
    CaptureCancelled,
    CorruptReplyError,
    FingerTimeoutError,
    ImagingFailedError,
    InvalidArgumentError,
    ModuleRefusedError,
    NoReplyError,
    OversizedReplyError,
    PortBusyError,
    PortClosedError,
    PortMissingError,
    PortPermissionError,
    PortSettingsError,
    UnpluggedError,
    WrongPasswordError,
)

log = structlog.get_logger()

REPLY_TIMEOUT_S = 1.0
BAUD_SEARCH_ORDER = (57600, 115200, 9600, 19200, 38400, 76800, 28800, 48000, 67200, 86400, 96000, 105600)
POLL_INTERVAL_S = 0.1
WRONG_PASSWORD = 0x13
# What a vanished line raises: pyserial wraps most, but flush() and reset_input_buffer()
# call termios directly, whose error is not an OSError (EIO once a pty's other end closes).
LINE_ERRORS = (OSError, serial.SerialException, termios.error)
MODULE_BAUDS = tuple(BAUD_UNIT * n for n in range(1, 13))  # the speeds a module runs at (its system parameter)


def _whole(what: str, value: object, low: int, high: int) -> int:
    """``value`` as an int from ``low`` to ``high``, or InvalidArgumentError (a bool, a float, a str are none).

    Checked before anything is sent: out of range, struct.pack and bytes() raised their own untyped
    errors (or, within a byte, sent a buffer or page number the module refuses with a bare code).
    """
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or not low <= value <= high:
        raise InvalidArgumentError(what, value, f"a whole number from {low} to {high}")
    return int(value)


def _seconds(what: str, value: object, *, zero: bool = True) -> float:
    """A duration in seconds: finite, and not negative (above 0 unless ``zero``). NaN never passes a deadline."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (not zero and value == 0):
        raise InvalidArgumentError(what, value, "a finite number of seconds " + ("from 0" if zero else "above 0"))
    return float(value)


def _lock_holder(port: str) -> int | None:
    """The PID holding a flock on ``port`` (from /proc/locks), or None when it cannot be told."""
    try:
        return flock_holder(os.stat(port))
    except OSError:
        return None


def _errno(exc: BaseException) -> int | None:
    """The OS error number behind a pyserial error: its own, or its cause's (termios.error keeps it in args)."""
    for candidate in (exc, exc.__context__, exc.__cause__):
        if candidate is None:
            continue
        number = getattr(candidate, "errno", None)
        if number is None and candidate.args and isinstance(candidate.args[0], int):
            number = candidate.args[0]
        if number is not None:
            return int(number)
    return None


@dataclass(frozen=True)
class ModuleInfo:
    port: str
    profile: ModelProfile
    params: SystemParameters


class ZfmModule:
    """One module on one serial port."""

    def __init__(
        self,
        port: str,
        *,
        baud: int = DEFAULT_BAUD,
        password: int = 0,
        address: int = DEFAULT_ADDRESS,
        reply_timeout_s: float = REPLY_TIMEOUT_S,
        serial_factory: Callable[..., serial.Serial] = serial.Serial,
    ) -> None:
        self.port = port
        self.baud = baud  # checked at every open (the agent sets it between opens): PortSettingsError
        self.password = password  # checked at every open: InvalidArgumentError
        self.address = _whole("the module address", address, 0, 0xFFFFFFFF)
        self.reply_timeout_s = _seconds("the reply timeout", reply_timeout_s, zero=False)
        self._serial_factory = serial_factory
        self._serial: serial.Serial | None = None
        self._decoder = Decoder()
        self._events: deque[Event] = deque()
        self._lost = False  # the port went away under the driver (UnpluggedError), not closed by its owner
        self.info: ModuleInfo | None = None

    # ---------------------------------------------------------------- open/close
    def open(self) -> ModuleInfo:
        """Open the port, check the module answers (VerifyPwd), read its parameters."""
        _whole("the module password", self.password, 0, 0xFFFFFFFF)
        self._open_port()
        ack = self._call(Command.VERIFY_PWD, u32(self.password), what="the password check")
        if ack.code == WRONG_PASSWORD:
            raise WrongPasswordError(self.port)
        self._check(ack, "the password check")
        params = parse_system_parameters(self._checked(Command.READ_SYS_PARA, what="reading parameters", data_len=16))
        self.info = ModuleInfo(self.port, profile_for(params.system_id, params.library_size), params)
        log.info("reader_opened", port=self.port, model=self.info.profile.name, capacity=params.library_size)
        return self.info

    def open_at_any_baud(
        self, candidates: Sequence[int] = BAUD_SEARCH_ORDER, probe_timeout_s: float = 0.3
    ) -> ModuleInfo:
        """Open at whatever speed the module answers: this object's baud first, then ``candidates``.

        A module keeps its baud in flash, so one raised by an earlier run (or set
        by another tool) answers only at that speed; at any other it hears noise
        and stays silent.
        """
        probe_timeout_s = _seconds("the probe timeout", probe_timeout_s, zero=False)
        patient = self.reply_timeout_s
        tried: list[int] = []
        noise = 0  # bytes that were no packet at any speed: says "something else is on this port"
        speeds = [b for b in dict.fromkeys([self.baud, *candidates]) if b in MODULE_BAUDS]
        if not speeds:  # none a module runs at: no probe could ever be answered
            self._check_baud()
        for baud in speeds:
            self.baud, self.reply_timeout_s = baud, probe_timeout_s
            tried.append(baud)
            try:
                return self.open()
            except (NoReplyError, CorruptReplyError) as exc:
                noise += getattr(exc, "noise_bytes", 0)
                log.info("reader_no_answer_at_baud", port=self.port, baud=baud)
            finally:
                self.reply_timeout_s = patient
        self.close()
        raise NoReplyError(self.port, f"a handshake at any of {', '.join(map(str, tried))} baud", noise)

    def _check_baud(self) -> None:
        if isinstance(self.baud, bool) or self.baud not in MODULE_BAUDS:
            raise PortSettingsError(self.port, f"{self.baud!r} baud is no speed a module runs at")

    def _open_port(self) -> None:
        self._close_port()
        self._check_baud()
        try:
            # exclusive: pyserial's flock on the port, so a second process driving the same module (another
            # daemon, `capture-agent devices` probing while the daemon runs) is refused, not interleaved.
            self._serial = self._serial_factory(
                self.port, self.baud, timeout=0.05, write_timeout=2.0, exclusive=True
            )
        except ValueError as exc:  # pyserial refuses a setting before it opens anything
            raise PortSettingsError(self.port, str(exc)) from None
        except serial.SerialException as exc:
            cause = _errno(exc)
            if cause in (errno.EAGAIN, errno.EWOULDBLOCK):
                raise PortBusyError(self.port, _lock_holder(self.port)) from None
            if cause in (errno.EACCES, errno.EPERM):
                raise PortPermissionError(self.port) from None
            if cause == errno.ENOENT or not os.path.exists(self.port):
                raise PortMissingError(self.port) from None
            if cause in (errno.ENOTTY, errno.EINVAL):  # a file or another device, or a speed the port refuses
                raise PortSettingsError(self.port, f"it refused {self.baud} baud 8N1 ({exc})") from None
            raise UnpluggedError(self.port) from None
        self._lost = False
        self._reset_decoder()

    def _reset_decoder(self) -> None:
        self._decoder = Decoder()
        self._events.clear()

    def close(self) -> None:
        """Close the port; using the module afterwards is a PortClosedError until it is opened again."""
        self._close_port()
        self._lost = False

    def _close_port(self) -> None:
        if self._serial is not None:
            with contextlib.suppress(*LINE_ERRORS):
                self._serial.close()
            self._serial = None

    def _line(self) -> serial.Serial:
        """The open port: UnpluggedError when it went away under the driver, PortClosedError when it was closed."""
        if self._serial is None:
            raise UnpluggedError(self.port) if self._lost else PortClosedError(self.port)
        return self._serial

    def _line_failed(self, exc: BaseException) -> UnpluggedError:
        """The error for a read or write that failed: the port closed under the driver's own object
        (pyserial's PortNotOpenError), or the line gone (an unplug)."""
        self._close_port()
        if isinstance(exc, serial.PortNotOpenError):
            self._lost = False
            return PortClosedError(self.port)
        self._lost = True
        return UnpluggedError(self.port)

    def __enter__(self) -> ZfmModule:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def reopen(self, within_s: float = 30.0, first_delay_s: float = 0.1) -> ModuleInfo:
        """After an unplug: try again with backoff until ``within_s`` has passed."""
        within_s = _seconds("the reopen time", within_s)
        first_delay_s = _seconds("the first reopen delay", first_delay_s, zero=False)
        deadline = time.monotonic() + within_s
        delay = first_delay_s
        while True:
            try:
                info = self.open()
                log.info("reader_reopened", port=self.port)
                return info
            except (PortMissingError, UnpluggedError, NoReplyError, CorruptReplyError):
                if time.monotonic() + delay > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    # ---------------------------------------------------------------- transport
    def _send(self, data: bytes) -> None:
        port = self._line()
        try:
            port.write(data)
            port.flush()
        except LINE_ERRORS as exc:
            raise self._line_failed(exc) from None

    def _next_packet(self, deadline: float, what: str) -> Packet:
        """The next valid packet before ``deadline``; CorruptReplyError on a corrupt one.

        The deadline is checked on every turn, whatever the read gave: a line that
        never stops carrying bytes (another device on the port, a floating RX wire,
        a module streaming data without an end) must time out like a silent one.
        Packets already decoded are still handed out: they came before the deadline.
        """
        noise = 0
        while True:
            while self._events:
                event = self._events.popleft()
                if isinstance(event, Packet):
                    return event
                if isinstance(event, CorruptPacket):
                    raise CorruptReplyError(self.port, event.reason)
                if isinstance(event, Garbage):
                    noise += len(event.data)
            if time.monotonic() > deadline:
                raise NoReplyError(self.port, what, noise)
            port = self._line()
            try:
                chunk = port.read(port.in_waiting or 1)
            except LINE_ERRORS as exc:
                raise self._line_failed(exc) from None
            self._events.extend(self._decoder.feed(chunk))

    def _call(self, code: Command, *args: int | bytes, what: str, data_len: int = 0, retry: bool = True) -> Ack:
        """Send a command and read its acknowledgement; a corrupt or lost reply is retried once."""
        attempts = 2 if retry else 1
        for attempt in range(attempts):
            # The protocol has no request ids: a late reply to an earlier, timed-out command
            # must not be taken for this one's, so whatever is pending is dropped first.
            self._discard_pending()
            self._send(command(code, *args, address=self.address))
            try:
                packet = self._next_packet(time.monotonic() + self.reply_timeout_s, what)
                return parse_ack(packet, data_len)
            except (CorruptReplyError, ZfmProtocolError, NoReplyError) as exc:
                if attempt + 1 >= attempts:
                    if isinstance(exc, ZfmProtocolError):
                        raise CorruptReplyError(self.port, str(exc)) from None
                    raise
                log.warning("reader_retry", port=self.port, command=what, error=type(exc).__name__)
                self._drain()
        raise AssertionError("unreachable")

    def _discard_pending(self) -> None:
        if self._serial is not None:
            with contextlib.suppress(*LINE_ERRORS):
                self._serial.reset_input_buffer()
        self._reset_decoder()

    def _drain(self) -> None:
        """Let the tail of a broken reply arrive, then forget it, before a retry."""
        time.sleep(0.05)
        self._discard_pending()

    @staticmethod
    def _check(ack: Ack, what: str) -> Ack:
        if not ack.ok:
            raise ModuleRefusedError(what, ack.code, ack.message)
        return ack

    def _checked(self, code: Command, *args: int | bytes, what: str, data_len: int = 0) -> Ack:
        return self._check(self._call(code, *args, what=what, data_len=data_len), what)

    def _read_stream(self, what: str, size: int) -> bytes:
        """A data stream of at most ``size`` bytes, within the time its bytes take on the line.

        Both bounds end a reply that never sends END_DATA: the size as soon as it is
        exceeded, the deadline when the packets come too slowly to reach it.
        """
        stream = DataStream(limit=size)
        deadline = time.monotonic() + self._stream_timeout(size)
        try:
            while not stream.done:
                stream.add(self._next_packet(deadline, what))
        except StreamOverflowError:
            log.warning("reader_stream_overflow", port=self.port, what=what, limit=size)
            model = self.info.profile.name if self.info else "module of this family"
            raise OversizedReplyError(self.port, what, size, model) from None
        except ZfmProtocolError as exc:
            raise CorruptReplyError(self.port, str(exc)) from None
        return stream.data

    def _stream_timeout(self, size: int) -> float:
        """Bytes on the wire (payload + 11 per packet) at baud/10 bytes per second, with margin."""
        packet = self.packet_size
        wire = size + 11 * (size // packet + 1)
        return 2.0 + 3 * wire * 10 / self.baud

    @property
    def packet_size(self) -> int:
        return self.info.params.packet_size if self.info else PACKET_SIZES[2]

    @property
    def profile(self) -> ModelProfile:
        if self.info is None:
            raise PortClosedError(self.port)
        return self.info.profile

    def _buffer(self, buffer: object) -> int:
        return _whole("the char buffer", buffer, 1, self.profile.char_buffers)

    def _page(self, page: object) -> int:
        return _whole("the template page", page, 0, self.profile.capacity - 1)

    # ---------------------------------------------------------------- capture
    def capture(self) -> bool:
        """GenImg once: True when a finger was imaged, False when there is none.

        ImagingFailedError (a retry with a feedback code, not a fault) when a finger
        is there but could not be imaged: the session prompts and tries again.
        """
        ack = self._call(Command.GEN_IMG, what="capturing an image")
        if ack.code == NO_FINGER:
            return False
        if ack.code == IMAGING_FAILED:
            raise ImagingFailedError(self.port)
        self._check(ack, "capturing an image")
        return True

    def _finger_present(self) -> bool:
        """GenImg as a presence test: a finger that could not be imaged is still a finger on the sensor."""
        try:
            return self.capture()
        except ImagingFailedError:
            return True

    def wait_for_finger(
        self, timeout_s: float, poll_s: float = POLL_INTERVAL_S, cancel: threading.Event | None = None
    ) -> None:
        """Capture as soon as a finger is on the sensor; FingerTimeoutError, or CaptureCancelled when asked."""
        timeout_s = _seconds("the finger timeout", timeout_s)
        poll_s = _seconds("the poll interval", poll_s, zero=False)
        deadline = time.monotonic() + timeout_s
        while not self.capture():
            if cancel is not None and cancel.wait(poll_s):
                raise CaptureCancelled()
            if time.monotonic() > deadline:
                raise FingerTimeoutError(timeout_s)
            if cancel is None:
                time.sleep(poll_s)

    def wait_for_lift(
        self, timeout_s: float, poll_s: float = POLL_INTERVAL_S, cancel: threading.Event | None = None
    ) -> bool:
        timeout_s = _seconds("the lift timeout", timeout_s)
        poll_s = _seconds("the poll interval", poll_s, zero=False)
        deadline = time.monotonic() + timeout_s
        while self._finger_present():
            if cancel is not None and cancel.wait(poll_s):
                raise CaptureCancelled()
            if time.monotonic() > deadline:
                return False
            if cancel is None:
                time.sleep(poll_s)
        return True

    def download_image(self) -> np.ndarray:
        """UpImage: the captured image as a uint8 array of the model's size (stays in memory)."""
        profile = self.profile
        self._checked(Command.UP_IMAGE, what="uploading the image")
        data = self._read_stream("the image", profile.image_bytes)
        try:
            return unpack_image(data, profile.image_width, profile.image_height)
        except ZfmProtocolError as exc:
            raise CorruptReplyError(self.port, str(exc)) from None

    def upload_image(self, image: np.ndarray) -> None:
        """DownImage: a uint8 image of the model's size (another size would be refused by the module)."""
        profile = self.profile
        shape = (profile.image_height, profile.image_width)
        if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.shape == shape):
            got = f"a {image.dtype} array of shape {image.shape}" if isinstance(image, np.ndarray) else type(image)
            raise InvalidArgumentError("the image", got, f"a uint8 array of shape {shape} (height, width)")
        self._checked(Command.DOWN_IMAGE, what="downloading an image")
        self._send(data_packets(pack_image(image), self.packet_size, self.address))

    # ---------------------------------------------------------------- on-module templates
    def image_to_template(self, buffer: int = 1) -> None:
        self._checked(Command.IMG2TZ, self._buffer(buffer), what="making a template")

    def create_model(self) -> None:
        self._checked(Command.REG_MODEL, what="combining the templates")

    def store(self, page: int, buffer: int = 1) -> None:
        buffer, page = self._buffer(buffer), self._page(page)
        self._checked(Command.STORE, buffer, u16(page), what=f"storing template {page}")

    def load(self, page: int, buffer: int = 1) -> None:
        buffer, page = self._buffer(buffer), self._page(page)
        self._checked(Command.LOAD_CHAR, buffer, u16(page), what=f"loading template {page}")

    def delete(self, page: int, count: int = 1) -> None:
        page = self._page(page)
        count = _whole("the count of templates", count, 1, self.profile.capacity - page)
        self._checked(Command.DELETE_CHAR, u16(page), u16(count), what=f"deleting template {page}")

    def empty(self) -> None:
        self._checked(Command.EMPTY, what="emptying the library")

    def template_count(self) -> int:
        return parse_u16(self._checked(Command.TEMPLATE_NUM, what="counting templates", data_len=2))

    def random_code(self) -> int:
        return parse_u32(self._checked(Command.GET_RANDOM_CODE, what="a random number", data_len=4))

    def search(self, buffer: int = 1) -> SearchResult | None:
        """The best stored template for the buffer's template, or None when none matches."""
        capacity, buffer = self.profile.capacity, self._buffer(buffer)
        ack = self._call(Command.SEARCH, buffer, u16(0), u16(capacity), what="searching", data_len=4)
        if ack.code == NOT_FOUND:
            return None
        return parse_search(self._check(ack, "searching"))

    def match(self) -> int:
        """Score between buffers 1 and 2 (0 when they do not match)."""
        ack = self._call(Command.MATCH, what="matching", data_len=2)
        return parse_u16(ack) if ack.ok else 0

    def upload_template(self, buffer: int = 1) -> bytes:
        """UpChar: the template in a buffer (for modules used as storage)."""
        self._checked(Command.UP_CHAR, self._buffer(buffer), what="uploading a template")
        return self._read_stream("the template", self.profile.template_bytes)

    def download_template(self, data: bytes, buffer: int = 1) -> None:
        """DownChar: a template of exactly the model's size (the module answers another size with 0x01)."""
        size = self.profile.template_bytes
        if not isinstance(data, bytes | bytearray | memoryview) or len(data) != size:
            got = f"{len(data)} bytes" if isinstance(data, bytes | bytearray | memoryview) else type(data)
            raise InvalidArgumentError("the template", got, f"{size} bytes (a {self.profile.name} template)")
        buffer = self._buffer(buffer)
        data = bytes(data)
        self._checked(Command.DOWN_CHAR, buffer, what="downloading a template")
        self._send(data_packets(data, self.packet_size, self.address))

    # ---------------------------------------------------------------- settings
    def set_baud(self, baud: int) -> None:
        """Raise (or lower) the line speed: SetSysPara, then reopen at the new rate."""
        if isinstance(baud, bool) or baud not in MODULE_BAUDS:
            raise InvalidArgumentError("the baud rate", baud, "a multiple of 9600 from 9600 to 115200")
        self._checked(Command.SET_SYS_PARA, SysParam.BAUD, baud // BAUD_UNIT, what="setting the baud rate")
        time.sleep(0.05)
        self.baud = baud
        self.open()

    def led(self, color: LedColor, mode: LedMode = LedMode.ON, speed: int = 0x80, cycles: int = 0) -> bool:
        """Aura LED on R50x modules (feedback to the user); False on modules without one."""
        if not self.profile.has_led:
            return False
        if color not in set(LedColor):
            raise InvalidArgumentError("the LED colour", color, f"one of {', '.join(c.name for c in LedColor)}")
        if mode not in set(LedMode):
            raise InvalidArgumentError("the LED mode", mode, f"one of {', '.join(m.name for m in LedMode)}")
        speed, cycles = _whole("the LED speed", speed, 0, 255), _whole("the LED cycles", cycles, 0, 255)
        self._checked(Command.AURA_LED, int(mode), speed, int(color), cycles, what="setting the LED")
        return True

    def handshake(self) -> bool:
        return self._call(Command.HANDSHAKE, what="the handshake").ok
