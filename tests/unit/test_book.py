"""Unit tests of the pure exchange core (tradegraph.exchange.engine / book).

The instrument used below has quote_mult = 1 and base_mult = 10**4, so the notional of
``qty`` at ``price`` is simply ``price * qty`` quote units and a fill moves ``qty * 10**4``
base units.  Maker fee 10 bps, taker fee 20 bps, market band 500 bps (5%).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from tradegraph.errors import DomainError
from tradegraph.exchange.book import (
    InstrumentStatus,
    OrderStatus,
    OrderType,
    PostingReason,
    Side,
    STPMode,
    TimeInForce,
)
from tradegraph.exchange.engine import (
    BalanceUpdate,
    BookDelta,
    Effect,
    Engine,
    InstrumentSpec,
    InstrumentStatusChanged,
    MarkPrice,
    OrderRequest,
    OrderUpdate,
    PlaceResult,
    Posting,
    Trade,
    ledger_postings,
)
from tradegraph.money import fee_for

SYM = "BTC-USD"
FEE = 999
BM = 10**4  # base units per qty unit
SPEC = InstrumentSpec(
    symbol=SYM,
    base_asset="BTC",
    quote_asset="USD",
    base_decimals=8,
    quote_decimals=6,
    price_decimals=2,
    qty_decimals=4,
    tick=1,
    lot=1,
    min_qty=1,
    min_notional=0,
    maker_fee_bps=10,
    taker_fee_bps=20,
)
BUY, SELL = Side.BUY, Side.SELL
LIMIT, MARKET = OrderType.LIMIT, OrderType.MARKET
STOP_LIMIT, STOP_MARKET = OrderType.STOP_LIMIT, OrderType.STOP_MARKET
IOC, FOK = TimeInForce.IOC, TimeInForce.FOK
NEW, PART, FILLED = OrderStatus.NEW, OrderStatus.PARTIALLY_FILLED, OrderStatus.FILLED
CANCELED, EXPIRED = OrderStatus.CANCELED, OrderStatus.EXPIRED


# ----------------------------------------------------------------------------- helpers


def make(band_bps: int = 500, **spec: Any) -> Engine:
    e = Engine(fee_account_id=FEE, market_band_bps=band_bps)
    e.add_instrument(replace(SPEC, **spec))
    return e


def fund(e: Engine, acct: int, usd: int = 10**9, btc: int = 10**12) -> None:
    if usd:
        e.deposit(acct, "USD", usd)
    if btc:
        e.deposit(acct, "BTC", btc)


def lim(acct: int, side: Side, qty: int, price: int, **kw: Any) -> OrderRequest:
    return OrderRequest(acct, kw.pop("symbol", SYM), side, LIMIT, quantity=qty, price=price, **kw)


def mkt(acct: int, side: Side, qty: int | None = None, **kw: Any) -> OrderRequest:
    return OrderRequest(acct, SYM, side, MARKET, quantity=qty, **kw)


def place(e: Engine, req: OrderRequest) -> tuple[PlaceResult, list[Effect]]:
    """Place and check the engine's invariants afterwards (every test does this)."""
    result, fx = e.place(req)
    assert e.check_invariants() == []
    return result, fx


def trades(fx: list[Effect]) -> list[tuple[int, int, int, int]]:
    """(taker order, maker order, price, qty) of each trade."""
    return [(t.taker_order_id, t.maker_order_id, t.price, t.qty) for t in fx if type(t) is Trade]


def updates(fx: list[Effect]) -> dict[int, OrderUpdate]:
    """Last update per order id."""
    return {u.order_id: u for u in fx if type(u) is OrderUpdate}


def usd(e: Engine, acct: int) -> tuple[int, int]:
    b = e.balance(acct, "USD")
    return b.total, b.locked


def btc(e: Engine, acct: int) -> tuple[int, int]:
    b = e.balance(acct, "BTC")
    return b.total, b.locked


def snapshot(e: Engine) -> Any:
    """Everything observable, to prove that a rejection changed nothing."""
    return (
        e.balances(),
        e.open_orders(),
        e.counters(),
        e.depth(SYM, 100),
        e.last_price(SYM),
        e.book_orders(SYM, BUY),
        e.book_orders(SYM, SELL),
    )


def rejects(e: Engine, req: OrderRequest, code: str) -> DomainError:
    e.flush()
    before = snapshot(e)
    with pytest.raises(DomainError) as exc:
        e.place(req)
    assert exc.value.code == code
    assert snapshot(e) == before, "a rejected command must not change any state"
    assert e.flush() == [], "nor leave anything to flush"
    return exc.value


def conserved(e: Engine, deposits: dict[str, int]) -> None:
    totals: dict[str, int] = {}
    for b in e.balances():
        totals[b.asset] = totals.get(b.asset, 0) + b.total
    assert totals == {k: v for k, v in deposits.items() if v or k in totals}


# ----------------------------------------------------------------------------- instruments


@pytest.mark.parametrize(
    ("over", "fragment"),
    [
        ({"quote_decimals": 5, "price_decimals": 2, "qty_decimals": 4}, "quote_decimals"),
        ({"base_decimals": 3}, "base_decimals"),
        ({"tick": 0}, "tick"),
        ({"lot": -1}, "lot"),
        ({"maker_fee_bps": 10_001}, "fees"),
        ({"base_asset": "USD"}, "differ"),
        ({"min_qty": -1}, "min_qty"),
    ],
)
def test_add_instrument_validates_exactness_and_steps(over: dict[str, Any], fragment: str) -> None:
    e = Engine(fee_account_id=FEE)
    with pytest.raises(DomainError) as exc:
        e.add_instrument(replace(SPEC, **over))
    assert exc.value.code == "INVALID_INSTRUMENT"
    assert fragment in exc.value.message
    assert e.symbols() == []


