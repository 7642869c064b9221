"""Per-order CPU of writing the sequencer's batches to PostgreSQL, on both sides.

What the engine process spends in ``ExchangeStore.commit`` (fenced by the leader lock, as
``tradegraph engine`` runs it), and what the PostgreSQL backend spends executing it, for
batches of ``placeOrders`` commands of 100 resting limit orders each (the commands of
``bench_sequencer.py``: 8 accounts, never crossing). The in-memory ``prepare`` is not
counted here; ``bench_sequencer.py`` measures that. Creates and drops its own database.
Prints one JSON line.

    .venv/bin/python bench/bench_batch_commit.py [--commands 600] [--batch 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import time
import uuid
from typing import Any

import asyncpg

from bench_sequencer import ACCOUNTS, command_texts, make_sequencer
from tradegraph.bus import Envelope, Incoming
from tradegraph.cli import _fast_loop_factory
from tradegraph.db import Database, utcnow
from tradegraph.exchange.reference import ensure_reference
from tradegraph.exchange.store import BatchWrite, ExchangeStore
from tradegraph.jobs.leader import LeaderLock
from tradegraph.wire import decode

PG_ADMIN = os.environ.get("BENCH_PG_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")


def backend_cpu(pid: int) -> float:
    """User + system CPU seconds of one PostgreSQL backend so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(url: str, args: argparse.Namespace) -> dict[str, Any]:
    db = Database(url, pool_size=1)
    lock = LeaderLock(db, f"bench:{uuid.uuid4().hex[:8]}")
    await ensure_reference(db)
    assert await lock.acquire(wait=False)
    store = ExchangeStore(db, fence=lock.fence)
    seq = make_sequencer()
    seq.store = store
    accounts = [
        {
            "id": account,
            "owner_id": None,
            "kind": "PAPER",
            "status": "ACTIVE",
            "name": f"bench {account}",
            "created_at": utcnow(),
        }
        for account in ACCOUNTS
    ]
    await store.commit(BatchWrite(accounts=accounts))
    async with db.engine.connect() as conn:  # the pool's only connection: the engine's
        backend = (await conn.exec_driver_sql("SELECT pg_backend_pid()")).scalar_one()
    texts = command_texts(args.commands, args.seed)
    engine_cpu = 0.0
    server_before = backend_cpu(backend)
    for first in range(0, len(texts), args.batch):
        batch = [
            Incoming(Envelope(f"c{first + k}", "place_many", decode(text)))
            for k, text in enumerate(texts[first : first + args.batch])
        ]
        prepared = await seq.prepare(batch)
        started = time.process_time()
        await store.commit(prepared.write)
        engine_cpu += time.process_time() - started
    server_cpu = backend_cpu(backend) - server_before
    await lock.release()
    await db.dispose()
    orders = len(texts) * 100
    return {
        "bench": "batch_commit",
        "database": "postgresql",
        "orders": orders,
        "batch_commands": args.batch,
        "engine_us_per_order": round(engine_cpu / orders * 1e6, 2),
        "postgres_us_per_order": round(server_cpu / orders * 1e6, 2),
        "python": platform.python_version(),
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    name = f"tg_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(PG_ADMIN)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql+asyncpg://postgres@127.0.0.1/{name}"
    try:
        subprocess.run(
            [sys.executable, "-m", "tradegraph.cli", "migrate"],
            env={**os.environ, "TRADEGRAPH_DATABASE_URL": url},
            check=True,
            capture_output=True,
        )
        return await measure(url, args)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--commands", type=int, default=600)
    parser.add_argument("--batch", type=int, default=10, help="commands per batch")
    parser.add_argument("--seed", type=int, default=1)
    with asyncio.Runner(loop_factory=_fast_loop_factory()) as runner:  # the engine's loop
        print(json.dumps(runner.run(main(parser.parse_args()))))
