"""Child processes of `modelyard up`: each step runs in its own process group (so Ctrl-C reaches
`up`, which then stops the whole group cleanly), its output is passed through with a step prefix,
and JSON progress lines are drawn as a readable progress line."""
from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import threading

STOP_GRACE_S = 20


def modelyard_command() -> list[str]:
    """The `modelyard` console script of this environment (the same one the images run)."""
    exe = os.path.join(os.path.dirname(sys.executable), "modelyard")
    return [exe] if os.access(exe, os.X_OK) else [sys.executable, "-m", "modelyard"]


def _mib(n) -> str:
    return f"{(n or 0) / 2**20:.1f}MiB"


def render(step: str, line: str) -> str | None:
    """A child's output line as shown to the user (None: nothing to show)."""
    if not line.strip():
        return None
    if not line.startswith("{"):
        return f"  [{step}] {line}"
    try:
        event = json.loads(line)
    except json.JSONDecodeError:
        return f"  [{step}] {line}"
    if event.get("event") == "progress":
        done, total = event.get("bytesDone"), event.get("bytesTotal")
        pct = f"{100 * done / total:3.0f}% " if total else ""
        eta = event.get("etaSeconds")
        tail = "done" if event.get("done") else (f"eta {eta:.0f}s" if eta is not None else "")
        return f"  [{step}] {pct}{_mib(done)}/{_mib(total)} {_mib(event.get('bytesPerSecond'))}/s {tail}".rstrip()
    if event.get("event") == "log":
        return f"  [{step}] {event.get('message', '')}"
    return f"  [{step}] {line}"


class Child:
    """One step's process. ``tail`` keeps its last lines for error messages."""

    def __init__(self, step: str, argv: list[str], env: dict | None = None, quiet: bool = False):
        self.step, self.argv, self.quiet = step, argv, quiet
        self.tail: collections.deque[str] = collections.deque(maxlen=20)
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     bufsize=1, start_new_session=True, env=env or os.environ.copy())
        self._reader = threading.Thread(target=self._pump, name=f"{step}-output", daemon=True)
        self._reader.start()

    def _pump(self) -> None:
        for raw in self.proc.stdout:
            line = raw.rstrip("\n")
            self.tail.append(line)
            shown = render(self.step, line)
            if shown and not self.quiet:
                print(shown, flush=True)

    def poll(self) -> int | None:
        return self.proc.poll()

    def wait(self, timeout: float | None = None) -> int:
        rc = self.proc.wait(timeout)  # TimeoutExpired when still running
        self._reader.join(timeout=5)
        return rc

    def terminate(self) -> None:
        """SIGTERM to the whole process group, without waiting (signal-handler safe)."""
        try:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass

    def stop(self) -> None:
        """SIGTERM to the whole process group, SIGKILL after a grace period."""
        if self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        except ProcessLookupError:
            pass
        self._reader.join(timeout=5)
