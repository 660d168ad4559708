"""`modelyard serve --engine accelerate` end to end: a real server process on a tiny Llama with a
LoRA adapter, checked through its OpenAI-compatible API and its /metrics."""
from __future__ import annotations

import json
import shutil
import subprocess
import time

import httpx
import pytest

from modelyard.runtime.tiny import make_tiny_llama
from tests.runtime.accelerate_helpers import MODELYARD, Server, make_adapter, sample, scrape, sse_events

MAX_LEN = 256


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    base = make_tiny_llama(root / "tiny")
    other = make_tiny_llama(root / "other", hidden_size=128, num_attention_heads=2,
                            num_key_value_heads=1, intermediate_size=256)
    files = {"root": root, "base": base,
             "sql": make_adapter(base, root / "sql", seed=1),
             "chat": make_adapter(base, root / "chat", seed=2),
             "foreign": make_adapter(other, root / "foreign", seed=3)}
    # the same foreign adapter, but naming a hub id as its base: only the weight shapes tell
    files["foreign_hub"] = _copy_with(files["foreign"], root / "foreign_hub", base_model_name_or_path="someone/other")
    # an adapter for another architecture's module names (GPT-2)
    files["gpt2"] = _copy_with(files["sql"], root / "gpt2", target_modules=["c_attn"])
    return files


def declare(files, **adapters):
    (files["root"] / "adapters.json").write_text(json.dumps({k: str(v) for k, v in adapters.items()}))


def names(server):
    return [m["id"] for m in httpx.get(f"{server.url}/v1/models").json()["data"]]


def wait_for(check, timeout=30):
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def _copy_with(src, dst, **changes):
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "adapter_config.json").read_text())
    (dst / "adapter_config.json").write_text(json.dumps({**cfg, **changes}))
    return dst


@pytest.fixture(scope="module")
def server(files):
    # adapters are declared in the file the operator mounts; only those can be loaded at runtime
    declare(files, sql=files["sql"])
    s = Server(["--engine", "accelerate", "--model", str(files["base"]), "--served-model-name", "tiny",
                "--adapters-file", str(files["root"] / "adapters.json"), "--max-model-len", str(MAX_LEN),
                "--precision", "float32"], files["root"] / "serve.log")
    yield s.wait_healthy()
    s.stop()


