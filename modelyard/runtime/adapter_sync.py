"""Keep a running server's LoRA adapters equal to a JSON file, without restarting it.

The operator writes ``{"name": "/cache/sources/<key>", ...}`` into the ConfigMap
``<name>-adapters``, which the kubelet mounts into every serving pod; ``modelyard serve
--adapters-file`` starts this loop, which loads and unloads adapters through the server's own
``/v1/load_lora_adapter`` and ``/v1/unload_lora_adapter`` (the same endpoints on both engines).
With ``--api-key-file`` it sends one of the keys (read at each request, so rotation needs no
restart); the server accepts these calls only from loopback and only for declared adapters.
"""
from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import httpx

log = logging.getLogger("modelyard.adapters")


def read_adapters_file(path: str | Path) -> dict[str, str]:
    """The desired adapters (a file not mounted yet means none)."""
    try:
        data = json.loads(Path(path).read_text() or "{}")
    except FileNotFoundError:
        return {}
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise ValueError(f"{path}: expected a JSON object of adapter name -> folder")
    return data


class AdapterSync:
    """Polls the file and reconciles the server's adapters to it."""

    def __init__(self, path: str | Path, base_url: str, interval: float = 2.0, loaded: dict[str, str] | None = None,
                 api_key_file: str | None = None):
        self.path = Path(path)
        self.auth = KeyAuth(api_key_file) if api_key_file else None
        self.base_url = base_url.rstrip("/")
        self.interval = interval
        self.loaded: dict[str, str] = dict(loaded or {})  # name -> folder this process knows it serves
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="adapter-sync", daemon=True)
        self.errors: dict[str, str] = {}

    def start(self) -> "AdapterSync":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=600, auth=self.auth) as client:
            while not self._stop.wait(self.interval):
                try:
                    self.sync_once(client)
                except (httpx.ConnectError, httpx.HTTPStatusError):
                    pass  # not serving yet (loading the model): try again next tick
                except Exception as exc:  # the server may be busy: try again next tick
                    log.warning("adapter sync: %s", exc)

    def served(self, client: httpx.Client) -> set[str]:
        data = client.get("/v1/models").raise_for_status().json()
        return {m["id"] for m in data.get("data", []) if m.get("parent")}

    def sync_once(self, client: httpx.Client) -> dict[str, list[str]]:
        try:
            desired = read_adapters_file(self.path)
        except (ValueError, OSError) as exc:
            log.warning("adapter sync: %s", exc)
            return {"loaded": [], "unloaded": []}
        served = self.served(client)
        changed = {n for n, d in desired.items() if n in served and self.loaded.get(n) not in (None, d)}
        done: dict[str, list[str]] = {"loaded": [], "unloaded": []}
        for name in sorted((served - set(desired)) | changed):
            resp = client.post("/v1/unload_lora_adapter", json={"lora_name": name})
            if resp.status_code < 300 or resp.status_code == 404:
                self.loaded.pop(name, None)
                done["unloaded"].append(name)
        for name in sorted(set(desired) - (served - changed)):
            resp = client.post("/v1/load_lora_adapter", json={"lora_name": name, "lora_path": desired[name]})
            if resp.status_code < 300:
                self.loaded[name] = desired[name]
                self.errors.pop(name, None)
                done["loaded"].append(name)
            else:
                message = _error_message(resp)
                if self.errors.get(name) != message:  # log each distinct failure once
                    log.error(json.dumps({"event": "adapter", "adapter": name, "error": message}))
                self.errors[name] = message
        if done["loaded"] or done["unloaded"]:
            log.info(json.dumps({"event": "adapters", **done}))
        return done


class KeyAuth(httpx.Auth):
    """``Authorization: Bearer <one of the keys>``, the file re-read when it changes."""

    def __init__(self, path: str):
        from modelyard.apikeys import KeyFile

        self.keys = KeyFile(path)

    def auth_flow(self, request):
        request.headers["Authorization"] = f"Bearer {self.keys.first()}"
        yield request


def _error_message(resp: httpx.Response) -> str:
    try:
        return resp.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return f"HTTP {resp.status_code}: {resp.text[:200]}"
