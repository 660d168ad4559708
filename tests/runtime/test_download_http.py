"""`modelyard download` from http(s):// against a real HTTP server (Range, drops, auth, archives)."""
from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import pytest

from modelyard.runtime.download import MANIFEST, Request, download
from modelyard.runtime.errors import DownloadError
from tests.runtime.servers import start_http

MODELYARD = Path(sys.executable).parent / "modelyard"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("www")
    (root / "weights.bin").write_bytes(os.urandom(3 << 20))
    (root / "config.json").write_text('{"model_type": "llama"}')
    _tar(root / "model.tar.gz", {"config.json": b"{}", "sub/model.bin": os.urandom(200_000)})
    _zip(root / "model.zip", {"config.json": b"{}", "sub/model.bin": os.urandom(100_000)})
    _tar(root / "evil.tar.gz", {"ok.txt": b"fine", "../evil": b"pwned"})
    _zip(root / "evil.zip", {"ok.txt": b"fine", "../evil": b"pwned"})
    with start_http(root) as srv:
        yield srv


@pytest.fixture(autouse=True)
def fresh(server, monkeypatch):
    server.state.reset()
    monkeypatch.setenv("MODELYARD_RETRY_BACKOFF", "0.01")
    monkeypatch.delenv("MODELYARD_HTTP_TOKEN", raising=False)


