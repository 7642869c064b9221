"""Bounded retries with exponential backoff and jitter, shared by the HTTP and websocket
adapters.

Brokers throttle and hiccup; a request must still finish (or fail with
``BROKER_UNAVAILABLE``) within a hard deadline, so every attempt is time-boxed and the
whole call has an overall budget. A request that may already have reached the broker
(a timeout after sending, a 5xx) is retried only when repeating it is harmless: placing an
order twice is worse than reporting "outcome unknown".
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TypeVar

from tradegraph.brokers.protocol import BrokerProvider, BrokerUnavailable

log = logging.getLogger("tradegraph.brokers")

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Limits for one broker call. All times are seconds."""

    max_attempts: int = 4
    base_delay: float = 0.25
    max_delay: float = 4.0
    connect_timeout: float = 5.0
    attempt_timeout: float = 10.0
    deadline: float = 30.0
    max_retry_after: float = 10.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if min(self.attempt_timeout, self.deadline, self.connect_timeout) <= 0:
            raise ValueError("timeouts must be positive")
        if self.base_delay < 0 or self.max_delay < self.base_delay:
            raise ValueError("need 0 <= base_delay <= max_delay")

    def backoff(self, retry: int, rng: random.Random) -> float:
        """Delay before retry number ``retry`` (1-based): "equal jitter" exponential backoff.

        Half of the exponential step is fixed so delays always grow, the other half is random
        so many clients throttled together do not come back in lockstep.
        """
        step = min(self.max_delay, self.base_delay * (2 ** (retry - 1)))
        return step / 2 + rng.uniform(0, step / 2)


class RetryableFailure(Exception):
    """Raised by one attempt to ask for another.

    ``request_sent`` says the broker may have acted on the request (so only idempotent
    calls may repeat it); ``retry_after`` is the broker's own wait hint, if any.
    """

    def __init__(self, reason: str, *, request_sent: bool, retry_after: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.request_sent = request_sent
        self.retry_after = retry_after


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """``Retry-After`` as seconds: either delta-seconds or an HTTP date (RFC 9110)."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


async def call_with_retries(
    attempt: Callable[[], Awaitable[T]],
    *,
    policy: RetryPolicy,
    provider: BrokerProvider,
    what: str,
    idempotent: bool,
    rng: random.Random | None = None,
) -> T:
    """Run ``attempt`` until it returns, raises a non-retryable error, or the budget ends.

    Each attempt gets ``min(attempt_timeout, time left)``; a timed-out attempt counts as
    "may have been sent". Failures surface as ``BrokerUnavailable`` whose message names
    the call but never its arguments.
    """
    rng = rng or random.Random()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + policy.deadline
    number = 0
    while True:
        number += 1
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise BrokerUnavailable(
                f"{provider} {what}: no answer within {policy.deadline:g}s", provider=provider
            )
        try:
            async with asyncio.timeout(min(policy.attempt_timeout, remaining)):
                return await attempt()
        except TimeoutError:
            failure = RetryableFailure("timed out", request_sent=True)
        except RetryableFailure as exc:
            failure = exc

        if failure.request_sent and not idempotent:
            raise BrokerUnavailable(
                f"{provider} {what}: {failure.reason}; the outcome is unknown, "
                "check the broker before retrying",
                provider=provider,
            )
        if number >= policy.max_attempts:
            raise BrokerUnavailable(
                f"{provider} {what}: {failure.reason} after {number} attempts",
                provider=provider,
            )
        delay = policy.backoff(number, rng)
        if failure.retry_after is not None:
            if failure.retry_after > policy.max_retry_after:
                raise BrokerUnavailable(
                    f"{provider} {what}: {failure.reason}, asked to wait {failure.retry_after:g}s",
                    provider=provider,
                )
            delay = max(delay, failure.retry_after)
        if delay >= deadline - loop.time():
            raise BrokerUnavailable(
                f"{provider} {what}: {failure.reason}; no time left to retry",
                provider=provider,
            )
        log.warning(
            "broker call retry",
            extra={
                "provider": str(provider),
                "call": what,
                "attempt": number,
                "reason": failure.reason,
                "delay_s": round(delay, 3),
            },
        )
        await asyncio.sleep(delay)
