"""The HTTP client every REST broker adapter goes through.

One place decides timeouts, retries and what counts as "the broker is struggling", so the
Kite and BingX adapters only deal with their own wire formats. Nothing here logs URLs with
query strings or headers: those carry signatures and tokens.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Mapping
from decimal import Decimal
from enum import Enum
from typing import Any

import httpx

from tradegraph.brokers.adapters.retry import (
    RetryableFailure,
    RetryPolicy,
    call_with_retries,
    parse_retry_after,
)
from tradegraph.brokers.protocol import BrokerProvider, BrokerUnavailable

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})

QueryParams = Mapping[str, str] | tuple[tuple[str, str], ...]


class Verdict(Enum):
    """How a received response should be treated by the retry loop."""

    OK = "ok"
    THROTTLED = "throttled"  # refused before doing anything: always safe to retry
    SERVER_ERROR = "server_error"  # may have acted: retry only idempotent calls


def status_verdict(response: httpx.Response) -> Verdict:
    """Default classification by status: 429 throttled, 500/502/503/504 server errors."""
    if response.status_code == 429:
        return Verdict.THROTTLED
    if response.status_code in (500, 502, 503, 504):
        return Verdict.SERVER_ERROR
    return Verdict.OK


def decode_json(response: httpx.Response, provider: BrokerProvider) -> Any:
    """Parse a reply keeping every fractional number as ``Decimal``."""
    try:
        return json.loads(response.content, parse_float=Decimal)
    except ValueError:
        raise BrokerUnavailable(
            f"{provider} sent an unreadable reply (HTTP {response.status_code})",
            provider=provider,
        ) from None


class BrokerHttpClient:
    """``httpx.AsyncClient`` with explicit timeouts and bounded, jittered retries."""

    def __init__(
        self,
        base_url: str,
        *,
        provider: BrokerProvider,
        policy: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        headers: Mapping[str, str] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.provider = provider
        self.policy = policy or RetryPolicy()
        self._rng = rng or random.Random()
        self._client = httpx.AsyncClient(
            base_url=base_url,
            transport=transport,
            headers=dict(headers or {}),
            timeout=httpx.Timeout(
                self.policy.attempt_timeout,
                connect=self.policy.connect_timeout,
                pool=self.policy.connect_timeout,
            ),
            follow_redirects=False,
        )

    @property
    def client(self) -> httpx.AsyncClient:
        return self._client

    async def aclose(self) -> None:
        await self._client.aclose()

    async def send(
        self,
        build: Callable[[], httpx.Request],
        *,
        what: str,
        idempotent: bool,
        verdict: Callable[[httpx.Response], Verdict] = status_verdict,
    ) -> httpx.Response:
        """Send ``build()`` (called again for every attempt, so signatures stay fresh).

        Returns the first response judged ``OK`` (which may be a 4xx for the adapter to
        map); raises ``BrokerUnavailable`` when the retry budget is spent.
        """

        async def attempt() -> httpx.Response:
            request = build()
            try:
                response = await self._client.send(request)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                raise RetryableFailure(
                    f"could not connect ({type(exc).__name__})", request_sent=False
                ) from None
            except httpx.TimeoutException:
                raise RetryableFailure("timed out", request_sent=True) from None
            except httpx.TransportError as exc:
                raise RetryableFailure(
                    f"connection failed ({type(exc).__name__})", request_sent=True
                ) from None
            kind = verdict(response)
            if kind is Verdict.OK:
                return response
            raise RetryableFailure(
                f"HTTP {response.status_code}",
                request_sent=kind is Verdict.SERVER_ERROR,
                retry_after=parse_retry_after(response.headers.get("retry-after")),
            )

        return await call_with_retries(
            attempt,
            policy=self.policy,
            provider=self.provider,
            what=what,
            idempotent=idempotent,
            rng=self._rng,
        )

    async def request(
        self,
        method: str,
        path: str,
        *,
        what: str,
        params: QueryParams | None = None,
        data: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        idempotent: bool | None = None,
        verdict: Callable[[httpx.Response], Verdict] = status_verdict,
    ) -> httpx.Response:
        """Convenience over ``send`` for requests that need no per-attempt rebuilding."""
        method = method.upper()

        def build() -> httpx.Request:
            return self._client.build_request(
                method, path, params=params, data=data, headers=headers
            )

        return await self.send(
            build,
            what=what,
            idempotent=method in IDEMPOTENT_METHODS if idempotent is None else idempotent,
            verdict=verdict,
        )
