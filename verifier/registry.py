"""The device registry: which certificates belong to which active device.

Authorisation of a request is a lookup of the serial of the certificate the TLS
layer verified. After a renewal the previous certificate stays valid for a grace
period, so requests already running on the device's old connection complete.
"""

from __future__ import annotations

import base64
import hashlib
import sqlite3
import time
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

DEFAULT_GRACE_S = 600.0


class AuthorisationError(Exception):
    """The client certificate does not belong to an active device.

    ``slug`` (a protocol.problems type) and ``fix`` say why in a form the answer
    uses as it is: a revoked device and a renewed certificate need other fixes
    than an unknown one, and the English message is never parsed for them.
    """

    def __init__(self, message: str, slug: str = "device-not-authorised",
                 fix: str = "re-provision the device with a new token (`capture-agent provision --force`)") -> None:
        super().__init__(message)
        self.slug = slug
        self.fix = fix


@dataclass(frozen=True)
class Device:
    device_id: str
    status: str
    serial: str


def spki_sha256(public_key: PublicKeyTypes) -> str:
    """Base64 SHA-256 of a SubjectPublicKeyInfo (the form of an RFC 7469 pin)."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(der).digest()).decode("ascii")


@dataclass
class DeviceRegistry:
    conn: sqlite3.Connection
    grace_s: float = DEFAULT_GRACE_S

    def record_certificate(self, device_id: str, cert: x509.Certificate, supersede: bool) -> None:
        """Register a newly issued certificate (and the device on first issue)."""
        now = time.time()
        self.conn.execute(
            "INSERT OR IGNORE INTO devices (device_id, status, created_at) VALUES (?, 'active', ?)",
            (device_id, now),
        )
        if supersede:
            self.conn.execute(
                "UPDATE certificates SET superseded_at = ? WHERE device_id = ? AND superseded_at IS NULL",
                (now, device_id),
            )
        self.conn.execute(
            "INSERT INTO certificates (serial, device_id, spki_sha256, not_after, issued_at) VALUES (?, ?, ?, ?, ?)",
            (
                format(cert.serial_number, "x"),
                device_id,
                spki_sha256(cert.public_key()),
                cert.not_valid_after_utc.timestamp(),
                now,
            ),
        )

    def authorise(self, cert: x509.Certificate) -> Device:
        """The active device this verified certificate belongs to, or AuthorisationError."""
        serial = format(cert.serial_number, "x")
        row = self.conn.execute(
            "SELECT c.device_id, d.status, c.superseded_at, c.spki_sha256 FROM certificates c "
            "JOIN devices d USING (device_id) WHERE c.serial = ?",
            (serial,),
        ).fetchone()
        if row is None:
            raise AuthorisationError("this client certificate is not registered with the verifier")
        device_id, status, superseded_at, spki = row
        if status != "active":  # a new token for this id is refused too (simpleenroll): only a new id helps
            raise AuthorisationError(
                f"device {device_id} is revoked",
                "device-revoked",
                f"the operator revoked {device_id}, and a token for it is refused too: ask for a token for a new "
                "device id (capture-verifier token new --device NEW-ID), then capture-agent provision --force "
                "--token - with the token on stdin",
            )
        if spki != spki_sha256(cert.public_key()):
            raise AuthorisationError("the certificate's key does not match the registered key")
        if superseded_at is not None and time.time() > superseded_at + self.grace_s:
            raise AuthorisationError(
                "this certificate was replaced by a renewal and its grace period is over; use the new one",
                "certificate-superseded",
                "use the device's newest certificate (the agent switches to it after a renewal; restart it if it "
                "still sends the old one)",
            )
        return Device(device_id, status, serial)

    def is_current(self, serial: str) -> bool:
        """Whether this certificate is the device's newest (not superseded by a renewal)."""
        row = self.conn.execute("SELECT superseded_at FROM certificates WHERE serial = ?", (serial,)).fetchone()
        return row is not None and row[0] is None

    def issued_since(self, device_id: str, since: float) -> list[float]:
        """When the device's certificates issued after ``since`` were issued, oldest first (the renewal rate)."""
        rows = self.conn.execute(
            "SELECT issued_at FROM certificates WHERE device_id = ? AND issued_at > ? ORDER BY issued_at",
            (device_id, since),
        ).fetchall()
        return [float(r[0]) for r in rows]

    def current_spki(self, device_id: str) -> set[str]:
        rows = self.conn.execute("SELECT spki_sha256 FROM certificates WHERE device_id = ?", (device_id,)).fetchall()
        return {r[0] for r in rows}

    def status(self, device_id: str) -> tuple[str, float | None] | None:
        """(status, revoked_at) of a registered device, None for an id that never provisioned.

        The operator's commands ask before acting: a token for a revoked id is refused
        at enrollment whatever it is, and a rule for an id that does not exist is a typo.
        """
        row = self.conn.execute("SELECT status, revoked_at FROM devices WHERE device_id = ?", (device_id,)).fetchone()
        return None if row is None else (str(row[0]), None if row[1] is None else float(row[1]))

    def revoke(self, device_id: str) -> bool:
        return (
            self.conn.execute(
                "UPDATE devices SET status = 'revoked', revoked_at = ? WHERE device_id = ? AND status = 'active'",
                (time.time(), device_id),
            ).rowcount
            == 1
        )

    def revoke_unprovisioned(self, device_id: str) -> None:
        """Record an id that never provisioned as revoked (its token leaked): no certificate is ever issued to it."""
        now = time.time()
        self.conn.execute(
            "INSERT INTO devices (device_id, status, created_at, revoked_at) VALUES (?, 'revoked', ?, ?)",
            (device_id, now, now),
        )

    def list(self) -> list[dict]:
        rows = self.conn.execute(
            "SELECT d.device_id, d.status, COUNT(c.serial), MAX(c.not_after) FROM devices d "
            "LEFT JOIN certificates c USING (device_id) GROUP BY d.device_id ORDER BY d.device_id"
        ).fetchall()
        return [{"device_id": r[0], "status": r[1], "certificates": r[2], "not_after": r[3]} for r in rows]
