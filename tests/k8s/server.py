"""`Emulator`: kmock's KubernetesEmulator with the storage, semantics and discovery of a real server.

Requests under /api and /apis (and /version, /) are served from `Store`; anything else falls
through to kmock's own reactions, so `emulator['get /custom'] << b'...'` still works.
"""
from __future__ import annotations

import asyncio
import collections
import json
from typing import Any

import aiohttp.web
import kmock
import yaml

from tests.k8s import errors, gc, patching, tables
from tests.k8s.faults import Faults
from tests.k8s.registry import Registry, ResourceType
from tests.k8s.selectors import SelectorError, combined
from tests.k8s.storage import Store

VERSION = {"major": "1", "minor": "33", "gitVersion": "v1.33.0-modelyard-emulator", "gitCommit": "",
           "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.24",
           "compiler": "gc", "platform": "linux/amd64"}


class ApiRequest:
    def __init__(self, raw: aiohttp.web.BaseRequest, body: bytes) -> None:
        self.raw, self.method, self.url = raw, raw.method, raw.url
        self.params, self.headers = dict(raw.query), raw.headers
        self.text = body.decode("utf-8", "replace")


class Route:
    def __init__(self, rt: ResourceType, namespace: str | None, name: str | None, sub: str | None) -> None:
        self.rt, self.namespace, self.name, self.sub = rt, namespace, name, sub


