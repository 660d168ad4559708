"""Integrity: every bad input gets its clear error — a shard index escaping its folder, a
safetensors header bomb, a symlink out of a pvc:// source — and a file that changes on a real
server (HTTP ETag, S3 If-Match/ETag) during a download is never installed; resumes send If-Range."""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest

from modelyard.runtime.adapters import AdapterError, safetensors_shapes
from modelyard.runtime.convert.read_safetensors import _header
from modelyard.runtime.download import MANIFEST, Request, download
from modelyard.runtime.errors import ConvertError, DownloadError
from modelyard.runtime.formats import detect
from modelyard.runtime.progress import Progress
from modelyard.runtime.sources import open_source
from modelyard.runtime.tiny import make_tiny_llama
from tests.runtime.servers import start_http, start_seaweedfs


@pytest.mark.parametrize("entry", ["../../outside.safetensors", "/etc/passwd", "sub/../../x.safetensors"])
def test_a_shard_index_cannot_point_outside_its_folder(tmp_path, entry):
    model = make_tiny_llama(tmp_path / "m")
    (model / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "model.safetensors", "b": entry}}))
    with pytest.raises(ConvertError) as exc:
        detect(model)
    assert exc.value.reason == "BadIndex" and repr(entry) in exc.value.message and "outside" in exc.value.message


def test_a_safetensors_header_bomb_is_a_clear_error(tmp_path):
    bomb = tmp_path / "adapter_model.safetensors"
    bomb.write_bytes((2**62).to_bytes(8, "little") + b"{}")
    with pytest.raises(AdapterError) as exc:
        safetensors_shapes(bomb)
    assert exc.value.reason == "InvalidAdapter" and "claims 4611686018427387904 bytes" in exc.value.message
    with pytest.raises(ConvertError) as exc:
        _header(bomb)
    assert exc.value.reason == "CorruptFile"


def test_a_symlink_out_of_a_pvc_source_is_refused(tmp_path, monkeypatch):
    src = tmp_path / "claims" / "models" / "m"
    src.mkdir(parents=True)
    (src / "config.json").write_text("{}")
    secret = tmp_path / "secret.txt"
    secret.write_text("not yours")
    (src / "weights.bin").symlink_to(secret)
    (src / "inside.json").symlink_to(src / "config.json")  # a link inside the folder is fine
    monkeypatch.setenv("MODELYARD_PVC_ROOT", str(tmp_path / "claims"))
    with pytest.raises(DownloadError) as exc:
        download(Request(source="pvc://models/m", dest=tmp_path / "out", plan_args=None), stream=io.StringIO())
    assert exc.value.reason == "InvalidSource" and "weights.bin is a symlink" in exc.value.message
    assert not (tmp_path / "out" / "weights.bin").exists()
    (src / "weights.bin").unlink()
    download(Request(source="pvc://models/m", dest=tmp_path / "ok", plan_args=None), stream=io.StringIO())
    assert (tmp_path / "ok" / "inside.json").read_text() == "{}"


@pytest.fixture(scope="module")
def http(tmp_path_factory):
    root = tmp_path_factory.mktemp("http")
    (root / "w.bin").write_bytes(os.urandom(1 << 20))
    with start_http(root) as server:
        yield server


def test_http_file_changed_during_download_is_not_installed(http, tmp_path):
    http.state.reset()
    http.state.headers["/w.bin"] = {"ETag": '"v1"'}
    src = open_source(http.url + "/w.bin")
    files = src.list_files()  # HEAD: ETag v1
    http.state.headers["/w.bin"] = {"ETag": '"v2"'}  # replaced on the server before the GET
    with pytest.raises(DownloadError) as exc, Progress(None, step="download", stream=io.StringIO()) as progress:
        src.fetch(files, tmp_path, progress)
    assert exc.value.reason == "ChecksumMismatch" and '"v1" then "v2"' in exc.value.message
    assert not (tmp_path / "w.bin").exists()


def test_http_resume_asks_if_range(http, tmp_path, monkeypatch):
    http.state.reset()
    http.state.headers["/w.bin"] = {"ETag": '"v1"'}
    http.state.drop_after["/w.bin"], http.state.drop_times["/w.bin"] = 300_000, 1
    monkeypatch.setenv("MODELYARD_RETRY_BACKOFF", "0.01")
    download(Request(source=http.url + "/w.bin", dest=tmp_path / "out", plan_args=None), stream=io.StringIO())
    resumed = [(r, i) for (m, p, r), i in zip(http.state.requests, http.state.if_range) if m == "GET" and r]
    assert resumed == [("bytes=300000-", '"v1"')]
    assert (tmp_path / "out" / "w.bin").read_bytes() == (http.state.root / "w.bin").read_bytes()
    assert (tmp_path / "out" / MANIFEST).is_file()


def test_s3_object_replaced_during_download_is_not_installed(tmp_path, monkeypatch):
    with start_seaweedfs(tmp_path / "weed") as s3:
        for k, v in s3.env().items():
            monkeypatch.setenv(k, v)
        client = s3.client()
        client.create_bucket(Bucket="swap")
        client.put_object(Bucket="swap", Key="m/w.bin", Body=b"a" * 100_000)
        src = open_source("s3://swap/m")
        files = src.list_files()
        client.put_object(Bucket="swap", Key="m/w.bin", Body=b"b" * 100_000)  # same size, new bytes
        with pytest.raises(DownloadError) as exc, Progress(None, step="download", stream=io.StringIO()) as progress:
            src.fetch(files, tmp_path / "staging", progress)
        assert exc.value.reason == "ChecksumMismatch", exc.value.message
        assert not (tmp_path / "staging" / "w.bin").exists()
