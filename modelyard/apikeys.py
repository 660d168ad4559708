"""API keys from a file: one key per line, re-read when the file changes (a rotated Secret needs
no restart). Shared by the serving engines (`modelyard serve --api-key-file`) and the gateway, so
both accept exactly the same keys. Imports nothing of ours: every layer may use it.

Keys are compared in constant time and never logged, returned or put in an error message.
"""
from __future__ import annotations

import hmac
import os
import threading
from pathlib import Path

BEARER = "bearer "


class KeyFileError(ValueError):
    """The key file cannot be used (missing, unreadable, or holds no key)."""


def read_keys(path: str | os.PathLike) -> frozenset[str]:
    """The keys in ``path``: non-empty lines, stripped; lines starting with ``#`` are comments."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise KeyFileError(f"cannot read the API key file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise KeyFileError(f"the API key file {path} is not UTF-8 text") from None
    keys = frozenset(line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#"))
    if not keys:
        raise KeyFileError(f"the API key file {path} holds no key (one key per line)")
    return keys


class KeyFile:
    """Keys read from a file, re-read when its mtime, size or inode change.

    A rotation that leaves the file briefly empty or unreadable keeps the last good keys, so
    a Secret update in flight never opens the endpoint nor locks every client out.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stamp = self._stat()
        self._keys = read_keys(self.path)

    def _stat(self) -> tuple | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def keys(self) -> frozenset[str]:
        stamp = self._stat()
        if stamp is not None and stamp != self._stamp:
            with self._lock:
                try:
                    self._keys = read_keys(self.path)
                    self._stamp = stamp
                except KeyFileError:
                    pass  # keep the last good keys until the new file is complete
        return self._keys

    def check(self, presented: str | None) -> bool:
        """True when ``presented`` is one of the keys (constant time per key)."""
        if not presented:
            return False
        given = presented.encode()
        ok = False
        for key in self.keys():
            ok |= hmac.compare_digest(given, key.encode())
        return ok

    def check_header(self, authorization: str | None) -> bool:
        """True when an ``Authorization: Bearer <key>`` header carries a valid key."""
        if not authorization or not authorization[: len(BEARER)].lower() == BEARER:
            return False
        return self.check(authorization[len(BEARER):].strip())

    def first(self) -> str:
        """One key, for modelyard's own clients (probe, adapter sync); never for display."""
        return sorted(self.keys())[0]
