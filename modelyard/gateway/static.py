"""Routes from a file, for a gateway without a cluster (tests, `modelyard up`, a fixed fleet)::

    models:
      - name: tiny                      # the Model's name (the `model` clients send)
        namespace: default              # optional: the `namespace` label of its metrics
        replicas: [http://127.0.0.1:8001, http://127.0.0.1:8002]
        adapters: [sql]                 # adapter names routed to replicas that list them loaded
        apiKeyFile: /etc/keys/tiny      # optional: requests need `Authorization: Bearer <key>`
        loadBalancing: LeastLoad        # or PrefixHash

Every problem names the entry and the field.
"""
from __future__ import annotations

import re
from pathlib import Path

import yaml

from modelyard.apikeys import KeyFile, KeyFileError
from modelyard.gateway.registry import Replica, Route

NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
FIELDS = {"name", "namespace", "replicas", "adapters", "apiKeyFile", "loadBalancing"}


class ConfigError(ValueError):
    pass


def _route(i: int, entry) -> Route:
    where = f"models[{i}]"
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: must be a mapping with name and replicas")
    unknown = set(entry) - FIELDS
    if unknown:
        raise ConfigError(f"{where}.{sorted(unknown)[0]}: unknown field; valid fields: {', '.join(sorted(FIELDS))}")
    name = entry.get("name")
    if not isinstance(name, str) or not NAME.match(name):
        raise ConfigError(f"{where}.name: {name!r} is not a valid model name (lower-case letters, digits, '-', '.')")
    replicas = entry.get("replicas") or []
    if not isinstance(replicas, list) or not all(isinstance(r, str) and r.startswith(("http://", "https://")) for r in replicas):
        raise ConfigError(f"{where}.replicas: must be a list of http(s)://host:port URLs")
    adapters = entry.get("adapters") or []
    if not isinstance(adapters, list) or not all(isinstance(a, str) and NAME.match(a) for a in adapters):
        raise ConfigError(f"{where}.adapters: must be a list of adapter names")
    lb = entry.get("loadBalancing", "LeastLoad")
    if lb not in ("LeastLoad", "PrefixHash"):
        raise ConfigError(f"{where}.loadBalancing: {lb!r}; valid values: LeastLoad, PrefixHash")
    key_file = None
    if entry.get("apiKeyFile"):
        try:
            key_file = KeyFile(entry["apiKeyFile"])
        except KeyFileError as exc:
            raise ConfigError(f"{where}.apiKeyFile: {exc}") from None
    namespace = entry.get("namespace", "default")
    if not isinstance(namespace, str) or not NAME.match(namespace):
        raise ConfigError(f"{where}.namespace: {namespace!r} is not a valid namespace (a DNS-1123 label)")
    route = Route(name=name, namespace=namespace, adapters=tuple(adapters), load_balancing=lb, key_file=key_file,
                  desired=len(replicas))
    route.replicas = {r.rstrip("/"): Replica(r.rstrip("/")) for r in replicas}
    return route


def load_routes(path: str | Path) -> list[Route]:
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("models"), list):
        raise ConfigError(f"{path}: must hold `models:`, a list of {{name, replicas}}")
    routes = [_route(i, e) for i, e in enumerate(doc["models"])]
    seen: set[str] = set()
    for route in routes:
        for n in route.names():
            if n in seen:
                raise ConfigError(f"{path}: the name {n!r} is used twice (model and adapter names must be unique)")
            seen.add(n)
    return routes
