"""Credentials never leave Secrets: a token planted in a presigned URL (query string and userinfo)
is looked for in every place modelyard writes — the download step's stdout, stderr, termination
log and manifest (real `modelyard download` against a real HTTP server), and the operator's Job,
status, Events, logs and metrics (the real operator against the emulator)."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import prometheus_client
import pytest

from tests.integration.play import PLAN, condition, finish_job, model
from tests.k8s.operator_thread import run_operator
from tests.runtime.servers import free_port, start_http

TOKEN, USER_TOKEN = "PLANTEDsig7f3a9", "PLANTEDuser2c41"
MODELYARD = Path(sys.executable).parent / "modelyard"


@pytest.fixture(scope="module")
def operator(k8s_server):
    with run_operator(k8s_server[1]):
        yield


@pytest.fixture(scope="module")
def http(tmp_path_factory):
    root = tmp_path_factory.mktemp("http")
    (root / "config.json").write_text('{"model_type": "llama"}')
    with start_http(root) as server:
        yield server


def _presigned(base: str, path: str) -> str:
    host = base.split("://", 1)[1]
    return f"http://{USER_TOKEN}@{host}{path}?X-Amz-Signature={TOKEN}&X-Amz-Credential={TOKEN}"


def _download(uri: str, dest: Path, term: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "MODELYARD_SOURCE_URI": uri, "MODELYARD_DOWNLOAD_RETRIES": "1"}
    return subprocess.run([str(MODELYARD), "download", "--source-env", "MODELYARD_SOURCE_URI", "--dest", str(dest),
                           "--no-plan", "--termination-log", str(term)], env=env, capture_output=True, text=True, timeout=60)


def _no_token(where: str, text: str) -> None:
    assert TOKEN not in text and USER_TOKEN not in text, f"the planted token leaked into {where}: {text[:2000]}"


def test_the_download_step_writes_no_credential(http, tmp_path):
    """Success, refusal (403) and a dead host: stdout, stderr, termination log and manifest."""
    ok = _download(_presigned(http.url, "/config.json"), tmp_path / "ok", tmp_path / "ok.term")
    assert ok.returncode == 0, ok.stderr
    manifest = (tmp_path / "ok" / "modelyard-manifest.json").read_text()
    assert json.loads(manifest)["source"].endswith("/config.json?<redacted>")
    for where, text in [("stdout", ok.stdout), ("stderr", ok.stderr), ("manifest", manifest),
                        ("termination log", (tmp_path / "ok.term").read_text())]:
        _no_token(where, text)

    http.state.status["/config.json"] = 403
    denied = _download(_presigned(http.url, "/config.json"), tmp_path / "no", tmp_path / "no.term")
    http.state.status.clear()
    dead = _download(_presigned(f"http://127.0.0.1:{free_port()}", "/config.json"), tmp_path / "dead", tmp_path / "dead.term")
    for run, reason, term in [(denied, "Unauthorized", tmp_path / "no.term"), (dead, "ConnectionDropped", tmp_path / "dead.term")]:
        assert run.returncode == 1
        message = json.loads(term.read_text())
        assert message["error"]["reason"] == reason, message
        assert "<redacted>" in message["error"]["message"]  # the URI is named, its secret parts are not
        for where, text in [("stdout", run.stdout), ("stderr", run.stderr), ("termination log", term.read_text())]:
            _no_token(where, text)


def test_the_operator_writes_no_credential(k8s, namespace, operator, http, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    uri = _presigned(http.url, "/config.json")
    k8s.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "presigned", "namespace": namespace},
                "stringData": {"url": uri}})
    source = {"uriFrom": {"secretKeyRef": {"name": "presigned", "key": "url"}}}
    k8s.create(model("signed", namespace, source=source))
    job = k8s.wait_for(lambda: k8s.get("Job", namespace, "signed-download"), message="download Job")
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][:3] == ["download", "--source-env", "MODELYARD_SOURCE_URI"]
    assert {"name": "MODELYARD_SOURCE_URI", "valueFrom": {"secretKeyRef": {"name": "presigned", "key": "url"}}} in container["env"]
    k8s.wait_for(lambda: "Secret 'presigned'" in condition(k8s.get("Model", namespace, "signed"), "Downloaded").get("message", ""),
                 message="the Downloaded message names the Secret, not the URI")

    # the real step fails on the real server; its termination message goes to the Model
    http.state.status["/config.json"] = 403
    run = _download(uri, tmp_path / "d", tmp_path / "term")
    http.state.status.clear()
    finish_job(k8s, job, "download", json.loads((tmp_path / "term").read_text()), ok=False)
    k8s.wait_for(lambda: condition(k8s.get("Model", namespace, "signed"), "Degraded").get("reason") == "Unauthorized",
                 message="Degraded=Unauthorized")
    assert run.returncode == 1

    written = {
        "Model": k8s.get("Model", namespace, "signed"),
        "Jobs": k8s.list("Job", namespace),
        "Events": k8s.list("Event", namespace),
        "Deployments": k8s.list("Deployment", namespace),
        "ConfigMaps": k8s.list("ConfigMap", namespace),
    }
    for where, obj in written.items():
        _no_token(where, json.dumps(obj))
    _no_token("operator logs", "\n".join(r.getMessage() for r in caplog.records))
    _no_token("metrics", prometheus_client.generate_latest().decode())


def test_a_credential_uri_is_refused_by_the_api_server(k8s, namespace):
    for uri, word in [(f"https://{USER_TOKEN}@host/m.tar", "secretRef"), (f"https://host/m.tar?sig={TOKEN}", "uriFrom")]:
        with pytest.raises(Exception) as exc:
            k8s.create(model("bad", namespace, source={"uri": uri}))
        assert "spec.source.uri" in str(exc.value) and word in str(exc.value), str(exc.value)
