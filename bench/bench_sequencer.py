"""Per-order CPU of the sequencer's in-memory ``place_many`` path (no database, no Redis).

What the engine process does with a ``placeOrders`` command between reading it from the
bus and writing its batch: decode the command's JSON, then ``Sequencer.prepare`` (check
the account, build the ``OrderRequest``, match in the core, turn effects into result
dicts, events and rows, encode the result once for the reply and the command log).

``--commands`` commands of 100 resting limit orders (prices a few ticks either side of
50,000, never crossing, as in ``bench_http_orders.py``) from 8 accounts, ``--batch``
commands per ``prepare``, after the GC tuning the engine process applies. Prints one
JSON line. Under ``valgrind --tool=callgrind`` (instruction counts repeat exactly, unlike
times on a shared machine) run it at two ``--commands`` and divide the difference.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import time
from typing import Any

from tradegraph.bus import Envelope, Incoming
from tradegraph.exchange import native_core
from tradegraph.exchange.engine import InstrumentSpec
from tradegraph.exchange.sequencer import AccountInfo, Sequencer
from tradegraph.gctuning import tune_for_server
from tradegraph.wire import decode, encode_object

ACCOUNTS = range(100, 108)


def make_sequencer() -> Sequencer:
    # No store, bus or publisher: prepare() touches none of them for new commands.
    seq = Sequencer(None, None, None, log_commands=True)  # type: ignore[arg-type]
    seq.engine.add_instrument(
        InstrumentSpec(
            symbol="BTC-USD",
            base_asset="BTC",
            quote_asset="USD",
            base_decimals=8,
            quote_decimals=8,
            price_decimals=2,
            qty_decimals=5,
            tick=1,
            lot=1,
            min_qty=1,
            min_notional=0,
            maker_fee_bps=10,
            taker_fee_bps=20,
        )
    )
    for account in ACCOUNTS:
        seq.accounts[account] = AccountInfo(f"user{account}", "PAPER", "ACTIVE")
        seq.engine.deposit(account, "USD", 10**18)
        seq.engine.deposit(account, "BTC", 10**15)
    return seq


def command_texts(count: int, seed: int) -> list[str]:
    """``place_many`` payloads as the API workers send them (JSON text)."""
    rng = random.Random(seed)
    texts = []
    for i in range(count):
        account = ACCOUNTS[i % len(ACCOUNTS)]
        orders: list[dict[str, Any]] = []
        for _ in range(100):
            side = rng.choice(["BUY", "SELL"])
            offset = rng.randint(1, 50) * 100
            price = 5_000_000 + offset if side == "SELL" else 5_000_000 - offset
            orders.append(
                {
                    "account_id": account,
                    "symbol": "BTC-USD",
                    "side": side,
                    "type": "LIMIT",
                    "time_in_force": "GTC",
                    "stp": "EXPIRE_TAKER",
                    "quantity": 1000,
                    "price": price,
                }
            )
        texts.append(encode_object({"user_id": f"user{account}", "orders": orders}))
    return texts


async def run(args: argparse.Namespace) -> dict[str, Any]:
    seq = make_sequencer()
    texts = command_texts(args.commands, args.seed)
    tune_for_server()
    rejected = 0
    started = time.process_time()
    for first in range(0, len(texts), args.batch):
        batch = [
            Incoming(Envelope(f"c{first + k}", "place_many", decode(text)))
            for k, text in enumerate(texts[first : first + args.batch])
        ]
        prepared = await seq.prepare(batch)
        for _, reply in prepared.replies:
            rejected += sum(1 for r in reply["results"] if "error" in r)
    seconds = time.process_time() - started
    orders = len(texts) * 100
    return {
        "bench": "sequencer_place_many",
        "orders": orders,
        "batch_commands": args.batch,
        "us_per_order": round(seconds / orders * 1e6, 2),
        "rejected": rejected,
        "core": "mypyc" if native_core() else "python",
        "python": platform.python_version(),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--commands", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=10, help="commands per prepare()")
    parser.add_argument("--seed", type=int, default=1)
    print(json.dumps(asyncio.run(run(parser.parse_args()))))
