"""Retry/backoff/deadline engine shared by all broker adapters."""

from __future__ import annotations

import asyncio
import random
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from tradegraph.brokers.adapters.retry import (
    RetryableFailure,
    RetryPolicy,
    call_with_retries,
    parse_retry_after,
)
from tradegraph.brokers.protocol import BrokerProvider, BrokerUnavailable

FAST = RetryPolicy(max_attempts=4, base_delay=0.01, max_delay=0.02, attempt_timeout=1, deadline=5)


class Flaky:
    """Fails with the given failures in order, then returns "ok"."""

    def __init__(self, *failures: BaseException) -> None:
        self.failures = list(failures)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return "ok"


def run(attempt: Flaky, *, idempotent: bool = True, policy: RetryPolicy = FAST):
    return call_with_retries(
        attempt,
        policy=policy,
        provider=BrokerProvider.BINGX,
        what="test call",
        idempotent=idempotent,
        rng=random.Random(7),
    )


def test_retry_after_seconds_and_dates() -> None:
    now = datetime(2024, 1, 1, 12, 0, tzinfo=UTC)
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after(" 0.5 ") == 0.5
    assert parse_retry_after("-3") == 0.0
    assert (
        parse_retry_after(format_datetime(now + timedelta(seconds=30), usegmt=True), now=now) == 30
    )
    assert (
        parse_retry_after(format_datetime(now - timedelta(seconds=30), usegmt=True), now=now) == 0
    )
    assert parse_retry_after("soon") is None
    assert parse_retry_after("") is None
    assert parse_retry_after(None) is None


def test_backoff_grows_with_jitter_and_is_capped() -> None:
    policy = RetryPolicy(base_delay=0.1, max_delay=1.0)
    rng = random.Random(1)
    for retry, step in [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.0), (9, 1.0)]:
        delays = {policy.backoff(retry, rng) for _ in range(50)}
        assert all(step / 2 <= d <= step for d in delays)
        assert len(delays) > 1  # jittered, not lockstep


def test_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError):
        RetryPolicy(deadline=0)
    with pytest.raises(ValueError):
        RetryPolicy(base_delay=2, max_delay=1)


async def test_retries_then_succeeds() -> None:
    attempt = Flaky(
        RetryableFailure("HTTP 503", request_sent=True),
        RetryableFailure("HTTP 429", request_sent=False, retry_after=0.01),
    )
    assert await run(attempt) == "ok"
    assert attempt.calls == 3


async def test_exhausted_retries_raise_broker_unavailable() -> None:
    attempt = Flaky(*[RetryableFailure("HTTP 500", request_sent=True) for _ in range(10)])
    with pytest.raises(BrokerUnavailable) as info:
        await run(attempt)
    assert info.value.code == "BROKER_UNAVAILABLE"
    assert info.value.provider is BrokerProvider.BINGX
    assert "4 attempts" in info.value.message
    assert attempt.calls == FAST.max_attempts


async def test_non_idempotent_call_is_not_repeated_once_sent() -> None:
    attempt = Flaky(RetryableFailure("timed out", request_sent=True))
    with pytest.raises(BrokerUnavailable, match="outcome is unknown"):
        await run(attempt, idempotent=False)
    assert attempt.calls == 1


async def test_non_idempotent_call_is_retried_when_never_sent() -> None:
    attempt = Flaky(RetryableFailure("could not connect", request_sent=False))
    assert await run(attempt, idempotent=False) == "ok"
    assert attempt.calls == 2


async def test_retry_after_beyond_the_cap_fails_fast() -> None:
    attempt = Flaky(RetryableFailure("HTTP 429", request_sent=False, retry_after=3600))
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable, match="asked to wait"):
        await run(attempt)
    assert time.monotonic() - started < 0.5
    assert attempt.calls == 1


async def test_retry_after_is_honoured() -> None:
    attempt = Flaky(RetryableFailure("HTTP 429", request_sent=False, retry_after=0.3))
    started = time.monotonic()
    assert await run(attempt) == "ok"
    assert time.monotonic() - started >= 0.3


async def test_hanging_attempt_is_cut_by_the_deadline() -> None:
    calls = 0

    async def hang() -> str:
        nonlocal calls
        calls += 1
        await asyncio.sleep(60)
        return "never"

    policy = RetryPolicy(
        max_attempts=10, base_delay=0.01, max_delay=0.02, attempt_timeout=0.2, deadline=0.7
    )
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable):
        await call_with_retries(
            hang, policy=policy, provider=BrokerProvider.DERIV, what="hang", idempotent=True
        )
    assert time.monotonic() - started < 1.2
    assert 2 <= calls <= 4


async def test_domain_errors_from_an_attempt_pass_through_unretried() -> None:
    from tradegraph.brokers.protocol import BrokerRejected

    attempt = Flaky(BrokerRejected("no"))
    with pytest.raises(BrokerRejected):
        await run(attempt)
    assert attempt.calls == 1
