"""The websocket feed runner without a network: backoff, retry limits, the bounded buffer.

Connections are scripted test doubles and ``sleep`` is injected, so the delays the runner
*would* wait are recorded instead of waited.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import deque
from collections.abc import Iterable

import pytest
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.http11 import Response

from tradegraph.marketdata.feeds.base import (
    Backoff,
    FeedError,
    FeedGap,
    FeedSettings,
    FeedSocket,
    SymbolSpec,
)
from tradegraph.marketdata.feeds.binance import BinanceTradeFeed
from tradegraph.marketdata.ticks import Feed, Tick

BTC = SymbolSpec("BTCUSDT", "BTCUSD", price_decimals=2, qty_decimals=8)


def trade_frame(trade_id: int, price: str = "100.00") -> str:
    data = {"e": "trade", "E": 1, "s": "BTCUSDT", "t": trade_id, "p": price, "q": "1", "T": 1}
    return json.dumps({"stream": "btcusdt@trade", "data": data})


class ScriptedSocket:
    """Returns scripted frames, then either closes or blocks like a quiet connection."""

    def __init__(self, frames: Iterable[str], *, then_close: bool = True) -> None:
        self.frames = deque(frames)
        self.then_close = then_close
        self.exhausted = asyncio.Event()
        self.closed = False

    async def send(self, message: str) -> None:
        pass

    async def recv(self) -> str | bytes:
        if self.frames:
            return self.frames.popleft()
        self.exhausted.set()
        if self.then_close:
            raise ConnectionClosed(None, None)
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def close(self) -> None:
        self.closed = True


class ScriptedConnector:
    """Each call takes the next outcome: a socket to return or an exception to raise."""

    def __init__(self, outcomes: Iterable[FeedSocket | Exception]) -> None:
        self.outcomes = deque(outcomes)
        self.urls: list[str] = []

    async def __call__(self, url: str) -> FeedSocket:
        self.urls.append(url)
        outcome = self.outcomes.popleft() if self.outcomes else OSError("connection refused")
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


class RecordingSleep:
    """Records requested delays; sets the feed's stop signal after ``limit`` of them."""

    def __init__(self, limit: int) -> None:
        self.delays: list[float] = []
        self.limit = limit
        self.stop: asyncio.Event | None = None

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        if len(self.delays) >= self.limit:
            assert self.stop is not None
            self.stop.set()
        await asyncio.sleep(0)


def make_feed(
    connector: ScriptedConnector, sleep: RecordingSleep, **settings: object
) -> BinanceTradeFeed:
    options: dict[str, object] = {
        "backoff": Backoff(base_delay=0.5, max_delay=4.0, jitter=0.0),
        "start_timeout": 2.0,
    }
    options.update(settings)
    feed = BinanceTradeFeed(
        [BTC],
        base_url="ws://feed.invalid",
        settings=FeedSettings(**options),  # type: ignore[arg-type]
        connector=connector,
        sleep=sleep,
        rng=random.Random(7),
    )
    sleep.stop = feed.stop_event
    return feed


# ----------------------------------------------------------------------------- Backoff


def test_backoff_steps_double_and_cap() -> None:
    policy = Backoff(base_delay=0.5, max_delay=8.0, factor=2.0, jitter=0.0)
    assert [policy.step(n) for n in range(1, 9)] == [0.5, 1, 2, 4, 8, 8, 8, 8]
    # Far beyond any float exponent it still answers the cap instead of overflowing.
    assert policy.step(100_000) == 8.0


def test_backoff_jitter_stays_within_bounds_and_spreads() -> None:
    policy = Backoff(base_delay=1.0, max_delay=16.0, jitter=0.5)
    rng = random.Random(1)
    for attempt in range(1, 10):
        step = policy.step(attempt)
        draws = [policy.delay(attempt, rng) for _ in range(200)]
        assert all(step / 2 <= d <= step for d in draws)
        assert max(draws) - min(draws) > step / 4  # really jittered, not constant
    assert Backoff(jitter=0.0).delay(3, rng) == Backoff(jitter=0.0).step(3)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"base_delay": 0},
        {"base_delay": 2, "max_delay": 1},
        {"factor": 0.5},
        {"jitter": 1.5},
    ],
)
def test_backoff_rejects_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Backoff(**kwargs)


def test_step_is_one_based() -> None:
    with pytest.raises(ValueError):
        Backoff().step(0)


# ------------------------------------------------------------------ the runner's loop


