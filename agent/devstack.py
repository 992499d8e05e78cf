"""A local verifier and a provisioned device in a temporary folder.

For the demo, the benchmarks and the end-to-end tests: they all need the same
thing, a development PKI, the reference verifier running as a real process on
127.0.0.1, and a device provisioned against it with a one-time token. The
verifier is driven only through its command line (`capture-verifier`), the way an
installer drives it: the agent never imports the verifier's code.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from agent.config import AgentConfig, parse_config
from agent.identity import DeviceIdentity
from agent.provision import provision

READY_TIMEOUT_S = 20.0


def _verifier_command() -> list[str]:
    """`capture-verifier` from the same environment as this Python."""
    exe = Path(sys.executable).with_name("capture-verifier")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "verifier.cli"]


def verifier_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*_verifier_command(), *args], capture_output=True, text=True, check=check, timeout=60)


@dataclass
class LocalVerifier:
    """The reference verifier as a child process, with its PKI folder."""

    pki_dir: Path
    host: str = "127.0.0.1"
    port: int = 0
    extra_args: tuple[str, ...] = ()
    nofile: int | None = None  # the child's soft descriptor limit (tests of descriptor floods)
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    ca_fingerprint: str = ""

    @property
    def log_path(self) -> Path:
        """The verifier's log (JSON lines on stderr), kept for tests and the demo."""
        return self.pki_dir / "verifier.log"

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    def init_pki(self) -> str:
        out = verifier_cli("pki", "init", str(self.pki_dir)).stdout
        found = re.search(r"\b[0-9a-f]{64}\b", out)
        if not found:
            raise RuntimeError(f"`capture-verifier pki init` printed no CA fingerprint: {out!r}")
        self.ca_fingerprint = found.group(0)
        return self.ca_fingerprint

    def start(self, port: int | None = None) -> LocalVerifier:
        ready = self.pki_dir / f"ready-{os.getpid()}-{time.monotonic_ns()}.json"
        wanted = self.port if port is None else port
        command = [*_verifier_command(), "serve", "--pki", str(self.pki_dir), "--host", self.host]
        command += ["--port", str(wanted), "--ready-file", str(ready), *self.extra_args]
        with open(self.log_path, "ab") as log_file:  # the child keeps its own descriptor
            self.process = subprocess.Popen(
                command, stdout=subprocess.DEVNULL, stderr=log_file, preexec_fn=self._limits if self.nofile else None
            )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not ready.exists() or not ready.read_text().strip():
            if self.process.poll() is not None:
                err = self.log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"the verifier exited with {self.process.returncode}: {err}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the verifier did not become ready in time")
            time.sleep(0.05)
        self.port = int(json.loads(ready.read_text())["port"])
        ready.unlink(missing_ok=True)
        return self

    def _limits(self) -> None:
        """In the child, before exec: lower the soft descriptor limit (the hard one stays)."""
        import resource

        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (int(self.nofile or 0), hard))

    def new_token(self, device_id: str) -> str:
        out = verifier_cli("token", "new", "--pki", str(self.pki_dir), "--device", device_id).stdout
        for line in out.splitlines():
            if line.lower().startswith("token"):
                return line.split(":", 1)[1].strip() if ":" in line else line.split()[-1]
        return out.split()[0]

    def revoke(self, device_id: str) -> None:
        verifier_cli("device", "revoke", "--pki", str(self.pki_dir), device_id)

    def mark_high_risk(self, subject_id: str) -> None:
        verifier_cli("subject", "high-risk", "--pki", str(self.pki_dir), subject_id)

    def allow(
        self, device_id: str, operations: str | None = None, groups: str | None = None, sensor: str | None = None
    ) -> None:
        """Set the device's access rule (comma lists; groups '*' for any; sensor: accept|step-up|refuse)."""
        args = ["--operations", operations] if operations is not None else []
        args += ["--groups", groups] if groups is not None else []
        args += ["--sensor-assertions", sensor] if sensor is not None else []
        verifier_cli("device", "allow", "--pki", str(self.pki_dir), device_id, *args)

    def set_subject_group(self, subject_id: str, group: str) -> None:
        verifier_cli("subject", "group", "--pki", str(self.pki_dir), subject_id, group)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)

    @classmethod
    @contextlib.contextmanager
    def running(
        cls, pki_dir: Path, port: int = 0, extra_args: tuple[str, ...] = (), nofile: int | None = None
    ) -> Iterator[LocalVerifier]:
        """A fresh PKI in ``pki_dir`` and the verifier started on it; stopped on exit."""
        with cls(pki_dir, extra_args=extra_args, nofile=nofile) as verifier:
            verifier.init_pki()
            verifier.start(port)
            yield verifier

    def __enter__(self) -> LocalVerifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def device_config(state_dir: Path, verifier_url: str, **sections: dict) -> AgentConfig:
    """An agent config for a development device: its own state dir, the dev keyring."""
    data: dict[str, dict] = {
        "agent": {"state_dir": str(state_dir)},
        "verifier": {"url": verifier_url},
        "keyring": {"backend": "file-insecure-dev"},
        "network": {"retries": 2, "backoff_base_s": 0.05},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return parse_config(data, source="devstack")


async def provision_device(
    verifier: LocalVerifier, state_dir: Path, device_id: str, **sections: dict
) -> tuple[AgentConfig, DeviceIdentity]:
    """A development device provisioned against ``verifier`` with a fresh one-time token."""
    config = device_config(state_dir, verifier.url, **sections)
    result = await provision(config, verifier.new_token(device_id), verifier.ca_fingerprint)
    return config, result.identity


def write_config_file(path: Path, config: AgentConfig, extra: str = "") -> Path:
    """The TOML file a daemon of this development device reads (plus extra sections)."""
    path.write_text(
        f'[agent]\nstate_dir = "{config.agent.state_dir}"\n[verifier]\nurl = "{config.verifier.url}"\n'
        f'[keyring]\nbackend = "file-insecure-dev"\n{extra}'
    )
    return path
