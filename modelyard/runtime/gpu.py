"""GPU memory from NVML (``nvidia-ml-py``), read at scrape time.

No GPU, no driver, or no NVML library is a normal situation (CPU serving, laptops, CI):
``gpu_memory()`` then returns an empty list and never raises.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class GpuMemory:
    index: int
    used_bytes: int
    total_bytes: int


_lock = threading.Lock()
_state = {"initialised": False, "available": False}


def _nvml():
    import pynvml

    return pynvml


def _ensure_init() -> bool:
    """Initialise NVML once; remember whether it is there. Thread-safe."""
    with _lock:
        if not _state["initialised"]:
            _state["initialised"] = True
            try:
                _nvml().nvmlInit()
                _state["available"] = True
            except Exception:  # pynvml.NVMLError (LibraryNotFound, DriverNotLoaded, ...) or no pynvml
                _state["available"] = False
        return _state["available"]


def gpu_memory() -> list[GpuMemory]:
    """Used and total memory of every visible GPU; ``[]`` when there is no GPU or NVML."""
    if not _ensure_init():
        return []
    pynvml = _nvml()
    try:
        out = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            info = pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(index))
            out.append(GpuMemory(index=index, used_bytes=int(info.used), total_bytes=int(info.total)))
        return out
    except pynvml.NVMLError:
        return []


def reset() -> None:
    """Forget the NVML probe (tests)."""
    with _lock:
        _state["initialised"] = False
        _state["available"] = False
