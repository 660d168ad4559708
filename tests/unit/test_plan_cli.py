"""`modelyard plan`: flags, Model files, local and hf:// sources, output forms, exit codes."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from modelyard.cli import main

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "tests" / "fixtures" / "configs"
LLAMA = CONFIGS / "llama-3.1-8b.json"


def run_json(capsys, *argv) -> tuple[int, dict]:
    code = main(["plan", *argv, "-o", "json"])
    out = capsys.readouterr().out
    assert out.count("\n") == 1, "exactly one JSON object on one line"
    return code, json.loads(out)


def model_yaml(tmp_path: Path, uri: str, **spec) -> Path:
    lines = ["apiVersion: modelyard.io/v1alpha1", "kind: Model", "metadata:", "  name: m",
             "spec:", "  source:", f"    uri: {uri}"]
    lines += [f"  {k}: {v}" for k, v in spec.items()]
    path = tmp_path / "model.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_config_flag_json_fits(capsys):
    code, plan = run_json(capsys, "--config", str(LLAMA), "--gpus", "1", "--gpu-memory", "80GiB")
    assert code == 0 and plan["fits"] is True
    assert plan["parameters"] == 8_030_261_248 and plan["engine"] == "vllm"
    assert plan["maxModelLen"] == 131072


def test_does_not_fit_exits_1_with_the_smallest_change(capsys):
    code, plan = run_json(capsys, "--config", str(CONFIGS / "mixtral-8x7b-v0.1.json"),
                          "--gpus", "1", "--gpu-memory", "nvidia-h100-80gb")
    assert code == 1 and plan["fits"] is False
    assert "Smallest change that fits: gpus 2" in plan["reason"]


def test_table_output_is_aligned(capsys):
    assert main(["plan", "--config", str(LLAMA), "--gpus", "1", "--gpu-memory",
                 "nvidia-l4-24gb"]) == 0
    lines = capsys.readouterr().out.splitlines()
    values = {line[:18].strip(): line[18:] for line in lines}
    assert values["PARAMETERS"] == "8,030,261,248"
    assert values["FITS"] == "yes" and values["ENGINE"] == "vllm"
    assert all(line[16:18] == "  " and line[18] != " " for line in lines), lines


def test_model_file_with_local_source_and_flag_override(tmp_path, capsys):
    weights = tmp_path / "weights"
    weights.mkdir()
    shutil.copy(LLAMA, weights / "config.json")
    (weights / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": 20 * 10**9}, "weight_map": {}}))
    path = model_yaml(tmp_path, f"file://{weights}", gpus=1, gpuMemory="nvidia-l4-24gb",
                      precision="bfloat16")
    code, plan = run_json(capsys, "-f", str(path))
    assert plan["gpuMemoryBytes"] == 23034 * 2**20 and plan["precision"] == "bfloat16"
    assert plan["weightBytes"] == 20 * 10**9  # the index's total_size was read
    code, plan = run_json(capsys, "-f", str(path), "--precision", "int4")
    assert code == 0 and plan["quantization"] == "compressed-tensors W4A16"


def test_hf_source_reads_config_through_huggingface_hub(tmp_path, capsys, monkeypatch):
    # huggingface_hub's own cache layout, read offline (tests never contact a hub).
    repo = tmp_path / "hub" / "models--org--llama"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    shutil.copy(CONFIGS / "qwen2-0.5b.json", repo / "snapshots" / commit / "config.json")
    import huggingface_hub.constants as hf_constants  # read at import: patch the module too

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    path = model_yaml(tmp_path, "hf://org/llama", gpus=1, gpuMemory="24GB")
    code, plan = run_json(capsys, "-f", str(path))
    assert code == 0 and plan["parameters"] == 494_032_768


@pytest.mark.parametrize("argv, message", [
    ([], "pass -f model.yaml or --config config.json"),
    (["--config", "/nonexistent/config.json"], "/nonexistent/config.json not found"),
    (["--config", str(LLAMA), "--gpus", "1", "--gpu-memory", "80XB"], 'gpuMemory: "80XB"'),
])
def test_bad_input_exits_2_naming_what_to_pass(capsys, argv, message):
    assert main(["plan", *argv]) == 2
    assert message in capsys.readouterr().err


def test_model_source_without_config_says_what_to_pass(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    path = model_yaml(tmp_path, f"file://{tmp_path / 'empty'}")
    assert main(["plan", "-f", str(path)]) == 2
    err = capsys.readouterr().err
    assert "config.json not found; pass --config config.json" in err


def test_invalid_model_file_exits_2(tmp_path, capsys):
    path = model_yaml(tmp_path, "file:///x", gpus=-1)
    assert main(["plan", "-f", str(path)]) == 2
    assert "gpus" in capsys.readouterr().err


def test_bad_config_names_the_missing_key(tmp_path, capsys):
    broken = json.loads(LLAMA.read_text())
    del broken["num_hidden_layers"]
    (tmp_path / "config.json").write_text(json.dumps(broken))
    assert main(["plan", "--config", str(tmp_path / "config.json")]) == 2
    assert "config.json: missing 'num_hidden_layers'" in capsys.readouterr().err


def test_console_script(tmp_path):
    exe = Path(sys.executable).parent / "modelyard"
    done = subprocess.run([str(exe), "plan", "--config", str(CONFIGS / "gpt2.json"), "-o", "json"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    assert plan["parameters"] == 124_439_808 and plan["engine"] == "accelerate"
    assert plan["maxMemory"] and "cpu" in plan["maxMemory"]