def test_add_instrument_rejects_duplicates_and_asset_decimal_conflicts() -> None:
    e = make()
    with pytest.raises(DomainError):
        e.add_instrument(SPEC)
    with pytest.raises(DomainError):
        e.add_instrument(replace(SPEC, symbol="ETH-USD", base_asset="ETH", quote_decimals=2))
    e.add_instrument(replace(SPEC, symbol="ETH-USD", base_asset="ETH"))
    assert e.symbols() == [SYM, "ETH-USD"]
    assert SPEC.quote_mult == 1 and SPEC.base_mult == BM
    with pytest.raises(DomainError):
        e.add_asset("USD", 2)
    e.add_asset("USD", 6)  # idempotent
    assert e.asset_decimals("BTC") == 8


# ----------------------------------------------------------------------------- resting


def test_resting_limit_reserves_and_reports() -> None:
    e = make()
    fund(e, 1)
    fund(e, 2)
    e.flush()
    r, fx = place(e, lim(1, BUY, 10, 100))
    # a buy that rests can only pay the maker fee: notional 1000 + ceil(1000 * 10bps) = 1
    assert r.order.status == NEW and r.order.reserved == 1001 and r.trades == []
    assert fx == [r.order]
    assert usd(e, 1) == (10**9, 1001)
    r2, _ = place(e, lim(2, SELL, 10, 101))
    assert r2.order.reserved == 10 * BM  # a sell reserves its base quantity
    assert btc(e, 2) == (10**12, 10 * BM)
    assert r2.order.order_id == r.order.order_id + 1
    assert r2.order.priority > r.order.priority
    assert e.best_bid_ask(SYM) == (100, 101)

    out = e.flush()
    assert out[0] == BookDelta(SYM, 1, [(BUY, 100, 10), (SELL, 101, 10)])
    assert set(out[1:]) == {
        BalanceUpdate(1, "USD", 10**9, 1001),
        BalanceUpdate(2, "BTC", 10**12, 10 * BM),
    }
    assert e.flush() == []  # nothing changed since: no delta, no sequence consumed
    assert e.depth(SYM).seq == 1


def test_flush_coalesces_levels_and_cells_within_a_batch() -> None:
    e = make()
    fund(e, 1)
    e.flush()
    a, _ = place(e, lim(1, BUY, 10, 100))
    place(e, lim(1, BUY, 5, 100))
    place(e, lim(1, BUY, 7, 99))
    e.cancel(1, a.order.order_id)
    out = e.flush()
    assert out[0] == BookDelta(SYM, 1, [(BUY, 100, 5), (BUY, 99, 7)])
    assert out[1:] == [BalanceUpdate(1, "USD", 10**9, 501 + 694)]
    assert e.depth(SYM) == e.depth(SYM, 20)
    snap = e.depth(SYM, 1)
    assert (snap.seq, snap.bids, snap.asks) == (1, [(100, 5)], [])


# ----------------------------------------------------------------------------- matching


def test_price_time_priority_fees_and_surplus_release() -> None:
    e = make()
    for acct in (1, 2, 3, 4):
        fund(e, acct)
    a, _ = place(e, lim(1, SELL, 10, 101))
    b, _ = place(e, lim(2, SELL, 10, 100))
    c, _ = place(e, lim(3, SELL, 10, 100))
    d, fx = place(e, lim(4, BUY, 25, 101))
    ida, idb, idc, idd = (x.order.order_id for x in (a, b, c, d))
    assert trades(fx) == [(idd, idb, 100, 10), (idd, idc, 100, 10), (idd, ida, 101, 5)]
    assert d.trades == [t for t in fx if type(t) is Trade]
    ups = updates(fx)
    assert (ups[idb].status, ups[idc].status, ups[ida].status) == (FILLED, FILLED, PART)
    assert ups[ida].remaining_qty == 5 and ups[ida].reserved == 5 * BM
    assert d.order.status == FILLED and d.order.reserved == 0
    # taker fee is rounded up once on the cumulative notional: ceil(2505 * 20 / 10^4) = 6
    assert d.order.quote_filled == 2505 and d.order.fee_paid == 6
    assert usd(e, 4) == (10**9 - 2511, 0)  # the reservation (2531) surplus is released
    assert btc(e, 4) == (10**12 + 25 * BM, 0)
    # makers pay 10 bps, rounded up: 1000 -> 1, 1000 -> 1, 505 -> 1
    assert usd(e, 2) == (10**9 + 999, 0)
    assert usd(e, 3) == (10**9 + 999, 0)
    assert usd(e, 1) == (10**9 + 504, 0)
    assert btc(e, 1) == (10**12 - 5 * BM, 5 * BM)
    assert usd(e, FEE) == (9, 0)
    assert e.last_price(SYM) == 101
    assert e.best_bid_ask(SYM) == (None, 101)
    conserved(e, {"USD": 4 * 10**9, "BTC": 4 * 10**12})


def test_fees_round_cumulatively_per_order_not_per_fill() -> None:
    e = make()
    fund(e, 1)
    fund(e, 2)
    m, _ = place(e, lim(1, BUY, 30, 101))
    assert m.order.reserved == 3030 + 4  # ceil(3030 * 10bps) = 4, it rests as a maker
    maker_fees, reserved = [], []
    for _ in range(3):
        _, fx = place(e, lim(2, SELL, 10, 101))
        (t,) = (x for x in fx if type(x) is Trade)
        maker_fees.append(t.maker_fee)
        reserved.append(updates(fx)[m.order.order_id].reserved)
        assert usd(e, 1)[1] == reserved[-1]
    # per fill 1010 * 10 bps = 1.01 each; rounding each fill up would charge 2 + 2 + 2
    assert maker_fees == [2, 1, 1]
    assert sum(maker_fees) == fee_for(3030, 10)
    # what is left reserved: the rest's notional + ceil(total fee so far + on the rest) - paid
    assert reserved == [2020 + 4 - 2, 1010 + 4 - 3, 0]
    assert usd(e, 1) == (10**9 - 3034, 0)


