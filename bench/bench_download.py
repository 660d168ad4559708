"""Download throughput: `modelyard download` vs the plain library call, same servers, same run.

- S3 (SeaweedFS `weed mini`): ours (parallel ranged GETs over all files) vs boto3
  ``download_file`` called per object (s3transfer's own multipart threads, one object at a time).
- Hub (olah serving a local git repo): ours vs ``huggingface_hub.snapshot_download`` alone.

The model is random safetensors-sized shards plus a config (``BENCH_DOWNLOAD_MB``, default
1024 MB, in ``BENCH_DOWNLOAD_SHARDS`` shards; ``BENCH_DOWNLOAD_HF_MB`` caps the olah model, which
is served from git objects). Each pair runs ``BENCH_DOWNLOAD_ROUNDS`` times alternating order;
the best time of each counts. Ours includes listing, revision resolution, verification,
manifest and the final moves.
"""
from __future__ import annotations

import io
import os
import resource
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

MB = 1 << 20


def _make_model(path: Path, total: int, shards: int) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text('{"model_type": "llama"}\n')
    per = total // shards
    for i in range(shards):
        with open(path / f"model-{i + 1:05d}-of-{shards:05d}.safetensors", "wb") as fh:
            for _ in range(per // (16 * MB)):
                fh.write(os.urandom(16 * MB))
            fh.write(os.urandom(per % (16 * MB)))
    return path


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and ".cache" not in p.parts
               and p.name != "modelyard-manifest.json")


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)  # all threads of this process, not the servers
    return r.ru_utime + r.ru_stime


def _timed(fn, dest: Path) -> tuple[float, float, int]:
    shutil.rmtree(dest, ignore_errors=True)
    os.sync()  # the previous run's dirty pages are written back before this run's clock starts
    t, c = time.perf_counter(), _cpu()
    fn(dest)
    elapsed, cpu = time.perf_counter() - t, _cpu() - c
    size = _size(dest)
    shutil.rmtree(dest, ignore_errors=True)
    return elapsed, cpu, size


def _pair(ours, baseline, work: Path, rounds: int) -> tuple[float, float, float, float, int]:
    """Best wall time and least CPU time of each, over alternating rounds."""
    best = {"ours": [float("inf")] * 2, "base": [float("inf")] * 2}
    size = 0
    for r in range(rounds):
        order = [("ours", ours), ("base", baseline)] if r % 2 == 0 else [("base", baseline), ("ours", ours)]
        for name, fn in order:
            elapsed, cpu, size = _timed(fn, work / f"dest-{name}")
            best[name] = [min(best[name][0], elapsed), min(best[name][1], cpu)]
    return best["ours"][0], best["base"][0], best["ours"][1], best["base"][1], size


def _ours(uri: str):
    from modelyard.runtime.download import Request, download

    return lambda dest: download(Request(source=uri, dest=dest, plan_args=None), stream=io.StringIO())


def _bench_s3(models: list[Path], work: Path, rounds: int) -> list[tuple]:
    from tests.runtime.servers import start_seaweedfs

    with start_seaweedfs(work / "weed") as s3:
        os.environ.update(s3.env())
        rows = []
        for model in models:
            s3.upload_folder(model, "bench", model.name)

            def boto3_per_object(dest: Path, prefix=model.name):  # starts from nothing, like ours
                client = s3.client()
                pages = client.get_paginator("list_objects_v2").paginate(Bucket="bench", Prefix=prefix + "/")
                for key in [o["Key"] for page in pages for o in page["Contents"]]:
                    target = dest / key.split("/", 1)[1]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    client.download_file("bench", key, str(target))
            rows.append(_pair(_ours(f"s3://bench/{model.name}"), boto3_per_object, work, rounds))
        return rows


