"""RedisStreamsBus: several workers and one engine, redelivery after a crash, Redis outages.

Shared-server tests use ``TEST_REDIS_URL`` with a unique key prefix per test; the outage
test runs its own ``redis-server`` on a free port so it can kill and restart it. Without
Redis these tests skip, except under ``CI=true`` where they fail.
"""

from __future__ import annotations

import asyncio
import json
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
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from tests.conftest import CI, REDIS_URL, require_service
from tradegraph.bus import EngineUnavailable, Incoming, RedisStreamsBus

pytestmark = pytest.mark.redis


def fast_bus(url: str, prefix: str, role: str, **overrides: Any) -> RedisStreamsBus:
    """Short intervals so failure detection happens within a test's patience."""
    options: dict[str, Any] = {
        "role": role,
        "prefix": prefix,
        "io_timeout": 0.5,
        "connect_timeout": 0.5,
        # Fast failure detection once running, but a patient start: under a loaded CI
        # host the first connect plus round trips can exceed the per-operation budgets.
        "start_timeout": 10.0,
        "heartbeat_interval": 0.1,
        "engine_ttl": 0.5,
        "reconnect_base": 0.02,
        "reconnect_cap": 0.2,
        "default_timeout": 5.0,
    }
    options.update(overrides)
    return RedisStreamsBus(url, **options)


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


async def echo_engine(
    bus: RedisStreamsBus, seen: list[Incoming], batches: list[int], hold: str = "hold"
) -> None:
    """A stand-in sequencer: answers with the position it saw each command at.

    Commands of kind ``hold`` are taken but never answered (a command the engine is
    still working on).
    """
    while True:
        batch = await bus.take(max_items=50, max_wait=0.002)
        batches.append(len(batch))
        replies: list[tuple[Incoming, dict[str, Any]]] = []
        for incoming in batch:
            if incoming.kind == hold:
                continue
            replies.append((incoming, {"position": len(seen), "echo": incoming.payload}))
            seen.append(incoming)
        await bus.reply_many(replies)


def entry_key(entry_id: str) -> tuple[int, int]:
    ms, seq = entry_id.split("-")
    return int(ms), int(seq)


@pytest.fixture
def redis_url() -> str:
    require_service("redis")
    return REDIS_URL


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
async def prefix(raw: aioredis.Redis) -> AsyncIterator[str]:
    value = f"bustest-{uuid.uuid4().hex}:"
    yield value
    keys = [key async for key in raw.scan_iter(match=f"{value}*")]
    if keys:
        await raw.delete(*keys)


async def test_two_workers_share_one_ordered_stream_and_get_their_own_replies(
    redis_url: str, prefix: str, raw: aioredis.Redis
) -> None:
    # Not a failure-detection test: generous heartbeat/IO limits so a loaded CI machine
    # cannot turn a slow heartbeat into a spurious EngineUnavailable.
    relaxed = {"engine_ttl": 5.0, "io_timeout": 3.0, "heartbeat_interval": 0.5}
    engine = fast_bus(redis_url, prefix, "engine", **relaxed)
    await engine.start()
    a = fast_bus(redis_url, prefix, "worker", worker_id="api-a", **relaxed)
    b = fast_bus(redis_url, prefix, "worker", worker_id="api-b", **relaxed)
    await a.start()
    await b.start()
    seen: list[Incoming] = []
    batches: list[int] = []
    loop = asyncio.create_task(echo_engine(engine, seen, batches))
    try:
        # Alternating, each after the previous answer: the engine sees exactly this order.
        positions = []
        for n in range(10):
            worker = a if n % 2 == 0 else b
            result = await worker.request("place", {"n": n, "from": worker.worker_id})
            assert result["echo"] == {"n": n, "from": worker.worker_id}
            positions.append(result["position"])
        assert positions == list(range(10))
        assert [i.envelope.reply_to for i in seen[:2]] == [a.reply_stream, b.reply_stream]

        # A concurrent burst from both: every caller gets its own answer.
        burst = [(w, n) for n in range(100) for w in (a, b)]
        results = await asyncio.gather(
            *(w.request("place", {"n": n, "from": w.worker_id}) for w, n in burst)
        )
        for (w, n), result in zip(burst, results, strict=True):
            assert result["echo"] == {"n": n, "from": w.worker_id}
        # The burst left each worker in a few pipelines, not one round trip per command.
        assert a.stats.send_batches < 10 + 20 and b.stats.send_batches < 10 + 20
    finally:
        loop.cancel()

    receipts = [entry_key(i.receipt) for i in seen]
    assert receipts == sorted(receipts) and len(set(receipts)) == 210  # one stream, in order
    assert max(batches) > 1  # the burst was taken in batches (group commit)
    assert a.stats.late_replies == b.stats.late_replies == 0  # no reply went astray
    assert a.in_flight == b.in_flight == 0
    assert not any(i.redelivered for i in seen)
    pending = await raw.xpending(engine.command_stream, engine.group)
    assert pending["pending"] == 0  # everything answered was acknowledged
    assert 0 < await raw.ttl(a.reply_stream) <= 3600  # a dead worker's stream expires

    await a.close()
    assert await raw.exists(a.reply_stream) == 0  # a clean worker removes its stream
    await b.close()
    await engine.close()
    assert await raw.exists(engine.engine_key) == 0


