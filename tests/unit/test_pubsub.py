"""PubSub over memory://: fan-out, ordering, bounded queues, cleanup, message contract."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from enum import Enum
from typing import Any
from uuid import UUID

import pytest

from tradegraph.errors import Unavailable
from tradegraph.pubsub import GAP, PubSub, PubSubUnavailable, Subscription, is_gap


async def next_msg(sub: Subscription, timeout: float = 2.0) -> dict[str, Any]:
    return await asyncio.wait_for(anext(sub), timeout)


async def drain(sub: Subscription, timeout: float = 2.0) -> list[dict[str, Any]]:
    """Everything left in an ending subscription."""

    async def collect() -> list[dict[str, Any]]:
        return [message async for message in sub]

    return await asyncio.wait_for(collect(), timeout)


@pytest.fixture
async def ps() -> AsyncIterator[PubSub]:
    pubsub = PubSub("memory://", prefix="test:")
    await pubsub.connect()
    yield pubsub
    await pubsub.disconnect()


async def test_every_subscriber_of_a_topic_gets_every_message(ps: PubSub) -> None:
    async with ps.subscribe("ticker:BTC-USD") as a, ps.subscribe("ticker:BTC-USD") as b:
        assert ps.active_subscriptions == 2
        assert ps.active_topics == 1
        for n in range(3):
            await ps.publish("ticker:BTC-USD", {"n": n})
        assert [(await next_msg(a))["n"] for _ in range(3)] == [0, 1, 2]
        assert [(await next_msg(b))["n"] for _ in range(3)] == [0, 1, 2]
    assert ps.stats.published == 3
    assert ps.stats.delivered == 6


async def test_order_is_kept_per_topic_and_topics_do_not_mix(ps: PubSub) -> None:
    async with ps.subscribe("book:A") as a, ps.subscribe("book:B") as b:
        for seq in range(500):
            await ps.publish("book:A", {"seq": seq})
            await ps.publish("book:B", {"seq": seq, "b": True})
        got_a = [await next_msg(a) for _ in range(500)]
        got_b = [await next_msg(b) for _ in range(500)]
    assert [m["seq"] for m in got_a] == list(range(500))
    assert not any("b" in m for m in got_a)
    assert [m["seq"] for m in got_b] == list(range(500))
    assert all(m["b"] for m in got_b)


async def test_prefix_namespaces_every_channel() -> None:
    ps = PubSub("memory://", prefix="deploy-1:")
    assert ps.channel("trades:BTC-USD") == "deploy-1:trades:BTC-USD"
    assert ps.subscribe("user:7").channel == "deploy-1:user:7"
    with pytest.raises(ValueError):
        ps.channel("")


async def test_slow_subscriber_gets_final_gap_and_fast_one_is_unaffected(ps: PubSub) -> None:
    async with (
        ps.subscribe("trades:X") as fast,
        ps.subscribe("trades:X", max_queue=10) as slow,
    ):
        received: list[int] = []

        async def consume() -> None:
            async for message in fast:
                received.append(message["seq"])
                if len(received) == 50:
                    return

        consumer = asyncio.create_task(consume())
        for seq in range(50):
            await ps.publish("trades:X", {"seq": seq})
        await asyncio.wait_for(consumer, 2)  # the pump handed all 50 to both queues

        assert received == list(range(50))
        assert not slow.active
        assert ps.active_subscriptions == 1  # the slow one was detached at overflow
        assert slow.queued <= 2  # just the marker and the end: its backlog was dropped
        rest = await drain(slow)
        assert rest == [
            {"type": GAP, "topic": "trades:X", "reason": "overflow", "final": True, "dropped": 11}
        ]
        assert is_gap(rest[0])
        assert ps.stats.overflows == 1
        assert ps.stats.dropped == 11


async def test_publisher_is_never_held_up_by_a_stuck_subscriber(ps: PubSub) -> None:
    async with ps.subscribe("t", max_queue=8) as stuck, ps.subscribe("t", max_queue=10_000) as tail:

        async def publish_all() -> None:
            for seq in range(5000):
                await ps.publish("t", {"seq": seq})

        await asyncio.wait_for(publish_all(), 5)
        for seq in range(5000):
            assert (await next_msg(tail))["seq"] == seq
        assert stuck.queued <= 2
        messages = await drain(stuck)
    assert len(messages) == 1
    assert messages[0]["reason"] == "overflow"
    assert messages[0]["dropped"] == 9


async def test_resubscribing_after_a_gap_receives_new_messages(ps: PubSub) -> None:
    async with ps.subscribe("t", max_queue=1) as sub:
        await ps.publish("t", {"seq": 1})
        await ps.publish("t", {"seq": 2})
        assert (await drain(sub))[-1]["type"] == GAP
    async with ps.subscribe("t", max_queue=1) as sub:
        await ps.publish("t", {"seq": 3})
        assert await next_msg(sub) == {"seq": 3}


async def test_leaving_the_context_unsubscribes_and_cleans_up(ps: PubSub) -> None:
    async with ps.subscribe("gone") as sub:
        assert ps.active_topics == 1
    assert not sub.active
    assert ps.active_subscriptions == 0
    assert ps.active_topics == 0
    assert ps.queued_messages == 0

    delivered = ps.stats.delivered
    async with ps.subscribe("probe") as probe:
        await ps.publish("gone", {"x": 1})
        await ps.publish("probe", {"x": 2})
        assert await next_msg(probe) == {"x": 2}  # the pump is past the "gone" message
    assert ps.stats.delivered == delivered + 1
    assert await drain(sub) == []  # an exited subscription iterates nothing


async def test_concurrent_subscribe_and_unsubscribe_leave_nothing_behind(ps: PubSub) -> None:
    rng = random.Random(7)

    async def churn() -> None:
        for _ in range(20):
            async with ps.subscribe(f"t{rng.randrange(3)}"):
                await asyncio.sleep(0)

    await asyncio.wait_for(asyncio.gather(*(churn() for _ in range(30))), 5)
    assert ps.active_subscriptions == 0
    assert ps.active_topics == 0
    async with ps.subscribe("t0") as sub:
        await ps.publish("t0", {"ok": True})
        assert await next_msg(sub) == {"ok": True}


async def test_aclose_from_another_task_ends_iteration(ps: PubSub) -> None:
    async with ps.subscribe("t") as sub:
        reader = asyncio.create_task(drain(sub))
        await asyncio.sleep(0)
        await sub.aclose()
        assert await asyncio.wait_for(reader, 2) == []
        await sub.aclose()  # idempotent
        assert ps.active_subscriptions == 0


async def test_disconnect_ends_every_subscription() -> None:
    ps = PubSub("memory://")
    await ps.connect()
    async with ps.subscribe("t") as sub:
        reader = asyncio.create_task(drain(sub))
        await asyncio.sleep(0)
        await ps.disconnect()
        assert await asyncio.wait_for(reader, 2) == []
        assert not ps.connected
        assert await ps.ping() is False
    await ps.disconnect()  # idempotent


async def test_closed_or_unconnected_pubsub_raises_unavailable() -> None:
    ps = PubSub("memory://")
    with pytest.raises(PubSubUnavailable) as info:
        await ps.publish("t", {"x": 1})
    assert isinstance(info.value, Unavailable)
    assert info.value.code == "UNAVAILABLE"
    with pytest.raises(PubSubUnavailable):
        async with ps.subscribe("t"):
            pass
    assert ps.active_topics == 0
    await ps.connect()
    with pytest.raises(RuntimeError):
        await ps.connect()
    await ps.disconnect()
    with pytest.raises(PubSubUnavailable):
        await ps.publish("t", {"x": 1})


async def test_iterating_without_entering_is_an_error(ps: PubSub) -> None:
    with pytest.raises(RuntimeError):
        await anext(ps.subscribe("t"))


class Side(Enum):
    BUY = "BUY"


async def test_messages_are_json_round_tripped(ps: PubSub) -> None:
    ts = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    uid = UUID("12345678-1234-5678-1234-567812345678")
    qty = [1, 2]
    sent = {"price": Decimal("101.25"), "ts": ts, "id": uid, "side": Side.BUY, "qty": qty}
    async with ps.subscribe("t") as a, ps.subscribe("t") as b:
        await ps.publish("t", sent)
        qty.append(3)  # the publisher's object is not shared with subscribers
        got = await next_msg(a)
        assert got == {
            "price": "101.25",
            "ts": "2024-05-01T12:00:00+00:00",
            "id": str(uid),
            "side": "BUY",
            "qty": [1, 2],
        }
        assert await next_msg(b) == got


async def test_bad_messages_are_rejected_at_publish(ps: PubSub) -> None:
    with pytest.raises(TypeError):
        await ps.publish("t", ["not", "a", "mapping"])
    with pytest.raises(TypeError):
        await ps.publish("t", {"x": object()})
    assert ps.stats.published == 0


async def test_invalid_configuration_is_rejected() -> None:
    with pytest.raises(ValueError):
        PubSub("kafka://localhost")
    with pytest.raises(ValueError):
        PubSub("memory://", max_queue=0)
    with pytest.raises(ValueError):
        PubSub("memory://").subscribe("t", max_queue=0)


async def test_ping_reports_readiness(ps: PubSub) -> None:
    assert ps.connected
    assert await ps.ping() is True
    assert ps.last_error is None


async def test_publish_many_keeps_order_and_sends_nothing_if_one_is_bad(ps: PubSub) -> None:
    async with ps.subscribe("a") as a, ps.subscribe("b") as b:
        await ps.publish_many([("a", {"n": 1}), ("b", {"n": 2}), ("a", {"n": 3})])
        assert [(await next_msg(a))["n"] for _ in range(2)] == [1, 3]
        assert (await next_msg(b))["n"] == 2
        with pytest.raises(TypeError):
            await ps.publish_many([("a", {"n": 4}), ("a", {"x": object()})])
        await ps.publish_many([])
        await ps.publish("a", {"n": 5})
        assert (await next_msg(a))["n"] == 5  # 4 was never sent
    assert ps.stats.published == 4


def spy_on_transport(ps: PubSub) -> list[tuple[str, str]]:
    """Record every (channel, payload) the transport's publish_many is given."""
    sent: list[tuple[str, str]] = []
    transport = ps._transport
    forward = transport.publish_many

    async def spy(items: list[tuple[str, str]]) -> None:
        sent.extend(items)
        await forward(items)

    transport.publish_many = spy  # type: ignore[method-assign]
    return sent


