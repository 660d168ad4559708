"""The TP × PP × nodes layout: the planner table from real published configs."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from modelyard.planner import PlanError, plan

CONFIGS = Path(__file__).parent.parent / "fixtures" / "configs"


def cfg(name: str) -> dict:
    return json.loads((CONFIGS / f"{name}.json").read_text())


def layout(p):
    return (p.tensor_parallel_size, p.pipeline_parallel_size, p.nodes, p.gpus)


def test_405b_bf16_on_80gib_nodes_is_tp8_by_pp2_on_two_nodes():
    p = plan(cfg("llama-3.1-405b"), gpus=None, gpus_per_node=8, gpu_memory="80GiB", precision="bfloat16")
    assert p.fits and layout(p) == (8, 2, 2, 16) and p.gpus_per_node == 8
    assert p.max_model_len == 131072  # the whole context: "weights + KV for maxModelLen"
    assert p.per_gpu_bytes <= 0.9 * 80 * 2**30
    assert "TP 8 × PP 2 on 2 nodes × 8 GPUs" in p.layout and "126 layers in stages of 63" in p.layout
    assert "the fewest nodes, then the fewest GPUs" in p.layout


def test_70b_bf16_stays_on_one_node_with_the_tp_the_kv_budget_needs():
    on_80 = plan(cfg("llama-3.1-70b"), gpus=None, gpus_per_node=8, gpu_memory="80GiB")
    assert on_80.fits and layout(on_80) == (4, 1, 1, 4)  # TP 2 holds the weights, not 128k tokens of KV
    on_48 = plan(cfg("llama-3.1-70b"), gpus=None, gpus_per_node=8, gpu_memory="nvidia-l40s-48gb")
    assert on_48.fits and layout(on_48) == (8, 1, 1, 8)
    short = plan(cfg("llama-3.1-70b"), gpus=None, gpus_per_node=8, gpu_memory="80GiB", max_model_len=8192)
    assert layout(short) == (2, 1, 1, 2)  # a shorter context needs less KV: fewer GPUs


def test_8b_is_tp1():
    p = plan(cfg("llama-3.1-8b"), gpus=None, gpus_per_node=8, gpu_memory="80GiB")
    assert p.fits and layout(p) == (1, 1, 1, 1) and p.engine == "vllm"


def test_deepseek_v3_fp8_one_h200_node_or_two_80gib_nodes_split_unevenly():
    h200 = plan(cfg("deepseek-v3"), gpus=None, gpus_per_node=8, gpu_memory="nvidia-h200-141gb")
    assert h200.fits and layout(h200) == (8, 1, 1, 8) and h200.max_model_len == 163840
    assert h200.precision == "fp8" and h200.quantization == "fp8 block 128x128"  # the checkpoint's own scheme
    h100 = plan(cfg("deepseek-v3"), gpus=None, gpus_per_node=8, gpu_memory="80GiB")
    assert h100.fits and layout(h100) == (8, 2, 2, 16)
    # 61 layers: no even split; vLLM's default partition gives 31 + 30 and the planner sizes the 31
    assert "no split of the 61 layers is even" in h100.layout and "(31 layers)" in h100.layout


def test_a_model_that_fits_nowhere_says_how_many_nodes_it_would_need():
    p = plan(cfg("llama-3.1-405b"), gpus=None, gpus_per_node=2, gpu_memory="nvidia-t4-16gb")
    assert not p.fits
    assert p.reason.startswith("does not fit on up to 16 nodes of 2 GPUs")
    assert f"It would need {p.nodes} nodes" in p.reason and p.nodes > 16


def test_explicit_gpus_over_a_node_span_nodes_and_explicit_nodes_are_honoured():
    p = plan(cfg("llama-3.1-405b"), gpus=16, gpu_memory="80GiB", gpus_per_node=8)
    assert p.fits and layout(p) == (8, 2, 2, 16)
    four = plan(cfg("llama-3.1-405b"), gpus=16, nodes=4, gpu_memory="80GiB", gpus_per_node=8)
    assert layout(four) == (4, 4, 4, 16) and four.gpus_per_node == 4
    with pytest.raises(PlanError, match=r"gpus: 12 GPUs cannot be spread evenly over 5 nodes"):
        plan(cfg("llama-3.1-405b"), gpus=12, nodes=5, gpu_memory="80GiB")
    with pytest.raises(PlanError, match=r"nodes: 16 GPUs on 1 nodes is 16 per node, more than gpusPerNode 8"):
        plan(cfg("llama-3.1-405b"), gpus=16, nodes=1, gpu_memory="80GiB")
    with pytest.raises(PlanError, match=r"^gpusPerNode: 0 must be a whole number from 1 to 64"):
        plan(cfg("llama-3.1-8b"), gpus=None, gpus_per_node=0)
    with pytest.raises(PlanError, match=r"^engine: accelerate serves on one node only"):
        plan(cfg("llama-3.1-8b"), gpus=16, engine="accelerate")


def test_one_node_plans_are_unchanged_and_a_too_small_one_points_across_nodes():
    assert layout(plan(cfg("llama-3.1-8b"), gpus=2, gpu_memory="80GiB")) == (2, 1, 1, 2)
    p = plan(cfg("llama-3.1-405b"), gpus=8, gpu_memory="80GiB", precision="bfloat16")
    assert not p.fits and "Across nodes of 8 GPUs: gpus 16 (TP 8 × PP 2 on 2 nodes)" in p.reason


def test_accelerate_searches_one_node_only():
    p = plan(cfg("llama-3.1-405b"), gpus=None, gpus_per_node=8, gpu_memory="80GiB", engine="accelerate")
    assert p.engine == "accelerate" and p.nodes == 1 and p.pipeline_parallel_size == 1


def test_cpu_pipeline_over_two_nodes():
    p = plan(cfg("llama-3.1-8b"), gpus=0, nodes=2, precision="bfloat16", memory="32Gi")
    assert p.fits and p.engine == "vllm" and layout(p) == (1, 2, 2, 0)
    # each node holds half the layers: less host memory than the whole model on one
    whole = plan(cfg("llama-3.1-8b"), gpus=0, precision="bfloat16", engine="vllm", memory="32Gi")
    assert p.host_bytes < whole.host_bytes


def test_cli_gpus_per_node_adds_pipeline_parallel_size_and_nodes():
    out = subprocess.run([sys.executable, "-m", "modelyard", "plan", "--config", str(CONFIGS / "llama-3.1-405b.json"),
                          "--gpu-memory", "80GiB", "--gpus-per-node", "8", "-o", "json"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert (data["tensorParallelSize"], data["pipelineParallelSize"], data["nodes"], data["gpus"]) == (8, 2, 2, 16)
    table = subprocess.run([sys.executable, "-m", "modelyard", "plan", "--config", str(CONFIGS / "llama-3.1-405b.json"),
                            "--gpu-memory", "80GiB", "--gpus", "16", "--nodes", "3"], capture_output=True, text=True)
    assert table.returncode == 2 and "gpus: 16 GPUs cannot be spread evenly over 3 nodes" in table.stderr
