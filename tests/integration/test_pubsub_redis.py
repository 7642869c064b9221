"""PubSub over Redis: cross-instance delivery, isolation, overflow, and surviving restarts.

Shared-server tests use ``TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``)
with a unique channel prefix per test. Restart tests start their own ``redis-server`` on a
free port. Without Redis these tests skip, except under ``CI=true`` where they fail.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from tradegraph.pubsub import GAP, PubSub, PubSubUnavailable, Subscription

pytestmark = pytest.mark.redis

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def unavailable(reason: str) -> None:
    """Skip locally; in CI Redis is mandatory, so a missing one is a failure."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: Redis tests must run)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def redis_url() -> str:
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1, socket_timeout=1)
    try:
        client.ping()
    except redis.RedisError as exc:
        unavailable(f"Redis not reachable at {REDIS_URL}: {exc}")
    finally:
        client.close()
    return REDIS_URL


@pytest.fixture
def prefix() -> str:
    return f"test-{uuid.uuid4().hex}:"


@pytest.fixture
async def pair(redis_url: str, prefix: str) -> AsyncIterator[tuple[PubSub, PubSub]]:
    """Two instances = two processes' worth of connections to the same Redis."""
    a = PubSub(redis_url, prefix=prefix)
    b = PubSub(redis_url, prefix=prefix)
    await a.connect()
    await b.connect()
    yield a, b
    await a.disconnect()
    await b.disconnect()


async def next_msg(sub: Subscription, timeout: float = 5.0) -> dict[str, Any]:
    return await asyncio.wait_for(anext(sub), timeout)


