"""Real servers for runtime tests: an olah Hugging Face mirror, SeaweedFS S3 and an HTTP file server.

Each ``start_*`` is a context manager that starts its server on free 127.0.0.1 ports, polls until
it answers, yields a small handle and stops it cleanly. A server that does not come up raises
(the test fails, it never skips). Test modules wrap them in module-scoped fixtures, e.g.::

    @pytest.fixture(scope="module")
    def olah(tmp_path_factory):
        with start_olah(tmp_path_factory.mktemp("olah")) as server:
            yield server
"""
from __future__ import annotations

import contextlib
import http.server
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

BIN = Path(sys.executable).parent
S3_KEY, S3_SECRET = "modelyard-test-key", "modelyard-test-secret-3fbc"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports(n: int, spread: int = 0) -> list[int]:
    """``n`` free ports; with ``spread`` each ``port + spread`` is free too (weed's gRPC ports)."""
    ports: list[int] = []
    while len(ports) < n:
        p = free_port()
        if p in ports or (spread and (p + spread > 65535 or not _is_free(p + spread))):
            continue
        ports.append(p)
    return ports


def _is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def wait_until(check, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            break
        try:
            if check():
                return
        except Exception:  # not up yet
            pass
        time.sleep(0.1)
    tail = log.read_text()[-3000:] if log and log.exists() else ""
    raise RuntimeError(f"{what} did not start within {timeout:.0f}s\n{tail}")


def _stop(proc: subprocess.Popen, grace: float = 10) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


# --- olah: a Hugging Face Hub mirror serving local git repositories ------------------------------


@dataclass
class Olah:
    endpoint: str
    mirrors: Path
    log: Path

    def repo_dir(self, repo_id: str) -> Path:
        return self.mirrors / "models" / repo_id

    def file_requests(self, repo_id: str, filename: str) -> int:
        """How many times a file's bytes were asked for (olah's access log, unbuffered)."""
        return sum(1 for line in self.log.read_text().splitlines()
                   if f"GET /{repo_id}/resolve/" in line and line.split('"')[1].split()[1].endswith("/" + filename))


def git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    out = subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True, env=env)
    return out.stdout.strip()


def commit_folder(repo: Path, message: str = "add files") -> str:
    """``git init`` (once) and commit everything in ``repo``; return the commit hash."""
    if not (repo / ".git").exists():
        repo.mkdir(parents=True, exist_ok=True)
        git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


@contextlib.contextmanager
def start_olah(workdir: Path):
    workdir = Path(workdir)
    mirrors, repos = workdir / "mirrors", workdir / "repos"
    (mirrors / "models").mkdir(parents=True, exist_ok=True)
    repos.mkdir(exist_ok=True)
    port = free_port()
    cfg = workdir / "configs.toml"
    cfg.write_text(
        "[basic]\n"
        f'host = "127.0.0.1"\nport = {port}\nrepos-path = "{repos}"\n'
        f'mirror-netloc = "127.0.0.1:{port}"\nmirror-lfs-netloc = "127.0.0.1:{port}"\n'
        f'mirrors-path = ["{mirrors}"]\nmetadata-cache-ttl = 0\n'
        "[accessibility]\noffline = true\n"
    )
    log = workdir / "olah.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([str(BIN / "olah-cli"), "-c", str(cfg)], cwd=workdir, stdout=fh,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _reachable(endpoint + "/api/models/modelyard/ready"), 30, "olah", proc, log)
        yield Olah(endpoint=endpoint, mirrors=mirrors, log=log)
    finally:
        _stop(proc)


# --- SeaweedFS: a real S3 server ---------------------------------------------------------------


@dataclass
class SeaweedS3:
    endpoint: str
    key: str = S3_KEY
    secret: str = S3_SECRET

    def client(self, key: str | None = None, secret: str | None = None):
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=key or self.key, aws_secret_access_key=secret or self.secret,
                            config=Config(s3={"addressing_style": "path"}))

    def env(self) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": self.key,
                "AWS_SECRET_ACCESS_KEY": self.secret, "AWS_DEFAULT_REGION": "us-east-1"}

    def upload_folder(self, folder: Path, bucket: str, prefix: str) -> None:
        c = self.client()
        with contextlib.suppress(c.exceptions.BucketAlreadyOwnedByYou, c.exceptions.BucketAlreadyExists):
            c.create_bucket(Bucket=bucket)
        for f in sorted(Path(folder).rglob("*")):
            if f.is_file():
                c.upload_file(str(f), bucket, f"{prefix}/{f.relative_to(folder).as_posix()}")