async def test_engine_crash_before_ack_redelivers_to_the_next_engine(
    redis_url: str, prefix: str, raw: aioredis.Redis
) -> None:
    first = fast_bus(redis_url, prefix, "engine")
    await first.start()
    worker = fast_bus(redis_url, prefix, "worker")
    await worker.start()
    try:
        request = asyncio.create_task(
            worker.request("place", {"n": 1}, command_id="cmd-1", timeout=10)
        )
        [taken] = await first.take(max_items=10, max_wait=0)
        assert (taken.command_id, taken.redelivered) == ("cmd-1", False)

        await first.close()  # dies without replying or acknowledging
        started = time.monotonic()
        with pytest.raises(EngineUnavailable, match="engine stopped"):
            await request  # the heartbeat vanished: fail now, not after 10 s
        assert time.monotonic() - started < 2
        with pytest.raises(EngineUnavailable, match="not running"):
            await worker.request("place", {"n": 2})

        second = fast_bus(redis_url, prefix, "engine")
        await second.start()
        try:
            await wait_until(lambda: worker.engine_alive)
            # The caller retries with the same command_id (the safe follow-up).
            retry = asyncio.create_task(
                worker.request("place", {"n": 1}, command_id="cmd-1", timeout=10)
            )
            [again] = await second.take(max_items=10, max_wait=0)
            assert (again.command_id, again.redelivered) == ("cmd-1", True)
            assert again.receipt == taken.receipt and again.payload == {"n": 1}
            [fresh] = await second.take(max_items=10, max_wait=0)
            assert (fresh.command_id, fresh.redelivered) == ("cmd-1", False)
            assert entry_key(fresh.receipt) > entry_key(again.receipt)

            # The engine dedupes by command_id: the first answer serves the retry.
            await second.reply(again, {"order": "o-1"})
            assert await asyncio.wait_for(retry, 5) == {"order": "o-1"}
            await second.reply(fresh, {"order": "o-1"})
            assert second.stats.redelivered == 1
            pending = await raw.xpending(second.command_stream, second.group)
            assert pending["pending"] == 0
        finally:
            await second.close()
    finally:
        await worker.close()


async def test_malformed_entries_are_acknowledged_and_skipped(
    redis_url: str, prefix: str, raw: aioredis.Redis
) -> None:
    engine = fast_bus(redis_url, prefix, "engine")
    await engine.start()
    worker = fast_bus(redis_url, prefix, "worker")
    await worker.start()
    try:
        await raw.xadd(engine.command_stream, {"garbage": "1"})
        await raw.xadd(
            engine.command_stream,
            {"command_id": "x", "kind": "k", "payload": "[1]", "reply_to": ""},
        )
        request = asyncio.create_task(worker.request("place", {"ok": True}, command_id="good"))
        [incoming] = await engine.take(max_items=10, max_wait=0)
        assert incoming.command_id == "good"
        await engine.reply(incoming, {"done": True})
        assert await request == {"done": True}
        assert engine.stats.poison == 2
        pending = await raw.xpending(engine.command_stream, engine.group)
        assert pending["pending"] == 0
    finally:
        await worker.close()
        await engine.close()


async def test_foreign_replies_do_not_disturb_a_worker(
    redis_url: str, prefix: str, raw: aioredis.Redis
) -> None:
    engine = fast_bus(redis_url, prefix, "engine")
    await engine.start()
    worker = fast_bus(redis_url, prefix, "worker")
    await worker.start()
    try:
        await raw.xadd(worker.reply_stream, {"command_id": "nobody", "result": "{}"})
        await raw.xadd(worker.reply_stream, {"unrelated": "1"})
        request = asyncio.create_task(worker.request("k", {}, command_id="mine"))
        [incoming] = await engine.take(max_items=1, max_wait=0)
        await raw.xadd(worker.reply_stream, {"command_id": "mine", "result": "not json"})
        await engine.reply(incoming, {"v": 1})
        assert await request == {"v": 1}
        assert worker.stats.late_replies == 1 and worker.stats.poison == 2
    finally:
        await worker.close()
        await engine.close()


