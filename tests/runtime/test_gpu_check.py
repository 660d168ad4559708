"""`make gpu-check` (scripts/gpu_check.py) on a machine where no GPU may be used: it builds its
real-size model locally (no network) and stops at its first GPU step, saying it needs a GPU.
CUDA_VISIBLE_DEVICES="" hides any GPU, so this means the same on a GPU machine."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.runtime.accelerate_helpers import CPU_ONLY
from tests.runtime.vllm_server import ROOT


def test_gpu_check_prepares_its_model_then_says_it_needs_a_gpu(tmp_path):
    out = tmp_path / "gpu-check.md"
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--work", str(tmp_path),
                           "--python", sys.executable, "--out", str(out)],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, **CPU_ONLY, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 3, done.stdout + done.stderr
    assert "made Qwen2ForCausalLM with 0.49 B parameters" in done.stdout
    assert "this check needs an NVIDIA GPU and none is visible" in done.stdout
    assert "nothing was measured" in done.stdout and not out.exists()
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert (config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]) == (896, 24, 151936)
    assert sum(f.stat().st_size for f in (tmp_path / "model").glob("*.safetensors")) > 0.9e9  # bfloat16
