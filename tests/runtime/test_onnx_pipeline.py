"""ONNX end to end beyond one server: `modelyard up` on a `format: onnx` folder (no convert step),
an int4 export that passes its gate and serves, the parity gate catching a drifted export, and
the serve step refusing an incomplete folder or a LoRA adapter with the reason."""
from __future__ import annotations

import json
import shutil
import subprocess

import httpx
import pytest

from modelyard.runtime.errors import ConvertError
from tests.runtime.accelerate_helpers import MODELYARD, Server
from tests.runtime.onnx_helpers import export, make_llama
from tests.runtime.test_up import Up

ONNX_YAML = """\
apiVersion: modelyard.io/v1alpha1
kind: Model
metadata:
  name: tiny-onnx
spec:
  source:
    uri: file://./models/tiny-onnx
  format: onnx
  gpus: 0
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("onnx-up")
    src = make_llama(root / "src")
    result = export(src, root / "models" / "tiny-onnx")
    assert result["_rc"] == 0, result["_stderr"]
    (root / "deploy").mkdir()
    (root / "deploy" / "tiny.yaml").write_text(ONNX_YAML)
    return root


def test_up_serves_an_onnx_folder_as_it_is(project, tmp_path):
    up = Up(project, "deploy/tiny.yaml", tmp_path / "work")
    try:
        up.wait_healthy(300)
        r = httpx.post(f"http://127.0.0.1:{up.port}/v1/chat/completions", timeout=60,
                       json={"model": "tiny-onnx", "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 8})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 8
        assert "[convert] not needed" in up.output and "--engine onnxruntime" in up.output
    finally:
        code, _ = up.interrupt()
    assert code == 0


def test_int4_export_passes_its_gate_and_serves(project, tmp_path):
    out = tmp_path / "int4"
    result = export(project / "src", out, "--precision", "int4")
    assert result["_rc"] == 0, result["_stderr"]
    parity = json.loads((out / "modelyard-provenance.json").read_text())["parity"]
    assert parity["float32Twin"]["exact"] == 4 and parity["agreement"] >= 0.2
    assert (out / "model.onnx.data").stat().st_size < 0.4 * (project / "models" / "tiny-onnx" / "model.onnx.data").stat().st_size
    server = Server(["--engine", "onnxruntime", "--model", str(out), "--served-model-name", "m"], tmp_path / "s.log")
    try:
        server.wait_healthy(300)
        r = httpx.post(f"{server.url}/v1/completions", json={"model": "m", "prompt": "Hello", "max_tokens": 16,
                                                              "temperature": 0}, timeout=60)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 16
    finally:
        server.stop()


def test_the_parity_gate_fails_a_drifted_export(project, tmp_path):
    from modelyard.runtime.convert import onnx_parity

    other = make_llama(tmp_path / "other", seed=9)  # same shapes, other weights: the export "drifted"
    with pytest.raises(ConvertError) as err:
        onnx_parity.gate(other, project / "models" / "tiny-onnx", "float32", log=lambda m: None)
    assert err.value.reason == "ParityFailed" and "differ from position" in err.value.message


def test_serve_refuses_an_incomplete_folder_and_adapters(project, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(project / "models" / "tiny-onnx", broken)
    (broken / "model.onnx.data").unlink()
    r = subprocess.run([MODELYARD, "serve", "--engine", "onnxruntime", "--model", str(broken)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "model.onnx.data" in r.stderr and "missing" in r.stderr
    r = subprocess.run([MODELYARD, "serve", "--engine", "onnxruntime", "--model", str(project / "models" / "tiny-onnx"),
                        "--adapter", f"sql={tmp_path}"], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "merge" in r.stderr
    r = subprocess.run([MODELYARD, "convert", "--input", str(project / "models" / "tiny-onnx"), "--output",
                        str(tmp_path / "x"), "--engine", "onnxruntime"], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "AlreadyOnnx" in r.stderr


def test_a_lora_adapter_is_merged_at_export(project, tmp_path):
    """LoRA on this engine means merged at export: the export follows the adapter, not the base."""
    from tests.runtime.accelerate_helpers import make_adapter

    adapter = make_adapter(project / "src", tmp_path / "lora", seed=5)
    out = tmp_path / "merged"
    result = export(project / "src", out, "--merge-adapter", str(adapter))
    assert result["_rc"] == 0, result["_stderr"]
    record = json.loads((out / "modelyard-provenance.json").read_text())
    assert record["recipe"]["adapters"] and record["parity"]["exact"] == 4  # held to the merged model
    assert not (out / ".hf").exists()
    base = out.parent / "base-server.log"
    texts = []
    for folder, log in ((out, tmp_path / "m.log"), (project / "models" / "tiny-onnx", base)):
        server = Server(["--engine", "onnxruntime", "--model", str(folder), "--served-model-name", "m"], log)
        try:
            server.wait_healthy(300)
            r = httpx.post(f"{server.url}/v1/completions", json={"model": "m", "prompt": "Hello world",
                                                                  "max_tokens": 24, "temperature": 0}, timeout=60)
            texts.append(r.json()["choices"][0]["text"])
        finally:
            server.stop()
    assert texts[0] != texts[1], "the merged adapter changed nothing"