def test_partial_fill_rests_the_remainder() -> None:
    e = make()
    fund(e, 1)
    fund(e, 2)
    place(e, lim(1, SELL, 4, 100))
    r, _ = place(e, lim(2, BUY, 20, 100))
    assert r.order.status == PART and r.order.remaining_qty == 16 and r.order.filled_qty == 4
    # it reserved 2000 + taker fee 4 as it takes first; 400 + fee 1 were paid and the rest
    # (1600) rests as a maker: ceil((400 * 20 + 1600 * 10) / 10^4) = 3, minus 1 paid
    assert r.order.fee_paid == 1
    assert r.order.reserved == 1602 and usd(e, 2) == (10**9 - 401, 1602)
    assert e.depth(SYM).bids == [(100, 16)] and e.depth(SYM).asks == []
    assert e.get_order(2, r.order.order_id) == r.order
    assert e.get_order(1, r.order.order_id) is None


def test_ioc_fills_what_it_can_and_expires_the_rest() -> None:
    e = make()
    fund(e, 1)
    fund(e, 2)
    place(e, lim(1, SELL, 10, 100))
    r, _ = place(e, lim(2, BUY, 15, 100, time_in_force=IOC))
    assert (r.order.status, r.order.filled_qty, r.order.reason) == (EXPIRED, 10, "IOC")
    assert usd(e, 2)[1] == 0 and e.depth(SYM).bids == []
    r, _ = place(e, lim(2, BUY, 5, 100, time_in_force=IOC))  # nothing left to take
    assert (r.order.status, r.order.filled_qty) == (EXPIRED, 0)


def test_fok_is_all_or_nothing_and_checked_before_any_fill() -> None:
    e = make()
    for acct in (1, 2, 3):
        fund(e, acct)
    place(e, lim(1, SELL, 10, 100))
    place(e, lim(2, SELL, 10, 101))
    rejects(e, lim(3, BUY, 25, 101, time_in_force=FOK), "FOK_NOT_FILLABLE")
    rejects(e, lim(3, BUY, 15, 100, time_in_force=FOK), "FOK_NOT_FILLABLE")  # price limit
    r, fx = place(e, lim(3, BUY, 20, 101, time_in_force=FOK))
    assert r.order.status == FILLED and [t[2:] for t in trades(fx)] == [(100, 10), (101, 10)]


def test_post_only_never_takes() -> None:
    e = make()
    fund(e, 1)
    fund(e, 2)
    place(e, lim(1, SELL, 10, 100))
    err = rejects(e, lim(2, BUY, 10, 100, post_only=True), "POST_ONLY_WOULD_TAKE")
    assert err.field == "postOnly"
    r, _ = place(e, lim(2, BUY, 10, 99, post_only=True))
    assert r.order.status == NEW
    assert r.order.reserved == 990 + 1  # a post-only buy can only pay the maker fee
    rejects(e, lim(2, BUY, 10, 99, post_only=True, time_in_force=IOC), "INVALID_ORDER")


# ----------------------------------------------------------------------------- market orders


def test_market_buy_by_quantity_stops_at_the_protection_band() -> None:
    e = make()
    fund(e, 1)
    for price in (100, 104, 106):
        place(e, lim(1, SELL, 10, price))
    # protection = 100 * 1.05 = 105: reserve 30 * 105 = 3150 + ceil(6.3) = 3157
    e.deposit(2, "USD", 3156)
    rejects(e, mkt(2, BUY, 30), "INSUFFICIENT_FUNDS")
    e.deposit(2, "USD", 1)
    r, fx = place(e, mkt(2, BUY, 30))
    assert [t[2:] for t in trades(fx)] == [(100, 10), (104, 10)]
    assert (r.order.status, r.order.filled_qty, r.order.reason) == (EXPIRED, 20, "MARKET")
    assert r.order.limit_price == 105
    # paid 2040 + ceil(2040 * 20bps) = 5; never more than it had
    assert usd(e, 2) == (3157 - 2045, 0)
    assert e.depth(SYM).asks == [(106, 10)]


def test_market_buy_with_a_quote_budget() -> None:
    e = make()
    fund(e, 1)
    place(e, lim(1, SELL, 10, 100))
    place(e, lim(1, SELL, 10, 101))
    # budget 1050 + taker fee on the budget, ceil(2.1) = 3, must be available
    e.deposit(2, "USD", 1052)
    rejects(e, mkt(2, BUY, quote_quantity=1050), "INSUFFICIENT_FUNDS")
    e.deposit(2, "USD", 1)
    r, fx = place(e, mkt(2, BUY, quote_quantity=1050))
    # 10 @ 100 spends 1000; 50 left can't buy one lot at 101, so the order is done
    assert trades(fx) == [(r.order.order_id, 1, 100, 10)]
    assert (r.order.status, r.order.budget_left, r.order.reserved) == (FILLED, 50, 0)
    assert usd(e, 2) == (1053 - 1002, 0)


def test_quote_budget_respects_lots_and_tiny_budgets_expire() -> None:
    e = make(lot=5, min_qty=5)
    fund(e, 1)
    fund(e, 2)
    place(e, lim(1, SELL, 50, 100))
    r, fx = place(e, mkt(2, BUY, quote_quantity=1234))
    assert [t[3] for t in trades(fx)] == [10]  # 12.34 lots' worth, rounded down to the lot
    assert r.order.status == FILLED and r.order.budget_left == 234
    r, fx = place(e, mkt(2, BUY, quote_quantity=499))  # less than one lot (5 x 100)
    assert trades(fx) == [] and (r.order.status, r.order.reason) == (EXPIRED, "BUDGET_TOO_SMALL")
    assert usd(e, 2)[1] == 0


def test_quote_budget_is_filled_when_exactly_spent() -> None:
    e = make()
    fund(e, 1)
    fund(e, 2)
    place(e, lim(1, SELL, 10, 100))
    r, _ = place(e, mkt(2, BUY, quote_quantity=1000))
    assert (r.order.status, r.order.filled_qty, r.order.budget_left) == (FILLED, 10, 0)


