"""``s3://bucket/prefix``: any S3 API (AWS, MinIO, SeaweedFS, ...) via boto3.

Configuration comes from the environment only: ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``
(/ ``AWS_SESSION_TOKEN``), ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` for a custom endpoint,
``AWS_REGION`` / ``AWS_DEFAULT_REGION`` (default us-east-1), ``MODELYARD_S3_ADDRESSING``
(``path``/``virtual``/``auto``; path-style by default when a custom endpoint is set).

Every object is split in ``MODELYARD_S3_CHUNK_MB`` (default 8) MiB ranges and all ranges of all
files share one pool of ``MODELYARD_S3_CONCURRENCY`` (default 10, like s3transfer) workers, each a ranged GET
written in place with ``pwrite``. A journal ``<file>.chunks`` beside the partial file lists the
finished ranges, so a killed run only fetches the missing ones. The resolved revision is a digest
of the listed keys, sizes and ETags. A published full-object SHA-256 checksum is verified.
"""
from __future__ import annotations

import base64
import hashlib
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from modelyard.runtime.errors import DownloadError
from modelyard.runtime.sources import RemoteFile, backoff, check_relpath, retries

KEY_HINT = ("check the keys in the Model's secretRef (keys AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)")
AUTH_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidToken",
              "ExpiredToken", "403", "401", "Forbidden", "AllAccessDisabled"}
PIECE = 1 << 20


def open_source(uri: str, revision: str | None):
    rest = uri[len("s3://"):]
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise DownloadError("InvalidSource", f"source {uri!r}: expected s3://<bucket>/<prefix>")
    return S3Source(uri, bucket, prefix.strip("/"), revision)


def make_client(workers: int = 16):
    import boto3
    from botocore.config import Config

    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None
    style = os.environ.get("MODELYARD_S3_ADDRESSING") or ("path" if endpoint else "auto")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    config = Config(s3={"addressing_style": style}, max_pool_connections=max(workers, 10),
                    retries={"max_attempts": 5, "mode": "standard"})
    return boto3.session.Session().client("s3", endpoint_url=endpoint, region_name=region, config=config)


class S3Source:
    local_path = None

    def __init__(self, uri: str, bucket: str, prefix: str, revision: str | None):
        self.uri, self.bucket, self.prefix, self.revision = uri, bucket, prefix, revision
        self.workers = int(os.environ.get("MODELYARD_S3_CONCURRENCY", "10"))
        self.chunk = int(os.environ.get("MODELYARD_S3_CHUNK_MB", "8")) << 20
        self.client = make_client(self.workers)
        self._objects: list[dict] | None = None
        self.etags: dict[str, str | None] = {}

    def _list(self) -> list[dict]:
        if self._objects is None:
            prefix = self.prefix + "/" if self.prefix else ""
            objects = []
            try:
                for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
                    objects += [o for o in page.get("Contents", []) if not o["Key"].endswith("/")]
            except Exception as exc:  # noqa: BLE001
                raise self._map(exc) from None
            if not objects:
                raise DownloadError("RepositoryNotFound", f"{self.uri}: no objects under this prefix in bucket "
                                    f"{self.bucket!r}; check the bucket and prefix")
            self._objects = objects
        return self._objects

    def resolve(self) -> str:
        lines = sorted(f"{o['Key']} {o['Size']} {o.get('ETag', '')}" for o in self._list())
        digest = hashlib.sha256("\n".join(lines).encode()).hexdigest()
        if self.revision and self.revision not in (digest, "etags:" + digest, "main", "latest"):
            raise DownloadError("RevisionNotFound", f"{self.uri}: S3 has no revisions; the content digest is "
                                f"'etags:{digest}', not {self.revision!r} (leave revision empty or 'main')")
        return "etags:" + digest

    def list_files(self) -> list[RemoteFile]:
        start = len(self.prefix) + 1 if self.prefix else 0
        objects = self._list()
        # AWS lists each object's checksum algorithm; other servers (SeaweedFS, MinIO) only say on HEAD
        ask = [o["Key"] for o in objects if "SHA256" in (o.get("ChecksumAlgorithm") or ["SHA256"])]
        try:
            with ThreadPoolExecutor(self.workers, thread_name_prefix="s3-head") as pool:
                shas = dict(zip(ask, pool.map(self._sha256, ask)))
        except Exception as exc:  # noqa: BLE001
            raise self._map(exc) from None
        self.etags = {o["Key"]: o.get("ETag") for o in objects}
        return [RemoteFile(check_relpath(o["Key"][start:], self.uri), o["Size"], shas.get(o["Key"]))
                for o in objects]

    def _sha256(self, key: str) -> str | None:
        head = self.client.head_object(Bucket=self.bucket, Key=key, ChecksumMode="ENABLED")
        value = head.get("ChecksumSHA256")
        if not value or "-" in value or head.get("ChecksumType", "FULL_OBJECT") != "FULL_OBJECT":
            return None  # a composite (multipart) checksum is not the file's sha256
        return base64.b64decode(value).hex()

    def fetch(self, files: list[RemoteFile], staging: Path, progress) -> None:
        jobs = [_FileJob(self, f, Path(staging), progress) for f in files]
        tasks = [(job, i) for job in jobs for i in job.todo()]
        try:
            with ThreadPoolExecutor(self.workers, thread_name_prefix="s3") as pool:
                for future in [pool.submit(job.get_range, i) for job, i in tasks]:
                    future.result()
        except DownloadError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise self._map(exc) from None
        finally:
            for job in jobs:
                job.close()

    def _map(self, exc: Exception) -> Exception:
        from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

        if isinstance(exc, NoCredentialsError):
            return DownloadError("Unauthorized", f"{self.uri}: no credentials found; {KEY_HINT}")
        if isinstance(exc, EndpointConnectionError):
            return DownloadError("ConnectionDropped", f"{self.uri}: cannot reach the S3 endpoint: {exc}")
        if isinstance(exc, ClientError):
            code = str(exc.response.get("Error", {}).get("Code"))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in AUTH_CODES or status in (401, 403):
                return DownloadError("Unauthorized", f"{self.uri}: access denied ({code}); {KEY_HINT}")
            if code in ("PreconditionFailed", "412") or status == 412:
                return DownloadError("ChecksumMismatch", f"{self.uri}: an object changed on the server during the "
                                     "download (ETag no longer matches); run again to fetch the new version")
            if code in ("NoSuchBucket", "NoSuchKey", "404"):
                return DownloadError("RepositoryNotFound", f"{self.uri}: {code}; check the bucket and prefix")
        return exc


