"""The MJPEG codec's events and errors do not depend on how its bytes are split into reads.

A camera's stream reaches the codec in whatever pieces the socket gives: one read
of a whole megabyte, or a byte at a time from a slow link. Each stream here is fed
whole, a byte at a time, and in splits drawn from fixed seeds; the events, and the
error with the events parsed before it, must be the same every way. The limits are
small, so every bound is met exactly, one byte under and one byte over.
"""

from __future__ import annotations

import random

import pytest

from drivers.camera.mjpeg import MjpegError, MultipartDecoder

PART_LIMIT = 64
HEADER_LIMIT = 80
SEEDS = (7, 11, 23, 101, 2026)


def part(body: bytes, length: int | None = None, delimiter: bytes = b"--frame") -> bytes:
    head = delimiter + b"\r\nContent-Type: image/jpeg\r\n"
    if length is not None:
        head += b"Content-Length: %d\r\n" % length
    return head + b"\r\n" + body + b"\r\n"


def unsized(body: bytes) -> bytes:
    return part(body)


def sized(body: bytes, length: int | None = None) -> bytes:
    return part(body, len(body) if length is None else length)


END = b"--frame\r\n\r\n"  # a last delimiter: what comes before it is whole

STREAMS: dict[str, tuple[bytes, bytes, bool]] = {  # name: (boundary, stream, keep)
    "parts-of-every-kind": (b"frame", b"pre\r\n" + sized(b"a" * 20) + unsized(b"b" * 10) + sized(b"c" * 9, 30)
                            + sized(b"d" * 5) + unsized(b"x--frame y\r\nz--frame") + END, True),
    "passed-over": (b"frame", sized(b"a" * 20) + sized(b"b" * 30) + sized(b"c" * 5, 40) + unsized(b"u" * 12)
                    + sized(b"d" * 7) + b"junk\r\n" + sized(b"e") + END, False),
    "dashed-boundary": (b"--frame", part(b"a" * 10, 10, b"----frame") + part(b"b" * 8, None, b"--frame")
                        + b"----frame\r\n\r\n", True),
    "preamble-at-the-limit": (b"frame", b"j" * (PART_LIMIT - 2) + b"\r\n" + sized(b"a" * 4) + END, True),
    "preamble-one-over": (b"frame", b"j" * (PART_LIMIT - 1) + b"\r\n" + sized(b"a" * 4) + END, True),
    "preamble-no-boundary": (b"frame", b"j" * (PART_LIMIT * 3), True),
    "delimiter-mid-line-in-the-preamble": (b"frame", b"j" * 30 + b"x--frame\r\n\r\nfake\r\n" + sized(b"a" * 4)
                                           + END, True),
    "boundary-line-at-the-limit": (b"frame", b"--frame" + b" " * (HEADER_LIMIT - 8) + b"\r\n\r\n" + b"a" * 3
                                   + b"\r\n" + END, True),
    "boundary-line-one-over": (b"frame", b"--frame" + b" " * (HEADER_LIMIT - 6) + b"\n\r\n" + b"a" * 3
                               + b"\r\n" + END, True),
    "headers-at-the-limit": (b"frame", b"--frame\r\nX: " + b"h" * (HEADER_LIMIT - 3) + b"\r\n\r\nbody\r\n"
                             + END, True),
    "headers-one-over": (b"frame", b"--frame\r\nX: " + b"h" * (HEADER_LIMIT - 2) + b"\r\n\r\nbody\r\n" + END, True),
    "headers-lf-only-at-the-limit": (b"frame", b"--frame\nX: " + b"h" * (HEADER_LIMIT - 3) + b"\n\nbody\n"
                                     + END, True),
    "unsized-body-at-the-limit": (b"frame", unsized(b"b" * PART_LIMIT) + END, True),
    "unsized-body-one-over": (b"frame", unsized(b"b" * (PART_LIMIT + 1)) + END, True),
    "unsized-body-one-over-passed-over": (b"frame", sized(b"a") + unsized(b"b" * (PART_LIMIT + 1)) + END, False),
    "unsized-body-never-ending": (b"frame", sized(b"a" * 3) + b"--frame\r\n\r\n" + b"b" * (PART_LIMIT * 3), True),
    "declared-over-the-limit": (b"frame", sized(b"a") + sized(b"b", PART_LIMIT + 1) + END, True),
    "declared-eleven-digits": (b"frame", sized(b"a") + sized(b"b", 10**10) + END, True),
    "conflicting-lengths": (b"frame", sized(b"a") + b"--frame\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabc"
                            + END, True),
}


def random_splits(data: bytes, seed: int) -> list[bytes]:
    """``data`` in pieces of 1 to 40 bytes, drawn from ``seed`` (the same pieces on every run)."""
    rng = random.Random(seed)
    pieces, at = [], 0
    while at < len(data):
        size = rng.randint(1, 40)
        pieces.append(data[at : at + size])
        at += size
    return pieces


def outcome(boundary: bytes, pieces: list[bytes], keep: bool) -> tuple[list[object], str | None]:
    """Every event, then the error (its type and message) with the events it carries appended first."""
    decoder = MultipartDecoder(boundary, max_part_bytes=PART_LIMIT, max_header_bytes=HEADER_LIMIT)
    decoder.keep = keep
    events: list[object] = []
    for piece in pieces:
        try:
            events += decoder.feed(piece)
        except MjpegError as exc:
            events += exc.events
            return events, f"{type(exc).__name__}: {exc}"
    return events, None


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_events_and_errors_are_the_same_whole_byte_by_byte_and_in_seeded_splits(name: str) -> None:
    boundary, stream, keep = STREAMS[name]
    whole = outcome(boundary, [stream], keep)
    splits = {"bytes": [stream[i : i + 1] for i in range(len(stream))]}
    splits.update({f"seed-{seed}": random_splits(stream, seed) for seed in SEEDS})
    for how, pieces in splits.items():
        assert b"".join(pieces) == stream
        assert outcome(boundary, pieces, keep) == whole, f"{name} fed as {how}"


EXPECTED = {  # what the streams at the limits give, fed whole: each bound is exact
    "parts-of-every-kind": None,
    "passed-over": None,
    "dashed-boundary": None,
    "preamble-at-the-limit": None,
    "preamble-one-over": "NotMultipart",
    "preamble-no-boundary": "NotMultipart",
    "boundary-line-at-the-limit": None,
    "boundary-line-one-over": "HeadersTooLarge",
    "headers-at-the-limit": None,
    "headers-one-over": "HeadersTooLarge",
    "headers-lf-only-at-the-limit": None,
    "unsized-body-at-the-limit": None,
    "unsized-body-one-over": "PartTooLarge",
    "unsized-body-one-over-passed-over": "PartTooLarge",
    "unsized-body-never-ending": "PartTooLarge",
    "declared-over-the-limit": "PartTooLarge",
    "declared-eleven-digits": "PartTooLarge",
    "conflicting-lengths": "ConflictingLength",
    "delimiter-mid-line-in-the-preamble": None,
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_bound_is_met_exactly_and_an_error_carries_the_events_before_it(name: str) -> None:
    boundary, stream, keep = STREAMS[name]
    events, error = outcome(boundary, [stream], keep)
    assert (error.split(":")[0] if error else None) == EXPECTED[name], error
    if EXPECTED[name] == "PartTooLarge" and name != "unsized-body-one-over":
        assert events, "the part before the refused one came out, on the error"
    if name == "delimiter-mid-line-in-the-preamble":
        assert len(events) == 1 and events[0].body == b"a" * 4, "x--frame mid-line began no part"