def test_market_sell_needs_base_and_expires_on_an_empty_book() -> None:
    e = make()
    fund(e, 1)
    e.deposit(2, "BTC", 5 * BM)
    rejects(e, mkt(2, SELL, 6), "INSUFFICIENT_FUNDS")
    r, fx = place(e, mkt(2, SELL, 5))
    assert (r.order.status, r.order.reason, trades(fx)) == (EXPIRED, "NO_LIQUIDITY", [])
    assert btc(e, 2) == (5 * BM, 0)
    place(e, lim(1, BUY, 3, 100))
    place(e, lim(1, BUY, 3, 94))  # below 100 * 0.95 -> outside the band
    r, fx = place(e, mkt(2, SELL, 5))
    assert [t[2:] for t in trades(fx)] == [(100, 3)]
    assert (r.order.status, r.order.limit_price) == (EXPIRED, 95)
    assert usd(e, 2) == (300 - 1, 0)  # taker fee ceil(300 * 20bps) = 1
    assert btc(e, 2) == (2 * BM, 0)


def test_market_buy_on_an_empty_book_expires_without_reserving() -> None:
    e = make()
    e.deposit(2, "USD", 1)
    r, _ = place(e, mkt(2, BUY, 10))
    assert (r.order.status, r.order.reason, r.order.reserved) == (EXPIRED, "NO_LIQUIDITY", 0)


# ----------------------------------------------------------------------------- self-trade


def _stp_book(e: Engine) -> tuple[int, int, int]:
    for acct in (1, 2, 3):
        fund(e, acct)
    x, _ = place(e, lim(2, SELL, 5, 100))
    own, _ = place(e, lim(1, SELL, 10, 100))
    y, _ = place(e, lim(3, SELL, 10, 101))
    return x.order.order_id, own.order.order_id, y.order.order_id


def test_stp_expire_taker_is_the_default() -> None:
    e = make()
    x, own, _ = _stp_book(e)
    r, fx = place(e, lim(1, BUY, 30, 101))
    assert trades(fx) == [(r.order.order_id, x, 100, 5)]
    assert (r.order.status, r.order.reason, r.order.filled_qty) == (EXPIRED, "STP", 5)
    assert e.get_order(1, own) is not None  # the resting order is untouched
    assert usd(e, 1)[1] == 0


def test_stp_expire_maker_removes_the_resting_order_and_continues() -> None:
    e = make()
    x, own, y = _stp_book(e)
    r, fx = place(e, lim(1, BUY, 30, 101, stp=STPMode.EXPIRE_MAKER))
    assert [t[1] for t in trades(fx)] == [x, y]
    ups = updates(fx)
    assert (ups[own].status, ups[own].reason, ups[own].reserved) == (EXPIRED, "STP", 0)
    assert btc(e, 1)[1] == 0  # the expired maker's base is released
    assert (r.order.status, r.order.remaining_qty) == (PART, 15)  # rests at 101
    assert e.depth(SYM).bids == [(101, 15)] and e.depth(SYM).asks == []


def test_stp_expire_both() -> None:
    e = make()
    x, own, _ = _stp_book(e)
    r, fx = place(e, lim(1, BUY, 30, 101, stp=STPMode.EXPIRE_BOTH))
    assert [t[1] for t in trades(fx)] == [x]
    assert updates(fx)[own].status == EXPIRED
    assert (r.order.status, r.order.reason) == (EXPIRED, "STP")
    assert e.depth(SYM).asks == [(101, 10)]


def test_stp_none_allows_self_trades_which_only_cost_fees() -> None:
    e = make()
    fund(e, 1)
    place(e, lim(1, SELL, 10, 100))
    r, fx = place(e, lim(1, BUY, 10, 100, stp=STPMode.NONE))
    assert r.order.status == FILLED and len(trades(fx)) == 1
    assert btc(e, 1) == (10**12, 0)
    assert usd(e, 1) == (10**9 - 2 - 1, 0)  # taker 2 + maker 1, both to the fee account
    assert usd(e, FEE) == (3, 0)


def test_fok_dry_run_respects_self_trade_prevention() -> None:
    e = make()
    _stp_book(e)
    # 25 are on offer up to 101, but our own 10 sit in the way
    rejects(e, lim(1, BUY, 15, 101, time_in_force=FOK), "FOK_NOT_FILLABLE")
    rejects(
        e, lim(1, BUY, 16, 101, time_in_force=FOK, stp=STPMode.EXPIRE_MAKER), "FOK_NOT_FILLABLE"
    )
    r, _ = place(e, lim(1, BUY, 15, 101, time_in_force=FOK, stp=STPMode.EXPIRE_MAKER))
    assert r.order.status == FILLED
    place(e, lim(1, SELL, 10, 100))
    r, _ = place(e, lim(1, BUY, 10, 100, time_in_force=FOK, stp=STPMode.NONE))
    assert r.order.status == FILLED  # against its own order


# ----------------------------------------------------------------------------- stops


def test_stop_limit_triggers_on_the_last_trade_and_trades() -> None:
    e = make()
    for acct in (1, 2, 3):
        fund(e, acct)
    place(e, lim(1, SELL, 10, 101))
    m2, _ = place(e, lim(1, SELL, 10, 102))
    s, fx = place(e, OrderRequest(3, SYM, BUY, STOP_LIMIT, quantity=10, price=102, stop_price=101))
    assert s.order.status == NEW and not s.order.triggered
    assert s.order.reserved == 1020 + 3  # reserved at its limit like a limit order
    assert e.depth(SYM).bids == []  # a pending stop is not in the book
    r, fx = place(e, lim(2, BUY, 10, 101))  # trades at 101 -> the stop triggers
    sid = s.order.order_id
    assert trades(fx) == [(r.order.order_id, 1, 101, 10), (sid, m2.order.order_id, 102, 10)]
    assert r.trades == [t for t in fx if type(t) is Trade][:1]  # result: own trades only
    up = updates(fx)[sid]
    assert up.triggered and up.status == FILLED and up.priority > r.order.priority
    assert usd(e, 3) == (10**9 - 1023, 0)
    assert e.last_price(SYM) == 102


def test_stop_that_would_trigger_immediately_is_rejected() -> None:
    e = make()
    fund(e, 1)
    fund(e, 2)
    place(e, lim(1, SELL, 1, 100))
    place(e, lim(2, BUY, 1, 100))
    assert e.last_price(SYM) == 100
    stop = OrderRequest(2, SYM, BUY, STOP_MARKET, quantity=1, stop_price=100)
    rejects(e, stop, "STOP_WOULD_TRIGGER")
    rejects(e, replace(stop, side=SELL, stop_price=101), "STOP_WOULD_TRIGGER")
    r, _ = place(e, replace(stop, stop_price=101))
    assert r.order.status == NEW


