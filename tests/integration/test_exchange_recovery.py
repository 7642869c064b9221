"""Recovery: restart and crash mid-stream rebuild the same state; a failed commit loses
nothing acknowledged and keeps nothing unacknowledged. Both legs."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import defaultdict
from dataclasses import replace
from decimal import Decimal

import pytest
from asyncpg.exceptions import UniqueViolationError
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from tradegraph.errors import DomainError
from tradegraph.exchange import models as m
from tradegraph.exchange.models import AccountKind
from tradegraph.exchange.service import OrderInput
from tradegraph.exchange.store import BatchWrite
from tradegraph.services import Services


async def _traders(services: Services, n: int) -> list[tuple[object, int]]:
    out = []
    for i in range(n):
        tokens = await services.identity.register(
            email=f"t{i}@example.com", password="correct horse battery", display_name=f"T{i}"
        )
        principal = await services.identity.principal_from_header(f"Bearer {tokens.access_token}")
        account = await services.exchange.open_account(principal, AccountKind.PAPER, None)
        await services.exchange.deposit(principal, account.id, "USD", Decimal("1000000"), None)
        await services.exchange.deposit(principal, account.id, "BTC", Decimal("100"), None)
        out.append((principal, account.id))
    return out


async def _random_flow(services: Services, traders, n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    placed: list[int] = []
    for _ in range(n):
        principal, account = rng.choice(traders)
        if placed and rng.random() < 0.2:
            with contextlib.suppress(DomainError):
                await services.exchange.cancel_order(
                    principal, order_id=rng.choice(placed), client_order_id=None, account_id=None
                )
            continue
        side = rng.choice(["BUY", "SELL"])
        price = Decimal(50000 + rng.randint(-20, 20) * 5)
        try:
            result = await services.exchange.place_order(
                principal,
                OrderInput(
                    account_id=account,
                    symbol="BTC-USD",
                    side=side,
                    type="LIMIT",
                    quantity=Decimal(rng.randint(1, 30)) / 100,
                    price=price,
                ),
            )
            placed.append(result["order"]["id"])
        except DomainError:
            pass
    return placed


async def _state(services: Services) -> dict:
    seq = services.exchange_runtime.sequencer
    engine = seq.engine
    return {
        "book": engine.depth("BTC-USD", 500),
        "balances": sorted(engine.balances()),
        "open": sorted((o.order_id, o.remaining_qty) for o in engine.open_orders()),
    }


async def _check_ledger(services: Services) -> None:
    """Per asset, balances sum to the outside money that came in; no fill counted twice."""
    async with services.db.session() as s:
        totals = dict(
            (
                await s.execute(
                    select(m.Balance.asset, func.sum(m.Balance.total)).group_by(m.Balance.asset)
                )
            ).all()
        )
        inflow = defaultdict(int)
        for asset, amount, src, dst in (
            await s.execute(
                select(
                    m.LedgerEntry.asset,
                    m.LedgerEntry.amount,
                    m.LedgerEntry.from_account_id,
                    m.LedgerEntry.to_account_id,
                )
            )
        ).all():
            if src is None:
                inflow[asset] += amount
            if dst is None:
                inflow[asset] -= amount
        assert {a: int(v) for a, v in totals.items()} == dict(inflow)
        orders = list(await s.scalars(select(m.Order)))
        trades = list(await s.scalars(select(m.Trade)))
        # orders and trades carry no foreign keys (the sequencer checks): nothing dangles
        accounts = set(await s.scalars(select(m.Account.id)))
        symbols = set(await s.scalars(select(m.Instrument.symbol)))
    assert all(o.account_id in accounts and o.symbol in symbols for o in orders)
    assert all(t.symbol in symbols for t in trades)
    assert all({t.taker_account_id, t.maker_account_id} <= accounts for t in trades)
    filled = defaultdict(int)
    for t in trades:
        filled[t.taker_order_id] += t.qty
        filled[t.maker_order_id] += t.qty
    for o in orders:
        assert o.filled_qty == filled[o.id], f"order {o.id} fills do not add up"


async def test_restart_rebuilds_identical_state(settings):
    first = Services(settings)
    await first.start()
    traders = await _traders(first, 4)
    await _random_flow(first, traders, 150, seed=7)
    before = await _state(first)
    await first.stop()

    second = Services(settings)
    await second.start()
    try:
        assert await _state(second) == before
        assert second.exchange_runtime.sequencer.engine.check_invariants() == []
        await _check_ledger(second)
        # And it carries on: ids continue, nothing collides.
        await _random_flow(second, traders, 30, seed=8)
        await _check_ledger(second)
    finally:
        await second.stop()


async def test_crash_mid_stream_loses_no_acknowledged_order(settings):
    first = Services(settings)
    await first.start()
    traders = await _traders(first, 4)
    acked: list[int] = []

    async def hammer(seed: int) -> None:
        acked.extend(await _random_flow(first, traders, 400, seed))

    workers = [asyncio.create_task(hammer(s)) for s in range(4)]
    await asyncio.sleep(0.4)
    # Crash: the sequencer dies without a graceful stop, mid-stream.
    for task in first.exchange_runtime._tasks:
        task.cancel()
    await first.bus.close()
    await asyncio.gather(*workers, return_exceptions=True)
    await first.db.dispose()
    await first.pubsub.disconnect()

    second = Services(settings)
    await second.start()
    try:
        engine = second.exchange_runtime.sequencer.engine
        assert engine.check_invariants() == []
        async with second.db.session() as s:
            stored = set(await s.scalars(select(m.Order.id)))
        assert set(acked) <= stored, "an acknowledged order was lost"
        await _check_ledger(second)
    finally:
        await second.stop()


async def test_failed_commit_answers_error_and_rebuilds(services, monkeypatch):
    traders = await _traders(services, 2)
    (alice, a_acct), (bob, b_acct) = traders
    store = services.exchange_runtime.sequencer.store
    real_commit = store.commit
    calls = {"n": 0}

    async def flaky(batch):
        calls["n"] += 1
        if calls["n"] == 1:
            raise ConnectionError("database went away")
        return await real_commit(batch)

    monkeypatch.setattr(store, "commit", flaky)
    with pytest.raises(DomainError) as failed:
        await services.exchange.place_order(
            alice,
            OrderInput(
                account_id=a_acct,
                symbol="BTC-USD",
                side="SELL",
                type="LIMIT",
                quantity=Decimal("1"),
                price=Decimal("50000"),
            ),
        )
    assert failed.value.code == "ENGINE_UNAVAILABLE"
    # The unacknowledged order was never half-applied: not in memory, not in the database.
    for _ in range(50):
        if services.exchange_runtime.sequencer.ready.is_set():
            break
        await asyncio.sleep(0.05)
    book = await services.exchange.order_book("BTC-USD", 10)
    assert book["asks"] == []
    async with services.db.session() as s:
        assert (await s.scalar(select(func.count()).select_from(m.Order))) == 0
    ok = await services.exchange.place_order(
        bob,
        OrderInput(
            account_id=b_acct,
            symbol="BTC-USD",
            side="SELL",
            type="LIMIT",
            quantity=Decimal("1"),
            price=Decimal("50000"),
        ),
    )
    assert ok["order"]["status"] == "NEW"
    await _check_ledger(services)


async def test_a_malformed_order_in_a_command_fails_alone(services):
    """Commands from the bus are not trusted: a bad enum is that order's error, and the
    rest of the batch commits (it used to raise ValueError and fail the whole batch)."""
    [(alice, account)] = await _traders(services, 1)
    good = await services.exchange.to_engine_order(
        OrderInput(
            account_id=account,
            symbol="BTC-USD",
            side="BUY",
            type="LIMIT",
            quantity=Decimal("0.5"),
            price=Decimal("40000"),
        )
    )
    # What is None (or post_only False) stays out of the command: absent means the default.
    assert set(good) == {
        "account_id",
        "symbol",
        "side",
        "type",
        "quantity",
        "price",
        "time_in_force",
        "stp",
    }
    bad = [
        {**good, "side": "SIDEWAYS"},
        {**good, "type": 7},
        {**good, "time_in_force": "FOREVER"},
        {**good, "stp": None},
    ]
    reply = await services.exchange.bus.request(
        "place_many", {"user_id": alice.user_id, "orders": [*bad, good]}
    )
    *rejected, accepted = reply["results"]
    assert [(r["error"]["code"], r["error"]["field"]) for r in rejected] == [
        ("INVALID_INPUT", "side"),
        ("INVALID_INPUT", "type"),
        ("INVALID_INPUT", "timeInForce"),
        ("INVALID_INPUT", "selfTradePrevention"),
    ]
    assert accepted["order"]["status"] == "NEW"
    async with services.db.session() as s:
        assert (await s.scalar(select(func.count()).select_from(m.Order))) == 1


def _sell(account: int, price: str = "50000") -> OrderInput:
    return OrderInput(
        account_id=account,
        symbol="BTC-USD",
        side="SELL",
        type="LIMIT",
        quantity=Decimal("1"),
        price=Decimal(price),
    )


async def test_next_batch_is_applied_while_a_commit_is_in_flight(services, monkeypatch):
    """Pipelining: batch 2 is applied during batch 1's commit; commits stay in order."""
    (alice, a_acct), (bob, b_acct) = await _traders(services, 2)
    sequencer = services.exchange_runtime.sequencer
    store = sequencer.store
    real_commit = store.commit
    gate = asyncio.Event()
    log: list[str] = []

    async def gated(batch):
        log.append(f"start {len(batch.orders)}")
        if len(log) == 1:
            await gate.wait()
        await real_commit(batch)
        log.append("end")

    monkeypatch.setattr(store, "commit", gated)
    first = asyncio.create_task(services.exchange.place_order(alice, _sell(a_acct, "50010")))
    while not log:
        await asyncio.sleep(0.01)
    second = asyncio.create_task(services.exchange.place_order(bob, _sell(b_acct, "50020")))
    for _ in range(200):  # the second order reaches the book before the first commit ends
        if len(sequencer.engine.depth("BTC-USD", 10).asks) == 2:
            break
        await asyncio.sleep(0.01)
    assert len(sequencer.engine.depth("BTC-USD", 10).asks) == 2
    assert log == ["start 1"] and not first.done() and not second.done()
    gate.set()
    placed = [await first, await second]
    assert [p["order"]["status"] for p in placed] == ["NEW", "NEW"]
    assert log == ["start 1", "end", "start 1", "end"]  # the second commit waited


