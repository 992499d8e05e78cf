"""Identical failures in a row are counted, not recorded one by one (agent.repeats), with an injected clock."""

from __future__ import annotations

import datetime as dt

import pytest

from agent.repeats import RepeatCoalescer

START = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
EXPIRED = {"url": "https://verifier:8443", "reason": "the device certificate expired"}
REVOKED = {"url": "https://verifier:8443", "reason": "the device certificate was revoked"}


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


def retries(coalescer: RepeatCoalescer, clock: Clock, data: dict, n: int, every_s: float = 60.0) -> list:
    """``n`` handshake failures a delivery retry apart; every event the coalescer gave to record."""
    out = []
    for _ in range(n):
        clock.advance(every_s)
        out += coalescer.admit("tls_handshake_failed", data)
    return out


def test_the_first_failure_is_recorded_and_identical_repeats_are_counted(clock: Clock) -> None:
    coalescer = RepeatCoalescer(clock=clock)
    assert coalescer.admit("tls_handshake_failed", EXPIRED) == [("tls_handshake_failed", EXPIRED)]
    assert retries(coalescer, clock, EXPIRED, 30) == []  # half an hour of retries: counted only
    assert coalescer.admit("heartbeat", {}) == [("heartbeat", {})]  # other events pass as they are


def test_a_change_of_reason_records_the_count_then_the_new_failure(clock: Clock) -> None:
    coalescer = RepeatCoalescer(clock=clock)
    coalescer.admit("tls_handshake_failed", EXPIRED)
    retries(coalescer, clock, EXPIRED, 5)
    clock.advance(60)
    events = coalescer.admit("tls_handshake_failed", REVOKED)
    assert [kind for kind, _ in events] == ["tls_handshake_failed_repeated", "tls_handshake_failed"]
    summary = events[0][1]
    assert summary == {
        **EXPIRED, "repeats": 5, "until": "changed",
        "first_at": (START + dt.timedelta(seconds=60)).isoformat(),
        "last_at": (START + dt.timedelta(seconds=300)).isoformat(),
    }
    assert events[1][1] == REVOKED
    # and back: the revoked streak had no repeat, so nothing to summarise; the expired one is a first again
    assert coalescer.admit("tls_handshake_failed", EXPIRED) == [("tls_handshake_failed", EXPIRED)]


def test_the_next_success_ends_the_count(clock: Clock) -> None:
    coalescer = RepeatCoalescer(clock=clock)
    coalescer.admit("tls_handshake_failed", EXPIRED)
    retries(coalescer, clock, EXPIRED, 3)
    [(kind, data)] = coalescer.succeeded("tls_handshake_failed")
    assert kind == "tls_handshake_failed_repeated" and data["repeats"] == 3 and data["until"] == "ended"
    assert coalescer.succeeded("tls_handshake_failed") == []  # said once
    # a failure after the success is a first again, recorded
    assert coalescer.admit("tls_handshake_failed", EXPIRED) == [("tls_handshake_failed", EXPIRED)]


def test_a_failure_that_goes_on_is_summarised_every_period(clock: Clock) -> None:
    """A week of a refused certificate, retried every minute: one event, then one summary an hour."""
    coalescer = RepeatCoalescer(clock=clock, every_s=3600)
    events = coalescer.admit("tls_handshake_failed", EXPIRED) + retries(coalescer, clock, EXPIRED, 7 * 24 * 60)
    summaries = [data for kind, data in events if kind == "tls_handshake_failed_repeated"]
    assert len(events) == 1 + len(summaries) and 7 * 24 - 1 <= len(summaries) <= 7 * 24
    assert all(s["until"] == "ongoing" for s in summaries)
    events += coalescer.flush()
    counted = sum(data.get("repeats", 1) for _, data in events)
    assert counted == 1 + 7 * 24 * 60  # every failure accounted for


def test_the_timer_summarises_repeats_that_stopped_with_no_success(clock: Clock) -> None:
    coalescer = RepeatCoalescer(clock=clock, every_s=3600)
    coalescer.admit("tls_handshake_failed", EXPIRED)
    assert coalescer.seconds_to_due() is None  # nothing counted: no summary to wait for
    retries(coalescer, clock, EXPIRED, 2)
    assert coalescer.seconds_to_due() == 3600 - 120
    assert coalescer.due() == []
    clock.advance(3600)
    [(kind, data)] = coalescer.due()
    assert kind == "tls_handshake_failed_repeated" and data["repeats"] == 2 and data["until"] == "ongoing"
    assert coalescer.due() == [] and coalescer.seconds_to_due() is None


def test_a_stopping_daemon_flushes_every_count(clock: Clock) -> None:
    coalescer = RepeatCoalescer(clock=clock)
    fault = {"device": "finger", "kind": "zfm", "error": "no answer", "fix": "check the cable"}
    coalescer.admit("tls_handshake_failed", EXPIRED)
    coalescer.admit("device_fault", fault)
    retries(coalescer, clock, EXPIRED, 4)
    coalescer.admit("device_fault", fault)
    flushed = {kind: data for kind, data in coalescer.flush()}
    assert flushed["tls_handshake_failed_repeated"]["repeats"] == 4
    assert flushed["device_fault_repeated"] == {**fault, "repeats": 1, "until": "stopping",
                                                "first_at": clock.now.isoformat(), "last_at": clock.now.isoformat()}
    assert coalescer.flush() == []


