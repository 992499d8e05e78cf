"""The benchmarks' command lines as a person runs them: figures on stdout or one error line, a clean stop.

Refusals are checked in-process through each ``main()`` (they come before any
long work); stopping one needs the real process, its children and its files.
"""

from __future__ import annotations

import importlib
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from bench.cli import BenchError, parallel_map

pytestmark = pytest.mark.usefixtures("keep_process_settings")


def one_finger_folder(folder: Path) -> Path:
    folder.mkdir()
    for name in ("1_1.png", "1_2.png"):
        cv2.imwrite(str(folder / name), np.full((64, 64), 200, np.uint8))
    return folder


def one_face_each_folder(folder: Path) -> Path:
    for person in ("s1", "s2"):
        (folder / person).mkdir(parents=True)
        cv2.imwrite(str(folder / person / "1.pgm"), np.full((112, 92), 128, np.uint8))
    return folder


REFUSED = {
    "fingerprint-data-missing": ("fingerprint", ["--data", "{tmp}/none"], "not a folder"),
    "fingerprint-data-one-finger": ("fingerprint", ["--data", "{one_finger}"], "no impostor pairs"),
    "fingerprint-dpi-0": ("fingerprint", ["--synthetic", "3", "--dpi", "0"], "dpi is no fingerprint sensor's"),
    "fingerprint-calibrate-dpi-not-a-number": ("fingerprint", ["--calibrate", "{tmp}:abc"], "no resolution"),
    "fingerprint-calibrate-dpi-superscript": ("fingerprint", ["--calibrate", "{tmp}:5\u00b2"], "no resolution"),
    "fingerprint-synthetic-1": ("fingerprint", ["--synthetic", "1"], "impostor pairs need two fingers"),
    "fingerprint-synthetic-negative": ("fingerprint", ["--synthetic", "-3"], "impostor pairs need two fingers"),
    "fingerprint-gallery-0": ("fingerprint", ["--synthetic", "3", "--gallery", "0"], "--gallery 0 is below 1"),
    "fingerprint-gallery-negative": ("fingerprint", ["--synthetic", "3", "--gallery", "-4"], "--gallery -4 is below 1"),
    "fingerprint-workers-0": ("fingerprint", ["--synthetic", "3", "--workers", "0"], "--workers 0 is below 1"),
    "fingerprint-search-workers-0": ("fingerprint", ["--synthetic", "3", "--search-workers", "0"], "is below 1"),
    "fingerprint-explain-out-not-a-folder": (
        "fingerprint", ["--explain", "{tmp}/print.png", "--out", "{tmp}/file.txt/stages"], "cannot make the folder"
    ),
    "face-data-missing": ("face", ["--data", "{tmp}/none"], "not a folder"),
    "face-calibrate-missing": ("face", ["--calibrate", "{tmp}/none"], "not a folder"),
    "face-one-image-each": ("face", ["--data", "{one_face_each}"], "no genuine pairs"),
    "face-fmr-0": ("face", ["--data", "{tmp}", "--fmr", "0"], "not a rate"),
    "fusion-faces-missing": ("fusion", ["--fingers", "{tmp}", "--faces", "{tmp}/none"], "not a folder"),
    "fusion-fmr-2": ("fusion", ["--fingers", "{tmp}", "--faces", "{tmp}", "--fmr", "2"], "not a rate"),
    "fusion-no-fvc-folders": ("fusion", ["--fingers", "{tmp}", "--faces", "{tmp}"], "no FVC2002 database"),
    "tls-requests-0": ("tls", ["--requests", "0"], "a median needs a request"),
    "e2e-verifications-0": ("e2e", ["--verifications", "0"], "a percentile needs a verification"),
    "serial-rounds-0": ("serial", ["--rounds", "0"], "a median needs a download"),
    "devices-rounds-negative": ("devices", ["--rounds", "-1"], "a percentile needs a capture"),
    "footprint-idle-0": ("footprint", ["--idle-seconds", "0"], "no idle window"),
    "flood-seconds-0": ("flood", ["--seconds", "0"], "outside a phase's bounds"),
    "flood-seconds-nan": ("flood", ["--seconds", "nan"], "outside a phase's bounds"),
    "flood-seconds-100": ("flood", ["--seconds", "100"], "outside a phase's bounds"),
    "camera_idle-size-not-WxH": ("camera_idle", ["--size", "abc"], "not WIDTHxHEIGHT"),  # was a traceback
    "camera_idle-size-too-small": ("camera_idle", ["--size", "10x10"], "outside what the camera serves"),
    "camera_idle-fps-nan": ("camera_idle", ["--fps", "nan"], "no camera's rate"),
    "camera_idle-seconds-0": ("camera_idle", ["--seconds", "0"], "no idle window"),
}

