"""What an unauthenticated flood can hold: connection caps, eviction, and a log that stays bounded.

Before its TLS handshake completes, and for as long as it carries no client
certificate (EST only), a connection is *unauthenticated*: anybody can open one.
:class:`ConnectionGuard` caps them three ways, all checked at accept time,
before a single TLS byte is processed:

- all connections together (``max_connections``, lowered to the process's soft
  descriptor limit minus a reserve, so the verifier never meets EMFILE);
- unauthenticated ones together (``max_unauthenticated``);
- connections from one address (``max_connections_per_address``).

A connection is *authenticated* once its certificate belongs to an active device
(the app's registry says so, not only the CA's signature: a revoked or superseded
certificate still passes the handshake, and its connection stays unauthenticated).
One device holds at most ``max_connections_per_device`` of them: its newest
connection pushes out its oldest (a kiosk whose link flapped left dead ones
behind), so a stolen certificate, from as many addresses as it likes, cannot
take the slots every other device needs.

When a cap is reached, the oldest unauthenticated connection (of that address,
for the per-address cap) is closed to make room, rather than the new one being
refused: a flood of idle connections from the same address as a real device
(a NAT, or loopback in tests) can then never lock the device out, because the
device's handshake takes milliseconds and the flood's connections are older.
Only when every connection in the way is authenticated is the new one refused.

Connections *stalled* before their ClientHello go first, oldest first: those
admitted before their hello was in whole (:mod:`verifier.client_hello`), until
it is. Otherwise a flood that churns half-sent hellos fast enough (a few bytes
each) makes any handshake slower than the cap's worth of its arrivals the
oldest: 64 connections from one address at about 1,000 a second evicted every
handshake of 100 ms or more. A stalled newcomer may push out only another
stalled connection, never a handshake under way (else a burst of half-sent
hellos, which the accept loop admits in one go, would do it). The verifier
accepts a connection once its first bytes are in (``TCP_DEFER_ACCEPT``), so a
device's hello, one TCP segment, is whole at admission; one split over several
segments that come apart is admitted stalled, and at a cap with no stalled
connection to push out it is refused (its retry usually comes whole).

What is left: a flood that replays a recorded ClientHello and stalls after the
verifier's answer is not stalled, so it still pushes out handshakes under way
oldest first, as before these ranks; it costs the attacker little more and the
verifier a handshake flight each (or less, if the hello asks for a
HelloRetryRequest). Only a device whose handshake outlasts the cap's worth of
such arrivals is at risk.

:class:`EventSummary` keeps the log bounded under a flood: the first few events
of each kind in a window are logged one by one (audit events, invariant 5); the
rest are counted and logged as one summary line per window.
"""

from __future__ import annotations

import resource
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

log = structlog.get_logger()

DESCRIPTOR_RESERVE = 64  # descriptors kept for the database, logs, the listening socket
SUMMARY_WINDOW_S = 10.0
# The app forgets what is past its life this often (verifier.app: nonces, tokens, answers, pending step-ups).
HOUSEKEEPING_INTERVAL_S = 60.0
SUMMARY_BURST = 5  # events of one kind (and one device) logged one by one per window before they are only counted


@dataclass(eq=False)
class Connection:
    """One accepted connection, as the guard sees it."""

    address: str
    opened: float = field(default_factory=time.monotonic)
    authenticated: bool = False
    serving: bool = False  # its task has started, and closes the socket itself when cancelled
    requests: int = 0
    released: bool = False
    device: str = ""  # the active device whose certificate the connection carries, once authenticated
    body_bytes: int = 0  # bytes of request bodies its streams hold (BodyBudget)
    close: Callable[[], None] = lambda: None  # frees the connection at once (set by the server)


