"""Load and placement: 32 concurrent streams through a real server on CPU, and a forced
CPU + disk offload split that still generates exactly what the unsplit model does."""
from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from modelyard.runtime.tiny import make_tiny_llama
from tests.runtime.accelerate_helpers import Server, sample, scrape

CONCURRENT = 32


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_tiny_llama(tmp_path_factory.mktemp("load") / "tiny")


@pytest.fixture(scope="module")
def server(base):
    s = Server(["--engine", "accelerate", "--model", str(base), "--served-model-name", "tiny",
                "--planned-gpu-bytes", "123456"], base.parent / "serve.log")
    yield s.wait_healthy()
    s.stop()


@pytest.fixture(scope="module")
def static_server(base):
    """Static batching (--batching static): requests queued behind a running one share one generate()."""
    s = Server(["--engine", "accelerate", "--model", str(base), "--served-model-name", "tiny", "--batching", "static"],
               base.parent / "serve-static.log")
    yield s.wait_healthy()
    s.stop()


async def _stream_one(client: httpx.AsyncClient, i: int) -> dict:
    body = {"model": "tiny", "messages": [{"role": "user", "content": f"Hello {i}"}], "max_tokens": 4 + i % 5,
            "temperature": 0.8, "seed": i, "stream": True, "stream_options": {"include_usage": True}}
    text, usage, done = "", None, False
    async with client.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
                continue
            event = json.loads(line[6:])
            if event.get("usage"):
                usage = event["usage"]
            for choice in event["choices"]:
                text += choice["delta"].get("content") or ""
    return {"done": done, "usage": usage, "text": text}


async def _burst(url: str) -> list[dict]:
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        return await asyncio.gather(*(_stream_one(client, i) for i in range(CONCURRENT)))


def test_32_concurrent_streams_all_complete_and_are_counted_exactly(server):
    before = scrape(server.url)
    results = asyncio.run(_burst(server.url))
    after = scrape(server.url)
    assert all(r["done"] and r["usage"] for r in results), [r for r in results if not r["done"]]
    assert all(r["usage"]["completion_tokens"] <= 4 + i % 5 for i, r in enumerate(results))

    def delta(name, **labels):
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert delta("modelyard_requests_total", model="tiny", endpoint="chat_completions", code="200") == CONCURRENT
    assert delta("modelyard_prompt_tokens_total", model="tiny") == sum(r["usage"]["prompt_tokens"] for r in results)
    assert delta("modelyard_generation_tokens_total", model="tiny") == sum(r["usage"]["completion_tokens"] for r in results)
    assert delta("modelyard_time_to_first_token_seconds_count", model="tiny") == CONCURRENT
    assert sample(after, "modelyard_requests_in_flight") == 0
    assert sample(after, "modelyard_planned_gpu_memory_bytes") == 123456


PROMPTS = ["Hello", "The quick brown fox", "Tensor parallel", "modelyard deploys", "A model", "Hello world",
           "The operator", "I am fine"]


async def _batched_while_busy(url: str) -> list[dict]:
    """Occupy the generation thread with a long stream, queue 8 plain requests behind it."""
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        long = {"model": "tiny", "prompt": "Hello", "max_tokens": 150, "temperature": 0, "stream": True}
        async with client.stream("POST", "/v1/completions", json=long) as r:
            lines = r.aiter_lines()
            while not (await anext(lines)).startswith("data: {"):
                pass  # the long request is generating now
            posts = [client.post("/v1/completions", json={"model": "tiny", "prompt": p, "max_tokens": 6 + i,
                                                          "temperature": 0}) for i, p in enumerate(PROMPTS)]
            results = await asyncio.gather(*posts)
            async for _ in lines:
                pass
    return [r.json() for r in results]


def test_queued_plain_requests_are_batched_and_answer_like_alone(static_server):
    server = static_server
    before = scrape(server.url)
    batched = asyncio.run(_batched_while_busy(server.url))
    after = scrape(server.url)
    calls = sample(after, "modelyard_batch_size_count", model="tiny") - sample(before, "modelyard_batch_size_count", model="tiny")
    served = sample(after, "modelyard_batch_size_sum", model="tiny") - sample(before, "modelyard_batch_size_sum", model="tiny")
    assert served == 1 + len(PROMPTS) and calls < served  # at least one generate() served several requests
    for i, (prompt, body) in enumerate(zip(PROMPTS, batched)):
        alone = httpx.post(f"{server.url}/v1/completions", timeout=60, json={
            "model": "tiny", "prompt": prompt, "max_tokens": 6 + i, "temperature": 0}).json()
        assert body["usage"] == alone["usage"], prompt
        assert body["choices"][0]["text"] == alone["choices"][0]["text"], prompt


def _engine(base, **kwargs):
    from modelyard.runtime.engines.accelerate import AccelerateEngine

    engine = AccelerateEngine(str(base), "tiny", kwargs, adapters={})
    engine.load()
    return engine


async def _greedy(engine, prompt: str) -> str:
    from modelyard.runtime.server.engine import Delta, GenerationJob

    job = GenerationJob(prompt_ids=engine.encode_prompt(prompt), max_tokens=12, temperature=0)
    return "".join([ev.text async for ev in engine.stream(job) if isinstance(ev, Delta)])


