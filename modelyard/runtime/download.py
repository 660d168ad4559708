"""`modelyard download`: plan first, then fetch, verify and record — resumable and idempotent.

Layout of DEST while a download runs::

    DEST/.partial/<owner>/                 this pod's partial files and the sources' own bookkeeping
    DEST/.partial/<owner>/installed.jsonl  files already verified and moved into place, with the revision
    DEST.lease                             who downloads into DEST now, with a heartbeat (runtime/lease.py)
    DEST/<files>                   each file appears only once complete and verified
    DEST/modelyard-manifest.json   written last (atomic rename): the download is done

A re-run after a kill fetches only what is missing; a run that finds a complete manifest for the
same source, revision and include patterns returns at once ("already downloaded"). Before any
weight byte moves, ``config.json`` (and ``model.safetensors.index.json``) are fetched and the
planner decides whether the model fits; if not (and enforcement is on) nothing else is fetched.
"""
from __future__ import annotations

import datetime as _dt
import errno
import fnmatch
import hashlib
import json
import os
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from modelyard.uri import scrub
from modelyard.runtime.errors import DownloadError
from modelyard.runtime.lease import Lease, owner_id, stale_seconds
from modelyard.runtime.progress import Progress, human_bytes
from modelyard.runtime.sources import RemoteFile, open_source, redact

MANIFEST = "modelyard-manifest.json"
PARTIAL = ".partial"
LEDGER = "installed.jsonl"
PLAN_FILES = ("config.json", "model.safetensors.index.json")


@dataclass
class Request:
    source: str
    dest: Path
    revision: str | None = None
    include: list[str] = field(default_factory=list)
    plan_args: dict | None = field(default_factory=dict)  # None: do not plan
    enforce_plan: bool = True


@dataclass
class Result:
    resolved_revision: str
    files: list[RemoteFile]
    plan: dict | None = None
    already: bool = False

    @property
    def bytes(self) -> int:
        return sum(f.size or 0 for f in self.files)

    def termination_message(self) -> dict:
        return {"resolvedRevision": self.resolved_revision, "plan": self.plan,
                "files": len(self.files), "bytes": self.bytes}


def download(req: Request, stream=None) -> Result:
    stream = stream if stream is not None else sys.stderr
    dest = Path(req.dest)
    try:
        dest.mkdir(parents=True, exist_ok=True)
        done = _already_done(req, dest, stream)
        if done is not None:
            return done
        # one writer per cache folder: another pod downloading the same bytes is waited for
        with Lease(dest.parent / f"{dest.name}.lease", on_wait=lambda held: _waiting(stream, held, dest)):
            done = _already_done(req, dest, stream)  # the pod we waited for finished it
            if done is not None:
                return done
            return _run(req, dest, stream)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise DownloadError("DiskFull", f"no space left on the volume holding {dest} "
                                f"({human_bytes(shutil.disk_usage(dest).free)} free); "
                                "give the cache volume more room") from None
        raise


def _run(req: Request, dest: Path, stream) -> Result:
    src = open_source(req.source, req.revision)
    resolved = src.resolve()
    listing = src.list_files()
    archive = getattr(src, "archive", None)  # --include then applies to the archive's members
    files = listing if archive else [f for f in listing if _included(f.path, req.include)]
    if not files:
        raise DownloadError("InvalidSource", f"{redact(req.source)}: no files match --include "
                            f"{' '.join(req.include)}; the source has: {_names(listing)}")
    if src.local_path is not None and _same_dir(src.local_path, dest):
        log(stream, f"{dest} is the source folder itself: nothing to copy")
        plan = _plan(dest, req, stream)
        return _finish(req, dest, Result(resolved, files, plan))
    staging = _staging(dest, resolved)
    ledger = _Ledger(staging / LEDGER, resolved, _manifest_files(dest, redact(req.source), resolved))
    # plan before a single weight byte moves: the config (and index) come first
    first = [f for f in listing if f.path in PLAN_FILES] if req.plan_args is not None else []
    rest = [f for f in files if f not in first]
    todo = [f for f in first + rest if not ledger.has(f, dest)]
    if getattr(src, "needs_space", lambda _dest: True)(dest):
        _check_space(todo, dest, staging)
    total = sum(f.size for f in todo) if all(f.size is not None for f in todo) else None
    with Progress(total, step="download", stream=stream) as progress:
        installed = _install(src, first, dest, staging, ledger, progress)
        plan = _plan(dest, req, stream) if not archive else None
        installed += _install(src, rest, dest, staging, ledger, progress, req.include)
    if archive and not installed:
        raise DownloadError("InvalidSource", f"{redact(req.source)}: no archive member matches --include "
                            f"{' '.join(req.include)}")
    if archive:  # the config was inside: plan now, to record it (and to fail before serving)
        plan = _plan(dest, req, stream)
    return _finish(req, dest, Result(resolved, installed, plan))


