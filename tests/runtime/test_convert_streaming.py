"""Streaming: a cast's peak memory stays near one shard, and a killed run never looks finished."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from modelyard.runtime.convert.provenance import NAME as PROVENANCE

ROOT = Path(__file__).parents[2]
CONFIG = dict(
    architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=4096, hidden_size=1024, intermediate_size=2048,
    num_hidden_layers=6, num_attention_heads=16, num_key_value_heads=4, head_dim=64, max_position_embeddings=512,
    rms_norm_eps=1e-5, tie_word_embeddings=False, dtype="float32",
)
SHARD = 20_000_000

MEASURE = """
import json, sys
from pathlib import Path
from modelyard.runtime.convert import Request, convert
from modelyard.runtime.tiny import make_tiny_llama
def status(key):
    for line in open('/proc/self/status'):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
out = Path(sys.argv[2])
# Warm up (imports, lazily built modules) on a tiny model, then reset the high-water mark.
convert(Request(input=make_tiny_llama(out.parent / 'tiny'), output=out.parent / 'warm', precision='bfloat16'))
open('/proc/self/clear_refs', 'w').write('5')
base = status('VmRSS:')
convert(Request(input=Path(sys.argv[1]), output=out, precision='bfloat16', max_shard_bytes=50_000_000))
print(json.dumps({'base': base, 'peak': status('VmHWM:')}))
"""


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> tuple[Path, int]:
    """A ~240 MB float32 Llama in 20 MB safetensors shards, written tensor by tensor."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, LlamaConfig

    src = tmp_path_factory.mktemp("big") / "model"
    src.mkdir()
    (src / "config.json").write_text(json.dumps(CONFIG))
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in AutoModelForCausalLM.from_config(LlamaConfig(**CONFIG)).state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    shards, cur, size = [], {}, 0
    for name, shape in shapes.items():
        t = torch.randn(shape, generator=gen) * 0.02
        if cur and size + t.nbytes > SHARD:
            shards.append(cur)
            cur, size = {}, 0
        cur[name], size = t, size + t.nbytes
    shards.append(cur)
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(src / fname), metadata={"format": "pt"})
        weight_map.update({k: fname for k in shard})
    total = sum(t.nbytes for s in shards for t in s.values())
    (src / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    return src, total


def test_cast_peak_memory_stays_near_one_shard(big, tmp_path):
    src, total = big
    assert total > 200_000_000
    out = tmp_path / "bf16"
    proc = subprocess.run([sys.executable, "-c", MEASURE, str(src), str(out)], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    mem = json.loads(proc.stdout.strip().splitlines()[-1])
    grown = mem["peak"] - mem["base"]
    assert grown < 0.3 * total, f"peak RSS grew by {grown / 1e6:.0f} MB converting a {total / 1e6:.0f} MB model"
    with safe_open(str(out / "model-00001-of-00003.safetensors"), "pt") as f:
        name = next(iter(f.keys()))
        assert f.get_tensor(name).dtype == torch.bfloat16
    with safe_open(str(sorted(src.glob("model-*.safetensors"))[0]), "pt") as f:
        original = f.get_tensor(name)
    with safe_open(str(out / "model-00001-of-00003.safetensors"), "pt") as f:
        assert torch.equal(f.get_tensor(name), original.to(torch.bfloat16))


def test_killed_run_leaves_nothing_that_looks_finished_and_rerun_succeeds(big, tmp_path):
    src, _ = big
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "modelyard", "convert", "--input", str(src), "--output", str(out), "--precision", "float16"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob("out.partial-*")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    proc.kill()
    proc.wait(timeout=30)
    assert list(tmp_path.glob("out.partial-*")), "the run finished before it could be interrupted"
    assert not out.exists()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / PROVENANCE).is_file()
    assert not list(tmp_path.glob("out.partial-*")), "the stale partial folder of the killed run was not cleaned up"
