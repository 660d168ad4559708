"""The node of a multi-node group `modelyard serve --nodes N` runs as, from the LWS environment."""
from __future__ import annotations

import pytest

from modelyard.runtime.engines.vllm_args import ServeConfigError, build_vllm_args
from modelyard.runtime.engines.vllm_group import GroupWatch, group_from_env, node_args

LWS = {"LWS_LEADER_ADDRESS": "big-0.big-0.ml", "LWS_GROUP_SIZE": "3"}


def test_leader_and_workers_from_the_lws_environment():
    leader = group_from_env(3, 8000, {**LWS, "LWS_WORKER_INDEX": "0"})
    assert leader.is_leader and leader.leader_http == "big-0.big-0.ml:8000"
    # LWS names worker pods <lws>-<group>-<index> in the leader's subdomain
    assert leader.workers == ("big-0-1.big-0.ml:8000", "big-0-2.big-0.ml:8000")
    assert node_args(leader, 29501) == ["--distributed-executor-backend", "mp", "--nnodes", "3", "--node-rank", "0",
                                        "--master-addr", "big-0.big-0.ml", "--master-port", "29501"]
    worker = group_from_env(3, 8000, {**LWS, "LWS_WORKER_INDEX": "2"})
    assert not worker.is_leader and node_args(worker)[-1] == "--headless" and "2" in node_args(worker)


def test_local_addresses_override_the_derived_ones():
    env = {"LWS_LEADER_ADDRESS": "127.0.0.1", "LWS_WORKER_INDEX": "1", "LWS_GROUP_SIZE": "2",
           "MODELYARD_GROUP_WORKERS": "127.0.0.1:9001", "MODELYARD_GROUP_LEADER": "127.0.0.1:9000"}
    g = group_from_env(2, 9001, env)
    assert g.workers == ("127.0.0.1:9001",) and g.leader_http == "127.0.0.1:9000"


@pytest.mark.parametrize("env,message", [
    ({}, "--nodes 2 needs LWS_WORKER_INDEX in the environment"),
    ({"LWS_WORKER_INDEX": "x", "LWS_LEADER_ADDRESS": "a"}, "LWS_WORKER_INDEX='x' is not a whole number"),
    ({"LWS_WORKER_INDEX": "2", "LWS_LEADER_ADDRESS": "a"}, "LWS_WORKER_INDEX=2 is outside the group of --nodes 2"),
    ({"LWS_WORKER_INDEX": "1", "LWS_LEADER_ADDRESS": "a", "LWS_GROUP_SIZE": "3"}, "LWS_GROUP_SIZE=3 but --nodes is 2"),
    ({"LWS_WORKER_INDEX": "1"}, "--nodes 2 needs LWS_LEADER_ADDRESS"),
])
def test_a_wrong_environment_says_what_is_missing(env, message):
    with pytest.raises(ServeConfigError, match=message.replace("[", r"\[")):
        group_from_env(2, 8000, env)


def test_worker_probes_and_the_leaders_view_of_them():
    import httpx

    from modelyard.runtime.engines.vllm_group import serve_worker_health
    from tests.runtime.vllm_server import free_port

    port, alive = free_port(), {"vllm": True}
    server = serve_worker_health("127.0.0.1", port, lambda: alive["vllm"], "http://127.0.0.1:1/health")
    try:
        url = f"http://127.0.0.1:{port}"
        assert httpx.get(url + "/live").status_code == 200
        r = httpx.get(url + "/health")  # alive, but the leader is not ready: not ready either
        assert r.status_code == 503 and "waiting for the group" in r.json()["status"]
        assert httpx.get(url + "/v1/models").status_code == 404
        watch = GroupWatch((f"127.0.0.1:{port}",))
        watch.poll()
        assert watch.problem() is None and watch.seen
        alive["vllm"] = False
        assert httpx.get(url + "/live").status_code == 503
        watch.poll()
        assert watch.problem() is None  # one miss is not enough
        watch.poll()
        assert watch.problem() == f"worker 1 (127.0.0.1:{port}) stopped answering; the group must restart"
        never = GroupWatch(("127.0.0.1:1",))
        never.poll(), never.poll(), never.poll()
        assert never.problem() is None  # never seen: still starting (the engine cannot be ready without it)
    finally:
        server.shutdown()


def test_vllm_args_for_a_group(tmp_path):
    (tmp_path / "config.json").write_text('{"torch_dtype": "bfloat16"}')
    cpu = build_vllm_args(tmp_path, served_model_name="m", port=8000, gpus=0, nodes=2)
    assert cpu[cpu.index("--pipeline-parallel-size") + 1] == "2" and "--enforce-eager" not in cpu
    assert cpu[cpu.index("--worker-extension-cls") + 1].endswith("vllm_cpu_pp.PipelineStageBuffers")
    gpu = build_vllm_args(tmp_path, served_model_name="m", port=8000, gpus=16, nodes=2, pipeline_parallel=2)
    assert gpu[gpu.index("--tensor-parallel-size") + 1] == "8" and gpu[gpu.index("--pipeline-parallel-size") + 1] == "2"
    with pytest.raises(ServeConfigError, match="puts a tensor-parallel group across nodes"):
        build_vllm_args(tmp_path, served_model_name="m", port=8000, gpus=16, nodes=4, pipeline_parallel=2)
    with pytest.raises(ServeConfigError, match=r"--nnodes 3 contradicts the spec"):
        build_vllm_args(tmp_path, served_model_name="m", port=8000, gpus=16, nodes=2, pipeline_parallel=2,
                        extra_args=["--nnodes", "3"])


def test_the_cpu_pipeline_fix_names_a_class_that_exists():
    import importlib

    from modelyard.runtime.engines.vllm_args import CPU_PIPELINE_FIX

    module, _, name = CPU_PIPELINE_FIX.rpartition(".")
    assert isinstance(getattr(importlib.import_module(module), name), type)  # vLLM resolves it by name
