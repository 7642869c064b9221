"""Throughput of the pure exchange core (no persistence, no asyncio, one core).

Workload: a seeded, fixed mix of commands -- 60% GTC limits near the touch (at or behind
the best price on their side, random account, 1-100 lots), 25% cancels of a random open
order, 10% market orders (1-100 lots), 5% limits that cross the spread (their remainder
rests).  Accounts are funded generously so funds never bind.

The stream is generated in chunks against a *shadow* engine (untimed), so "near the touch"
is relative to the real book and cancels target orders that are actually open; each
chunk is then replayed on the measured engine, which must end in the same state (a
determinism check).  Only the replay is timed.

Effects are collected per batch of ``--batch`` commands, each batch ending with
``engine.flush()`` (book deltas + balance rows), as the sequencer does before its commit.
A plain dict + deque + heap book (no balances, fees, validation or effects) runs the same
stream in the same process; ``ratio_to_baseline`` is the stable number on a noisy machine.
``--gc-threshold`` raises the GC thresholds (0 keeps the interpreter defaults; on this
workload it matters little).  Prints one JSON line.
"""

from __future__ import annotations

import argparse
import gc
import heapq
import json
import platform
import random
import sys
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

from tradegraph.errors import DomainError
from tradegraph.exchange import native_core
from tradegraph.exchange.book import OrderStatus, OrderType, Side
from tradegraph.exchange.engine import Effect, Engine, InstrumentSpec, OrderRequest, OrderUpdate

SYMBOL = "BTC-USD"
ACCOUNTS = 1_000
FEE_ACCOUNT = 0
START_PRICE = 5_000_000  # 50,000.00 at 2 price decimals

PLACE = 0
CANCEL = 1
Command = tuple[int, Any, int]  # (PLACE, OrderRequest, 0) or (CANCEL, account, order id)


def make_engine() -> Engine:
    engine = Engine(fee_account_id=FEE_ACCOUNT, market_band_bps=500)
    engine.add_instrument(
        InstrumentSpec(
            symbol=SYMBOL,
            base_asset="BTC",
            quote_asset="USD",
            base_decimals=8,
            quote_decimals=8,
            price_decimals=2,
            qty_decimals=4,
            tick=1,
            lot=1,
            min_qty=1,
            min_notional=0,
            maker_fee_bps=10,
            taker_fee_bps=20,
        )
    )
    for acct in range(1, ACCOUNTS + 1):
        engine.deposit(acct, "USD", 10**18)
        engine.deposit(acct, "BTC", 10**15)
    return engine


