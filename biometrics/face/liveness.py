"""Active liveness: a head-turn challenge derived from the verifier's nonce, and its tracker.

The challenge. ``challenge_for(nonce)`` turns the verifier's nonce into a
sequence of head turns, each followed by a look back at the camera, e.g. left,
centre, right, centre. The sequence is HMAC-SHA256(nonce) under a fixed label,
so the verifier, which issued the nonce, knows (and audits) what the person was
asked without being told, and a device cannot pick an easier one. Blinks are not
asked for: YuNet's five landmarks carry no eyelid, so a blink could not be
detected reliably.

The tracker. ``LivenessTracker.observe(t, face)`` takes each frame's time and
chosen face (or None) and says where the challenge stands: the prompt to show
(``turn_head_left``, ``turn_head_right``, ``look_at_camera``), and at the end
passed or failed with a reason code. It starts once a frontal face is seen;
each step must be reached within ``step_timeout`` seconds of the previous one; a
turn is a yaw beyond ``turn_yaw`` degrees to the asked side, a look back a yaw
within ``center_yaw``. The face must stay in view (a gap over ``max_gap``
seconds fails) and move continuously (a jump of more than ``max_jump`` eye
distances between two frames is another face, and fails). ``template_frames``
are the indices of the frontal frames seen inside the challenge, between its
start and its end: the template is made from those, so the face that passed the
challenge is the face enrolled or verified.

Failures and what they catch:
- ``liveness_still``: no turn within the step's window and the yaw barely moved:
  a printed photo or a screen held in front of the camera. Turning a flat photo
  shortens the eye distance but does not move the nose against the eyes, so it
  shows no yaw either.
- ``liveness_wrong_sequence``: a turn to the other side than asked, e.g. a
  recording of another session, made for another nonce.
- ``liveness_timeout``: movement, but not the asked turn in time.
- ``liveness_face_lost``: the face left the view, or was swapped, mid-challenge.

Reach, honestly: this stops a still photo, a screen showing a photo, and the
replay of a recording made for another challenge (a random recording of two
turns follows a given challenge of two with probability 1/4; more turns lower
that, at the cost of a longer session). It does not stop a video made for this
very nonce in real time (a puppeted 3-D mask or a real-time face reenactment),
and no ISO/IEC 30107-3 attack-presentation figure is claimed: none was measured.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from dataclasses import dataclass, field

import numpy as np

from biometrics.face.errors import LivenessError
from biometrics.face.pose import pose_of
from biometrics.face.types import Face

TURN_LEFT = "turn_head_left"
TURN_RIGHT = "turn_head_right"
LOOK_BACK = "look_at_camera"

STILL = "liveness_still"
WRONG_SEQUENCE = "liveness_wrong_sequence"
TIMEOUT = "liveness_timeout"
FACE_LOST = "liveness_face_lost"

LABEL = b"capture-agent face liveness challenge v1"
MIN_NONCE, MAX_NONCE = 16, 256
DEFAULT_TURNS = 2


@dataclass(frozen=True, slots=True)
class Challenge:
    """The steps asked of the person, in order (each a prompt code)."""

    steps: tuple[str, ...]


def challenge_for(nonce: bytes, turns: int = DEFAULT_TURNS) -> Challenge:
    """The challenge a nonce stands for: ``turns`` head turns (left or right), each followed by a look back."""
    if not isinstance(nonce, bytes | bytearray) or not MIN_NONCE <= len(nonce) <= MAX_NONCE:
        raise LivenessError(
            f"a liveness nonce is {MIN_NONCE}..{MAX_NONCE} bytes from the verifier's challenge, "
            f"got {type(nonce).__name__} of length {len(nonce) if hasattr(nonce, '__len__') else '?'}"
        )
    if not isinstance(turns, int) or not 1 <= turns <= 8:
        raise LivenessError(f"a challenge has 1..8 turns, got {turns!r}")
    digest = hmac.new(LABEL, bytes(nonce), hashlib.sha256).digest()
    steps: list[str] = []
    for i in range(turns):
        steps += [TURN_LEFT if (digest[0] >> i) & 1 else TURN_RIGHT, LOOK_BACK]
    return Challenge(tuple(steps))


@dataclass(frozen=True, slots=True)
class LivenessState:
    """Where the challenge stands after a frame.

    ``status`` is "waiting" (no frontal face yet), "running", "passed" or
    "failed"; ``prompt`` the code to show now (None once decided); ``reason`` the
    failure code; ``template_frames`` the frontal frames inside the challenge.
    """

    status: str
    prompt: str | None
    step: int
    reason: str | None = None
    template_frames: tuple[int, ...] = ()

    @property
    def decided(self) -> bool:
        return self.status in ("passed", "failed")


@dataclass
class LivenessTracker:
    """Follows one challenge frame by frame (see the module docstring)."""

    challenge: Challenge
    turn_yaw: float = 20.0
    center_yaw: float = 10.0
    step_timeout: float = 2.5
    max_gap: float = 0.5
    max_jump: float = 1.0
    still_range: float = 6.0
    _frame: int = field(default=-1, init=False, repr=False)
    _last_t: float | None = field(default=None, init=False, repr=False)
    _last_seen: float | None = field(default=None, init=False, repr=False)
    _last_face: Face | None = field(default=None, init=False, repr=False)
    _step: int = field(default=0, init=False, repr=False)
    _step_started: float | None = field(default=None, init=False, repr=False)
    _yaws: list[float] = field(default_factory=list, init=False, repr=False)
    _frontal: list[int] = field(default_factory=list, init=False, repr=False)
    _state: LivenessState | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.challenge.steps or any(s not in (TURN_LEFT, TURN_RIGHT, LOOK_BACK) for s in self.challenge.steps):
            raise LivenessError(f"unknown challenge steps {self.challenge.steps!r}; make one with challenge_for()")
        if not 0 < self.center_yaw < self.turn_yaw < 90:
            raise LivenessError("need 0 < center_yaw < turn_yaw < 90 degrees")

    @property
    def state(self) -> LivenessState:
        return self._state or LivenessState("waiting", LOOK_BACK, 0)

    def _end(self, status: str, reason: str | None = None) -> LivenessState:
        self._state = LivenessState(status, None, self._step, reason, tuple(self._frontal) if not reason else ())
        return self._state

    def _running(self) -> LivenessState:
        self._state = LivenessState("running", self.challenge.steps[self._step], self._step, None, tuple(self._frontal))
        return self._state

    def observe(self, t: float, face: Face | None) -> LivenessState:
        """Feed one frame: its time in seconds (monotonic) and the face chosen in it (None: no face)."""
        if not isinstance(t, int | float) or not math.isfinite(t):
            raise LivenessError(f"frame time must be a finite number of seconds, got {t!r}")
        if self._last_t is not None and t < self._last_t:
            raise LivenessError(f"frame times must not go back ({t} after {self._last_t}); use a monotonic clock")
        if self.state.decided:
            return self.state
        self._frame += 1
        self._last_t = t
        started = self._step_started is not None
        if face is None:
            if started and self._last_seen is not None and t - self._last_seen > self.max_gap:
                return self._end("failed", FACE_LOST)
            return self._running() if started else self.state
        if started and self._last_seen is not None and t - self._last_seen > self.max_gap:
            return self._end("failed", FACE_LOST)
        if started and self._last_face is not None and _jump(self._last_face, face) > self.max_jump:
            return self._end("failed", FACE_LOST)
        yaw = pose_of(face.landmarks).yaw
        self._last_seen, self._last_face = t, face
        if not math.isfinite(yaw):
            return self._running() if started else self.state
        frontal = abs(yaw) <= self.center_yaw
        if not started:
            if not frontal:
                return self.state
            self._step_started = t
            self._frontal.append(self._frame)
            self._yaws.append(yaw)
            return self._running()
        self._yaws.append(yaw)
        asked = self.challenge.steps[self._step]
        if frontal:
            self._frontal.append(self._frame)
        side = TURN_LEFT if yaw >= self.turn_yaw else TURN_RIGHT if yaw <= -self.turn_yaw else None
        if asked in (TURN_LEFT, TURN_RIGHT) and side is not None and side != asked:
            return self._end("failed", WRONG_SEQUENCE)
        if (asked == LOOK_BACK and frontal) or side == asked:
            self._step += 1
            self._step_started = t
            if self._step == len(self.challenge.steps):
                return self._end("passed")
            return self._running()
        if t - self._step_started > self.step_timeout:
            moved = float(np.ptp(self._yaws)) if self._yaws else 0.0
            return self._end("failed", STILL if moved < self.still_range else TIMEOUT)
        return self._running()


def _jump(a: Face, b: Face) -> float:
    """Mean landmark displacement between two faces, in eye distances (a different face jumps far)."""
    scale = max(min(a.eye_distance, b.eye_distance), 1e-6)
    return float(np.mean(np.hypot(*(a.landmarks - b.landmarks).T)) / scale)
