"""Sliding-window rate limiting: in-memory (one process) and Redis (shared by all workers).

Why sliding window log: it is exact (no burst of 2x the limit at a fixed-window boundary)
and gives a precise ``retry_after``. Denied hits are not recorded, so a client that keeps
hammering still gets exactly ``limit`` requests per window, and a locked-out login recovers
as its oldest failure ages out.

Login lockout uses the same primitive through ``FailureCounter`` (5 failures per
account+IP per 15 minutes).
"""

from __future__ import annotations

import hashlib
import math
import time
import uuid
from abc import ABC, abstractmethod
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tradegraph.errors import RateLimited

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = [
    "LOGIN_MAX_FAILURES",
    "LOGIN_WINDOW_SECONDS",
    "Decision",
    "FailureCounter",
    "MemoryRateLimiter",
    "RateLimiter",
    "RedisRateLimiter",
    "login_failure_counter",
]

LOGIN_MAX_FAILURES = 5
LOGIN_WINDOW_SECONDS = 15 * 60


@dataclass(frozen=True, slots=True)
class Decision:
    """Outcome of a check: ``remaining`` hits left in the window, ``retry_after`` seconds."""

    allowed: bool
    remaining: int
    retry_after: float

    def raise_if_denied(self, message: str = "Too many requests.") -> None:
        """Turn a denial into ``RateLimited`` (retry hint in whole seconds, rounded up)."""
        if not self.allowed:
            seconds = max(1, math.ceil(self.retry_after))
            raise RateLimited(f"{message} Try again in {seconds} s.")


def _validate(key: str, limit: int, window_seconds: float) -> None:
    if not key:
        raise ValueError("rate limit key must not be empty")
    if limit < 1:
        raise ValueError("limit must be >= 1")
    if not window_seconds > 0:
        raise ValueError("window_seconds must be > 0")


class RateLimiter(ABC):
    """Allow at most ``limit`` hits per ``key`` in any ``window_seconds`` interval."""

    @abstractmethod
    async def hit(self, key: str, limit: int, window_seconds: float) -> Decision:
        """Count one hit if allowed; a denied hit is not counted."""

    @abstractmethod
    async def peek(self, key: str, limit: int, window_seconds: float) -> Decision:
        """Would a hit be allowed now? Counts nothing."""

    @abstractmethod
    async def hit_all(
        self, checks: Sequence[tuple[str, int, float]]
    ) -> tuple[int, Decision] | None:
        """One hit on every ``(key, limit, window_seconds)``, all or none, atomically.

        Returns None when all allowed (and counted), else the first denial and its index
        in ``checks`` (nothing counted). One round trip on Redis, where ``hit`` per key
        would take one each.
        """

    @abstractmethod
    async def reset(self, key: str) -> None:
        """Forget every hit for ``key`` (e.g. after a successful login)."""


@dataclass(slots=True)
class _Entry:
    window: float
    times: deque[float] = field(default_factory=deque)


