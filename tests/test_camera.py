"""Cameras through the real cv2.VideoCapture path, reading the MJPEG camera simulator over HTTP."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from drivers.camera.camera import Camera, CameraUnavailable, Frame
from drivers.camera.source import CameraSource, CameraSourceError
from simulators.camera import SimulatedCamera, read_stamp, stamp


def test_stamp_survives_jpeg() -> None:
    frame = np.full((64, 256, 3), 128, np.uint8)
    for seq in (0, 1, 4242, 2**20 - 1):
        _, jpeg = cv2.imencode(".jpg", stamp(frame, seq), [cv2.IMWRITE_JPEG_QUALITY, 70])
        assert read_stamp(cv2.imdecode(jpeg, cv2.IMREAD_COLOR)) == seq


def test_sources_are_parsed_and_credentials_hidden() -> None:
    assert CameraSource.parse("/dev/video2").kind == "v4l2"
    assert CameraSource.parse("0").target == 0
    stream = CameraSource.parse("rtsp://admin:secret@10.0.0.5/stream1")
    assert stream.kind == "stream" and "secret" not in stream.redacted
    with pytest.raises(CameraSourceError, match="/dev/videoN"):
        CameraSource.parse("/dev/ttyUSB0")


@pytest.mark.parametrize(
    ("text", "scheme"),
    [("HTTP://admin:hunter2@127.0.0.1:8080/s.mjpg", "http"), ("Rtsp://admin:hunter2@10.0.0.5/stream1", "rtsp")],
)
def test_a_scheme_in_capitals_is_a_stream_not_a_file_path_showing_its_password(text: str, scheme: str) -> None:
    """Schemes are case-insensitive (RFC 3986): HTTP://... was taken for a file path, and "does not exist"
    then showed it whole, password included."""
    source = CameraSource.parse(text)
    assert (source.kind, source.text.split("://")[0]) == ("stream", scheme)
    assert "hunter2" not in source.redacted and "hunter2" not in repr(source)


@pytest.mark.parametrize("text", ["ftp://admin:hunter2@10.0.0.5/cam", "FILE://admin:hunter2@host/x"])
def test_a_url_of_another_scheme_is_refused_without_its_credentials(text: str) -> None:
    with pytest.raises(CameraSourceError, match=r"neither a V4L2 device, a stream URL nor a file|file:// URL") as no:
        CameraSource.parse(text)
    assert "hunter2" not in str(no.value)


def test_udev_names_of_a_v4l2_node_are_sources_and_other_links_under_dev_are_refused(fake_dev) -> None:
    """Only /dev/videoN was taken under /dev: udev's /dev/v4l/by-id/... (the name that stays with a camera across
    reboots and replugs, where its number may not) was refused as "neither a V4L2 device...". A link is followed to
    check it leads to a V4L2 node; one that leads elsewhere (a disk, outside /dev) is refused as before."""
    from drivers.camera.errors import CameraNodeMissingError

    fake_dev.node("video2")
    fake_dev.node("sda")
    by_id = fake_dev.link("by-id", "usb-Acme_Door_Cam_SN123-video-index0", "video2")
    by_path = fake_dev.link("by-path", "platform-xhci-hcd.0-usb-0:1:1.0-video-index0", "video2")
    for name in (by_id, by_path):
        source = CameraSource.parse(name)
        assert (source.kind, source.node) == ("v4l2", name)
        source.check_present()  # there: the link leads to the node
    to_disk = fake_dev.link("by-id", "usb-Not_A_Camera", "sda")
    outside = fake_dev.link("by-id", "usb-Elsewhere-video-index0", "../elsewhere/video0")
    for refused in (to_disk, outside, f"{fake_dev.root}/v4l/by-id/..", f"{fake_dev.root}/sda"):
        with pytest.raises(CameraSourceError, match="/dev/v4l/by-id"):
            CameraSource.parse(refused)
    # unplugged, its link is gone: a camera that is not there, as a missing /dev/videoN is
    gone = f"{fake_dev.root}/v4l/by-id/usb-Acme_Door_Cam_SN999-video-index0"
    with pytest.raises(CameraNodeMissingError, match=f"the camera {gone} does not exist"):
        CameraSource.parse(gone).open()


def test_a_by_id_link_is_followed_anew_at_each_open_and_rechecked_there(fake_dev) -> None:
    """The link was checked when the config was read, not at open: a camera replugged into another port has its
    link moved by udev (followed), a link that came to lead elsewhere was opened with the V4L2 backend as if it
    were the camera (OpenCV only said it did not open), and one gone is the by-id name missing, not its old node."""
    import os

    from drivers.camera.errors import CameraFault, CameraNodeMissingError, CameraNodeNotDevice
    from drivers.camera.source import CameraLinkElsewhere

    name = "usb-Acme_Door_Cam_SN123-video-index0"
    video2 = fake_dev.node("video2")
    by_id = fake_dev.link("by-id", name, "video2")
    source = CameraSource.parse(by_id)
    assert source.current_node() == video2
    with pytest.raises(CameraNodeNotDevice) as plain:  # a plain file for a node: OpenCV opens none; it is named
        source.open()
    assert plain.value.node == video2 and by_id in plain.value.args[0]  # the node the link led to at this open

    def replug(target: str) -> None:  # udev moves the link to the node the camera has now
        os.remove(by_id)
        fake_dev.link("by-id", name, target)

    os.remove(video2)
    video3 = fake_dev.node("video3")
    replug("video3")
    assert source.current_node() == video3  # the same CameraSource, parsed once: the link read at this open
    source.check_present()
    fake_dev.node("sda")
    replug("sda")
    with pytest.raises(CameraLinkElsewhere) as elsewhere:
        source.open()
    assert isinstance(elsewhere.value, CameraFault) and isinstance(elsewhere.value, CameraSourceError)
    assert by_id in str(elsewhere.value) and "ls -l /dev/v4l/by-id" in elsewhere.value.fix
    with pytest.raises(CameraLinkElsewhere):
        source.check_present()  # doctor's look, which does not open
    replug("video7")  # a link left to a node that is gone
    with pytest.raises(CameraNodeMissingError, match=f"the camera {by_id} does not exist"):
        source.open()
    os.remove(by_id)  # unplugged: udev removed the link
    with pytest.raises(CameraNodeMissingError, match=f"the camera {by_id} does not exist") as gone:
        source.open()
    assert gone.value.path == by_id


def test_a_camera_whose_by_id_link_came_to_lead_elsewhere_has_a_fault_naming_it(fake_dev) -> None:
    """What the daemon's camera meets at its next open: a fault with the fix (audited), not "gives no frame"."""
    import os

    from drivers.camera.source import CameraLinkElsewhere

    fake_dev.node("video2")
    fake_dev.node("ttyUSB0")
    by_id = fake_dev.link("by-id", "usb-Acme_Door_Cam_SN123-video-index0", "video2")
    camera = Camera(by_id, reconnect=False)
    os.remove(by_id)
    fake_dev.link("by-id", "usb-Acme_Door_Cam_SN123-video-index0", "ttyUSB0")
    assert not camera.open_once(timeout_s=5)
    assert isinstance(camera.fault, CameraLinkElsewhere) and by_id in camera.fault.args[0], camera.fault