# --- our own server: outages --------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A throwaway redis-server we may kill and restart (empty, like a real crash)."""

    def __init__(self, binary: str, port: int, workdir: Path) -> None:
        self.binary = binary
        self.url = f"redis://127.0.0.1:{port}/0"
        self.port = port
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--save", "", "--appendonly", "no", "--dir", str(self.workdir)]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = aioredis.Redis.from_url(self.url, socket_connect_timeout=0.2, socket_timeout=0.2)
        deadline = time.monotonic() + 5
        try:
            while True:
                if self.proc.poll() is not None:
                    raise AssertionError(f"redis-server exited with {self.proc.returncode}")
                try:
                    if await client.ping():
                        return
                except RedisError:
                    if time.monotonic() > deadline:
                        raise
                await asyncio.sleep(0.02)
        finally:
            await client.aclose()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    binary = shutil.which("redis-server")
    if binary is None:
        if CI:
            pytest.fail("redis-server binary not on PATH (mandatory in CI)", pytrace=False)
        pytest.skip("redis-server binary not on PATH")
    srv = RedisServer(binary, free_port(), tmp_path)
    yield srv
    srv.kill()


async def raises_fast(call: Callable[[], Awaitable[Any]], limit: float = 0.5) -> str:
    started = time.monotonic()
    with pytest.raises(EngineUnavailable) as info:
        await call()
    assert time.monotonic() - started < limit, "must fail fast, not wait for the timeout"
    return info.value.message


async def test_redis_outage_fails_requests_fast_then_recovers(
    server: RedisServer, tmp_path: Path
) -> None:
    await server.start()
    prefix = "outage:"
    engine = fast_bus(server.url, prefix, "engine")
    worker = fast_bus(server.url, prefix, "worker")
    await engine.start()
    await worker.start()
    seen: list[Incoming] = []
    loop = asyncio.create_task(echo_engine(engine, seen, []))
    try:
        assert (await worker.request("k", {"n": 1}))["echo"] == {"n": 1}
        held = asyncio.create_task(worker.request("hold", {}, timeout=30))
        await wait_until(lambda: worker.stats.sent == 2 and len(engine._inflight) == 1)

        server.kill()
        await raises_fast(lambda: held, limit=2)  # in flight: failed at once, not after 30 s
        await wait_until(lambda: not worker.connected)
        message = await raises_fast(lambda: worker.request("k", {"n": 2}, timeout=30))
        assert "unreachable" in message
        assert worker.last_error

        await server.start()  # same port, empty: stream and group are gone
        await wait_until(lambda: worker.connected and worker.engine_alive and engine.connected)
        result = await worker.request("k", {"n": 3})
        assert result["echo"] == {"n": 3}
        assert worker.stats.reconnects >= 1 and engine.stats.reconnects >= 1
    finally:
        loop.cancel()
        await worker.close()
        await engine.close()


async def test_result_payload_round_trips_as_json(redis_url: str, prefix: str) -> None:
    engine = fast_bus(redis_url, prefix, "engine")
    await engine.start()
    worker = fast_bus(redis_url, prefix, "worker")
    await worker.start()
    try:
        request = asyncio.create_task(worker.request("k", {"nested": {"a": [1, "2", None]}}))
        [incoming] = await engine.take(max_items=1, max_wait=0)
        assert incoming.payload == {"nested": {"a": [1, "2", None]}}
        assert incoming.deadline is not None and incoming.deadline > time.time()
        await engine.reply(incoming, {"big": json.loads("12345678901234567890")})
        assert await request == {"big": 12345678901234567890}
    finally:
        await worker.close()
        await engine.close()


async def test_a_quiet_command_is_answered_without_waiting_for_redis_timers(
    server: RedisServer,
) -> None:
    """On an idle Redis a BLOCK of a millisecond times out only at the server's next cron
    tick (up to 100 ms at the default hz 10). The batching window must not depend on it:
    commands sent one at a time are answered in a few milliseconds, not ~50 on average."""
    await server.start()  # our own, idle server: nothing else wakes it up
    engine = RedisStreamsBus(server.url, role="engine", prefix="quiet:")
    worker = RedisStreamsBus(server.url, role="worker", prefix="quiet:")
    await engine.start()
    await worker.start()
    loop = asyncio.create_task(echo_engine(engine, [], []))
    try:
        await worker.request("k", {"n": -1}, timeout=5)  # warm up
        latencies = []
        for n in range(21):
            await asyncio.sleep(0.01)
            started = time.perf_counter()
            await worker.request("k", {"n": n}, timeout=5)
            latencies.append(time.perf_counter() - started)
        assert sorted(latencies)[10] < 0.02, latencies  # the median
    finally:
        loop.cancel()
        await worker.close()
        await engine.close()