def test_stop_market_sell_triggers_on_mark_price() -> None:
    e = make()
    fund(e, 1)
    fund(e, 2)
    place(e, lim(1, BUY, 10, 95))
    s, _ = place(e, OrderRequest(2, SYM, SELL, STOP_MARKET, quantity=5, stop_price=96))
    e.flush()
    triggered, fx = e.mark_price(SYM, 97)
    assert triggered == [] and fx == [MarkPrice(SYM, 97)]
    triggered, fx = e.mark_price(SYM, 96)
    assert triggered == [s.order.order_id]
    assert fx[0] == MarkPrice(SYM, 96)
    assert [t[2:] for t in trades(fx)] == [(95, 5)]
    assert updates(fx)[s.order.order_id].status == FILLED
    assert e.check_invariants() == []
    assert e.last_price(SYM) == 95


def test_stops_trigger_earliest_first_and_cascade_deterministically() -> None:
    e = make()
    for acct in (1, 2, 3, 4):
        fund(e, acct)
    place(e, lim(1, SELL, 5, 101))
    place(e, lim(1, SELL, 5, 103))
    place(e, lim(1, SELL, 5, 110))
    stop = OrderRequest(0, SYM, BUY, STOP_MARKET, quantity=5, stop_price=101)
    s3, _ = place(e, replace(stop, account_id=3, stop_price=103))  # placed first, higher stop
    s2, _ = place(e, replace(stop, account_id=2))
    s4, _ = place(e, replace(stop, account_id=4))
    triggered, fx = e.mark_price(SYM, 101)
    # s2 and s4 qualify at 101 and s2 was placed first: s2 buys at 101, then s4 at 103;
    # that trade triggers s3, whose cap floor(103 * 1.05) = 108 is below the 110 ask left,
    # so it expires without trading.
    assert triggered == [s2.order.order_id, s4.order.order_id, s3.order.order_id]
    assert [(t[0], t[2]) for t in trades(fx)] == [
        (s2.order.order_id, 101),
        (s4.order.order_id, 103),
    ]
    ups = updates(fx)
    assert ups[s3.order.order_id].status == EXPIRED and ups[s3.order.order_id].filled_qty == 0
    assert usd(e, 3) == (10**9, 0)  # the cap reservation (5 x 108 + fee) is released


def test_stop_market_buy_is_reserved_at_and_capped_by_its_band() -> None:
    e = make()
    fund(e, 1)
    e.deposit(2, "USD", 541)
    req = OrderRequest(2, SYM, BUY, STOP_MARKET, quantity=5, stop_price=103)
    # cap floor(103 * 1.05) = 108: reserve 540 + ceil(1.08) = 542
    rejects(e, req, "INSUFFICIENT_FUNDS")
    e.deposit(2, "USD", 1)
    s, _ = place(e, req)
    assert (s.order.reserved, s.order.limit_price) == (542, 108)
    place(e, lim(1, SELL, 3, 104))
    place(e, lim(1, SELL, 5, 109))  # within 104 * 1.05 but above the cap
    triggered, fx = e.mark_price(SYM, 103)
    assert triggered == [s.order.order_id]
    assert [t[2:] for t in trades(fx)] == [(104, 3)]
    up = updates(fx)[s.order.order_id]
    assert (up.status, up.filled_qty, up.limit_price) == (EXPIRED, 3, 108)
    assert usd(e, 2) == (542 - 312 - 1, 0)
    assert e.check_invariants() == []


def test_halted_instruments_reject_placements_and_hold_stops_until_resumed() -> None:
    e = make()
    fund(e, 1)
    fund(e, 2)
    place(e, lim(1, SELL, 5, 100))
    s, _ = place(e, OrderRequest(2, SYM, BUY, STOP_MARKET, quantity=5, stop_price=100))
    spec, fx = e.halt(SYM)
    assert spec.status == InstrumentStatus.HALTED
    assert fx == [InstrumentStatusChanged(SYM, InstrumentStatus.HALTED)]
    rejects(e, lim(2, BUY, 1, 90), "INSTRUMENT_HALTED")
    triggered, _ = e.mark_price(SYM, 100)
    assert triggered == []
    assert e.halt(SYM)[1] == []  # already halted: no effect
    spec, fx = e.resume(SYM)
    assert spec.status == InstrumentStatus.TRADING
    assert fx[0] == InstrumentStatusChanged(SYM, InstrumentStatus.TRADING)
    assert updates(fx)[s.order.order_id].status == FILLED
    # cancels work while halted
    r, _ = place(e, lim(1, SELL, 5, 120))
    e.halt(SYM)
    assert e.cancel(1, r.order.order_id)[0].status == CANCELED


# ----------------------------------------------------------------------------- cancelling


def test_cancel_releases_and_only_the_owner_can_cancel() -> None:
    e = make()
    fund(e, 1)
    r, _ = place(e, lim(1, BUY, 10, 100, client_order_id="my-order.1"))
    oid = r.order.order_id
    with pytest.raises(DomainError) as exc:
        e.cancel(2, oid)
    assert exc.value.code == "ORDER_NOT_FOUND"
    with pytest.raises(DomainError):
        e.cancel(1, 12345)
    e.flush()
    u, fx = e.cancel(1, client_order_id="my-order.1")
    assert (u.order_id, u.status, u.reserved, u.reason) == (oid, CANCELED, 0, "CANCELED")
    assert fx == [u]
    assert usd(e, 1) == (10**9, 0)
    assert e.flush()[0] == BookDelta(SYM, 2, [(BUY, 100, 0)])
    with pytest.raises(DomainError):
        e.cancel(1, oid)  # already gone
    with pytest.raises(DomainError):
        e.cancel(1)  # neither id given
    assert e.check_invariants() == []


