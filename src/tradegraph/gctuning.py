"""Garbage-collector settings for long-running server processes.

A server keeps a large, long-lived heap (the engine's books and open orders, the schema,
caches) and allocates many short-lived objects per request. With CPython's defaults
(700, 10, 10) every few requests pay a young collection, and the full collections walk the
whole long-lived heap: on a book of 100,000 resting orders that is tens of milliseconds
stolen from whichever request allocated at the wrong moment. On the order benchmark
(``bench/bench_http_orders.py``, docs/BENCHMARKS.md) ``placeOrder`` p99 is 148 ms with
this tuning off and 28-33 ms with it on.

So, once startup has built the long-lived state: collect, move everything that survived
into the permanent generation (``gc.freeze``, never scanned again), and make young
collections rarer. Objects are still freed by reference counting as soon as they die;
only cycles wait for a collection.
"""

from __future__ import annotations

import gc
import logging

log = logging.getLogger("tradegraph")

# Young collections every 50,000 net allocations instead of 700; a middle collection every
# 20 young ones; a full one every 10 middle ones (and, as always in CPython, only once
# the objects waiting for it are a quarter of the long-lived heap).
SERVER_THRESHOLDS = (50_000, 20, 10)


def tune_for_server(thresholds: tuple[int, int, int] = SERVER_THRESHOLDS) -> None:
    """Freeze the startup heap and raise the collection thresholds (call after startup)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*thresholds)
    log.info(
        "gc tuned: %d startup objects frozen, thresholds %s", gc.get_freeze_count(), thresholds
    )
