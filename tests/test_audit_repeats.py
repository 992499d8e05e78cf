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


# One refused device certificate over TLS 1.3, as agent.handshake words it: the server's alert when it arrives, the
# probe's verdict when the connection only closed (the alert dropped). The retries alternate between the two.
ALERTED = {"url": "https://verifier:8443", "reason": "the verifier at https://verifier:8443 refused the device "
           "certificate (kiosk-1, serial 1f): issued by a CA the verifier does not trust (TLS alert unknown_ca)"}
PROBED = {"url": "https://verifier:8443", "reason": "the verifier at https://verifier:8443 closes the connection "
          "when this device presents its certificate (device kiosk-1, serial 1f, issued by CN=old-ca) and not "
          "without it: it refuses the certificate (revoked, or issued by a CA it does not trust)"}


def test_two_reasons_that_alternate_are_each_recorded_once_and_counted(clock: Clock) -> None:
    """A stream that remembered only its last failure saw every retry as a change: one event per retry again,
    plus a summary of one repeat or none, the outbox filling as before the coalescing."""
    coalescer = RepeatCoalescer(clock=clock)
    pattern = [ALERTED, PROBED, PROBED, ALERTED, PROBED, ALERTED, ALERTED, PROBED] * 5
    events = []
    for data in pattern:
        clock.advance(60)
        events += coalescer.admit("tls_handshake_failed", data)
    assert events == [("tls_handshake_failed", ALERTED), ("tls_handshake_failed", PROBED)]
    ended = coalescer.succeeded("tls_handshake_failed")
    # one summary each, in the order the failures were first recorded
    assert [(data["reason"], data["repeats"], data["until"]) for _, data in ended] == [
        (ALERTED["reason"], pattern.count(ALERTED) - 1, "ended"),
        (PROBED["reason"], pattern.count(PROBED) - 1, "ended"),
    ]
    assert ended[0][1]["first_at"] == (START + dt.timedelta(seconds=4 * 60)).isoformat()  # ALERTED's first repeat
    assert ended[1][1]["first_at"] == (START + dt.timedelta(seconds=3 * 60)).isoformat()
    assert sum(data.get("repeats", 1) for _, data in events + ended) == len(pattern)  # every failure accounted for
    assert coalescer.succeeded("tls_handshake_failed") == []


def test_alternating_reasons_are_summarised_each_period_each_with_its_own_count(clock: Clock) -> None:
    coalescer = RepeatCoalescer(clock=clock, every_s=3600)
    events = []
    for minute in range(3 * 60):  # three hours of retries a minute apart, the two reasons in turn
        clock.advance(60)
        events += coalescer.admit("tls_handshake_failed", ALERTED if minute % 2 else PROBED)
    events += coalescer.flush()
    summaries = [data for kind, data in events if kind == "tls_handshake_failed_repeated"]
    assert len(events) == 2 + len(summaries) and 2 * 2 <= len(summaries) <= 2 * 3 + 2, summaries
    assert {s["until"] for s in summaries[:-2]} == {"ongoing"} and {s["until"] for s in summaries[-2:]} == {"stopping"}
    for data in (ALERTED, PROBED):
        mine = [s for s in summaries if s["reason"] == data["reason"]]
        assert sum(s["repeats"] for s in mine) == 3 * 60 // 2 - 1
    assert sum(data.get("repeats", 1) for _, data in events) == 3 * 60


def test_a_stream_forgets_its_least_recently_met_failure_and_records_its_count_then(clock: Clock) -> None:
    """Remembered failures are bounded (``distinct``): a new one beyond them pushes out the one met longest ago,
    its count recorded as ``changed`` before the new failure; a later one like it is a first again."""
    coalescer = RepeatCoalescer(clock=clock, distinct=2)
    coalescer.admit("tls_handshake_failed", EXPIRED)
    retries(coalescer, clock, EXPIRED, 5)
    coalescer.admit("tls_handshake_failed", ALERTED)
    retries(coalescer, clock, EXPIRED, 1)  # EXPIRED met again: ALERTED is now the least recently met
    clock.advance(60)
    events = coalescer.admit("tls_handshake_failed", REVOKED)
    assert events == [("tls_handshake_failed", REVOKED)]  # ALERTED had no repeat: nothing to say, only forgotten
    clock.advance(60)
    events = coalescer.admit("tls_handshake_failed", ALERTED)  # a first again; EXPIRED forgotten, with its count
    assert [kind for kind, _ in events] == ["tls_handshake_failed_repeated", "tls_handshake_failed"]
    assert events[0][1] == {
        **EXPIRED, "repeats": 6, "until": "changed",
        "first_at": (START + dt.timedelta(seconds=60)).isoformat(),
        "last_at": (START + dt.timedelta(seconds=360)).isoformat(),
    }
    assert events[1][1] == ALERTED
    assert coalescer.admit("tls_handshake_failed", REVOKED) == []  # still remembered: counted
    assert coalescer.admit("tls_handshake_failed", EXPIRED) == [("tls_handshake_failed", EXPIRED)]  # forgotten


def test_a_stream_must_remember_at_least_one_failure(clock: Clock) -> None:
    with pytest.raises(ValueError, match="distinct must be 1 or more"):
        RepeatCoalescer(clock=clock, distinct=0)


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
