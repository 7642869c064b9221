"""Production shape: two API worker processes and one engine process over PostgreSQL and
Redis. Many users place and cancel at once through both workers; afterwards the state
rebuilt from the database satisfies every invariant."""

from __future__ import annotations

import asyncio
import os
import random
import sys
import uuid
from collections import defaultdict
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from tests.conftest import REDIS_URL, free_port, require_service
from tests.helpers import gql, register
from tradegraph.db import Database
from tradegraph.exchange import models as m
from tradegraph.exchange.sequencer import Sequencer
from tradegraph.exchange.store import ExchangeStore

pytestmark = [pytest.mark.pg, pytest.mark.redis, pytest.mark.slow]

PLACE = """mutation($i: PlaceOrderInput!) { placeOrder(input: $i) {
  order { id status } errors { code } } }"""
CANCEL = """mutation($id: ID!) {
  cancelOrder(input: {id: $id}) { order { status } errors { code } } }"""


def _env(database_url: str, tmp_path: Path, prefix: str) -> dict[str, str]:
    return {
        **os.environ,
        "TRADEGRAPH_ENV": "test",
        "TRADEGRAPH_DATABASE_URL": database_url,
        "TRADEGRAPH_REDIS_URL": REDIS_URL,
        "TRADEGRAPH_REDIS_PREFIX": prefix,
        "TRADEGRAPH_JWT_SECRET": "cluster-secret-" + "y" * 40,
        "TRADEGRAPH_DATA_DIR": str(tmp_path),
        "TRADEGRAPH_ENGINE_MODE": "remote",
        "TRADEGRAPH_ARGON2_MEMORY_KIB": "1024",
        "TRADEGRAPH_ARGON2_TIME_COST": "1",
        "TRADEGRAPH_RATE_LIMIT_IP_PER_MINUTE": "100000",
        "TRADEGRAPH_RATE_LIMIT_USER_PER_MINUTE": "100000",
        "TRADEGRAPH_LOG_LEVEL": "WARNING",
    }


async def _spawn(*args: str, env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        *args,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )


async def _wait_ready(url: str) -> None:
    async with httpx.AsyncClient(base_url=url) as client:
        for _ in range(150):
            try:
                r = await client.post(
                    "/graphql", json={"query": '{ orderBook(symbol: "BTC-USD") { sequence } }'}
                )
                if r.status_code == 200 and "data" in r.json() and r.json()["data"]:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.2)
    raise AssertionError(f"{url} never became ready")


@pytest.fixture
def cluster_db(pg_database: str) -> str:
    """The session's PostgreSQL database, emptied, with reference data."""
    from tests.conftest import _migrate_async, _truncate_pg

    require_service("redis")
    _truncate_pg(pg_database)
    asyncio.run(_migrate_async(pg_database, migrate=False))
    return pg_database


async def test_two_workers_one_engine_keep_the_invariants(cluster_db, tmp_path):
    pg_database = cluster_db
    prefix = f"tgcluster-{uuid.uuid4().hex[:8]}"
    env = _env(pg_database, tmp_path, prefix)
    ports = [free_port(), free_port()]
    procs = [await _spawn("tradegraph.cli", "engine", env=env)]
    for port in ports:
        procs.append(
            await _spawn(
                "uvicorn",
                "tradegraph.app:app_from_env",
                "--factory",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--log-level",
                "warning",
                env=env,
            )
        )
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    try:
        for url in urls:
            await _wait_ready(url)
        clients = [httpx.AsyncClient(base_url=u, timeout=30) for u in urls]
        users = []
        for i in range(6):
            client = clients[i % 2]
            session = await register(client, email=f"u{i}@example.com", display_name=f"U{i}")
            token = session["accessToken"]
            opened = await gql(
                client,
                "mutation { openAccount(input: {kind: PAPER}) { account { id } } }",
                token=token,
            )
            account = opened["data"]["openAccount"]["account"]["id"]
            for asset, amount in (("USD", "10000000"), ("BTC", "200")):
                dep = await gql(
                    client,
                    "mutation($i: DepositInput!) { deposit(input: $i) { errors { code } } }",
                    {"i": {"accountId": account, "asset": asset, "amount": amount}},
                    token=token,
                )
                assert dep["data"]["deposit"]["errors"] == []
            users.append((token, account))

        acked = 0

        async def trade(seed: int) -> None:
            nonlocal acked
            rng = random.Random(seed)
            token, account = users[seed % len(users)]
            mine: list[str] = []
            for _ in range(60):
                client = rng.choice(clients)  # both workers, interleaved
                if mine and rng.random() < 0.3:
                    body = await gql(
                        client, CANCEL, {"id": mine.pop(rng.randrange(len(mine)))}, token=token
                    )
                    assert "errors" not in body
                    continue
                body = await gql(
                    client,
                    PLACE,
                    {
                        "i": {
                            "accountId": account,
                            "symbol": "BTC-USD",
                            "type": "LIMIT",
                            "side": rng.choice(["BUY", "SELL"]),
                            "quantity": str(rng.randint(1, 50) / 100),
                            "price": str(50000 + rng.randint(-10, 10) * 5),
                        }
                    },
                    token=token,
                )
                payload = body["data"]["placeOrder"]
                if not payload["errors"]:
                    acked += 1
                    if payload["order"]["status"] in ("NEW", "PARTIALLY_FILLED"):
                        mine.append(payload["order"]["id"])

        await asyncio.gather(*(trade(s) for s in range(12)))
        assert acked > 300
        for c in clients:
            await c.aclose()
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            await asyncio.wait_for(proc.wait(), 20)

    # Rebuild from the database exactly as a restarted engine would, then check.
    db = Database(pg_database)
    try:

        class NoBus:
            async def take(self, *_): ...
            async def reply_many(self, *_): ...

        seq = Sequencer(ExchangeStore(db), NoBus(), lambda _: None)
        await seq.rebuild()
        assert seq.engine.check_invariants() == []
        bids = seq.engine.depth("BTC-USD", 1).bids
        asks = seq.engine.depth("BTC-USD", 1).asks
        if bids and asks:
            assert bids[0][0] < asks[0][0], "the book is crossed"
        async with db.session() as s:
            orders = await s.scalar(select(func.count()).select_from(m.Order))
            assert orders >= acked
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
                inflow[asset] += amount if src is None else 0
                inflow[asset] -= amount if dst is None else 0
            totals = dict(
                (
                    await s.execute(
                        select(m.Balance.asset, func.sum(m.Balance.total)).group_by(m.Balance.asset)
                    )
                ).all()
            )
        assert {a: int(v) for a, v in totals.items()} == dict(inflow)
    finally:
        await db.dispose()
