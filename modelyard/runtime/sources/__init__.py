"""Where weights come from: one module per URI scheme, picked from ``REGISTRY``.

Every source module exposes ``open_source(uri, revision) -> Source``. A ``Source`` has:

- ``resolve() -> str``: the revision actually downloaded (a commit hash, an ETag digest, ...);
- ``list_files() -> list[RemoteFile]``: what is there, with sizes and sha256 where published;
- ``fetch(files, staging, progress)``: put each file, complete, at ``staging/<path>``, resuming
  from whatever an earlier, killed run left under ``staging``;
- optionally ``local_path`` (a folder on this machine: pvc://, file://) and
  ``unpack(staged, staging) -> list[RemoteFile]`` (archives: what the archive held).

The orchestrator (``modelyard.runtime.download``) verifies sizes and checksums, moves files into
place and writes the manifest. Sources raise ``DownloadError`` with a reason a user can act on.
"""
from __future__ import annotations

import importlib
import os
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from modelyard.uri import redact  # noqa: F401 - the sources' one redaction (re-exported)
from modelyard.runtime.errors import DownloadError

REGISTRY = {
    "hf": "modelyard.runtime.sources.hf",
    "s3": "modelyard.runtime.sources.s3",
    "http": "modelyard.runtime.sources.http",
    "https": "modelyard.runtime.sources.http",
    "pvc": "modelyard.runtime.sources.pvc",
    "file": "modelyard.runtime.sources.pvc",
}


@dataclass(frozen=True)
class RemoteFile:
    path: str                  # relative, POSIX separators
    size: int | None
    sha256: str | None = None  # hex, when the source publishes one


def open_source(uri: str, revision: str | None = None):
    scheme = urlsplit(uri).scheme
    if scheme not in REGISTRY:
        raise DownloadError("InvalidSource", f"source {uri!r}: unknown scheme {scheme!r}; "
                            f"valid: {', '.join(s + '://' for s in REGISTRY)}")
    return importlib.import_module(REGISTRY[scheme]).open_source(uri, revision)


def retries() -> int:
    """How many times a dropped transfer is retried (``MODELYARD_DOWNLOAD_RETRIES``, default 5)."""
    return max(1, int(os.environ.get("MODELYARD_DOWNLOAD_RETRIES", "5")))


def backoff(attempt: int) -> None:
    """Sleep before retry ``attempt`` (exponential, base ``MODELYARD_RETRY_BACKOFF`` seconds)."""
    base = float(os.environ.get("MODELYARD_RETRY_BACKOFF", "0.5"))
    time.sleep(min(base * 2 ** attempt, 10.0))


def check_relpath(path: str, what: str) -> str:
    """Refuse a listed path that would land outside the destination."""
    parts = path.replace("\\", "/").split("/")
    if not path or path.startswith("/") or ".." in parts or "" in parts[:-1]:
        raise DownloadError("InvalidSource", f"{what}: unsafe file path {path!r} (absolute or with '..')")
    return "/".join(parts)