def test_cancel_a_pending_stop() -> None:
    e = make()
    fund(e, 1)
    s, _ = place(e, OrderRequest(1, SYM, BUY, STOP_LIMIT, quantity=10, price=100, stop_price=99))
    assert usd(e, 1)[1] == 1002
    u, _ = e.cancel(1, s.order.order_id)
    assert u.status == CANCELED and usd(e, 1) == (10**9, 0)
    assert e.check_invariants() == []
    assert e.mark_price(SYM, 120)[0] == []


def test_cancel_all_by_symbol_and_everything_oldest_first() -> None:
    e = make()
    e.add_instrument(replace(SPEC, symbol="ETH-USD", base_asset="ETH"))
    fund(e, 1)
    e.deposit(1, "ETH", 10**12)
    a, _ = place(e, lim(1, BUY, 1, 100))
    b, _ = place(e, lim(1, SELL, 1, 200, symbol="ETH-USD"))
    c, _ = place(e, lim(1, SELL, 1, 300))
    s, _ = place(e, OrderRequest(1, SYM, BUY, STOP_LIMIT, quantity=1, price=100, stop_price=150))
    with pytest.raises(DomainError):
        e.cancel_all(1, "NOPE")
    done, _ = e.cancel_all(1, SYM)
    assert [u.order_id for u in done] == [x.order.order_id for x in (a, c, s)]
    assert [u.symbol for u in e.open_orders(1)] == ["ETH-USD"]
    done, _ = e.cancel_all(1)
    assert [u.order_id for u in done] == [b.order.order_id]
    assert e.cancel_all(2)[0] == []
    assert e.balances(1) == [
        BalanceUpdate(1, "BTC", 10**12, 0),
        BalanceUpdate(1, "ETH", 10**12, 0),
        BalanceUpdate(1, "USD", 10**9, 0),
    ]
    assert e.check_invariants() == []


def test_lazy_cancels_are_compacted() -> None:
    e = make()
    fund(e, 1)
    keep, _ = place(e, lim(1, BUY, 1, 100))
    ids = [place(e, lim(1, BUY, 1, 100))[0].order.order_id for _ in range(200)]
    for oid in ids:
        e.cancel(1, oid)
    level = e._markets[SYM].bids.levels[100]  # white box: the deque must not keep 200 ghosts
    assert level.count == 1 and len(level.orders) <= 2 * level.count + 16
    assert e.depth(SYM).bids == [(100, 1)]
    assert e.check_invariants() == []
    r, fx = place(e, lim(1, SELL, 1, 100, stp=STPMode.NONE))
    assert trades(fx) == [(r.order.order_id, keep.order.order_id, 100, 1)]


# ----------------------------------------------------------------------------- balances


def test_deposit_withdraw_credit_and_their_postings() -> None:
    e = make()
    b, fx = e.deposit(1, "USD", 500, ref="wire-1")
    assert b == BalanceUpdate(1, "USD", 500, 0)
    assert fx == [Posting(None, 1, "USD", 500, PostingReason.DEPOSIT, ref="wire-1")]
    place(e, lim(1, BUY, 4, 100))  # locks 400 + 1
    with pytest.raises(DomainError) as exc:
        e.withdraw(1, "USD", 100)
    assert exc.value.code == "INSUFFICIENT_FUNDS"
    b, fx = e.withdraw(1, "USD", 99)
    assert b == BalanceUpdate(1, "USD", 401, 401)
    assert fx == [Posting(1, None, "USD", 99, PostingReason.WITHDRAWAL)]
    b, fx = e.credit(2, "USD", 50)
    assert fx == [Posting(None, 2, "USD", 50, PostingReason.CREDIT)]
    b, fx = e.credit(3, "USD", 20, from_account_id=2, ref="prize")
    assert b.total == 20 and e.balance(2, "USD").total == 30
    assert fx == [Posting(2, 3, "USD", 20, PostingReason.CREDIT, ref="prize")]
    for bad in (
        lambda: e.credit(3, "USD", 31, from_account_id=2),
        lambda: e.credit(3, "USD", 1, from_account_id=3),
        lambda: e.deposit(1, "DOGE", 1),
        lambda: e.deposit(1, "USD", 0),
        lambda: e.deposit(1, "USD", -5),
        lambda: e.withdraw(7, "USD", 1),
    ):
        with pytest.raises(DomainError):
            bad()
    assert e.balance(42, "USD") == BalanceUpdate(42, "USD", 0, 0)
    assert e.balance(42, "USD").available == 0
    assert e.check_invariants() == []


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("req", "code", "field"),
    [
        (lim(1, BUY, 10, 101), "INVALID_PRICE_TICK", "price"),
        (lim(1, BUY, 7, 100), "INVALID_QUANTITY_STEP", "quantity"),
        (lim(1, BUY, 4, 100), "BELOW_MIN_QUANTITY", "quantity"),
        (lim(1, BUY, 10, 48), "BELOW_MIN_NOTIONAL", "price"),
        (mkt(1, BUY, quote_quantity=499), "BELOW_MIN_NOTIONAL", "quoteQuantity"),
        (lim(1, BUY, 10, 100, symbol="NOPE"), "UNKNOWN_INSTRUMENT", "symbol"),
        (lim(1, BUY, 10, 100, client_order_id="x" * 37), "INVALID_CLIENT_ORDER_ID", None),
        (lim(1, BUY, 10, 100, client_order_id="has space"), "INVALID_CLIENT_ORDER_ID", None),
        (lim(1, BUY, 10, 100, client_order_id=""), "INVALID_CLIENT_ORDER_ID", None),
        (lim(1, BUY, 10, 100, client_order_id="naïve"), "INVALID_CLIENT_ORDER_ID", None),
        (lim(1, BUY, 0, 100), "INVALID_ORDER", "quantity"),
        (lim(1, BUY, 10, 0), "INVALID_ORDER", "price"),
        (lim(1, BUY, 10, -100), "INVALID_ORDER", "price"),
        (lim(1, BUY, 10, 100, stop_price=90), "INVALID_ORDER", "stopPrice"),
        (lim(1, BUY, 10, 100, quote_quantity=5), "INVALID_ORDER", "quoteQuantity"),
        (mkt(1, BUY, 10, price=100), "INVALID_ORDER", "price"),
        (mkt(1, BUY), "INVALID_ORDER", "quantity"),
        (mkt(1, BUY, 10, quote_quantity=1000), "INVALID_ORDER", "quoteQuantity"),
        (mkt(1, SELL, quote_quantity=1000), "INVALID_ORDER", "quoteQuantity"),
        (mkt(1, BUY, quote_quantity=1000, time_in_force=FOK), "INVALID_ORDER", "timeInForce"),
        (mkt(1, BUY, 10, post_only=True), "INVALID_ORDER", "postOnly"),
        (OrderRequest(1, SYM, BUY, STOP_LIMIT, quantity=10, price=100), "INVALID_ORDER", None),
        (
            OrderRequest(1, SYM, BUY, STOP_MARKET, quantity=10, stop_price=101),
            "INVALID_PRICE_TICK",
            "stopPrice",
        ),
        (OrderRequest(1, SYM, "HOLD", LIMIT, quantity=10, price=100), "INVALID_ORDER", "side"),  # type: ignore[arg-type]
        (OrderRequest(1, SYM, BUY, "ICEBERG", quantity=10, price=100), "INVALID_ORDER", "type"),  # type: ignore[arg-type]
        (lim(1, BUY, 10, 100, time_in_force="GTD"), "INVALID_ORDER", "timeInForce"),
        (lim(1, BUY, 10, 100, stp="DECREMENT"), "INVALID_ORDER", "stp"),
        (lim(2, BUY, 10, 100), "INSUFFICIENT_FUNDS", "quantity"),
        (lim(1, SELL, 10, 100), "INSUFFICIENT_FUNDS", "quantity"),
    ],
)
def test_validation_codes_and_no_state_change(
    req: OrderRequest, code: str, field: str | None
) -> None:
    e = make(tick=2, lot=2, min_qty=6, min_notional=500)
    fund(e, 1, btc=0)
    place(e, lim(1, BUY, 6, 100))  # some state to prove nothing changes
    err = rejects(e, req, code)
    if field is not None:
        assert err.field == field


