"""Multi-node vLLM: one ``modelyard serve --nodes N`` per node of a group, wired by the environment a
LeaderWorkerSet gives its pods (``LWS_LEADER_ADDRESS``, ``LWS_WORKER_INDEX``, ``LWS_GROUP_SIZE``).

Rank 0 (the leader) runs vLLM's OpenAI server as ``--node-rank 0``; ranks 1..N-1 run vLLM's
headless executor (``--headless --node-rank R``); all of them ``--nnodes N --master-addr
$LWS_LEADER_ADDRESS --master-port P --distributed-executor-backend mp`` (no Ray). ``modelyard up``
sets the same variables for local processes, so the command in the pods is the one tested.

Group health, both ways:
- a worker answers ``/live`` (its vLLM process is alive) and ``/health`` (alive *and* the leader's
  ``/health`` is 200: its readiness is the group's) on its ``--port``;
- the leader's ``/health`` is 503 with the reason while a worker's ``/live`` does not answer
  (``GroupWatch``, run by the middleware inside vLLM's API server), so the liveness probe (or
  ``modelyard up``) restarts the group; in a cluster the LWS ``RecreateGroupOnPodRestart`` policy
  recreates every pod of the group when one restarts.

Worker addresses: ``MODELYARD_GROUP_WORKERS`` (``host:port,...``) and the leader's
``MODELYARD_GROUP_LEADER`` (``host:port``), which ``modelyard up`` sets; in a cluster they are
derived from the LWS pod names: the leader is ``<lws>-<group>.<subdomain>...`` and worker ``i`` is
``<lws>-<group>-<i>.<subdomain>...``, on the same port.
"""
from __future__ import annotations

import http.server
import json
import os
import threading
import time
import urllib.request
from dataclasses import dataclass, field

from modelyard.runtime.engines.vllm_args import ServeConfigError

LEADER_ADDRESS = "LWS_LEADER_ADDRESS"
WORKER_INDEX = "LWS_WORKER_INDEX"
GROUP_SIZE = "LWS_GROUP_SIZE"
WORKERS = "MODELYARD_GROUP_WORKERS"
LEADER_HTTP = "MODELYARD_GROUP_LEADER"  # host:port of the leader's API (default: LWS_LEADER_ADDRESS:--port)
MASTER_PORT = 29501  # vLLM's ParallelConfig.master_port default
POLL_S = 1.0
MISSES = 2  # consecutive failed polls before a worker counts as gone


@dataclass(frozen=True)
class Group:
    nodes: int
    rank: int
    leader: str
    workers: tuple[str, ...] = ()  # host:port of ranks 1..nodes-1
    leader_http: str = ""  # host:port of the leader's OpenAI server

    @property
    def is_leader(self) -> bool:
        return self.rank == 0


def _need(env: dict, key: str, nodes: int) -> str:
    value = env.get(key)
    if value in (None, ""):
        raise ServeConfigError(f"--nodes {nodes} needs {key} in the environment (a LeaderWorkerSet sets "
                               f"{LEADER_ADDRESS}, {WORKER_INDEX} and {GROUP_SIZE}; modelyard up sets them "
                               f"locally)", reason="InvalidServingConfig")
    return value


def group_from_env(nodes: int, port: int, env: dict | None = None) -> Group:
    env = dict(os.environ if env is None else env)
    try:
        rank = int(_need(env, WORKER_INDEX, nodes))
    except ValueError:
        raise ServeConfigError(f"{WORKER_INDEX}={env.get(WORKER_INDEX)!r} is not a whole number") from None
    if not 0 <= rank < nodes:
        raise ServeConfigError(f"{WORKER_INDEX}={rank} is outside the group of --nodes {nodes} (0..{nodes - 1})")
    size = env.get(GROUP_SIZE)
    if size not in (None, "") and size != str(nodes):
        raise ServeConfigError(f"{GROUP_SIZE}={size} but --nodes is {nodes}: the LeaderWorkerSet size "
                               f"and spec.nodes must match")
    leader = _need(env, LEADER_ADDRESS, nodes)
    if env.get(WORKERS):
        workers = tuple(w.strip() for w in env[WORKERS].split(",") if w.strip())
    else:
        host, dot, rest = leader.partition(".")
        workers = tuple(f"{host}-{i}{dot}{rest}:{port}" for i in range(1, nodes))
    if len(workers) != nodes - 1:
        raise ServeConfigError(f"{WORKERS} lists {len(workers)} workers; --nodes {nodes} needs {nodes - 1}")
    return Group(nodes, rank, leader, workers, env.get(LEADER_HTTP) or f"{leader}:{port}")


def node_args(group: Group, master_port: int = MASTER_PORT) -> list[str]:
    """vLLM's flags for this node of the group."""
    args = ["--distributed-executor-backend", "mp", "--nnodes", str(group.nodes),
            "--node-rank", str(group.rank), "--master-addr", group.leader, "--master-port", str(master_port)]
    return args + (["--headless"] if not group.is_leader else [])


def _get(url: str, timeout: float = 2.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


@dataclass
class GroupWatch:
    """In the leader: which workers stopped answering ``/live`` (polled in a daemon thread)."""

    workers: tuple[str, ...]
    misses: dict[str, int] = field(default_factory=dict)
    seen: set[str] = field(default_factory=set)

    def start(self) -> "GroupWatch":
        threading.Thread(target=self._loop, name="group-watch", daemon=True).start()
        return self

    def _loop(self) -> None:
        while True:
            self.poll()
            time.sleep(POLL_S)

    def poll(self) -> None:
        for w in self.workers:
            if _get(f"http://{w}/live") == 200:
                self.misses[w] = 0
                self.seen.add(w)
            else:
                self.misses[w] = self.misses.get(w, 0) + 1

    def problem(self) -> str | None:
        """Why the group cannot serve, or None. A worker not seen yet is still starting (the engine
        cannot be ready without it either)."""
        gone = [f"worker {i} ({w})" for i, w in enumerate(self.workers, 1)
                if w in self.seen and self.misses.get(w, 0) >= MISSES]
        return f"{', '.join(gone)} stopped answering; the group must restart" if gone else None


def serve_worker_health(host: str, port: int, alive, leader_health_url: str) -> http.server.ThreadingHTTPServer:
    """A worker's ``/live`` and ``/health`` (see the module docstring), in a daemon thread."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            path = self.path.split("?", 1)[0]
            if path not in ("/live", "/health"):
                return self._answer(404, {"error": "a worker node serves only /live and /health; "
                                                   "send requests to the leader"})
            if not alive():
                return self._answer(503, {"status": "the vLLM worker process has exited"})
            if path == "/health" and _get(leader_health_url) != 200:
                return self._answer(503, {"status": f"waiting for the group: the leader {leader_health_url} is not ready"})
            return self._answer(200, {"status": "ok"})

        def _answer(self, code: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args) -> None:  # probes every few seconds: keep the log readable
            pass

    server = http.server.ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="worker-health", daemon=True).start()
    return server