def _bench_hf(model: Path, work: Path, rounds: int) -> tuple[float, float, int]:
    from huggingface_hub import snapshot_download

    from tests.runtime.servers import commit_folder, start_olah

    with start_olah(work / "olah") as hub:
        repo = hub.repo_dir("bench/model")
        shutil.copytree(model, repo)
        for args in (["init", "-q", "-b", "main"], ["config", "core.compression", "0"]):
            subprocess.run(["git", "-C", str(repo), *args], check=True)  # random bytes do not compress
        commit_folder(repo, "bench model")
        os.environ["HF_ENDPOINT"] = hub.endpoint
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"

        def snapshot(dest: Path):
            snapshot_download("bench/model", revision="main", local_dir=str(dest), endpoint=hub.endpoint)
        return _pair(_ours("hf://bench/model"), snapshot, work, rounds)


def _row(name: str, base: str, ours: float, baseline: float, cpu: float, cpu_base: float, size: int) -> str:
    mbps = lambda s: size / MB / s  # noqa: E731
    per_gb = lambda c: c / (size / (1 << 30))  # noqa: E731
    return (f"| {name} | {size / MB:.0f} MB | {mbps(ours):.0f} MB/s | {base} | {mbps(baseline):.0f} MB/s "
            f"| **{baseline / ours:.2f}×** | {per_gb(cpu):.1f} s vs {per_gb(cpu_base):.1f} s |")


def run() -> str:
    total = int(os.environ.get("BENCH_DOWNLOAD_MB", "1024")) * MB
    hf_total = min(total, int(os.environ.get("BENCH_DOWNLOAD_HF_MB", "256")) * MB)
    shards = int(os.environ.get("BENCH_DOWNLOAD_SHARDS", "4"))
    rounds = int(os.environ.get("BENCH_DOWNLOAD_ROUNDS", "5"))
    saved = dict(os.environ)
    work = Path(tempfile.mkdtemp(prefix="bench-download-"))
    try:
        many = int(os.environ.get("BENCH_DOWNLOAD_MANY_SHARDS", "64"))
        s3_rows = _bench_s3([_make_model(work / "model", total, shards),
                             _make_model(work / "model-many", total, many)], work, rounds)
        shutil.rmtree(work / "model-many")
        hf_model = work / "model" if hf_total == total else _make_model(work / "model-hf", hf_total, shards)
        hf_row = _bench_hf(hf_model, work, max(1, rounds - 2))  # olah is slow: fewer rounds
    finally:
        os.environ.clear()
        os.environ.update(saved)
        shutil.rmtree(work, ignore_errors=True)
    return "\n".join([
        "## download",
        "",
        f"`modelyard download` vs the plain library call on the same local server, best of {rounds} "
        f"(s3) / {max(1, rounds - 2)} (hf) alternating rounds, dirty pages written back (`sync`) before each; a random model of {shards} shards + config.json. Ratio = baseline time / "
        "our time (≥ 1.0 means we are at least as fast). Ours includes revision resolution, listing, "
        "size/sha256 checks, the moves out of `.partial/` and the manifest.",
        "",
        "| source | model | modelyard | baseline | baseline speed | ratio | client CPU per GB (ours vs baseline) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        _row(f"s3:// (SeaweedFS), {shards} shards", "boto3 `download_file` per object", *s3_rows[0]),
        _row(f"s3:// (SeaweedFS), {many} shards", "boto3 `download_file` per object", *s3_rows[1]),
        _row("hf:// (olah mirror)", "`snapshot_download`", *hf_row),
        "",
        "Both servers run on the same 2-core machine as the client (and as other work), so wall-clock "
        "numbers are noisy and measure client overhead and parallelism more than network speed; the "
        "CPU column (this process only, all threads) is the steadier comparison.",
        f"The hf:// model is {hf_total // MB} MB, not 1 GB: olah serves file bytes out of git objects "
        "on a single worker at ~13 MB/s here, and with 256 MB shards its responses stall past "
        "huggingface_hub's read timeout (both clients then retry and crawl), so a ~1 GB model through "
        "olah is not a usable measurement on this machine.",
    ])
