"""Property tests of the exchange core.

1. Random command sequences (several accounts, two instruments sharing a quote asset,
   deposits, withdrawals, credits, limit/market/stop/IOC/FOK/post-only orders, cancels,
   marks, halts): after every command the engine's invariants hold, every asset is
   conserved, ``locked`` equals the open reservations, the ledger replays to the balances,
   and the level deltas rebuild exactly the book that ``depth`` reports.
2. A naive, obviously-correct list-based matcher written here must produce exactly the same
   trades, statuses, rejections and resting book for limit/market/IOC/FOK/post-only
   sequences with every self-trade prevention mode.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from fractions import Fraction
from math import ceil, floor
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tradegraph.errors import DomainError
from tradegraph.exchange.book import (
    OrderStatus,
    OrderType,
    PostingReason,
    Side,
    STPMode,
    TimeInForce,
)
from tradegraph.exchange.engine import (
    BookDelta,
    Effect,
    Engine,
    InstrumentSpec,
    OrderRequest,
    OrderUpdate,
    Trade,
    ledger_postings,
)

FEE = 0
BAND = 500
BTC = InstrumentSpec(
    symbol="BTC-USD",
    base_asset="BTC",
    quote_asset="USD",
    base_decimals=6,
    quote_decimals=4,
    price_decimals=1,
    qty_decimals=2,
    tick=1,
    lot=1,
    min_qty=1,
    maker_fee_bps=7,
    taker_fee_bps=33,
)  # quote_mult 10, base_mult 10**4
ETH = replace(
    BTC,
    symbol="ETH-USD",
    base_asset="ETH",
    base_decimals=2,
    tick=2,
    lot=2,
    min_qty=2,
    min_notional=150,
    maker_fee_bps=0,
    taker_fee_bps=100,
)  # quote_mult 10, base_mult 1
SPECS = {s.symbol: s for s in (BTC, ETH)}
ACCOUNTS = (1, 2, 3, 4)
ASSETS = ("USD", "BTC", "ETH")

PROPS = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# ----------------------------------------------------------------------------- strategies

accounts = st.sampled_from(ACCOUNTS)
sides = st.sampled_from([Side.BUY, Side.SELL])
symbols = st.sampled_from(["BTC-USD", "ETH-USD"])
prices = st.integers(90, 110)
qtys = st.integers(1, 12)
stps = st.sampled_from(list(STPMode))

tifs = st.sampled_from([TimeInForce.GTC, TimeInForce.GTC, TimeInForce.IOC, TimeInForce.FOK])
limits = st.tuples(
    st.just("limit"), accounts, symbols, sides, qtys, prices, tifs, st.booleans(), stps
)
markets = st.tuples(st.just("market"), accounts, symbols, sides, qtys, stps)
marks = st.tuples(st.just("mark"), symbols, prices)
cancels = st.tuples(st.just("cancel"), accounts, st.integers(0, 20))
# one_of picks a branch uniformly, so repeating a branch weights it
commands = st.one_of(
    limits,
    limits,
    limits,
    limits,
    markets,
    markets,
    cancels,
    cancels,
    marks,
    st.tuples(st.just("deposit"), accounts, st.sampled_from(ASSETS), st.integers(1, 50_000)),
    st.tuples(st.just("withdraw"), accounts, st.sampled_from(ASSETS), st.integers(1, 20_000)),
    st.tuples(
        st.just("credit"),
        accounts,
        st.sampled_from(ASSETS),
        st.integers(1, 5_000),
        st.none() | accounts,
    ),
    st.tuples(st.just("market_quote"), accounts, symbols, st.integers(50, 30_000)),
    st.tuples(st.just("stop_limit"), accounts, symbols, sides, qtys, prices, prices),
    st.tuples(st.just("stop_market"), accounts, symbols, sides, qtys, prices),
    st.tuples(st.just("cancel_all"), accounts, st.none() | symbols),
    st.tuples(st.just("halt"), symbols),
    st.tuples(st.just("resume"), symbols),
    st.tuples(st.just("resume"), symbols),
    st.tuples(st.just("resume"), symbols),
    st.tuples(st.just("flush")),
)


def _request(cmd: tuple[Any, ...]) -> OrderRequest:
    """Limit and stop orders are put on the instrument's tick and lot (the unit tests cover
    the step errors); market quantities stay raw so step errors still occur here."""
    kind = cmd[0]
    if kind == "limit":
        _, acct, sym, side, qty, price, tif, post_only, stp = cmd
        tick, lot = SPECS[sym].tick, SPECS[sym].lot
        qty, price = qty * lot, price // tick * tick
        return OrderRequest(
            acct, sym, side, OrderType.LIMIT, qty, price, None, None, tif, post_only, None, stp
        )
    if kind == "market":
        _, acct, sym, side, qty, stp = cmd
        return OrderRequest(acct, sym, side, OrderType.MARKET, qty, stp=stp)
    if kind == "market_quote":
        _, acct, sym, budget = cmd
        return OrderRequest(acct, sym, Side.BUY, OrderType.MARKET, quote_quantity=budget)
    if kind == "stop_limit":
        _, acct, sym, side, qty, price, stop = cmd
        tick, lot = SPECS[sym].tick, SPECS[sym].lot
        qty, price, stop = qty * lot, price // tick * tick, stop // tick * tick
        return OrderRequest(
            acct, sym, side, OrderType.STOP_LIMIT, qty, price=price, stop_price=stop
        )
    _, acct, sym, side, qty, stop = cmd
    tick, lot = SPECS[sym].tick, SPECS[sym].lot
    return OrderRequest(
        acct, sym, side, OrderType.STOP_MARKET, qty * lot, stop_price=stop // tick * tick
    )


# ----------------------------------------------------------------------------- invariants


class Observer:
    """Everything a downstream consumer would rebuild from the effects alone."""

    def __init__(self) -> None:
        self.external: dict[str, int] = dict.fromkeys(ASSETS, 0)
        self.postings: list[Any] = []
        self.books: dict[str, dict[tuple[Side, int], int]] = {s: {} for s in SPECS}
        self.book_seq: dict[str, int] = dict.fromkeys(SPECS, 0)
        self.trade_seq: dict[str, int] = dict.fromkeys(SPECS, 0)
        self.trade_ids: set[int] = set()

    def see(self, fx: list[Effect]) -> None:
        self.postings += ledger_postings(fx)
        for e in fx:
            if isinstance(e, BookDelta):
                assert e.seq == self.book_seq[e.symbol] + 1, "book sequence must not skip"
                self.book_seq[e.symbol] = e.seq
                book = self.books[e.symbol]
                for side, price, size in e.changes:
                    assert size >= 0
                    if size:
                        book[(side, price)] = size
                    else:
                        book.pop((side, price), None)
            elif isinstance(e, Trade):
                assert e.seq == self.trade_seq[e.symbol] + 1, "trade sequence must not skip"
                self.trade_seq[e.symbol] = e.seq
                assert e.trade_id not in self.trade_ids
                self.trade_ids.add(e.trade_id)
                assert e.qty > 0 and e.notional == e.price * e.qty * SPECS[e.symbol].quote_mult
                assert e.base_amount == e.qty * SPECS[e.symbol].base_mult
                assert 0 <= e.taker_fee <= e.notional and 0 <= e.maker_fee <= e.notional
            elif isinstance(e, OrderUpdate):
                r = e.request
                if e.triggered:
                    event("a stop triggered")
                if e.reason == "STP":
                    event("self-trade prevention ended an order")
                assert e.filled_qty >= 0 and e.remaining_qty >= 0 and e.reserved >= 0
                if r.quantity is not None:
                    assert e.filled_qty + e.remaining_qty == r.quantity
                if e.status == OrderStatus.FILLED and r.quantity is not None:
                    assert e.remaining_qty == 0
                if not e.is_open:
                    assert e.reserved == 0, "an ended order keeps nothing locked"


def check_state(e: Engine, obs: Observer) -> None:
    assert e.check_invariants() == []
    balances = e.balances()
    totals = dict.fromkeys(ASSETS, 0)
    locked: dict[tuple[int, str], int] = {}
    for b in balances:
        assert b.total >= 0 and 0 <= b.locked <= b.total
        totals[b.asset] += b.total
        locked[(b.account_id, b.asset)] = b.locked
    assert totals == obs.external, "sum over all accounts == deposits + credits - withdrawals"
    reserved: dict[tuple[int, str], int] = {}
    for u in e.open_orders():
        spec = SPECS[u.symbol]
        asset = spec.quote_asset if u.side == Side.BUY else spec.base_asset
        reserved[(u.account_id, asset)] = reserved.get((u.account_id, asset), 0) + u.reserved
    assert {k: v for k, v in locked.items() if v} == {k: v for k, v in reserved.items() if v}


def _observable(e: Engine) -> Any:
    books = [e.book_orders(sym, side) for sym in SPECS for side in Side]
    return e.balances(), e.open_orders(), e.counters(), books


def apply(e: Engine, obs: Observer, cmd: tuple[Any, ...]) -> None:
    kind = cmd[0]
    before = _observable(e)
    try:
        if kind == "deposit":
            _, acct, asset, amount = cmd
            obs.see(e.deposit(acct, asset, amount)[1])
            obs.external[asset] += amount
        elif kind == "withdraw":
            _, acct, asset, amount = cmd
            obs.see(e.withdraw(acct, asset, amount)[1])
            obs.external[asset] -= amount
        elif kind == "credit":
            _, acct, asset, amount, source = cmd
            obs.see(e.credit(acct, asset, amount, from_account_id=source)[1])
            if source is None:
                obs.external[asset] += amount
        elif kind == "cancel":
            _, acct, k = cmd
            mine = e.open_orders(acct)
            oid = mine[k % len(mine)].order_id if mine and k < 15 else 10**6 + k
            obs.see(e.cancel(acct, oid)[1])
        elif kind == "cancel_all":
            obs.see(e.cancel_all(cmd[1], cmd[2])[1])
        elif kind == "mark":
            obs.see(e.mark_price(cmd[1], cmd[2])[1])
        elif kind == "halt":
            obs.see(e.halt(cmd[1])[1])
        elif kind == "resume":
            obs.see(e.resume(cmd[1])[1])
        elif kind == "flush":
            pass
        else:
            result, fx = e.place(_request(cmd))
            obs.see(fx)
            u = result.order
            for t in result.trades:
                assert t.taker_order_id == u.order_id
                if u.limit_price:  # a taker never trades through its (protection) limit
                    sign = 1 if u.side == Side.BUY else -1
                    assert t.price * sign <= u.limit_price * sign
        event(f"{kind}: accepted")
    except DomainError as err:
        assert err.code
        event(f"{kind}: {err.code}")
        assert _observable(e) == before, "a rejected command must change nothing"
    if kind == "flush":
        obs.see(e.flush())
        for sym in SPECS:  # the deltas rebuild exactly what depth() reports
            snap = e.depth(sym, 1000)
            assert snap.seq == obs.book_seq[sym]
            rebuilt = {(Side.BUY, p): s for p, s in snap.bids}
            rebuilt.update({(Side.SELL, p): s for p, s in snap.asks})
            assert rebuilt == obs.books[sym]
    check_state(e, obs)


def fresh_engine() -> Engine:
    e = Engine(fee_account_id=FEE, market_band_bps=BAND)
    for spec in SPECS.values():
        e.add_instrument(spec)
    return e


# starting balances per (account, asset): some accounts poor, some rich
fundings = st.lists(
    st.sampled_from([0, 10**3, 10**5, 10**6, 10**7]), min_size=len(ACCOUNTS) * 3, max_size=12
)


@PROPS
@given(fundings, st.lists(commands, min_size=30, max_size=120))
def test_invariants_hold_after_every_command(
    funding: list[int], cmds: list[tuple[Any, ...]]
) -> None:
    e = fresh_engine()
    obs = Observer()
    for i, amount in enumerate(funding):
        if amount:
            apply(e, obs, ("deposit", ACCOUNTS[i // 3], ASSETS[i % 3], amount))
    for cmd in cmds:
        apply(e, obs, cmd)
    apply(e, obs, ("flush",))

    # the ledger alone reproduces every balance
    ledger: dict[tuple[int, str], int] = {}
    for p in obs.postings:
        assert p.amount > 0
        # only a self-trade (STP NONE) moves money from an account to itself
        assert p.from_account_id != p.to_account_id or p.reason == PostingReason.TRADE
        for acct, sign in ((p.from_account_id, -1), (p.to_account_id, 1)):
            if acct is not None:
                ledger[(acct, p.asset)] = ledger.get((acct, p.asset), 0) + sign * p.amount
    assert {k: v for k, v in ledger.items() if v} == {
        (b.account_id, b.asset): b.total for b in e.balances() if b.total
    }

    # and a rebuild from persisted state is indistinguishable from the live engine
    r = fresh_engine()
    for b in e.balances():
        r.load_balance(b.account_id, b.asset, b.total, b.locked)
    for u in e.open_orders():
        r.restore_order(u)
    c = e.counters()
    r.set_counters(
        next_order_id=c.next_order_id,
        next_trade_id=c.next_trade_id,
        next_priority=c.next_priority,
        topic_seqs=c.topic_seqs,
    )
    for sym in SPECS:
        r.restore_last_price(sym, e.last_price(sym))
        if e.instrument(sym).status != r.instrument(sym).status:
            r.halt(sym)
    assert r.check_invariants() == []
    for sym in SPECS:
        for side in Side:
            assert r.book_orders(sym, side) == e.book_orders(sym, side)
    assert r.open_orders() == e.open_orders() and r.counters() == e.counters()


# ----------------------------------------------------------------------------- reference matcher


class Reject(Exception):
    def __init__(self, code: str) -> None:
        self.code = code


@dataclass
class RefOrder:
    oid: int
    acct: int
    side: Side
    price: int
    qty: int
    seq: int


class RefMatcher:
    """Naive matcher: a flat list of resting orders, re-sorted on every use."""

    def __init__(self, band_bps: int, tick: int) -> None:
        self.band = Fraction(band_bps, 10_000)
        self.tick = tick
        self.resting: list[RefOrder] = []
        self.next_id = 1
        self.seq = 0

    def _opposite(self, side: Side) -> list[RefOrder]:
        other = [o for o in self.resting if o.side != side]
        if side == Side.BUY:  # cheapest ask first, then oldest
            return sorted(other, key=lambda o: (o.price, o.seq))
        return sorted(other, key=lambda o: (-o.price, o.seq))

    def _protection(self, side: Side, best: int) -> int:
        if side == Side.BUY:
            return floor(best * (1 + self.band) / self.tick) * self.tick
        return max(self.tick, ceil(best * (1 - self.band) / self.tick) * self.tick)

    def place(
        self,
        acct: int,
        side: Side,
        qty: int,
        price: int | None,
        tif: TimeInForce,
        post_only: bool,
        stp: STPMode,
    ) -> tuple[int, OrderStatus, int, list[tuple[int, int, int, int]]]:
        opp = self._opposite(side)
        limit = price
        if price is None and opp:
            limit = self._protection(side, opp[0].price)

        def crosses(o: RefOrder) -> bool:
            assert limit is not None
            return o.price <= limit if side == Side.BUY else o.price >= limit

        if post_only and opp and crosses(opp[0]):
            raise Reject("POST_ONLY_WOULD_TAKE")
        if tif == TimeInForce.FOK:  # all or nothing: try it on a copy first
            trial = copy.deepcopy(self)
            _, _, filled, _ = trial._execute(acct, side, qty, limit, tif, stp, price is None)
            if filled < qty:
                raise Reject("FOK_NOT_FILLABLE")
        return self._execute(acct, side, qty, limit, tif, stp, price is None)

    def _execute(
        self,
        acct: int,
        side: Side,
        qty: int,
        limit: int | None,
        tif: TimeInForce,
        stp: STPMode,
        is_market: bool,
    ) -> tuple[int, OrderStatus, int, list[tuple[int, int, int, int]]]:
        oid = self.next_id
        self.next_id += 1
        self.seq += 1
        left = qty
        trades: list[tuple[int, int, int, int]] = []
        stp_ended = False
        if limit is not None:
            for maker in self._opposite(side):
                if not (maker.price <= limit if side == Side.BUY else maker.price >= limit):
                    break
                if maker.acct == acct and stp != STPMode.NONE:
                    if stp == STPMode.EXPIRE_TAKER:
                        stp_ended = True
                        break
                    self.resting.remove(maker)
                    if stp == STPMode.EXPIRE_BOTH:
                        stp_ended = True
                        break
                    continue
                fill = min(left, maker.qty)
                trades.append((oid, maker.oid, maker.price, fill))
                maker.qty -= fill
                left -= fill
                if maker.qty == 0:
                    self.resting.remove(maker)
                if left == 0:
                    break
        if left == 0:
            status = OrderStatus.FILLED
        elif stp_ended or is_market or tif != TimeInForce.GTC:
            status = OrderStatus.EXPIRED
        else:
            assert limit is not None
            self.resting.append(RefOrder(oid, acct, side, limit, left, self.seq))
            status = OrderStatus.PARTIALLY_FILLED if left < qty else OrderStatus.NEW
        return oid, status, qty - left, trades

    def cancel(self, acct: int, oid: int) -> None:
        for o in self.resting:
            if o.oid == oid and o.acct == acct:
                self.resting.remove(o)
                return
        raise Reject("ORDER_NOT_FOUND")

    def book(self, side: Side) -> list[tuple[int, int, int]]:
        mine = [o for o in self.resting if o.side == side]
        mine.sort(key=lambda o: ((-o.price if side == Side.BUY else o.price), o.seq))
        return [(o.oid, o.price, o.qty) for o in mine]


ref_limits = st.tuples(
    st.just("limit"),
    st.sampled_from((1, 2, 3)),
    sides,
    st.integers(1, 8),
    st.integers(95, 105),
    tifs,
    st.booleans(),
    stps,
    st.booleans(),
)
ref_commands = st.one_of(
    ref_limits,
    ref_limits,
    ref_limits,
    ref_limits,
    st.tuples(
        st.just("market"),
        st.sampled_from((1, 2, 3)),
        sides,
        st.integers(1, 20),
        stps,
        st.booleans(),
        st.sampled_from([TimeInForce.GTC, TimeInForce.IOC, TimeInForce.FOK]),
    ),
    st.tuples(st.just("cancel"), st.sampled_from((1, 2, 3)), st.integers(0, 10)),
)


@PROPS
@given(st.lists(ref_commands, min_size=20, max_size=80), st.sampled_from([1, 5]))
def test_matches_a_naive_reference_matcher(cmds: list[tuple[Any, ...]], tick: int) -> None:
    spec = replace(BTC, tick=tick)
    e = Engine(fee_account_id=FEE, market_band_bps=BAND)
    e.add_instrument(spec)
    for acct in (1, 2, 3):
        e.deposit(acct, "USD", 10**15)
        e.deposit(acct, "BTC", 10**15)
    ref = RefMatcher(BAND, tick)
    for i, cmd in enumerate(cmds):
        kind = cmd[0]
        expected: Any
        got: Any
        if kind == "cancel":
            _, acct, k = cmd
            mine = [o for o in ref.resting if o.acct == acct]
            oid = sorted(mine, key=lambda o: o.seq)[k % len(mine)].oid if mine and k < 8 else 999
            try:
                ref.cancel(acct, oid)
                expected = "ok"
            except Reject as r:
                expected = r.code
            try:
                got = e.cancel(acct, oid)[0].status
                got = "ok" if got == OrderStatus.CANCELED else got
            except DomainError as err:
                got = err.code
        else:
            # a client order id sends an order down the engine's general path instead of
            # its fast lanes; both must agree with the reference
            if kind == "limit":
                _, acct, side, qty, price, tif, post_only, stp, with_id = cmd
                price *= tick
                post_only = post_only and tif == TimeInForce.GTC  # other combinations are invalid
            else:
                _, acct, side, qty, stp, with_id, tif = cmd
                price, post_only = None, False
            try:
                expected = ref.place(acct, side, qty, price, tif, post_only, stp)
            except Reject as r:
                expected = r.code
            req = OrderRequest(
                acct,
                spec.symbol,
                side,
                OrderType.LIMIT if price is not None else OrderType.MARKET,
                qty,
                price,
                time_in_force=tif,
                post_only=post_only,
                client_order_id=f"c{i}" if with_id else None,
                stp=stp,
            )
            try:
                result, _ = e.place(req)
                u = result.order
                trades = [
                    (t.taker_order_id, t.maker_order_id, t.price, t.qty) for t in result.trades
                ]
                got = (u.order_id, u.status, u.filled_qty, trades)
            except DomainError as err:
                got = err.code
        assert got == expected, cmd
        if isinstance(got, tuple):
            event(f"reference: {len(got[3])} fills, {got[1]}")
        else:
            event(f"reference: {got}")
        for side in Side:
            engine_book = [
                (u.order_id, u.limit_price, u.remaining_qty)
                for level in e.book_orders(spec.symbol, side)
                for u in level
            ]
            assert engine_book == ref.book(side)
    assert e.check_invariants() == []
