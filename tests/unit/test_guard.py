"""The guard both engines run in front of their app: keys, body limit, bounded queue, adapter admin.

Driven through httpx's ASGI transport (the real middleware, a small real ASGI app behind it);
the engines' own tests drive it over real sockets."""
import asyncio
import json

import httpx
import pytest

pytestmark = pytest.mark.asyncio

from modelyard.runtime.guard import Guard, GuardConfig


async def app(scope, receive, send):
    """Echoes the body length; a POST to /v1/completions with {"wait": true} holds until released."""
    body = b""
    while True:
        msg = await receive()
        body += msg.get("body", b"")
        if not msg.get("more_body"):
            break
    if scope["path"] == "/v1/completions" and body and json.loads(body).get("wait"):
        await RELEASE.wait()
    out = json.dumps({"path": scope["path"], "bytes": len(body)}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": out})


RELEASE = asyncio.Event()


def client(cfg: GuardConfig, ip: str = "127.0.0.1") -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=Guard(app, cfg), client=(ip, 5000)),
                             base_url="http://test")


@pytest.fixture
def keys(tmp_path):
    f = tmp_path / "keys"
    f.write_text("sk-first\n")
    return f


async def test_every_route_but_health_and_metrics_needs_the_key(keys):
    async with client(GuardConfig(api_key_file=str(keys))) as c:
        bad = [await c.get("/v1/models"), await c.get("/v1/models", headers={"Authorization": "Bearer sk-wrong"}),
               await c.post("/tokenize", json={}), await c.get("/v1/models", headers={"Authorization": "sk-first"})]
        assert {r.status_code for r in bad} == {401}
        assert len({r.content for r in bad}) == 1  # the same answer whatever was wrong: no hint
        assert bad[0].json()["error"]["code"] == "invalid_api_key" and "sk-first" not in bad[0].text
        assert (await c.get("/v1/models", headers={"Authorization": "Bearer sk-first"})).status_code == 200
        assert (await c.get("/health")).status_code == 200
        assert (await c.get("/metrics")).status_code == 200
    async with client(GuardConfig(api_key_file=str(keys), metrics_auth=True)) as c:
        assert (await c.get("/metrics")).status_code == 401
        assert (await c.get("/metrics", headers={"Authorization": "Bearer sk-first"})).status_code == 200


async def test_a_rotated_key_file_applies_without_restart(keys):
    async with client(GuardConfig(api_key_file=str(keys))) as c:
        assert (await c.get("/v1/models", headers={"Authorization": "Bearer sk-first"})).status_code == 200
        keys.write_text("sk-second-longer\n")
        assert (await c.get("/v1/models", headers={"Authorization": "Bearer sk-first"})).status_code == 401
        assert (await c.get("/v1/models", headers={"Authorization": "Bearer sk-second-longer"})).status_code == 200


async def test_an_oversized_body_is_413_and_the_next_request_is_served():
    async with client(GuardConfig(max_request_bytes=1000)) as c:
        r = await c.post("/v1/completions", content=b"x" * 5000)
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
        assert "1000 bytes" in r.json()["error"]["message"]

        async def chunked():  # no content-length: counted while read
            for _ in range(10):
                yield b"y" * 200
        assert (await c.post("/v1/completions", content=chunked())).status_code == 413
        r = await c.post("/v1/completions", content=b"{}")
        assert r.status_code == 200 and r.json()["bytes"] == 2


async def test_more_generation_requests_than_the_queue_holds_get_429_with_retry_after():
    RELEASE.clear()
    async with client(GuardConfig(max_queued=2)) as c:
        held = [asyncio.create_task(c.post("/v1/completions", json={"wait": True})) for _ in range(2)]
        await asyncio.sleep(0.1)
        r = await c.post("/v1/completions", json={})
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["type"] == "rate_limit_error"
        assert (await c.get("/v1/models")).status_code == 200  # only generation is bounded
        RELEASE.set()
        assert [t.status_code for t in await asyncio.gather(*held)] == [200, 200]
        assert (await c.post("/v1/completions", json={})).status_code == 200


async def test_adapter_admin_only_from_loopback_and_only_declared_adapters(tmp_path):
    declared = tmp_path / "adapters.json"
    declared.write_text(json.dumps({"chat": str(tmp_path / "chat")}))
    cfg = GuardConfig(adapters={"sql": "/cache/sql"}, adapters_file=str(declared))
    async with client(cfg, ip="10.1.2.3") as c:
        r = await c.post("/v1/load_lora_adapter", json={"lora_name": "sql", "lora_path": "/cache/sql"})
        assert r.status_code == 403 and "spec.adapters" in r.json()["error"]["message"]
        assert (await c.post("/v1/unload_lora_adapter", json={"lora_name": "sql"})).status_code == 403
    async with client(cfg) as c:
        ok = [{"lora_name": "sql", "lora_path": "/cache/sql"}, {"lora_name": "chat", "lora_path": str(tmp_path / "chat")}]
        for body in ok:
            assert (await c.post("/v1/load_lora_adapter", json=body)).status_code == 200
        for body in ({"lora_name": "sql", "lora_path": "/etc"}, {"lora_name": "evil", "lora_path": "/tmp/evil"}):
            r = await c.post("/v1/load_lora_adapter", json=body)
            assert r.status_code == 403 and r.json()["error"]["param"] == "lora_path"
        declared.write_text(json.dumps({"evil": "/tmp/evil"}))  # the file is re-read: now declared
        assert (await c.post("/v1/load_lora_adapter", json={"lora_name": "evil", "lora_path": "/tmp/evil"})).status_code == 200