class _FileJob:
    """One object: a partial file written in place by ranged GETs, a journal of finished ranges."""

    def __init__(self, src: S3Source, f: RemoteFile, staging: Path, progress):
        self.src, self.f, self.progress = src, f, progress
        self.key = f"{src.prefix}/{f.path}" if src.prefix else f.path
        self.etag = src.etags.get(self.key)  # every range asks for this version (If-Match)
        self.final = staging / f.path
        self.part = self.final.with_name(self.final.name + ".incomplete")
        self.journal = self.final.with_name(self.final.name + ".chunks")
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self.n = max(1, -(-f.size // src.chunk))
        done = self._read_journal() if self.n > 1 and self.part.exists() else set()
        self.remaining = set(range(self.n)) - done
        self.lock = threading.Lock()
        self.fd = os.open(self.part, os.O_RDWR | os.O_CREAT)
        if not done:
            os.ftruncate(self.fd, 0)
        os.ftruncate(self.fd, f.size)
        self.jfd = os.open(self.journal, os.O_WRONLY | os.O_CREAT | os.O_APPEND) if self.n > 1 else None
        if done:  # ranges a killed run finished are already there
            progress.skip(sum(self._span(i)[1] - self._span(i)[0] + 1 for i in done))
        if not self.remaining:
            self._finish()

    def _read_journal(self) -> set[int]:
        try:
            return {int(x) for x in self.journal.read_text().split() if x.isdigit() and int(x) < self.n}
        except OSError:
            return set()

    def todo(self) -> list[int]:
        return sorted(self.remaining)

    def _span(self, i: int) -> tuple[int, int]:
        return i * self.src.chunk, min((i + 1) * self.src.chunk, self.f.size) - 1

    def get_range(self, i: int) -> None:
        start, end = self._span(i)
        pos, attempt = start, 0
        while pos <= end:
            try:
                match = {"IfMatch": self.etag} if self.etag else {}
                body = self.src.client.get_object(Bucket=self.src.bucket, Key=self.key,
                                                  Range=f"bytes={pos}-{end}", **match)["Body"]
                for piece in body.iter_chunks(PIECE):
                    os.pwrite(self.fd, piece, pos)
                    pos += len(piece)
                    self.progress.advance(len(piece))
                if pos <= end:
                    raise ConnectionError("short read")
            except Exception as exc:  # noqa: BLE001
                if not _retryable(exc):
                    raise
                attempt += 1
                if attempt >= retries():
                    raise DownloadError("ConnectionDropped", f"{self.src.uri}: {self.f.path}: connection dropped "
                                        f"after {attempt} attempts, {pos - start} bytes into the range at "
                                        f"byte {start} of {self.f.size}") from None
                backoff(attempt)
        with self.lock:
            if self.jfd is not None:
                os.write(self.jfd, f"{i}\n".encode())
            self.remaining.discard(i)
            if not self.remaining:
                self._finish()

    def _finish(self) -> None:
        os.fsync(self.fd)
        os.close(self.fd)
        self.fd = None
        self._check_etag()
        os.replace(self.part, self.final)
        if self.jfd is not None:
            os.close(self.jfd)
            self.jfd = None
        self.journal.unlink(missing_ok=True)

    def _check_etag(self) -> None:
        """A single-part object's ETag is the MD5 of its bytes: checked when no SHA-256 is published."""
        etag = (self.etag or "").strip('"')
        if self.f.sha256 or not re.fullmatch(r"[0-9a-f]{32}", etag):
            return  # multipart ETags ("...-N") and SSE-KMS ones are not an MD5 of the content
        h = hashlib.md5(usedforsecurity=False)
        with open(self.part, "rb") as fh:
            while chunk := fh.read(8 << 20):
                h.update(chunk)
        if h.hexdigest() != etag:
            self.part.unlink(missing_ok=True)
            self.journal.unlink(missing_ok=True)
            raise DownloadError("ChecksumMismatch", f"{self.src.uri}: {self.f.path}: MD5 {h.hexdigest()} does not match "
                                f"the object's ETag {etag}; the partial file was removed, run again")

    def close(self) -> None:
        for fd in (self.fd, self.jfd):
            if fd is not None:
                os.close(fd)
        self.fd = self.jfd = None


def _retryable(exc: BaseException) -> bool:
    from botocore import exceptions as bx
    from urllib3.exceptions import HTTPError as Urllib3Error

    return isinstance(exc, (ConnectionError, bx.ConnectionError, bx.ResponseStreamingError,
                            bx.IncompleteReadError, bx.ReadTimeoutError, Urllib3Error))
