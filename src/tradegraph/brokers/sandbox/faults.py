"""Scripted misbehaviour for the fake brokers: throttling, server errors, slowness, drops.

Retry, backoff and timeout code paths are only trustworthy if something exercises them,
so each fake consults a ``FaultInjector`` before answering. Faults are queued with a
count and an optional match on the request (path or Deriv message type) and are used up
in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from starlette.types import ASGIApp, Receive, Scope, Send


class FaultKind(StrEnum):
    STATUS = "status"  # answer with an HTTP status (HTTP fakes) or an error reply (Deriv)
    DELAY = "delay"  # answer late
    DROP = "drop"  # drop the connection without answering (Deriv websocket)


@dataclass(slots=True)
class Fault:
    kind: FaultKind
    remaining: int = 1
    match: str | None = None
    status: int = 500
    retry_after: str | None = None
    delay: float = 0.0
    error_code: str | None = None

    def matches(self, key: str) -> bool:
        return self.match is None or self.match in key


class FaultInjector:
    """A queue of faults plus a log of which requests arrived (for counting attempts)."""

    def __init__(self) -> None:
        self._faults: list[Fault] = []
        self.hits: Counter[str] = Counter()
        self._released: asyncio.Event | None = None

    def add(self, fault: Fault) -> Fault:
        self._faults.append(fault)
        return fault

    def status(
        self,
        status: int,
        *,
        times: int = 1,
        retry_after: float | str | None = None,
        match: str | None = None,
    ) -> Fault:
        """Answer the next ``times`` matching requests with ``status``."""
        after = None if retry_after is None else str(retry_after)
        return self.add(
            Fault(FaultKind.STATUS, times, match=match, status=status, retry_after=after)
        )

    def error(self, code: str, *, times: int = 1, match: str | None = None) -> Fault:
        """Deriv: answer with ``{"error": {"code": code}}`` instead of the real reply."""
        return self.add(Fault(FaultKind.STATUS, times, match=match, error_code=code))

    def delay(self, seconds: float, *, times: int = 1, match: str | None = None) -> Fault:
        """Hold the next matching requests for ``seconds`` before answering."""
        return self.add(Fault(FaultKind.DELAY, times, match=match, delay=seconds))

    def drop(self, *, times: int = 1, match: str | None = None) -> Fault:
        """Deriv: close the websocket abruptly instead of answering."""
        return self.add(Fault(FaultKind.DROP, times, match=match))

    def clear(self) -> None:
        self._faults.clear()

    def take(self, key: str) -> Fault | None:
        """Record a request and use up the first fault that applies to it."""
        self.hits[key] += 1
        for fault in self._faults:
            if fault.remaining > 0 and fault.matches(key):
                fault.remaining -= 1
                if fault.remaining == 0:
                    self._faults.remove(fault)
                return fault
        return None

    def count(self, match: str) -> int:
        """How many requests containing ``match`` arrived."""
        return sum(n for key, n in self.hits.items() if match in key)

    async def sleep(self, seconds: float) -> None:
        """A delay that ``release()`` cuts short, so stopping a fake never waits on it."""
        if self._released is None:
            self._released = asyncio.Event()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._released.wait(), timeout=seconds)

    def release(self) -> None:
        if self._released is not None:
            self._released.set()
        self._released = None


BodyFactory = Callable[[int], bytes]


def _default_body(status: int) -> bytes:
    return json.dumps({"message": f"injected HTTP {status}"}).encode()


class FaultMiddleware:
    """ASGI middleware applying HTTP faults before the fake's own routes run."""

    def __init__(
        self, app: ASGIApp, injector: FaultInjector, body: BodyFactory = _default_body
    ) -> None:
        self.app = app
        self.injector = injector
        self.body = body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        fault = self.injector.take(f"{scope['method']} {scope['path']}")
        if fault is not None and fault.kind is FaultKind.DELAY:
            await self.injector.sleep(fault.delay)
        elif fault is not None and fault.kind is FaultKind.STATUS:
            payload = self.body(fault.status)
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ]
            if fault.retry_after is not None:
                headers.append((b"retry-after", fault.retry_after.encode()))
            await send({"type": "http.response.start", "status": fault.status, "headers": headers})
            await send({"type": "http.response.body", "body": payload})
            return
        await self.app(scope, receive, send)
