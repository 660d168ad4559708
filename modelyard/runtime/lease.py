"""One writer per folder of a shared cache: a lease file with its owner and a heartbeat.

Two pods (two Models on one shared claim, or a retried Job beside a slow one) that want the same
``sources/<key>`` or ``converted/<key>`` take turns: the first creates ``<folder>.lease``
(``O_EXCL``) and refreshes its heartbeat every few seconds; the others wait, saying who they wait
for, and take over when the lease is released or stale (no heartbeat for
``MODELYARD_LEASE_STALE_SECONDS``, default 60; at once when its owner is a dead process on this
machine). Staging folders are named after the owner (``owner_id()``: the pod's UID from the
downward API, else host and PID), so two pods never write into one another's.
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path

HEARTBEAT_SECONDS = 5.0


def owner_id() -> str:
    """The pod's UID (``MODELYARD_POD_UID``, downward API), else ``<host>-<pid>`` (local mode)."""
    return os.environ.get("MODELYARD_POD_UID") or f"{socket.gethostname()}-{os.getpid()}"


def owner_name() -> str:
    return os.environ.get("POD_NAME") or socket.gethostname()


def stale_seconds() -> float:
    return float(os.environ.get("MODELYARD_LEASE_STALE_SECONDS", "60"))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def holder_alive(record: dict) -> bool:
    """A lease's owner still holds it: a fresh heartbeat, and not a dead process on this machine."""
    if record.get("host") == socket.gethostname() and record.get("pid"):
        pid = int(record["pid"])
        if pid == os.getpid() or not _pid_alive(pid):  # our own PID again: a restarted container
            return False
    return time.time() - float(record.get("heartbeat") or 0) < stale_seconds()


class Lease:
    """``with Lease(path, on_wait): ...`` — hold ``path`` while the block runs."""

    def __init__(self, path: Path, on_wait=None, poll: float = 1.0):
        self.path, self.on_wait, self.poll = Path(path), on_wait, poll
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _record(self) -> dict:
        return {"owner": owner_name(), "ownerId": owner_id(), "host": socket.gethostname(), "pid": os.getpid(),
                "token": self.token, "heartbeat": time.time()}

    def read(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None

    def _write(self) -> None:
        tmp = self.path.with_name(f"{self.path.name}.{self.token}")
        tmp.write_text(json.dumps(self._record()))
        os.replace(tmp, self.path)

    def _try(self) -> bool:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            held = self.read()
            if held is not None and holder_alive(held):
                return False
            self._write()  # released badly or stale: take it over, then check nobody else did too
            time.sleep(0.05)
            return (self.read() or {}).get("token") == self.token
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(self._record()))
        return True

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        told = None
        while not self._try():
            held = self.read() or {}
            if self.on_wait and held.get("owner") != told:
                told = held.get("owner")
                self.on_wait(held)
            time.sleep(self.poll)
        self._thread = threading.Thread(target=self._beat, name="lease-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            if (self.read() or {}).get("token") != self.token:
                return  # taken over (we were stale): the new holder owns the folder now
            self._write()

    def release(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        if (self.read() or {}).get("token") == self.token:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> "Lease":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
