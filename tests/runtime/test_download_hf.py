"""`modelyard download` from hf:// against a real Hub mirror (olah serving local git repos),
plus the CLI end to end: progress JSON lines, termination log, plan before download."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from modelyard.runtime.download import MANIFEST, Request, download
from modelyard.runtime.errors import DownloadError
from modelyard.runtime.tiny import make_tiny_llama
from tests.runtime.servers import commit_folder, git, start_olah, store_in_lfs

MODELYARD = Path(sys.executable).parent / "modelyard"
BIG_LLAMA = dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
                 num_key_value_heads=8, vocab_size=128256, head_dim=128, max_position_embeddings=8192)


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    work = tmp_path_factory.mktemp("olah")
    with start_olah(work) as server:
        repo = server.repo_dir("acme/tiny")
        make_tiny_llama(repo)
        server.v1 = commit_folder(repo, "tiny llama")
        git(repo, "tag", "v1")
        git(repo, "checkout", "-q", "-b", "dev")
        (repo / "NOTES.md").write_text("dev branch only\n")
        server.dev = commit_folder(repo, "notes")
        git(repo, "checkout", "-q", "main")
        (repo / "README.md").write_text("# tiny\n")
        server.main = commit_folder(repo, "readme")
        big = server.repo_dir("acme/big-config")
        make_tiny_llama(big)
        cfg = json.loads((big / "config.json").read_text())
        (big / "config.json").write_text(json.dumps({**cfg, **BIG_LLAMA}))
        commit_folder(big, "a 70B config over tiny weights")
        yield server


@pytest.fixture
def env(hub, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def _run(dest: Path, revision=None, uri="hf://acme/tiny", **kw):
    kw.setdefault("plan_args", None)
    return download(Request(source=uri, dest=dest, revision=revision, **kw), stream=io.StringIO())


@pytest.mark.parametrize("rev,expect", [(None, "main"), ("v1", "v1"), ("dev", "dev"), ("FULL", "v1")])
def test_branch_tag_and_commit(env, hub, tmp_path, rev, expect):
    revision = hub.v1 if rev == "FULL" else rev
    result = _run(tmp_path / "out", revision)
    assert result.resolved_revision == {"main": hub.main, "v1": hub.v1, "dev": hub.dev}[expect]
    out = tmp_path / "out"
    assert (out / "model.safetensors").read_bytes() == (hub.repo_dir("acme/tiny") / "model.safetensors").read_bytes()
    assert (out / "README.md").exists() == (expect == "main")
    assert (out / "NOTES.md").exists() == (expect == "dev")
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["resolvedRevision"] == result.resolved_revision
    assert all(f["size"] == (out / f["path"]).stat().st_size for f in manifest["files"])
    assert not (out / ".partial").exists()


def test_include_patterns(env, tmp_path):
    result = _run(tmp_path / "out", include=["*.json"])
    names = sorted(f.path for f in result.files)
    assert "config.json" in names and "tokenizer.json" in names
    assert not (tmp_path / "out/model.safetensors").exists()


def test_missing_repository(env, tmp_path):
    with pytest.raises(DownloadError) as err:
        _run(tmp_path / "out", uri="hf://acme/nope")
    assert err.value.reason == "RepositoryNotFound" and "acme/nope" in err.value.message


def test_missing_revision(env, tmp_path):
    with pytest.raises(DownloadError) as err:
        _run(tmp_path / "out", revision="no-such-branch")
    assert err.value.reason == "RevisionNotFound" and "no-such-branch" in err.value.message


def test_second_run_transfers_nothing(env, hub, tmp_path):
    _run(tmp_path / "out")
    asked = hub.file_requests("acme/tiny", "model.safetensors")
    result = _run(tmp_path / "out")
    assert result.already
    assert hub.file_requests("acme/tiny", "model.safetensors") == asked


def _cli(args: list[str], hub, tmp_path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    env.pop("HF_TOKEN", None)
    return subprocess.run([str(MODELYARD), "download", *args], env=env, capture_output=True, text=True, timeout=120)


def test_cli_progress_lines_and_termination_log(hub, tmp_path):
    term = tmp_path / "termination-log"
    proc = _cli(["--source", "hf://acme/tiny", "--revision", "v1", "--dest", str(tmp_path / "out"),
                 "--termination-log", str(term), "--plan-gpus", "0"], hub, tmp_path)
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    progress = [e for e in events if e["event"] == "progress"]
    assert progress and progress[-1]["done"] is True
    total = sum(p.stat().st_size for p in (tmp_path / "out").iterdir() if p.name != MANIFEST)
    assert progress[-1]["bytesDone"] == progress[-1]["bytesTotal"] == total
    assert {"bytesPerSecond", "etaSeconds", "step"} <= set(progress[-1])
    message = json.loads(term.read_text())
    assert message["resolvedRevision"] == hub.v1 and message["bytes"] == total
    assert message["plan"]["fits"] is True and message["files"] == len(list((tmp_path / "out").iterdir())) - 1
    assert message["format"] == "safetensors"  # tells the operator no convert step is needed


def test_cli_plan_does_not_fit_downloads_no_weights(hub, tmp_path):
    term = tmp_path / "termination-log"
    before = hub.file_requests("acme/big-config", "model.safetensors")
    proc = _cli(["--source", "hf://acme/big-config", "--dest", str(tmp_path / "out"), "--termination-log", str(term),
                 "--plan-gpus", "1", "--plan-gpu-memory", "1GiB", "--plan-precision", "bfloat16"], hub, tmp_path)
    assert proc.returncode == 3, proc.stderr
    message = json.loads(term.read_text())
    assert message["error"]["reason"] == "DoesNotFit" and message["plan"]["fits"] is False
    assert message["plan"]["parameters"] > 60_000_000_000 and len(term.read_bytes()) <= 4096
    on_disk = {p.name for p in (tmp_path / "out").rglob("*") if p.is_file()} - {".gitignore", "CACHEDIR.TAG"}
    assert "model.safetensors" not in {n.removesuffix(".incomplete") for n in on_disk}
    assert "config.json" in on_disk and not (tmp_path / "out" / MANIFEST).exists()
    assert hub.file_requests("acme/big-config", "model.safetensors") == before
    # --no-enforce-plan downloads anyway and records the plan
    proc = _cli(["--source", "hf://acme/big-config", "--dest", str(tmp_path / "out"), "--termination-log", str(term),
                 "--plan-gpus", "1", "--plan-gpu-memory", "1GiB", "--no-enforce-plan"], hub, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(term.read_text())["plan"]["fits"] is False
    assert (tmp_path / "out/model.safetensors").exists()


def _lfs_repo(hub, name: str) -> tuple[Path, dict]:
    repo = hub.repo_dir(name)
    make_tiny_llama(repo)
    original = (repo / "model.safetensors").read_bytes()
    shas = store_in_lfs(repo, "model.safetensors")
    commit_folder(repo, "weights in LFS")
    return repo, {"sha256": shas["model.safetensors"], "bytes": original}


def test_lfs_sha256_the_hub_publishes_is_verified_and_recorded(env, hub, tmp_path):
    _, lfs = _lfs_repo(hub, "acme/lfs")
    _run(tmp_path / "out", uri="hf://acme/lfs")
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == lfs["bytes"]
    files = {f["path"]: f for f in json.loads((tmp_path / "out" / MANIFEST).read_text())["files"]}
    assert files["model.safetensors"]["sha256"] == lfs["sha256"]
    assert "sha256" not in files["config.json"]  # a plain git file: the Hub publishes no sha256


def test_lfs_bytes_that_do_not_match_the_published_sha256_fail(env, hub, tmp_path):
    repo, lfs = _lfs_repo(hub, "acme/lfs-rotten")
    oid = lfs["sha256"]
    stored = repo / ".git" / "lfs" / "objects" / oid[:2] / oid[2:4] / oid
    rotten = bytearray(stored.read_bytes())
    rotten[len(rotten) // 2] ^= 0xFF  # one bit-rotten byte on the server, same size
    stored.write_bytes(bytes(rotten))
    with pytest.raises(DownloadError) as err:
        _run(tmp_path / "out", uri="hf://acme/lfs-rotten")
    assert err.value.reason == "ChecksumMismatch"
    assert "model.safetensors" in err.value.message and oid in err.value.message
    assert not (tmp_path / "out" / "model.safetensors").exists()