async def test_a_failed_commit_fails_the_batch_applied_on_top_of_it(services, monkeypatch):
    (alice, a_acct), (bob, b_acct) = await _traders(services, 2)
    sequencer = services.exchange_runtime.sequencer
    store = sequencer.store
    real_commit = store.commit
    gate = asyncio.Event()
    calls = {"n": 0}

    async def fails_once(batch):
        calls["n"] += 1
        if calls["n"] == 1:
            await gate.wait()
            raise ConnectionError("database went away")
        await real_commit(batch)

    monkeypatch.setattr(store, "commit", fails_once)
    first = asyncio.create_task(services.exchange.place_order(alice, _sell(a_acct, "50010")))
    while calls["n"] == 0:
        await asyncio.sleep(0.01)
    second = asyncio.create_task(services.exchange.place_order(bob, _sell(b_acct, "50020")))
    for _ in range(200):
        if len(sequencer.engine.depth("BTC-USD", 10).asks) == 2:
            break
        await asyncio.sleep(0.01)
    gate.set()
    for task in (first, second):
        with pytest.raises(DomainError) as failed:
            await task
        assert failed.value.code == "ENGINE_UNAVAILABLE"
    assert calls["n"] == 1  # the second batch was never written
    for _ in range(100):
        if sequencer.ready.is_set() and not sequencer.engine.depth("BTC-USD", 10).asks:
            break
        await asyncio.sleep(0.05)
    assert (await services.exchange.order_book("BTC-USD", 10))["asks"] == []
    async with services.db.session() as s:
        assert (await s.scalar(select(func.count()).select_from(m.Order))) == 0
    ok = await services.exchange.place_order(bob, _sell(b_acct))
    assert ok["order"]["status"] == "NEW"
    await _check_ledger(services)


