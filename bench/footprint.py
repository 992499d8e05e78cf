"""`python -m bench.footprint`: what the daemon costs a Raspberry Pi at rest.

Starts the reference verifier and a provisioned device in a temporary folder,
runs `capture-agent run` as systemd would (a real NOTIFY_SOCKET, WatchdogSec=30s),
and prints JSON: time from start to READY=1, resident memory after start, and CPU
seconds over an idle window (target: under 1 % of one core).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from agent.devstack import LocalVerifier, provision_device, write_config_file
from agent.logs import configure_logging
from bench.cli import BenchError, BenchParser, bench_main, progress

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@bench_main("python -m bench.footprint")
def main(argv: list[str] | None = None) -> int:
    parser = BenchParser(prog="python -m bench.footprint", description=__doc__)
    parser.add_argument("--idle-seconds", type=float, default=30.0, help="the idle window measured (default 30)")
    args = parser.parse_args(argv)
    if not 0 < args.idle_seconds <= 3600:
        raise BenchError(
            f"--idle-seconds {args.idle_seconds:g} is no idle window", "give seconds above 0, at most 3600"
        )
    configure_logging("error", "json", stream=sys.stderr)
    progress("starting a local verifier and provisioning a device")
    with tempfile.TemporaryDirectory(prefix="bench-footprint-") as tmp:
        work = Path(tmp)
        with LocalVerifier.running(work / "pki") as verifier:
            config, _ = asyncio.run(provision_device(verifier, work / "state", "bench-footprint"))
            config_file = write_config_file(work / "agent.toml", config, '[logging]\nlevel = "warning"\n')
            notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            notify.bind(str(work / "notify.sock"))
            notify.settimeout(30)
            env = {**os.environ, "NOTIFY_SOCKET": str(work / "notify.sock"), "WATCHDOG_USEC": "30000000"}
            progress("starting `capture-agent run` and waiting for READY=1")
            started = time.monotonic()
            proc = subprocess.Popen(
                [sys.executable, "-m", "agent.cli", "--config", str(config_file), "run"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                try:
                    while b"READY=1" not in notify.recv(4096):
                        pass
                except TimeoutError:
                    raise BenchError(
                        f"the agent daemon sent no READY=1 within 30 s (exit code {proc.poll()})",
                        "run `capture-agent run` with the same config by hand to see why it does not start",
                    ) from None
                ready_s = time.monotonic() - started
                time.sleep(1.0)  # let the first delivery finish
                rss = rss_mib(proc.pid)
                cpu_before = cpu_seconds(proc.pid)
                print(f"idle for {args.idle_seconds:g} s ...", file=sys.stderr)
                time.sleep(args.idle_seconds)
                cpu_idle = cpu_seconds(proc.pid) - cpu_before
            finally:
                proc.terminate()
                proc.wait(20)
                notify.close()
    print(
        json.dumps(
            {
                "ready_s": round(ready_s, 3),
                "rss_mib_after_start": round(rss, 1),
                "idle_seconds": args.idle_seconds,
                "cpu_seconds_idle": round(cpu_idle, 3),
                "cpu_percent_of_one_core_idle": round(100 * cpu_idle / args.idle_seconds, 3),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