def _tar(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _zip(path: Path, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)


def _get(tmp_path, url, **kw):
    return download(Request(source=url, dest=tmp_path / "out", plan_args=None, **kw), stream=io.StringIO())


def test_single_file_with_published_sha256_and_token(server, tmp_path, monkeypatch):
    data = (server.state.root / "weights.bin").read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    server.state.headers["/weights.bin"] = {"X-Checksum-Sha256": digest}
    server.state.token = "s3cr3t-http"
    monkeypatch.setenv("MODELYARD_HTTP_TOKEN", "s3cr3t-http")
    result = _get(tmp_path, server.url + "/weights.bin")
    assert (tmp_path / "out/weights.bin").read_bytes() == data
    assert result.resolved_revision == "sha256:" + digest
    manifest = json.loads((tmp_path / "out" / MANIFEST).read_text())
    assert manifest["files"] == [{"path": "weights.bin", "size": len(data), "sha256": digest}]
    assert not (tmp_path / "out/.partial").exists()


def test_wrong_published_sha256_is_checksum_mismatch(server, tmp_path):
    (server.state.root / "weights.bin.sha256").write_text("0" * 64 + "  weights.bin\n")
    try:
        with pytest.raises(DownloadError) as err:
            _get(tmp_path, server.url + "/weights.bin")
    finally:
        (server.state.root / "weights.bin.sha256").unlink()
    assert err.value.reason == "ChecksumMismatch"
    assert "weights.bin" in err.value.message and "0" * 64 in err.value.message
    assert not (tmp_path / "out/weights.bin").exists()
    assert not (tmp_path / "out" / MANIFEST).exists()


@pytest.mark.parametrize("name", ["model.tar.gz", "model.zip"])
def test_archives_are_unpacked(server, tmp_path, name):
    result = _get(tmp_path, f"{server.url}/{name}")
    assert sorted(f.path for f in result.files) == ["config.json", "sub/model.bin"]
    assert (tmp_path / "out/config.json").read_bytes() == b"{}"
    assert not (tmp_path / "out" / name).exists()
    manifest = json.loads((tmp_path / "out" / MANIFEST).read_text())
    assert [f["path"] for f in manifest["files"]] == ["config.json", "sub/model.bin"]


def test_include_applies_to_archive_members(server, tmp_path):
    result = _get(tmp_path, f"{server.url}/model.tar.gz", include=["sub/*"])
    assert [f.path for f in result.files] == ["sub/model.bin"]
    assert not (tmp_path / "out/config.json").exists()


@pytest.mark.parametrize("name", ["evil.tar.gz", "evil.zip"])
def test_malicious_archive_is_rejected(server, tmp_path, name):
    dest = tmp_path / "deep" / "out"
    with pytest.raises(DownloadError) as err:
        download(Request(source=f"{server.url}/{name}", dest=dest, plan_args=None), stream=io.StringIO())
    assert err.value.reason == "InvalidSource" and "../evil" in err.value.message
    assert not (tmp_path / "deep" / "evil").exists() and not (tmp_path / "evil").exists()
    assert not (dest / "ok.txt").exists()  # nothing extracted at all


def test_dropped_connection_resumes_with_range(server, tmp_path):
    server.state.drop_after["/weights.bin"] = 1 << 20
    server.state.drop_times["/weights.bin"] = 2
    _get(tmp_path, server.url + "/weights.bin")
    data = (server.state.root / "weights.bin").read_bytes()
    assert (tmp_path / "out/weights.bin").read_bytes() == data
    ranges = [r for m, p, r in server.state.requests if p == "/weights.bin" and m == "GET"]
    assert ranges == [None, "bytes=1048576-", "bytes=2097152-"]


def test_connection_that_keeps_dropping(server, tmp_path, monkeypatch):
    monkeypatch.setenv("MODELYARD_DOWNLOAD_RETRIES", "3")
    server.state.drop_after["/weights.bin"] = 1000
    server.state.drop_times["/weights.bin"] = -1
    with pytest.raises(DownloadError) as err:
        _get(tmp_path, server.url + "/weights.bin")
    assert err.value.reason == "ConnectionDropped"
    assert "weights.bin" in err.value.message and "3000 of 3145728 bytes" in err.value.message
    assert next((tmp_path / "out").glob(".partial/*/weights.bin.incomplete")).stat().st_size == 3000


@pytest.mark.parametrize("status,reason", [(401, "Unauthorized"), (403, "Unauthorized"), (404, "RepositoryNotFound")])
def test_http_errors(server, tmp_path, status, reason, monkeypatch):
    monkeypatch.setenv("MODELYARD_HTTP_TOKEN", "never-printed-token")
    server.state.status["/weights.bin"] = status
    with pytest.raises(DownloadError) as err:
        _get(tmp_path, server.url + "/weights.bin")
    assert err.value.reason == reason
    assert "never-printed-token" not in err.value.message
    if reason == "Unauthorized":
        assert "MODELYARD_HTTP_TOKEN" in err.value.message


def test_killed_download_resumes_where_it_stopped(server, tmp_path):
    """A real kill (SIGKILL) mid-file, then a re-run that asks only for the missing bytes."""
    server.state.throttle["/weights.bin"] = 4 << 20  # ~0.75 s for 3 MiB
    dest = tmp_path / "out"
    cmd = [str(MODELYARD), "download", "--source", server.url + "/weights.bin", "--dest", str(dest), "--no-plan"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    part = None
    while time.monotonic() < deadline and not (part and part.exists() and part.stat().st_size > 256 << 10):
        part = next(dest.glob(".partial/*/weights.bin.incomplete"), None)
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    have = part.stat().st_size
    assert 0 < have < 3 << 20
    server.state.throttle.clear()
    _get(tmp_path, server.url + "/weights.bin")
    assert (dest / "weights.bin").read_bytes() == (server.state.root / "weights.bin").read_bytes()
    assert server.state.requests[-1][2] == f"bytes={have}-"


def test_signed_url_query_never_leaks(server, tmp_path):
    """A presigned URL carries its signature in the query: not in the manifest, not in errors."""
    url = server.url + "/config.json?X-Amz-Signature=topsecret123"
    _get(tmp_path, url)
    manifest = (tmp_path / "out" / MANIFEST).read_text()
    assert "topsecret123" not in manifest and json.loads(manifest)["source"].endswith("/config.json?<redacted>")
    assert ("GET", "/config.json.sha256", None) in server.state.requests  # sidecar asked beside the file
    server.state.status["/config.json"] = 403
    with pytest.raises(DownloadError) as err:
        _get(tmp_path / "again", url)
    assert err.value.reason == "Unauthorized" and "topsecret123" not in err.value.message