def test_a_by_id_name_under_the_real_dev_is_taken_and_said_missing_when_absent() -> None:
    """The same, without the stand-in folder: a name no camera here has is a missing camera, not a refused source."""
    from drivers.camera.errors import CameraNodeMissingError

    name = "/dev/v4l/by-id/usb-No_Such_Camera_0000-video-index0"
    assert CameraSource.parse(name).kind == "v4l2"
    with pytest.raises(CameraNodeMissingError):
        CameraSource.parse(name).check_present()


def test_discovery_shows_each_nodes_by_id_name_beside_it(fake_dev) -> None:
    """What an installer copies into the config: the by-id name beside the /dev/videoN node it leads to."""
    from drivers.discovery import cameras

    video0 = fake_dev.node("video0")
    video1 = fake_dev.node("video1")
    by_id = fake_dev.link("by-id", "usb-Acme_Door_Cam_SN123-video-index0", "video0")
    by_path = fake_dev.link("by-path", "pci-0000:00:14.0-usb-0:2:1.0-video-index0", "video0")
    found = {f.path: f for f in cameras(max_index=4)}
    assert set(found) == {video0, video1}
    assert list(found[video0].details.items())[:2] == [("by-id", by_id), ("by-path", by_path)]
    assert "by-id" not in found[video1].details  # a node udev names not (a metadata node): nothing to copy
    (asked,) = [f for f in cameras([by_id], max_index=0)]
    assert asked.path == by_id and asked.description != "not a camera source", asked


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        # FFmpeg takes the userinfo up to the last @ of the host part: the password here is p@ssCAMSECRET
        ("http://camuser:p@ssCAMSECRET@127.0.0.1:8080/stream.mjpg", "http://***@127.0.0.1:8080/stream.mjpg"),
        ("rtsp://admin:pw@ssRTSPSECRET@[fd00::5]:554/live", "rtsp://***@[fd00::5]:554/live"),
        ("rtsps://admin@10.0.0.5/h264", "rtsps://***@10.0.0.5/h264"),
        # cheap IP cameras take the credentials in the query; DVRs in the path
        (
            "http://10.0.0.7/videostream.cgi?user=admin&pwd=QUERYSECRET",
            "http://10.0.0.7/videostream.cgi?user=***&pwd=***",
        ),
        ("http://10.0.0.7/snapshot.cgi?QUERYSECRET", "http://10.0.0.7/snapshot.cgi?***"),
        (
            "rtsp://10.0.0.8:554/user=admin&password=PATHSECRET&channel=1",
            "rtsp://10.0.0.8:554/user=***&password=***&channel=***",
        ),
        ("http://u:FRAGSECRET@10.0.0.9/s.mjpg#FRAGSECRET", "http://***@10.0.0.9/s.mjpg#***"),
        # no credentials: shown as written
        ("http://10.0.0.7:8080/stream.mjpg", "http://10.0.0.7:8080/stream.mjpg"),
        ("/dev/video0", "/dev/video0"),
        ("/srv/clips/door@night.mp4", "/srv/clips/door@night.mp4"),
    ],
)
def test_redacted_hides_every_credential_of_a_stream_url(url: str, shown: str) -> None:
    """Audit 16 F1: an @ in the password left its tail shown; query credentials were shown whole."""
    source = CameraSource.parse(url)
    assert source.redacted == shown
    assert "SECRET" not in repr(source)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        # a password with an unencoded / ? #: urlsplit ends the netloc at it, so its tail was a path, a query...
        ("http://admin:Pa55/w0rdSECRET@127.0.0.1:9/video.mjpg", "http://***@127.0.0.1:9/video.mjpg"),
        ("http://admin:Pa55#w0rdSECRET@127.0.0.1:9/video.mjpg", "http://***"),
        ("http://admin:Pa55?w0rdSECRET@127.0.0.1:9/video.mjpg", "http://***"),
        ("http://adminSECRET/x:Pa55SECRET@127.0.0.1:9/video.mjpg", "http://***@127.0.0.1:9/video.mjpg"),
        ("http://adminSECRET?x:Pa55SECRET@127.0.0.1:9/video.mjpg", "http://***"),
    ],
)
def test_a_password_with_an_unencoded_slash_question_mark_or_hash_is_masked_whole(url: str, shown: str) -> None:
    from drivers.camera.source import redact_url

    assert redact_url(url) == shown
    assert "SECRET" not in redact_url(url)


