"""The Deriv tick feed against a local fake Deriv websocket server (no internet)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest

from tradegraph.marketdata.feeds.base import Backoff, FeedError, FeedGap, FeedSettings, SymbolSpec
from tradegraph.marketdata.feeds.deriv import DerivTickFeed, parse_deriv_tick
from tradegraph.marketdata.feeds.fakes import FakeDerivServer
from tradegraph.marketdata.ticks import Feed, Tick

BASE = 1_700_000_000  # epoch seconds of the scripted ticks
R100 = SymbolSpec("R_100", "VOL100", price_decimals=2)
R50 = SymbolSpec("R_50", "VOL50", price_decimals=4)
FAST = FeedSettings(backoff=Backoff(0.01, 0.05), idle_timeout=5.0, start_timeout=3.0)


def make_feed(fake: FakeDerivServer, *specs: SymbolSpec, **kwargs: Any) -> DerivTickFeed:
    options: dict[str, Any] = {
        "url": fake.url,
        "settings": FAST,
        "clock": lambda: BASE + 60,
        "ping_interval": 1.0,
    }
    options.update(kwargs)
    return DerivTickFeed(list(specs or (R100,)), **options)


@pytest.fixture
async def fake() -> AsyncIterator[FakeDerivServer]:
    async with FakeDerivServer({"R_100": 2, "R_50": 4}) as server:
        yield server


async def take(feed: DerivTickFeed, n: int) -> list[Tick | FeedGap]:
    stream = feed.stream()

    async def collect() -> list[Tick | FeedGap]:
        return [await anext(stream) for _ in range(n)]

    return await asyncio.wait_for(collect(), 5)


def test_parse_is_exact_and_rounds_half_even() -> None:
    tick = {"epoch": BASE, "quote": Decimal("8123.45"), "bid": Decimal("8123.4"), "ask": 8124}
    assert parse_deriv_tick(tick, R100) == (
        Tick("VOL100", 812345, 0, BASE * 1000, "deriv", bid=812340, ask=812400),
        BASE,
    )
    assert parse_deriv_tick({"epoch": BASE, "quote": Decimal("8123.455")}, R100)[0].price == 812346
    assert parse_deriv_tick({"epoch": BASE, "quote": Decimal("8123.445")}, R100)[0].price == 812344
    with pytest.raises(ValueError):
        parse_deriv_tick({"epoch": "soon", "quote": Decimal(1)}, R100)
    with pytest.raises(ValueError):
        parse_deriv_tick({"epoch": BASE, "quote": True}, R100)


def test_needs_an_app_id_or_url_and_a_sane_ping() -> None:
    with pytest.raises(ValueError):
        DerivTickFeed([R100])
    feed = DerivTickFeed([R100], app_id="1089")
    assert feed.url() == "wss://ws.derivws.com/websockets/v3?app_id=1089"
    assert isinstance(feed, Feed)
    with pytest.raises(ValueError, match="ping_interval"):
        DerivTickFeed(
            [R100], app_id="1089", ping_interval=90, settings=FeedSettings(idle_timeout=60)
        )


async def test_subscribes_and_streams_exact_ticks(fake: FakeDerivServer) -> None:
    feed = make_feed(fake, R100, R50)
    await feed.start()
    try:
        await fake.wait_until(lambda: fake.subscribers("R_100") + fake.subscribers("R_50") == 2)
        subs = fake.requests_of("ticks")
        assert [(r["ticks"], r["subscribe"]) for r in subs] == [("R_100", 1), ("R_50", 1)]
        assert len({r["req_id"] for r in subs}) == 2
        await fake.tick("R_100", "8123.45", epoch=BASE)
        await fake.tick("R_50", "101.2345", epoch=BASE)
        items = await take(feed, 2)
        assert items == [
            Tick("VOL100", 812345, 0, BASE * 1000, "deriv", bid=812345, ask=812345),
            Tick("VOL50", 1012345, 0, BASE * 1000, "deriv", bid=1012345, ask=1012345),
        ]
        assert set(feed.subscription_ids) == {"R_100", "R_50"}
        assert feed.last_epoch("R_100") == BASE
    finally:
        await feed.stop()


async def test_reconnect_resubscribes_and_backfills_the_missed_ticks(
    fake: FakeDerivServer,
) -> None:
    feed = make_feed(fake)
    await feed.start()
    try:
        await fake.wait_until(lambda: fake.subscribers("R_100") == 1)
        await fake.tick("R_100", "100.00", epoch=BASE)
        await fake.tick("R_100", "100.01", epoch=BASE + 1)
        await take(feed, 2)
        fake.drop()
        await fake.tick("R_100", "100.02", epoch=BASE + 2)  # nobody is connected
        await fake.tick("R_100", "100.03", epoch=BASE + 3)
        await fake.wait_until(lambda: fake.subscribers("R_100") == 1)
        await fake.tick("R_100", "100.04", epoch=BASE + 4)
        items = await take(feed, 3)
        assert [(i.ts // 1000 - BASE, i.price) for i in items if isinstance(i, Tick)] == [
            (2, 10002),
            (3, 10003),
            (4, 10004),
        ]
        history = fake.requests_of("ticks_history")
        assert len(history) == 1
        assert {k: history[0][k] for k in ("ticks_history", "start", "end", "style")} == {
            "ticks_history": "R_100",
            "start": BASE + 1,
            "end": "latest",
            "style": "ticks",
        }
        # on the new connection: history first, then the subscription
        kinds = [("ticks_history" in r, "ticks" in r) for r in fake.requests if "ping" not in r]
        assert kinds[-2:] == [(True, False), (False, True)]
        assert feed.backfilled == 2
        # BASE+1 (history starts inclusive) and BASE+3 (the subscribe's current tick)
        assert feed.duplicates == 2
        assert feed.gaps == 0 and feed.reconnects == 1
    finally:
        await feed.stop()


async def test_without_backfill_the_time_gap_is_detected(fake: FakeDerivServer) -> None:
    gaps: list[FeedGap] = []
    feed = make_feed(fake, backfill=False, gap_after=5.0, on_gap=gaps.append)
    await feed.start()
    try:
        await fake.wait_until(lambda: fake.subscribers("R_100") == 1)
        await fake.tick("R_100", "100.00", epoch=BASE)
        await take(feed, 1)
        fake.drop()
        for second in range(1, 10):
            await fake.tick("R_100", epoch=BASE + second)
        await fake.wait_until(lambda: fake.subscribers("R_100") == 1)
        gap, tick = await take(feed, 2)  # the subscribe answers with the current tick
        expected = FeedGap(
            source="deriv",
            symbol="VOL100",
            kind="time",
            last_ts=BASE * 1000,
            next_ts=(BASE + 9) * 1000,
            after_reconnect=True,
        )
        assert gap == expected and gaps == [expected]
        assert isinstance(tick, Tick) and tick.ts == (BASE + 9) * 1000
        assert feed.gaps == 1 and fake.requests_of("ticks_history") == []
    finally:
        await feed.stop()


async def test_permanent_rejection_drops_only_that_symbol(fake: FakeDerivServer) -> None:
    fake.reject_subscribe("InvalidSymbol", "Symbol R_50 is invalid.", symbol="R_50")
    feed = make_feed(fake, R100, R50)
    await feed.start()
    try:
        await fake.wait_until(lambda: fake.subscribers("R_100") == 1)
        await fake.tick("R_100", "1.00", epoch=BASE)
        [tick] = await take(feed, 1)
        assert isinstance(tick, Tick) and tick.symbol == "VOL100"
        assert feed.rejected == {"R_50": "InvalidSymbol: Symbol R_50 is invalid."}
        assert feed.server_errors == 1 and feed.active_symbols() == ["R_100"]
        fake.drop()
        await fake.wait_until(lambda: fake.subscribers("R_100") == 1)
        assert [r["ticks"] for r in fake.requests_of("ticks")] == ["R_100", "R_50", "R_100"]
    finally:
        await feed.stop()


async def test_transient_error_reconnects_and_resubscribes(fake: FakeDerivServer) -> None:
    fake.reject_subscribe("RateLimit", "You have reached the rate limit.", symbol="R_100")
    feed = make_feed(fake)
    await feed.start()
    try:
        await fake.wait_until(lambda: fake.subscribers("R_100") == 1)
        await fake.tick("R_100", "1.00", epoch=BASE)
        [tick] = await take(feed, 1)
        assert isinstance(tick, Tick)
        assert feed.server_errors == 1 and feed.reconnects == 1 and feed.rejected == {}
        assert fake.connections_opened == 2
    finally:
        await feed.stop()


async def test_every_symbol_rejected_fails_the_feed(fake: FakeDerivServer) -> None:
    fake.reject_subscribe("InvalidSymbol", "Symbol R_100 is invalid.")
    feed = make_feed(fake)
    await feed.start()
    with pytest.raises(FeedError, match="every symbol was rejected"):
        await asyncio.wait_for(take(feed, 1), 5)
    assert feed.failure is not None
    await feed.stop()


async def test_pings_keep_a_quiet_connection_alive(fake: FakeDerivServer) -> None:
    settings = FeedSettings(backoff=Backoff(0.01, 0.05), idle_timeout=0.3, start_timeout=3)
    feed = make_feed(fake, settings=settings, ping_interval=0.05)
    await feed.start()
    try:
        # no ticks at all for > 2 idle timeouts; only the pongs arrive
        await fake.wait_until(lambda: len(fake.requests_of("ping")) >= 14)
        assert fake.connections_opened == 1
        assert feed.idle_timeouts == 0 and feed.pings >= 14
        assert all(
            r["ping"] == 1 and isinstance(r["req_id"], int) for r in fake.requests_of("ping")
        )
    finally:
        await feed.stop()


async def test_silence_triggers_idle_timeout_and_resubscribe(fake: FakeDerivServer) -> None:
    settings = FeedSettings(backoff=Backoff(0.01, 0.05), idle_timeout=0.2, start_timeout=3)
    feed = make_feed(fake, settings=settings, ping_interval=0.05)
    await feed.start()
    try:
        await fake.wait_until(lambda: fake.subscribers("R_100") == 1)
        fake.silence()  # not even pongs any more
        await fake.wait_until(lambda: fake.connections_opened == 2)
        await fake.wait_until(lambda: fake.subscribers("R_100") == 1)
        await fake.tick("R_100", "2.00", epoch=BASE)
        [tick] = await take(feed, 1)
        assert isinstance(tick, Tick) and tick.price == 200
        assert feed.idle_timeouts == 1 and feed.reconnects == 1
        assert len(fake.requests_of("ticks")) == 2
    finally:
        await feed.stop()


async def test_malformed_frames_are_counted_not_fatal(fake: FakeDerivServer) -> None:
    feed = make_feed(fake)
    await feed.start()
    try:
        await fake.wait_until(lambda: fake.subscribers("R_100") == 1)
        bad = [
            "{",
            json.dumps([1]),
            json.dumps({"echo_req": {}}),
            json.dumps({"msg_type": "tick", "tick": {"symbol": "R_100", "quote": "x", "epoch": 1}}),
            json.dumps({"msg_type": "tick", "tick": {"symbol": "R_99", "quote": 1, "epoch": 1}}),
            json.dumps({"msg_type": "history", "history": {"prices": [], "times": []}}),
        ]
        for frame in bad:
            await fake.send_raw(frame)
        await fake.tick("R_100", "3.00", epoch=BASE)
        [tick] = await take(feed, 1)
        assert isinstance(tick, Tick) and tick.price == 300
        assert feed.parse_errors == len(bad)
        assert feed.connects == 1 and feed.connected
    finally:
        await feed.stop()


async def test_stop_ends_iteration_and_leaves_no_tasks() -> None:
    before = asyncio.all_tasks()
    async with FakeDerivServer({"R_100": 2}, interval=0.01, clock=lambda: BASE) as fake:
        feed = make_feed(fake, ping_interval=0.02)
        await feed.start()
        received = [tick async for tick in _until_stopped(feed, 3)]
        assert len(received) >= 3 and not feed.connected
        assert [t for t in asyncio.all_tasks() if t.get_name().startswith("feed:")] == []
    assert asyncio.all_tasks() == before


async def _until_stopped(feed: DerivTickFeed, n: int) -> AsyncIterator[Tick]:
    seen = 0
    async for tick in feed:
        yield tick
        seen += 1
        if seen == n:
            await feed.stop()