async def test_a_stalled_redis_fails_the_send_in_time_and_skips_abandoned_commands(
    server: RedisServer,
) -> None:
    """Sends go through one pipeline writer. When Redis stops answering, the command
    being written fails after ``io_timeout`` (outcome unknown), and a caller that gives
    up while its command still waits in the outbox is told it was never handed over;
    that command is then never written, so it cannot run after its caller was told no."""
    await server.start()
    engine = fast_bus(server.url, "stall:", "engine")
    worker = fast_bus(server.url, "stall:", "worker")
    await engine.start()
    await worker.start()
    seen: list[Incoming] = []
    loop = asyncio.create_task(echo_engine(engine, seen, []))
    assert server.proc is not None
    try:
        await worker.request("k", {"n": 0})
        server.proc.send_signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            first = asyncio.create_task(worker.request("k", {"n": 1}, timeout=5))
            await asyncio.sleep(0.05)  # the sender is now stuck writing the first
            with pytest.raises(EngineUnavailable) as abandoned:
                await worker.request("k", {"n": 2}, timeout=0.2)
            assert "could not hand" in abandoned.value.message
            with pytest.raises(EngineUnavailable):
                await first
            assert time.monotonic() - started < 2  # io_timeout, not the 5 s deadline
        finally:
            server.proc.send_signal(signal.SIGCONT)
        await wait_until(lambda: worker.connected and worker.engine_alive)
        assert (await worker.request("k", {"n": 3}))["echo"] == {"n": 3}
        assert {"n": 2} not in [i.payload for i in seen]
    finally:
        loop.cancel()
        await worker.close()
        await engine.close()


async def test_reply_many_sends_a_body_encoded_in_advance(
    redis_url: str, prefix: str, raw: aioredis.Redis
) -> None:
    """The sequencer encodes each result once (for its command log) and hands the text
    over: the bus sends that text instead of encoding the result again."""
    engine = fast_bus(redis_url, prefix, "engine")
    await engine.start()
    worker = fast_bus(redis_url, prefix, "worker")
    await worker.start()
    try:
        first = asyncio.create_task(worker.request("k", {}, command_id="pre"))
        second = asyncio.create_task(worker.request("k", {}, command_id="plain"))
        taken: list[Incoming] = []
        while len(taken) < 2:
            taken += await engine.take(max_items=2, max_wait=0.05)
        results = {"pre": {"v": 1}, "plain": {"v": 3}}
        # A body that differs from its result shows which of the two went out.
        await engine.reply_many(
            [(i, results[i.command_id]) for i in taken], bodies={"pre": '{"v":2}'}
        )
        assert await first == {"v": 2}
        assert await second == {"v": 3}
    finally:
        await worker.close()
        await engine.close()


async def test_answered_commands_leave_the_stream_and_unanswered_ones_stay(
    redis_url: str, prefix: str, raw: aioredis.Redis
) -> None:
    """The command stream holds what is unanswered, not the last ``cmd_maxlen`` commands:
    big ``placeOrders`` commands would otherwise pile up to gigabytes."""
    relaxed = {"engine_ttl": 5.0, "io_timeout": 3.0, "heartbeat_interval": 0.5}
    engine = fast_bus(redis_url, prefix, "engine", **relaxed)
    await engine.start()
    worker = fast_bus(redis_url, prefix, "worker", **relaxed)
    await worker.start()
    seen: list[Incoming] = []
    loop = asyncio.create_task(echo_engine(engine, seen, []))
    blob = "x" * 2000
    try:
        for start in range(0, 400, 50):
            await asyncio.gather(
                *(worker.request("place", {"n": n, "blob": blob}) for n in range(start, start + 50))
            )
        assert await raw.xlen(engine.command_stream) < 100  # ~0.8 MB sent

        held = asyncio.create_task(worker.request("hold", {"n": -1}, timeout=30))
        for _ in range(500):  # taken by the engine (pending), never to be answered
            if (await raw.xpending(engine.command_stream, engine.group))["pending"] == 1:
                break
            await asyncio.sleep(0.01)
        for start in range(0, 200, 50):
            await asyncio.gather(
                *(worker.request("place", {"n": n, "blob": blob}) for n in range(start, start + 50))
            )
        # Everything from the unanswered command on is kept, for a successor to claim.
        pending = await raw.xpending(engine.command_stream, engine.group)
        assert pending["pending"] == 1
        held_id = pending["min"]
        [(_, fields)] = await raw.xrange(engine.command_stream, min=held_id, max=held_id)
        assert fields["kind"] == "hold"
        assert len(await raw.xrange(engine.command_stream, min=held_id)) == 201
        held.cancel()
    finally:
        loop.cancel()
        await worker.close()
        await engine.close()