@pytest.fixture(scope="module")
def reference(files):
    """The same model loaded directly with transformers, to compare outputs token for token."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(files["base"]))
    model = AutoModelForCausalLM.from_pretrained(str(files["base"]), dtype=torch.float32).eval()

    def generate(ids, max_new, seed=None):
        if seed is not None:
            torch.manual_seed(seed)
        sampling = {"do_sample": False} if seed is None else {"do_sample": True, "temperature": 1.0, "top_p": 1.0, "top_k": 0}
        t = torch.tensor([ids])
        out = model.generate(input_ids=t, attention_mask=torch.ones_like(t), max_new_tokens=max_new,
                             pad_token_id=tok.pad_token_id, **sampling)[0][len(ids):].tolist()
        return out, tok.decode(out, skip_special_tokens=True)

    def chat_ids(messages):
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return tok(text, add_special_tokens=False)["input_ids"]

    return {"tok": tok, "model": model, "generate": generate, "chat_ids": chat_ids}


def post(server, path, body):
    return httpx.post(f"{server.url}{path}", json=body, timeout=60)


def test_health_answers_503_while_loading_then_200(server):
    assert 503 in server.statuses and server.statuses[-1] == 200
    assert server.statuses.index(503) < server.statuses.index(200)


def test_models_lists_base_and_adapter(server):
    body = httpx.get(f"{server.url}/v1/models").json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["tiny", "sql"]
    assert body["data"][1]["parent"] == "tiny"


def test_completion_matches_transformers_and_counts_usage(server, reference):
    prompt = "Hello"
    r = post(server, "/v1/completions", {"model": "tiny", "prompt": prompt, "max_tokens": 8, "temperature": 0})
    assert r.status_code == 200, r.text
    body = r.json()
    ids = reference["tok"](prompt)["input_ids"]
    out, text = reference["generate"](ids, 8)
    assert body["object"] == "text_completion"
    assert body["choices"][0]["text"] == text and text
    assert body["usage"] == {"prompt_tokens": len(ids), "completion_tokens": len(out), "total_tokens": len(ids) + len(out)}


def test_chat_with_seed_matches_transformers_sampling(server, reference):
    messages = [{"role": "user", "content": "Hello world! How are you today?"}]
    r = post(server, "/v1/chat/completions", {"model": "tiny", "messages": messages, "max_tokens": 12,
                                               "temperature": 1.0, "seed": 7})
    assert r.status_code == 200, r.text
    body = r.json()
    ids = reference["chat_ids"](messages)
    out, text = reference["generate"](ids, 12, seed=7)
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": text} and text
    assert body["usage"]["prompt_tokens"] == len(ids) and body["usage"]["completion_tokens"] == len(out)


def test_chat_stream_is_sse_with_the_same_text_and_usage(server):
    req = {"model": "tiny", "messages": [{"role": "user", "content": "The quick brown fox"}],
           "max_tokens": 10, "temperature": 1.0, "seed": 3}
    plain = post(server, "/v1/chat/completions", req).json()
    r = post(server, "/v1/chat/completions", {**req, "stream": True, "stream_options": {"include_usage": True}})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r)
    assert events[-1] == "[DONE]"
    chunks, usage = events[:-2], events[-2]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == plain["choices"][0]["message"]["content"] and text
    assert chunks[-1]["choices"][0]["finish_reason"] == plain["choices"][0]["finish_reason"]
    assert usage["usage"] == plain["usage"]


def test_completion_stream_and_stop_string(server):
    req = {"model": "tiny", "prompt": "Hello", "max_tokens": 8, "temperature": 0}
    full = post(server, "/v1/completions", req).json()["choices"][0]["text"]
    r = post(server, "/v1/completions", {**req, "stream": True})
    events = sse_events(r)
    assert events[-1] == "[DONE]"
    assert "".join(e["choices"][0]["text"] for e in events[:-1]) == full
    stop = full[len(full) // 2: len(full) // 2 + 2]
    cut = post(server, "/v1/completions", {**req, "stop": [stop]}).json()["choices"][0]
    assert cut["text"] == full[: full.index(stop)] and cut["finish_reason"] == "stop"


def test_adapter_output_differs_from_base(server):
    req = {"prompt": "Hello", "max_tokens": 8, "temperature": 0}
    base = post(server, "/v1/completions", {**req, "model": "tiny"}).json()["choices"][0]["text"]
    sql = post(server, "/v1/completions", {**req, "model": "sql"}).json()
    assert sql["model"] == "sql" and sql["choices"][0]["text"] != base
    again = post(server, "/v1/completions", {**req, "model": "tiny"}).json()["choices"][0]["text"]
    assert again == base  # the base is unaffected by the adapter having been used


def test_hot_load_and_unload_adapter(server, files):
    declare(files, sql=files["sql"], chat=files["chat"])  # the adapter sync loads what the file declares
    wait_for(lambda: names(server) == ["tiny", "sql", "chat"])
    assert sample(scrape(server.url), "modelyard_adapter_loaded", adapter="chat") == 1
    req = {"prompt": "Hello", "max_tokens": 8, "temperature": 0}
    chat = post(server, "/v1/completions", {**req, "model": "chat"}).json()["choices"][0]["text"]
    sql = post(server, "/v1/completions", {**req, "model": "sql"}).json()["choices"][0]["text"]
    assert chat != sql
    assert post(server, "/v1/load_lora_adapter", {"lora_name": "chat", "lora_path": str(files["chat"])}).status_code == 400
    declare(files, sql=files["sql"])
    wait_for(lambda: names(server) == ["tiny", "sql"])
    metrics = scrape(server.url)
    assert ("modelyard_adapter_loaded", (("adapter", "chat"),)) not in metrics
    assert sample(metrics, "modelyard_adapter_loaded", adapter="sql") == 1
    assert post(server, "/v1/completions", {**req, "model": "chat"}).status_code == 404
    assert post(server, "/v1/unload_lora_adapter", {"lora_name": "chat"}).status_code == 404


def test_no_client_can_load_an_undeclared_adapter(server, files):
    for body in ({"lora_name": "chat", "lora_path": str(files["chat"])},      # not declared (any more)
                 {"lora_name": "sql", "lora_path": str(files["chat"])}):      # declared, another folder
        r = post(server, "/v1/load_lora_adapter", body)
        assert r.status_code == 403 and r.json()["error"]["code"] == "adapter_not_declared"
    assert names(server) == ["tiny", "sql"]


@pytest.mark.parametrize("which, words", [
    ("foreign", "(hidden_size=128), but the served model has hidden_size=256"),
    ("foreign_hub", "has shape [8, 128], but the base model needs [8, 256]"),
    ("gpt2", "target modules ['c_attn'] do not exist in the base model"),
    ("root", "adapter_config.json is missing"),
])
def test_load_invalid_adapter_is_400_with_reason(server, files, which, words):
    declare(files, sql=files["sql"], bad=files[which])
    try:
        r = post(server, "/v1/load_lora_adapter", {"lora_name": "bad", "lora_path": str(files[which])})
        assert r.status_code == 400
        assert words in r.json()["error"]["message"]
        assert "bad" not in names(server)
    finally:
        declare(files, sql=files["sql"])


def _error(r, status):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    return err


def test_errors_have_openai_shape(server):
    err = _error(post(server, "/v1/chat/completions", {"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]}), 404)
    assert "gpt-9" in err["message"] and err["code"] == "model_not_found"
    err = _error(post(server, "/v1/chat/completions", {"model": "tiny"}), 400)
    assert err["param"] == "messages"
    err = _error(post(server, "/v1/completions", {"model": "tiny", "prompt": "x", "temperature": -0.5}), 400)
    assert err["param"] == "temperature"
    long_prompt = "Hello world! " * 60
    err = _error(post(server, "/v1/chat/completions", {"model": "tiny", "max_tokens": 100,
                                                        "messages": [{"role": "user", "content": long_prompt}]}), 400)
    assert err["code"] == "context_length_exceeded"
    assert f"maximum context length is {MAX_LEN} tokens" in err["message"]
    assert "in the messages, 100 in the completion" in err["message"]


def test_metrics_count_exactly_what_was_sent(server):
    before = scrape(server.url)
    usage = {"prompt": 0, "completion": 0}
    for i in range(3):
        body = post(server, "/v1/chat/completions", {"model": "sql", "max_tokens": 5 + i, "temperature": 0,
                                                      "messages": [{"role": "user", "content": "Hello"}]}).json()
        usage["prompt"] += body["usage"]["prompt_tokens"]
        usage["completion"] += body["usage"]["completion_tokens"]
    post(server, "/v1/chat/completions", {"model": "sql"})  # 400
    after = scrape(server.url)

    def delta(name, **labels):
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert delta("modelyard_requests_total", model="sql", endpoint="chat_completions", code="200") == 3
    assert delta("modelyard_requests_total", model="sql", endpoint="chat_completions", code="400") == 1
    assert delta("modelyard_prompt_tokens_total", model="sql") == usage["prompt"]
    assert delta("modelyard_generation_tokens_total", model="sql") == usage["completion"]
    assert delta("modelyard_time_to_first_token_seconds_count", model="sql") == 3
    assert delta("modelyard_request_duration_seconds_count", model="sql", endpoint="chat_completions") == 4
    assert sample(after, "modelyard_requests_in_flight") == 0
    assert sample(after, "modelyard_model_load_seconds") > 0
    assert sample(after, "modelyard_engine_info", engine="accelerate", model="tiny") == 1
    assert not any(name.startswith("modelyard_gpu_memory") for name, _ in after)  # no GPU here
    assert not any(name == "modelyard_planned_gpu_memory_bytes" for name, _ in after)


def _serve_fails(args, timeout=90):
    return subprocess.run([MODELYARD, "serve", "--engine", "accelerate", *args, "--port", "0"],
                          capture_output=True, text=True, timeout=timeout)


def test_startup_refuses_int8_on_cpu_and_bad_adapters(files):
    r = _serve_fails(["--model", str(files["base"]), "--precision", "int8"])
    assert r.returncode != 0
    assert "precision int8 on the accelerate engine needs a GPU (bitsandbytes)" in r.stderr
    r = _serve_fails(["--model", str(files["base"]), "--adapter", f"x={files['root']}"])
    assert r.returncode != 0 and "adapter 'x'" in r.stderr and "adapter_config.json" in r.stderr
    r = _serve_fails(["--model", str(files["base"]), "--adapter", f"x={files['foreign_hub']}"])
    assert r.returncode != 0 and "has shape [8, 128], but the base model needs [8, 256]" in r.stderr


def test_logprobs_are_the_models_own(server, reference):
    import torch

    messages = [{"role": "user", "content": "Hello there"}]
    r = post(server, "/v1/chat/completions", {"model": "tiny", "messages": messages, "max_tokens": 4,
                                               "temperature": 0, "logprobs": True, "top_logprobs": 3})
    assert r.status_code == 200, r.text
    entries = r.json()["choices"][0]["logprobs"]["content"]
    ids = reference["chat_ids"](messages)
    out, _ = reference["generate"](ids, 4)
    assert len(entries) == len(out)
    with torch.no_grad():
        logits = reference["model"](torch.tensor([ids + out])).logits[0, len(ids) - 1:-1]
    want = torch.log_softmax(logits.float(), dim=-1)
    for step, (e, tok) in enumerate(zip(entries, out)):
        assert abs(e["logprob"] - float(want[step, tok])) < 1e-3
        assert len(e["top_logprobs"]) == 3 and e["top_logprobs"][0]["logprob"] == pytest.approx(e["logprob"], abs=1e-5)
        assert e["token"] == reference["tok"].decode([tok])


def test_n_choices_list_of_prompts_and_completions_logprobs(server, reference):
    one = post(server, "/v1/completions", {"model": "tiny", "prompt": "Hello", "max_tokens": 5, "temperature": 0}).json()
    two = post(server, "/v1/completions", {"model": "tiny", "prompt": "The quick", "max_tokens": 5, "temperature": 0}).json()
    both = post(server, "/v1/completions", {"model": "tiny", "prompt": ["Hello", "The quick"], "max_tokens": 5,
                                             "temperature": 0, "n": 2, "logprobs": 2}).json()
    assert [c["index"] for c in both["choices"]] == [0, 1, 2, 3]
    texts = [c["text"] for c in both["choices"]]
    assert texts == [one["choices"][0]["text"]] * 2 + [two["choices"][0]["text"]] * 2
    assert both["usage"]["prompt_tokens"] == one["usage"]["prompt_tokens"] + two["usage"]["prompt_tokens"]
    assert both["usage"]["completion_tokens"] == 2 * (one["usage"]["completion_tokens"] + two["usage"]["completion_tokens"])
    lp = both["choices"][0]["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == one["usage"]["completion_tokens"]
    assert "".join(lp["tokens"]) == texts[0] and lp["text_offset"][0] == 0
    seeded = post(server, "/v1/chat/completions", {"model": "tiny", "n": 2, "seed": 7, "max_tokens": 12,
                                                    "messages": [{"role": "user", "content": "Hello world! How are you today?"}]}).json()
    ids = reference["chat_ids"]([{"role": "user", "content": "Hello world! How are you today?"}])
    assert seeded["choices"][0]["message"]["content"] == reference["generate"](ids, 12, seed=7)[1]
    assert seeded["choices"][1]["message"]["content"] == reference["generate"](ids, 12, seed=8)[1]


def test_penalties_and_logit_bias_change_the_tokens_as_openai_defines(server, reference):
    req = {"model": "tiny", "prompt": "Hello", "max_tokens": 12, "temperature": 0}
    plain = post(server, "/v1/completions", req).json()
    ids = reference["tok"]("Hello")["input_ids"]
    out, _ = reference["generate"](ids, 12)
    assert len(set(out)) < len(out), "the reference output has no repeats: the penalty test proves nothing"
    penalised = post(server, "/v1/completions", {**req, "frequency_penalty": 2.0, "presence_penalty": 2.0,
                                                  "logprobs": 0}).json()
    toks = penalised["choices"][0]["logprobs"]["tokens"]
    assert penalised["choices"][0]["text"] != plain["choices"][0]["text"]
    assert len(set(toks)) > len(set(out))
    forced = out[0] + 1
    biased = post(server, "/v1/completions", {**req, "max_tokens": 3, "logit_bias": {str(forced): 100}}).json()
    assert biased["choices"][0]["text"] == reference["tok"].decode([forced] * 3, skip_special_tokens=True)


@pytest.mark.parametrize("extra, field", [
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools"),
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"tool_choice": "auto"}, "tool_choice"),
    ({"frobnicate": 1}, "frobnicate"),
    ({"stream_options": {"include_usage": True, "continuous_usage_stats": True}}, "stream_options.continuous_usage_stats"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, "messages.0.content"),
])
def test_fields_the_engine_cannot_honour_are_refused_by_name(server, extra, field):
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, **extra}
    err = _error(post(server, "/v1/chat/completions", body), 400)
    assert err["param"].startswith(field) and err["message"].startswith(field)


@pytest.mark.parametrize("extra, field", [({"echo": True}, "echo"), ({"suffix": "x"}, "suffix"),
                                          ({"best_of": 3}, "best_of"), ({"prompt": [5, 99999]}, "prompt")])
def test_completion_fields_refused_by_name(server, extra, field):
    err = _error(post(server, "/v1/completions", {"model": "tiny", "prompt": "hi", "max_tokens": 2, **extra}), 400)
    assert err["param"] == field