BENCHMARKS = ["camera_idle", "devices", "e2e", "face", "fingerprint", "flood", "footprint", "fusion", "serial", "tls"]


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_what_gives_no_figure_is_refused_in_one_line_naming_the_fix(case: str, tmp_path: Path, capsys) -> None:
    name, args, said = REFUSED[case]
    (tmp_path / "file.txt").write_text("not a folder")
    places = {"tmp": tmp_path}
    if "{one_finger}" in args[1]:
        places["one_finger"] = one_finger_folder(tmp_path / "one-finger")
    if "{one_face_each}" in args[1]:
        places["one_face_each"] = one_face_each_folder(tmp_path / "faces")
    main = importlib.import_module(f"bench.{name}").main
    assert main([arg.format(**places) for arg in args]) == 2
    captured = capsys.readouterr()
    last = captured.err.strip().splitlines()[-1]
    assert last.startswith(f"python -m bench.{name}: error: ") and "(fix: " in last, captured.err
    assert said in last, last
    assert "Traceback" not in captured.err and captured.out == "", "no figures, no traceback"


@pytest.mark.parametrize("name", BENCHMARKS)
@pytest.mark.parametrize(("args", "said"), [(["--bogus"], "unrecognized arguments: --bogus"),
                                            (["--seconds"], "expected one argument")])
def test_a_usage_mistake_is_one_line_naming_the_benchmarks_help(name: str, args: list[str], said: str,
                                                                capsys) -> None:
    """argparse printed its usage block and an error without a fix (README: one line, with the fix)."""
    if said == "expected one argument":  # an option of each benchmark, given no value
        parser_text = importlib.import_module(f"bench.{name}").__file__
        option = re.findall(r'add_argument\(\s*"(--[a-z-]+)"', Path(parser_text).read_text())[0]
        args = [option]
    main = importlib.import_module(f"bench.{name}").main
    assert main(args) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(f"python -m bench.{name}: error: ") and said in lines[0], lines[0]
    assert lines[0].endswith(f"(fix: `python -m bench.{name} --help` shows its options)"), lines[0]
    assert captured.out == ""