async def test_an_order_wrongly_taken_for_new_fails_the_whole_write(services):
    """New orders are inserted (COPY on PostgreSQL), not upserted: a stored id marked new
    is a bug, and it must fail the batch, never overwrite the stored row."""
    [(alice, account)] = await _traders(services, 1)
    placed = await services.exchange.place_order(alice, _sell(account))
    sequencer = services.exchange_runtime.sequencer
    [stored] = [o for o in sequencer.engine.open_orders() if o.order_id == placed["order"]["id"]]
    write = BatchWrite()
    write.orders[stored.order_id] = stored
    write.new_orders.add(stored.order_id)
    write.state["probe"] = 1
    # SQLAlchemy's error on SQLite; asyncpg's own from the raw COPY on PostgreSQL.
    with pytest.raises((IntegrityError, UniqueViolationError)):
        await sequencer.store.commit(write)
    async with services.db.session() as s:
        assert (await s.scalar(select(func.count()).select_from(m.Order))) == 1
        assert await s.get(m.EngineState, "probe") is None  # nothing of the batch kept
    write.new_orders.clear()  # the same row as an update goes through
    await sequencer.store.commit(write)
    async with services.db.session() as s:
        assert (await s.get(m.EngineState, "probe")).value == 1


async def test_a_batch_stamps_every_row_it_writes_with_one_time(services):
    """Order, trade, ledger and balance rows of one batch carry the batch's time (set by
    PostgreSQL itself there, by the sequencer on SQLite), never a missing or stale one."""
    from tradegraph.db import utcnow

    (alice, a_acct), (bob, b_acct) = await _traders(services, 2)
    maker = await services.exchange.place_order(alice, _sell(a_acct))
    before = utcnow()
    taker = await services.exchange.place_order(bob, replace(_sell(b_acct), side="BUY"))
    after = utcnow()
    assert taker["order"]["status"] == "FILLED"
    async with services.db.session() as s:
        maker_row = await s.get(m.Order, maker["order"]["id"])
        taker_row = await s.get(m.Order, taker["order"]["id"])
        [trade] = list(await s.scalars(select(m.Trade)))
        entries = list(
            await s.scalars(select(m.LedgerEntry).where(m.LedgerEntry.trade_id.is_not(None)))
        )
        balances = list(
            await s.scalars(select(m.Balance).where(m.Balance.account_id.in_([a_acct, b_acct])))
        )
    assert maker_row.created_at < before  # written by the earlier batch, not touched since
    times = {
        maker_row.updated_at,
        taker_row.created_at,
        taker_row.updated_at,
        trade.created_at,
        *(e.created_at for e in entries),
        *(b.updated_at for b in balances),
    }
    assert len(entries) >= 2 and len(balances) == 4
    assert len(times) == 1
    [stamp] = times
    assert stamp.tzinfo is not None and before <= stamp <= after