@pytest.mark.parametrize(
    ("url", "origin"),
    [
        ("http://admin:Pa55/w0rdSECRET@127.0.0.1:9/video.mjpg", "http://127.0.0.1:9"),
        ("http://admin:Pa55#w0rdSECRET@127.0.0.1:9/video.mjpg", "http://***"),
        ("https://admin:Pa55?w0rdSECRET@cam.lan/video.mjpg", "https://***"),
        # a user holding a /: its start reads as a host, the rest as a path sent to it
        ("http://adminSECRET/x:Pa55SECRET@127.0.0.1:9/video.mjpg", "http://127.0.0.1:9"),
        ("http://adminSECRET?x:Pa55SECRET@127.0.0.1:9/video.mjpg", "http://***"),
    ],
)
def test_a_source_whose_credentials_cannot_be_told_from_its_host_is_refused_naming_the_fix(url, origin) -> None:
    from drivers.camera.errors import CameraFault
    from drivers.camera.source import CameraSourceCredentials

    with pytest.raises(CameraSourceCredentials) as caught:
        Camera(url)  # refused before any thread (named after the source) or connection
    assert isinstance(caught.value, CameraFault) and isinstance(caught.value, CameraSourceError)
    assert f"the camera source {origin} " in caught.value.args[0]
    assert "percent-encode / ? # @ : in the camera password" in caught.value.fix
    assert "SECRET" not in str(caught.value) and "admin" not in str(caught.value)
    # the supervisor audits it as a device fault with the fix, and no credential
    from agent.config import DeviceSection
    from agent.devices.supervisor import DeviceSupervisor

    recorded: list = []
    section = DeviceSection(kind="camera", source=url)
    supervisor = DeviceSupervisor([("door", section)], lambda k, d: recorded.append((k, d)))
    assert supervisor.devices == [] and [k for k, _ in recorded] == ["device_fault"]
    assert "percent-encode" in recorded[0][1]["fix"] and "SECRET" not in repr(recorded)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://cam/v.cgi?user=admin&pwd=abSECRET@cdSECRET", "http://cam/v.cgi?user=***&pwd=***"),
        ("http://cam:8080/snap.cgi?email=ops@cams.example&pwd=SECRET", "http://cam:8080/snap.cgi?email=***&pwd=***"),
        ("http://u:pwSECRET@[fd00::5]/v.cgi?pwd=aSECRET@bSECRET", "http://***@[fd00::5]/v.cgi?pwd=***"),
        ("rtsp://10.0.0.8/user=admin&password=aSECRET@bSECRET&channel=1",
         "rtsp://10.0.0.8/user=***&password=***&channel=***"),
    ],
)
def test_an_at_sign_in_a_query_is_data_and_its_value_stays_redacted(url: str, shown: str) -> None:
    """An @ after a well-formed authority is the query's (RFC 3986): refused as a broken userinfo before."""
    source = CameraSource.parse(url)
    assert source.kind == "stream" and source.target == url
    assert source.redacted == shown
    assert "SECRET" not in repr(source)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://127.0.0.1:8080/snap@2x.jpg", "http://127.0.0.1:8080/***"),
        ("http://cam.lan/a/b@c", "http://cam.lan/***/***"),
        ("http://10.0.0.7:8080/a/b@c", "http://10.0.0.7:8080/***/***"),
        ("rtsp://[fd00::5]/live@main/ch1", "rtsp://[fd00::5]/***/ch1"),
        ("http://cam/snapshot.cgi?size@2x", "http://cam/snapshot.cgi?***"),
        ("http://u:pSECRET@cam/snap@2x.jpg", "http://***@cam/***"),
        ("http://localhost:8080/snap@2x.jpg", "http://localhost:8080/***"),
        ("http://[fd00::5]:8080/snap@2x.jpg", "http://[fd00::5]:8080/***"),
    ],
)
def test_an_at_sign_in_the_path_is_the_paths(url: str, shown: str) -> None:
    """RFC 3986: the authority ends at the first / ? #, so a later @ is data, not the end of a userinfo;
    these were refused as a password holding an unencoded /."""
    source = CameraSource.parse(url)
    assert source.kind == "stream" and source.target == url
    assert source.redacted == shown and "SECRET" not in repr(source)


@pytest.mark.parametrize(
    ("url", "origin"),
    [
        # a digits-only password holding a /: as RFC 3986 reads it, host user, port 1234, path /5678@host/...
        ("http://userSECRET:1234/5678@cam.lan/video.mjpg", "http://cam.lan"),
        ("http://userSECRET:1234/5678@cam.lan", "http://cam.lan"),
        ("rtsp://userSECRET:12/34/56@10.0.0.5:554/live", "rtsp://10.0.0.5:554"),
        # a password of digits then letters: the host after the @ has a path, or the "host" is a user's name
        ("http://userSECRET:1234/abSECRET@cam.lan/video.mjpg", "http://cam.lan"),
        ("http://userSECRET:12/abSECRET/cdSECRET@cam.lan", "http://cam.lan"),
        ("http://userSECRET:/pwSECRET@cam.lan", "http://cam.lan"),
        # a dotted user name before the "port": RFC 3986 reads host john.doe; the same text as a dotted camera
        # name, a port and a path @ (cam.lan:8080/snap@2x.jpg), which is refused with it (write that @ as %40)
        ("http://john.doe:12/ab@cam.local", "http://cam.local"),
        ("http://cam.lan:8080/snap@2x.jpg", "http://2x.jpg"),
        # a password holding @ and /: the authority ends at its first @, host "ss"
        ("rtsp://admin:p@ss/w0rd@192.168.1.5:554/live", "rtsp://192.168.1.5:554"),
    ],
)
def test_a_password_with_a_slash_read_as_a_port_is_refused_naming_2f(url: str, origin: str) -> None:
    from drivers.camera.source import CameraSourceCredentials, redact_url

    with pytest.raises(CameraSourceCredentials) as caught:
        CameraSource.parse(url)
    assert f"the camera source {origin} " in caught.value.args[0]
    fix = caught.value.fix
    assert "/ as %2F" in fix and "an @ that belongs to the camera's path is written %40" in fix
    for text in (str(caught.value), redact_url(url)):
        assert "SECRET" not in text and "1234" not in text and "/34" not in text, text


@pytest.mark.parametrize(
    ("url", "pieces"),
    [
        # user john.doe, password 12/ab: was read as host john.doe, port 12, and logged http://john.doe:12/***
        ("http://john.doe:12/ab@cam.local", ["john", "doe", ":12", "12/", "ab@", "/ab"]),
        # password p@ss/w0rd: was read as userinfo admin:p, host ss, and sent there
        ("rtsp://admin:p@ss/w0rd@192.168.1.5:554/live", ["admin", "p@", "@ss", "ss/", "w0rd"]),
    ],
)
def test_a_credential_read_as_a_host_is_refused_and_never_shown(url: str, pieces: list[str]) -> None:
    """Two URLs credentials_unclear let through: a dotted user name (accepted since a single-label user was
    required), and a password with both @ and / (the authority already holding a userinfo, no later @ looked at)."""
    from drivers.camera.source import CameraSourceCredentials, redact_url

    with pytest.raises(CameraSourceCredentials) as caught:
        CameraSource.parse(url)
    assert "/ as %2F" in caught.value.fix and "@ as %40" in caught.value.fix
    for text in (caught.value.args[0], repr(caught.value), redact_url(url)):
        for piece in pieces:
            assert piece not in text, (piece, text)


