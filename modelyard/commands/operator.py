"""`modelyard operator`: run the kopf operator against $KUBECONFIG or the in-cluster config."""
from __future__ import annotations

import asyncio
import os
import logging


def register(sub) -> None:
    p = sub.add_parser("operator", help="run the operator (kopf) against the current cluster")
    p.add_argument("-n", "--namespace", action="append", default=[], help="watch only this namespace (repeatable; default: all)")
    p.add_argument("--metrics-port", type=_port, default=8080, help="serve Prometheus metrics on this port (0: off)")
    p.add_argument("--liveness", default=None, help="kopf liveness endpoint, e.g. http://0.0.0.0:8081/healthz")
    p.add_argument("--peering", default=None, help="kopf peering name (for several replicas); default: standalone")
    p.add_argument("--priority", default="0",
                   help="kopf peering priority: a number, or 'auto' (from $POD_NAME) so replicas run active/standby")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=run)


def _port(text: str) -> int:
    import argparse

    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port: use 1-65535, or 0 for no metrics server")
    return value


def run(args) -> int:
    import kopf
    from prometheus_client import start_http_server

    import modelyard.operator.handlers  # noqa: F401  (registers the handlers)

    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:  # "Handler 'x' succeeded" for every watch event: only with -v
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    if args.metrics_port:
        start_http_server(args.metrics_port)
    if args.namespace:  # where the resync loop reads kopf's peering objects
        os.environ["MODELYARD_WATCH_NAMESPACES"] = ",".join(args.namespace)
    asyncio.run(kopf.operator(
        clusterwide=not args.namespace,
        namespaces=args.namespace or (),
        standalone=args.peering is None,
        peering_name=args.peering,
        liveness_endpoint=args.liveness,
        priority=peering_priority(args.priority),
    ))
    return 0


def peering_priority(value: str) -> int:
    """kopf pauses an operator while a peer of higher priority is alive; equal ones all pause.

    'auto' gives each replica its own priority from its pod name, so exactly one is active and
    the others take over when it goes.
    """
    if value == "auto":
        import os
        import socket
        import zlib

        name = os.environ.get("POD_NAME") or socket.gethostname()
        return 1 + zlib.crc32(name.encode()) % 1_000_000
    try:
        return int(value)
    except ValueError:
        raise SystemExit(f"modelyard operator: --priority must be a number or 'auto', not {value!r}") from None
