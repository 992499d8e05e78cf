"""Shared fixtures. Each area of the project has its own section below.

Everything a test starts (servers, pseudo-terminals, processes) is stopped by the
fixture that started it; every port is on 127.0.0.1 and chosen free at run time.
"""

from __future__ import annotations

# ---------------------------------------------------------------- general

# ---------------------------------------------------------------- verifier / PKI

# ---------------------------------------------------------------- agent

# ---------------------------------------------------------------- fingerprints

# ---------------------------------------------------------------- serial modules
