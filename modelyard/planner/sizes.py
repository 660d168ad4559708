"""Byte sizes: parsing ``80GiB`` / ``24GB`` / profile names, and formatting.

Sizes follow the Kubernetes/IEC convention: ``Gi``/``GiB`` = 2**30, ``G``/``GB`` = 10**9.
"""
from __future__ import annotations

import math
import re

from modelyard.planner.errors import PlanError

GiB = 2**30
MiB = 2**20

# GPU memory per named resource profile, in bytes: the ``memory.total`` that ``nvidia-smi``
# reports for each card (MiB), which is also what vLLM multiplies by gpu_memory_utilization
# (torch.cuda.mem_get_info()[1]). Marketing "80GB" cards report 79.6-80 GiB.
PROFILES: dict[str, int] = {
    "nvidia-t4-16gb": 15360 * MiB,
    "nvidia-l4-24gb": 23034 * MiB,
    "nvidia-a10g-24gb": 23028 * MiB,
    "nvidia-a100-40gb": 40960 * MiB,
    "nvidia-l40s-48gb": 46068 * MiB,
    "nvidia-a100-80gb": 81920 * MiB,
    "nvidia-h100-80gb": 81559 * MiB,
    "nvidia-h200-141gb": 143771 * MiB,
}

_UNITS = {
    "": 1, "b": 1,
    "k": 10**3, "kb": 10**3, "ki": 2**10, "kib": 2**10,
    "m": 10**6, "mb": 10**6, "mi": 2**20, "mib": 2**20,
    "g": 10**9, "gb": 10**9, "gi": 2**30, "gib": 2**30,
    "t": 10**12, "tb": 10**12, "ti": 2**40, "tib": 2**40,
}
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def _size_error(field: str, value: object) -> PlanError:
    profiles = ", ".join(PROFILES)
    return PlanError(
        f'{field}: "{value}" is not a size; use e.g. 80GiB, 24GB or a profile: {profiles}'
    )


def parse_bytes(value: int | float | str, field: str = "gpuMemory") -> int:
    """``"80GiB"`` → 85899345920; ``"24GB"`` → 24000000000; a profile name → its bytes.

    Ints (and floats) are taken as bytes. Raises PlanError naming ``field`` otherwise.
    """
    if isinstance(value, bool):
        raise _size_error(field, value)
    if isinstance(value, (int, float)):
        if value <= 0 or not math.isfinite(value):
            raise _size_error(field, value)
        return int(value)
    if not isinstance(value, str):
        raise _size_error(field, value)
    key = value.strip().lower()
    if key in PROFILES:
        return PROFILES[key]
    match = _SIZE.match(value)
    if not match or match.group(2).lower() not in _UNITS:
        raise _size_error(field, value)
    number = float(match.group(1)) * _UNITS[match.group(2).lower()]
    if number <= 0:
        raise _size_error(field, value)
    return int(number)


def format_bytes(n: int) -> str:
    """Compact IEC string that parse_bytes and accelerate's ``max_memory`` both read.

    Rounds *down* (never promises more than ``n``): 75161927680 → ``"70GiB"``,
    16060522496 → ``"14.95GiB"``, 1536 → ``"1.5KiB"``.
    """
    n = int(n)
    if n < 0:
        return "-" + format_bytes(-n)
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", 2**10)):
        if n >= size:
            value = math.floor(n * 100 / size) / 100
            text = f"{value:.2f}".rstrip("0").rstrip(".")
            return f"{text}{unit}"
    return f"{n}B"
