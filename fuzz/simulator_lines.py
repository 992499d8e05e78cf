"""Fuzz the simulators' control lines (what a test rig writes on a simulator's standard input).

First byte even: the ZFM module's lines (place, lift, pace, unplug, replug,
list), odd: the camera's (show, still, nothing, dark, glare, garbage, fps, unplug). The
rest is standard input, given on a real file descriptor as a rig's pipe gives
it (the command loops read bytes off the descriptor, not a text ``sys.stdin``). The simulators are
the real ones, not started (no serving thread): the ZFM module takes its fingers
from a folder of four small F_I.tif images (one unreadable), the camera is a
SimulatedCamera; the camera's ``replug`` line is left out (it starts an HTTP
server, and its ``unplug`` then waits half a second: a fuzzer would spend its time
there).

What a line may do: be done, or be reported on stderr as a JSON line while the
simulator goes on. Anything escaping the command loop is a finding: it would end
the rig's control of the simulator.

The loops are the CLI's own (``simulators.cli._commands`` / ``_camera_commands``, private):
what is fuzzed is what the CLI lets escape, the reading of standard input included,
around the public ``module_command`` / ``camera_command`` they call.
"""

from __future__ import annotations

import contextlib
import io
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

from simulators import cli
from simulators.camera import SimulatedCamera
from simulators.fingers import FolderFingerSource
from simulators.zfm import SimulatedModule

_dir = tempfile.TemporaryDirectory(prefix="fuzz-sim-")
_made: dict[str, object] = {}


def _module() -> tuple[SimulatedModule, FolderFingerSource]:
    if "module" not in _made:
        folder = Path(_dir.name)
        for name in ("1_1.tif", "1_2.tif", "2_1.tif"):
            cv2.imwrite(str(folder / name), np.full((64, 64), 128, np.uint8))
        (folder / "3_1.tif").write_bytes(b"not an image")
        source = FolderFingerSource(folder)
        _made["source"] = source
        _made["module"] = SimulatedModule("r307", finger_source=source.image)
    return _made["module"], _made["source"]  # type: ignore[return-value]


def _camera() -> SimulatedCamera:
    if "camera" not in _made:
        _made["camera"] = SimulatedCamera((160, 120))
    return _made["camera"]  # type: ignore[return-value]


def TestOneInput(data: bytes) -> None:
    if not data:
        return
    text = data[1:]
    if data[0] % 2:
        text = b"".join(line for line in text.splitlines(keepends=True) if line.split()[:1] != [b"replug"])
    stdin = Path(_dir.name) / "stdin"
    stdin.write_bytes(text)
    saved = sys.stdin
    try:
        with open(stdin, encoding="utf-8") as sys.stdin, contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            if data[0] % 2 == 0:
                module, source = _module()
                cli._commands(module, source)
            else:
                cli._camera_commands(_camera())
    finally:
        sys.stdin = saved


if __name__ == "__main__":
    from fuzz.common import main

    main("simulator_lines", TestOneInput, sys.argv)
