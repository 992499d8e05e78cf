"""Write the seed inputs of every harness (``fuzz/corpus/<harness>/seed-*``) from what the project itself makes.

Seeds are valid examples (a record the encoder wrote, the README's config, a CA
bundle as the verifier's EST answers it, ...) plus a few near misses, so the
fuzzer starts from inside each format instead of guessing its magic bytes. The
corpus stays small (a few KB per harness): ``python -m fuzz.make_corpus``
rewrites the seeds and leaves every other file in the corpus (a finding added by
hand, see fuzz/README.md) alone. Keys and certificates are made fresh here and
only their public parts are written.
"""

from __future__ import annotations

import base64
import math
import re
import sys
from collections.abc import Callable

from fuzz.common import CORPUS, ROOT

SPLITS = bytes([0, 2, 6, 254])  # split lengths 1, 3, 7, 255: a header cut in two, then most of a packet


def wire() -> dict[str, bytes]:
    from protocol.messages import Challenge, Decision
    from protocol.wire import canonical_json

    return {
        "challenge": canonical_json(Challenge("bm9uY2U", "2026-01-01T00:00:00Z", 60.0).json()),
        "nested": b'{"a":[1,-2.5e3,"x\\u00e9\\ud83d\\ude00",null,true,false,{"b":[]}]}',
        "decision": canonical_json(Decision("alice", "accept", 0.9, 0.5, None, None, "finger").public()),
    }


def _template(with_field: bool):
    import numpy as np

    from biometrics.fingerprint.types import FingerprintTemplate, Minutiae, OrientationField

    count = 12
    steps = np.arange(count, dtype=np.float32)
    minutiae = Minutiae(
        x=20 + steps * 15, y=30 + steps * 11, angle=steps * 0.5, kind=(steps % 2 + 1).astype(np.uint8),
        quality=np.full(count, 60, np.uint8),
    )
    field = None
    if with_field:
        field = OrientationField(16, np.arange(80, dtype=np.uint8).reshape(8, 10), np.full((8, 10), 200, np.uint8))
    return FingerprintTemplate(256, 288, 500, minutiae, quality=70, finger_position=2, orientation=field)


def fingerprint_template() -> dict[str, bytes]:
    from biometrics.fingerprint.iso19794_2 import encode

    return {
        "with-field": encode(_template(True)),
        "two-views": encode([_template(True), _template(False)]),
    }


def face_template() -> dict[str, bytes]:
    from protocol.face_template import MODELS, encode

    (model, dim), = MODELS.items()
    unit = [1.0 / math.sqrt(dim)] * dim
    return {"record": encode(model, unit), "liveness": b'{"steps":["turn_left","blink"],"result":"passed"}'}


def zfm() -> dict[str, bytes]:
    from drivers.zfm.codec import command, data_packets, encode_packet
    from drivers.zfm.constants import Command, PacketType

    ack_params = encode_packet(PacketType.ACK, bytes([0]) + bytes.fromhex("0000 0000 012c 0003 ffffffff 0002 0006"))
    return {
        "replies": SPLITS + ack_params + encode_packet(PacketType.ACK, bytes([0, 0, 5, 0, 80]))
        + encode_packet(PacketType.ACK, bytes([0]) + bytes(32)) + data_packets(bytes(range(200)), 64),
        "noise": SPLITS + b"\x55\x00\xef" + command(Command.GEN_IMG) + encode_packet(PacketType.ACK, b"\x01")[:-1]
        + b"\xff" + command(Command.SEARCH, 1, b"\x00\x00\x00\x64"),
    }


def _jpeg(width: int = 16, height: int = 8) -> bytes:
    import cv2
    import numpy as np

    ok, data = cv2.imencode(".jpg", np.full((height, width, 3), 90, np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 50])
    assert ok
    return data.tobytes()


def _parts(boundary: bytes, lengths: bool = True) -> bytes:
    jpeg = _jpeg()
    out = b""
    for _ in range(2):
        out += b"--" + boundary + b"\r\nContent-Type: image/jpeg\r\n"
        if lengths:
            out += b"Content-Length: %d\r\n" % len(jpeg)
        out += b"\r\n" + jpeg + b"\r\n"
    return out


def mjpeg() -> dict[str, bytes]:
    head = b"multipart/x-mixed-replace; boundary=frame\n"
    return {
        "lengths": SPLITS + head + _parts(b"frame"),
        "dashes": SPLITS + b'multipart/x-mixed-replace;boundary="--myboundary"\n' + _parts(b"--myboundary"),
    }


def _chunk(data: bytes, size: int = 40) -> bytes:
    out = b""
    for at in range(0, len(data), size):
        piece = data[at : at + size]
        out += b"%x\r\n" % len(piece) + piece + b"\r\n"
    return out + b"0\r\n\r\n"