def test_rejected_when_halted_and_accepted_after_resume() -> None:
    e = make()
    fund(e, 1)
    e.halt(SYM)
    rejects(e, lim(1, BUY, 10, 100), "INSTRUMENT_HALTED")
    e.resume(SYM)
    assert place(e, lim(1, BUY, 10, 100))[0].order.status == NEW


def test_client_order_id_retries_are_idempotent() -> None:
    e = make()
    fund(e, 1)
    fund(e, 2)
    req = lim(1, BUY, 10, 100, client_order_id="A:b/c-d_e.1")
    first, fx = place(e, req)
    assert not first.replayed and fx
    before = snapshot(e)
    again, fx = place(e, req)
    assert again.replayed and fx == [] and snapshot(e) == before
    assert (again.order, again.trades) == (first.order, first.trades)
    rejects(e, replace(req, quantity=20), "DUPLICATE_CLIENT_ORDER_ID")
    # the id is per account, and stays taken after the order is gone
    assert place(e, replace(req, account_id=2))[0].order.status == NEW
    e.cancel(1, first.order.order_id)
    assert place(e, req)[0].replayed
    e.forget_client_order_id(1, "A:b/c-d_e.1")
    assert not place(e, req)[0].replayed


def test_idempotent_replay_of_an_order_that_traded() -> None:
    e = make()
    fund(e, 1)
    fund(e, 2)
    place(e, lim(1, SELL, 10, 100))
    req = lim(2, BUY, 10, 100, client_order_id="t1")
    first, _ = place(e, req)
    again, fx = place(e, req)
    assert again.replayed and again.trades == first.trades and len(first.trades) == 1
    assert fx == []


# ----------------------------------------------------------------------------- ledger


def test_trade_postings_are_a_balanced_ledger() -> None:
    e = make()
    fund(e, 1)
    fund(e, 2)
    place(e, lim(1, SELL, 10, 101))
    _, fx = place(e, lim(2, BUY, 10, 101))
    (t,) = (x for x in fx if type(x) is Trade)
    assert (t.buyer_account_id, t.seller_account_id) == (2, 1)
    assert (t.buy_order_id, t.sell_order_id) == (t.taker_order_id, t.maker_order_id)
    assert (t.buyer_fee, t.seller_fee) == (3, 2)  # ceil(1010 * 20bps), ceil(1010 * 10bps)
    assert t.postings() == [
        Posting(2, 1, "USD", 1010, PostingReason.TRADE, t.buy_order_id, t.trade_id),
        Posting(1, 2, "BTC", 10 * BM, PostingReason.TRADE, t.sell_order_id, t.trade_id),
        Posting(2, FEE, "USD", 3, PostingReason.FEE, t.buy_order_id, t.trade_id),
        Posting(1, FEE, "USD", 2, PostingReason.FEE, t.sell_order_id, t.trade_id),
    ]
    assert ledger_postings(fx) == t.postings()


def test_replaying_the_ledger_reproduces_every_balance() -> None:
    e = make()
    fx_all: list[Effect] = []
    for acct in (1, 2, 3):
        fx_all += e.deposit(acct, "USD", 10**6)[1]
        fx_all += e.deposit(acct, "BTC", 10**9)[1]
    reqs = [
        lim(1, SELL, 10, 101),
        lim(2, SELL, 7, 100),
        lim(3, BUY, 12, 101),
        mkt(1, BUY, 3),
        mkt(3, SELL, 4),
        lim(2, BUY, 9, 99),
        mkt(3, BUY, quote_quantity=700),
    ]
    for req in reqs:
        fx_all += place(e, req)[1]
    fx_all += e.withdraw(2, "USD", 1000)[1]
    ledger: dict[tuple[int, str], int] = {}
    for p in ledger_postings(fx_all):
        assert p.amount > 0
        if p.from_account_id is not None:
            key = (p.from_account_id, p.asset)
            ledger[key] = ledger.get(key, 0) - p.amount
        if p.to_account_id is not None:
            key = (p.to_account_id, p.asset)
            ledger[key] = ledger.get(key, 0) + p.amount
    assert {k: v for k, v in ledger.items() if v} == {
        (b.account_id, b.asset): b.total for b in e.balances() if b.total
    }
    conserved(e, {"USD": 3 * 10**6 - 1000, "BTC": 3 * 10**9})


