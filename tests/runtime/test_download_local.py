"""`modelyard download` from file:// and pvc://, idempotency, and a really full disk."""
from __future__ import annotations

import io
import json
import os
import subprocess
from pathlib import Path

import pytest

from modelyard.runtime.download import MANIFEST, Request, download
from modelyard.runtime.errors import DownloadError
from tests.runtime.servers import start_http


@pytest.fixture
def folder(tmp_path) -> Path:
    src = tmp_path / "claims" / "models" / "tiny"
    (src / "sub").mkdir(parents=True)
    (src / "config.json").write_text('{"model_type": "llama"}')
    (src / "model.bin").write_bytes(os.urandom(300_000))
    (src / "sub" / "tokenizer.json").write_text("{}")
    return src


def _run(source: str, dest: Path, **kw):
    log = io.StringIO()
    result = download(Request(source=source, dest=dest, plan_args=None, **kw), stream=log)
    return result, log.getvalue()


def test_file_uri_hardlinks_on_the_same_filesystem(folder, tmp_path):
    result, _ = _run(f"file://{folder}", tmp_path / "out")
    assert sorted(f.path for f in result.files) == ["config.json", "model.bin", "sub/tokenizer.json"]
    assert (tmp_path / "out/model.bin").stat().st_ino == (folder / "model.bin").stat().st_ino
    manifest = json.loads((tmp_path / "out" / MANIFEST).read_text())
    assert manifest["totalBytes"] == result.bytes and manifest["resolvedRevision"].startswith("local:")


def test_pvc_uri_under_the_pvc_root_and_include(folder, tmp_path, monkeypatch):
    monkeypatch.setenv("MODELYARD_PVC_ROOT", str(tmp_path / "claims"))
    result, _ = _run("pvc://models/tiny", tmp_path / "out", include=["*.json"])
    assert sorted(f.path for f in result.files) == ["config.json", "sub/tokenizer.json"]
    assert not (tmp_path / "out/model.bin").exists()


def test_pvc_claim_not_mounted(tmp_path, monkeypatch):
    monkeypatch.setenv("MODELYARD_PVC_ROOT", str(tmp_path))
    with pytest.raises(DownloadError) as err:
        _run("pvc://nope/model", tmp_path / "out")
    assert err.value.reason == "RepositoryNotFound" and "'nope'" in err.value.message


def test_dest_is_the_source_folder_copies_nothing(folder):
    before = {p: p.stat().st_mtime_ns for p in folder.rglob("*")}
    result, log = _run(f"file://{folder}", folder)
    assert "nothing to copy" in log
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.name != MANIFEST} == before
    assert (folder / MANIFEST).exists() and not (folder / ".partial").exists()
    assert len(result.files) == 3


def test_second_run_returns_at_once(folder, tmp_path):
    _run(f"file://{folder}", tmp_path / "out")
    ino = (tmp_path / "out/model.bin").stat().st_ino
    (folder / "model.bin").unlink()  # the source is gone: a second run must not need it
    result, log = _run(f"file://{folder}", tmp_path / "out")
    assert result.already and "already downloaded" in log
    assert (tmp_path / "out/model.bin").stat().st_ino == ino


def test_bad_scheme_is_invalid_source(tmp_path):
    with pytest.raises(DownloadError) as err:
        _run("ftp://host/model", tmp_path / "out")
    assert err.value.reason == "InvalidSource" and "hf://" in err.value.message


@pytest.fixture
def tiny_disk(tmp_path):
    """A real 1 MiB tmpfs (we run as root); unmounted afterwards."""
    mnt = tmp_path / "tiny-disk"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


def test_disk_full_before_writing(tiny_disk, tmp_path):
    src = tmp_path / "big"
    src.mkdir()
    (src / "model.bin").write_bytes(os.urandom(2 << 20))
    with pytest.raises(DownloadError) as err:
        _run(f"file://{src}", tiny_disk / "out")
    assert err.value.reason == "DiskFull"
    assert "2.0MiB" in err.value.message and "free" in err.value.message


def test_disk_full_while_writing(tiny_disk, tmp_path):
    """The server does not say how big the file is, so only the write itself finds out."""
    root = tmp_path / "www"
    root.mkdir()
    (root / "model.bin").write_bytes(os.urandom(2 << 20))
    with start_http(root) as srv:
        srv.state.no_length.add("/model.bin")
        with pytest.raises(DownloadError) as err:
            _run(f"{srv.url}/model.bin", tiny_disk / "out")
    assert err.value.reason == "DiskFull" and "no space left" in err.value.message


def test_leftovers_of_another_revision_are_not_reused(folder, tmp_path):
    """A killed run left a complete-looking file for an older revision: it must not be installed."""
    staging = tmp_path / "out" / ".partial" / "killed-pod-uid"
    staging.mkdir(parents=True)
    (staging / "revision").write_text("local:older")
    (staging / "model.bin").write_bytes(b"\0" * 300_000)  # right size, wrong bytes
    _run(f"file://{folder}", tmp_path / "out")
    assert (tmp_path / "out/model.bin").read_bytes() == (folder / "model.bin").read_bytes()


def test_the_download_jobs_own_command_reads_a_mounted_claim(folder, tmp_path):
    """pvc:// in a cluster: the operator's Job mounts the claim at /mnt/pvc/<claim>; its exact
    command, run here with those mounts mapped to folders, finds the files."""
    import sys

    from modelyard.api import parse_model
    from modelyard.operator.resources import Settings, build_download_job

    m = parse_model({"apiVersion": "modelyard.io/v1alpha1", "kind": "Model", "metadata": {"name": "m"},
                     "spec": {"source": {"uri": "pvc://models/tiny"}}})
    container = build_download_job(m, Settings())["spec"]["template"]["spec"]["containers"][0]
    mounts = {mt["mountPath"]: mt for mt in container["volumeMounts"]}
    assert mounts["/mnt/pvc/models"]["readOnly"]
    claims = folder.parent.parent  # tmp/claims/<claim>/<path>: what the mounts would show
    args = [a.replace("/cache", str(tmp_path / "cache")) for a in container["args"] if a != "/dev/termination-log"]
    args = [a for a in args if a != "--termination-log"]
    env = {**os.environ, "MODELYARD_PVC_ROOT": str(claims)}
    run = subprocess.run([str(Path(sys.executable).parent / "modelyard"), *args], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    dest = Path(args[args.index("--dest") + 1])
    assert (dest / "model.bin").read_bytes() == (folder / "model.bin").read_bytes()