async def test_reconnect_delays_grow_and_are_capped() -> None:
    connector = ScriptedConnector([])  # every attempt is refused
    sleep = RecordingSleep(limit=7)
    feed = make_feed(connector, sleep)
    assert isinstance(feed, Feed)
    await feed.start()  # returns: the loop ended on the stop signal while retrying
    await feed.stop()
    assert sleep.delays == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0]
    assert feed.connect_failures == 7
    assert feed.connects == 0
    assert feed.consecutive_failures == 7
    assert connector.urls[0] == "ws://feed.invalid/stream?streams=btcusdt@trade"
    assert "connect failed" in (feed.last_error or "")


async def test_jittered_delays_stay_under_the_cap() -> None:
    sleep = RecordingSleep(limit=12)
    feed = make_feed(
        ScriptedConnector([]), sleep, backoff=Backoff(base_delay=0.5, max_delay=4.0, jitter=0.5)
    )
    await feed.start()
    await feed.stop()
    assert len(sleep.delays) == 12
    assert all(0.25 <= d <= 4.0 for d in sleep.delays)
    assert all(d >= 2.0 for d in sleep.delays[4:])  # capped step 4 -> at least half of it


async def test_backoff_resets_after_a_connection_that_delivered_ticks() -> None:
    healthy = ScriptedSocket([trade_frame(1)])
    empty = ScriptedSocket([])  # accepts and hangs up at once: not healthy
    connector = ScriptedConnector([OSError("down"), OSError("down"), healthy, empty])
    sleep = RecordingSleep(limit=5)
    feed = make_feed(connector, sleep)
    await feed.start()
    await feed.stop()
    # fail, fail, healthy (reset), empty session, refused
    assert sleep.delays == [0.5, 1.0, 0.5, 1.0, 2.0]
    assert feed.connects == 2 and feed.reconnects == 1 and feed.disconnects == 2
    assert healthy.closed and empty.closed


async def test_retry_after_on_a_refused_handshake_is_honoured() -> None:
    refused = InvalidStatus(Response(429, "Too Many Requests", Headers({"Retry-After": "7"})))
    sleep = RecordingSleep(limit=2)
    feed = make_feed(ScriptedConnector([refused]), sleep)
    await feed.start()
    await feed.stop()
    assert sleep.delays == [7.0, 1.0]
    assert feed.last_error is not None


async def test_max_retries_gives_up_and_iteration_raises() -> None:
    sleep = RecordingSleep(limit=100)
    feed = make_feed(ScriptedConnector([]), sleep, max_retries=3)
    with pytest.raises(FeedError, match="gave up after 4"):
        await feed.start()
    assert sleep.delays == [0.5, 1.0, 2.0]
    with pytest.raises(FeedError):
        async for _ in feed:
            pass
    await feed.stop()


async def test_slow_consumer_drops_oldest_and_is_told() -> None:
    socket = ScriptedSocket([trade_frame(i, f"{i}.00") for i in range(1, 11)], then_close=False)
    feed = make_feed(ScriptedConnector([socket]), RecordingSleep(limit=100), buffer_size=3)
    await feed.start()
    await asyncio.wait_for(socket.exhausted.wait(), 5)
    assert feed.ticks == 10 and feed.buffered == 3 and feed.dropped == 7
    await feed.stop()
    items = [item async for item in feed.stream()]
    assert items[0] == FeedGap(source="binance", symbol=None, kind="overflow", missing=7)
    assert [t.price for t in items[1:] if isinstance(t, Tick)] == [800, 900, 1000]
    assert len(items) == 4
    assert feed.gaps == 0  # overflow is local, not a venue gap


async def test_idle_connection_is_replaced() -> None:
    quiet = ScriptedSocket([trade_frame(1)], then_close=False)
    connector = ScriptedConnector([quiet, ScriptedSocket([trade_frame(2)], then_close=False)])
    feed = make_feed(connector, RecordingSleep(limit=100), idle_timeout=0.05)
    await feed.start()
    ticks = []
    async for tick in feed:
        ticks.append(tick)
        if len(ticks) == 2:
            break
    await feed.stop()
    assert feed.idle_timeouts >= 1 and feed.reconnects >= 1
    assert quiet.closed
    assert feed.gaps == 0  # ids 1 -> 2 are contiguous across the reconnect


async def test_start_after_stop_is_refused() -> None:
    feed = make_feed(ScriptedConnector([]), RecordingSleep(limit=1))
    await feed.stop()
    await feed.stop()  # idempotent
    with pytest.raises(RuntimeError):
        await feed.start()


def test_settings_validation() -> None:
    with pytest.raises(ValueError):
        FeedSettings(idle_timeout=0)
    with pytest.raises(ValueError):
        FeedSettings(buffer_size=0)
    with pytest.raises(ValueError):
        SymbolSpec("BTCUSDT", "BTCUSD", price_decimals=-1)
    with pytest.raises(ValueError, match="duplicate"):
        BinanceTradeFeed([BTC, SymbolSpec("btcusdt", "XBT", 2)], base_url="ws://x")
