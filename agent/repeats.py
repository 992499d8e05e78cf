"""Identical failures in a row: the first recorded, the repeats counted, the count recorded as a summary.

Why: the outbox is bounded (drop the oldest tenth when full). A daemon whose
certificate expired fails the same TLS handshake at every delivery retry (about
once a minute once the backoff peaks), and one audit event per retry filled a
10,000-row outbox in about a week, pushing out the real events (enrollments,
sessions) the verifier never got. A device failing the same way at every
session does the same.

Invariant 5 (every TLS handshake failure and device fault is an audit event)
still holds, by count: the first failure of a *stream* (one verifier's TLS
handshakes; one device's faults) is recorded as it was; each identical one after
it (same type, same data, but for a reading of the device's clock in a
handshake failure's reason) is counted; the count is recorded as one
``<type>_repeated`` event when the stream forgets the failure (see below), when
the failure ends (the verifier answers, the device is plugged or unplugged),
when the daemon stops, and at least every :data:`SUMMARY_EVERY_S` while it goes
on. A failing week costs one event per distinct failure plus about 170 hourly
summaries for each.

A stream remembers its last :data:`DISTINCT_PER_STREAM` distinct failures, each
with its own count, not only its last one: two reasons can alternate for one
cause (a device certificate the verifier refuses over TLS 1.3: sometimes the
server's alert arrives first, "... (TLS alert unknown_ca)", sometimes the
connection only closes and the client's probe says so), and remembering only
the last made every retry a change, so one event again per retry. A new failure
met with that many remembered forgets the one least recently met (its count
recorded then, ``until`` ``changed``); a later failure like it is a first again.

Why a ``<type>_repeated`` type and not the same type with a count: every
``tls_handshake_failed`` event stays one failure, as it always was, so whoever
counts them (or alerts on each) is not misled by a summary that would look like
one more failure; the summary's own fields say what it accounts for. Its data is
the failure's own data (url and reason; device, error and fix) plus:

* ``repeats``: failures identical to it since its last event (its record, or its
  last summary), not counting the failure recorded itself;
* ``first_at``, ``last_at``: when the first and the last of them happened (ISO 8601, UTC);
* ``until``: ``ongoing`` (the periodic summary: more may follow), ``changed``
  (the stream met other failures and forgot this one), ``ended`` (the next
  success), ``stopping`` (the daemon stopped).

When one moment closes several failures of a stream (a success, a stop), their
summaries come in the order the failures were first recorded.

Total failures of a type = its events + the ``repeats`` of its ``_repeated``
events. The counts live in memory: a crash (SIGKILL, power cut) loses at most
the repeats of one period of the failures whose first events are recorded.

Sans-I/O: the methods return the events to record, in order, and the clock is
passed in, so that the tests need no sleeping.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

SUMMARY_SUFFIX = "_repeated"
SUMMARY_EVERY_S = 3600.0  # a failure that goes on is summarised at least hourly
DISTINCT_PER_STREAM = 4  # the distinct failures a stream counts at once (two alternating reasons, and room)

Event = tuple[str, dict[str, Any]]

# agent.client.tls_policy_error says this device's clock in the reason of a server certificate out of its dates
# ("... by this device's clock, which says 2026-12-03 08:05 UTC"): a reading that changes every minute, about as
# often as the delivery retries, so compared as it is no two of these failures were identical and each was an
# event again (a Pi whose clock is off, or a verifier whose certificate expired: the very failures that go on).
CLOCK_READING = re.compile(r"which says \d{4}-\d{2}-\d{2} \d{2}:\d{2} UTC")


def as_is(data: dict[str, Any]) -> dict[str, Any]:
    """The whole data: what makes two failures of most types the same."""
    return data


def without_clock_reading(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with the clock reading of its reason left out: what makes two handshake failures the same."""
    reason = data.get("reason")
    if not isinstance(reason, str):
        return data
    return {**data, "reason": CLOCK_READING.sub("which says (the device's clock)", reason)}


@dataclass(frozen=True)
class Rule:
    """How one event type repeats: ``stream`` names the fields that tell its streams apart (one device's faults
    are not another's), ``ended_by`` the event types that end a stream of the same ``stream`` fields, and
    ``same`` what of the data must be equal for a repeat (not a reading of the clock)."""

    stream: tuple[str, ...] = ()
    ended_by: frozenset[str] = frozenset()
    same: Callable[[dict[str, Any]], dict[str, Any]] = as_is


# The repeat-prone types: a delivery retry's handshake (one client, one verifier: one stream), a device's fault
# (a session meeting it each time; ended by the device going away or coming back).
RULES: dict[str, Rule] = {
    "tls_handshake_failed": Rule(same=without_clock_reading),
    "device_fault": Rule(stream=("device",), ended_by=frozenset({"device_plugged", "device_unplugged"})),
}


@dataclass
class _Streak:
    data: dict[str, Any]  # the failure recorded (its summaries carry these fields)
    same: dict[str, Any]  # what a repeat must equal (Rule.same of data)
    since: dt.datetime  # this failure's last event (the failure itself, or its last summary)
    met: int  # when it was last met, in admissions (not the clock, which steps): the least recent is forgotten
    repeats: int = 0
    first_at: dt.datetime | None = None
    last_at: dt.datetime | None = None