def test_a_face_folder_with_no_face_found_is_refused_not_printed_as_nan(tmp_path: Path, capsys) -> None:
    from bench.face import main

    for person in ("s1", "s2"):
        (tmp_path / person).mkdir()
        for n in (1, 2):  # a plain grey wall: the detector finds no face
            cv2.imwrite(str(tmp_path / person / f"{n}.pgm"), np.full((112, 92), 128, np.uint8))
    assert main(["--data", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert "a face was found in 0 of 4 images" in captured.err and captured.out == ""


def _fails(job: int) -> int:
    if job == 3:
        raise BenchError(f"job {job} cannot run", "give it another")
    return job * 2


def test_a_worker_error_reaches_the_caller_with_its_fix() -> None:
    assert parallel_map(_fails, range(3), 2) == [0, 2, 4]
    with pytest.raises(BenchError) as raised:
        parallel_map(_fails, range(6), 2)
    assert (raised.value.message, raised.value.fix) == ("job 3 cannot run", "give it another")


def children(pid: int) -> set[int]:
    """The processes ``pid`` started, read from /proc (its threads' children included)."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found |= {int(n) for n in (task / "children").read_text().split()}
    return found


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie has ended, only not reaped yet


def stop_midway(
    command: list[str], ready: str, sig: int, kids: int = 1
) -> tuple[subprocess.CompletedProcess[str], set[int], str]:
    """Start a benchmark, wait for a stderr line holding ``ready`` and ``kids`` child processes, send ``sig`` to it
    alone; what it printed and the children it had."""
    proc = subprocess.Popen(
        [sys.executable, "-m", *command], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    seen = []
    try:
        for line in proc.stderr:
            seen.append(line)
            if ready in line:
                break
        started = children(proc.pid)
        deadline = time.monotonic() + 30
        while len(started) < kids and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)  # the pool's processes start right after its progress line
            started = children(proc.pid)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, "".join(seen) + err), started, "".join(seen)


def test_sigterm_stops_the_verifier_and_removes_the_keys_it_made() -> None:
    done, started, before = stop_midway(
        ["bench.tls", "--requests", "1000000"], "insecure_dev_keyring_written", signal.SIGTERM
    )
    assert done.returncode == 130 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1] == "python -m bench.tls: interrupted, no figures printed"
    assert started, "the verifier was running"
    assert not [pid for pid in started if running(pid)], "no verifier left running"
    work = Path(re.search(r'"path": "([^"]+?/bench-tls-[^/"]+)/', before).group(1))
    assert not work.exists(), "its temporary folder (a PKI with private keys) is removed"
    assert done.stdout == ""


def test_a_signal_while_the_workers_are_forked_stops_cleanly_without_a_dropped_traceback() -> None:
    """SIGTERM landing in logging's at-fork hook raised KeyboardInterrupt there: Python printed it as "Exception
    ignored" with a traceback, and dropped it (seen once in CI). The hook here sends it at each fork."""
    script = (
        "import os, signal\n"
        "from bench.cli import bench_main, parallel_map\n"
        "os.register_at_fork(after_in_parent=lambda: os.kill(os.getpid(), signal.SIGTERM))\n"
        "@bench_main('python -m bench.x')\n"
        "def main(argv):\n"
        "    parallel_map(abs, range(40), 2)\n"
        "    return 0\n"
        "raise SystemExit(main([]))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 130, done.stderr
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr, done.stderr
    assert "interrupted, no figures printed" in done.stderr


def test_a_worker_signalled_before_it_set_its_handlers_ends(tmp_path) -> None:
    """terminate()'s SIGTERM reaching a worker before its own handlers were set met the parent's handler, copied
    at the fork, which swallowed it: the worker ran on and the parent's join() hung (3 runs in 60 of the test
    above). Here the first worker signals itself at once after its fork: it must end without taking a job."""
    first = tmp_path / "first-worker.pid"
    script = (
        "import json, os, signal, sys\n"
        "from bench.cli import bench_main, parallel_map\n"
        "forks = [0]\n"
        "def child():\n"
        "    if forks[0] == 0:  # the count this worker was forked with: the first fork\n"
        f"        open({str(first)!r}, 'w').write(str(os.getpid()))\n"
        "        os.kill(os.getpid(), signal.SIGTERM)\n"
        "os.register_at_fork(after_in_parent=lambda: forks.__setitem__(0, forks[0] + 1), after_in_child=child)\n"
        "def whose(job):\n"
        "    return os.getpid()\n"
        "@bench_main('python -m bench.x')\n"
        "def main(argv):\n"
        "    print(json.dumps(sorted(set(parallel_map(whose, range(40), 2)))))\n"
        "    return 0\n"
        "raise SystemExit(main([]))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    workers = json.loads(done.stdout)
    assert int(first.read_text()) not in workers, "the signalled worker took jobs: its SIGTERM was swallowed"
    assert len(workers) >= 1 and not running(int(first.read_text()))


def test_sigterm_ends_the_worker_processes() -> None:
    command = ["bench.fingerprint", "--synthetic", "40", "--workers", "2", "--gallery", "10"]
    done, started, _ = stop_midway(command, "synthetic population", signal.SIGTERM, kids=2)
    assert done.returncode == 130 and "Traceback" not in done.stderr, done.stderr
    assert len(started) == 2, "both workers were running"
    assert not [pid for pid in started if running(pid)], "no worker left running"
