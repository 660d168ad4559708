"""``pvc://claim/path`` and ``file:///abs/path``: a folder (or one file) already on this machine.

Inside a pod a claim is mounted at ``/mnt/pvc/<claim>`` (``MODELYARD_PVC_ROOT`` changes the
root). Files are hard-linked when source and destination share a filesystem (no bytes move)
and copied otherwise. When the destination *is* the source folder nothing is copied: the
orchestrator only writes the manifest. The resolved revision is a digest of paths, sizes and
modification times.
"""
from __future__ import annotations

import errno
import hashlib
import os
import shutil
from pathlib import Path
from urllib.parse import unquote, urlsplit

from modelyard.runtime.errors import DownloadError
from modelyard.runtime.sources import RemoteFile

SKIP = {".partial", "modelyard-manifest.json"}  # a modelyard download used as a source


def open_source(uri: str, revision: str | None):
    parts = urlsplit(uri)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise DownloadError("InvalidSource", f"source {uri!r}: expected file:///absolute/path")
        path = Path(unquote(parts.path))
    else:
        if not parts.netloc:
            raise DownloadError("InvalidSource", f"source {uri!r}: expected pvc://<claim>/<path>")
        root = Path(os.environ.get("MODELYARD_PVC_ROOT", "/mnt/pvc"))
        path = root / parts.netloc / unquote(parts.path).lstrip("/")
        if ".." in Path(unquote(parts.path)).parts:
            raise DownloadError("InvalidSource", f"source {uri!r}: '..' is not allowed in the path")
    if not path.exists():
        where = "" if parts.scheme == "file" else f" (is claim {parts.netloc!r} mounted at {path.parent}?)"
        raise DownloadError("RepositoryNotFound", f"{uri}: {path} does not exist{where}")
    return LocalSource(uri, path)


class LocalSource:
    def __init__(self, uri: str, path: Path):
        self.uri, self.path = uri, path
        self.local_path = path if path.is_dir() else None
        self._files: dict[str, Path] | None = None

    def _scan(self) -> dict[str, Path]:
        if self._files is None:
            if self.path.is_file():
                self._files = {self.path.name: self.path}
            else:
                self._files = {}
                top = self.path.resolve()
                for root, dirs, names in os.walk(self.path):
                    dirs[:] = sorted(d for d in dirs if d not in SKIP)
                    for n in sorted(names):
                        p = Path(root, n)
                        rel = p.relative_to(self.path).as_posix()
                        if rel not in SKIP and p.is_file():
                            self._files[rel] = self._inside(p, rel, top)
        return self._files

    def _inside(self, p: Path, rel: str, top: Path) -> Path:
        """A symlink is followed only while it stays inside the source folder."""
        if not p.is_symlink():
            return p
        target = p.resolve()
        if top != target and top not in target.parents:
            raise DownloadError("InvalidSource", f"{self.uri}: {rel} is a symlink to {target}, outside the source folder "
                                f"{self.path}; nothing was copied (copy the file into the folder instead)")
        return target

    def needs_space(self, dest: Path) -> bool:
        """Hard links take no room: only a copy to another filesystem needs free space."""
        return os.stat(self.path).st_dev != os.stat(dest).st_dev

    def resolve(self) -> str:
        h = hashlib.sha256()
        for rel, p in sorted(self._scan().items()):
            st = p.stat()
            h.update(f"{rel} {st.st_size} {st.st_mtime_ns}\n".encode())
        return "local:" + h.hexdigest()

    def list_files(self) -> list[RemoteFile]:
        return [RemoteFile(rel, p.stat().st_size) for rel, p in sorted(self._scan().items())]

    def fetch(self, files: list[RemoteFile], staging: Path, progress) -> None:
        for f in files:
            src, dst = self._scan()[f.path], Path(staging) / f.path
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.unlink(missing_ok=True)
            try:
                os.link(src, dst)  # same filesystem: no bytes move
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                    raise
                _copy(src, dst, progress)
                continue
            progress.advance(f.size)


def _copy(src: Path, dst: Path, progress) -> None:
    part = dst.with_name(dst.name + ".incomplete")
    fast = hasattr(os, "copy_file_range")
    with open(src, "rb") as fin, open(part, "wb") as fout:
        while True:
            if fast:
                try:
                    n = os.copy_file_range(fin.fileno(), fout.fileno(), 16 << 20)
                except OSError as exc:
                    if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                        raise
                    fast = False
                    continue
            else:
                chunk = fin.read(16 << 20)
                n = len(chunk)
                fout.write(chunk)
            if n == 0:
                break
            progress.advance(n)
    shutil.copystat(src, part)
    os.replace(part, dst)
