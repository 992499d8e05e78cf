"""The test suite's own setup: what conftest promises the tests' processes."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import numpy as np
import pytest

# Names the OpenBLAS builds numpy ships export for the thread count (plain, 64-bit-integer, scipy-openblas).
_GET_THREADS = (
    "scipy_openblas_get_num_threads64_",
    "openblas_get_num_threads64_",
    "openblas_get_num_threads",
)


def _loaded_openblas() -> ctypes.CDLL | None:
    """The OpenBLAS library this process has loaded (through numpy), or None when numpy uses another BLAS."""
    np.dot(np.ones((2, 2)), np.ones((2, 2)))  # numpy loads its BLAS at import; this makes sure it is used
    maps = Path("/proc/self/maps").read_text().splitlines()
    paths = {line.split()[-1] for line in maps if "openblas" in line.lower() and line.split()[-1].startswith("/")}
    return ctypes.CDLL(sorted(paths)[0]) if paths else None


def test_numpy_loaded_after_the_one_blas_thread_setting() -> None:
    """OpenBLAS reads OPENBLAS_NUM_THREADS once, when numpy loads: conftest sets it before anything imports numpy.

    Imported earlier (as it was from 2026-11-30 to 2026-12-02), numpy left every test process a spinning worker
    thread per core, which on the 2 shared cores turned a 0.7 s matcher test into 49 s. The count OpenBLAS runs
    with is the one the environment asked for only when the setting came first.
    """
    library = _loaded_openblas()
    if library is None:
        pytest.skip("numpy here does not use OpenBLAS: no thread setting to check")
    getter = next((getattr(library, name) for name in _GET_THREADS if hasattr(library, name)), None)
    assert getter is not None, f"OpenBLAS exports none of {_GET_THREADS}: add this build's name"
    getter.restype = ctypes.c_int
    assert getter() == int(os.environ["OPENBLAS_NUM_THREADS"])
