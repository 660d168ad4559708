"""`modelyard gateway` in front of real `modelyard serve --engine accelerate` processes: routing by
model and adapter, least-load spreading, streaming passed through, 404s, API keys, upstream
errors forwarded unchanged, and a held request that ends in 503 + Retry-After."""
from __future__ import annotations

import concurrent.futures
import json
import time

import httpx
import pytest

from modelyard.runtime.tiny import make_tiny_llama
from tests.gateway.helpers import GatewayProcess, chat
from tests.runtime.accelerate_helpers import Server, make_adapter, sample, scrape, sse_events

KEY = "gw-test-key-5c1e"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    root = tmp_path_factory.mktemp("gateway")
    base = make_tiny_llama(root / "tiny")
    sql = make_adapter(base, root / "sql", seed=1)
    make_adapter(base, root / "chat", seed=2)
    common = ["--engine", "accelerate", "--model", str(base), "--precision", "float32", "--max-model-len", "256"]
    (root / "keys").write_text(f"# keys for other\n{KEY}\n")
    (root / "b-adapters.json").write_text("{}")  # what the operator's adapters ConfigMap holds
    servers = {
        "tiny-a": Server([*common, "--served-model-name", "tiny", "--adapter", f"sql={sql}"], root / "a.log"),
        "tiny-b": Server([*common, "--served-model-name", "tiny", "--adapters-file", str(root / "b-adapters.json")],
                         root / "b.log"),
        "other": Server([*common, "--served-model-name", "other", "--api-key-file", str(root / "keys")], root / "o.log"),
    }
    try:
        for s in servers.values():
            s.wait_healthy(timeout=300)
        gw = GatewayProcess([
            {"name": "tiny", "replicas": [servers["tiny-a"].url, servers["tiny-b"].url], "adapters": ["sql", "chat"]},
            {"name": "other", "replicas": [servers["other"].url], "apiKeyFile": str(root / "keys")},
            {"name": "nowhere", "replicas": []},
        ], root)
        gw.wait_routable(["tiny", "other"])
        yield {"gw": gw, **servers}
        gw.stop()
    finally:
        for s in servers.values():
            s.stop()


def _served(server, model: str) -> float:
    m = scrape(server.url)
    return sum(v for (n, lab), v in m.items() if n == "modelyard_requests_total" and ("model", model) in lab)


def test_models_lists_every_model_and_adapter(fleet):
    data = httpx.get(fleet["gw"].url + "/v1/models").json()["data"]
    assert {m["id"]: m["parent"] for m in data} == {"tiny": None, "sql": "tiny", "chat": "tiny", "other": None,
                                                    "nowhere": None}


def test_routes_by_model_and_answers_like_the_replica(fleet):
    via = chat(fleet["gw"].url, "tiny")
    direct = chat(fleet["tiny-b"].url, "tiny")
    assert via.status_code == 200, via.text
    assert via.json()["model"] == "tiny"
    assert via.json()["choices"][0]["message"]["content"] == direct.json()["choices"][0]["message"]["content"]


def test_adapter_goes_only_to_the_replica_that_has_it_loaded(fleet):
    before_a, before_b = _served(fleet["tiny-a"], "sql"), _served(fleet["tiny-b"], "sql")
    for _ in range(4):
        r = chat(fleet["gw"].url, "sql")
        assert r.status_code == 200 and r.json()["model"] == "sql", r.text
    assert _served(fleet["tiny-a"], "sql") - before_a == 4
    assert _served(fleet["tiny-b"], "sql") == before_b == 0


def test_adapter_request_waits_until_a_replica_has_loaded_it(fleet):
    """`chat` is declared on the Model but loaded nowhere: the request is held, not sent to a
    replica that would answer 404, and goes to tiny-b once tiny-b lists it — what a replica added
    by scale-up goes through while its adapter sync (--adapters-file, the operator's ConfigMap)
    loads the Model's adapters."""
    root = fleet["tiny-a"].log.parent
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        held = pool.submit(chat, fleet["gw"].url, "chat")
        time.sleep(1.0)
        assert not held.done()
        (root / "b-adapters.json").write_text(json.dumps({"chat": str(root / "chat")}))
        answer = held.result(timeout=120)
    assert answer.status_code == 200 and answer.json()["model"] == "chat", answer.text
    assert _served(fleet["tiny-b"], "chat") == 1 and _served(fleet["tiny-a"], "chat") == 0


def test_least_load_spreads_concurrent_requests_over_both_replicas(fleet):
    before = {k: _served(fleet[k], "tiny") for k in ("tiny-a", "tiny-b")}
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda i: chat(fleet["gw"].url, "tiny", f"count {i}", max_tokens=24).status_code, range(8)))
    assert codes == [200] * 8
    got = {k: _served(fleet[k], "tiny") - before[k] for k in before}
    assert sum(got.values()) == 8 and min(got.values()) >= 3, got