def chunked() -> dict[str, bytes]:
    # fuzz/chunked.py's layout: split lengths, a mode byte (low bit 0: the raw stream; 1: chunks it frames itself;
    # the high bits a smaller max_line), then the stream or the chunks as flags, length, data.
    raw, built = b"\x00", b"\x01"
    body = _chunk(b"abcd" * 20)[: -len(b"0\r\n\r\n")]  # the data chunks; each seed ends the stream its own way
    return {
        "stream": SPLITS + raw + body + b'4;ext=1\r\nabcd\r\nA ; a="b;c"\r\n0123456789\r\n0\r\nX-A: b\r\n\r\n',
        "bare-lf": SPLITS + raw + b"3\nabc\n0000000000000003\t\nxyz\n0;last\nT: 1\nU: 2\n\n",
        "bad-size": SPLITS + raw + body + b"5\r\nabcdefgh\r\n0\r\n\r\n",
        "no-hex": SPLITS + raw + b"4\r\nabcd\r\n0x4\r\nabcd\r\n0\r\n\r\n",
        "long-line": SPLITS + b"\x10" + b"4;" + b"e" * 40 + b"\r\nabcd\r\n0\r\n\r\n",  # max_line 32
        "built": SPLITS + built + b"\x00\x04abcd\x14\x03xyz\x98\x05hello\x0c\x02hi\x00\x00X-A: b\r\n",
        "built-bad-sizes": SPLITS + built + b"\x02\x04abcd\x03\x04abcd\x48\x01z\x00\x00",
        "built-long-trailer": SPLITS + built + b"\x00\x02ab\x60\x00X-Long-Trailer-Field: 0123456789\r\n",  # x512
    }


def camera_http() -> dict[str, bytes]:
    ok = b"HTTP/1.0 200 OK\r\nContent-Type: multipart/x-mixed-replace; boundary=frame\r\n"
    return {
        "ok": ok + b"\r\n" + _parts(b"frame"),
        "digest": b'HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Digest realm="cam", nonce="abc123", '
        b'qop="auth", algorithm=SHA-256\r\nWWW-Authenticate: Basic realm="cam"\r\n\r\n',
        "url-stream": b"URL:http://user:p%40ss@127.0.0.1:{port}/stream.mjpg?user=a&pwd=b",
    }


def config() -> dict[str, bytes]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Configuration") :]
    example = re.search(r"```toml\n(.*?)```", section, re.S)
    assert example is not None, "README.md's Configuration section has no toml example"
    return {"readme": example.group(1).encode()}


def _pki():
    from cryptography.hazmat.primitives.serialization import Encoding, pkcs7

    from agent.identity import build_csr, generate_key
    from verifier.pki import CertificateAuthority

    ca = CertificateAuthority.create()
    csr = build_csr(generate_key(), "seed-device")
    device = ca.issue_device_certificate(csr, "seed-device", 30)
    return ca, csr, device, lambda certs: pkcs7.serialize_certificates(certs, Encoding.DER)


def est() -> dict[str, bytes]:
    ca, _, device, bundle = _pki()
    problem = b'{"type":"about:blank#bad-token","title":"Bootstrap token refused","status":401,"detail":"x"}'
    return {
        "cacerts": b"\x00" + base64.b64encode(bundle([ca.cert])),
        "enrolled": b"\x00" + base64.encodebytes(bundle([device, ca.cert])),
        "enrolled-der": b"\x02" + bundle([device, ca.cert]),  # the DER itself: fuzz/est.py writes its base64
        "refusal": b"\x01\x00" + b"30\n" + problem,
    }


def agent_answers() -> dict[str, bytes]:
    from protocol.messages import Identification
    from protocol.wire import canonical_json

    decision = {"subject": "alice", "decision": "accept", "score": 0.9, "threshold": 0.5, "token": "dG9r",
                "expires_in": 300, "modality": "finger"}
    sensor = {"subject": "alice", "group": "default", "reader": {"driver": "virtual_device", "device": "usb0"}}
    step_up = {"type": "https://capture-agent.invalid/problems/insufficient-user-authentication", "status": 401,
               "title": "Another factor needed", "step_up": "s1", "acr_values": "face", "reasons": ["first-use"]}
    return {
        "decision": b"\x01" + canonical_json(decision),
        "identification": b"\x02" + canonical_json(Identification([], 0.5).json()),
        "sensor": b"\x04" + canonical_json(sensor),
        "step-up": b"\x06\x01" + b"5\n" + canonical_json(step_up),
    }


def localapi() -> dict[str, bytes]:
    body = b'{"operation":"enroll","subject":"alice","captures":3,"fingers":2,"modality":"finger"}'
    return {
        "health": b"GET /health HTTP/1.1\r\nHost: kiosk\r\n\r\n",
        "enroll": b"POST /sessions HTTP/1.1\r\nHost: kiosk\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body) + body,
    }


def csr() -> dict[str, bytes]:
    _, request, _, _ = _pki()
    return {"p256": request}


def simulator_lines() -> dict[str, bytes]:
    return {
        "zfm": b"\x00place 1 1\nlift\npace on\npace off\nplace 2\nlist\nplace 3 1\nunplug\nreplug\n",
        "camera": b"\x01fps 30\nnothing\ndark\nglare\nfps 0\nstill /nonexistent.png\nunplug\n",
    }


MAKERS: dict[str, Callable[[], dict[str, bytes]]] = {
    "wire": wire, "fingerprint_template": fingerprint_template, "face_template": face_template, "zfm": zfm,
    "mjpeg": mjpeg, "chunked": chunked, "camera_http": camera_http, "config": config, "est": est,
    "agent_answers": agent_answers, "localapi": localapi, "csr": csr, "simulator_lines": simulator_lines,
}


def main(argv: list[str] | None = None) -> int:
    """Write the seeds of the harnesses named (all by default); print what was written."""
    names = (argv if argv is not None else sys.argv[1:]) or list(MAKERS)
    for name in names:
        folder = CORPUS / name
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("seed-*"):
            old.unlink()
        for label, data in MAKERS[name]().items():
            (folder / f"seed-{label}").write_bytes(data)
            print(f"{folder.relative_to(ROOT)}/seed-{label}: {len(data)} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
