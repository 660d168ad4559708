"""``http(s)://``: one file, or a ``.tar``/``.tar.gz``/``.tgz``/``.zip`` archive unpacked safely.

- ``Authorization: Bearer $MODELYARD_HTTP_TOKEN`` is sent when that variable is set.
- A partial file is resumed with ``Range``; a dropped connection is retried
  (``MODELYARD_DOWNLOAD_RETRIES`` times) from the last byte received.
- SHA-256 is verified when the server publishes one, first found of: an ``X-Checksum-Sha256``
  header (hex), a ``Digest: sha-256=<base64>`` or ``Repr-Digest: sha-256=:<base64>:`` header, or
  a sidecar ``<URL>.sha256`` (``sha256sum`` format: hex first).
- Archives refuse absolute paths, ``..`` and links (tar ``filter="data"``; zip members checked
  one by one) before a single member is written.
- The resolved revision is ``sha256:<hex>`` when published, else the ETag, else Last-Modified.
"""
from __future__ import annotations

import base64
import os
import re
import shutil
import stat
import tarfile
import zipfile
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit, urlunsplit

from modelyard.runtime.errors import DownloadError
from modelyard.runtime.sources import RemoteFile, backoff, check_relpath, redact, retries

TOKEN_HINT = "check the token in the Model's secretRef (key MODELYARD_HTTP_TOKEN)"
ARCHIVES = (".tar.gz", ".tgz", ".tar", ".zip")
PIECE = 1 << 20


def open_source(uri: str, revision: str | None):
    parts = urlsplit(uri)
    name = PurePosixPath(parts.path).name
    if not parts.netloc or not name:
        raise DownloadError("InvalidSource", f"source {uri!r}: expected http(s)://host/path/<file>")
    return HttpSource(uri, name, revision)


class HttpSource:
    local_path = None

    def __init__(self, uri: str, name: str, revision: str | None):
        import requests

        self.url, self.uri, self.name, self.revision = uri, redact(uri), name, revision
        self.session = requests.Session()
        self.session.headers["Accept-Encoding"] = "identity"  # the bytes as published, no gzip
        token = os.environ.get("MODELYARD_HTTP_TOKEN")
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"
        self.archive = next((a for a in ARCHIVES if name.lower().endswith(a)), None)
        self._head = None

    def _check(self, resp, what: str) -> None:
        if resp.status_code in (401, 403):
            raise DownloadError("Unauthorized", f"{what}: HTTP {resp.status_code}; {TOKEN_HINT}")
        if resp.status_code in (404, 410):
            raise DownloadError("RepositoryNotFound", f"{what}: HTTP {resp.status_code}, no such file on the server")
        if resp.status_code >= 400:
            raise DownloadError("InvalidSource", f"{what}: HTTP {resp.status_code}")

    def _request(self, method: str, url: str, **kw):
        import requests

        try:
            return self.session.request(method, url, timeout=(10, 60), **kw)
        except requests.ConnectionError as exc:
            raise DownloadError("ConnectionDropped", f"{redact(url)}: cannot connect "
                                f"({type(exc).__name__})") from None

    def head(self) -> dict:
        if self._head is None:
            resp = self._request("HEAD", self.url, allow_redirects=True)
            if resp.status_code == 405:  # HEAD not allowed: the headers of a GET will do
                resp = self._request("GET", self.url, stream=True)
                resp.close()
            self._check(resp, self.uri)
            size = resp.headers.get("Content-Length")
            self._head = {"size": int(size) if size and size.isdigit() else None,
                          "sha256": _published_sha256(resp.headers) or self._sidecar(),
                          "etag": resp.headers.get("ETag"), "modified": resp.headers.get("Last-Modified")}
        return self._head

    def _sidecar(self) -> str | None:
        parts = urlsplit(self.url)
        resp = self._request("GET", urlunsplit(parts._replace(path=parts.path + ".sha256")))
        if resp.status_code != 200:
            return None
        m = re.match(r"\s*([0-9a-fA-F]{64})\b", resp.text)
        return m.group(1).lower() if m else None

    def resolve(self) -> str:
        h = self.head()
        if h["sha256"]:
            return "sha256:" + h["sha256"]
        return f"etag:{h['etag']}" if h["etag"] else f"last-modified:{h['modified'] or 'unknown'}"

    def list_files(self) -> list[RemoteFile]:
        h = self.head()
        return [RemoteFile(check_relpath(self.name, self.uri), h["size"], h["sha256"])]

    def fetch(self, files: list[RemoteFile], staging: Path, progress) -> None:
        for f in files:
            self._fetch_one(f, Path(staging), progress)

    def _fetch_one(self, f: RemoteFile, staging: Path, progress) -> None:
        final = staging / f.path
        part = final.with_name(final.name + ".incomplete")
        part.parent.mkdir(parents=True, exist_ok=True)
        if part.exists():
            progress.skip(part.stat().st_size)
        attempt = 0
        while True:
            have = part.stat().st_size if part.exists() else 0
            if f.size is not None and have >= f.size:
                break
            try:
                if self._get_into(part, have, progress):
                    break
            except DownloadError:
                raise
            except Exception as exc:  # noqa: BLE001
                if not _retryable(exc):
                    raise
                attempt += 1
                if attempt >= retries():
                    got = part.stat().st_size if part.exists() else 0
                    raise DownloadError("ConnectionDropped", f"{self.uri}: the server closed the connection "
                                        f"{attempt} times; {f.path}: {got} of {f.size or '?'} bytes received "
                                        "(run again to resume)") from None
                backoff(attempt)
        os.replace(part, final)

    def _get_into(self, part: Path, have: int, progress) -> bool:
        """One GET from byte ``have``; True when the body was read to its end."""
        headers = {"Range": f"bytes={have}-"} if have else {}
        validator = self.head()["etag"] or self.head()["modified"]
        if have and validator and not validator.startswith("W/"):
            headers["If-Range"] = validator  # the rest of *this* version, or the whole new one (200)
        with self._request("GET", self.url, headers=headers, stream=True) as resp:
            if resp.status_code == 416:
                return True
            self._check(resp, self.uri)
            self._same_version(resp)
            mode = "ab" if have and resp.status_code == 206 else "wb"
            if mode == "wb" and have:  # the server ignored Range: start over
                progress.skip(-have)
            with open(part, mode) as out:
                for piece in resp.raw.stream(PIECE, decode_content=False):
                    out.write(piece)
                    progress.advance(len(piece))
        return True

    def _same_version(self, resp) -> None:
        """The GET must deliver the version the HEAD described (its ETag/Digest), or bytes would mix."""
        head = self.head()
        etag = resp.headers.get("ETag")
        if head["etag"] and etag and etag != head["etag"] and not etag.startswith("W/"):
            raise DownloadError("ChecksumMismatch", f"{self.uri}: the file changed on the server during the download "
                                f"(ETag {head['etag']} then {etag}); run again")
        digest = _published_sha256(resp.headers)
        if resp.status_code == 200 and digest and head["sha256"] and digest != head["sha256"]:
            raise DownloadError("ChecksumMismatch", f"{self.uri}: the server's Digest changed during the download; run again")

    def unpack(self, staged: Path, staging: Path) -> list[RemoteFile] | None:
        """Unpack an archive into ``staging/.unpack``; return its files (None: not an archive)."""
        if not self.archive:
            return None
        out = staging / ".unpack"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        if self.archive == ".zip":
            _unzip(staged, out, self.uri)
        else:
            _untar(staged, out, self.uri)
        return [RemoteFile(p.relative_to(out).as_posix(), p.stat().st_size)
                for p in sorted(out.rglob("*")) if p.is_file() and not p.is_symlink()]


