"""`modelyard download` from s3:// against a real SeaweedFS S3 server."""
from __future__ import annotations

import hashlib
import io
import json
import os
import threading
from pathlib import Path

import pytest

from modelyard.runtime.download import MANIFEST, Request, download
from modelyard.runtime.errors import DownloadError
from modelyard.runtime.sources import s3 as s3_source
from modelyard.runtime.tiny import make_tiny_llama
from tests.runtime.servers import start_seaweedfs

BIG = 64 << 20


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    work = tmp_path_factory.mktemp("weed")
    with start_seaweedfs(work) as server:
        tiny = make_tiny_llama(work / "tiny")
        server.upload_folder(tiny, "models", "tiny")
        big = work / "big"
        big.mkdir()
        (big / "config.json").write_text("{}")
        (big / "a.txt").write_text("a" * 1000)
        (big / "model.bin").write_bytes(os.urandom(BIG))
        server.upload_folder(big, "models", "big")
        server.client().put_object(Bucket="models", Key="summed/model.bin", Body=b"weights" * 1000,
                                   ChecksumAlgorithm="SHA256")
        server.tiny, server.big = tiny, big
        yield server


@pytest.fixture
def env(s3, monkeypatch):
    for k, v in s3.env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("MODELYARD_RETRY_BACKOFF", "0.01")


@pytest.fixture
def gets(monkeypatch):
    """Record every GetObject (key, Range) sent by the real boto3 client."""
    seen: list[tuple[str, str | None]] = []
    lock = threading.Lock()
    real = s3_source.make_client

    def recording(workers: int = 16):
        client = real(workers)

        def hook(params, **_):
            with lock:
                seen.append((params["Key"], params.get("Range")))
        client.meta.events.register("before-parameter-build.s3.GetObject", hook)
        return client
    monkeypatch.setattr(s3_source, "make_client", recording)
    return seen


def _run(uri: str, dest: Path, **kw):
    return download(Request(source=uri, dest=dest, plan_args=None, **kw), stream=io.StringIO())


def test_tiny_model(env, s3, tmp_path):
    result = _run("s3://models/tiny", tmp_path / "out")
    for f in s3.tiny.iterdir():
        assert (tmp_path / "out" / f.name).read_bytes() == f.read_bytes()
    assert result.resolved_revision.startswith("etags:")
    manifest = json.loads((tmp_path / "out" / MANIFEST).read_text())
    assert {f["path"] for f in manifest["files"]} == {f.name for f in s3.tiny.iterdir()}
    # the content digest is stable: a second source object gives the same revision
    assert _run("s3://models/tiny", tmp_path / "again").resolved_revision == result.resolved_revision


def test_published_sha256_is_verified_and_recorded(env, tmp_path):
    _run("s3://models/summed", tmp_path / "out")
    manifest = json.loads((tmp_path / "out" / MANIFEST).read_text())
    assert manifest["files"] == [{"path": "model.bin", "size": 7000,
                                  "sha256": hashlib.sha256(b"weights" * 1000).hexdigest()}]


def test_corrupted_bytes_fail_the_published_sha256(env, tmp_path, monkeypatch):
    real = s3_source._FileJob._finish

    def corrupt_then_finish(self):  # a bit flipped on the way (disk, proxy, memory)
        os.pwrite(self.fd, b"X", 0)
        real(self)
    monkeypatch.setattr(s3_source._FileJob, "_finish", corrupt_then_finish)
    with pytest.raises(DownloadError) as err:
        _run("s3://models/summed", tmp_path / "out")
    assert err.value.reason == "ChecksumMismatch" and "model.bin" in err.value.message
    assert hashlib.sha256(b"weights" * 1000).hexdigest() in err.value.message
    assert not (tmp_path / "out/model.bin").exists()


def test_wrong_keys_are_unauthorized(env, s3, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-value-123")
    with pytest.raises(DownloadError) as err:
        _run("s3://models/tiny", tmp_path / "out")
    assert err.value.reason == "Unauthorized"
    assert "AWS_ACCESS_KEY_ID" in err.value.message and "AWS_SECRET_ACCESS_KEY" in err.value.message
    assert "wrong-secret-value-123" not in err.value.message and s3.secret not in err.value.message


def test_missing_prefix_is_repository_not_found(env, tmp_path):
    with pytest.raises(DownloadError) as err:
        _run("s3://models/nothing-here", tmp_path / "out")
    assert err.value.reason == "RepositoryNotFound"


def test_big_file_uses_parallel_ranged_gets(env, s3, tmp_path, gets, monkeypatch):
    monkeypatch.setenv("MODELYARD_S3_CHUNK_MB", "8")
    _run("s3://models/big", tmp_path / "out")
    got = (tmp_path / "out/model.bin").read_bytes()
    assert hashlib.sha256(got).digest() == hashlib.sha256((s3.big / "model.bin").read_bytes()).digest()
    ranges = sorted(r for k, r in gets if k == "big/model.bin")
    assert len(ranges) == BIG // (8 << 20)
    assert f"bytes=0-{(8 << 20) - 1}" in ranges and f"bytes={BIG - (8 << 20)}-{BIG - 1}" in ranges


def test_interrupted_download_fetches_only_what_is_missing(env, s3, tmp_path, gets, monkeypatch):
    monkeypatch.setenv("MODELYARD_S3_CHUNK_MB", "8")
    monkeypatch.setenv("MODELYARD_S3_CONCURRENCY", "2")
    real = s3_source._FileJob.get_range
    calls = {"n": 0}

    def dies_after_three(self, i):  # the process "dies" after 3 ranges of the big file
        if self.f.path == "model.bin":
            calls["n"] += 1
            if calls["n"] > 3:
                raise KeyboardInterrupt("killed")
        return real(self, i)
    monkeypatch.setattr(s3_source._FileJob, "get_range", dies_after_three)
    with pytest.raises(KeyboardInterrupt):
        _run("s3://models/big", tmp_path / "out")
    assert not (tmp_path / "out" / MANIFEST).exists()
    journal = next((tmp_path / "out").glob(".partial/*/model.bin.chunks")).read_text().split()
    assert len(journal) == 3
    monkeypatch.setattr(s3_source._FileJob, "get_range", real)
    gets.clear()
    _run("s3://models/big", tmp_path / "out")
    again = sorted(r for k, r in gets if k == "big/model.bin")
    assert len(again) == BIG // (8 << 20) - 3
    assert not [k for k, _ in gets if k in ("big/config.json", "big/a.txt")]  # already complete
    assert (tmp_path / "out/model.bin").read_bytes() == (s3.big / "model.bin").read_bytes()
