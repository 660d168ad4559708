"""The Deployment controller and kubelet the emulator lacks, played with real servers: when the
Deployment's replicas go up, a real `modelyard serve` starts on this machine and its address is
published in an EndpointSlice (ready once /health answers 200); when they go down, the newest
not-ready replica goes first (as a ReplicaSet does), then the newest. Every change is recorded so a
test can check what was removed while it was still loading."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.runtime.accelerate_helpers import Server


@dataclass
class Pod:
    n: int
    server: Server | None = None
    start_at: float = 0.0      # a slow node: the process starts only then (image pull, scheduling)
    ready: bool = False


@dataclass
class History:
    events: list[tuple[float, str, dict]] = field(default_factory=list)

    def add(self, what: str, **info) -> None:
        self.events.append((time.monotonic(), what, info))

    def of(self, what: str) -> list[dict]:
        return [info for _, w, info in self.events if w == what]


class PlayedDeployment:
    def __init__(self, k8s, ns: str, name: str, serve_args: list[str], workdir: Path, start_delays=(0.0,)):
        self.k8s, self.ns, self.name, self.args, self.workdir = k8s, ns, name, serve_args, workdir
        self.start_delays = list(start_delays)
        self.pods: list[Pod] = []
        self.history = History()
        self.count = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> "PlayedDeployment":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=30)
        for pod in self.pods:
            if pod.server:
                pod.server.stop()

    def _loop(self) -> None:
        while not self.stopping.wait(0.1):
            want = self.k8s.get("Deployment", self.ns, self.name)["spec"]["replicas"]
            changed = self._scale(want) | self._progress()
            if changed:
                self._publish()

    def _scale(self, want: int) -> bool:
        changed = False
        while len(self.pods) < want:
            delay = self.start_delays[min(self.count, len(self.start_delays) - 1)]
            self.count += 1
            self.pods.append(Pod(self.count, start_at=time.monotonic() + delay))
            self.history.add("add", pod=self.count, replicas=want)
            changed = True
        while len(self.pods) > want:
            loading = [p for p in self.pods if not p.ready]
            victim = (loading or self.pods)[-1]
            self.pods.remove(victim)
            self.history.add("remove", pod=victim.n, was_loading=not victim.ready, replicas=want)
            if victim.server:
                victim.server.stop()
            changed = True
        return changed

    def _progress(self) -> bool:
        changed = False
        for pod in self.pods:
            if pod.server is None and time.monotonic() >= pod.start_at:
                pod.server = Server(self.args, self.workdir / f"pod-{pod.n}.log")
                self.history.add("process", pod=pod.n)
            if pod.server and not pod.ready:
                try:
                    pod.ready = httpx.get(pod.server.url + "/health", timeout=1).status_code == 200
                except httpx.TransportError:
                    pass
                if pod.ready:
                    self.history.add("ready", pod=pod.n)
                    changed = True
        return changed

    def _publish(self) -> None:
        """One EndpointSlice per pod (each has its own port here), and the Deployment's status."""
        for s in self.k8s.list("EndpointSlice", self.ns):
            self.k8s.delete("EndpointSlice", self.ns, s["metadata"]["name"], missing_ok=True)
        for pod in self.pods:
            if pod.server is None:
                continue
            self.k8s.create({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                             "metadata": {"name": f"{self.name}-pod{pod.n}", "namespace": self.ns,
                                          "labels": {"kubernetes.io/service-name": self.name}},
                             "addressType": "IPv4", "ports": [{"name": "http", "port": pod.server.port}],
                             "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": pod.ready}}]})
        ready = sum(p.ready for p in self.pods)
        self.k8s.patch_status("Deployment", self.ns, self.name, {"replicas": len(self.pods), "readyReplicas": ready})