class MemoryRateLimiter(RateLimiter):
    """Per-process limiter for the embedded default and tests.

    Memory is bounded: at most ``max_keys`` keys (least recently hit evicted first) and at
    most ``limit`` timestamps per key; keys whose window has passed are swept on each call.
    Not shared between processes - use ``RedisRateLimiter`` with several workers.
    """

    _SWEEP_BATCH = 32

    def __init__(
        self, *, max_keys: int = 100_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be >= 1")
        self._max_keys = max_keys
        self._clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def _sweep(self, now: float) -> None:
        # The head is the least recently hit key; drop it while its newest hit has expired.
        for _ in range(self._SWEEP_BATCH):
            if not self._entries:
                return
            key, entry = next(iter(self._entries.items()))
            if entry.times and entry.times[-1] > now - entry.window:
                return
            del self._entries[key]

    def _apply(self, key: str, limit: int, window: float, *, record: bool) -> Decision:
        # No awaits in here: under asyncio the check-and-record is atomic.
        _validate(key, limit, window)
        now = self._clock()
        self._sweep(now)
        entry = self._entries.get(key)
        times: deque[float] = entry.times if entry is not None else deque()
        while times and times[0] <= now - window:
            times.popleft()
        count = len(times)
        if count < limit:
            if record:
                if entry is None:
                    entry = _Entry(window, times)
                    self._entries[key] = entry
                entry.window = window
                times.append(now)
                self._entries.move_to_end(key)
                while len(self._entries) > self._max_keys:
                    self._entries.popitem(last=False)
                count += 1
            return Decision(allowed=True, remaining=limit - count, retry_after=0.0)
        # The slot frees when the hit at index (count - limit) leaves the window.
        retry = times[count - limit] + window - now
        return Decision(allowed=False, remaining=0, retry_after=max(0.0, retry))

    async def hit(self, key: str, limit: int, window_seconds: float) -> Decision:
        return self._apply(key, limit, window_seconds, record=True)

    async def peek(self, key: str, limit: int, window_seconds: float) -> Decision:
        return self._apply(key, limit, window_seconds, record=False)

    async def hit_all(
        self, checks: Sequence[tuple[str, int, float]]
    ) -> tuple[int, Decision] | None:
        # No awaits: checking all and then recording all is atomic under asyncio.
        for index, (key, limit, window) in enumerate(checks):
            decision = self._apply(key, limit, window, record=False)
            if not decision.allowed:
                return index, decision
        for key, limit, window in checks:
            self._apply(key, limit, window, record=True)
        return None

    async def reset(self, key: str) -> None:
        self._entries.pop(key, None)


# KEYS[1] = sorted set of hit timestamps (microseconds, Redis server clock)
# ARGV = limit, window_us, record (1/0), unique member
_SLIDING_WINDOW_LUA = """
local key = KEYS[1]
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local record = ARGV[3] == '1'
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
local count = redis.call('ZCARD', key)
if count < limit then
  if record then
    redis.call('ZADD', key, now, ARGV[4])
    redis.call('PEXPIRE', key, math.ceil(window / 1000))
    count = count + 1
  end
  return {1, limit - count, 0}
end
local idx = count - limit
local oldest = redis.call('ZRANGE', key, idx, idx, 'WITHSCORES')
local retry = tonumber(oldest[2]) + window - now
if retry < 0 then retry = 0 end
return {0, 0, retry}
"""


# KEYS = sorted sets; ARGV = unique member, then limit and window_us per key.
# Checks every key first and records only if all allow: {1} or {0, retry_us, index}.
_SLIDING_WINDOW_ALL_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
for i, key in ipairs(KEYS) do
  local limit = tonumber(ARGV[2 * i])
  local window = tonumber(ARGV[2 * i + 1])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  local count = redis.call('ZCARD', key)
  if count >= limit then
    local oldest = redis.call('ZRANGE', key, count - limit, count - limit, 'WITHSCORES')
    local retry = tonumber(oldest[2]) + window - now
    if retry < 0 then retry = 0 end
    return {0, retry, i}
  end
end
for i, key in ipairs(KEYS) do
  local window = tonumber(ARGV[2 * i + 1])
  redis.call('ZADD', key, now, ARGV[1])
  redis.call('PEXPIRE', key, math.ceil(window / 1000))
end
return {1}
"""


class RedisRateLimiter(RateLimiter):
    """Limiter shared by all API workers: one atomic Lua script per call.

    Uses the Redis server clock (``TIME``) so workers with skewed clocks agree. Redis errors
    propagate: the caller decides whether to fail open or closed.
    """

    def __init__(self, client: Redis, *, prefix: str = "tradegraph:rl:") -> None:
        self._client = client
        self._prefix = prefix
        self._script = client.register_script(_SLIDING_WINDOW_LUA)
        self._script_all = client.register_script(_SLIDING_WINDOW_ALL_LUA)

    def _key(self, key: str) -> str:
        return self._prefix + key

    async def _run(self, key: str, limit: int, window_seconds: float, record: bool) -> Decision:
        _validate(key, limit, window_seconds)
        window_us = max(1, round(window_seconds * 1_000_000))
        result: Any = await self._script(
            keys=[self._key(key)],
            args=[limit, window_us, 1 if record else 0, uuid.uuid4().hex],
        )
        allowed, remaining, retry_us = (int(v) for v in result)
        return Decision(
            allowed=bool(allowed),
            remaining=remaining,
            retry_after=retry_us / 1_000_000,
        )

    async def hit(self, key: str, limit: int, window_seconds: float) -> Decision:
        return await self._run(key, limit, window_seconds, True)

    async def peek(self, key: str, limit: int, window_seconds: float) -> Decision:
        return await self._run(key, limit, window_seconds, False)

    async def hit_all(
        self, checks: Sequence[tuple[str, int, float]]
    ) -> tuple[int, Decision] | None:
        if not checks:
            return None
        args: list[Any] = [uuid.uuid4().hex]
        for key, limit, window in checks:
            _validate(key, limit, window)
            args += [limit, max(1, round(window * 1_000_000))]
        result: Any = await self._script_all(
            keys=[self._key(key) for key, _, _ in checks], args=args
        )
        if int(result[0]) == 1:
            return None
        retry = int(result[1]) / 1_000_000
        return int(result[2]) - 1, Decision(allowed=False, remaining=0, retry_after=retry)

    async def reset(self, key: str) -> None:
        await self._client.delete(self._key(key))


class FailureCounter:
    """Counts failures per subject (e.g. account + IP) to lock out brute force.

    Race-free login flow - count the attempt *before* checking the password, clear on
    success, so parallel guesses cannot all slip past a check made before any failure
    was recorded::

        decision = await counter.record(email, ip)
        decision.raise_if_denied("Too many failed logins.")
        if not verify_password(...):
            return wrong_password_error
        await counter.clear(email, ip)

    ``check`` only looks (e.g. to say "locked" without spending an attempt). Subject parts
    are hashed, so emails and IPs are not stored in Redis in clear.
    """

    def __init__(
        self,
        limiter: RateLimiter,
        *,
        namespace: str,
        max_failures: int,
        window_seconds: float,
    ) -> None:
        _validate(namespace, max_failures, window_seconds)
        self._limiter = limiter
        self._namespace = namespace
        self.max_failures = max_failures
        self.window_seconds = window_seconds

    def key_for(self, *parts: str) -> str:
        if not parts:
            raise ValueError("at least one subject part is required")
        joined = "\x1f".join(p.strip().casefold() for p in parts)
        return f"{self._namespace}:{hashlib.sha256(joined.encode()).hexdigest()[:32]}"

    async def check(self, *parts: str) -> Decision:
        return await self._limiter.peek(
            self.key_for(*parts), self.max_failures, self.window_seconds
        )

    async def record(self, *parts: str) -> Decision:
        return await self._limiter.hit(self.key_for(*parts), self.max_failures, self.window_seconds)

    async def clear(self, *parts: str) -> None:
        await self._limiter.reset(self.key_for(*parts))


def login_failure_counter(limiter: RateLimiter) -> FailureCounter:
    """The login lockout policy: 5 failures per account+IP per 15 minutes."""
    return FailureCounter(
        limiter,
        namespace="login-fail",
        max_failures=LOGIN_MAX_FAILURES,
        window_seconds=LOGIN_WINDOW_SECONDS,
    )
