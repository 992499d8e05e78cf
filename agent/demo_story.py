"""The biometric half of `make demo`: people at a simulated sensor, the verifier deciding.

The simulated serial module runs as its own process (`capture-simulator`), the
way a test rig runs it; the demo plays the people at the sensor by writing
`place` and `lift` lines to it when the session prompts. Everything else is the
product: the ZFM driver, on-device extraction, signed requests over mTLS, the
verifier's matching, step-up and replay protection.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.client import VerifierClient
from agent.config import AgentConfig
from agent.demo_faces import face_story
from agent.errors import NonceUsedError
from agent.identity import DeviceIdentity
from agent.sessions import CaptureSession
from agent.verifier_api import VerifierAPI

# name: (first finger, second finger). Synthetic fingers 0 and 2 of seed 7 look alike to the matcher,
# and every enrollment is searched 1:N (one person, one identity): chloe gets finger 5.
PEOPLE = {"ana": (0, 10), "ben": (1, 11), "chloe": (5, 12)}


class Person:
    """Answers the session's prompts by putting fingers on the simulated sensor."""

    def __init__(self, simulator: subprocess.Popen[str], say: Callable[[str], None]) -> None:
        self.simulator = simulator
        self.say = say
        self.queue: list[tuple[int, int]] = []
        self.quiet = False  # still acts on prompts, without printing them

    def will_use(self, *placements: tuple[int, int], quiet: bool = False) -> Person:
        self.queue = list(placements)
        self.quiet = quiet
        return self

    def _say(self, text: str) -> None:
        if not self.quiet:
            self.say(text)

    def __call__(self, event: dict[str, Any]) -> None:
        assert self.simulator.stdin is not None
        if event["type"] == "prompt":
            self._say(f"  sensor: {event['message']}")
            if event["code"] == "place_finger" and self.queue:
                finger, impression = self.queue.pop(0)
                self.simulator.stdin.write(f"place {finger} {impression}\n")
            elif event["code"] == "lift_finger":
                self.simulator.stdin.write("lift\n")
            self.simulator.stdin.flush()
        elif event["type"] == "progress":
            done, total = event["step"], event["total"]
            self._say(f"  [{'#' * done}{'.' * (total - done)}] {done}/{total}")
        elif event["type"] == "step_up":
            self.say(f"  verifier asks for more: {event['acr_values']} ({', '.join(event['reasons'])})")


def start_simulator(work: Path) -> tuple[subprocess.Popen[str], str]:
    exe = Path(sys.executable).with_name("capture-simulator")
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "simulators.cli"]
    proc = subprocess.Popen(
        [*command, "zfm", "--model", "r307", "--seed", "7", "--link", str(work / "ttyZFM0")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    return proc, json.loads(proc.stdout.readline())["port"]


async def biometric_story(
    config: AgentConfig, identity: DeviceIdentity, work: Path, step: Callable[[str], None], say: Callable[[str], None]
) -> list[dict[str, float]]:
    from drivers.zfm.driver import ZfmModule

    step("People at a simulated sensor: an R307 serial module on a pseudo-terminal (capture-simulator)")
    simulator, port = start_simulator(work)
    person = Person(simulator, say)
    try:
        with ZfmModule(port) as reader:
            size = f"{reader.profile.image_width}x{reader.profile.image_height}"
            say(f"module on {port}: {size} pixels, opened by the driver")
            async with VerifierClient(config, identity) as client:

                def session(**options: Any) -> CaptureSession:
                    return CaptureSession(reader, client, emit=person, **options)

                step("Enrolling three people: three captures of two fingers each, quality-gated and cross-checked")
                for index, (name, (first, second)) in enumerate(PEOPLE.items()):
                    captures = [(finger, impression) for finger in (first, second) for impression in range(3)]
                    person.will_use(*captures, quiet=index > 0)
                    answer = await session().enroll(name, 3, fingers=2)
                    say(f"{name}: enrolled, {answer['templates']} templates (made on the device; images never left it)")

                step("Ana verifies: the device's first use, so the verifier asks for a second finger")
                person.will_use((0, 3), (10, 3))
                answer = await session().verify("ana")
                say(f"decision: {answer['decision']} (score {answer['score']}, threshold {answer['threshold']})")

                step("Ana again: a genuine verification, accepted")
                person.will_use((0, 4))
                answer = await session().verify("ana")
                say(f"decision: {answer['decision']} (score {answer['score']})")

                step("Ben claims to be Ana: an impostor, refused")
                person.will_use((1, 4))
                answer = await session().verify("ana")
                say(f"decision: {answer['decision']} (score {answer['score']})")

                step("A captured request replayed: refused")
                person.will_use((5, 4))
                record = await session().capture()
                api = VerifierAPI(client)
                challenge = await api.challenge("verify", "chloe")
                first = await api.verify("chloe", [record], challenge=challenge)
                say(f"first send: {getattr(first, 'decision', 'step-up')}")
                try:  # the same signed nonce sent again, as a captured request would be
                    await api.verify("chloe", [record], challenge=challenge)
                    say("UNEXPECTED: the replay was accepted")
                except NonceUsedError as exc:
                    say(f"replay: refused ({exc.status} {exc.slug}: {exc.problem.get('detail')})")

                await face_story(client, session, person, work / "pki", step, say)  # agent/demo_faces.py

                step("Decision latency by phase (3 genuine verifications at the module's real line speed; table below)")
                assert simulator.stdin is not None
                simulator.stdin.write("pace on\n")  # from here the image crosses the line as fast as a real R307's
                simulator.stdin.flush()
                reader.set_baud(115200)  # as the daemon runs a module: 3.5 s per image instead of 7 s at 57600
                rows = []
                for impression in range(5, 8):
                    person.will_use((1, impression), quiet=True)
                    s = session()
                    await s.verify("ben")
                    rows.append(
                        {
                            "capture": s.timings.capture_ms,
                            "extract": s.timings.extract_ms,
                            "network": s.timings.network_ms - s.timings.match_ms,
                            "match": s.timings.match_ms,
                            "network+match": s.timings.network_ms,
                        }
                    )
                return rows
    finally:
        if simulator.stdin is not None:
            simulator.stdin.close()
        simulator.terminate()
        simulator.wait(10)
        if simulator.stdout is not None:
            simulator.stdout.close()


def latency_table(rows: list[dict[str, float]], say: Callable[[str], None]) -> None:
    say(f"{'phase':<15}{'median ms':>10}{'max ms':>10}")
    for phase in rows[0]:
        values = [r[phase] for r in rows]
        say(f"{phase:<15}{statistics.median(values):>10.1f}{max(values):>10.1f}")
    say(
        "(capture = the finger placed + the image over the serial line at its real speed, 115200 baud "
        "(the person is told to lift as soon as the module has taken the image, so the finger is not held "
        "during the transfer; 57600 would take about 7 s, see bench.serial and bench.devices); extract = the "
        "template made on the device; network = the signed verification's round trip over mTLS/HTTP/2 "
        "(the nonce was fetched while the finger was placed); match = the verifier's matching, from its "
        "Server-Timing)"
    )
