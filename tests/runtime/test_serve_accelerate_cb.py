"""Continuous batching in the accelerate engine (transformers' paged-attention scheduler): outputs
under concurrency equal the same requests served one at a time, streams with different lengths,
stop strings and adapters share the batch, and a model that cannot use it (CPU/disk offload)
falls back to static batching and says so in /metrics.

The tiny model has varied weights (initializer_range 0.15, a non-default rope theta): with the
default init greedy decoding repeats one token and equal outputs would prove nothing."""
from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import json

import httpx
import pytest

from modelyard.runtime.tiny import make_tiny_llama
from tests.runtime.accelerate_helpers import Server, make_adapter, sample, scrape

PROMPTS = ["Hello", "The quick brown fox", "Tensor parallel shards", "modelyard deploys", "A model that",
           "I am fine, thank you", "The operator downloads", "How are you today?"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cb")
    base = make_tiny_llama(root / "tiny", initializer_range=0.15, rope_theta=1234.0)
    return {"root": root, "base": base, "sql": make_adapter(base, root / "sql", seed=1),
            "chat": make_adapter(base, root / "chat", seed=2)}


def _engine(base, batching: str, adapters: dict | None = None, **kwargs):
    import torch

    from modelyard.runtime.engines.accelerate import AccelerateEngine

    engine = AccelerateEngine(str(base), "tiny", kwargs or {"dtype": torch.float32, "device_map": "cpu"},
                              adapters=adapters or {}, batching=batching)
    engine.load()
    return engine


async def _run(engine, prompt: str, **job) -> tuple[str, object]:
    from modelyard.runtime.server.engine import Delta, GenerationJob

    job = GenerationJob(prompt_ids=engine.encode_prompt(prompt), **{"max_tokens": 12, "temperature": 0, **job})
    parts, finish = [], None
    async for ev in engine.stream(job):
        if isinstance(ev, Delta):
            parts.append(ev.text)
        else:
            finish = ev
    return "".join(parts), finish


def _mix(i: int) -> dict:
    return {"max_tokens": 5 + 3 * (i % 6), "stream": i % 2 == 0}


def test_greedy_under_continuous_batching_equals_one_at_a_time(files):
    cb = _engine(files["base"], "auto")
    static = _engine(files["base"], "static")
    assert (cb.batching, static.batching) == ("continuous", "static")
    # all-greedy passes take the argmax of the raw logits (no softmax + draw): the outputs below prove it exact
    assert cb._cb.manager.logit_processor.argmax_sampler
    jobs = [(PROMPTS[i % len(PROMPTS)], _mix(i)) for i in range(16)]
    alone = [asyncio.run(_run(cb, p, **kw)) for p, kw in jobs]
    steps = cb._cb.manager.current_batch

    async def together():
        return await asyncio.gather(*(_run(cb, p, **kw) for p, kw in jobs))

    batched = asyncio.run(together())
    steps = cb._cb.manager.current_batch - steps
    generated = sum(f.completion_tokens for _, f in batched)
    assert steps < generated / 3, (steps, generated)  # the 16 requests really shared forward passes
    for (prompt, kw), (text, fin), (text1, fin1) in zip(jobs, batched, alone):
        assert (text, fin.completion_tokens, fin.reason) == (text1, fin1.completion_tokens, fin1.reason), prompt
        assert fin.first_token_at is not None
    # ...and what model.generate answers one at a time (the static path)
    for (prompt, kw), (text, fin) in zip(jobs, batched):
        assert asyncio.run(_run(static, prompt, **kw))[0] == text, prompt
    assert len({t for t, _ in batched}) >= 8 and all(len(set(t)) > 3 for t, _ in batched)  # not one repeated token

    async def mixed():  # greedy rows next to sampled rows (the full per-request sampling path)
        return await asyncio.gather(*(_run(cb, p, **kw, **({"temperature": 0.9} if i % 2 else {}))
                                      for i, (p, kw) in enumerate(jobs)))

    assert [t for t, _ in asyncio.run(mixed())][::2] == [t for t, _ in batched][::2]
    cb._cb.close()


async def _stream_after(engine, prompt: str, started: asyncio.Event, **job) -> tuple[str, object]:
    """Like _run, and sets ``started`` once the first text arrived."""
    from modelyard.runtime.server.engine import Delta, GenerationJob

    parts, finish = [], None
    async for ev in engine.stream(GenerationJob(prompt_ids=engine.encode_prompt(prompt), **job)):
        if isinstance(ev, Delta):
            parts.append(ev.text)
            started.set()
        else:
            finish = ev
    return "".join(parts), finish


def test_a_lone_request_runs_solo_and_hands_over_to_the_batch_when_another_arrives(files):
    """On CPU a lone request runs as generate() (no manager step); a second request makes it stop at
    its next token and continue in the batch from what it generated: the outputs do not change."""
    cb = _engine(files["base"], "auto")
    batcher, manager = cb._cb, cb._cb.manager
    assert batcher.solo_enabled  # the model is on the CPU (device_map="cpu"), whatever the machine has
    long_job, short_job = {"max_tokens": 48, "temperature": 0}, {"max_tokens": 10, "temperature": 0, "stream": False}
    steps = manager.current_batch
    alone_long = asyncio.run(_run(cb, PROMPTS[1], **long_job))
    alone_short = asyncio.run(_run(cb, PROMPTS[4], **short_job))
    assert manager.current_batch == steps and batcher.handovers == 0  # served solo: the manager did no step
    assert alone_long[1].completion_tokens == 48 and alone_long[1].first_token_at is not None

    async def overlapping():
        started = asyncio.Event()
        first = asyncio.create_task(_stream_after(cb, PROMPTS[1], started, **long_job))
        await started.wait()  # the first request is generating alone now
        second = await _run(cb, PROMPTS[4], **short_job)
        return await first, second

    times: list = []  # what the inter-token latency metric gets: each generated token's time
    cb.on_token_times = lambda model, ts: times.append(list(ts))
    (text1, fin1), (text2, fin2) = asyncio.run(overlapping())
    assert batcher.handovers == 1 and manager.current_batch > steps  # it moved into the manager's batch
    assert (text1, fin1.completion_tokens, fin1.reason) == (alone_long[0], 48, "length")
    assert (text2, fin2.completion_tokens) == (alone_short[0], alone_short[1].completion_tokens)
    # the handed-over request's token times: the solo ones, then the manager's, one per token, in order
    long_times = next(t for t in times if len(t) == 48)
    assert long_times == sorted(long_times) and fin1.first_token_at == long_times[0]
    assert cb._base().config._attn_implementation == batcher.cb_attn  # paged attention back for the manager

    async def sampled():  # a sampled request hands over with its settings and still stops at max_tokens
        started = asyncio.Event()
        first = asyncio.create_task(_stream_after(cb, PROMPTS[2], started, max_tokens=40, temperature=0.9))
        await started.wait()
        await _run(cb, PROMPTS[3], max_tokens=4, temperature=0)
        return await first

    text, fin = asyncio.run(sampled())
    assert batcher.handovers == 2 and text and (fin.completion_tokens == 40 or fin.reason == "stop")
    cb._cb.close()


def test_a_client_that_leaves_a_solo_request_frees_the_model(files):
    cb = _engine(files["base"], "auto")
    expected = asyncio.run(_run(cb, PROMPTS[5], max_tokens=8))

    async def leave(then: dict):
        from modelyard.runtime.server.engine import GenerationJob

        gen = cb.stream(GenerationJob(prompt_ids=cb.encode_prompt(PROMPTS[0]), max_tokens=1500, temperature=0))
        await gen.__anext__()
        await gen.aclose()  # the client went away after its first text
        return await _run(cb, PROMPTS[5], **then)  # waits for the abandoned generate() to stop

    text, fin = asyncio.run(leave({"max_tokens": 8}))
    assert (text, fin.completion_tokens) == (expected[0], expected[1].completion_tokens)
    assert cb._cb._solo is None and cb._base().config._attn_implementation == cb._cb.cb_attn
    # a static-path request (seeded sampling) right after: the switch to the model's own attention
    # waits for the abandoned generate() (whose end restores paged attention) before it happens
    seeded = {"max_tokens": 8, "temperature": 0.9, "seed": 3}
    assert asyncio.run(leave(seeded))[0] == asyncio.run(_run(cb, PROMPTS[5], **seeded))[0]

    failures, run_static = [], cb._run

    def recorded(job, streamer):  # the static path's generate(), failures noted
        try:
            run_static(job, streamer)
        except Exception as exc:
            failures.append(exc)
            raise
    cb._run = recorded

    async def leave_static():  # the other way: a static request left mid-way, then the manager's turn
        from modelyard.runtime.server.engine import GenerationJob

        gen = cb.stream(GenerationJob(prompt_ids=cb.encode_prompt(PROMPTS[0]), max_tokens=1500, temperature=0,
                                      logprobs=1))  # logprobs: the static path
        await gen.__anext__()
        await gen.aclose()
        return await _run(cb, PROMPTS[5], max_tokens=8)

    assert asyncio.run(leave_static())[0] == expected[0]
    assert not failures  # its generate() stopped before the model went back to paged attention
    cb._cb.close()


def test_requests_for_different_adapters_share_forward_passes(files):
    """Base-model and LoRA requests run in the same forward passes (each token with its own adapter,
    through PEFT's mixed batch) and answer what they answer alone; a DoRA adapter, which PEFT cannot
    mix, keeps its own group and still answers right."""
    from modelyard.runtime.engines import accelerate_multilora as multilora

    dora = make_adapter(files["base"], files["root"] / "dora", seed=4, r=4, use_dora=True)
    cb = _engine(files["base"], "auto", {"sql": str(files["sql"]), "chat": str(files["chat"]), "dora": str(dora)})
    batcher = cb._cb
    assert batcher.mix_reason is None  # no CUDA graphs in a CPU manager
    assert batcher._group(None) is batcher._group("sql") is batcher._group("chat") is multilora.MIXED
    assert batcher._group("dora") == "dora"
    jobs = [(PROMPTS[i % len(PROMPTS)], (None, "sql", "chat")[i % 3], {"max_tokens": 6 + i % 5}) for i in range(12)]
    alone = [asyncio.run(_run(cb, p, adapter=a, **kw)) for p, a, kw in jobs]
    assert len({t for t, _ in alone}) >= 9  # the adapters change the outputs
    switches = batcher.admission.switches

    async def together(js):
        return await asyncio.gather(*(_run(cb, p, adapter=a, **kw) for p, a, kw in js))

    got = asyncio.run(together(jobs))
    assert [(t, f.completion_tokens) for t, f in got] == [(t, f.completion_tokens) for t, f in alone]
    assert batcher.token_adapters.mixed_passes > 0  # adapters really shared passes...
    assert batcher.admission.switches == switches   # ...without draining one group for another
    dora_jobs = [(PROMPTS[i], "dora" if i % 2 else "sql", {"max_tokens": 6}) for i in range(4)]
    dora_alone = [asyncio.run(_run(cb, p, adapter=a, **kw))[0] for p, a, kw in dora_jobs]
    assert [t for t, _ in asyncio.run(together(dora_jobs))] == dora_alone
    assert batcher.admission.switches > switches  # the DoRA adapter ran as its own group
    cb._cb.close()


def test_forced_offload_falls_back_to_static_batching(files, tmp_path):
    from modelyard.runtime.engines.accelerate import load_kwargs

    weights = (files["base"] / "model.safetensors").stat().st_size
    kwargs = load_kwargs(str(files["base"]), "float32", 0, {"cpu": weights // 2}, str(tmp_path / "off"),
                         cuda_available=False)
    engine = _engine(files["base"], "auto", **kwargs)
    assert "disk" in set(engine.model.hf_device_map.values())
    assert engine.batching == "static" and "offload" in engine.batching_reason and engine._cb is None
    text, finish = asyncio.run(_run(engine, "Hello"))
    assert finish.completion_tokens == 12 and text
    from modelyard.runtime.engines.accelerate_cb import BatchingConfigError

    with pytest.raises(BatchingConfigError, match="--batching continuous cannot apply: weights are split"):
        _engine(files["base"], "continuous", **kwargs)


def test_a_process_whose_manager_is_running_still_exits(files):
    """transformers' manager thread is not a daemon: a server told to stop (or any process that
    never calls close()) used to wait on it forever after its last line."""
    code = textwrap.dedent(f"""
        import torch
        from modelyard.runtime.engines.accelerate import AccelerateEngine
        engine = AccelerateEngine({str(files["base"])!r}, "tiny", {{"dtype": torch.float32, "device_map": "cpu"}},
                                  adapters={{}}, batching="continuous")
        engine.load()
        print("batching", engine.batching, engine._cb.manager.is_running(), flush=True)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "batching continuous True" in done.stdout


# -- through a real server ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(files):
    s = Server(["--engine", "accelerate", "--model", str(files["base"]), "--served-model-name", "tiny",
                "--adapter", f"sql={files['sql']}", "--adapter", f"chat={files['chat']}", "--precision", "float32"],
               files["root"] / "serve.log")
    yield s.wait_healthy()
    s.stop()


def _request(i: int, stops: dict[int, str]) -> dict:
    body = {"model": ("tiny", "sql", "chat")[i % 3], "prompt": PROMPTS[i % len(PROMPTS)],
            "max_tokens": 4 + 2 * (i % 7), "temperature": 0, "stream": True}
    if i in stops:
        body["stop"] = [stops[i]]
    return body


async def _stream(client: httpx.AsyncClient, body: dict) -> dict:
    text, reason, done = "", None, False
    async with client.stream("POST", "/v1/completions", json={**body, "stream_options": {"include_usage": True}}) as r:
        assert r.status_code == 200, await r.aread()
        usage = None
        async for line in r.aiter_lines():
            if line == "data: [DONE]":
                done = True
            elif line.startswith("data: "):
                event = json.loads(line[6:])
                usage = event.get("usage") or usage
                for choice in event["choices"]:
                    text += choice["text"]
                    reason = choice["finish_reason"] or reason
    return {"text": text, "reason": reason, "done": done, "usage": usage}


def test_16_concurrent_streams_with_lengths_stops_and_adapters_match_alone(server):
    async def alone(bodies):
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
            return [await _stream(client, b) for b in bodies]

    async def together(bodies):
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
            return await asyncio.gather(*(_stream(client, b) for b in bodies))

    plain = asyncio.run(alone([_request(i, {}) for i in range(16)]))
    # stop strings cut inside what each request generates alone
    stops = {i: plain[i]["text"][2:4] for i in range(0, 16, 3) if len(plain[i]["text"].strip()) > 4}
    bodies = [_request(i, stops) for i in range(16)]
    expected = asyncio.run(alone(bodies))
    assert len({b["model"] for b in bodies}) == 3 and stops
    assert len({r["text"] for r in plain}) >= 12  # the adapters and prompts really change the output
    before = scrape(server.url)
    got = asyncio.run(together(bodies))
    after = scrape(server.url)
    for i, (g, e) in enumerate(zip(got, expected)):
        assert g["done"] and (g["text"], g["reason"], g["usage"]) == (e["text"], e["reason"], e["usage"]), (i, bodies[i])
        if i in stops:
            assert g["reason"] == "stop" and stops[i] not in g["text"]

    def delta(name, **labels):
        return sample(after, name, **labels) - sample(before, name, **labels)

    for model in ("tiny", "sql", "chat"):
        n = sum(b["model"] == model for b in bodies)
        assert delta("modelyard_batching_requests_total", model=model, path="continuous", reason="") == n
        assert delta("modelyard_time_to_first_token_seconds_count", model=model) == n
        gaps = sum(g["usage"]["completion_tokens"] - 1 for g, b in zip(got, bodies) if b["model"] == model)
        assert delta("modelyard_inter_token_latency_seconds_count", model=model) == gaps
        # first tokens and token gaps come from the generation itself, so they fit in each request's time
        assert delta("modelyard_time_to_first_token_seconds_sum", model=model) + \
            delta("modelyard_inter_token_latency_seconds_sum", model=model) <= \
            delta("modelyard_request_duration_seconds_sum", model=model, endpoint="completions")
    assert sample(after, "modelyard_engine_batching_info", mode="continuous", reason="") == 1


def test_a_seeded_sampled_request_takes_the_static_path_and_is_reproducible(server):
    body = {"model": "tiny", "prompt": "Hello", "max_tokens": 8, "temperature": 0.9, "seed": 7}
    before = scrape(server.url)
    first = httpx.post(f"{server.url}/v1/completions", json=body, timeout=60).json()
    second = httpx.post(f"{server.url}/v1/completions", json=body, timeout=60).json()
    after = scrape(server.url)
    assert first["choices"][0]["text"] == second["choices"][0]["text"]
    key = dict(model="tiny", path="static", reason="seed")
    assert sample(after, "modelyard_batching_requests_total", **key) - sample(before, "modelyard_batching_requests_total", **key) == 2


@pytest.fixture(scope="module")
def offloaded(files):
    weights = (files["base"] / "model.safetensors").stat().st_size
    s = Server(["--engine", "accelerate", "--model", str(files["base"]), "--served-model-name", "tiny",
                "--max-memory", json.dumps({"cpu": weights // 2}), "--offload-folder", str(files["root"] / "off")],
               files["root"] / "serve-offload.log")
    yield s.wait_healthy()
    s.stop()


def test_an_offloaded_server_says_static_in_its_metrics_and_log(offloaded):
    r = httpx.post(f"{offloaded.url}/v1/completions", timeout=60,
                   json={"model": "tiny", "prompt": "Hello", "max_tokens": 4, "stream": True})
    assert r.status_code == 200
    metrics = scrape(offloaded.url)
    info = [labels for (name, labels) in metrics if name == "modelyard_engine_batching_info"]
    assert len(info) == 1 and dict(info[0])["mode"] == "static" and "offload" in dict(info[0])["reason"], info
    log = offloaded.log.read_text()
    assert log.count("accelerate engine batching: static (continuous batching cannot apply: weights are split") == 1


def test_adapter_unload_and_load_while_streams_run(server, files):
    """Adapter admin pauses the manager between forward passes; running streams finish unharmed."""
    bodies = [{**_request(i, {}), "max_tokens": 150} for i in range(6)]  # long enough to be running

    async def alone():
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
            return [await _stream(client, b) for b in bodies]

    async def with_admin():
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
            streams = [asyncio.create_task(_stream(client, b)) for b in bodies]
            for _ in range(600):  # every stream has reached the engine before the admin calls
                metrics = await asyncio.to_thread(scrape, server.url)
                if sample(metrics, "modelyard_requests_in_flight") >= len(bodies):
                    break
                await asyncio.sleep(0.02)
            assert sample(metrics, "modelyard_requests_in_flight") >= len(bodies), "streams ended before the admin calls"
            out = await client.post("/v1/unload_lora_adapter", json={"lora_name": "chat"})
            back = await client.post("/v1/load_lora_adapter", json={"lora_name": "chat", "lora_path": str(files["chat"])})
            return await asyncio.gather(*streams), out.status_code, back.status_code

    expected = asyncio.run(alone())
    got, out, back = asyncio.run(with_admin())
    assert (out, back) == (200, 200)
    assert [(g["text"], g["usage"]) for g in got] == [(e["text"], e["usage"]) for e in expected]
    assert asyncio.run(alone()) == expected  # the reloaded adapter answers as before


def test_logprobs_and_penalties_take_the_static_path_and_still_answer(server):
    before = scrape(server.url)
    chat = {"model": "tiny", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4, "temperature": 0}
    r = httpx.post(f"{server.url}/v1/chat/completions", timeout=60, json={**chat, "logprobs": True, "top_logprobs": 2})
    assert r.status_code == 200, r.text
    entries = r.json()["choices"][0]["logprobs"]["content"]
    assert len(entries) == r.json()["usage"]["completion_tokens"] and len(entries[0]["top_logprobs"]) == 2
    r = httpx.post(f"{server.url}/v1/chat/completions", timeout=60, json={**chat, "presence_penalty": 1.5})
    assert r.status_code == 200, r.text
    after = scrape(server.url)
    for reason in ("logprobs", "presence_penalty"):
        key = dict(model="tiny", path="static", reason=reason)
        assert sample(after, "modelyard_batching_requests_total", **key) - \
            sample(before, "modelyard_batching_requests_total", **key) == 1, reason
