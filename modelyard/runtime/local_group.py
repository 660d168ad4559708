"""`modelyard up` for a Model with ``nodes > 1``: one `modelyard serve --nodes N` process per
"node", each with the environment a LeaderWorkerSet gives its pods (``LWS_LEADER_ADDRESS``,
``LWS_WORKER_INDEX``, ``LWS_GROUP_SIZE``) plus the local addresses of the group
(``MODELYARD_GROUP_WORKERS``, ``MODELYARD_GROUP_LEADER``), so the pods' command is the one run here.

When any process of the group exits, the group is restarted as a whole, as the LeaderWorkerSet
policy ``RecreateGroupOnPodRestart`` does in a cluster (a vLLM pipeline cannot take back a node
that left it). Before restarting, the leader's ``/health`` is read and printed: it answers 503 once
it has seen a worker go.
"""
from __future__ import annotations

import os
import socket
import subprocess
import time

from modelyard.runtime.local_proc import Child, modelyard_command

MAX_RESTARTS = 5
LEADER_NOTICE_S = 15  # how long to wait for the leader's /health to report a lost worker


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _with(args: list[str], flag: str, value: str) -> list[str]:
    """``args`` with ``flag value`` set (replaced, or added before a ``--`` separator)."""
    out = list(args)
    if flag in out:
        out[out.index(flag) + 1] = value
        return out
    cut = out.index("--") if "--" in out else len(out)
    return out[:cut] + [flag, value] + out[cut:]


class ChildGroup:
    """The processes of one group; quacks like ``Child`` for LocalRun (poll, wait, stop, tail)."""

    def __init__(self, serve_args: list[str], nodes: int, port: int, host: str = "127.0.0.1"):
        ports = [port] + [free_port() for _ in range(nodes - 1)]
        master = free_port()
        base = {**os.environ, "LWS_LEADER_ADDRESS": host, "LWS_GROUP_SIZE": str(nodes),
                "MODELYARD_GROUP_WORKERS": ",".join(f"{host}:{p}" for p in ports[1:]),
                "MODELYARD_GROUP_LEADER": f"{host}:{port}"}
        self.members: list[Child] = []
        for rank in range(nodes):
            argv = _with(_with(serve_args, "--port", str(ports[rank])), "--master-port", str(master))
            env = {**base, "LWS_WORKER_INDEX": str(rank)}
            self.members.append(Child(f"serve:{rank}", modelyard_command() + argv, env=env))
        self.tail = self.members[0].tail

    def exited(self) -> tuple[int, int] | None:
        """(rank, exit code) of a member that has exited, or None."""
        for rank, child in enumerate(self.members):
            if child.poll() is not None:
                return rank, child.poll()
        return None

    def poll(self) -> int | None:
        gone = self.exited()
        return None if gone is None else gone[1]

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (gone := self.exited()) is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired("serve group", timeout)
            time.sleep(0.2)
        return gone[1]

    def terminate(self) -> None:
        for child in self.members:
            child.terminate()

    def stop(self) -> None:
        self.terminate()
        for child in self.members:
            child.stop()


def leader_view(port: int, timeout: float = LEADER_NOTICE_S) -> str:
    """What the leader's /health answers once it had time to notice (the liveness probe's view)."""
    import httpx

    deadline, answer = time.monotonic() + timeout, "no answer"
    while time.monotonic() < deadline:
        try:
            r = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
            answer = f"{r.status_code} {r.text.strip()[:200]}"
            if r.status_code != 200:
                return answer
        except httpx.TransportError:
            return "not answering"
        time.sleep(0.5)
    return answer


def serve_group(run, args: list[str], nodes: int) -> int:
    """Start the group, wait until the leader is healthy, restart the whole group when a member exits."""
    from modelyard.runtime.local import StepFailed

    restarts = 0
    while True:
        group = ChildGroup(args, nodes, run.opts.port, run.opts.host)
        run.child = group
        run._wait_healthy(group)
        if restarts == 0:
            run._announce()
        else:
            print(f"[serve] the group is serving again (restart {restarts})", flush=True)
        while (gone := group.exited()) is None:
            if run.stopping.wait(0.5):
                group.stop()
                raise KeyboardInterrupt
        rank, rc = gone
        view = leader_view(run.opts.port) if rank else "the leader itself exited"
        group.stop()
        restarts += 1
        print(f"[serve] node {rank} exited with code {rc}; leader /health: {view}; "
              f"restarting the group ({restarts}/{MAX_RESTARTS})", flush=True)
        if restarts > MAX_RESTARTS:
            raise StepFailed("serve", f"the group failed {restarts} times; last output:\n    "
                             + "\n    ".join(list(group.members[rank].tail)[-8:]))