def test_frames_size_and_only_the_latest(camera_sim) -> None:
    events: list[tuple[str, dict]] = []
    with Camera(camera_sim.url, on_event=lambda kind, data: events.append((kind, data))) as camera:
        first = camera.wait_frame(timeout_s=10)
        assert first.pixels.shape == (240, 320, 3)
        assert camera.info is not None and (camera.info.width, camera.info.height) == (320, 240)
        assert camera.info.backend == "MJPEG"  # read by the driver itself, decoded by OpenCV
        assert events[0][0] == "camera_plugged" and events[0][1]["width"] == 320
        second = camera.wait_frame(after=first.seq, timeout_s=5)
        assert second.seq > first.seq and read_stamp(second.pixels) > read_stamp(first.pixels)
        time.sleep(0.6)  # a slow consumer: 15 frames went by, which a backlog would hand over first
        fresh = camera.wait_frame(after=second.seq, timeout_s=5)
        got = read_stamp(fresh.pixels)
        # The newest frame sent when this one was handed over (frames sent while the test ran on are no backlog).
        sent = {s: camera_sim.sent_at(s) for s in range(got, got + 100)}
        newest_sent = max(s for s, at in sent.items() if at is not None and at <= fresh.received)
        assert newest_sent - got <= 6, "the consumer got a stale frame out of a backlog"


def test_the_camera_logs_key_value_events_with_its_source_redacted(camera_sim, video_file) -> None:
    """drivers/camera/camera.py logged through the standard library with %-formatted sentences, which the agent's
    structlog pipeline (JSON for journald, secrets redacted) never saw. Now structlog events, as every module's."""
    from structlog.testing import capture_logs

    with_credentials = camera_sim.url.replace("http://", "http://camuser:CAMSECRET@")  # the simulator serves it
    with capture_logs() as logs:
        stream = Camera(with_credentials, size=(640, 480), reconnect=False)
        assert stream.open_once(timeout_s=10)
        stream.stop()
        clip = Camera(str(video_file), size=(640, 480), fps=10, reconnect=False)
        assert clip.open_once(timeout_s=10)
        clip.stop()
    shown = camera_sim.url.replace("http://", "http://***@")
    assert {
        "event": "camera_size_not_settable", "source": shown, "asked": "640x480", "log_level": "warning",
        "fix": "set the size on the camera itself (its web page or settings)",
    } in logs, logs
    clip_source = {"source": str(video_file), "log_level": "warning"}
    assert {"event": "camera_size_refused", "asked": "640x480", **clip_source} in logs, logs
    assert {"event": "camera_fps_refused", "asked": 10, **clip_source} in logs, logs
    assert "CAMSECRET" not in repr(logs)


def first_frame_from(camera: Camera, stamped: int, timeout_s: float = 30) -> Frame:
    """The first frame ``camera`` reads whose simulator stamp is ``stamped`` or later (a scene set before it)."""
    deadline = time.monotonic() + timeout_s
    frame = camera.wait_frame(timeout_s=timeout_s)
    while read_stamp(frame.pixels) < stamped:
        assert time.monotonic() < deadline, f"no frame stamped {stamped} or later within {timeout_s} s"
        frame = camera.wait_frame(after=frame.seq, timeout_s=timeout_s)
    return frame


def test_scenes_dark_and_glare(camera_sim, synthetic_print) -> None:
    """Each scene is looked at in the first frame stamped after it was set (a fixed 0.3 s wait for it could be
    outlasted on a loaded machine, and the frame looked at was the scene before)."""
    camera_sim.show(synthetic_print(1).image)
    with Camera(camera_sim.url) as camera:
        normal = first_frame_from(camera, camera_sim.next_seq)
        camera_sim.dark()
        dark = first_frame_from(camera, camera_sim.next_seq)
        camera_sim.glare()
        bright = first_frame_from(camera, camera_sim.next_seq)
    body = (slice(20, None), slice(None))  # below the frame-number bar code
    assert dark.pixels[body].mean() < 30 < normal.pixels[body].mean()
    assert bright.pixels[body].mean() > 200


def test_unplug_and_replug(camera_sim) -> None:
    events: list[str] = []
    plugged_again = threading.Event()

    def on_event(kind: str, data: dict) -> None:
        events.append(kind)
        if kind == "camera_plugged" and events.count("camera_plugged") == 2:
            plugged_again.set()

    with Camera(camera_sim.url, on_event=on_event) as camera:
        before = camera.wait_frame(timeout_s=10)
        camera_sim.unplug()
        with pytest.raises(CameraUnavailable, match="plugged in"):
            camera.wait_frame(after=camera.latest().seq, timeout_s=1.5)
        assert not camera.connected and events == ["camera_plugged", "camera_unplugged"]
        camera_sim.replug()
        assert plugged_again.wait(15), events
        after = camera.wait_frame(after=before.seq, timeout_s=5)
        assert after.pixels.shape == before.pixels.shape and camera.connected


def test_a_stopped_slow_camera_leaves_no_stream_thread_sleeping_out_its_frame_interval() -> None:
    """A camera at its slowest rate (a frame every 10 s), stopped between two frames: its stream ends with the stop
    (it slept out the interval, a thread outliving the test that stopped the camera)."""
    camera = SimulatedCamera(size=(160, 120), fps=0.1).start()
    try:
        with socket.create_connection(("127.0.0.1", camera.port), timeout=10) as client:
            client.sendall(b"GET /stream.mjpg HTTP/1.1\r\nHost: camera\r\n\r\n")
            received = b""
            while b"Content-Length" not in received:  # the first frame's part has begun: the stream waits now
                chunk = client.recv(65536)
                assert chunk, received
                received += chunk
            assert camera.streams == 1
            camera.stop()
            deadline = time.monotonic() + 6  # well short of the 10 s interval the old stream slept out
            while camera.streams and time.monotonic() < deadline:
                time.sleep(0.05)
            assert camera.streams == 0
    finally:
        camera.stop()