async def wait_until(predicate: Callable[[], bool | Awaitable[bool]], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


async def test_message_from_one_instance_reaches_another(pair: tuple[PubSub, PubSub]) -> None:
    a, b = pair
    async with a.subscribe("trades:BTC-USD") as sub:
        for seq in range(200):
            await b.publish("trades:BTC-USD", {"seq": seq})
        assert [(await next_msg(sub))["seq"] for _ in range(200)] == list(range(200))
    assert await a.ping() and await b.ping()
    assert b.stats.published == 200


async def test_prefixes_isolate_deployments_on_one_server(redis_url: str) -> None:
    run = uuid.uuid4().hex
    async with (
        PubSub(redis_url, prefix=f"{run}-one:") as one,
        PubSub(redis_url, prefix=f"{run}-two:") as two,
        one.subscribe("t") as sub_one,
        two.subscribe("t") as sub_two,
    ):
        await one.publish("t", {"from": "one"})
        await two.publish("t", {"from": "two"})
        # Redis delivers in publish order, so "two" arriving first proves "one" never will.
        assert await next_msg(sub_two) == {"from": "two"}
        assert await next_msg(sub_one) == {"from": "one"}


async def test_slow_subscriber_overflows_over_redis(pair: tuple[PubSub, PubSub]) -> None:
    a, b = pair
    async with a.subscribe("t") as fast, a.subscribe("t", max_queue=5) as slow:
        for seq in range(50):
            await b.publish("t", {"seq": seq})
        assert [(await next_msg(fast))["seq"] for _ in range(50)] == list(range(50))
        gap = await next_msg(slow)
        assert gap == {"type": GAP, "topic": "t", "reason": "overflow", "final": True, "dropped": 6}
        with pytest.raises(StopAsyncIteration):
            await next_msg(slow)


async def test_unsubscribe_releases_the_redis_channel(
    pair: tuple[PubSub, PubSub], redis_url: str
) -> None:
    a, _ = pair
    client = aioredis.Redis.from_url(redis_url)
    channel = a.channel("t")

    async def subscribers() -> int:
        return int(dict(await client.pubsub_numsub(channel))[channel.encode()])

    async def released() -> bool:
        return await subscribers() == 0

    try:
        async with a.subscribe("t"), a.subscribe("t"):
            assert await subscribers() == 1  # one Redis subscription per channel
        await wait_until(released)  # UNSUBSCRIBE is not awaited, so poll briefly
    finally:
        await client.aclose()
    assert a.active_topics == 0


async def test_foreign_payloads_are_dropped_not_fatal(
    pair: tuple[PubSub, PubSub], redis_url: str
) -> None:
    a, b = pair
    client = aioredis.Redis.from_url(redis_url)
    try:
        async with a.subscribe("t") as sub:
            await client.publish(a.channel("t"), b"not json")
            await client.publish(a.channel("t"), b"[1, 2]")
            await b.publish("t", {"ok": True})
            assert await next_msg(sub) == {"ok": True}
    finally:
        await client.aclose()
    assert a.stats.decode_errors == 2


# --- our own server: restarts and stalls -------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A throwaway redis-server we may kill, restart and freeze."""

    def __init__(self, binary: str, port: int, workdir: Path) -> None:
        self.binary = binary
        self.port = port
        self.workdir = workdir
        self.url = f"redis://127.0.0.1:{port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = aioredis.Redis.from_url(self.url, socket_connect_timeout=0.2, socket_timeout=0.2)
        try:
            deadline = time.monotonic() + 5
            while True:
                if self.proc.poll() is not None:
                    raise AssertionError(f"redis-server exited with {self.proc.returncode}")
                try:
                    if await client.ping():
                        return
                except redis.RedisError:
                    if time.monotonic() > deadline:
                        raise
                await asyncio.sleep(0.02)
        finally:
            await client.aclose()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(5)

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    binary = shutil.which("redis-server")
    if binary is None:
        unavailable("redis-server binary not on PATH")
        raise AssertionError("unreachable")
    srv = RedisServer(binary, free_port(), tmp_path)
    yield srv
    srv.kill()


def fast_pubsub(url: str, prefix: str) -> PubSub:
    return PubSub(
        url,
        prefix=prefix,
        publish_timeout=0.5,
        connect_timeout=0.5,
        health_interval=0.3,
        reconnect_base=0.02,
        reconnect_cap=0.2,
    )


async def test_delivery_resumes_after_redis_restart(server: RedisServer, prefix: str) -> None:
    await server.start()
    async with (
        fast_pubsub(server.url, prefix) as listener,
        fast_pubsub(server.url, prefix) as publisher,
        listener.subscribe("book:BTC-USD") as sub,
        listener.subscribe("trades:BTC-USD") as sub2,
    ):
        await publisher.publish("book:BTC-USD", {"seq": 1})
        assert await next_msg(sub) == {"seq": 1}

        server.kill()
        await wait_until(lambda: not listener.connected)
        assert await listener.ping() is False
        assert listener.last_error
        started = time.monotonic()
        with pytest.raises(PubSubUnavailable):
            await publisher.publish("book:BTC-USD", {"seq": 2})
        assert time.monotonic() - started < 1.0  # fails fast, never hangs
        assert publisher.stats.publish_errors == 1
        with pytest.raises(PubSubUnavailable):
            async with listener.subscribe("new-topic"):
                pass

        await server.start()  # same port, empty server: nothing remembers our channels
        reconnect_gap = {"type": GAP, "topic": "book:BTC-USD", "reason": "reconnect"}
        assert await next_msg(sub) == {**reconnect_gap, "final": False}
        assert (await next_msg(sub2))["reason"] == "reconnect"
        assert listener.stats.reconnects == 1
        assert sub.active

        await publisher.publish("book:BTC-USD", {"seq": 3})  # stale pooled conn replaced
        await publisher.publish("trades:BTC-USD", {"seq": 1})
        assert await next_msg(sub) == {"seq": 3}
        assert await next_msg(sub2) == {"seq": 1}
        assert await listener.ping() is True
        assert listener.active_subscriptions == 2


async def test_stalled_server_is_detected_by_health_ping(server: RedisServer, prefix: str) -> None:
    await server.start()
    async with (
        fast_pubsub(server.url, prefix) as listener,
        fast_pubsub(server.url, prefix) as publisher,
        listener.subscribe("t") as sub,
    ):
        server.pause()  # socket stays open, nothing answers: only the PING notices
        await wait_until(lambda: not listener.connected)
        with pytest.raises(PubSubUnavailable):
            await publisher.publish("t", {"seq": 1})
        server.resume()
        assert (await next_msg(sub))["reason"] == "reconnect"
        await publisher.publish("t", {"seq": 2})
        assert await next_msg(sub) == {"seq": 2}


async def test_connect_waits_or_keeps_trying_in_background(
    server: RedisServer, prefix: str
) -> None:
    eager = fast_pubsub(server.url, prefix)
    with pytest.raises(PubSubUnavailable, match="cannot connect"):
        await eager.connect()

    patient = fast_pubsub(server.url, prefix)
    await patient.connect(wait=False)
    try:
        assert not patient.connected
        await server.start()
        await wait_until(lambda: patient.connected)
        async with patient.subscribe("t") as sub:
            await patient.publish("t", {"up": True})
            assert await next_msg(sub) == {"up": True}
    finally:
        await patient.disconnect()


async def test_publish_many_reaches_another_instance_in_order(
    pair: tuple[PubSub, PubSub],
) -> None:
    publisher, listener = pair
    async with listener.subscribe("fills:1") as sub:
        await publisher.publish_many([("fills:1", {"n": n}) for n in range(50)])
        got = [await asyncio.wait_for(anext(sub), 5) for _ in range(50)]
    assert [m["n"] for m in got] == list(range(50))
    assert publisher.stats.published == 50
