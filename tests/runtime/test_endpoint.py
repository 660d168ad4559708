"""A locked-down endpoint on both engines, each a real `modelyard serve` process: API keys (no key,
wrong key, right key, rotated key), 413 then the next request, 429 + Retry-After, 32 clients leaving
mid-stream, and one table of requests sent with the official `openai` client to both engines,
whose answers must have the same shape (or both refuse, naming the field)."""
from __future__ import annotations

import asyncio
import json
import time

import httpx
import openai
import pytest
from transformers import AutoTokenizer

from modelyard.runtime.tiny import make_tiny_llama
from tests.runtime.accelerate_helpers import Server, make_adapter
from tests.runtime.conftest import VLLM_KEY, VLLM_MAX_BYTES, VLLM_MAX_QUEUED

pytestmark = pytest.mark.slow
ACC_KEY = "sk-acc-test-91c2"
MAX_TOKENS = 300


@pytest.fixture(scope="module")
def accelerate(tmp_path_factory):
    root = tmp_path_factory.mktemp("endpoint")
    base = make_tiny_llama(root / "tiny")
    sql = make_adapter(base, root / "sql", seed=1)
    (root / "keys").write_text(ACC_KEY + "\n")
    (root / "adapters.json").write_text(json.dumps({"sql": str(sql)}))
    s = Server(["--engine", "accelerate", "--model", str(base), "--served-model-name", "tiny", "--precision", "float32",
                "--max-model-len", "512", "--adapters-file", str(root / "adapters.json"),
                "--api-key-file", str(root / "keys"), "--max-queued-requests", str(VLLM_MAX_QUEUED),
                "--max-request-bytes", str(VLLM_MAX_BYTES)], root / "serve.log")
    s.key, s.keys_file, s.model_dir = ACC_KEY, root / "keys", base
    yield s.wait_healthy(timeout=600)  # beside a vLLM server on a busy machine
    s.stop()
    assert ACC_KEY not in (root / "serve.log").read_text()


@pytest.fixture(scope="module")
def vllm(vllm_server, vllm_files):
    vllm_server.key, vllm_server.keys_file, vllm_server.model_dir = VLLM_KEY, vllm_files["keys"], vllm_files["base"]
    return vllm_server


@pytest.fixture(params=["accelerate", "vllm"])
def server(request):
    return request.getfixturevalue(request.param)


def auth(key):
    return {"Authorization": f"Bearer {key}"}


def chat(server, headers, **kw):
    body = {"model": "tiny", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 3, **kw}
    return httpx.post(server.url + "/v1/chat/completions", json=body, headers=headers, timeout=60)


def test_api_keys_no_key_wrong_key_right_key(server):
    for headers in ({}, auth("sk-wrong"), {"Authorization": server.key}):
        for r in (chat(server, headers), httpx.get(server.url + "/v1/models", headers=headers),
                  httpx.post(server.url + "/v1/load_lora_adapter", headers=headers, json={"lora_name": "x", "lora_path": "/"})):
            assert r.status_code == 401, r.text
            assert r.json()["error"]["code"] == "invalid_api_key" and server.key not in r.text
    assert chat(server, auth(server.key)).status_code == 200
    assert httpx.get(server.url + "/health").status_code == 200  # probes need no key
    assert "modelyard_requests_total" in httpx.get(server.url + "/metrics").text  # Prometheus neither
    assert server.key not in httpx.get(server.url + "/metrics").text


def test_a_rotated_key_works_without_restart_and_the_old_one_stops(server):
    pid, new = server.proc.pid, server.key + "-rotated"
    try:
        server.keys_file.write_text(new + "\n")
        assert chat(server, auth(server.key)).status_code == 401
        assert chat(server, auth(new)).status_code == 200
    finally:
        server.keys_file.write_text(server.key + "\n")
    assert chat(server, auth(server.key)).status_code == 200 and server.proc.pid == pid


