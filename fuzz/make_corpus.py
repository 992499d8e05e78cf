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


def _text(value: str, form: int = 0) -> bytes:
    """fuzz.common.Draw.text's bytes for ``value``: form 0 ASCII, 1 UTF-8, 2 UTF-16-LE (bits 4-5: repeated)."""
    raw = value.encode(("ascii", "utf-8", "utf-16-le")[form & 3])
    return bytes([form, len(raw)]) + raw


def _name(oid: int, value: str, form: int = 0, string_type: int = 0) -> bytes:
    """fuzz.x509_parts.name_attribute's bytes: NAME_OIDS index (0 CN, 1 O, 3 C), STRING_TYPES index, the text."""
    return bytes([oid, string_type]) + _text(value, form)


def _est_cert(issuer: int, key: int, starts: int, ends: int, flags: int, serial: int, *names: bytes) -> bytes:
    """One certificate of fuzz/est.py's build mode (its docstring): issuer, key, hash (SHA-256), TIMES indexes, ..."""
    return bytes([issuer, key, 0, starts, ends, flags, serial, len(names)]) + b"".join(names)


def est() -> dict[str, bytes]:
    ca, _, device, bundle = _pki()
    problem = b'{"type":"about:blank#bad-token","title":"Bootstrap token refused","status":401,"detail":"x"}'
    # The build mode (first byte 4): width, breaks, anchor, order, then certificates. TIMES indexes: 0 ten years
    # ago, 1 a day ago, 4 five minutes ago, 9 in a day, 10 in ten years, 12 the last UTCTime, 13 the first
    # GeneralizedTime. Flags: 0x3b a CA (critical basic constraints, key usage, subject key id), 0x7b one with an
    # authority key id too, 0xd1 a device's (not a CA, key usage, authority key id, client auth).
    built = b"\x04"
    root = _est_cert(0, 0x10, 1, 10, 0x3B, 7, _name(0, "site root"), _name(1, "Site"), _name(3, "DE"))
    sub = _est_cert(2, 0x01, 1, 10, 0x7B, 8, _name(0, "verifier CA"))
    leaf = _est_cert(2, 0x00, 4, 9, 0xD1, 9, _name(0, "kiosk-1"))
    return {
        "cacerts": b"\x00" + base64.b64encode(bundle([ca.cert])),
        "enrolled": b"\x00" + base64.encodebytes(bundle([device, ca.cert])),
        "enrolled-der": b"\x02" + bundle([device, ca.cert]),  # the DER itself: fuzz/est.py writes its base64
        "refusal": b"\x01\x00" + b"30\n" + problem,
        # a site root, its subordinate, a device certificate, listed leaf first (bit 5), confirming the root
        "built-chain": built + bytes([64, 0x28, 2, 3, 2, 1, 0]) + root + sub + leaf,
        # an expired self-signed CA and an unrelated current one, each twice, CRLF every 76, sorted as DER's SET OF
        "built-expired-duplicates": built + bytes([76, 1, 0, 4, 0, 0, 1, 1])
        + _est_cert(0, 0x20, 0, 1, 0x3B, 3, _name(0, "old CA")) + _est_cert(0, 0x00, 4, 10, 0x3B, 4, _name(0, "CA")),
        # the test CA confirmed but not in the answer; a certificate it issued, and one of a non-CA issuer
        "built-foreign-anchor": built + bytes([0, 0, 2, 0])
        + _est_cert(1, 0x03, 1, 9, 0xD1, 0, _name(0, "k\u00e9osk", form=1))
        + _est_cert(2, 0x05, 1, 9, 0x01, 1, _name(0, "\u30ad\u30aa\u30b9\u30af", form=2)),
        "built-empty": built + bytes([0, 8, 0, 0]),  # no certificate: an empty bundle, base64 then a line break
        # a root (RSA), a subordinate (Ed25519) signed by nobody's key, the UTCTime/GeneralizedTime edge; listed after
        # a certificate of the root's without basic constraints that is valid only from tomorrow (the enrolled one)
        "built-bad-signature": built + bytes([0, 0x32, 1, 3, 2, 0, 1])
        + _est_cert(0, 0x04, 0, 13, 0x3B, 2, _name(0, "rsa root"))
        + _est_cert(0x82, 0x03, 12, 13, 0x7B, 5, _name(0, "ed25519 sub"), _name(0, "again"))
        + _est_cert(3, 0x02, 9, 10, 0x00, 6, _name(0, "from tomorrow")),
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


def _csr_spec(key: int, *parts: bytes, signer: int = 0, tweak: int = 0, position: int = 0, value: int = 0,
              hashing: int = 0) -> bytes:
    """fuzz/csr.py's build mode (first byte odd): the six header bytes (its docstring), then the parts."""
    return b"\x01" + bytes([key, hashing, signer, tweak, position, value]) + b"".join(parts)


def csr() -> dict[str, bytes]:
    _, request, _, _ = _pki()
    # Parts: a selector byte (bits 0-2 the kind, bit 3 critical), then its bytes; KEY_KINDS: 0 P-256, 1 P-384,
    # 3 Ed25519, 5 RSA-2048.
    cn = b"\x00" + _name(0, "kiosk-1")
    san = b"\x01\x04" + b"\x00" + _text("kiosk.example") + b"\x01" + _text("https://kiosk.example/") + (
        b"\x02\x04\x7f\x00\x00\x01" + b"\x03" + _text("ops@example.org"))
    device = (b"\x0a\x00", b"\x0b\x00\x01", b"\x04\x01\x00")  # basic constraints (not a CA), key usage, client auth
    unknown = b"\x05\x00\x01\x02\x05\x00"  # an unknown extension, not critical, its value a NULL
    return {
        "p256": request,  # raw: the DER itself (it starts with 0x30, an even byte)
        "built-p256": _csr_spec(0, cn, san, *device, unknown),  # accepted, and issued
        "built-p256-ca-critical-unknown": _csr_spec(0, cn, b"\x0a\x30\x03", b"\x0d\x00\x07\x05\x00"),
        "built-p256-other-signer": _csr_spec(0, cn, signer=2),  # another P-256 key signs: no valid signature
        "built-p256-ed25519-signer": _csr_spec(0, cn, signer=3, hashing=1),
        "built-p256-version-3": _csr_spec(0, cn, tweak=8, value=3),
        "built-p256-cut": _csr_spec(0, cn, tweak=11, value=100),  # its first 100 bytes
        "built-p256-unknown-signature-algorithm": _csr_spec(0, cn, tweak=9, value=1),
        "built-p256-point-off-curve": _csr_spec(0, cn, tweak=10, position=3, value=0x40),
        "built-p256-unreadable-san": _csr_spec(0, cn, b"\x05\x02\x02\x01\x02"),  # a SAN of bytes it cannot read
        "built-p256-subject-tag-13": _csr_spec(0, cn, tweak=12, position=36, value=13),  # the CN's string tag: 13
        "built-p256-attributes": _csr_spec(
            0, b"\x20" + _name(0, "\u05e9\u05dc\u05d5\u05dd", form=2), b"\x10" + _name(1, "", string_type=5),
            b"\x06\x00\x02\x02\xff\xfe", b"\x06\x02\x0c\x04\x00\x01\x00\x02"),
        "built-p384": _csr_spec(1, cn, hashing=1),
        "built-ed25519": _csr_spec(3, b"\x00" + _name(0, "\u00e9", form=1)),
        "built-rsa2048-long-subject": _csr_spec(5, b"\x00" + _name(0, "0123456789abcdef", form=0x30), hashing=4),
    }


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