class Emulator(kmock.KubernetesEmulator):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.store = Store(Registry())
        self.stats: collections.Counter[str] = collections.Counter()  # "VERB plural[/sub]" → requests
        self.faults: Faults | None = None  # tests/k8s/faults.py: a share of requests fail like a loaded server's
        gc.install(self.store)

    # --- routing -------------------------------------------------------------------------
    async def __call__(self, raw: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        """Kubernetes paths are served here; anything else goes to kmock's reactions."""
        if raw.path == "/emulator/stats":  # request counts, for benchmarks and curious tests
            return _json(dict(self.stats))
        if raw.path.startswith("/emulator/logs/") and raw.method == "PUT":  # /emulator/logs/NS/POD
            ns, _, pod = raw.path[len("/emulator/logs/"):].partition("/")
            self.store.logs[(ns, pod)] = (await raw.read()).decode("utf-8", "replace")
            return _json({"namespace": ns, "pod": pod})
        if raw.path.rstrip("/") not in ("", "/version") and not raw.path.startswith(("/api/", "/apis", "/openapi")) \
                and raw.path != "/api":
            return await super().__call__(raw)
        if self.store.schedule is not _call_soon:
            self.store.schedule = _call_soon
        request = ApiRequest(raw, await raw.read())
        fault = self.faults.pick(raw.method, raw.path, dict(raw.query)) if self.faults else None
        if fault in ("500", "409"):
            err = errors.ApiError(500, "InternalError", "injected fault: etcdserver: request timed out") if fault == "500" else \
                errors.ApiError(409, "Conflict", "injected fault: the object has been modified; please apply your "
                                "changes to the latest version and try again")
            return _json(err.status(), err.code)
        try:
            response = await self._route(request)
            if fault == "timeout":  # done, but the client never hears so
                if raw.transport is not None:
                    raw.transport.close()
            return response
        except errors.ApiError as exc:
            return _json(exc.status(), exc.code)
        except SelectorError as exc:
            return _json(errors.bad_request(str(exc)).status(), 400)
        except patching.PatchError as exc:
            reason = {422: "Invalid", 415: "UnsupportedMediaType"}.get(exc.code, "BadRequest")
            return _json(errors.ApiError(exc.code, reason, str(exc)).status(), exc.code)
        except Exception as exc:  # a bug here: answer like the server's 500, with the traceback
            return await self._render_error(exc)

    async def _route(self, request: ApiRequest) -> aiohttp.web.StreamResponse | None:
        parts = [p for p in request.url.path.split("/") if p]
        reg = self.store.registry
        if parts == [] and request.method == "GET":
            return _json({"paths": sorted({"/api", "/api/v1", "/apis", "/version", *(
                f"/apis/{g}" for g in reg.groups()), *(f"/apis/{g}/{v}" for g, vs in reg.groups().items() for v in vs)})})
        if parts == ["version"]:
            return _json(VERSION)
        if parts == ["api"]:
            return _json(reg.api_versions())
        if parts == ["apis"]:
            return _json(reg.api_group_list())
        if parts[:1] == ["openapi"]:
            raise errors.ApiError(404, "NotFound", "the server could not find the requested resource")
        if parts[:1] == ["apis"] and len(parts) == 2:
            return _json(reg.api_group(parts[1]) or _missing())
        if parts[:2] == ["api", "v1"] and len(parts) == 2:
            return _json(reg.resource_list("", "v1"))
        if parts[:1] == ["apis"] and len(parts) == 3:
            return _json(reg.resource_list(parts[1], parts[2]) or _missing())
        if parts[:2] == ["api", "v1"]:
            group, version, rest = "", "v1", parts[2:]
        elif parts[:1] == ["apis"] and len(parts) > 3:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            return None
        return await self._serve(request, self._resolve(group, version, rest))

    def _resolve(self, group: str, version: str, rest: list[str]) -> Route:
        namespace = None
        if rest[0] == "namespaces" and len(rest) >= 3 and rest[2] not in ("status", "finalize"):
            namespace, rest = rest[1], rest[2:]
        rt = self.store.registry.get(group, version, rest[0])
        if rt is None or len(rest) > 3:
            raise _missing_error()
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        if sub is not None and sub not in ({"status"} if rt.status else set()) | ({"log"} if rt.log else set()) \
                | ({"finalize"} if rt.kind == "Namespace" else set()):
            raise _missing_error()
        return Route(rt, namespace if rt.namespaced else None, name, sub)

    # --- verbs ---------------------------------------------------------------------------
    async def _serve(self, request: ApiRequest, r: Route) -> aiohttp.web.StreamResponse:
        method, params, store = request.method, request.params, self.store
        verb = "WATCH" if params.get("watch") in ("true", "1") else method
        self.stats[f"{verb} {r.rt.plural}{'/' + r.sub if r.sub else ''}"] += 1
        if params.get("dryRun") and method != "GET":
            raise errors.bad_request("dryRun is not supported by the Kubernetes API emulator (it would write)")
        if method == "GET" and params.get("watch") in ("true", "1"):
            return await self._watch(request, r)
        if method == "GET" and r.name is None:
            pred = combined(params.get("labelSelector"), params.get("fieldSelector"))
            items, rv = store.list(r.rt, r.namespace, pred)
            return self._listing(request, r.rt, items, rv)
        if method == "GET" and r.sub == "log":
            store.get(r.rt, r.namespace, r.name)
            return aiohttp.web.Response(text=store.logs.get((r.namespace, r.name), ""), content_type="text/plain")
        if method == "GET":
            obj = store.get(r.rt, r.namespace, r.name)
            return _json(tables.table(r.rt, [obj], obj["metadata"]["resourceVersion"])
                         if tables.wants_table(request.headers) else obj)
        if method == "POST" and r.name is None:
            return _json(store.create(r.rt, r.namespace, _body(request), _strict(request)), 201)
        if method == "PUT" and r.name is not None:
            if store.find(r.rt, r.namespace, r.name) is None and r.sub is None:
                raise errors.not_found(r.rt, r.name)
            return _json(store.update(r.rt, r.namespace, r.name, _body(request), r.sub, _strict(request)))
        if method == "PATCH" and r.name is not None:
            return self._patch(request, r)
        if method == "DELETE" and r.name is not None:
            return _json(store.delete(r.rt, r.namespace, r.name, _body(request, default={})))
        if method == "DELETE":
            return self._delete_collection(request, r)
        raise errors.ApiError(405, "MethodNotAllowed", f"the server does not allow this method on {r.rt.plural}")

    def _listing(self, request: ApiRequest, rt: ResourceType, items: list[dict], rv: str):
        if tables.wants_table(request.headers):
            return _json(tables.table(rt, items, rv))
        return _json({"kind": f"{rt.kind}List", "apiVersion": rt.group_version,
                      "metadata": {"resourceVersion": rv}, "items": items})

    def _patch(self, request: ApiRequest, r: Route) -> aiohttp.web.StreamResponse:
        ctype = request.headers.get("Content-Type", "")
        is_apply = ctype.startswith(patching.APPLY)
        try:
            patch = yaml.safe_load(request.text) if is_apply else json.loads(request.text or "null")
        except (ValueError, yaml.YAMLError) as exc:
            raise errors.bad_request(f"error decoding patch: {exc}")
        if is_apply and not request.params.get("fieldManager"):
            raise errors.bad_request("PATCH /apply requires fieldManager to be set")
        current = self.store.find(r.rt, r.namespace, r.name)
        if current is None:
            if is_apply and r.sub is None and isinstance(patch, dict):
                meta = patch.setdefault("metadata", {})
                meta.setdefault("name", r.name)
                return _json(self.store.create(r.rt, r.namespace, patch, _strict(request)), 201)
            raise errors.not_found(r.rt, r.name)
        patched = patching.apply_patch(current, patch, ctype, custom=r.rt.crd is not None)
        return _json(self.store.update(r.rt, r.namespace, r.name, patched, r.sub, _strict(request)))

    def _delete_collection(self, request: ApiRequest, r: Route) -> aiohttp.web.StreamResponse:
        pred = combined(request.params.get("labelSelector"), request.params.get("fieldSelector"))
        items, _ = self.store.list(r.rt, r.namespace, pred)
        deleted = []
        for obj in items:
            try:
                deleted.append(self.store.delete(r.rt, obj["metadata"].get("namespace"), obj["metadata"]["name"]))
            except errors.ApiError:
                pass
        return _json({"kind": f"{r.rt.kind}List", "apiVersion": r.rt.group_version,
                      "metadata": {"resourceVersion": str(self.store.rv)}, "items": deleted})

    async def _watch(self, request: ApiRequest, r: Route) -> aiohttp.web.StreamResponse:
        params = request.params
        pred = combined(params.get("labelSelector"), params.get("fieldSelector"))
        if r.name is not None:
            name, inner = r.name, pred
            pred = lambda o: o["metadata"]["name"] == name and inner(o)  # noqa: E731
        queue: asyncio.Queue = asyncio.Queue()
        raw = request.raw
        resp = aiohttp.web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        initial = params.get("sendInitialEvents") == "true"  # the WatchList protocol
        try:
            watcher = self.store.subscribe(r.rt, r.namespace, pred, None if initial else params.get("resourceVersion"),
                                           lambda t, o: queue.put_nowait((t, o)))
            if initial:  # still in the same synchronous step: the bookmark follows the listing
                queue.put_nowait(("BOOKMARK", {"kind": r.rt.kind, "apiVersion": r.rt.group_version, "metadata": {
                    "resourceVersion": str(self.store.rv), "annotations": {"k8s.io/initial-events-end": "true"}}}))
        except errors.ApiError as exc:
            if exc.code != 410:
                raise
            await resp.prepare(raw)  # like the real server: 200, then an ERROR event with the 410
            await resp.write(json.dumps({"type": "ERROR", "object": exc.status()}).encode() + b"\n")
            return resp
        await resp.prepare(raw)
        loop = asyncio.get_running_loop()
        timeout = params.get("timeoutSeconds")
        deadline = loop.time() + float(timeout) if timeout else None
        try:
            while True:
                left = None if deadline is None else deadline - loop.time()
                if left is not None and left <= 0:
                    break
                try:
                    etype, obj = await asyncio.wait_for(queue.get(), left)
                except TimeoutError:
                    break
                chunk = [self._event(request, r, etype, obj)]
                while not queue.empty():
                    chunk.append(self._event(request, r, *queue.get_nowait()))
                await resp.write(("\n".join(chunk) + "\n").encode())
        except (ConnectionResetError, asyncio.CancelledError):
            self.store.watchers.discard(watcher)
            raise
        finally:
            self.store.watchers.discard(watcher)
        return resp

    @staticmethod
    def _event(request: ApiRequest, r: Route, etype: str, obj: dict) -> str:
        if tables.wants_table(request.headers) and etype != "BOOKMARK":  # kubectl get -w asks for Table rows
            obj = tables.table(r.rt, [obj], obj["metadata"]["resourceVersion"])
        return json.dumps({"type": etype, "object": obj})


def _strict(request: ApiRequest) -> bool:
    """Unknown fields are refused unless the client asks for fieldValidation=Ignore or Warn
    (a real server's default is Warn; here it is Strict, to catch misspelt fields in tests)."""
    return request.params.get("fieldValidation", "Strict") == "Strict"


def _call_soon(fn) -> None:
    asyncio.get_running_loop().call_soon(fn)


def _missing_error() -> errors.ApiError:
    return errors.ApiError(404, "NotFound", "the server could not find the requested resource")


def _missing() -> dict:
    raise _missing_error()


def _json(data: Any, status: int = 200) -> aiohttp.web.Response:
    return aiohttp.web.Response(text=json.dumps(data), status=status, content_type="application/json")


def _body(request: ApiRequest, default: Any = None) -> Any:
    if not request.text:
        if default is not None:
            return default
        raise errors.bad_request("the request body is empty")
    ctype = request.headers.get("Content-Type", "")
    if "protobuf" in ctype or "cbor" in ctype:
        raise errors.ApiError(415, "UnsupportedMediaType", f"the body of the request was in an unknown format - "
                              f"accepted media types include: application/json, application/yaml (got {ctype})")
    try:
        if ctype.startswith("application/yaml"):
            return yaml.safe_load(request.text)
        return json.loads(request.text)
    except (ValueError, yaml.YAMLError) as exc:
        raise errors.bad_request(f"error decoding request body: {exc}")
