"""What a benchmark figure was measured on: the CPU's vector units.

Why: the matcher's throughput is bound by its float32 products (the pre-filter's
small matrix products, the local similarities), so it follows the vector units
more than the clock. OpenBLAS and numpy pick their kernels by them at run time:
the same code ran 119k to 136k comparisons per second per core on 2-core VMs
with AVX-512 (OpenBLAS's SkylakeX kernels), and 67k to 87k on a 2-core AMD EPYC
VM with AVX2 and FMA but no AVX-512 (its Haswell kernels; the pre-filter's
products at 26 to 33 GFLOP/s in a search, see prefilter.block_best; FVC2002 folders and 200 synthetic
fingers alike). A figure without this is hard to compare with
another machine's.
"""

from __future__ import annotations

from pathlib import Path

# Widest first. x86: AVX-512, AVX2, FMA, AVX, SSE4.2; Arm (a Raspberry Pi 4 or 5): Advanced SIMD.
VECTOR_UNITS = ("avx512f", "avx2", "fma", "avx", "sse4_2", "asimd", "neon")


def vector_units(cpuinfo: str) -> list[str]:
    """The VECTOR_UNITS a /proc/cpuinfo text lists for its first CPU (x86 ``flags``, Arm ``Features``)."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            present = set(value.split())
            return [unit for unit in VECTOR_UNITS if unit in present]
    return []


def vector_units_here(cpuinfo: Path = Path("/proc/cpuinfo")) -> list[str]:
    """This machine's vector units ([] where /proc/cpuinfo cannot be read: not Linux, or no such lines)."""
    try:
        return vector_units(cpuinfo.read_text(errors="replace"))
    except OSError:
        return []