def test_streaming_passes_through_chunk_by_chunk(fleet):
    body = {"model": "tiny", "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 12,
            "temperature": 0, "stream": True}
    arrivals = []
    with httpx.stream("POST", fleet["gw"].url + "/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for chunk in r.iter_raw():
            arrivals.append(chunk)
    text = b"".join(arrivals).decode()
    assert len(arrivals) >= 3, "the stream arrived in one piece: the gateway buffered it"
    events = sse_events(httpx.Response(200, content=text.encode()))
    assert events[-1] == "[DONE]"
    streamed = "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1] if e.get("choices"))
    direct = chat(fleet["tiny-a"].url, "tiny", max_tokens=12).json()["choices"][0]["message"]["content"]
    assert streamed == direct


def _gone(server) -> float:
    m = scrape(server.url)
    return sum(v for (n, lab), v in m.items() if n == "modelyard_requests_total" and ("code", "499") in lab)


def test_a_client_that_leaves_mid_stream_stops_the_replica_and_frees_its_slot(fleet):
    """The disconnect travels upstream: the replica records the request as abandoned (499) and
    stops generating, and the gateway's in-flight count for the Model returns to zero."""
    replicas = (fleet["tiny-a"], fleet["tiny-b"])
    before = sum(_gone(s) for s in replicas)
    body = {"model": "tiny", "prompt": "Hello", "max_tokens": 200, "temperature": 0, "stream": True}
    with httpx.stream("POST", fleet["gw"].url + "/v1/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        next(r.iter_raw())  # the first chunk, then the client leaves
    deadline = time.monotonic() + 20
    while sum(_gone(s) for s in replicas) < before + 1:
        assert time.monotonic() < deadline, "the replica never saw the client leave"
        time.sleep(0.1)
    while sample(scrape(fleet["gw"].url), "modelyard_gateway_requests_in_flight", namespace="default", model="tiny"):
        assert time.monotonic() < deadline, "the gateway kept the request in flight"
        time.sleep(0.1)
    for s in replicas:
        assert sample(scrape(s.url), "modelyard_requests_in_flight") == 0


def test_unknown_model_is_404_listing_what_exists(fleet):
    r = chat(fleet["gw"].url, "llama-70b")
    assert r.status_code == 404
    err = r.json()["error"]
    assert err["code"] == "model_not_found" and err["param"] == "model"
    for name in ("tiny", "sql", "other"):
        assert name in err["message"]


def test_api_keys_are_checked_at_the_gateway(fleet):
    """`other` is served with --api-key-file: the gateway checks the same file with the same
    reader, refuses before the replica sees the request, and forwards the key when it is good
    (the replica checks it too; the gateway's prober used it to see the replica ready)."""
    url = fleet["gw"].url
    before = _served(fleet["other"], "other")
    assert chat(url, "other").status_code == 401
    wrong = chat(url, "other", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
    assert KEY not in wrong.text
    assert _served(fleet["other"], "other") == before  # refused at the gateway
    good = chat(url, "other", headers={"Authorization": f"Bearer {KEY}"})
    assert good.status_code == 200 and good.json()["model"] == "other", good.text
    assert chat(fleet["other"].url, "other").status_code == 401  # the replica checks keys too
    assert chat(url, "tiny").status_code == 200  # a Model without keys stays open


def test_upstream_errors_are_forwarded_unchanged(fleet):
    too_long = {"max_tokens": 100000}
    via, direct = chat(fleet["gw"].url, "tiny", **too_long), chat(fleet["tiny-a"].url, "tiny", **too_long)
    assert via.status_code == direct.status_code == 400
    assert via.json() == direct.json() and via.json()["error"]["code"] == "context_length_exceeded"


def test_bad_bodies_get_openai_errors(fleet):
    r = httpx.post(fleet["gw"].url + "/v1/completions", content=b"{not json", timeout=10)
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
    r = httpx.post(fleet["gw"].url + "/v1/completions", json={"prompt": "hi"}, timeout=10)
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"


def test_held_request_without_replicas_ends_in_503_with_retry_after(tmp_path):
    gw = GatewayProcess([{"name": "nowhere", "replicas": []}], tmp_path, "--max-wait", "1.5", "--retry-after", "7",
                        "--max-held", "2")
    try:
        gw.wait_routable([])
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            start = time.monotonic()
            answers = list(pool.map(lambda i: chat(gw.url, "nowhere"), range(3)))
            waited = time.monotonic() - start
        codes = sorted(r.status_code for r in answers)
        assert codes == [503, 503, 503] and all(r.headers["retry-after"] == "7" for r in answers)
        messages = sorted(r.json()["error"]["message"] for r in answers)
        assert "2 requests are already waiting" in messages[0]  # the queue is bounded: the third is refused at once
        assert all("within 1.5s" in m for m in messages[1:]) and waited >= 1.4
        m = scrape(gw.url)
        assert sample(m, "modelyard_gateway_rejected_total", namespace="default", model="nowhere", reason="timeout") == 2
        assert sample(m, "modelyard_gateway_rejected_total", namespace="default", model="nowhere", reason="queue_full") == 1
    finally:
        gw.stop()


def test_metrics_count_requests_waits_and_rejections(fleet):
    m = scrape(fleet["gw"].url)
    assert sample(m, "modelyard_gateway_requests_total", namespace="default", model="tiny", code="200") >= 10
    assert sample(m, "modelyard_gateway_requests_total", namespace="default", model="tiny", code="400") >= 1
    assert sample(m, "modelyard_gateway_requests_in_flight", namespace="default", model="tiny") == 0
    assert sample(m, "modelyard_gateway_replicas_ready", namespace="default", model="tiny") == 2
    assert sample(m, "modelyard_gateway_replicas_ready", namespace="default", model="nowhere") == 0
    assert sample(m, "modelyard_gateway_queue_wait_seconds_count", namespace="default", model="tiny") >= 10
    assert KEY not in json.dumps(list(m))
