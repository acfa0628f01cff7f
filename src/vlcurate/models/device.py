"""What the hardware can do: native bf16 on this CPU, CUDA presence."""

from __future__ import annotations

import functools
import os
from pathlib import Path


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags from /proc/cpuinfo (empty where it does not exist)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_supports_bf16() -> bool:
    """True where bf16 matmuls run natively (AMX or AVX512-BF16), so bf16 weights are faster than fp32.

    `VLCURATE_NO_BF16=1` turns it off (the same as `--precision fp32`).
    """
    if os.environ.get("VLCURATE_NO_BF16") == "1":
        return False
    flags = cpu_flags()
    return bool({"amx_bf16", "avx512_bf16"} & flags)