def _install(src, files: list[RemoteFile], dest: Path, staging: Path, ledger, progress,
             include: list[str] = ()) -> list[RemoteFile]:
    """Fetch what is not yet in place, verify it, move it into ``dest``; return what is there."""
    todo = [f for f in files if not ledger.has(f, dest)]
    fetch = [f for f in todo if not _staged_complete(staging, f)]  # finished before a kill
    progress.skip(sum(f.size for f in todo if f not in fetch))
    if fetch:
        try:
            src.fetch(fetch, staging, progress)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            need = sum(f.size or 0 for f in todo)
            raise DownloadError("DiskFull", f"{dest}: no space left while writing; this step needs "
                                f"{human_bytes(need)} ({need} bytes), {human_bytes(shutil.disk_usage(dest).free)} "
                                "is free now; give the cache volume more room") from None
    out = [f for f in files if f not in todo]
    with ThreadPoolExecutor(min(4, os.cpu_count() or 1)) as pool:  # sha256 of big files, in parallel
        verified = list(pool.map(lambda f: _verify(staging / f.path, f), todo))
    for f, got in zip(todo, verified):
        staged = staging / f.path
        members = src.unpack(staged, staging) if hasattr(src, "unpack") else None
        if members is not None:
            members = [m for m in members if _included(m.path, list(include))]
        for m in (members if members is not None else [got]):
            origin = staging / ".unpack" / m.path if members is not None else staged
            target = dest / m.path
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(origin, target)
            ledger.add(m)
            out.append(m)
        if members is not None:
            staged.unlink()
    return out


def _staging(dest: Path, resolved: str) -> Path:
    """``DEST/.partial/<owner>``: this pod's own staging folder. Called under the folder's lease, so
    the staging a killed pod left for this revision is adopted (resumed); other revisions' go."""
    mine = dest / PARTIAL / owner_id()
    mine.parent.mkdir(parents=True, exist_ok=True)
    others = [p for p in mine.parent.iterdir() if p.is_dir() and p != mine]
    if not _same_revision(mine, resolved):
        shutil.rmtree(mine, ignore_errors=True)
        usable = sorted((p for p in others if _same_revision(p, resolved)), key=lambda p: p.stat().st_mtime)
        if usable:
            os.rename(usable[-1], mine)  # resume what the pod before us (killed, stale lease) fetched
            others.remove(usable[-1])
    for p in others:  # their owners lost the lease we hold: nobody writes there any more
        shutil.rmtree(p, ignore_errors=True)
    for p in mine.parent.iterdir():  # files of the single-folder layout of earlier versions
        if not p.is_dir():
            p.unlink(missing_ok=True)
    mine.mkdir(exist_ok=True)
    (mine / "revision").write_text(resolved)
    return mine


def _same_revision(staging: Path, resolved: str) -> bool:
    marker = staging / "revision"
    return marker.is_file() and marker.read_text() == resolved


def _waiting(stream, held: dict, dest: Path) -> None:
    """Said once per holder: the operator shows it as WaitingForSharedDownload."""
    stream.write(json.dumps({"event": "waiting", "step": "download", "reason": "WaitingForSharedDownload",
                             "message": f"{held.get('owner') or 'another pod'} is downloading the same bytes into "
                                        f"{dest}; waiting for it (a lease without heartbeat for "
                                        f"{int(stale_seconds())} s is taken over)"}) + "\n")
    stream.flush()


def _staged_complete(staging: Path, f: RemoteFile) -> bool:
    staged = staging / f.path
    return f.size is not None and staged.is_file() and staged.stat().st_size == f.size \
        and not staged.with_name(staged.name + ".chunks").exists()


def _verify(staged: Path, f: RemoteFile) -> RemoteFile:
    if not staged.is_file():
        raise DownloadError("ConnectionDropped", f"{f.path}: the source finished without delivering the file")
    size = staged.stat().st_size
    if f.size is not None and size != f.size:
        staged.unlink()
        raise DownloadError("ChecksumMismatch", f"{f.path}: expected {f.size} bytes, got {size}; "
                            "the partial file was removed, run again")
    if f.sha256:
        got = sha256_file(staged)
        if got != f.sha256.lower():
            staged.unlink()
            raise DownloadError("ChecksumMismatch", f"{f.path}: sha256 expected {f.sha256}, got {got}; "
                                "the file was removed; check that the source publishes the right checksum")
    return RemoteFile(f.path, size, f.sha256)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(8 << 20):
            h.update(chunk)
    return h.hexdigest()


def _check_space(todo: list[RemoteFile], dest: Path, staging: Path) -> None:
    staged = 0
    for root, _dirs, names in os.walk(staging):
        for n in names:
            try:
                staged += os.stat(os.path.join(root, n)).st_blocks * 512
            except OSError:
                pass
    need = sum(f.size or 0 for f in todo) - staged
    free = shutil.disk_usage(dest).free
    if need > free:
        raise DownloadError("DiskFull", f"{dest}: needs {human_bytes(need)} more ({need} bytes) but only "
                            f"{human_bytes(free)} ({free} bytes) is free; give the cache volume more room")