def test_simulator_command_line_scripted_on_stdin(tmp_path) -> None:
    folder = tmp_path / "faces"
    folder.mkdir()
    for i, level in enumerate((60, 200)):
        cv2.imwrite(str(folder / f"{i}.png"), np.full((120, 160), level, np.uint8))
    process = subprocess.Popen(
        [sys.executable, "-m", "simulators.cli", "camera", "--size", "160x120", "--fps", "20"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        event = json.loads(process.stdout.readline())
        assert event["event"] == "listening" and event["url"].startswith("http://127.0.0.1:")
        process.stdin.write(f"show {folder}\n")
        process.stdin.flush()
        assert json.loads(process.stdout.readline())["event"] == "show"
        capture = CameraSource.parse(event["url"]).open()
        try:
            means = set()
            for _ in range(6):
                ok, frame = capture.read()
                assert ok and frame.shape == (120, 160, 3)
                means.add(round(frame[20:].mean() / 10))
            assert means >= {6, 20}  # both images of the folder, in turn
            process.stdin.write("unplug\n")
            process.stdin.flush()
            assert json.loads(process.stdout.readline())["plugged"] is False
            deadline = time.monotonic() + 5
            while capture.read()[0]:
                assert time.monotonic() < deadline
        finally:
            capture.release()
    finally:
        process.terminate()
        process.wait(10)


def test_devices_command_lists_the_camera(camera_sim) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "agent.cli", "devices", "--json", "--only-named", "--camera", camera_sim.url],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    found = [f for f in json.loads(out) if f["kind"] == "camera" and f["path"] == camera_sim.url]
    assert found and found[0]["capabilities"] == ["camera"]
    assert (found[0]["details"]["width"], found[0]["details"]["height"]) == (320, 240)
    # read by the agent's own MJPEG reader, as the daemon reads it: not FFmpeg (and its guess of 25 fps)
    assert found[0]["description"] == "camera (MJPEG)", found[0]


def test_a_stream_looked_at_reports_a_rate_only_between_frames(camera_sim) -> None:
    """The rate is measured between the frames read: none from one frame (FFmpeg's 25 was a guess)."""
    from drivers.camera.probe import look_at_stream

    source = CameraSource.parse(camera_sim.url)
    one = look_at_stream(source, frames=1)
    assert (one.backend, one.width, one.height, one.fps) == ("MJPEG", 320, 240, None)
    three = look_at_stream(source, frames=3)
    assert three.fps is not None and three.fps > 0


def test_devices_reads_a_stream_as_the_daemon_does_and_says_what_it_would_refuse(snapshot_camera) -> None:
    """A camera's snapshot URL (one JPEG, no stream) instead of its MJPEG stream: `devices --camera` read it
    through FFmpeg, which takes it, and listed "[ok  ] camera (FFMPEG)", "fps: 25.0"; the daemon's reader refuses
    it as not MJPEG. `devices` now reads it with that reader: the daemon's fault and its fix, and exit 1."""
    from drivers.camera.errors import CameraNotMjpeg

    capture = CameraSource.parse(snapshot_camera).open()  # what the probe used: FFmpeg reads a frame from it
    try:
        assert capture.read()[0]
    finally:
        capture.release()
    daemon = Camera(snapshot_camera, reconnect=False)  # what the daemon meets
    assert not daemon.open_once(timeout_s=10) and isinstance(daemon.fault, CameraNotMjpeg)
    done = subprocess.run(
        [sys.executable, "-m", "agent.cli", "devices", "--json", "--only-named", "--camera", snapshot_camera],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    (found,) = [f for f in json.loads(done.stdout) if f["path"] == snapshot_camera]
    assert found["description"] == f"gives no frame the agent can use: {daemon.fault.args[0]}", found
    assert found["fix"] == daemon.fault.fix and found["capabilities"] == [] and "fps" not in found["details"]


UNSPLITTABLE_URLS = {
    "open-bracket": "http://[",
    "empty-brackets": "http://[]",
    "empty-brackets-and-path": "http://[]/video.mjpg",
    "unclosed-ipv6": "rtsp://[::1/stream1",
    "close-bracket-alone": "http://cam]era/video.mjpg",
    "brackets-around-a-name": "http://[camera]/video.mjpg",
    "bracket-in-a-password": "http://admin:pa[ssSECRET@127.0.0.1/video.mjpg",
    "no-host": "https:///video.mjpg",
}


@pytest.mark.parametrize("case", sorted(UNSPLITTABLE_URLS))
def test_a_url_urllib_cannot_split_is_refused_by_the_source_naming_the_fix(case: str) -> None:
    from drivers.camera.errors import CameraFault
    from drivers.camera.source import CameraSourceUrl

    url = UNSPLITTABLE_URLS[case]
    with pytest.raises(CameraSourceUrl) as refused:
        CameraSource.parse(url)
    assert isinstance(refused.value, CameraSourceError) and isinstance(refused.value, CameraFault)
    assert "IPv6 address in brackets" in refused.value.fix and "(fix: " in str(refused.value)
    assert "SECRET" not in str(refused.value)
    with pytest.raises(CameraSourceUrl):
        Camera(url)  # refused before any thread or connection
    from agent.config import DeviceSection
    from agent.devices.supervisor import DeviceSupervisor

    recorded: list = []
    supervisor = DeviceSupervisor([("door", DeviceSection(kind="camera", source=url))],
                                  lambda k, d: recorded.append((k, d)))
    assert supervisor.devices == [] and [k for k, _ in recorded] == ["device_fault"]
    assert "IPv6 address in brackets" in recorded[0][1]["fix"] and "SECRET" not in repr(recorded)


def test_bracketed_ipv6_sources_are_still_taken() -> None:
    for url in ("http://[::1]:8080/video.mjpg", "rtsp://[fe80::1%25eth0]/stream1", "http://u:p@[::1]/v.mjpg"):
        assert CameraSource.parse(url).kind == "stream"


@pytest.mark.parametrize("url", ["http://[", "http://[]", "http://[]/video.mjpg", "https://[x]/"])
def test_the_mjpeg_reader_turns_a_url_urllib_cannot_split_into_a_camera_fault(url: str) -> None:
    """The reader is handed a URL as it is (a CameraSource made directly skips parse): urlsplit's ValueError
    in open() is a CameraFault naming the fix, not an untyped error in the owner thread."""
    from drivers.camera.errors import CameraFault
    from drivers.camera.stream import MjpegReader

    reader = MjpegReader(url, "http://***", open_timeout_s=1, read_timeout_s=1)
    with pytest.raises(CameraFault) as refused:
        reader.open()
    assert refused.value.fix and "no URL that can be read" in str(refused.value)


SCHEME_LESS = ["admin:s3cret@192.168.1.5:554/stream", "rtsp:/admin:s3cret@cam/x", "rtsp//admin:s3cret@cam/x"]


@pytest.mark.parametrize("text", SCHEME_LESS)
def test_a_stream_url_without_its_scheme_is_refused_masked_not_a_missing_file(text: str) -> None:
    """Read as a file path, ``admin:s3cret@cam/x`` "did not exist": its password went into the message (and so
    the audit, ``devices`` and doctor) with a fix about USB cables."""
    from drivers.camera.source import CameraSourceNoScheme, redact_url

    with pytest.raises(CameraSourceNoScheme) as caught:
        CameraSource.parse(text)
    assert isinstance(caught.value, CameraSourceError)
    assert "rtsp://" in caught.value.fix and "http" in caught.value.fix and "%40" in caught.value.fix
    assert "USB" not in str(caught.value)
    for shown in (str(caught.value), repr(caught.value), caught.value.fix, redact_url(text)):
        assert "s3cret" not in shown and "admin" not in shown, shown
    assert "@cam/" in redact_url(text) or "@192.168.1.5:554/" in redact_url(text)


@pytest.mark.parametrize("text", ["./clips/a@b.mp4", "/var/lib/x/rec@2.mkv", "video.mp4", "clips/door@night.mp4"])
def test_a_file_name_with_an_at_sign_is_still_a_file(text: str) -> None:
    source = CameraSource.parse(text)
    assert source.kind == "file" and source.redacted == text


# user@host with no scheme (the user is the credential here), mistyped schemes included
SCHEME_LESS_USER = ["s3cret@cam/x", "s3cret@cam.lan/stream", "s3cret@192.168.1.5:554/stream1", "rtsp//s3cret@cam/x",
                    "HTTP//s3cret@10.0.0.5/video.mjpg", "s3cret@cam"]


@pytest.mark.parametrize("text", SCHEME_LESS_USER)
def test_a_stream_url_with_a_user_and_no_scheme_naming_no_file_is_refused_masked(text: str, tmp_path,
                                                                                 monkeypatch) -> None:
    """``admin@cam.lan/stream`` (a user, no password, no scheme) was read as a file path: "the camera
    s3cret@cam/x does not exist", the user in the audit, ``devices`` and doctor, with a fix about USB cables."""
    from drivers.camera.source import CameraSourceNoScheme, redact_url

    monkeypatch.chdir(tmp_path)  # where a relative file path would be looked for: nothing here
    with pytest.raises(CameraSourceNoScheme) as caught:
        CameraSource.parse(text)
    assert "no file of that name exists" in str(caught.value) and "rtsp://" in caught.value.fix
    assert "USB" not in str(caught.value)
    for shown in (str(caught.value), repr(caught.value), redact_url(text)):
        assert "s3cret" not in shown and "***@" in shown, shown


@pytest.mark.parametrize("text", [" s3cret@cam/x", "s3cret@cam.lan/stream\n", "\ts3cret@cam"])
def test_a_user_at_a_host_with_spaces_around_is_masked_where_the_raw_source_is_shown(text: str, tmp_path,
                                                                                      monkeypatch) -> None:
    """Parsing strips the source, and refuses `` s3cret@cam/x`` masked; `devices --camera` names a finding by the
    text as given (``camera_shown``), which showed it whole, the user in the clear."""
    from drivers.camera.source import CameraSourceNoScheme
    from drivers.discovery import camera_shown

    monkeypatch.chdir(tmp_path)
    with pytest.raises(CameraSourceNoScheme):
        CameraSource.parse(text)
    assert "s3cret" not in camera_shown(text) and "***@cam" in camera_shown(text), camera_shown(text)


@pytest.mark.parametrize("name", ["door@cam.lan/x.avi", "rec@2.avi", "admin@cam", "ops@corp.example@cam/x.avi"])
def test_an_existing_file_named_like_a_user_at_a_host_still_opens(name: str, video_file, tmp_path,
                                                                   monkeypatch) -> None:
    """The shape is a file name's too: a file that is there is opened as one, shown as written."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    video_file.rename(tmp_path / name)
    source = CameraSource.parse(name)
    assert (source.kind, source.redacted) == ("file", name)
    capture = source.open()
    try:
        ok, frame = capture.read()
        assert ok and frame.shape[:2] == (48, 64)
    finally:
        capture.release()


def test_a_stream_url_without_its_scheme_reaches_no_audit_devices_or_doctor_with_its_password(tmp_path) -> None:
    """The three places the "does not exist" message went: the daemon's device_fault audit record (sent to the
    verifier), ``capture-agent devices --camera`` findings, doctor. A user with no password is a credential too."""
    from agent.config import DeviceSection, parse_config
    from agent.devices.supervisor import DeviceSupervisor
    from agent.doctor import run_doctor

    for text in [*SCHEME_LESS, "s3cret@cam.lan/stream", "ops@s3cret.example@10.0.0.5/stream"]:
        recorded: list = []
        supervisor = DeviceSupervisor([("door", DeviceSection(kind="camera", source=text))],
                                      lambda k, d, add=recorded.append: add((k, d)))
        assert supervisor.devices == [] and [k for k, _ in recorded] == ["device_fault"], recorded
        assert "rtsp://" in recorded[0][1]["fix"] and "s3cret" not in repr(recorded), recorded
        for extra in ((), ("--json",)):
            done = subprocess.run(
                [sys.executable, "-m", "agent.cli", "devices", "--only-named", "--camera", text, *extra],
                capture_output=True, text=True, timeout=90,
            )
            assert done.returncode == 1, done.stdout + done.stderr
            assert "Traceback" not in done.stderr and "s3cret" not in done.stdout + done.stderr, done.stdout
            assert "rtsp://" in done.stdout and "***@" in done.stdout and "USB cable" not in done.stdout, done.stdout
        config = parse_config(
            {
                "agent": {"state_dir": str(tmp_path / "empty")},
                "keyring": {"backend": "file-insecure-dev"},
                "device": [{"kind": "camera", "name": "door", "source": text}],
            },
            source="agent.toml",
        )
        report = run_doctor(config)
        door = next(check for check in report.checks if check.name == "device door")
        assert door.ok is False and "rtsp://" in door.fix and "USB" not in door.fix, door
        assert "s3cret" not in repr(report), door


# a user holding an unencoded @ (an e-mail address), no password, no scheme
SCHEME_LESS_AT_USER = ["s3cret@example.com@cam/x", "ops@s3cret.example@10.0.0.5/stream",
                       "s3cret@example.com@cam.lan:554/stream", "rtsp//s3cret@example.com@cam/x", "s3cret@corp@cam"]


@pytest.mark.parametrize("text", SCHEME_LESS_AT_USER)
def test_a_user_holding_an_at_sign_with_no_scheme_is_refused_masked_not_a_missing_file(text: str, tmp_path,
                                                                                       monkeypatch) -> None:
    """``john@example.com@cam/x``: the user@host check took a user with no @ only, so this was a file that "does
    not exist", the user name in the message (audit, ``devices``, doctor). Refused as ``admin@cam/x`` is."""
    from drivers.camera.source import CameraSourceNoScheme, redact_url
    from drivers.discovery import camera_shown

    monkeypatch.chdir(tmp_path)  # where a relative file path would be looked for: nothing here
    with pytest.raises(CameraSourceNoScheme) as caught:
        CameraSource.parse(text)
    assert "no file of that name exists" in str(caught.value) and "rtsp://" in caught.value.fix
    host = text.rpartition("@")[2].split("/")[0]
    for shown in (str(caught.value), repr(caught.value), redact_url(text), camera_shown(text)):
        assert "s3cret" not in shown and f"***@{host}" in shown, shown


def test_a_file_named_like_a_user_holding_an_at_sign_at_a_host_is_a_file_when_there(tmp_path, monkeypatch) -> None:
    """Existence decides, as for ``admin@cam/x``: a file of that name there is opened as one."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ops@corp.example@cam").mkdir()
    (tmp_path / "ops@corp.example@cam" / "x").write_bytes(b"")
    source = CameraSource.parse("ops@corp.example@cam/x")
    assert (source.kind, source.redacted) == ("file", "ops@corp.example@cam/x")


@pytest.mark.parametrize("scheme", ["http", "https", "rtsp", "rtsps", "HTTP"])
def test_a_user_holding_an_at_sign_in_a_stream_url_is_masked_everywhere_it_is_shown(scheme: str) -> None:
    """``http://john@example.com@cam/x`` logs in as ``john@example.com`` (the userinfo ends at the last @ before
    the path): all of it is masked, not only what precedes its first @."""
    from drivers.camera.source import redact_url
    from drivers.discovery import camera_shown

    text = f"{scheme}://s3cret@example.com@cam:554/x"
    source = CameraSource.parse(text)
    assert source.kind == "stream" and source.redacted == f"{scheme.lower()}://***@cam:554/x"
    for shown in (source.redacted, repr(source), redact_url(text), camera_shown(text)):
        assert "s3cret" not in shown and "example.com" not in shown, shown


def test_a_stream_whose_user_holds_an_at_sign_is_logged_and_listed_without_it(camera_sim) -> None:
    """The daemon's events and ``devices --camera`` show a real stream read with such a user masked."""
    from structlog.testing import capture_logs

    text = camera_sim.url.replace("http://", "http://s3cret@example.com@")  # the simulator serves it
    with capture_logs() as logs:
        stream = Camera(text, size=(640, 480), reconnect=False)
        assert stream.open_once(timeout_s=10)
        stream.stop()
    shown = camera_sim.url.replace("http://", "http://***@")
    assert any(log.get("source") == shown for log in logs), logs
    assert "s3cret" not in repr(logs) and "example.com" not in repr(logs), logs
    done = subprocess.run([sys.executable, "-m", "agent.cli", "devices", "--json", "--only-named", "--camera", text],
                          capture_output=True, text=True, timeout=60)
    assert "Traceback" not in done.stderr and shown in done.stdout, done.stdout + done.stderr
    assert "s3cret" not in done.stdout + done.stderr and "example.com" not in done.stdout + done.stderr


