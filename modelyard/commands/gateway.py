"""`modelyard gateway`: one OpenAI-compatible endpoint for every Model.

In a cluster it watches Models and their EndpointSlices and scales Deployments through
``deployments/scale`` (``--namespace``, or every namespace); without one it routes to the replicas
listed in ``--config FILE`` (see ``modelyard.gateway.static``).
"""
from __future__ import annotations

import asyncio
import logging
import sys


def register(sub) -> None:
    p = sub.add_parser("gateway", help="one OpenAI-compatible endpoint for every Model (routing, held requests, autoscaling)",
                       description="Route OpenAI requests by `model` to the Models' replicas, hold them while a "
                                   "Model scales from zero, and scale Deployments from in-flight load.")
    p.add_argument("--config", help="routes file (no cluster): models with their replica URLs")
    p.add_argument("--namespace", help="watch Models in this namespace only (default: every namespace)")
    p.add_argument("--host", default="0.0.0.0", help="address to bind (default 0.0.0.0)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    p.add_argument("--max-held", type=int, default=256, help="requests held per Model before 503 (default 256)")
    p.add_argument("--max-wait", type=float, default=600.0, help="seconds a request is held before 503 (default 600)")
    p.add_argument("--retry-after", type=int, default=10, help="Retry-After seconds on a 503 (default 10)")
    p.add_argument("--probe-interval", type=float, default=5.0, help="seconds between replica probes (default 5)")
    p.set_defaults(func=run)


def run(args) -> int:
    from modelyard.gateway import serve
    from modelyard.gateway.registry import HoldLimits
    from modelyard.gateway.router import Gateway

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for name, value in (("--max-held", args.max_held), ("--max-wait", args.max_wait), ("--retry-after", args.retry_after)):
        if value <= 0:
            print(f"modelyard gateway: {name} must be > 0, got {value}", file=sys.stderr)
            return 2
    gw = Gateway(limits=HoldLimits(args.max_held, args.max_wait, args.retry_after))
    backend, extra = None, []
    if args.config:
        from modelyard.gateway.static import ConfigError, load_routes

        try:
            for route in load_routes(args.config):
                gw.registry.put(route)
        except ConfigError as exc:
            print(f"modelyard gateway: --config {exc}", file=sys.stderr)
            return 2
    else:
        from modelyard.gateway import kube

        backend, watch = kube.connect(gw.registry, args.namespace)
        extra.append(watch)
    serve.use_uvloop()
    try:
        asyncio.run(serve.run(gw, args.host, args.port, backend=backend, extra=extra,
                              probe_interval_s=args.probe_interval))
    except KeyboardInterrupt:
        pass
    return 0
