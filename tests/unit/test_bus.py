"""InProcessBus: request/take/reply, group-commit batching, ordering, timeouts, backpressure."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

from tradegraph.bus import (
    BusUnavailable,
    CommandBus,
    EngineBus,
    EngineUnavailable,
    Incoming,
    InProcessBus,
    RedisStreamsBus,
)
from tradegraph.errors import Unavailable


async def settle(predicate: Callable[[], bool], ticks: int = 1000) -> None:
    """Let other tasks run until ``predicate`` holds (no wall-clock sleeps)."""
    for _ in range(ticks):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition not reached")


async def echo_engine(bus: EngineBus, batches: list[list[Incoming]]) -> None:
    """A stand-in sequencer: answers each command with its payload and its position."""
    position = 0
    while True:
        batch = await bus.take(max_items=100, max_wait=0)
        batches.append(batch)
        replies = []
        for incoming in batch:
            replies.append((incoming, {"position": position, "echo": incoming.payload}))
            position += 1
        await bus.reply_many(replies)


async def test_request_gets_the_engines_answer() -> None:
    bus = InProcessBus()
    client: CommandBus = bus
    batches: list[list[Incoming]] = []
    engine = asyncio.create_task(echo_engine(bus, batches))
    try:
        payload = {"qty": "1.50", "side": "BUY", "legs": [1, 2]}
        result = await client.request("place", payload, command_id="c-1", timeout=2)
        # What JSON would change (Decimal, tuples, int keys) is refused in-process too,
        # so code tested here behaves the same over Redis.
        for changed in ({"qty": Decimal("1.50")}, {"legs": (1, 2)}, {"by": {1: "x"}}):
            with pytest.raises(TypeError, match="JSON-shaped"):
                await client.request("place", changed, timeout=2)
    finally:
        engine.cancel()
    assert result == {"position": 0, "echo": {"qty": "1.50", "side": "BUY", "legs": [1, 2]}}
    incoming = batches[0][0]
    assert (incoming.command_id, incoming.kind) == ("c-1", "place")
    assert incoming.payload == payload  # handed over as is: no encoding in-process
    assert incoming.deadline is not None and not incoming.expired()
    assert incoming.expired(now=incoming.deadline + 1)
    assert bus.in_flight == 0 and bus.stats.replies == 1


async def test_take_batches_what_is_queued_and_keeps_order() -> None:
    bus = InProcessBus()
    tasks = [asyncio.create_task(bus.request("k", {"n": n}, timeout=2)) for n in range(5)]
    await settle(lambda: bus.queued == 5)

    first = await bus.take(max_items=3, max_wait=0)
    rest = await bus.take(max_items=10, max_wait=0)
    assert [i.payload["n"] for i in first] == [0, 1, 2]
    assert [i.payload["n"] for i in rest] == [3, 4]

    # Answer out of order: each caller still gets its own result.
    await bus.reply_many([(i, {"n": i.payload["n"]}) for i in reversed(first + rest)])
    assert [r["n"] for r in await asyncio.gather(*tasks)] == [0, 1, 2, 3, 4]


async def test_take_lingers_for_max_wait_to_grow_the_batch() -> None:
    bus = InProcessBus()
    first = asyncio.create_task(bus.request("k", {"n": 0}, timeout=2))
    await settle(lambda: bus.queued == 1)
    take = asyncio.create_task(bus.take(max_items=2, max_wait=30))
    await settle(lambda: bus._queue.empty())  # took the first, now lingering
    assert not take.done()
    second = asyncio.create_task(bus.request("k", {"n": 1}, timeout=2))
    batch = await asyncio.wait_for(take, 2)  # max_items reached long before max_wait
    assert [i.payload["n"] for i in batch] == [0, 1]
    await bus.reply_many([(i, {}) for i in batch])
    await asyncio.gather(first, second)


async def test_take_returns_after_max_wait_with_a_partial_batch() -> None:
    bus = InProcessBus()
    request = asyncio.create_task(bus.request("k", {}, timeout=2))
    started = time.monotonic()
    batch = await asyncio.wait_for(bus.take(max_items=10, max_wait=0.05), 2)
    assert len(batch) == 1
    assert 0.04 <= time.monotonic() - started < 1.0
    await bus.reply(batch[0], {"ok": True})
    assert await request == {"ok": True}


async def test_cancelled_take_loses_nothing() -> None:
    bus = InProcessBus()
    request = asyncio.create_task(bus.request("k", {"n": 7}, timeout=2))
    await settle(lambda: bus.queued == 1)
    take = asyncio.create_task(bus.take(max_items=5, max_wait=30))
    await settle(lambda: bus._queue.empty())  # the item is in hand, the take lingers
    take.cancel()
    with pytest.raises(asyncio.CancelledError):
        await take
    assert bus.queued == 1
    batch = await bus.take(max_items=5, max_wait=0)
    assert [i.payload["n"] for i in batch] == [7]
    await bus.reply(batch[0], {"done": 7})
    assert await request == {"done": 7}


async def test_timeout_raises_engine_unavailable_and_late_reply_is_ignored() -> None:
    bus = InProcessBus()
    with pytest.raises(EngineUnavailable) as info:
        await bus.request("place", {}, command_id="late", timeout=0.05)
    assert info.value.code == "ENGINE_UNAVAILABLE"
    assert isinstance(info.value, Unavailable)
    assert "did not answer" in info.value.message
    assert bus.in_flight == 0 and bus.stats.timeouts == 1

    [incoming] = await bus.take(max_items=1, max_wait=0)
    assert incoming.expired()
    await bus.reply(incoming, {"too": "late"})  # nobody waits: dropped, no error
    assert bus.stats.late_replies == 1


async def test_full_queue_applies_backpressure_within_the_timeout() -> None:
    bus = InProcessBus(max_queue=1)
    first = asyncio.create_task(bus.request("k", {"n": 1}, timeout=2))
    await settle(lambda: bus.queued == 1)
    with pytest.raises(EngineUnavailable, match="queue stayed full"):
        await bus.request("k", {"n": 2}, timeout=0.05)

    blocked = asyncio.create_task(bus.request("k", {"n": 3}, timeout=2))
    await asyncio.sleep(0)
    assert bus.queued == 1  # waiting for room, not enqueued
    batch = await bus.take(max_items=10, max_wait=0)
    assert [i.payload["n"] for i in batch] == [1]
    await settle(lambda: bus.queued == 1)  # room freed: the blocked request got in
    batch += await bus.take(max_items=10, max_wait=0)
    await bus.reply_many([(i, {"n": i.payload["n"]}) for i in batch])
    assert await first == {"n": 1} and await blocked == {"n": 3}


async def test_concurrent_requests_with_one_command_id_share_one_send() -> None:
    bus = InProcessBus()
    a = asyncio.create_task(bus.request("k", {"v": 1}, command_id="same", timeout=2))
    b = asyncio.create_task(bus.request("k", {"v": 1}, command_id="same", timeout=2))
    await settle(lambda: bus.stats.joined == 1 and bus.queued == 1)
    batch = await bus.take(max_items=10, max_wait=0)
    assert len(batch) == 1
    await bus.reply(batch[0], {"order": "o-1"})
    assert await a == await b == {"order": "o-1"}
    assert bus.in_flight == 0


async def test_joined_caller_fails_when_the_sender_cannot_send() -> None:
    bus = InProcessBus(max_queue=1)
    filler = asyncio.create_task(bus.request("k", {}, timeout=2))
    await settle(lambda: bus.queued == 1)
    owner = asyncio.create_task(bus.request("k", {}, command_id="x", timeout=0.05))
    joiner = asyncio.create_task(bus.request("k", {}, command_id="x", timeout=2))
    with pytest.raises(EngineUnavailable):
        await owner
    with pytest.raises(EngineUnavailable):
        await asyncio.wait_for(joiner, 1)  # not left waiting for the full 2 s
    [incoming] = await bus.take(max_items=1, max_wait=0)
    await bus.reply(incoming, {})
    await filler


async def test_cancelled_caller_is_forgotten() -> None:
    bus = InProcessBus()
    request = asyncio.create_task(bus.request("k", {}, command_id="gone", timeout=2))
    await settle(lambda: bus.queued == 1)
    request.cancel()
    with pytest.raises(asyncio.CancelledError):
        await request
    assert bus.in_flight == 0
    [incoming] = await bus.take(max_items=1, max_wait=0)
    await bus.reply(incoming, {})
    assert bus.stats.late_replies == 1


async def test_close_fails_waiting_callers_and_rejects_new_ones() -> None:
    bus = InProcessBus()
    waiting = asyncio.create_task(bus.request("k", {}, timeout=5))
    await settle(lambda: bus.queued == 1)
    await bus.close()
    with pytest.raises(EngineUnavailable, match="closed"):
        await asyncio.wait_for(waiting, 1)
    started = time.monotonic()
    with pytest.raises(EngineUnavailable, match="closed"):
        await bus.request("k", {}, timeout=5)
    assert time.monotonic() - started < 0.5
    assert bus.connected is False


async def test_engine_loop_under_concurrent_load_answers_everyone_in_order() -> None:
    bus = InProcessBus(max_queue=50)
    batches: list[list[Incoming]] = []
    engine = asyncio.create_task(echo_engine(bus, batches))
    try:
        results = await asyncio.gather(*(bus.request("k", {"n": n}, timeout=5) for n in range(500)))
    finally:
        engine.cancel()
    assert [r["echo"]["n"] for r in results] == list(range(500))
    # Enqueue order is the order of the gather, and the engine sees exactly that order.
    assert [r["position"] for r in results] == list(range(500))
    assert max(len(b) for b in batches) > 1  # commands piled up while the engine worked


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"timeout": 0}, ValueError),
        ({"timeout": -1}, ValueError),
    ],
)
async def test_bad_request_arguments(kwargs: dict[str, Any], error: type[Exception]) -> None:
    bus = InProcessBus()
    with pytest.raises(error):
        await bus.request("k", {}, **kwargs)


async def test_bad_payloads_and_take_arguments() -> None:
    bus = InProcessBus()
    with pytest.raises(ValueError):
        await bus.request("", {})
    with pytest.raises(TypeError):
        await bus.request("k", {"x": object()})
    with pytest.raises(ValueError):
        await bus.request("k", {"x": float("nan")})
    with pytest.raises(TypeError):
        await bus.request("k", ["not", "a", "mapping"])
    with pytest.raises(ValueError):
        await bus.take(max_items=0, max_wait=0)
    with pytest.raises(ValueError):
        await bus.take(max_items=1, max_wait=-1)
    assert bus.queued == 0 and bus.in_flight == 0


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed on exit: connecting is refused


async def test_redis_bus_without_redis_fails_fast() -> None:
    url = f"redis://127.0.0.1:{closed_port()}/0"
    options: dict[str, Any] = {"connect_timeout": 0.2, "io_timeout": 0.2}
    strict = RedisStreamsBus(url, role="worker", **options)
    started = time.monotonic()
    with pytest.raises(BusUnavailable, match="cannot connect"):
        await strict.start()
    assert time.monotonic() - started < 2

    lenient = RedisStreamsBus(url, role="worker", **options)
    await lenient.start(wait=False)  # keeps retrying in the background
    try:
        started = time.monotonic()
        with pytest.raises(EngineUnavailable, match="unreachable"):
            await lenient.request("k", {}, timeout=30)
        assert time.monotonic() - started < 0.1
        assert not lenient.connected and lenient.stats.unavailable == 1
        with pytest.raises(RuntimeError, match="role='engine'"):
            await lenient.take(max_items=1, max_wait=0)
    finally:
        await lenient.close()

    engine = RedisStreamsBus(url, role="engine", **options)
    with pytest.raises(RuntimeError, match="role='worker'"):
        await engine.request("k", {})
    with pytest.raises(BusUnavailable, match="not started"):
        await engine.take(max_items=1, max_wait=0)
    await engine.close()
