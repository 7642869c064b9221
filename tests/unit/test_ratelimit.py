"""Rate limiter contract (memory and Redis), memory bounds, login failure counter."""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError

from tradegraph.errors import RateLimited
from tradegraph.security.ratelimit import (
    LOGIN_MAX_FAILURES,
    LOGIN_WINDOW_SECONDS,
    Decision,
    MemoryRateLimiter,
    RateLimiter,
    RedisRateLimiter,
    login_failure_counter,
)

REDIS_URL = "redis://127.0.0.1:6379/0"


async def connect_redis_or_skip(url: str = REDIS_URL) -> Redis:
    """Skip when Redis is down - except under CI=true, where Redis is mandatory."""
    client = Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=2)
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        await client.aclose()
        reason = f"Redis not reachable at {url} ({type(exc).__name__}: {exc})"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason}; Redis is mandatory when CI=true")
        pytest.skip(reason)
    return client


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
async def redis_limiter() -> AsyncIterator[tuple[RedisRateLimiter, Redis, str]]:
    client = await connect_redis_or_skip()
    prefix = f"tgtest:rl:{uuid.uuid4().hex}:"
    try:
        yield RedisRateLimiter(client, prefix=prefix), client, prefix
    finally:
        keys = [k async for k in client.scan_iter(match=prefix + "*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def limiter(request: pytest.FixtureRequest) -> AsyncIterator[RateLimiter]:
    if request.param == "memory":
        yield MemoryRateLimiter()
        return
    client = await connect_redis_or_skip()
    prefix = f"tgtest:rl:{uuid.uuid4().hex}:"
    try:
        yield RedisRateLimiter(client, prefix=prefix)
    finally:
        keys = [k async for k in client.scan_iter(match=prefix + "*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


# ---- contract: both implementations ---------------------------------------------------------


async def test_allows_up_to_limit_then_denies(limiter: RateLimiter) -> None:
    decisions = [await limiter.hit("k", 3, 10) for _ in range(3)]
    assert [d.allowed for d in decisions] == [True, True, True]
    assert [d.remaining for d in decisions] == [2, 1, 0]
    assert all(d.retry_after == 0 for d in decisions)
    denied = await limiter.hit("k", 3, 10)
    assert not denied.allowed and denied.remaining == 0
    assert 9 < denied.retry_after <= 10


async def test_peek_counts_nothing(limiter: RateLimiter) -> None:
    assert await limiter.peek("k", 2, 10) == Decision(True, 2, 0.0)
    await limiter.hit("k", 2, 10)
    assert (await limiter.peek("k", 2, 10)).remaining == 1
    assert (await limiter.peek("k", 2, 10)).remaining == 1
    await limiter.hit("k", 2, 10)
    peeked = await limiter.peek("k", 2, 10)
    assert not peeked.allowed and peeked.retry_after > 9


async def test_keys_are_independent_and_reset_clears(limiter: RateLimiter) -> None:
    await limiter.hit("a", 1, 10)
    assert not (await limiter.hit("a", 1, 10)).allowed
    assert (await limiter.hit("b", 1, 10)).allowed
    await limiter.reset("a")
    assert (await limiter.hit("a", 1, 10)).allowed
    assert not (await limiter.hit("b", 1, 10)).allowed
    await limiter.reset("never-seen")


async def test_window_slides_in_real_time(limiter: RateLimiter) -> None:
    window = 0.3
    assert (await limiter.hit("w", 2, window)).allowed
    await asyncio.sleep(0.15)
    assert (await limiter.hit("w", 2, window)).allowed
    denied = await limiter.hit("w", 2, window)
    assert not denied.allowed and 0 < denied.retry_after <= 0.15 + 0.02
    # Only the first hit leaves the window: exactly one slot frees, not the whole window.
    await asyncio.sleep(denied.retry_after + 0.03)
    assert (await limiter.hit("w", 2, window)).allowed
    assert not (await limiter.hit("w", 2, window)).allowed


async def test_lowered_limit_waits_for_the_right_hit(limiter: RateLimiter) -> None:
    stamps = []
    for _ in range(4):
        stamps.append(time.monotonic())
        assert (await limiter.hit("low", 4, 1.0)).allowed
        await asyncio.sleep(0.1)
    # 4 hits in the window, limit now 2: a hit needs <= 1 left, so the 3rd oldest must go.
    now = time.monotonic()
    d = await limiter.peek("low", 2, 1.0)
    assert not d.allowed
    assert d.retry_after == pytest.approx(stamps[2] + 1.0 - now, abs=0.06)


async def test_concurrent_hits_never_exceed_limit(limiter: RateLimiter) -> None:
    results = await asyncio.gather(*(limiter.hit("c", 5, 10) for _ in range(40)))
    assert sum(d.allowed for d in results) == 5


async def test_argument_validation(limiter: RateLimiter) -> None:
    for key, limit, window in [("", 1, 1), ("k", 0, 1), ("k", 1, 0), ("k", 1, -1)]:
        with pytest.raises(ValueError):
            await limiter.hit(key, limit, window)


async def test_login_failure_counter(limiter: RateLimiter) -> None:
    counter = login_failure_counter(limiter)
    assert (counter.max_failures, counter.window_seconds) == (5, 900)
    assert (LOGIN_MAX_FAILURES, LOGIN_WINDOW_SECONDS) == (5, 900)
    for i in range(5):
        d = await counter.record("Alice@Example.com", "203.0.113.7")
        assert d.allowed and d.remaining == 4 - i
    assert not (await counter.check("alice@example.com ", "203.0.113.7")).allowed
    sixth = await counter.record("alice@example.com", "203.0.113.7")
    assert not sixth.allowed and 890 < sixth.retry_after <= 900
    with pytest.raises(RateLimited):
        sixth.raise_if_denied("Too many failed logins.")
    # Another IP (or another account) has its own budget.
    assert (await counter.check("alice@example.com", "198.51.100.1")).allowed
    assert (await counter.check("bob@example.com", "203.0.113.7")).allowed
    await counter.clear("alice@example.com", "203.0.113.7")
    assert (await counter.check("alice@example.com", "203.0.113.7")).remaining == 5


# ---- memory implementation -------------------------------------------------------------------


async def test_memory_sliding_window_is_exact() -> None:
    clock = FakeClock()
    rl = MemoryRateLimiter(clock=clock)
    for t in (0, 5, 9):
        clock.now = 1000 + t
        assert (await rl.hit("k", 3, 10)).allowed
    clock.now = 1009.5
    denied = await rl.hit("k", 3, 10)
    assert not denied.allowed and denied.retry_after == pytest.approx(0.5)
    clock.now = 1010  # the t=0 hit leaves the window, only one slot frees
    assert (await rl.hit("k", 3, 10)).allowed
    assert (await rl.hit("k", 3, 10)).allowed is False
    assert (await rl.peek("k", 3, 10)).retry_after == pytest.approx(5)


async def test_memory_denied_hits_are_not_counted() -> None:
    clock = FakeClock()
    rl = MemoryRateLimiter(clock=clock)
    await rl.hit("k", 1, 10)
    for _ in range(100):
        clock.advance(0.05)
        assert not (await rl.hit("k", 1, 10)).allowed
    clock.now = 1010
    assert (await rl.hit("k", 1, 10)).allowed


async def test_memory_lowered_limit_retry_after_uses_right_entry() -> None:
    clock = FakeClock()
    rl = MemoryRateLimiter(clock=clock)
    for _ in range(4):
        await rl.hit("k", 4, 10)
        clock.advance(1)
    # Hits at t=0,1,2,3, now t=4, limit lowered to 2: a hit needs <= 1 in the window, so
    # the 3rd oldest (t=2) must leave it -> t=12, 8 s from now.
    d = await rl.peek("k", 2, 10)
    assert not d.allowed and d.retry_after == pytest.approx(8)


async def test_memory_is_bounded_by_max_keys() -> None:
    clock = FakeClock()
    rl = MemoryRateLimiter(max_keys=100, clock=clock)
    for i in range(1000):
        await rl.hit(f"k{i}", 3, 60)
    assert len(rl) == 100
    # Least recently hit were evicted; the newest survive.
    assert (await rl.peek("k999", 3, 60)).remaining == 2
    assert (await rl.peek("k0", 3, 60)).remaining == 3


async def test_memory_evicts_least_recently_hit_not_oldest_created() -> None:
    clock = FakeClock()
    rl = MemoryRateLimiter(max_keys=3, clock=clock)
    for key in ("a", "b", "c", "a", "d"):
        await rl.hit(key, 5, 60)
    assert len(rl) == 3
    assert (await rl.peek("a", 5, 60)).remaining == 3  # kept: hit recently
    assert (await rl.peek("b", 5, 60)).remaining == 5  # evicted


async def test_memory_expired_keys_are_swept() -> None:
    clock = FakeClock()
    rl = MemoryRateLimiter(clock=clock)
    for i in range(30):
        await rl.hit(f"k{i}", 3, 10)
    assert len(rl) == 30
    clock.advance(11)
    await rl.hit("fresh", 3, 10)
    assert len(rl) == 1


async def test_memory_peek_does_not_create_keys() -> None:
    rl = MemoryRateLimiter()
    await rl.peek("ghost", 3, 10)
    assert len(rl) == 0


def test_memory_rejects_bad_max_keys() -> None:
    with pytest.raises(ValueError):
        MemoryRateLimiter(max_keys=0)


def test_decision_raise_if_denied() -> None:
    Decision(True, 0, 0.0).raise_if_denied()
    with pytest.raises(RateLimited, match="in 3 s") as info:
        Decision(False, 0, 2.01).raise_if_denied("Slow down.")
    assert info.value.code == "RATE_LIMITED"
    with pytest.raises(RateLimited, match="in 1 s"):
        Decision(False, 0, 0.0).raise_if_denied()


async def test_failure_counter_keys_hide_subject() -> None:
    counter = login_failure_counter(MemoryRateLimiter())
    key = counter.key_for("alice@example.com", "203.0.113.7")
    assert "alice" not in key and "203.0.113.7" not in key
    assert key == counter.key_for(" ALICE@example.com", "203.0.113.7")
    assert key != counter.key_for("alice@example.com", "203.0.113.8")
    with pytest.raises(ValueError):
        counter.key_for()


# ---- redis implementation --------------------------------------------------------------------


@pytest.mark.redis
async def test_redis_uses_prefix_and_sets_ttl(
    redis_limiter: tuple[RedisRateLimiter, Redis, str],
) -> None:
    rl, client, prefix = redis_limiter
    await rl.hit("user:1", 5, 30)
    assert await client.exists(prefix + "user:1") == 1
    assert await client.exists("user:1") == 0
    ttl_ms = await client.pttl(prefix + "user:1")
    assert 0 < ttl_ms <= 30_000
    assert await client.zcard(prefix + "user:1") == 1
    await rl.peek("user:2", 5, 30)
    assert await client.exists(prefix + "user:2") == 0
    await rl.reset("user:1")
    assert await client.exists(prefix + "user:1") == 0


@pytest.mark.redis
async def test_redis_limiters_share_state_across_instances(
    redis_limiter: tuple[RedisRateLimiter, Redis, str],
) -> None:
    rl, client, prefix = redis_limiter
    other_worker = RedisRateLimiter(client, prefix=prefix)
    await rl.hit("shared", 2, 30)
    await other_worker.hit("shared", 2, 30)
    assert not (await rl.hit("shared", 2, 30)).allowed
    isolated = RedisRateLimiter(client, prefix=prefix + "other:")
    assert (await isolated.hit("shared", 2, 30)).allowed


async def test_unreachable_redis_skips_locally_but_fails_in_ci(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"redis://127.0.0.1:{port}/0"  # nothing listens there any more
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="not reachable"):
        await connect_redis_or_skip(url)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="mandatory when CI=true"):
        await connect_redis_or_skip(url)


async def test_hit_all_counts_all_or_none(limiter: RateLimiter) -> None:
    checks = [("all:ip", 5, 60.0), ("all:user", 2, 60.0)]
    assert await limiter.hit_all(checks) is None
    assert await limiter.hit_all(checks) is None
    denied = await limiter.hit_all(checks)  # the user key is full
    assert denied is not None
    index, decision = denied
    assert index == 1 and not decision.allowed and 0 < decision.retry_after <= 60
    # Nothing counted on the denied call, the IP key included: 3 of 5 left.
    assert (await limiter.peek("all:ip", 5, 60)).remaining == 3
    assert (await limiter.peek("all:user", 2, 60)).remaining == 0
    assert await limiter.hit_all([]) is None
    with pytest.raises(ValueError):
        await limiter.hit_all([("", 1, 60.0)])