def test_an_oversized_body_is_413_and_the_next_request_is_answered(server):
    big = "word " * (VLLM_MAX_BYTES // 4)
    r = chat(server, auth(server.key), messages=[{"role": "user", "content": big}])
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    assert chat(server, auth(server.key)).status_code == 200


async def _open_streams(server, n: int):
    """``n`` chat streams that got their first event and are still generating."""
    client = httpx.AsyncClient(timeout=120, headers=auth(server.key), limits=httpx.Limits(max_connections=n + 8))
    eos = AutoTokenizer.from_pretrained(server.model_dir).eos_token_id  # forbidden: every stream runs long
    body = {"model": "tiny", "messages": [{"role": "user", "content": "Tell me a long story"}],
            "max_tokens": MAX_TOKENS, "temperature": 1.0, "stream": True, "logit_bias": {str(eos): -100}}

    async def one():
        cm = client.stream("POST", server.url + "/v1/chat/completions", json=body)
        resp = await cm.__aenter__()
        assert resp.status_code == 200, await resp.aread()
        resp.cm, resp.lines = cm, resp.aiter_lines()  # kept: once collected, they close the stream
        while not (await resp.lines.__anext__()).startswith("data: "):
            pass
        return resp

    return client, await asyncio.gather(*(one() for _ in range(n)))


def _generated(server) -> float:
    """Tokens generated so far, abandoned requests included (vLLM's own counter on vLLM)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(server.url + "/metrics", timeout=10).text
    samples = {s.name: s.value for fam in text_string_to_metric_families(text) for s in fam.samples
               if s.name in ("vllm:generation_tokens_total", "modelyard_generation_tokens_total")}
    return samples.get("vllm:generation_tokens_total", samples.get("modelyard_generation_tokens_total", 0.0))


def test_more_requests_than_the_queue_holds_get_429_with_retry_after(server):
    async def run():
        client, streams = await _open_streams(server, VLLM_MAX_QUEUED)
        try:
            r = await client.post(server.url + "/v1/chat/completions", json={
                "model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})
            assert r.status_code == 429, r.text
            assert r.headers["retry-after"] == "1" and r.json()["error"]["type"] == "rate_limit_error"
        finally:
            for s in streams:
                await s.aclose()
            await client.aclose()

    asyncio.run(run())
    deadline = time.monotonic() + 60
    while chat(server, auth(server.key)).status_code == 429:  # the queue drains as the streams are cancelled
        assert time.monotonic() < deadline
        time.sleep(0.5)


def test_32_clients_leaving_mid_stream_stop_generation_and_the_server_answers_the_next(server):
    before = _generated(server)

    async def run():
        client, streams = await _open_streams(server, 32)
        for s in streams:
            await s.aclose()
        await client.aclose()

    asyncio.run(run())
    deadline, last = time.monotonic() + 60, -1.0
    while (now := _generated(server)) != last:  # stops growing once every job is cancelled
        assert time.monotonic() < deadline, "generation kept going after the clients left"
        last = now
        time.sleep(1.0)
    time.sleep(1.0)
    assert _generated(server) == last
    assert last - before < 32 * MAX_TOKENS / 4, f"{last - before} tokens: the abandoned requests ran on"
    assert chat(server, auth(server.key)).status_code == 200


# -- the same table of requests, with the official client, on both engines -----------------------
CHAT = [{"role": "user", "content": "Say something"}]
TABLE = [
    ("chat", dict(messages=CHAT, max_tokens=4, temperature=0)),
    ("chat", dict(messages=CHAT, max_tokens=4, temperature=0, logprobs=True, top_logprobs=2)),
    ("chat", dict(messages=CHAT, max_tokens=4, temperature=1.0, n=2, seed=5)),
    ("chat", dict(messages=CHAT, max_completion_tokens=4, stop=["\n"], presence_penalty=0.5, frequency_penalty=0.5)),
    ("chat", dict(messages=CHAT, max_tokens=4, stream=True, stream_options={"include_usage": True})),
    ("completion", dict(prompt=["Hello", "The quick"], max_tokens=3, temperature=0)),
    ("completion", dict(prompt="Hello", max_tokens=3, temperature=0, logprobs=2)),
    ("completion", dict(prompt="Hello", max_tokens=3, stream=True)),
]
REFUSED_BY_BOTH = [
    ("chat", dict(messages=CHAT, max_tokens=2, extra_body={"frobnicate": 1}), "frobnicate"),
    ("chat", dict(messages=CHAT, max_tokens=2, user="someone"), "user"),
    ("completion", dict(prompt="Hello", max_tokens=2, extra_body={"frobnicate": 1}), "frobnicate"),
]
REFUSED_BY_ACCELERATE = [  # vLLM honours these; accelerate refuses them by name
    ("chat", dict(messages=CHAT, max_tokens=2, response_format={"type": "json_object"}), "response_format"),
    ("chat", dict(messages=CHAT, max_tokens=2, tools=[{"type": "function", "function": {
        "name": "f", "parameters": {"type": "object", "properties": {}}}}]), "tools"),
]


def call(server, kind, kw):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=server.key, max_retries=0, timeout=300)
    api = client.chat.completions if kind == "chat" else client.completions
    out = api.create(model="tiny", **kw)
    return [c.model_dump(exclude_unset=True) for c in out] if kw.get("stream") else out.model_dump(exclude_unset=True)


def shape(obj):
    """Keys and whether values are null, not the values; a list of objects keeps its length."""
    if isinstance(obj, dict):
        return {k: shape(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return {"[0]": shape(obj[0]), "[len]": len(obj)} if obj and isinstance(obj[0], dict) else "list"
    return None if obj is None else "value"


def assert_within(ours, theirs, path="$"):
    """Every key we answer is in vLLM's answer, null where it is null (vLLM adds extras of its own);
    as many choices."""
    if isinstance(ours, dict):
        assert isinstance(theirs, dict), f"{path}: ours {ours!r}, vLLM's {theirs!r}"
        for k, v in ours.items():
            if k == "[len]":
                assert not path.endswith("choices") or v == theirs[k], f"{path}: {v} vs {theirs[k]} choices"
                continue
            assert k in theirs, f"{path}.{k} missing from vLLM's answer {theirs}"
            assert_within(v, theirs[k], f"{path}.{k}")
    elif ours is None or theirs is None:
        assert ours == theirs, f"{path}: ours {ours!r}, vLLM's {theirs!r}"


@pytest.mark.parametrize("kind, kw", TABLE, ids=[f"{k}-{i}" for i, (k, _) in enumerate(TABLE)])
def test_openai_client_gets_the_same_shape_from_both_engines(accelerate, vllm, kind, kw):
    ours, theirs = call(accelerate, kind, kw), call(vllm, kind, kw)
    if kw.get("stream"):
        assert [c.get("object") for c in ours][:1] == [c.get("object") for c in theirs][:1]
        assert ("usage" in ours[-1]) == ("usage" in theirs[-1])
        ours, theirs = ours[-2 if "usage" in ours[-1] else -1], theirs[-2 if "usage" in theirs[-1] else -1]
    assert_within(shape(ours), shape(theirs))


@pytest.mark.parametrize("kind, kw, field", REFUSED_BY_BOTH + REFUSED_BY_ACCELERATE)
def test_what_an_engine_cannot_honour_is_refused_naming_the_field(accelerate, vllm, kind, kw, field):
    with pytest.raises(openai.BadRequestError) as err:
        call(accelerate, kind, kw)
    assert field in str(err.value.body)
    if (kind, kw, field) in REFUSED_BY_BOTH:
        with pytest.raises(openai.BadRequestError) as err:
            call(vllm, kind, kw)
        assert field in str(err.value.body)
