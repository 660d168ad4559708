"""Admission to the continuous-batching manager: requests of one adapter run together, another
adapter waits for the running group to drain (and stops it taking newcomers), the static group runs
with the manager paused; switches happen only with nothing running."""
from __future__ import annotations

import asyncio

from modelyard.runtime.engines.accelerate_admit import STATIC, Admission


def _recorder():
    log: list = []
    adm = None

    def switch(old, new):
        assert adm.running == 0, "switched while requests were running"
        log.append(("switch", "static" if old is STATIC else old, "static" if new is STATIC else new))

    adm = Admission(switch)
    return adm, log


async def _req(adm, group, name, log, hold: asyncio.Event):
    async with adm.slot(group):
        log.append(("run", name))
        await hold.wait()
    log.append(("done", name))


def test_one_adapter_batches_together_and_another_waits_for_the_drain():
    async def scenario():
        adm, log = _recorder()
        hold_a, hold_b = asyncio.Event(), asyncio.Event()
        a1 = asyncio.create_task(_req(adm, "sql", "a1", log, hold_a))
        await asyncio.sleep(0)
        b1 = asyncio.create_task(_req(adm, "chat", "b1", log, hold_b))
        await asyncio.sleep(0)
        a2 = asyncio.create_task(_req(adm, "sql", "a2", log, hold_a))  # behind chat: must not jump it
        await asyncio.sleep(0.01)
        assert [e for e in log if e[0] == "run"] == [("run", "a1")] and adm.running == 1
        hold_a.set()
        await asyncio.sleep(0.01)
        hold_b.set()
        await asyncio.gather(a1, b1, a2)
        return log

    log = asyncio.run(scenario())
    runs = [e[1] for e in log if e[0] == "run"]
    assert runs == ["a1", "b1", "a2"]
    assert [e for e in log if e[0] == "switch"] == [("switch", None, "sql"), ("switch", "sql", "chat"),
                                                    ("switch", "chat", "sql")]


def test_queued_requests_of_the_next_group_start_together():
    async def scenario():
        adm, log = _recorder()
        hold = asyncio.Event()
        first = asyncio.create_task(_req(adm, None, "base", log, hold))
        await asyncio.sleep(0)
        others = [asyncio.create_task(_req(adm, "sql", f"s{i}", log, asyncio.Event())) for i in range(3)]
        await asyncio.sleep(0.01)
        hold.set()
        await asyncio.sleep(0.01)
        assert adm.running == 3 and adm.current == "sql"  # all three admitted at the switch
        for t in others:
            t.cancel()
        await asyncio.gather(first, *others, return_exceptions=True)
        assert adm.running == 0  # cancelled holders released their slots
        return log

    log = asyncio.run(scenario())
    assert [e for e in log if e[0] == "switch"] == [("switch", None, "sql")]


def test_static_group_pauses_between_continuous_groups():
    async def scenario():
        adm, log = _recorder()
        hold = asyncio.Event()
        hold.set()
        await asyncio.gather(_req(adm, None, "b", log, hold), _req(adm, STATIC, "st", log, hold),
                             _req(adm, None, "b2", log, hold))
        return log

    log = asyncio.run(scenario())
    assert [e for e in log if e[0] == "switch"] == [("switch", None, "static"), ("switch", "static", None)]
    assert [e[1] for e in log if e[0] == "run"] == ["b", "st", "b2"]


def test_alone_means_one_running_request_and_nobody_waiting():
    async def scenario():
        adm, _ = _recorder()
        hold, log = asyncio.Event(), []
        assert not adm.alone()
        a = asyncio.create_task(_req(adm, None, "a", log, hold))
        await asyncio.sleep(0.01)
        assert adm.alone()
        b = asyncio.create_task(_req(adm, None, "b", log, hold))
        await asyncio.sleep(0.01)
        assert adm.running == 2 and not adm.alone()
        hold.set()
        await asyncio.gather(a, b)
        assert adm.running == 0 and not adm.alone()

    asyncio.run(scenario())