def _plan(dest: Path, req: Request, stream) -> dict | None:
    if req.plan_args is None:
        return None
    config = dest / "config.json"
    if not config.is_file():
        kind = "an adapter (adapter_config.json)" if (dest / "adapter_config.json").is_file() else "no config.json"
        log(stream, f"plan skipped: {kind} in the source")
        return None
    try:
        from modelyard.planner import plan as make_plan
    except ImportError as exc:
        log(stream, f"plan skipped: planner unavailable ({exc})")
        return None
    index_path = dest / "model.safetensors.index.json"
    try:
        index = json.loads(index_path.read_text()) if index_path.is_file() else None
        result = make_plan(json.loads(config.read_text()), index=index, **req.plan_args)
    except (ValueError, KeyError, TypeError) as exc:  # PlanError is a ValueError
        log(stream, f"plan skipped: {exc}")
        return None
    plan = result.to_dict()
    if not result.fits:
        if req.enforce_plan:
            raise DownloadError("DoesNotFit", f"{result.reason} (nothing but the config was downloaded; "
                                "pass --no-enforce-plan to download anyway)", plan=plan)
        log(stream, f"the plan says it does not fit: {result.reason} (downloading anyway)")
    return plan


def _finish(req: Request, dest: Path, result: Result) -> Result:
    manifest = {
        "source": redact(req.source), "revision": req.revision, "include": sorted(req.include),
        "resolvedRevision": result.resolved_revision,
        "files": [{"path": f.path, "size": f.size, **({"sha256": f.sha256} if f.sha256 else {})}
                  for f in sorted(result.files, key=lambda f: f.path)],
        "totalBytes": result.bytes, "plan": result.plan,
        "completedAt": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    # the bytes reach the disk before the manifest says they are complete (a node crash in between
    # leaves no manifest, so the next run checks and fetches again)
    _fsync_files(dest, [f.path for f in result.files])
    tmp = dest / (MANIFEST + ".tmp")
    with open(tmp, "w") as fh:
        fh.write(json.dumps(manifest, indent=2) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, dest / MANIFEST)
    _fsync_dir(dest)
    shutil.rmtree(dest / PARTIAL / owner_id(), ignore_errors=True)  # only our own staging
    try:
        (dest / PARTIAL).rmdir()
    except OSError:  # not empty (another pod's) or already gone
        pass
    return result


def _fsync_files(dest: Path, paths: list[str]) -> None:
    dirs = set()
    for rel in paths:
        target = dest / rel
        fd = os.open(target, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        dirs.add(target.parent)
    for d in dirs:
        _fsync_dir(d)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on a directory
        pass
    finally:
        os.close(fd)


def _already_done(req: Request, dest: Path, stream) -> Result | None:
    m = read_manifest(dest)
    if not m or m.get("source") != redact(req.source) or m.get("revision") != req.revision \
            or m.get("include", []) != sorted(req.include):
        return None
    files = [RemoteFile(f["path"], f["size"], f.get("sha256")) for f in m.get("files", [])]
    if not all((dest / f.path).is_file() and (dest / f.path).stat().st_size == f.size for f in files):
        return None
    plan = _plan(dest, req, stream)
    log(stream, f"already downloaded: {redact(req.source)} at {m['resolvedRevision']} in {dest}")
    return Result(m["resolvedRevision"], files, plan if plan is not None else m.get("plan"), already=True)


def read_manifest(dest: Path) -> dict | None:
    try:
        return json.loads((Path(dest) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def _manifest_files(dest: Path, source: str, resolved: str) -> dict[str, int]:
    m = read_manifest(dest)
    if not m or m.get("source") != source or m.get("resolvedRevision") != resolved:
        return {}
    return {f["path"]: f["size"] for f in m.get("files", [])}


class _Ledger:
    """Files verified and moved into place at this resolved revision (survives a kill)."""

    def __init__(self, path: Path, revision: str, known: dict[str, int]):
        self.path, self.revision, self.known = path, revision, dict(known)
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue  # a line cut by a kill
                if rec.get("revision") == revision:
                    self.known[rec["path"]] = rec["size"]

    def has(self, f: RemoteFile, dest: Path) -> bool:
        target = dest / f.path
        if f.size is None or self.known.get(f.path) != f.size:
            return False
        return target.is_file() and target.stat().st_size == f.size

    def add(self, f: RemoteFile) -> None:
        self.known[f.path] = f.size
        with open(self.path, "a") as fh:
            fh.write(json.dumps({"path": f.path, "size": f.size, "revision": self.revision}) + "\n")


def _included(path: str, patterns: list[str]) -> bool:
    return not patterns or any(fnmatch.fnmatch(path, p) for p in patterns)


def _same_dir(a: Path, b: Path) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def _names(files: list[RemoteFile], limit: int = 8) -> str:
    names = [f.path for f in files[:limit]]
    return ", ".join(names) + (f", ... ({len(files)} files)" if len(files) > limit else "")


def log(stream, message: str) -> None:
    message = scrub(message)
    if getattr(stream, "isatty", lambda: False)():
        stream.write("\r\033[K" + message + "\n")  # over a half-drawn progress bar
    else:
        stream.write(json.dumps({"event": "log", "step": "download", "message": message}) + "\n")
    stream.flush()
