"""Which devices a session has had the person use, read from its events: what a cancel frees, what a 409 names.

One reading for the two places that say it: the CLI after Ctrl-C ("cancelled; the camera and the sensor are
free") and the local API refusing a second session ("a session is running on the camera and the sensor"). Both
named only the device of the modality the session was started with (the API: always "the sensor"), though a
step-up asks for the other factor in the same session. A ``step_up`` event names the factor asked for next; a
face capture starts with its ``challenge`` event, a finger one with the finger prompts (a face added with
``verify_first`` is preceded by a finger verification).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from protocol.face_template import ACR_FACE, FACE

CAMERA, SENSOR = "the camera", "the sensor"
FINGER_PROMPTS = frozenset({"place_finger", "lift_finger"})  # a finger session's own prompts (agent/sessions.py)


class DevicesInUse:
    """The devices used so far, in the order the session came to them."""

    def __init__(self, modality: str, events: Iterable[dict[str, Any]] = ()) -> None:
        self.devices: list[str] = [CAMERA if modality == FACE else SENSOR]
        for event in events:
            self.see(event)

    def see(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "step_up":
            self._add(CAMERA if event.get("acr_values") == ACR_FACE else SENSOR)  # a finger, or another finger
        elif kind == "challenge":
            self._add(CAMERA)
        elif kind == "prompt" and event.get("code") in FINGER_PROMPTS:
            self._add(SENSOR)

    def _add(self, device: str) -> None:
        if device not in self.devices:
            self.devices.append(device)

    def named(self) -> str:
        """"the camera", "the camera and the sensor"."""
        return " and ".join(self.devices)

    def named_as_subject(self) -> str:
        """As a sentence's subject: "the camera is", "the camera and the sensor are"."""
        return f"{self.named()} {'is' if len(self.devices) == 1 else 'are'}"
