"""The simulator speaks the real protocol: an independent client from PyPI drives it unmodified.

`adafruit-circuitpython-fingerprint` was written against real R30x/R50x modules;
on CPython it takes a pyserial port as its UART.
"""

from __future__ import annotations

import time

import adafruit_fingerprint
import pytest
import serial


@pytest.fixture
def client(zfm_sim):
    uart = serial.Serial(zfm_sim.port, 57600, timeout=2)
    try:
        yield adafruit_fingerprint.Adafruit_Fingerprint(uart)  # handshake: VerifyPwd + ReadSysPara
    finally:
        uart.close()


def test_handshake_and_parameters(client, zfm_sim) -> None:
    assert client.library_size == zfm_sim.profile.capacity
    assert client.baudrate * 9600 == 57600
    assert client.data_packet_size == 2  # 128-byte packets


def test_capture_convert_store_search(client, zfm_sim) -> None:
    assert client.get_image() == adafruit_fingerprint.NOFINGER
    zfm_sim.place(finger=1)
    assert client.get_image() == adafruit_fingerprint.OK
    assert client.image_2_tz(1) == adafruit_fingerprint.OK
    assert client.store_model(7, 1) == adafruit_fingerprint.OK
    assert client.count_templates() == adafruit_fingerprint.OK and client.template_count == 1
    assert client.read_templates() == adafruit_fingerprint.OK and client.templates == [7]
    assert client.finger_search() == adafruit_fingerprint.OK and client.finger_id == 7
    assert client.finger_fast_search() == adafruit_fingerprint.OK and client.finger_id == 7
    zfm_sim.place(finger=2)  # another finger is not found
    assert client.get_image() == adafruit_fingerprint.OK and client.image_2_tz(1) == adafruit_fingerprint.OK
    assert client.finger_search() == adafruit_fingerprint.NOTFOUND


def test_template_upload_and_full_image_download(client, zfm_sim) -> None:
    zfm_sim.place(finger=3)
    assert client.get_image() == adafruit_fingerprint.OK
    image = client.get_fpdata("image")
    assert len(image) == zfm_sim.profile.image_bytes == 36_864
    # The bytes are the simulator's image, 4 bits a pixel, high nibble first.
    first = zfm_sim.image.reshape(-1)[:2]
    assert image[0] == (first[0] & 0xF0) | (first[1] >> 4)
    assert client.image_2_tz(1) == adafruit_fingerprint.OK
    template = client.get_fpdata("char", 1)
    assert len(template) == zfm_sim.profile.template_bytes


def test_template_download_and_delete(client, zfm_sim) -> None:
    zfm_sim.place(finger=4)
    client.get_image()
    client.image_2_tz(1)
    template = client.get_fpdata("char", 1)
    assert client.send_fpdata(template, "char", 2)
    deadline = time.monotonic() + 2  # the client does not wait for the module to take the data
    while zfm_sim.chars[1] is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert zfm_sim.chars[1] == bytes(template)
    assert client.store_model(9, 2) == adafruit_fingerprint.OK
    assert client.delete_model(9) == adafruit_fingerprint.OK
    assert client.count_templates() == adafruit_fingerprint.OK and client.template_count == 0
