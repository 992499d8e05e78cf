"""Paths and headers of protocol v1 (DESIGN.md, "Agent ↔ verifier protocol")."""

from __future__ import annotations

import re

CACERTS = "/.well-known/est/cacerts"
SIMPLEENROLL = "/.well-known/est/simpleenroll"
SIMPLEREENROLL = "/.well-known/est/simplereenroll"
HEALTH = "/v1/health"
EVENTS = "/v1/events"
CHALLENGES = "/v1/challenges"
ENROLLMENTS = "/v1/subjects/{id}/enrollments"  # the route's name; a request's path is enrollments_path(id)
VERIFICATIONS = "/v1/verifications"
IDENTIFICATIONS = "/v1/identifications"
SENSOR_ENROLLMENTS = "/v1/sensor/enrollments"  # match-on-sensor: protocol.sensor
SENSOR_VERIFICATIONS = "/v1/sensor/verifications"

IDEMPOTENCY_KEY = "Idempotency-Key"
MAX_IDEMPOTENCY_KEY = 200

# Subject ids, group names and device ids (a certificate's CN) share one shape; always fullmatch
# (`$` would let a trailing newline through).
SUBJECT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# That shape in words, for the fix of every refusal of one (agent CLI and local API, verifier CLI, tokens).
ID_RULE = "1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"
GROUP_NAME = SUBJECT_ID
DEVICE_ID = SUBJECT_ID
_ENROLLMENTS = re.compile(r"/v1/subjects/([^/]+)/enrollments")

OPERATIONS = ("enroll", "verify", "identify")
OPERATION_PATHS = {"verify": VERIFICATIONS, "identify": IDENTIFICATIONS, "enroll": ENROLLMENTS}


def enrollments_path(subject: str) -> str:
    """The enrollment path of one subject; the id must be a subject id (it is part of the signed bytes)."""
    if not SUBJECT_ID.fullmatch(subject):
        raise ValueError(f"{subject!r} is not a subject id: use {ID_RULE}")
    return ENROLLMENTS.replace("{id}", subject)


def enrollment_subject(path: str) -> str | None:
    """The subject of an enrollment path, or None when ``path`` is not one."""
    found = _ENROLLMENTS.fullmatch(path)
    return found.group(1) if found else None