async def test_client_order_id_of_a_closed_order_stays_taken_after_a_restart(settings):
    """A retried clientOrderId of an order that closed before a restart answers the stored
    order (same parameters) or DUPLICATE_CLIENT_ORDER_ID (other parameters). It must never
    reach the database as a new order: the unique key would fail the whole batch, with
    every other caller's orders in it, on each retry."""
    first = Services(settings)
    await first.start()
    (alice, a_acct), (bob, b_acct) = await _traders(first, 2)
    sell = replace(_sell(a_acct), client_order_id="sell-1")
    placed = await first.exchange.place_order(alice, sell)
    cancel = await first.exchange.cancel_order(
        alice, order_id=None, client_order_id="sell-1", account_id=a_acct
    )
    assert cancel["order"]["status"] == "CANCELED"
    await first.stop()

    second = Services(settings)
    await second.start()
    try:
        retried, bystander = await asyncio.gather(
            second.exchange.place_order(alice, sell),
            second.exchange.place_order(bob, _sell(b_acct, "50100")),
        )
        assert retried["replayed"] is True
        assert retried["order"]["id"] == placed["order"]["id"]
        assert retried["order"]["status"] == "CANCELED"
        assert bystander["order"]["status"] == "NEW"
        with pytest.raises(DomainError) as duplicate:
            await second.exchange.place_order(alice, replace(sell, price=Decimal("50001")))
        assert duplicate.value.code == "DUPLICATE_CLIENT_ORDER_ID"
        [many] = await second.exchange.place_orders(alice, [sell])
        assert many["replayed"] is True and many["order"]["id"] == placed["order"]["id"]
        async with second.db.session() as s:
            assert (await s.scalar(select(func.count()).select_from(m.Order))) == 2
        await _check_ledger(second)
    finally:
        await second.stop()


async def test_closed_orders_client_order_ids_leave_memory_and_come_back_from_the_database(
    services,
):
    """The engine forgets a closed order's clientOrderId after its memory period (memory
    stays bounded); a later retry recalls the stored order instead of placing a new one."""
    (alice, a_acct), (bob, b_acct) = await _traders(services, 2)
    sequencer = services.exchange_runtime.sequencer
    engine = sequencer.engine
    sell = replace(_sell(a_acct), client_order_id="gone-1")
    placed = await services.exchange.place_order(alice, sell)
    await services.exchange.place_order(
        alice, replace(_sell(a_acct, "50500"), client_order_id="open-1")
    )
    await services.exchange.cancel_order(
        alice, order_id=placed["order"]["id"], client_order_id=None, account_id=None
    )
    assert engine.knows_client_order_id(a_acct, "gone-1")
    sequencer.client_order_id_memory = 0.0
    await services.exchange.place_order(bob, _sell(b_acct, "50100"))  # a batch prunes
    assert not engine.knows_client_order_id(a_acct, "gone-1")
    assert engine.knows_client_order_id(a_acct, "open-1")  # open orders are never forgotten

    retried = await services.exchange.place_order(alice, sell)
    assert retried["replayed"] is True and retried["order"]["id"] == placed["order"]["id"]
    assert retried["order"]["status"] == "CANCELED"
    with pytest.raises(DomainError) as duplicate:
        await services.exchange.place_order(alice, replace(sell, quantity=Decimal("2")))
    assert duplicate.value.code == "DUPLICATE_CLIENT_ORDER_ID"
    async with services.db.session() as s:
        assert (await s.scalar(select(func.count()).select_from(m.Order))) == 3