# a video file's name with an @ and no folder: what follows the last @ ends with a video extension, no path after
VIDEO_NAMES_WITH_AT = ["video@1080p.mp4", "rec@2.avi", "door@night.MKV", "clip@x.mov", "cam@2x.mjpg", "a@b@c.mjpeg",
                       "clips/door@2x.avi"]


@pytest.mark.parametrize("name", VIDEO_NAMES_WITH_AT)
def test_a_missing_video_file_named_with_an_at_sign_is_a_file_retried_not_refused(name: str, video_file, tmp_path,
                                                                                    monkeypatch) -> None:
    """``video@1080p.mp4`` named no file there was, so it was refused when the config was read, as a
    ``user@host`` missing its scheme; before, a missing file was taken and retried by the camera's reopen loop
    (a recording on a share mounted later). A file again: said missing as any file, then opened once there."""
    from drivers.camera.errors import CameraNodeMissingError

    monkeypatch.chdir(tmp_path)
    source = CameraSource.parse(name)
    assert (source.kind, source.redacted) == ("file", name)
    with pytest.raises(CameraNodeMissingError, match=f"the video file {re.escape(name)} does not exist"):
        source.check_present()
    camera = Camera(name, reconnect=False)  # the reader's open, as each retry of the reopen loop does it
    assert not camera.open_once(timeout_s=5) and isinstance(camera.open_error, CameraNodeMissingError)
    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    video_file.rename(tmp_path / name)  # the share is mounted
    capture = source.open()
    try:
        assert capture.read()[0]
    finally:
        capture.release()