def _published_sha256(headers) -> str | None:
    value = headers.get("X-Checksum-Sha256")
    if value and re.fullmatch(r"[0-9a-fA-F]{64}", value.strip()):
        return value.strip().lower()
    for name in ("Repr-Digest", "Digest"):
        m = re.search(r"sha-256=:?([A-Za-z0-9+/=]+):?", headers.get(name, ""), re.I)
        if m:
            try:
                raw = base64.b64decode(m.group(1), validate=True)
            except ValueError:
                continue
            if len(raw) == 32:
                return raw.hex()
    return None


def _retryable(exc: BaseException) -> bool:
    import requests
    import urllib3

    return isinstance(exc, (requests.ConnectionError, requests.exceptions.ChunkedEncodingError,
                            urllib3.exceptions.HTTPError, ConnectionError, TimeoutError))


def _untar(archive: Path, out: Path, uri: str) -> None:
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        for m in members:  # check every member before writing any
            try:
                tarfile.data_filter(m, str(out))
            except tarfile.FilterError as exc:
                raise DownloadError("InvalidSource", f"{uri}: unsafe archive member {m.name!r} ({exc}); "
                                    "nothing was extracted") from None
        tar.extractall(out, members=members, filter="data")


def _unzip(archive: Path, out: Path, uri: str) -> None:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        for info in infos:
            name = info.filename
            parts = PurePosixPath(name.replace("\\", "/")).parts
            is_link = stat.S_ISLNK(info.external_attr >> 16)
            if name.startswith(("/", "\\")) or ".." in parts or re.match(r"^[A-Za-z]:", name) or is_link:
                raise DownloadError("InvalidSource", f"{uri}: unsafe archive member {name!r} (absolute path, "
                                    "'..' or a symlink); nothing was extracted")
        for info in infos:
            if not info.is_dir():
                zf.extract(info, out)