@contextlib.contextmanager
def start_seaweedfs(workdir: Path):
    workdir = Path(workdir)
    data = workdir / "data"
    data.mkdir(parents=True, exist_ok=True)
    s3, master, volume, filer = free_ports(4, spread=10000)
    cmd = [str(BIN / "weed"), "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
           f"-s3.port={s3}", f"-master.port={master}", f"-volume.port={volume}", f"-filer.port={filer}",
           "-webdav=false", "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
           "-master.telemetry=false", f"-s3.localSocket={workdir}/s3.sock", f"-filer.localSocket={workdir}/filer.sock"]
    env = {**os.environ, "AWS_ACCESS_KEY_ID": S3_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET}
    log = workdir / "weed.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, cwd=workdir, stdout=fh, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    server = SeaweedS3(endpoint=f"http://127.0.0.1:{s3}")
    try:
        wait_until(lambda: server.client().list_buckets() is not None, 60, "SeaweedFS S3", proc, log)
        yield server
    finally:
        _stop(proc, grace=4)  # weed waits for idle keep-alive clients; its data is thrown away anyway
        shutil.rmtree(data, ignore_errors=True)


# --- a plain HTTP file server with Range, auth, failures and dropped connections ---------------


@dataclass
class HttpState:
    root: Path
    token: str | None = None                        # require "Authorization: Bearer <token>"
    status: dict[str, int] = field(default_factory=dict)  # path -> forced status code
    drop_after: dict[str, int] = field(default_factory=dict)  # path -> bytes sent before closing
    drop_times: dict[str, int] = field(default_factory=dict)  # path -> how many requests drop (-1: all)
    headers: dict[str, dict[str, str]] = field(default_factory=dict)  # path -> extra headers
    throttle: dict[str, int] = field(default_factory=dict)  # path -> bytes per second
    no_length: set[str] = field(default_factory=set)  # paths sent without Content-Length
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)  # (method, path, Range)
    if_range: list[str | None] = field(default_factory=list)  # the If-Range header of each request
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, path: str, method: str = "GET") -> int:
        return sum(1 for m, p, _ in self.requests if p == path and m == method)

    def reset(self) -> None:
        with self.lock:
            self.status.clear(), self.drop_after.clear(), self.drop_times.clear()
            self.headers.clear(), self.requests.clear(), self.throttle.clear(), self.no_length.clear()
            self.if_range.clear()
            self.token = None


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: HttpState

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_HEAD(self):
        self._serve(body=False)

    def do_GET(self):
        self._serve(body=True)

    def _serve(self, body: bool):
        st, path = self.state, self.path.split("?", 1)[0]
        with st.lock:
            st.requests.append((self.command, path, self.headers.get("Range")))
            st.if_range.append(self.headers.get("If-Range"))
        if st.token and self.headers.get("Authorization") != f"Bearer {st.token}":
            return self._error(401)
        if path in st.status:
            return self._error(st.status[path])
        f = (st.root / path.lstrip("/")).resolve()
        if not f.is_file() or st.root.resolve() not in f.parents:
            return self._error(404)
        data = f.read_bytes()
        start, code = self._range(len(data))
        if start is None:
            return self._error(416)
        self.send_response(code)
        if path in st.no_length:
            self.send_header("Connection", "close")
            self.close_connection = True
        else:
            self.send_header("Content-Length", str(len(data) - start))
        self.send_header("Accept-Ranges", "bytes")
        if code == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        for k, v in st.headers.get(path, {}).items():
            self.send_header(k, v)
        self.end_headers()
        if body:
            self._send_body(path, data[start:])

    def _range(self, size: int):
        rng = self.headers.get("Range")
        if not rng or not rng.startswith("bytes="):
            return 0, 200
        start = int(rng[6:].split("-", 1)[0] or 0)
        return (start, 206) if start < size else (None, 416)

    def _send_body(self, path: str, payload: bytes):
        st = self.state
        with st.lock:
            limit = st.drop_after.get(path)
            times = st.drop_times.get(path, 0)
            drop = limit is not None and times != 0
            if drop and times > 0:
                st.drop_times[path] = times - 1
        if drop:
            self.wfile.write(payload[:limit])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        rate = st.throttle.get(path)
        if not rate:
            self.wfile.write(payload)
            return
        piece = max(rate // 20, 1)
        try:
            for i in range(0, len(payload), piece):
                self.wfile.write(payload[i:i + piece])
                self.wfile.flush()
                time.sleep(piece / rate)
        except (BrokenPipeError, ConnectionResetError):  # the client went away (killed)
            self.close_connection = True

    def _error(self, code: int):
        msg = f"error {code}\n".encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(msg)))
        self.end_headers()
        self.wfile.write(msg)


@dataclass
class HttpServer:
    url: str
    state: HttpState


@contextlib.contextmanager
def start_http(root: Path):
    state = HttpState(root=Path(root))
    handler = type("Handler", (_Handler,), {"state": state})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        wait_until(lambda: _reachable(url + "/"), 10, "HTTP server")
        yield HttpServer(url=url, state=state)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


def _reachable(url: str) -> bool:
    """Any HTTP answer (even an error status) means the server is up."""
    try:
        urllib.request.urlopen(url, timeout=2).close()
    except urllib.error.HTTPError:
        pass
    return True