@pytest.mark.parametrize("text", ["s3cret@cam.mp4/stream", "s3cret@10.0.0.5/x.mp4", "rtsp//s3cret@clip.mp4",
                                  "s3cret@cam.mp4:554", "s3cret@example.com@cam.lan/video.avi",
                                  "s3cret@cam.mp4?channel=1"])
def test_a_host_followed_by_a_path_stays_a_url_missing_its_scheme_whatever_its_extension(text: str, tmp_path,
                                                                                         monkeypatch) -> None:
    """The video-file reading is for a name with nothing after its extension: a host followed by a path (or a
    port, a query, a mistyped scheme in front) is a camera's URL, refused masked when no such file is there."""
    from drivers.camera.source import CameraSourceNoScheme

    monkeypatch.chdir(tmp_path)
    with pytest.raises(CameraSourceNoScheme) as caught:
        CameraSource.parse(text)
    assert "s3cret" not in str(caught.value) and "***@" in str(caught.value), caught.value


@pytest.mark.parametrize("written", ["", "   ", "\t"])
def test_an_empty_source_is_refused_naming_what_to_write(written: str, tmp_path) -> None:
    """The config takes ``source = "   "`` (it is not empty): the driver said "camera source '' is neither a V4L2
    device, a stream URL nor a file", with no fix, and doctor's fix was "correct source"."""
    from agent.config import parse_config
    from agent.doctor import run_doctor
    from drivers.camera.source import CameraSourceEmpty
    from drivers.discovery import cameras

    with pytest.raises(CameraSourceEmpty) as caught:
        CameraSource.parse(written)
    error = caught.value
    assert isinstance(error, CameraSourceError) and error.args[0].startswith("the camera source is empty")
    assert "/dev/v4l/by-id" in error.fix and "rtsp://" in error.fix and "video file" in error.fix
    if written.strip() != written:  # config refuses an empty source itself; white space reaches the driver
        config = parse_config({"agent": {"state_dir": str(tmp_path / "none")}, "verifier": {"url": "https://127.0.0.1:9"},
                               "keyring": {"backend": "file-insecure-dev"}, "network": {"retries": 0},
                               "device": [{"kind": "camera", "name": "rig", "source": written}]})
        line = next(c for c in run_doctor(config).checks if c.name == "device rig")
        assert line.ok is False and line.detail == f"camera: {error.args[0]}" and line.fix.startswith(error.fix)
    found = cameras([written], max_index=0)[-1]  # `capture-agent devices --camera "  "`
    assert error.args[0] in found.description and found.fix == error.fix, found


