"""`modelyard convert` refuses unsafe and broken inputs with messages naming the file and the problem."""
from __future__ import annotations

import json
import pathlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from modelyard.runtime.convert import Request, convert
from modelyard.runtime.convert.testing import copy_side_files, state_dict, write_gguf
from modelyard.runtime.errors import ConvertError
from modelyard.runtime.tiny import make_tiny_llama


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("tiny") / "model", num_hidden_layers=1)


class Payload:
    """Unpickling this creates ``marker``: the classic code-execution pickle."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def refused(req: Request, reason: str) -> ConvertError:
    with pytest.raises(ConvertError) as info:
        convert(req)
    assert info.value.reason == reason, info.value.message
    assert not Path(req.output).exists()
    return info.value


def test_malicious_pickle_is_refused_and_its_code_never_runs(tiny, tmp_path):
    src = tmp_path / "evil"
    copy_side_files(tiny, src)
    marker = tmp_path / "PWNED"
    torch.save({"model.embed_tokens.weight": torch.zeros(2), "x": Payload(str(marker))}, src / "pytorch_model.bin")
    err = refused(Request(input=src, output=tmp_path / "out"), "UnsafePickle")
    assert "pytorch_model.bin" in err.message and "torch.save(model.state_dict(), path)" in err.message
    assert not marker.exists()
    # The same bytes DO run code under a plain unpickler: the test's payload is live.
    live = tmp_path / "live.bin"
    torch.save({"x": Payload(str(tmp_path / "LIVE"))}, live)
    code = f"import torch; torch.load({str(live)!r}, weights_only=False)"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parent, env={"PYTHONPATH": str(Path(__file__).parents[2])})
    assert (tmp_path / "LIVE").exists()


def test_whole_pickled_module_is_refused_with_how_to_resave(tiny, tmp_path):
    from transformers import AutoModelForCausalLM

    src = tmp_path / "module"
    copy_side_files(tiny, src)
    torch.save(AutoModelForCausalLM.from_pretrained(str(tiny)), src / "model.pt")
    err = refused(Request(input=src / "model.pt", output=tmp_path / "out"), "UnsafePickle")
    assert "model.pt" in err.message and "state_dict" in err.message


def test_truncated_safetensors_names_the_file(tiny, tmp_path):
    src = tmp_path / "trunc"
    copy_side_files(tiny, src)
    data = (tiny / "model.safetensors").read_bytes()
    (src / "model.safetensors").write_bytes(data[: len(data) // 2])
    err = refused(Request(input=src, output=tmp_path / "out", precision="bfloat16"), "CorruptFile")
    assert "model.safetensors" in err.message and "truncated" in err.message


def test_shapes_that_disagree_with_config(tiny, tmp_path):
    src = tmp_path / "shapes"
    copy_side_files(tiny, src)
    weights = state_dict(tiny)
    weights["model.layers.0.mlp.up_proj.weight"] = torch.zeros(100, 256)
    torch.save(weights, src / "pytorch_model.bin")
    err = refused(Request(input=src, output=tmp_path / "out"), "ShapeMismatch")
    assert "model.layers.0.mlp.up_proj.weight is [100, 256] but config.json implies [512, 256]" in err.message


def test_missing_and_unexpected_tensor_names_are_listed(tiny, tmp_path):
    src = tmp_path / "names"
    copy_side_files(tiny, src)
    weights = state_dict(tiny)
    weights["model.extra.weight"] = weights.pop("model.norm.weight")
    torch.save(weights, src / "pytorch_model.bin")
    err = refused(Request(input=src, output=tmp_path / "out"), "TensorNamesMismatch")
    assert "missing 1: model.norm.weight" in err.message and "unexpected 1: model.extra.weight" in err.message


def test_missing_shard_named_in_index(tiny, tmp_path):
    src = tmp_path / "index"
    copy_side_files(tiny, src)
    weights = state_dict(tiny)
    torch.save(weights, src / "pytorch_model-00001-of-00002.bin")
    index = {"weight_map": {k: f"pytorch_model-0000{1 + (i % 2)}-of-00002.bin" for i, k in enumerate(weights)}}
    (src / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    err = refused(Request(input=src, output=tmp_path / "out"), "MissingShard")
    assert "pytorch_model-00002-of-00002.bin" in err.message and "pytorch_model.bin.index.json" in err.message


def test_corrupted_gguf(tiny, tmp_path):
    src = tmp_path / "gguf"
    src.mkdir()
    write_gguf(tiny, src / "m.gguf")
    data = (src / "m.gguf").read_bytes()
    (src / "m.gguf").write_bytes(data[:4] + b"\xff" * 64 + data[68:2000])
    err = refused(Request(input=src, output=tmp_path / "out"), "CorruptFile")
    assert "m.gguf" in err.message


@pytest.mark.parametrize("name,content", [("model.t7", b"\x04\x00\x00\x00torch"), ("weights.h5", b"\x89HDF\r\n")])
def test_unsupported_formats_list_what_is_supported(tmp_path, name, content):
    src = tmp_path / "in"
    src.mkdir()
    (src / name).write_bytes(content)
    for inp in (src, src / name):
        err = refused(Request(input=inp, output=tmp_path / "out"), "UnsupportedFormat")
        assert "safetensors" in err.message and "GGUF" in err.message and "TorchScript" in err.message
    if name.endswith(".t7"):
        assert "Lua Torch" in err.message


def test_format_mismatch_and_missing_input(tiny, tmp_path):
    err = refused(Request(input=tiny, output=tmp_path / "out", format="gguf"), "FormatMismatch")
    assert "safetensors" in err.message
    refused(Request(input=tmp_path / "nope", output=tmp_path / "out"), "InputNotFound")


def test_cli_failure_writes_termination_message(tmp_path):
    log = tmp_path / "termination-log"
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "x.t7").write_bytes(b"\x04\x00")
    proc = subprocess.run(
        [sys.executable, "-m", "modelyard", "convert", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "o"),
         "--termination-log", str(log)],
        capture_output=True, text=True, cwd=Path(__file__).parents[2],
    )
    assert proc.returncode == 1
    assert "UnsupportedFormat" in proc.stderr
    msg = json.loads(log.read_text())
    assert msg["error"]["reason"] == "UnsupportedFormat" and "x.t7" in msg["error"]["message"]
    assert len(log.read_bytes()) <= 4096