# ----------------------------------------------------------------------------- rebuild


def _script() -> list[Any]:
    return [
        ("deposit", 1, "USD", 10**6),
        ("deposit", 1, "BTC", 10**9),
        ("deposit", 2, "USD", 10**6),
        ("deposit", 2, "BTC", 10**9),
        ("place", lim(1, SELL, 10, 103)),
        ("place", lim(1, SELL, 10, 101, client_order_id="s1")),
        ("place", lim(2, BUY, 4, 101)),
        ("place", lim(2, BUY, 10, 99)),
        ("place", OrderRequest(2, SYM, BUY, STOP_LIMIT, quantity=5, price=104, stop_price=103)),
        ("place", OrderRequest(1, SYM, SELL, STOP_MARKET, quantity=2, stop_price=98)),
        ("place", mkt(2, BUY, quote_quantity=450)),
    ]


def _apply(e: Engine, cmds: list[Any]) -> list[Effect]:
    out: list[Effect] = []
    for cmd in cmds:
        if cmd[0] == "deposit":
            out += e.deposit(*cmd[1:])[1]
        elif cmd[0] == "place":
            out += e.place(cmd[1])[1]
        elif cmd[0] == "mark":
            out += e.mark_price(SYM, cmd[1])[1]
        out += e.flush()
    return out


def test_same_commands_same_effects() -> None:
    a, b = make(), make()
    assert _apply(a, _script()) == _apply(b, _script())
    assert a.counters() == b.counters()


def test_rebuild_from_persisted_state_continues_identically() -> None:
    live = make()
    _apply(live, _script())
    # what the sequencer persisted: balances, open orders, counters, last price
    rebuilt = make()
    for b in live.balances():
        rebuilt.load_balance(b.account_id, b.asset, b.total, b.locked)
    for u in live.open_orders():
        rebuilt.restore_order(u)
    c = live.counters()
    rebuilt.set_counters(
        next_order_id=c.next_order_id,
        next_trade_id=c.next_trade_id,
        next_priority=c.next_priority,
        topic_seqs=c.topic_seqs,
    )
    rebuilt.restore_last_price(SYM, live.last_price(SYM))
    assert rebuilt.check_invariants() == []
    assert rebuilt.counters() == live.counters()
    assert snapshot(rebuilt) == snapshot(live)
    # the idempotency entry of the open order came back with it
    assert rebuilt.place(lim(1, SELL, 10, 101, client_order_id="s1"))[0].replayed
    more = [
        ("place", lim(2, BUY, 30, 103)),  # sweeps, triggers the buy stop at 103
        ("mark", 97),  # triggers the sell stop
        ("place", lim(1, SELL, 3, 99)),
    ]
    assert _apply(rebuilt, more) == _apply(live, more)
    assert rebuilt.check_invariants() == [] and snapshot(rebuilt) == snapshot(live)


def test_restore_order_guards() -> None:
    e = make()
    fund(e, 1)
    r, _ = place(e, lim(1, BUY, 10, 100))
    other = make()
    with pytest.raises(ValueError):
        other.restore_order(r.order._replace(status=FILLED))
    other.restore_order(r.order)
    with pytest.raises(ValueError):
        other.restore_order(r.order)  # twice
    with pytest.raises(ValueError):
        other.restore_order(r.order._replace(order_id=77))  # priority not ascending
    # balances were not loaded, so the reservation is unaccounted for
    assert other.check_invariants() != []
    other.load_balance(1, "USD", 10**9, 1001)
    assert other.check_invariants() == []
    with pytest.raises(ValueError):
        other.load_balance(1, "USD", 5, 6)
    with pytest.raises(ValueError):
        other.set_counters(topic_seqs={"ticker:BTC-USD": 3})
    other.remember_client_order_id(lim(1, BUY, 1, 100, client_order_id="z"), r)
    assert other.place(lim(1, BUY, 1, 100, client_order_id="z"))[0].replayed


def test_happy_path_lanes_agree_with_the_general_path() -> None:
    """Plain limit/market orders take the fast lanes of ``Engine.place``; the same orders
    with a clientOrderId take the general path.  Both must produce the same effects."""

    def run(with_coid: bool) -> list[Any]:
        e = make()
        fund(e, 1)
        fund(e, 2, btc=0)  # no BTC cell yet: its first accepted order creates it
        fund(e, 3, usd=0)
        out: list[Any] = []
        n = 0

        def req(r: OrderRequest) -> OrderRequest:
            nonlocal n
            n += 1
            return replace(r, client_order_id=f"c{n}") if with_coid else r

        def strip(fx: list[Effect]) -> list[Any]:
            return [u._replace(request=None) if type(u) is OrderUpdate else u for u in fx]

        for r in (  # sizes large enough for every fee rate to show in the reservations
            lim(2, SELL, 500, 101),  # no BTC: rejected, must create nothing
            lim(2, BUY, 500, 99),
            lim(3, SELL, 400, 102),
            lim(1, SELL, 300, 101),
            lim(2, BUY, 200, 101),  # crosses, fills
            mkt(2, BUY, 600),  # sweeps both asks, the rest expires
            lim(3, SELL, 900, 98),  # crosses the bid, the rest rests
            mkt(1, SELL, 100),  # no bids left: expires
            lim(1, BUY, 100, 97),
        ):
            try:
                result, fx = place(e, req(r))
                out.append((strip([result.order]), strip(fx)))
            except DomainError as exc:
                out.append(exc.code)
            out.append(e.flush())
        for acct in (1, 2, 3):
            for u in e.open_orders(acct):
                out.append(strip(e.cancel(acct, u.order_id)[1]))
        out.append((e.flush(), e.balances(), e.counters()))
        return out

    assert run(with_coid=False) == run(with_coid=True)