@pytest.mark.parametrize("text", ["-1", " -2 "])
def test_a_negative_index_is_refused_not_a_missing_video_file(text: str, tmp_path, monkeypatch) -> None:
    """``-1`` (OpenCV's first camera found) was read as a video file named -1 that "does not exist", its fix
    running `ls -l -1`."""
    from drivers.camera.source import CameraSourceNegativeIndex

    monkeypatch.chdir(tmp_path)
    (tmp_path / text.strip()).touch()  # even with such a file here: a number is no file name
    with pytest.raises(CameraSourceNegativeIndex) as caught:
        CameraSource.parse(text)
    assert caught.value.args[0].startswith(f"the camera source {text.strip()} is a negative number")
    assert "/dev/videoN or just N" in caught.value.fix and "ls -l -" not in caught.value.fix


def test_a_file_or_a_folder_where_a_video_node_should_be_is_named_with_its_removal(fake_dev) -> None:
    """A tool given /dev/video0 as its output (no v4l2loopback) leaves a plain file there, and the camera's node
    can never appear: OpenCV only said it did not open, and the daemon, `devices` said "gives no frame"."""
    from drivers.camera.errors import CameraFault, CameraNodeNotDevice
    from drivers.discovery import cameras

    video0 = fake_dev.node("video0")
    Path(video0).write_bytes(b"\x00" * 4096)  # what an encoder wrote there
    video1 = fake_dev.root / "video1"
    video1.mkdir()
    for node, what in ((video0, "a regular file of 4096 bytes"), (str(video1), "a folder")):
        with pytest.raises(CameraNodeNotDevice) as caught:
            CameraSource.parse(node).open()
        assert caught.value.args[0].startswith(f"the camera node {node} is {what}, not a device node"), caught.value
        assert f"`rm -r {node}`" in caught.value.fix and "udevadm trigger" in caught.value.fix
        camera = Camera(node, reconnect=False)
        try:
            assert not camera.open_once(timeout_s=5)
            assert isinstance(camera.fault, CameraFault) and camera.fault.args[0] == caught.value.args[0]
        finally:
            camera.stop()
    found = {f.path: f for f in cameras(max_index=4)}  # `capture-agent devices` lists /dev/video*
    assert "a regular file of 4096 bytes" in found[video0].description and "rm -r" in found[video0].fix
    assert "a folder" in found[str(video1)].description, found[str(video1)]


@pytest.mark.parametrize(("text", "path"), [("file:///srv/rig/clip.mp4", "/srv/rig/clip.mp4"),
                                            ("FILE:///srv/rig/my%20clip.avi", "/srv/rig/my clip.avi"),
                                            ("file://localhost/srv/rig/clip.mp4", "/srv/rig/clip.mp4")])
def test_a_video_file_written_as_a_file_url_is_refused_naming_its_path(text: str, path: str) -> None:
    """It was "neither a V4L2 device, a stream URL nor a file", naming no fix, for what is a file."""
    from drivers.camera.source import CameraSourceFileUrl

    with pytest.raises(CameraSourceFileUrl) as caught:
        CameraSource.parse(text)
    assert caught.value.args[0].endswith("is a file:// URL: the agent takes a video file by its path")
    assert caught.value.fix == f"write the file's path itself: source = {path!r}"


def test_a_file_url_of_another_host_names_no_path_of_its_own() -> None:
    """file://HOST/x is a file on HOST: its path here would be another file, or none."""
    from drivers.camera.source import CameraSourceFileUrl

    with pytest.raises(CameraSourceFileUrl) as caught:
        CameraSource.parse("file://admin:hunter2@nas/x.mp4")
    assert caught.value.fix == "write the video file's absolute path" and "hunter2" not in str(caught.value)


def test_a_wait_ends_once_the_camera_has_stopped_for_good_not_at_its_timeout(video_file) -> None:
    """A wait went on to its whole timeout after the owner thread had ended (a clip played out, a stream whose
    connection ended on a camera the supervisor reopens): a session learnt its camera had gone only then."""
    camera = Camera(str(video_file), reconnect=False)
    try:
        assert camera.open_once(timeout_s=10)
        for _ in range(1200):  # until the clip has played out and its owner thread ended
            if not camera.owner_alive:
                break
            threading.Event().wait(0.05)
        assert not camera.owner_alive and not camera.connected
        last = camera.latest()
        assert last is not None
        outcome: list[object] = []

        def wait() -> None:
            try:
                outcome.append(camera.wait_frame(after=last.seq, timeout_s=3600))
            except Exception as exc:  # what the wait raised is the outcome under test
                outcome.append(exc)

        thread = threading.Thread(target=wait, daemon=True)
        thread.start()
        thread.join(60)  # a bound on a hang only: the wait ends at once
        assert not thread.is_alive(), "the wait outlived the camera by its whole timeout"
        (raised,) = outcome
        assert isinstance(raised, CameraUnavailable) and "stopped giving frames" in str(raised)
        assert "plugged in" in raised.fix
    finally:
        camera.stop()


@pytest.mark.parametrize(
    "image",
    [np.zeros((100, 100, 2), np.uint8), np.zeros((100, 100), np.float32), np.zeros((100, 100), np.uint16),
     np.zeros((0, 100, 3), np.uint8), [[0, 1], [2, 3]]],
)
def test_the_simulator_refuses_an_image_that_is_no_frame_and_keeps_serving_its_scene(camera_sim, image) -> None:
    """A two-channel image was taken, and every stream then died on its first frame with OpenCV's traceback on
    stderr (a camera that opened and sent nothing); a float image was served black."""
    from simulators.errors import SimulatorError

    with pytest.raises(SimulatorError, match="is no camera frame") as refused:
        camera_sim.show(image)
    assert "8-bit grey" in refused.value.fix
    camera_sim.show(np.full((100, 100, 4), 200, np.uint8))  # BGRA is a frame: served as BGR
    camera = Camera(camera_sim.url, reconnect=False)
    try:
        assert camera.open_once(timeout_s=10), (camera.fault, camera.open_error)
        frame = camera.wait_frame(after=camera.latest().seq, timeout_s=10)
        assert frame.pixels.shape == (240, 320, 3) and abs(float(frame.pixels[20:].mean()) - 200) < 5
    finally:
        camera.stop()
