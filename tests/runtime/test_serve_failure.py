"""A server that cannot start says why in its termination log (the operator puts it in status)."""
from __future__ import annotations

import json
import os
import subprocess

from modelyard.runtime.tiny import make_tiny_llama
from tests.runtime.accelerate_helpers import MODELYARD, free_port, make_adapter


def test_bad_adapter_exits_with_the_reason_in_the_termination_log(tmp_path):
    base = make_tiny_llama(tmp_path / "base")
    other = make_tiny_llama(tmp_path / "other", hidden_size=128, num_attention_heads=2, num_key_value_heads=1)
    foreign = make_adapter(other, tmp_path / "foreign", seed=1)
    log = tmp_path / "termination-log"
    log.write_text("")
    proc = subprocess.run([MODELYARD, "serve", "--engine", "accelerate", "--model", str(base), "--port", str(free_port()),
                           "--adapter", f"sql={foreign}"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "MODELYARD_TERMINATION_LOG": str(log)})
    assert proc.returncode != 0
    err = json.loads(log.read_text())["error"]
    assert err["reason"] == "InvalidAdapter" and "sql" in err["message"] and "hidden_size" in err["message"]
    assert err["message"] in proc.stderr


def test_bad_adapters_file_is_named(tmp_path, capsys):
    from modelyard.cli import main

    bad = tmp_path / "adapters.json"
    bad.write_text('["sql"]')
    assert main(["serve", "--engine", "accelerate", "--model", str(tmp_path), "--adapters-file", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "--adapters-file" in err and "adapters.json" in err and "name -> folder" in err
