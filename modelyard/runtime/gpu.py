"""GPU memory from NVML (``nvidia-ml-py``), read at scrape time.

No GPU, no driver, or no NVML library is a normal situation (CPU serving, laptops, CI):
``gpu_memory()`` then returns an empty list and never raises. NVML sees every GPU of the node;
``CUDA_VISIBLE_DEVICES`` narrows the series to the GPUs this process may use (empty or ``-1``:
none, as CUDA itself reads it; indices or ``GPU-…`` UUIDs otherwise).
"""
from __future__ import annotations

import os
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
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            if not _visible(index, lambda: pynvml.nvmlDeviceGetUUID(handle)):
                continue
            info = pynvml.nvmlDeviceGetMemoryInfo(handle)
            out.append(GpuMemory(index=index, used_bytes=int(info.used), total_bytes=int(info.total)))
        return out
    except pynvml.NVMLError:
        return []


def _visible(index: int, uuid) -> bool:
    """Whether ``CUDA_VISIBLE_DEVICES`` lets this process use the GPU (unset: all of them)."""
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return True
    wanted = [v.strip() for v in value.split(",") if v.strip()]
    if not wanted or wanted[0].startswith("-"):
        return False  # CUDA stops at the first invalid entry; "-1" or "" hides every GPU
    if str(index) in wanted:
        return True
    ids = [w for w in wanted if not w.isdigit()]
    return bool(ids) and any(str(uuid()).startswith(w) for w in ids)


def reset() -> None:
    """Forget the NVML probe (tests)."""
    with _lock:
        _state["initialised"] = False
        _state["available"] = False