class CommandStream:
    """Seeded generator driving a shadow engine to keep the mix realistic."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.shadow = make_engine()
        self.open_ids: list[tuple[int, int]] = []  # (account, order id)
        self.pos: dict[int, int] = {}  # order id -> index in open_ids

    def _add(self, acct: int, oid: int) -> None:
        self.pos[oid] = len(self.open_ids)
        self.open_ids.append((acct, oid))

    def _drop(self, oid: int) -> None:
        i = self.pos.pop(oid)
        last = self.open_ids.pop()
        if last[1] != oid:
            self.open_ids[i] = last
            self.pos[last[1]] = i

    def _track(self, fx: list[Effect]) -> None:
        for e in fx:
            if type(e) is OrderUpdate:
                oid = e.order_id
                if e.status == OrderStatus.NEW or e.status == OrderStatus.PARTIALLY_FILLED:
                    if oid not in self.pos:
                        self._add(e.request.account_id, oid)
                elif oid in self.pos:
                    self._drop(oid)

    def chunk(self, n: int) -> list[Command]:
        rng = self.rng
        rand = rng.random
        randint = rng.randint
        shadow = self.shadow
        out: list[Command] = []
        while len(out) < n:
            r = rand()
            acct = randint(1, ACCOUNTS)
            is_buy = rand() < 0.5
            side = Side.BUY if is_buy else Side.SELL
            bb, ba = shadow.best_bid_ask(SYMBOL)
            ref_bid = bb if bb is not None else (ba - 1 if ba is not None else START_PRICE - 1)
            ref_ask = ba if ba is not None else (bb + 1 if bb is not None else START_PRICE + 1)
            if r < 0.25:  # cancel a random open order
                if not self.open_ids:
                    continue
                a, oid = self.open_ids[randint(0, len(self.open_ids) - 1)]
                cmd: Command = (CANCEL, a, oid)
            else:
                if r < 0.85:  # limit near the touch, never crossing
                    off = randint(0, 9)
                    price = ref_bid - off if is_buy else ref_ask + off
                    req = OrderRequest(acct, SYMBOL, side, OrderType.LIMIT, randint(1, 100), price)
                elif r < 0.95:  # market order
                    req = OrderRequest(acct, SYMBOL, side, OrderType.MARKET, randint(1, 100))
                else:  # limit through the spread
                    off = randint(0, 5)
                    price = ref_ask + off if is_buy else ref_bid - off
                    req = OrderRequest(acct, SYMBOL, side, OrderType.LIMIT, randint(1, 100), price)
                cmd = (PLACE, req, 0)
            try:
                if cmd[0] == PLACE:
                    _, fx = shadow.place(cmd[1])
                else:
                    _, fx = shadow.cancel(cmd[1], cmd[2])
                self._track(fx)
            except DomainError:
                pass
            shadow.flush()
            out.append(cmd)
        return out

    def chunks(self, total: int, size: int) -> Iterator[list[Command]]:
        done = 0
        while done < total:
            c = self.chunk(min(size, total - done))
            done += len(c)
            yield c


class BareBook:
    """Baseline: a plain dict + deque + heap price-time book (no balances, fees, validation
    or effects), the design REFERENCE.md quotes at ~900k commands/s.  Run on the same
    stream in the same process, it turns a noisy absolute number into a stable ratio."""

    def __init__(self) -> None:
        self.levels: tuple[dict[int, deque[list[int]]], dict[int, deque[list[int]]]] = ({}, {})
        self.heaps: tuple[list[int], list[int]] = ([], [])  # bids as -price, asks as price
        self.index: dict[int, list[int]] = {}  # order id -> [qty, side, price]
        self.next_id = 1

    def place(self, req: OrderRequest) -> None:
        oid = self.next_id
        self.next_id += 1
        side = 0 if req.side == Side.BUY else 1
        qty = req.quantity or 0
        price = req.price
        levels, heap = self.levels[1 - side], self.heaps[1 - side]
        while qty and heap:
            best = heap[0] if side == 0 else -heap[0]
            q = levels.get(best)
            if q is None:  # lazily deleted level
                heapq.heappop(heap)
                continue
            if price is not None and (best > price if side == 0 else best < price):
                break
            while q and qty:
                e = q[0]
                if e[0] == 0:
                    q.popleft()
                    continue
                f = min(qty, e[0])
                e[0] -= f
                qty -= f
                if e[0] == 0:
                    q.popleft()
            if not q:
                del levels[best]
                heapq.heappop(heap)
        if qty and price is not None:
            own = self.levels[side]
            q = own.get(price)
            if q is None:
                q = own[price] = deque()
                heapq.heappush(self.heaps[side], -price if side == 0 else price)
            e = [qty, side, price]
            q.append(e)
            self.index[oid] = e

    def cancel(self, oid: int) -> None:
        e = self.index.pop(oid, None)
        if e is not None:
            e[0] = 0


def run_bare(book: BareBook, commands: list[Command]) -> None:
    place = book.place
    cancel = book.cancel
    for kind, a, b in commands:
        if kind == PLACE:
            place(a)
        else:
            cancel(b)


def run(engine: Engine, commands: list[Command], batch: int) -> tuple[int, int, int]:
    """The timed loop: what the sequencer does per batch, minus persistence.

    Effects are collected per batch and the batch ends with ``engine.flush()`` (book deltas
    and balance rows), exactly as the sequencer's loop does before its commit.
    """
    place = engine.place
    cancel = engine.cancel
    flush = engine.flush
    rejected = 0
    effects = 0
    trades = 0
    for start in range(0, len(commands), batch):
        out: list[Effect] = []
        for kind, a, b in commands[start : start + batch]:
            try:
                if kind == PLACE:
                    result, fx = place(a)
                    trades += len(result.trades)
                else:
                    _, fx = cancel(a, b)
                out += fx
            except DomainError:
                rejected += 1
        out += flush()
        effects += len(out)
    return rejected, effects, trades


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--commands", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--chunk", type=int, default=50_000)
    ap.add_argument("--batch", type=int, default=100, help="commands per sequencer batch")
    ap.add_argument("--gc-threshold", type=int, default=50_000, help="gen-0; 0 = default")
    ap.add_argument("--check", action="store_true", help="verify invariants after the run")
    ap.add_argument("--profile", action="store_true", help="cProfile the timed loop")
    args = ap.parse_args(argv)

    if args.gc_threshold:
        gc.set_threshold(args.gc_threshold, 1000, 100)
    engine = make_engine()
    bare = BareBook()
    stream = CommandStream(args.seed)
    seconds = bare_seconds = 0.0
    commands = rejected = effects = trades = 0
    profiler = None
    if args.profile:
        import cProfile

        profiler = cProfile.Profile()
    for chunk in stream.chunks(args.commands, args.chunk):
        gc.collect()
        if profiler is not None:
            profiler.enable()
        t0 = time.perf_counter()
        r, e, t = run(engine, chunk, args.batch)
        seconds += time.perf_counter() - t0
        if profiler is not None:
            profiler.disable()
        t0 = time.perf_counter()
        run_bare(bare, chunk)
        bare_seconds += time.perf_counter() - t0
        commands += len(chunk)
        rejected += r
        effects += e
        trades += t
    # the shadow flushed after every command, so compare ids and books, not book seqs
    mine, theirs = engine.counters(), stream.shadow.counters()
    deterministic = (
        (mine.next_order_id, mine.next_trade_id, mine.next_priority)
        == (theirs.next_order_id, theirs.next_trade_id, theirs.next_priority)
        and engine.book_orders(SYMBOL, Side.BUY) == stream.shadow.book_orders(SYMBOL, Side.BUY)
        and engine.book_orders(SYMBOL, Side.SELL) == stream.shadow.book_orders(SYMBOL, Side.SELL)
        and engine.balances() == stream.shadow.balances()
    )
    out: dict[str, object] = {
        "bench": "engine_core",
        "commands": commands,
        "seconds": round(seconds, 3),
        "commands_per_s": round(commands / seconds),
        "python": platform.python_version(),
        "core": "mypyc" if native_core() else "python",
        "baseline_bare_book_per_s": round(commands / bare_seconds),
        "ratio_to_baseline": round(bare_seconds / seconds, 3),
        "batch": args.batch,
        "gc_thresholds": list(gc.get_threshold()),
        "rejected": rejected,
        "taker_trades": trades,
        "effects": effects,
        "open_orders": len(engine.open_orders()),
        "deterministic": deterministic,
    }
    if args.check:
        problems = engine.check_invariants()
        out["invariants_ok"] = not problems
        if problems:
            print("\n".join(problems[:20]), file=sys.stderr)
    print(json.dumps(out))
    if profiler is not None:
        import pstats

        pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