def test_forced_cpu_and_disk_offload_generates_like_the_whole_model(base, tmp_path):
    from modelyard.runtime.engines.accelerate import load_kwargs

    whole = _engine(base, **load_kwargs(str(base), "float32", 0, None, None, cuda_available=False))
    assert not getattr(whole.model, "hf_device_map", None) or set(whole.model.hf_device_map.values()) == {"cpu"}
    weights = (base / "model.safetensors").stat().st_size
    kwargs = load_kwargs(str(base), "float32", 0, {"cpu": weights // 2}, str(tmp_path / "offload"), cuda_available=False)
    assert kwargs["device_map"] == "auto"
    split = _engine(base, **kwargs)
    placed = set(split.model.hf_device_map.values())
    assert "disk" in placed and "cpu" in placed, split.model.hf_device_map
    # disk-placed weights are not in memory: accelerate streams them in per forward pass
    assert split.model.lm_head.weight.device.type == "meta"
    for prompt in ("Hello", "The quick brown fox"):
        assert asyncio.run(_greedy(split, prompt)) == asyncio.run(_greedy(whole, prompt))


def test_client_gone_mid_stream_frees_the_model_and_is_counted_499(server):
    before = scrape(server.url)
    with httpx.Client(base_url=server.url, timeout=60) as client:
        long = {"model": "tiny", "prompt": "Hello", "max_tokens": 1800, "temperature": 0, "stream": True}
        with client.stream("POST", "/v1/completions", json=long) as r:
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    break  # hang up after the first token
        # the next request is answered (generation of the abandoned one was stopped)
        nxt = client.post("/v1/completions", json={"model": "tiny", "prompt": "Hello", "max_tokens": 4, "temperature": 0})
        assert nxt.status_code == 200 and nxt.json()["usage"]["completion_tokens"] == 4
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        after = scrape(server.url)
        gone = sample(after, "modelyard_requests_total", model="tiny", endpoint="completions", code="499") - \
            sample(before, "modelyard_requests_total", model="tiny", endpoint="completions", code="499")
        if gone == 1 and sample(after, "modelyard_requests_in_flight") == 0:
            break
        time.sleep(0.2)
    assert gone == 1 and sample(after, "modelyard_requests_in_flight") == 0
    # the abandoned generation stopped early: its tokens (counted when it ended, before the next
    # request ran) are far fewer than the 1800 asked for
    generated = sample(after, "modelyard_generation_tokens_total", model="tiny") - \
        sample(before, "modelyard_generation_tokens_total", model="tiny") - 4
    assert 1 <= generated < 100


def _wait_for_metric(url: str, name: str, want: float, timeout: float = 60, **labels) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        now = scrape(url)
        if sample(now, name, **labels) == want:
            return now
        assert time.monotonic() < deadline, f"{name}{labels} never reached {want} (last {sample(now, name, **labels)})"
        time.sleep(0.2)


def test_client_gone_before_a_plain_answer_cancels_its_generation_and_is_counted_499(server):
    """Non-streaming: a client that hangs up while its answer is being generated stops the
    generation (the request ends as 499, not as a 200 nobody reads)."""
    before = scrape(server.url)
    long = {"model": "tiny", "prompt": "Hello", "max_tokens": 1800, "temperature": 0}

    async def hang_up():
        async with httpx.AsyncClient(base_url=server.url, timeout=300) as client:
            tasks = [asyncio.ensure_future(client.post("/v1/completions", json=long)) for _ in range(3)]
            await asyncio.to_thread(_wait_for_metric, server.url, "modelyard_requests_in_flight", 3)
            for t in tasks:
                t.cancel()  # closes each request's connection
            await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(hang_up())
    after = _wait_for_metric(server.url, "modelyard_requests_in_flight", 0, timeout=120)
    ended = {code: sample(after, "modelyard_requests_total", model="tiny", endpoint="completions", code=code)
             - sample(before, "modelyard_requests_total", model="tiny", endpoint="completions", code=code)
             for code in ("200", "499")}
    assert ended == {"200": 0, "499": 3}, ended
    generated = sample(after, "modelyard_generation_tokens_total", model="tiny") - \
        sample(before, "modelyard_generation_tokens_total", model="tiny")
    assert generated < 3 * 1800 / 4, f"{generated} tokens: the abandoned generations ran on"


def test_health_answers_while_a_huge_prompt_is_tokenized(server):
    """Tokenization runs off the event loop: /health (the liveness probe) keeps answering fast
    while a prompt of ~3 MB is tokenized (then refused: it is longer than the context)."""
    huge = " ".join(f"w{i}" for i in range(400_000))

    async def run():
        async with httpx.AsyncClient(base_url=server.url, timeout=300) as client:
            big = asyncio.ensure_future(client.post("/v1/completions", json={"model": "tiny", "prompt": huge, "max_tokens": 1}))
            polls = []
            while not big.done():
                t0 = time.perf_counter()
                r = await client.get("/health", timeout=5)
                polls.append((r.status_code, time.perf_counter() - t0))
                await asyncio.sleep(0.1)
            return await big, polls

    resp, polls = asyncio.run(run())
    assert resp.status_code == 400 and resp.json()["error"]["param"] in ("prompt", "messages"), resp.text
    assert len(polls) >= 3, f"the huge prompt was tokenized too fast to prove anything ({len(polls)} polls)"
    assert all(code == 200 for code, _ in polls)
    assert max(s for _, s in polls) < 1.0, f"/health stalled {max(s for _, s in polls):.2f} s during tokenization"