Key = tuple[str, tuple[Any, ...]]


class RepeatCoalescer:
    """The events to record for each event offered: the event, nothing (a counted repeat), or summaries first."""

    def __init__(
        self,
        *,
        clock: Callable[[], dt.datetime],
        rules: dict[str, Rule] | None = None,
        every_s: float = SUMMARY_EVERY_S,
        distinct: int = DISTINCT_PER_STREAM,
    ) -> None:
        if every_s <= 0:
            raise ValueError("every_s must be positive: it is how often a failure that goes on is summarised")
        if distinct < 1:
            raise ValueError("distinct must be 1 or more: it is how many distinct failures a stream counts at once")
        self.clock = clock
        self.rules = RULES if rules is None else rules
        self.every = dt.timedelta(seconds=every_s)
        self.distinct = distinct
        # Each stream's remembered failures, in the order they were recorded (the order of their summaries).
        self._streams: dict[Key, list[_Streak]] = {}
        self._admitted = 0  # the clock of _Streak.met
        self._flushed = False  # see flush: from then on every event is recorded as it comes

    def _key(self, kind: str, data: dict[str, Any]) -> Key:
        return kind, tuple(data.get(name) for name in self.rules[kind].stream)

    def admit(self, kind: str, data: dict[str, Any]) -> list[Event]:
        """What to record, in order, for event ``kind``: summaries of the streams it ends or the failure it makes
        the stream forget, then the event itself; or nothing but a due summary when it repeats a failure its
        stream remembers."""
        now = self.clock()
        out = self._ended_by(kind, data)
        if kind not in self.rules or self._flushed:
            return [*out, (kind, data)]
        self._admitted += 1
        key = self._key(kind, data)
        streaks = self._streams.setdefault(key, [])
        same = self.rules[kind].same(data)
        for streak in streaks:
            if streak.same == same:
                streak.met = self._admitted
                streak.repeats += 1
                streak.first_at = streak.first_at or now
                streak.last_at = now
                if self._due(streak, now):
                    out.append(self._summary(key, streak, "ongoing", now))
                return out
        if len(streaks) >= self.distinct:
            forgotten = min(streaks, key=lambda s: s.met)
            streaks.remove(forgotten)
            if forgotten.repeats:
                out.append(self._summary(key, forgotten, "changed", now))
        streaks.append(_Streak(dict(data), same, since=now, met=self._admitted))
        return [*out, (kind, data)]

    def succeeded(self, kind: str, **stream: Any) -> list[Event]:
        """The failure of ``kind`` (its stream named by ``stream``'s fields) is over: its counts, if any."""
        key = (kind, tuple(stream.get(name) for name in self.rules[kind].stream))
        return self._close(key, "ended")

    def due(self) -> list[Event]:
        """The periodic summaries due now (for a timer: repeats that stopped with no success to end them)."""
        now = self.clock()
        return [
            self._summary(key, s, "ongoing", now)
            for key, streaks in list(self._streams.items())
            for s in streaks
            if self._due(s, now)
        ]

    def seconds_to_due(self) -> float | None:
        """Seconds until the next periodic summary falls due; None when no stream has a repeat counted."""
        now = self.clock()
        counted = [s for streaks in self._streams.values() for s in streaks if s.repeats]
        if not counted:
            return None
        if any(self._due(s, now) for s in counted):  # a clock stepped back included: its timer must not wait
            return 0.0
        return max(0.0, (min(s.since for s in counted) + self.every - now).total_seconds())

    def flush(self) -> list[Event]:
        """Every count, for a daemon that stops: recorded before the outbox closes, so no repeat goes unsaid.

        Nothing is counted after it: no later summary would say the count. The stopping daemon still records
        (the delivery's last flush meeting a refusal again, a fault a cancelled session's worker reports late,
        the devices closing), and a repeat counted then was in no event at all.
        """
        self._flushed = True
        return [event for key in list(self._streams) for event in self._close(key, "stopping")]

    def _ended_by(self, kind: str, data: dict[str, Any]) -> list[Event]:
        out: list[Event] = []
        for (streak_kind, values) in list(self._streams):
            rule = self.rules[streak_kind]
            if kind in rule.ended_by and values == tuple(data.get(name) for name in rule.stream):
                out.extend(self._close((streak_kind, values), "ended"))
        return out

    def _due(self, streak: _Streak, now: dt.datetime) -> bool:
        # A clock stepped back (NTP after a boot without an RTC) must not hold a summary back for that long.
        return streak.repeats > 0 and (now - streak.since >= self.every or now < streak.since)

    def _close(self, key: Key, until: str) -> list[Event]:
        """The counts of every failure the stream remembers, which it then forgets (the next one is a first)."""
        now = self.clock()
        return [self._summary(key, s, until, now) for s in self._streams.pop(key, []) if s.repeats]

    def _summary(self, key: Key, streak: _Streak, until: str, now: dt.datetime) -> Event:
        assert streak.first_at is not None and streak.last_at is not None
        data = {
            **streak.data,
            "repeats": streak.repeats,
            "first_at": streak.first_at.isoformat(),
            "last_at": streak.last_at.isoformat(),
            "until": until,
        }
        streak.repeats, streak.first_at, streak.last_at, streak.since = 0, None, None, now
        return key[0] + SUMMARY_SUFFIX, data
