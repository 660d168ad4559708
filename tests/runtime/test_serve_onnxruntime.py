"""The onnxruntime engine for real: tiny Llama and tied-embedding Qwen2 checkpoints exported by
`modelyard convert --engine onnxruntime`, served by `modelyard serve --engine onnxruntime` and
compared through the HTTP API with the accelerate engine serving the source checkpoint."""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.runtime.accelerate_helpers import Server, scrape
from tests.runtime.onnx_helpers import export, make_llama, make_qwen2_tied

PROMPTS = [("Hello world", 40), ("The operator downloads", 12), ("modelyard deploys models declaratively on", 28),
           ("A", 60), ("Tensor parallel shards", 5), ("fox", 33), ("How are you today? I am", 17), ("0123", 50)]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("ort")
    out = {}
    for name, make in (("llama", make_llama), ("qwen2", make_qwen2_tied)):
        src = make(root / name)
        result = export(src, root / f"{name}-onnx")
        assert result["_rc"] == 0, result["_stderr"]
        out[name] = (src, root / f"{name}-onnx")
    return out


def _serve(engine: str, folder, log, *extra: str) -> Server:
    return Server(["--engine", engine, "--model", str(folder), "--served-model-name", "m", *extra], log).wait_healthy(300)


@pytest.fixture(scope="module")
def servers(models, tmp_path_factory):
    """{name: (onnxruntime server, accelerate server)} — started once, both models."""
    logs = tmp_path_factory.mktemp("logs")
    started = {}
    try:
        for name, (src, onnx) in models.items():
            started[name] = (_serve("onnxruntime", onnx, logs / f"{name}-ort.log"),
                             _serve("accelerate", src, logs / f"{name}-acc.log", "--precision", "float32"))
        yield started
    finally:
        for pair in started.values():
            for s in pair:
                s.stop()


def complete(server: Server, prompt: str, max_tokens: int, **extra) -> dict:
    r = httpx.post(f"{server.url}/v1/completions", json={"model": "m", "prompt": prompt, "max_tokens": max_tokens,
                                                          "temperature": 0, **extra}, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def test_export_records_provenance_and_parity_and_is_cached(models):
    src, onnx = models["qwen2"]
    record = json.loads((onnx / "modelyard-provenance.json").read_text())
    assert record["recipe"]["engine"] == "onnxruntime" and record["recipe"]["precision"] == "float32"
    assert record["parity"]["exact"] == record["parity"]["prompts"] == 4
    assert record["tools"]["onnxruntime-genai"] == "0.18.0" and record["tools"]["onnx-ir"] != "absent"
    assert record["input"]["files"][0]["sha256"]
    again = export(src, onnx)
    assert again["_rc"] == 0 and again.get("skipped") is True


@pytest.mark.parametrize("name", ["llama", "qwen2"])
def test_greedy_text_equals_the_accelerate_engine(servers, name):
    ort, acc = servers[name]
    for prompt, n in PROMPTS[:4]:
        a, b = complete(ort, prompt, n), complete(acc, prompt, n)
        assert a["choices"][0]["text"] == b["choices"][0]["text"] and len(b["choices"][0]["text"]) > 5
        assert a["usage"] == b["usage"]
        assert a["choices"][0]["finish_reason"] == b["choices"][0]["finish_reason"]
    chat = {"model": "m", "messages": [{"role": "user", "content": "Hello! How are you?"}], "max_tokens": 24,
            "temperature": 0}
    ca = httpx.post(f"{ort.url}/v1/chat/completions", json=chat, timeout=60).json()
    cb = httpx.post(f"{acc.url}/v1/chat/completions", json=chat, timeout=60).json()
    assert ca["choices"][0]["message"] == cb["choices"][0]["message"]


def test_streaming_gives_the_same_text_and_usage(servers):
    ort, _ = servers["llama"]
    whole = complete(ort, "Hello world", 30)
    body = {"model": "m", "prompt": "Hello world", "max_tokens": 30, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    chunks = []
    with httpx.stream("POST", f"{ort.url}/v1/completions", json=body, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunks.append(json.loads(line[6:]))
    text = "".join(c["choices"][0]["text"] for c in chunks if c["choices"])
    assert text == whole["choices"][0]["text"]
    assert len([c for c in chunks if c["choices"] and c["choices"][0]["text"]]) > 3  # token by token, not at the end
    assert chunks[-1]["usage"] == whole["usage"]


def test_eight_concurrent_requests_of_different_lengths_are_exact(servers):
    ort, acc = servers["qwen2"]
    expected = [complete(acc, p, n)["choices"][0]["text"] for p, n in PROMPTS]
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda pn: complete(ort, *pn)["choices"][0]["text"], PROMPTS))
    assert got == expected
    batches = {k: v for k, v in scrape(ort.url).items() if k[0] == "modelyard_batch_size_sum"}
    counts = {k: v for k, v in scrape(ort.url).items() if k[0] == "modelyard_batch_size_count"}
    assert sum(batches.values()) / sum(counts.values()) > 1, "requests did not share engine steps"


def test_stop_strings_cut_the_text(servers):
    ort, acc = servers["llama"]
    full = complete(ort, "Hello world", 40)["choices"][0]["text"]
    stop = full[10:13]
    cut = complete(ort, "Hello world", 40, stop=[stop])
    assert cut["choices"][0]["text"] == full[:full.index(stop)] and cut["choices"][0]["finish_reason"] == "stop"
    assert cut["choices"][0]["text"] == complete(acc, "Hello world", 40, stop=[stop])["choices"][0]["text"]


@pytest.mark.parametrize("field,value", [("logprobs", 2), ("presence_penalty", 0.5), ("logit_bias", {"5": 3})])
@pytest.mark.parametrize("stream", [False, True])
def test_fields_it_cannot_honour_are_refused_by_name(servers, field, value, stream):
    ort, _ = servers["llama"]
    r = httpx.post(f"{ort.url}/v1/completions", json={"model": "m", "prompt": "Hi", "max_tokens": 4,
                                                       field: value, "stream": stream}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == field, r.text


def test_seed_is_refused_only_when_sampling(servers):
    ort, _ = servers["llama"]
    r = httpx.post(f"{ort.url}/v1/completions", json={"model": "m", "prompt": "Hi", "max_tokens": 4, "seed": 7,
                                                       "temperature": 0.8}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "seed"
    assert complete(ort, "Hi", 4, seed=7)["usage"]["completion_tokens"] == 4
    sampled = httpx.post(f"{ort.url}/v1/completions", json={"model": "m", "prompt": "Hi", "max_tokens": 8,
                                                             "temperature": 1.0, "n": 2}, timeout=30)
    assert sampled.status_code == 200 and len(sampled.json()["choices"]) == 2


def test_a_client_that_leaves_cancels_its_generation(servers):
    ort, _ = servers["llama"]
    before = scrape(ort.url)
    body = {"model": "m", "prompt": "Hello", "max_tokens": 1500, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{ort.url}/v1/completions", json=body, timeout=60) as r:
        for i, _line in enumerate(r.iter_lines()):
            if i > 6:
                break  # leave after a few tokens
    assert complete(ort, "Hello world", 8)["usage"]["completion_tokens"] == 8  # the engine is free again
    after = scrape(ort.url)
    key = next(k for k in after if k[0] == "modelyard_generation_tokens_total")
    generated = after[key] - before.get(key, 0)
    assert 8 < generated < 1500, f"the abandoned request was not cut short ({generated} tokens)"
