"""`modelyard convert`: every input format round-trips into safetensors with the same tensors."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from modelyard.runtime.convert import Request, convert
from modelyard.runtime.convert.provenance import NAME as PROVENANCE, sha256
from modelyard.runtime.convert.testing import copy_side_files, save_sharded_bin, state_dict, write_gguf
from modelyard.runtime.tiny import make_tiny_llama


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def weights(tiny) -> dict[str, torch.Tensor]:
    return state_dict(tiny)


def assert_same(out: Path, weights: dict, atol: float = 0.0) -> None:
    got = state_dict(out)
    assert set(got) == set(weights)
    for k, v in weights.items():
        assert got[k].shape == v.shape, k
        assert torch.allclose(got[k].float(), v.float(), atol=atol, rtol=0), k


def test_pytorch_bin_round_trip_with_provenance_and_idempotent_rerun(tiny, weights, tmp_path, capsys):
    src = tmp_path / "bin"
    copy_side_files(tiny, src)
    torch.save(weights, src / "pytorch_model.bin")
    out = tmp_path / "out"
    result = convert(Request(input=src, output=out))
    assert_same(out, weights)
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (out / name).is_file(), name
    prov = json.loads((out / PROVENANCE).read_text())
    assert prov["input"]["format"] == "pytorch"
    assert prov["input"]["files"] == [{"name": "pytorch_model.bin", "bytes": (src / "pytorch_model.bin").stat().st_size,
                                       "sha256": sha256(src / "pytorch_model.bin")}]
    assert prov["recipe"]["precision"] == "auto"
    assert {"modelyard", "torch", "transformers", "safetensors"} <= set(prov["tools"])
    assert result["files"] == len(list(out.iterdir())) and result["bytes"] > 6_000_000
    mtime = (out / "model.safetensors").stat().st_mtime_ns
    again = convert(Request(input=src, output=out))
    assert again.get("skipped") is True and "already converted" in capsys.readouterr().err
    assert (out / "model.safetensors").stat().st_mtime_ns == mtime


def test_sharded_bin_in_sharded_safetensors_out(tiny, weights, tmp_path):
    src = tmp_path / "sharded"
    copy_side_files(tiny, src)
    save_sharded_bin(weights, src, shard_bytes=1_500_000)
    assert len(list(src.glob("pytorch_model-*.bin"))) >= 3
    out = tmp_path / "out"
    convert(Request(input=src, output=out, max_shard_bytes=2_000_000))
    assert_same(out, weights)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(out.glob("model-*-of-*.safetensors"))
    assert len(shards) >= 3 and set(index["weight_map"].values()) == {p.name for p in shards}
    assert all(p.stat().st_size <= 2_000_000 + 64_000 for p in shards)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(out))
    assert torch.equal(model.lm_head.weight, weights["lm_head.weight"])


def test_pt_state_dict_under_wrapper_key_and_ddp_prefix(tiny, weights, tmp_path):
    src = tmp_path / "pt"
    copy_side_files(tiny, src)
    torch.save({"epoch": 3, "state_dict": {"module." + k: v for k, v in weights.items()}}, src / "checkpoint.pth")
    out = tmp_path / "out"
    convert(Request(input=src / "checkpoint.pth", output=out, config=tiny / "config.json"))
    assert_same(out, weights)


def test_torchscript_archive_mapped_onto_hf_names(tiny, weights, tmp_path):
    from transformers import AutoModelForCausalLM

    class Wrapper(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, ids):
            return self.m(input_ids=ids, use_cache=False, return_dict=False)[0]

    model = AutoModelForCausalLM.from_pretrained(str(tiny)).eval()
    with torch.no_grad():
        traced = torch.jit.trace(Wrapper(model), (torch.tensor([[1, 2, 3]]),), strict=False, check_trace=False)
    traced.save(str(tmp_path / "model.pt"))
    out = tmp_path / "out"
    convert(Request(input=tmp_path / "model.pt", output=out, config=tiny / "config.json"))
    assert_same(out, weights)
    assert json.loads((out / PROVENANCE).read_text())["input"]["format"] == "torchscript"


def test_gguf_f32_exact_and_q8_0_close(tiny, weights, tmp_path):
    from transformers import AutoTokenizer

    for qtype, atol in (("F32", 0.0), ("Q8_0", 2e-3)):
        src = tmp_path / qtype
        src.mkdir()
        write_gguf(tiny, src / "model.gguf", qtype)
        out = tmp_path / f"out-{qtype}"
        convert(Request(input=src, output=out))
        assert_same(out, weights, atol=atol)
        cfg = json.loads((out / "config.json").read_text())
        assert cfg["model_type"] == "llama" and "quantization_config" not in cfg
        text = "Hello world! The operator downloads weights."
        got, want = AutoTokenizer.from_pretrained(str(out)), AutoTokenizer.from_pretrained(str(tiny))
        assert got(text)["input_ids"] == want(text)["input_ids"]
        assert (got.bos_token, got.eos_token, got.pad_token) == (want.bos_token, want.eos_token, want.pad_token)
        chat = [{"role": "user", "content": "hi"}]
        assert got.apply_chat_template(chat, tokenize=False) == want.apply_chat_template(chat, tokenize=False)


def test_cast_writes_requested_dtype_in_headers_and_config(tiny, tmp_path):
    from transformers import AutoModelForCausalLM

    for precision, code in (("bfloat16", "BF16"), ("float16", "F16")):
        out = tmp_path / precision
        convert(Request(input=tiny, output=out, precision=precision))
        with open(out / "model.safetensors", "rb") as f:
            header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
        assert {v["dtype"] for k, v in header.items() if k != "__metadata__"} == {code}
        assert json.loads((out / "config.json").read_text())["dtype"] == precision
        assert AutoModelForCausalLM.from_pretrained(str(out)).dtype == getattr(torch, precision)


def test_safetensors_passed_through_without_rewrite(tiny, tmp_path):
    out = tmp_path / "out"
    convert(Request(input=tiny, output=out))
    assert os.path.samefile(out / "model.safetensors", tiny / "model.safetensors") or (
        (out / "model.safetensors").read_bytes() == (tiny / "model.safetensors").read_bytes()
    )
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert "model.embed_tokens.weight" in f.keys()


def test_failed_verify_leaves_no_output_and_rerun_succeeds(tiny, weights, tmp_path, monkeypatch):
    from modelyard.runtime.convert import pipeline
    from modelyard.runtime.errors import ConvertError

    src = tmp_path / "bin"
    copy_side_files(tiny, src)
    torch.save(weights, src / "pytorch_model.bin")
    out = tmp_path / "out"

    def broken(folder, expected):
        raise ConvertError("VerifyFailed", "forced")

    monkeypatch.setattr(pipeline, "verify", broken)
    with pytest.raises(ConvertError, match="forced"):
        convert(Request(input=src, output=out))
    assert not out.exists()
    assert not list(tmp_path.glob("out.partial-*"))
    monkeypatch.undo()
    convert(Request(input=src, output=out))
    assert (out / PROVENANCE).is_file()
    assert_same(out, weights)


def test_cli_termination_log_on_success(tiny, tmp_path):
    from modelyard.cli import main

    log = tmp_path / "termination-log"
    assert main(["convert", "--input", str(tiny), "--output", str(tmp_path / "o"), "--precision", "float16",
                 "--termination-log", str(log)]) == 0
    msg = json.loads(log.read_text())
    assert msg["output"] == str(tmp_path / "o") and msg["recipe"]["precision"] == "float16"
    assert msg["files"] >= 4 and msg["bytes"] > 3_000_000
    shutil.rmtree(tmp_path / "o")


def test_legacy_non_zip_bin_and_download_manifest_checksums(tiny, weights, tmp_path):
    src = tmp_path / "legacy"
    copy_side_files(tiny, src)
    torch.save(weights, src / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    digest = sha256(src / "pytorch_model.bin")
    manifest = {"files": [{"path": "pytorch_model.bin", "size": (src / "pytorch_model.bin").stat().st_size, "sha256": digest}]}
    (src / "modelyard-manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "out"
    convert(Request(input=src, output=out))
    assert_same(out, weights)
    files = json.loads((out / PROVENANCE).read_text())["input"]["files"]
    assert files == [{"name": "pytorch_model.bin", "bytes": manifest["files"][0]["size"], "sha256": digest,
                      "sha256From": "modelyard-manifest.json"}]
    assert not (out / "modelyard-manifest.json").exists()


def test_bin_bytes_copied_in_kernel_or_written_when_the_filesystem_refuses(tiny, weights, tmp_path, monkeypatch):
    import errno

    src = tmp_path / "bin"
    copy_side_files(tiny, src)
    torch.save(weights, src / "pytorch_model.bin")
    calls = []
    real = os.copy_file_range

    def counting(*args):
        calls.append(args[2])
        return real(*args)

    monkeypatch.setattr(os, "copy_file_range", counting)
    convert(Request(input=src, output=tmp_path / "kernel"))
    assert_same(tmp_path / "kernel", weights)
    assert sum(calls) >= sum(v.nbytes for v in weights.values())  # every tensor went through the in-kernel copy

    def refuse(*args):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "copy_file_range", refuse)
    convert(Request(input=src, output=tmp_path / "written"))
    assert_same(tmp_path / "written", weights)
