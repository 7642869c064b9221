"""CPU cost of publishing a sequencer batch's events through ``PubSub.publish_many``.

Workload: batches shaped like the engine's under bulk order entry: ``--events`` ORDER
events spread over ``--users`` user topics plus one book delta, published ``--batches``
times after a warm-up. Measured: process CPU time (not wall time, so a busy machine does
not inflate it) per event, encoding and the transport included. The default transport is
the local Redis (the production shape); ``--url memory://`` measures the in-process one.
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import time
import uuid
from typing import Any

from tradegraph.pubsub import PubSub

ORDER_EVENT: dict[str, Any] = {
    "topic": "user:1",
    "seq": 1,
    "ts": "2026-11-21T10:00:00.123456+00:00",
    "type": "ORDER",
    "data": {
        "id": 12345,
        "account_id": 7,
        "symbol": "BTC-USD",
        "side": "BUY",
        "type": "LIMIT",
        "time_in_force": "GTC",
        "status": "NEW",
        "price": 5000000,
        "stop_price": None,
        "quantity": 100,
        "quote_quantity": None,
        "filled_qty": 0,
        "remaining_qty": 100,
        "quote_filled": 0,
        "fee_paid": 0,
        "post_only": False,
        "client_order_id": None,
        "reason": None,
    },
}


async def main(args: argparse.Namespace) -> dict[str, Any]:
    ps = PubSub(args.url, prefix=f"bench-{uuid.uuid4().hex[:8]}")
    await ps.connect()
    try:
        batch = [(f"user:{i % args.users}", ORDER_EVENT) for i in range(args.events)]
        batch.append(("book:BTC-USD", {"type": "DELTA", "seq": 1, "data": {"changes": []}}))
        for _ in range(20):
            await ps.publish_many(batch)
        started = time.process_time()
        for _ in range(args.batches):
            await ps.publish_many(batch)
        cpu = time.process_time() - started
    finally:
        await ps.disconnect()
    events = args.batches * len(batch)
    return {
        "bench": "pubsub_publish",
        "transport": args.url.split(":", 1)[0],
        "events_per_batch": len(batch),
        "topics_per_batch": args.users + 1,
        "batches": args.batches,
        "cpu_us_per_event": round(cpu / events * 1e6, 2),
        "python": platform.python_version(),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--events", type=int, default=400)
    parser.add_argument("--users", type=int, default=4)
    parser.add_argument("--batches", type=int, default=200)
    print(json.dumps(asyncio.run(main(parser.parse_args()))))
