"""Held requests and routing decisions, on the event loop without servers: a held request is
released by a replica becoming ready, the queue and the wait are bounded, adapters go only where
they are loaded, and an unknown name lists what exists."""
from __future__ import annotations

import asyncio

import pytest

from modelyard.gateway.errors import GatewayError
from modelyard.gateway.registry import HoldLimits, Registry, Replica, Route
from modelyard.gateway.static import ConfigError, load_routes


def run(coro):
    return asyncio.run(coro)


def test_held_request_is_released_when_a_replica_becomes_ready():
    async def scenario():
        route, woken = Route("m"), []
        task = asyncio.create_task(route.acquire(None, "", HoldLimits(4, 5.0, 3), lambda: woken.append(1)))
        await asyncio.sleep(0.05)
        assert route.held == 1 and woken == [1] and not task.done()
        route.set_replicas([Replica("http://r1", ready=True)])
        addr, waited = await asyncio.wait_for(task, 2)
        return route, addr, waited
    route, addr, waited = run(scenario())
    assert addr == "http://r1" and waited > 0 and route.held == 0 and route.in_flight["http://r1"] == 1


def test_queue_and_wait_are_bounded():
    async def scenario():
        route = Route("m")
        limits = HoldLimits(max_held=1, max_wait_s=0.3, retry_after_s=9)
        first = asyncio.create_task(route.acquire(None, "", limits, lambda: None))
        await asyncio.sleep(0.05)
        with pytest.raises(GatewayError) as full:
            await route.acquire(None, "", limits, lambda: None)
        with pytest.raises(GatewayError) as late:
            await first
        return full.value, late.value, route
    full, late, route = run(scenario())
    assert full.status == late.status == 503 and full.headers == {"Retry-After": "9"}
    assert "1 requests are already waiting" in full.message and "within 0.3s" in late.message
    assert route.held == 0


def test_adapters_go_only_to_replicas_that_loaded_them_and_load_is_released():
    route = Route("m", adapters=("sql",))
    route.set_replicas([Replica("http://a", True, frozenset({"sql"})), Replica("http://b", True)])
    assert {route.pick("sql", "") for _ in range(3)} == {"http://a"}
    assert route.pick(None, "") == "http://b"  # least loaded: a has 3 in flight
    for _ in range(3):
        route.release("http://a")
    assert route.in_flight == {"http://b": 1}


def test_registry_resolves_models_and_adapters_and_lists_names_on_404():
    reg = Registry()
    reg.put(Route("base", adapters=("sql",)))
    reg.put(Route("other"))
    assert reg.resolve("sql")[0].name == "base" and reg.resolve("sql")[1] == "sql"
    assert reg.resolve("other") == (reg.routes["other"], None)
    with pytest.raises(GatewayError) as exc:
        reg.resolve("nope")
    assert exc.value.status == 404 and "base, sql, other" in exc.value.message
    with pytest.raises(GatewayError):
        reg.resolve(["not", "a", "name"])


def test_put_updates_the_live_route_in_place():
    reg = Registry()
    live = reg.put(Route("m"))
    live.held = 2
    again = reg.put(Route("m", adapters=("x",), load_balancing="PrefixHash"))
    assert again is live and live.held == 2 and live.adapters == ("x",) and live.load_balancing == "PrefixHash"


@pytest.mark.parametrize("doc,words", [
    ("models: [{name: Bad_Name, replicas: []}]", "models[0].name"),
    ("models: [{name: m, replicas: [ftp://x]}]", "models[0].replicas"),
    ("models: [{name: m, loadBalancing: Random}]", "LeastLoad, PrefixHash"),
    ("models: [{name: m, replica: []}]", "models[0].replica: unknown field"),
    ("models: [{name: m, apiKeyFile: /nonexistent/keys}]", "models[0].apiKeyFile"),
    ("models: [{name: m, adapters: [a]}, {name: a}]", "used twice"),
    ("routes: []", "must hold `models:`"),
])
def test_routes_file_errors_name_the_field(tmp_path, doc, words):
    path = tmp_path / "routes.yaml"
    path.write_text(doc)
    with pytest.raises(ConfigError) as exc:
        load_routes(path)
    assert words in str(exc.value)
