"""`capture-agent devices`: serial ports probed side by side, each one's finding kept.

A port where nothing answers costs the full reply timeout at each discovery baud;
probed one after another, an installer waited for the sum of them. These tests use
real simulated modules and silent ports on pseudo-terminals, and tell overlap from
the order of the driver's own log events, never from the clock.
"""

from __future__ import annotations

from pathlib import Path

from structlog.testing import capture_logs

from drivers import discovery
from drivers.discovery import Finding, serial_ports
from drivers.zfm.errors import NoReplyError, PortBusyError


def _by_path(findings: list[Finding]) -> dict[str, Finding]:
    return {finding.path: finding for finding in findings}


def _most_in_flight(logs: list[dict], ports: list[Path]) -> int:
    """The most of ``ports`` whose probe was between its two bauds at once, from the driver's events: a silent
    port logs no answer at the first baud, then at the second, and is waiting on its line in between."""
    waiting: set[str] = set()
    most = 0
    for entry in logs:
        if entry["event"] != "reader_no_answer_at_baud" or entry["port"] not in map(str, ports):
            continue
        if entry["baud"] == discovery.DISCOVERY_BAUDS[0]:
            waiting.add(entry["port"])
        elif entry["baud"] == discovery.DISCOVERY_BAUDS[-1]:
            waiting.discard(entry["port"])
        most = max(most, len(waiting))
    return most


def test_modules_a_silent_port_and_a_busy_one_each_get_their_finding_in_sorted_order(
    zfm_sims, silent_ports, port_holder
) -> None:
    """Each module found with its details, the silent port said with its fix, and a port another process holds
    (a ModuleError in its own probe) its own finding: the others' findings kept, all sorted by path."""
    first = zfm_sims("ttyA", "r307")
    silent = silent_ports("ttyB")
    fast = zfm_sims("ttyC", "r503", baud=115200)  # found at the second discovery baud
    held = silent_ports("ttyD")
    holder = port_holder(held)
    modules = {first.port: first, fast.port: fast}
    ours = [fast.port, str(held), first.port, str(silent)]  # asked for out of order

    findings = serial_ports(ours, reply_timeout_s=0.5, listed_too=False)  # never this machine's own ports

    paths = [finding.path for finding in findings]
    assert paths == sorted(ours)
    found = _by_path(findings)
    for port, sim in modules.items():
        module = found[port]
        assert module.description == f"ZFM-family module, model profile {sim.profile.name}", module
        assert module.capabilities == ["fingerprint-image"] and not module.fix
        assert module.details["capacity"] == sim.profile.capacity and module.details["baud"] == sim.baud, module
    nothing = found[str(silent)]
    assert nothing.accessible and nothing.description == "no fingerprint module answered", nothing
    assert nothing.fix == NoReplyError(str(silent), "").fix and "57600, 115200 baud" in nothing.details["handshake"]
    busy = found[str(held)]
    assert busy.description == "in use by another process" and busy.fix == PortBusyError(str(held), holder).fix, busy


def test_silent_ports_are_probed_at_the_same_time(silent_ports) -> None:
    """Three ports where nothing answers: each one's wait at its second baud overlaps the others' (one after
    another, a port's first no-answer came only after the previous port's last)."""
    silent = [silent_ports(f"ttyQ{n}") for n in range(3)]
    with capture_logs() as logs:
        findings = _by_path(serial_ports([str(port) for port in silent], reply_timeout_s=0.5, listed_too=False))
    assert all(findings[str(port)].description == "no fingerprint module answered" for port in silent)
    assert _most_in_flight(logs, silent) == len(silent), logs


def test_no_more_ports_are_probed_at_once_than_the_bound(silent_ports, monkeypatch) -> None:
    """A machine with many ports opens no more than SERIAL_PROBES_AT_ONCE of them at a time (a thread each)."""
    monkeypatch.setattr(discovery, "SERIAL_PROBES_AT_ONCE", 2)
    silent = [silent_ports(f"ttyQ{n}") for n in range(4)]
    with capture_logs() as logs:
        findings = _by_path(serial_ports([str(port) for port in silent], reply_timeout_s=0.3, listed_too=False))
    assert all(findings[str(port)].description == "no fingerprint module answered" for port in silent)
    assert _most_in_flight(logs, silent) == 2, logs


def test_only_the_named_ports_and_cameras_are_probed_when_asked(
    zfm_sims, silent_ports, fake_dev, monkeypatch
) -> None:
    """`capture-agent devices` wrote the module's handshake to every serial port the machine lists, at each
    discovery baud: a GPS, a modem or a console on another UART got those bytes, and so did the test machine's
    own /dev/ttyS0 in every test that ran the command. ``named_only`` (``--only-named``) probes what was named.
    The machine's listing is the one thing stood in for: a real silent port, listed as its own would be."""
    from serial.tools.list_ports_common import ListPortInfo

    module = zfm_sims("ttyA", "r307")
    bystander = silent_ports("ttyGPS")  # a UART the machine lists, with something else wired to it
    listed = [ListPortInfo(str(bystander), skip_link_detection=True)]
    monkeypatch.setattr("serial.tools.list_ports.comports", lambda: listed)
    node = fake_dev.node("video0")

    with capture_logs() as logs:
        named = discovery.discover([module.port], usb_backend=None, named_only=True)
    assert [f.path for f in named if f.kind == "serial"] == [module.port]
    assert node not in [f.path for f in named if f.kind == "camera"]
    assert all(entry.get("port") != str(bystander) for entry in logs), "the bystander got a handshake"

    with capture_logs() as logs:
        everything = discovery.discover([module.port], usb_backend=None)
    assert sorted(f.path for f in everything if f.kind == "serial") == sorted([module.port, str(bystander)])
    assert node in [f.path for f in everything if f.kind == "camera"]
    assert any(entry.get("port") == str(bystander) for entry in logs)