async def test_publish_many_sends_one_payload_per_topic(ps: PubSub) -> None:
    sent = spy_on_transport(ps)
    async with ps.subscribe("a") as a, ps.subscribe("b") as b, ps.subscribe("a") as a2:
        events = [("a", {"n": n}) for n in range(300)] + [("b", {"n": -1}), ("a", {"n": 300})]
        await ps.publish_many(events)
        assert [channel for channel, _ in sent] == [ps.channel("a"), ps.channel("b")]
        assert [(await next_msg(a))["n"] for _ in range(301)] == list(range(301))
        assert [(await next_msg(a2))["n"] for _ in range(301)] == list(range(301))
        assert (await next_msg(b))["n"] == -1  # a lone message is sent as itself
        assert sent[1][1] == '{"n":-1}'
    assert ps.stats.published == 302
    assert ps.stats.decode_errors == 0


async def test_in_process_publish_many_skips_topics_nobody_here_listens_to(ps: PubSub) -> None:
    sent = spy_on_transport(ps)
    await ps.publish_many([("nobody", {"n": 1}), ("nobody", {"x": object()})])
    assert sent == [] and ps.stats.published == 2  # dropped unencoded, counted
    with pytest.raises(TypeError):
        await ps.publish_many([("nobody", ["not", "a", "mapping"])])  # type: ignore[list-item]
    async with ps.subscribe("a") as a:
        await ps.publish_many([("nobody", {"n": 2}), ("a", {"n": 3})])
        assert [channel for channel, _ in sent] == [ps.channel("a")]
        assert (await next_msg(a))["n"] == 3
    await ps.disconnect()
    with pytest.raises(PubSubUnavailable):
        await ps.publish_many([("nobody", {"n": 4})])


async def test_a_payload_that_is_not_objects_is_dropped_and_counted(ps: PubSub) -> None:
    async with ps.subscribe("a") as a:
        for bad in ("[1, 2]", "[]", '[{"n": 1}, "x"]', "42", "not json"):
            await ps._transport.publish(ps.channel("a"), bad)
        await ps.publish("a", {"n": 2})
        assert (await next_msg(a))["n"] == 2  # nothing of the bad payloads got through
    assert ps.stats.decode_errors == 5