def test_each_device_has_its_own_stream_ended_by_its_plug_events(clock: Clock) -> None:
    coalescer = RepeatCoalescer(clock=clock)
    finger = {"device": "finger", "error": "no answer"}
    camera = {"device": "camera", "error": "stream ended"}
    for _ in range(3):
        coalescer.admit("device_fault", finger)
        coalescer.admit("device_fault", camera)  # interleaved: not a change of the finger reader's fault
    assert coalescer.admit("device_unplugged", {"device": "camera"}) == [
        ("device_fault_repeated", {**camera, "repeats": 2, "first_at": START.isoformat(),
                                   "last_at": START.isoformat(), "until": "ended"}),
        ("device_unplugged", {"device": "camera"}),
    ]
    assert [kind for kind, _ in coalescer.flush()] == ["device_fault_repeated"]  # the finger reader's, still counted


def test_a_clock_stepped_back_does_not_hold_the_summary(clock: Clock) -> None:
    coalescer = RepeatCoalescer(clock=clock, every_s=3600)
    coalescer.admit("tls_handshake_failed", EXPIRED)
    clock.advance(-86400)  # NTP corrected a clock a day ahead
    [(kind, data)] = coalescer.admit("tls_handshake_failed", EXPIRED)
    assert kind == "tls_handshake_failed_repeated" and data["repeats"] == 1


def _server_certificate_refused_at(now: dt.datetime, monkeypatch: pytest.MonkeyPatch) -> dict:
    """The handshake failure's data when this device's clock says ``now``: the client's own message, as OpenSSL's
    verdict on a verifier certificate out of its dates makes it (a device clock off, or the certificate expired)."""
    import ssl
    import types

    import agent.client as client_module

    class Frozen(dt.datetime):
        @classmethod
        def now(cls, tz: dt.tzinfo | None = None) -> dt.datetime:  # type: ignore[override]
            return now

    monkeypatch.setattr(client_module, "dt", types.SimpleNamespace(datetime=Frozen, UTC=dt.UTC))
    verdict = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
    verdict.verify_code, verdict.verify_message = 10, "certificate has expired"
    error = client_module.tls_policy_error(verdict, EXPIRED["url"])
    assert error is not None
    return {"url": EXPIRED["url"], "reason": error.message}


def test_a_refused_server_certificate_repeats_though_the_clock_in_its_reason_moves(
    clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reason says the device's clock to the minute; the retries are about a minute apart. Compared whole,
    no two were identical: one event per retry, the outbox filled as before the coalescing."""
    coalescer = RepeatCoalescer(clock=clock)
    first = _server_certificate_refused_at(START, monkeypatch)
    assert coalescer.admit("tls_handshake_failed", first) == [("tls_handshake_failed", first)]
    for minute in range(1, 6):
        clock.advance(60)
        later = _server_certificate_refused_at(START + dt.timedelta(minutes=minute), monkeypatch)
        assert later != first  # the clock in it moved...
        assert coalescer.admit("tls_handshake_failed", later) == []  # ... the failure did not: counted
    [(kind, summary)] = coalescer.succeeded("tls_handshake_failed")
    assert kind == "tls_handshake_failed_repeated" and summary["repeats"] == 5
    assert summary["reason"] == first["reason"]  # the failure recorded; first_at and last_at say the rest
    # another failure is still another one
    assert coalescer.admit("tls_handshake_failed", first) == [("tls_handshake_failed", first)]
    assert coalescer.admit("tls_handshake_failed", REVOKED) == [("tls_handshake_failed", REVOKED)]


def test_after_the_flush_on_stop_every_failure_is_recorded_as_it_comes(clock: Clock) -> None:
    """The stopping daemon records after its flush (the delivery's last try refused again, a fault a cancelled
    session's worker reports late): a repeat counted then would be in no event, no summary coming after."""
    coalescer = RepeatCoalescer(clock=clock)
    coalescer.admit("tls_handshake_failed", EXPIRED)
    retries(coalescer, clock, EXPIRED, 2)
    assert [kind for kind, _ in coalescer.flush()] == ["tls_handshake_failed_repeated"]
    fault = {"device": "finger", "error": "no answer"}
    for _ in range(3):
        assert coalescer.admit("device_fault", fault) == [("device_fault", fault)]
        assert coalescer.admit("tls_handshake_failed", EXPIRED) == [("tls_handshake_failed", EXPIRED)]
    assert coalescer.flush() == []


def test_a_clock_stepped_back_does_not_hold_the_timers_summary_either(clock: Clock) -> None:
    """The timer sleeps seconds_to_due(): with the stream's start a day ahead of the clock, it said a day and
    more (the daemon's timer then slept its hourly cap) while due() had the summary due at once."""
    coalescer = RepeatCoalescer(clock=clock, every_s=3600)
    coalescer.admit("tls_handshake_failed", EXPIRED)
    retries(coalescer, clock, EXPIRED, 2)
    clock.advance(-86400)  # NTP corrected a clock a day ahead; no failure since to prompt a summary
    assert coalescer.seconds_to_due() == 0.0
    [(kind, data)] = coalescer.due()
    assert kind == "tls_handshake_failed_repeated" and data["repeats"] == 2
    assert coalescer.seconds_to_due() is None
