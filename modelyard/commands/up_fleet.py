"""`modelyard up -f a.yaml -f b.yaml [--port P]`: every file's Model behind one gateway on one port.

Each Model is downloaded and converted first (in file order), then served by its own
`modelyard serve` on a private port. A Model without spec.scaling, or with minReplicas >= 1,
starts at once and stays up; one with minReplicas 0 starts on its first request (the gateway
holds the request meanwhile) and stops after scaleDownDelaySeconds idle. Locally a Model has at
most one server, so maxReplicas is read as 1.
"""
from __future__ import annotations

import asyncio
import socket
import signal
import sys
from pathlib import Path

from modelyard.apikeys import KeyFile
from modelyard.gateway.autoscale import Policy
from modelyard.gateway.local import LocalBackend
from modelyard.gateway.registry import Route
from modelyard.gateway.router import Gateway


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def local_policy(model) -> tuple[Policy, bool]:
    """(policy, autoscaled) for one local server: min(minReplicas, 1)..1."""
    scaling = model.spec.scaling
    if scaling is None:
        return Policy(1, 1), False
    return Policy(min(scaling.min_replicas, 1), 1, scaling.target_in_flight,
                  float(scaling.scale_down_delay_seconds)), scaling.min_replicas == 0


def _banner(port: int, runs: dict) -> None:
    base = f"http://127.0.0.1:{port}/v1"
    print(f"\nready: {', '.join(runs)} served at {base} (one endpoint; pick with \"model\")", flush=True)
    for name, (run, _args) in runs.items():
        s = run.model.spec.scaling
        how = (f"starts on the first request, stops after {s.scale_down_delay_seconds}s idle"
               if s and s.min_replicas == 0 else "always on")
        print(f"  {name}: {how}", flush=True)
    print(f"\n  curl {base}/models\n\nmetrics: http://127.0.0.1:{port}/metrics   (Ctrl-C stops everything)\n",
          flush=True)


def run_fleet(models: list, files: list, args) -> int:
    from modelyard.gateway import serve
    from modelyard.runtime.local import LocalRun, Options, StepFailed

    if getattr(args, "chat", False):
        print("modelyard up: --chat opens a page for one Model; with several, run "
              f"`modelyard chat --endpoint http://127.0.0.1:{args.port}/v1` beside it", file=sys.stderr)
        return 2
    key_path = str(Path(args.api_key_file).resolve()) if getattr(args, "api_key_file", None) else None
    runs: dict[str, tuple] = {}
    try:
        for model, path in zip(models, files):
            opts = Options(yaml_path=path, workdir=args.workdir.resolve() / model.name, port=_free_port(),
                           api_key_file=key_path)
            local = LocalRun(model, opts)
            runs[model.name] = (local, None)
            runs[model.name] = (local, local.prepare())
    except StepFailed as exc:
        print(f"modelyard up: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        for local, _ in runs.values():
            local.shutdown()
        return 0
    gw = Gateway()
    for name, (local, _) in runs.items():
        policy, _ = local_policy(local.model)  # always-on Models are autoscaled too: min 1 keeps them up
        gw.registry.put(Route(name=name, namespace=local.model.namespace, adapters=tuple(a.name for a in local.model.spec.adapters if not a.merge),
                              policy=policy, autoscaled=True, desired=0,
                              key_file=KeyFile(key_path) if key_path else None))
    backend = LocalBackend(start=lambda name: runs[name][0].launch(runs[name][1]),
                           stop=lambda name: runs[name][0].halt())
    always = [n for n, (local, _) in runs.items() if not local_policy(local.model)[1]]

    async def main():
        for name in always:  # minReplicas >= 1: ask for the server now, the autoscaler keeps it
            route = gw.registry.routes[name]
            route.desired = 1
            await backend.scale(route, 1)
        try:
            await serve.run(gw, "127.0.0.1", args.port, backend=backend, probe_interval_s=2.0,
                            started=lambda: _banner(args.port, runs))
        finally:  # unblock a server still starting in a worker thread before the loop waits for it
            for local, _ in runs.values():
                local.stop()

    # SIGTERM (a supervisor, `kill`) stops every server as Ctrl-C does: uvicorn re-raises the signal
    # after its shutdown, and Python's default SIGTERM would end this process before the cleanup below.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    finally:
        for local, _ in runs.values():
            local.shutdown()
        print("modelyard up: stopped", flush=True)
    return 0
