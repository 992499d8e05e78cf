"""Fuzz the agent's config loading (agent.config.load_config) with arbitrary TOML bytes.

The bytes are written to a file in a temporary directory of the process and
loaded as the daemon loads its config (UTF-8 decoding, TOML, every section's
checks, the devices list). Typed error: ConfigError.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
from pathlib import Path

from agent.config import load_config
from agent.errors import ConfigError

_dir = tempfile.TemporaryDirectory(prefix="fuzz-config-")
_file = Path(_dir.name) / "agent.toml"


def TestOneInput(data: bytes) -> None:
    _file.write_bytes(data)
    with contextlib.suppress(ConfigError):
        load_config(_file)


if __name__ == "__main__":
    from fuzz.common import main

    main("config", TestOneInput, sys.argv)