def descriptor_cap(wanted: int, reserve: int = DESCRIPTOR_RESERVE) -> int:
    """``wanted``, lowered so that connections never use up the soft descriptor limit."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(1, min(wanted, soft - reserve))


class ConnectionGuard:
    """Admits, tracks and evicts connections under the global, unauthenticated, per-address and per-device caps."""

    def __init__(
        self, max_connections: int, max_unauthenticated: int, max_per_address: int, max_per_device: int = 8
    ) -> None:
        self.max_connections = max_connections
        self.max_unauthenticated = min(max_unauthenticated, max_connections)
        self.max_per_address = max_per_address
        self.max_per_device = max_per_device
        self._by_device: dict[str, OrderedDict[Connection, None]] = {}  # authenticated ones, oldest first
        self._count = 0
        self._per_address: Counter[str] = Counter()
        self._unauthenticated: OrderedDict[Connection, None] = OrderedDict()  # oldest first
        self._unauth_by_address: dict[str, OrderedDict[Connection, None]] = {}
        self._stalled: OrderedDict[Connection, None] = OrderedDict()  # the first to go, oldest first
        self._stalled_by_address: dict[str, OrderedDict[Connection, None]] = {}

    def __len__(self) -> int:
        return self._count

    @property
    def unauthenticated(self) -> int:
        return len(self._unauthenticated)

    def admit(self, address: str, *, stalled: bool = False) -> tuple[Connection | None, list[str]]:
        """A new connection from ``address`` (None: refused), and the reasons of any evictions made for it.

        ``stalled``: its ClientHello is not in whole. Such a newcomer may push out
        only another stalled connection: a burst of half-sent hellos, admitted in
        one turn of the event loop, must not evict a handshake under way.
        """
        evicted: list[str] = []
        if self._per_address[address] >= self.max_per_address:
            if not self._evict(*self._ranks(address, stalled)):
                return None, evicted
            evicted.append("per-address cap")
        if self._count >= self.max_connections:
            if not self._evict(*self._ranks(None, stalled)):
                return None, evicted
            evicted.append("connection cap")
        if len(self._unauthenticated) >= self.max_unauthenticated:
            if not self._evict(*self._ranks(None, stalled)):
                return None, evicted
            evicted.append("unauthenticated cap")
        conn = Connection(address)
        self._count += 1
        self._per_address[address] += 1
        self._unauthenticated[conn] = None
        self._unauth_by_address.setdefault(address, OrderedDict())[conn] = None
        if stalled:
            self._stalled[conn] = None
            self._stalled_by_address.setdefault(address, OrderedDict())[conn] = None
        return conn, evicted

    def _ranks(self, address: str | None, stalled: bool) -> tuple[OrderedDict[Connection, None] | None, ...]:
        """Who may go for a newcomer (of ``address``'s connections, or of all), in order."""
        if address is None:
            first, rest = self._stalled, self._unauthenticated
        else:
            first, rest = self._stalled_by_address.get(address), self._unauth_by_address.get(address)
        return (first,) if stalled else (first, rest)

    def hello_received(self, conn: Connection) -> None:
        """Its ClientHello has come in whole: among the others now, evicted oldest first."""
        self._forget_stalled(conn)

    def authenticated(self, conn: Connection, device: str = "") -> list[str]:
        """The connection carries the certificate of the active device ``device``: evictable only by that device.

        Past ``max_per_device`` connections of one device, its oldest are closed; the
        reasons of those evictions are returned.
        """
        conn.authenticated = True
        conn.device = device
        self._forget_unauthenticated(conn)
        if not device:
            return []
        held = self._by_device.setdefault(device, OrderedDict())
        held[conn] = None
        evicted = []
        while len(held) > self.max_per_device:
            victim = next(iter(held))
            self.release(victim)
            victim.close()
            evicted.append("per-device cap")
        return evicted

    def release(self, conn: Connection) -> None:
        """The connection is gone (idempotent)."""
        if conn.released:
            return
        conn.released = True
        self._forget_unauthenticated(conn)
        held = self._by_device.get(conn.device)
        if held is not None:
            held.pop(conn, None)
            if not held:
                del self._by_device[conn.device]
        self._count -= 1
        self._per_address[conn.address] -= 1
        if self._per_address[conn.address] <= 0:
            del self._per_address[conn.address]

    def _forget_unauthenticated(self, conn: Connection) -> None:
        self._forget_stalled(conn)
        _pop(self._unauthenticated, self._unauth_by_address, conn)

    def _forget_stalled(self, conn: Connection) -> None:
        _pop(self._stalled, self._stalled_by_address, conn)

    def _evict(self, *ranks: OrderedDict[Connection, None] | None) -> bool:
        """Close the oldest connection of the first non-empty rank; False if every rank is empty."""
        candidates = next((rank for rank in ranks if rank), None)
        if candidates is None:
            return False
        victim = next(iter(candidates))
        self._forget_unauthenticated(victim)
        self.release(victim)
        victim.close()
        return True


def _pop(
    everyone: OrderedDict[Connection, None], by_address: dict[str, OrderedDict[Connection, None]], conn: Connection
) -> None:
    """Take ``conn`` out of a rank kept both whole and per address (an address's empty entry goes too)."""
    everyone.pop(conn, None)
    of_address = by_address.get(conn.address)
    if of_address is not None:
        of_address.pop(conn, None)
        if not of_address:
            del by_address[conn.address]


BODY_BUDGET_EXTENSION = "verifier.body_budget"  # the ASGI scope extension: one stream's share (server.StreamBody)


class BodyBudget:
    """Bytes of request bodies the verifier holds, per connection and all together, each under its cap.

    Why: hypercorn acknowledges every DATA frame as soon as it is queued for the
    app, so HTTP/2 flow control never holds a client back, and the app keeps a
    body whole until its answer (up to ``max_body_bytes``, 1 MiB). One device's
    connection, 100 concurrent streams each sending just under 1 MiB without
    ending, took the verifier from 98 to 204 MB of RSS (8 such connections per
    device are allowed). A stream whose next chunk would pass either cap is
    refused (503 ``connection-busy``) and what it held is given back at once:
    refused rather than made to wait, because the connection's flow-control
    window is shared by its streams, and a stream made to wait would stall the
    others whose answers are what frees the budget.
    """

    def __init__(self, per_connection: int, total: int) -> None:
        self.per_connection = per_connection
        self.total = total
        self.held = 0

    def take(self, conn: Connection, size: int) -> str:
        """Count ``size`` more bytes held by ``conn``: "" when within both caps, else which cap (nothing taken)."""
        if conn.body_bytes + size > self.per_connection:
            return "connection"
        if self.held + size > self.total:
            return "total"
        conn.body_bytes += size
        self.held += size
        return ""

    def give_back(self, conn: Connection, size: int) -> None:
        conn.body_bytes -= size
        self.held -= size


class EventSummary:
    """Connection-level events under a flood: a few logged one by one per window, the rest counted.

    Every event is still accounted for (the summary carries the counts), so the
    audit trail says how many handshakes failed and why, without one line (or one
    traceback) per failure.
    """

    def __init__(self, window_s: float = SUMMARY_WINDOW_S, burst: int = SUMMARY_BURST) -> None:
        self.window_s = window_s
        self.burst = burst
        self._window_start = time.monotonic()
        # Counted per event and per device (its id, or its certificate's serial; "" for the anonymous): a flood of
        # anonymous refusals must not use up the lines a device's own refusals get, nor leave them unnamed. The
        # keys a device adds are bounded by the devices (and certificates) the CA issued.
        self._logged: Counter[tuple[str, str]] = Counter()
        self._suppressed: Counter[tuple[str, str]] = Counter()
        self._suppressed_by: dict[tuple[str, str], Counter[str]] = {}
        self.totals: Counter[str] = Counter()

    def note(self, event: str, reason: str, *, routine: bool = False, **fields: Any) -> None:
        """Count ``event``; log it on its own line while its kind (and device) has lines left in the window.

        ``routine``: an event that is no refusal nor fault (a request answered from the idempotency store), logged
        at info and not as an audit event; the window's summary counts it with the others.
        """
        now = time.monotonic()
        if now - self._window_start >= self.window_s:
            self.flush(now)
        self.totals[event] += 1
        who = str(fields.get("device_id") or fields.get("serial") or "")
        if self._logged[(event, who)] < self.burst:
            self._logged[(event, who)] += 1
            if routine:
                log.info(event, reason=reason, **fields)
            else:
                log.warning(event, audit=True, reason=reason, **fields)
        else:
            self._suppressed[(event, reason)] += 1
            if who:
                self._suppressed_by.setdefault((event, reason), Counter())[who] += 1

    def flush(self, now: float | None = None) -> None:
        """Log what was only counted in the window that ends, and start a new window."""
        now = time.monotonic() if now is None else now
        if self._suppressed:
            counts = {f"{event}: {reason}": n for (event, reason), n in sorted(self._suppressed.items())}
            by_device = {
                f"{event}: {reason}": dict(sorted(whose.items()))
                for (event, reason), whose in sorted(self._suppressed_by.items())
            }
            log.warning(
                "connection_events_summary",
                audit=True,
                window_s=round(now - self._window_start, 1),
                suppressed=sum(self._suppressed.values()),
                counts=counts,
                **({"by_device": by_device} if by_device else {}),
            )
        self._window_start = now
        self._logged.clear()
        self._suppressed.clear()
        self._suppressed_by.clear()
