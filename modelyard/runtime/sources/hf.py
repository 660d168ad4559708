"""``hf://org/repo``: the Hugging Face Hub (or a mirror at ``HF_ENDPOINT``) via ``huggingface_hub``.

The revision (branch, tag or commit; default ``main``) is resolved to its commit hash with
``HfApi().model_info`` and every file is then fetched at that hash, so a branch that moves during
the download cannot mix two commits. Sizes and LFS sha256 come from ``files_metadata=True``
(``get_paths_info`` fills sizes a mirror leaves out). ``snapshot_download`` moves the bytes (it
uses hf-xet / hf-transfer when installed) into the staging folder, where its own
``.cache/huggingface`` bookkeeping lets a killed run resume.

Error mapping: the Hub answers 404 ``RepositoryNotFound`` for a missing *or private* repository
and ``RevisionNotFound`` for a missing revision. Some mirrors (olah) answer RepositoryNotFound for
both; when that happens for a non-default revision we ask again for ``main``: if the repository
answers, the revision is what is missing.
"""
from __future__ import annotations

import glob
import os
import threading
from pathlib import Path

from modelyard.runtime.errors import DownloadError
from modelyard.runtime.sources import RemoteFile, check_relpath

TOKEN_HINT = "check the token in the Model's secretRef (key HF_TOKEN)"


def open_source(uri: str, revision: str | None):
    repo = uri[len("hf://"):].strip("/")
    parts = repo.split("/")
    if not repo or len(parts) > 2 or not all(parts):
        raise DownloadError("InvalidSource", f"source {uri!r}: expected hf://<org>/<repo>")
    return HfSource(uri, repo, revision or "main")


class HfSource:
    local_path = None

    def __init__(self, uri: str, repo: str, revision: str):
        from huggingface_hub import HfApi

        self.uri, self.repo, self.revision = uri, repo, revision
        # HF_ENDPOINT is read here, not at huggingface_hub's import time (another import may have
        # loaded it before the environment was set).
        self.endpoint = os.environ.get("HF_ENDPOINT") or None
        self.token = os.environ.get("HF_TOKEN") or None
        self.api = HfApi(endpoint=self.endpoint, token=self.token)
        self.sha: str | None = None
        self._info = None

    def resolve(self) -> str:
        try:
            self._info = self.api.model_info(self.repo, revision=self.revision, files_metadata=True)
        except Exception as exc:  # noqa: BLE001 - mapped to a reason below
            raise self._map(exc) from None
        self.sha = self._info.sha
        return self.sha

    def list_files(self) -> list[RemoteFile]:
        if self._info is None:
            self.resolve()
        sizes = {s.rfilename: s.size for s in self._info.siblings}
        shas = {s.rfilename: (s.lfs.sha256 if s.lfs else None) for s in self._info.siblings}
        missing = [p for p, size in sizes.items() if size is None]
        if missing:
            try:
                for info in self.api.get_paths_info(self.repo, missing, revision=self.sha):
                    sizes[info.path] = info.size
                    if getattr(info, "lfs", None):
                        shas[info.path] = info.lfs.sha256
            except Exception as exc:  # noqa: BLE001
                raise self._map(exc) from None
        return [RemoteFile(check_relpath(p, self.uri), sizes[p], shas.get(p)) for p in sorted(sizes)]

    def fetch(self, files: list[RemoteFile], staging: Path, progress) -> None:
        from huggingface_hub import snapshot_download
        from huggingface_hub.utils import disable_progress_bars

        if not files:
            return
        disable_progress_bars()  # our Progress reports bytes; tqdm bars would clutter the pod log
        watcher = _StagingWatcher(staging, progress)
        watcher.start()
        try:
            snapshot_download(self.repo, revision=self.sha, local_dir=str(staging), endpoint=self.endpoint,
                              token=self.token, allow_patterns=[glob.escape(f.path) for f in files],
                              max_workers=int(os.environ.get("MODELYARD_HF_WORKERS", "8")))
        except OSError as exc:
            if _is_transport(exc):
                raise DownloadError("ConnectionDropped", f"{self.uri}: connection lost while downloading "
                                    f"({watcher.bytes_seen()} bytes received this run): {exc}") from None
            raise
        except Exception as exc:  # noqa: BLE001
            raise self._map(exc) from None
        finally:
            watcher.stop()

    def _map(self, exc: Exception) -> Exception:
        from huggingface_hub.errors import (EntryNotFoundError, GatedRepoError, HfHubHTTPError,
                                            RepositoryNotFoundError, RevisionNotFoundError)

        status = getattr(getattr(exc, "response", None), "status_code", None)
        if isinstance(exc, GatedRepoError) or (isinstance(exc, HfHubHTTPError) and status == 403):
            return DownloadError("Unauthorized", f"{self.uri}: access denied (HTTP {status}); {TOKEN_HINT}, "
                                 "and that its account has accepted the repository's terms")
        if isinstance(exc, RevisionNotFoundError):
            return self._revision_missing()
        if isinstance(exc, RepositoryNotFoundError):
            if self.revision != "main" and self._repo_exists():
                return self._revision_missing()
            hint = TOKEN_HINT if self.token else "if it is private, set HF_TOKEN in the Model's secretRef"
            return DownloadError("RepositoryNotFound", f"{self.uri}: repository not found at "
                                 f"{self.endpoint or 'https://huggingface.co'}; check the name ({hint})")
        if isinstance(exc, EntryNotFoundError):
            return DownloadError("RepositoryNotFound", f"{self.uri}@{self.revision}: a listed file is missing: {exc}")
        if isinstance(exc, HfHubHTTPError) and status == 401:
            return DownloadError("Unauthorized", f"{self.uri}: authentication failed (HTTP 401); {TOKEN_HINT}")
        if _is_transport(exc):
            return DownloadError("ConnectionDropped", f"{self.uri}: connection to "
                                 f"{self.endpoint or 'https://huggingface.co'} failed: {exc}")
        return exc

    def _repo_exists(self) -> bool:
        try:
            self.api.model_info(self.repo, revision="main")
        except Exception:  # noqa: BLE001
            return False
        return True

    def _revision_missing(self) -> DownloadError:
        return DownloadError("RevisionNotFound", f"{self.uri}: revision {self.revision!r} not found; "
                             "use a branch, a tag or a full commit hash that exists in the repository")


def _is_transport(exc: BaseException) -> bool:
    import httpx

    return isinstance(exc, (httpx.TransportError, ConnectionError))


class _StagingWatcher:
    """Reports bytes landing under the staging folder (snapshot_download has no byte callback)."""

    def __init__(self, staging: Path, progress, period: float = 0.5):
        self.staging, self.progress, self.period = Path(staging), progress, period
        self._base = self._last = self._sum()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _sum(self) -> int:
        total = 0
        for root, _dirs, names in os.walk(self.staging):
            in_cache = ".cache" in Path(root).relative_to(self.staging).parts
            for n in names:
                if in_cache and not n.endswith(".incomplete"):
                    continue  # huggingface_hub's own bookkeeping
                try:
                    total += os.stat(os.path.join(root, n)).st_size
                except OSError:
                    pass
        return total

    def _tick(self) -> None:
        now = self._sum()
        if now > self._last:
            self.progress.advance(now - self._last)
            self._last = now

    def _loop(self) -> None:
        while not self._stop.wait(self.period):
            self._tick()

    def start(self) -> None:
        self._thread.start()

    def bytes_seen(self) -> int:
        return self._last - self._base

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._tick()
