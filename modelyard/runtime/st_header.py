"""A safetensors header read with its length bounded: a corrupt or hostile length (2^62) becomes
a clear error, never a MemoryError. The format: 8-byte little-endian length, then a JSON header."""
from __future__ import annotations

import json
import os
from pathlib import Path

MAX_HEADER = 100 << 20  # the safetensors library refuses larger headers too


def read_header(path: Path, fail) -> tuple[dict, int]:
    """(header without __metadata__, data offset). ``fail(message)`` returns the exception to raise."""
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise fail(f"{Path(path).name}: {size} bytes is too short for a safetensors file")
        n = int.from_bytes(head, "little")
        if n > MAX_HEADER or n > size - 8:
            raise fail(f"{Path(path).name}: the safetensors header claims {n} bytes but the file has {size - 8} after "
                       f"the length (limit {MAX_HEADER}); the file is corrupt or not safetensors")
        try:
            header = json.loads(fh.read(n))
        except ValueError as exc:
            raise fail(f"{Path(path).name}: the safetensors header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise fail(f"{Path(path).name}: the safetensors header is not a JSON object")
    header.pop("__metadata__", None)
    return header, 8 + n
