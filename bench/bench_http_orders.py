"""End-to-end order throughput over HTTP against PostgreSQL.

Starts a real server (uvicorn, embedded sequencer, PostgreSQL, one worker by default; or
``--workers N``: a ``tradegraph engine`` process plus N API workers over Redis) on this
machine, funds traders, then measures (load from ``wrk`` when installed, else httpx):

* ``placeOrder`` one order per request: orders/s, p50/p99 latency, and the CPU the
  server processes and PostgreSQL spent per accepted order (from /proc, so the number
  holds even when something else shares the cores);
* the latency from sending a crossing ``placeOrder`` to receiving the ``myFills`` event on
  a websocket (p50/p99);
* ``placeOrders`` with 100 orders per request: orders/s, call latency, CPU per order.

Prints one JSON line. Needs PostgreSQL at 127.0.0.1:5432 (trust auth); creates and drops
its own database. ``--seconds`` sets each phase's length.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any

import asyncpg
import httpx
import websockets

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
PLACE = """mutation($i: PlaceOrderInput!) {
  placeOrder(input: $i) { order { id } errors { code } } }"""
BULK = """mutation($i: [PlaceOrderInput!]!) {
  placeOrders(inputs: $i) { results { errors { code } } } }"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def gql(client: httpx.AsyncClient, query: str, variables: dict, token: str) -> dict:
    r = await client.post(
        "/graphql",
        json={"query": query, "variables": variables},
        headers={"authorization": f"Bearer {token}"},
    )
    r.raise_for_status()
    return r.json()


async def setup_user(client: httpx.AsyncClient, i: int) -> tuple[str, str]:
    r = await client.post(
        "/graphql",
        json={
            "query": """mutation($i: RegisterInput!) {
        register(input: $i) { accessToken } }""",
            "variables": {
                "i": {
                    "email": f"bench{i}@example.com",
                    "password": "correct horse battery",
                    "displayName": f"B{i}",
                }
            },
        },
    )
    token = r.json()["data"]["register"]["accessToken"]
    opened = await gql(
        client,
        "mutation { openAccount(input: {kind: PAPER}) { account { id } errors { code } } }",
        {},
        token,
    )
    assert opened["data"]["openAccount"]["account"], opened
    acct = opened["data"]["openAccount"]["account"]["id"]
    for asset, amount in (("USD", "1000000000"), ("BTC", "100000"), ("ETH", "100000")):
        await gql(
            client,
            "mutation($i: DepositInput!) { deposit(input: $i) { errors { code } } }",
            {"i": {"accountId": acct, "asset": asset, "amount": amount}},
            token,
        )
    return token, acct


def order(acct: str, rng: random.Random, *, crossing: bool = False) -> dict:
    side = rng.choice(["BUY", "SELL"])
    offset = rng.randint(1, 50)
    price = 50000 + (offset if side == "SELL" else -offset)
    if crossing:
        price = 50000 + (-60 if side == "SELL" else 60)
    return {
        "accountId": acct,
        "symbol": "BTC-USD",
        "side": side,
        "type": "LIMIT",
        "quantity": str(rng.randint(1, 20) / 1000 + 0.001),
        "price": f"{price}.00",
    }


async def phase_single(url: str, users: list, seconds: float, concurrency: int) -> dict:
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def worker(n: int) -> None:
        rng = random.Random(n)
        token, acct = users[n % len(users)]
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                body = await gql(client, PLACE, {"i": order(acct, rng)}, token)
                latencies.append(time.perf_counter() - t0)
                assert "errors" not in body, body

    started = time.perf_counter()
    await asyncio.gather(*(worker(n) for n in range(concurrency)))
    elapsed = time.perf_counter() - started
    return {
        "orders_per_s": round(len(latencies) / elapsed),
        "p50_ms": round(pct(latencies, 0.5) * 1000, 2),
        "p99_ms": round(pct(latencies, 0.99) * 1000, 2),
        "orders": len(latencies),
    }


WRK_SCRIPT = """
local users = {%s}
local counter = 0
math.randomseed(os.time())
request = function()
  counter = counter + 1
  local u = users[(counter %% #users) + 1]
  local side = (math.random() < 0.5) and "BUY" or "SELL"
  local offset = math.random(1, 50)
  local price = (side == "SELL") and (50000 + offset) or (50000 - offset)
  local body = string.format('{"query":"mutation($i: PlaceOrderInput!) { placeOrder(input: $i) '
    .. '{ order { id } errors { code } } }","variables":{"i":{"accountId":"%%s",'
    .. '"symbol":"BTC-USD","side":"%%s","type":"LIMIT","quantity":"0.01","price":"%%d.00"}}}',
    u[2], side, price)
  return wrk.format("POST", "/graphql",
    {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. u[1]}, body)
end
"""


WRK_BULK_SCRIPT = """
local users = {%s}
local counter = 0
math.randomseed(os.time() + 7)
request = function()
  counter = counter + 1
  local u = users[(counter %% #users) + 1]
  local parts = {}
  for k = 1, 100 do
    local side = (math.random() < 0.5) and "BUY" or "SELL"
    local offset = math.random(1, 50)
    local price = (side == "SELL") and (50000 + offset) or (50000 - offset)
    parts[k] = string.format('{"accountId":"%%s","symbol":"BTC-USD","side":"%%s",'
      .. '"type":"LIMIT","quantity":"0.01","price":"%%d.00"}', u[2], side, price)
  end
  local body = '{"query":"mutation($i: [PlaceOrderInput!]!) { placeOrders(inputs: $i) '
    .. '{ results { errors { code } } } }","variables":{"i":[' .. table.concat(parts, ",")
    .. ']}}'
  return wrk.format("POST", "/graphql",
    {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. u[1]}, body)
end
"""


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of ``pids`` and their children so far (Linux /proc; else 0)."""
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    total = 0
    seen: set[int] = set()
    todo = list(pids)
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
            with open(f"/proc/{pid}/task/{pid}/children") as f:
                todo += [int(c) for c in f.read().split()]
        except (OSError, ValueError, IndexError):
            continue
    return total / ticks


def pids_named(*names: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as f:
                    if f.read().strip() in names:
                        pids.append(int(entry))
            except OSError:
                continue
    return pids


def machine_busy_seconds() -> float:
    """CPU time all cores spent on anything but idle and I/O wait (Linux /proc/stat)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0.0
    busy = sum(fields[:8]) - fields[3] - fields[4]  # user..steal, minus idle and iowait
    return busy / (os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100)


async def count_orders(database_url: str) -> int:
    conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg", "postgresql"))
    try:
        return int(await conn.fetchval("SELECT count(*) FROM orders"))
    finally:
        await conn.close()


def _ms(text: str) -> float:
    value = float(
        text[:-2] if text.endswith("ms") else text[:-2] if text.endswith("us") else text[:-1]
    )
    if text.endswith("us"):
        return value / 1000
    if text.endswith("ms"):
        return value
    return value * 1000


async def phase_wrk(
    url: str,
    database_url: str,
    users: list,
    seconds: float,
    concurrency: int,
    script: str,
    servers: list[int],
) -> dict:
    """wrk (C, two threads) drives the load, so the generator costs little CPU.

    Orders are counted in the database (accepted ones only); CPU is read from /proc for
    the server processes (and, in the production shape, the engine process alone), for
    PostgreSQL, for Redis and for the whole machine (load generator included), per
    accepted order.
    """
    entries = ",".join(f'{{"{t}","{a}"}}' for t, a in users)
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script % entries)
    before = await count_orders(database_url)
    pg, redis = pids_named("postgres", "postmaster"), pids_named("redis-server")
    engine = servers[:1] if len(servers) > 1 else []
    cpu_before, pg_before = cpu_seconds(servers), cpu_seconds(pg)
    engine_before, redis_before = cpu_seconds(engine), cpu_seconds(redis)
    machine_before = machine_busy_seconds()
    out = subprocess.run(
        ["wrk", "-t2", f"-c{concurrency}", f"-d{int(seconds)}s", "--latency", "-s", f.name, url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    cpu_after, pg_after = cpu_seconds(servers), cpu_seconds(pg)
    engine_after, redis_after = cpu_seconds(engine), cpu_seconds(redis)
    machine_after = machine_busy_seconds()
    after = await count_orders(database_url)
    lines = {ln.split()[0]: ln.split() for ln in out.splitlines() if ln.strip()}
    orders = max(1, after - before)
    per_order = {
        "machine_cpu_ms_per_order": round((machine_after - machine_before) * 1000 / orders, 3)
    }
    if engine:
        per_order["engine_cpu_ms_per_order"] = round(
            (engine_after - engine_before) * 1000 / orders, 3
        )
        per_order["redis_cpu_ms_per_order"] = round((redis_after - redis_before) * 1000 / orders, 3)
    return per_order | {
        "orders_per_s": round((after - before) / seconds),
        "p50_ms": round(_ms(lines["50%"][1]), 2),
        "p99_ms": round(_ms(lines["99%"][1]), 2),
        "orders": after - before,
        "server_cpu_ms_per_order": round((cpu_after - cpu_before) * 1000 / orders, 3),
        "postgres_cpu_ms_per_order": round((pg_after - pg_before) * 1000 / orders, 3),
    }


async def phase_fill_latency(url: str, host: str, users: list, samples: int) -> dict:
    maker_token, maker_acct = users[0]
    taker_token, taker_acct = users[1]
    ws = await websockets.connect(f"ws://{host}/graphql", subprotocols=["graphql-transport-ws"])
    await ws.send(
        json.dumps(
            {"type": "connection_init", "payload": {"authorization": f"Bearer {taker_token}"}}
        )
    )
    await ws.recv()
    await ws.send(
        json.dumps(
            {
                "id": "f",
                "type": "subscribe",
                "payload": {"query": "subscription { myFills { price } }"},
            }
        )
    )
    await asyncio.sleep(0.3)
    latencies = []
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        for _ in range(samples):
            # ETH-USD's book is empty here, so each pair trades exactly once.
            await gql(
                client,
                PLACE,
                {
                    "i": {
                        "accountId": maker_acct,
                        "symbol": "ETH-USD",
                        "side": "SELL",
                        "type": "LIMIT",
                        "quantity": "0.01",
                        "price": "3000.00",
                    }
                },
                maker_token,
            )
            t0 = time.perf_counter()
            await gql(
                client,
                PLACE,
                {
                    "i": {
                        "accountId": taker_acct,
                        "symbol": "ETH-USD",
                        "side": "BUY",
                        "type": "LIMIT",
                        "quantity": "0.01",
                        "price": "3000.00",
                    }
                },
                taker_token,
            )
            while True:
                msg = json.loads(await asyncio.wait_for(ws.recv(), 10))
                if msg.get("type") == "next":
                    break
            latencies.append(time.perf_counter() - t0)
    await ws.close()
    return {
        "fill_event_p50_ms": round(pct(latencies, 0.5) * 1000, 2),
        "fill_event_p99_ms": round(pct(latencies, 0.99) * 1000, 2),
    }


async def phase_bulk(url: str, users: list, seconds: float, concurrency: int) -> dict:
    count = 0
    deadline = time.perf_counter() + seconds

    async def worker(n: int) -> None:
        nonlocal count
        rng = random.Random(1000 + n)
        token, acct = users[n % len(users)]
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            while time.perf_counter() < deadline:
                body = await gql(client, BULK, {"i": [order(acct, rng) for _ in range(100)]}, token)
                assert "errors" not in body, body
                count += 100

    started = time.perf_counter()
    await asyncio.gather(*(worker(n) for n in range(concurrency)))
    return {"bulk_orders_per_s": round(count / (time.perf_counter() - started))}


async def main(args: argparse.Namespace) -> dict:
    name = f"tg_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(PG_ADMIN)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    data_dir = tempfile.mkdtemp()
    port = free_port()
    env = {
        **os.environ,
        "TRADEGRAPH_DATABASE_URL": f"postgresql+asyncpg://postgres@127.0.0.1/{name}",
        "TRADEGRAPH_DATA_DIR": data_dir,
        "TRADEGRAPH_ENV": "development",
        "TRADEGRAPH_RATE_LIMIT_IP_PER_MINUTE": "100000000",
        "TRADEGRAPH_RATE_LIMIT_USER_PER_MINUTE": "100000000",
        "TRADEGRAPH_LOG_LEVEL": "WARNING",
        "TRADEGRAPH_DB_POOL_SIZE": "40",
    }
    servers: list[subprocess.Popen[bytes]] = []
    if args.workers > 1:
        # Production shape: remote engine process + N API workers over Redis Streams.
        env.update(
            {
                "TRADEGRAPH_ENGINE_MODE": "remote",
                "TRADEGRAPH_REDIS_URL": args.redis,
                "TRADEGRAPH_REDIS_PREFIX": f"bench{uuid.uuid4().hex[:6]}",
            }
        )
    try:
        subprocess.run(
            [sys.executable, "-m", "tradegraph.cli", "migrate"],
            env=env,
            check=True,
            capture_output=True,
        )
        subprocess.run(
            [
                sys.executable,
                "-c",
                "import asyncio; from tradegraph.db import Database;"
                "from tradegraph.exchange.reference import ensure_reference;"
                f"db=Database('{env['TRADEGRAPH_DATABASE_URL']}');"
                "asyncio.run(ensure_reference(db))",
            ],
            env=env,
            check=True,
        )
        if args.workers > 1:
            engine_log = open(os.path.join(data_dir, "engine.log"), "w")  # noqa: SIM115
            servers.append(
                subprocess.Popen(
                    [sys.executable, "-m", "tradegraph.cli", "engine"],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=engine_log,
                )
            )
        servers.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "tradegraph.app:app_from_env",
                    "--factory",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--log-level",
                    "warning",
                    "--no-access-log",
                    "--workers",
                    str(args.workers),
                ],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        url = f"http://127.0.0.1:{port}"
        database = env["TRADEGRAPH_DATABASE_URL"]
        async with httpx.AsyncClient(base_url=url) as client:
            for _ in range(200):
                try:
                    ready = await client.post(
                        "/graphql", json={"query": '{ orderBook(symbol: "BTC-USD") { sequence } }'}
                    )
                    if ready.status_code == 200 and ready.json().get("data"):
                        break
                    await asyncio.sleep(0.1)
                except httpx.TransportError:
                    await asyncio.sleep(0.1)
            users = [await setup_user(client, i) for i in range(args.users)]
        pids = [server.pid for server in servers]
        use_wrk = shutil.which("wrk") is not None and not args.httpx
        phases = set(args.phases.split(","))
        single: dict[str, Any] = {"generator": "wrk" if use_wrk else "httpx"}
        fills: dict[str, Any] = {}
        bulk: dict[str, Any] = {}
        if "single" in phases and use_wrk:
            single |= await phase_wrk(
                url, database, users, args.seconds, args.concurrency, WRK_SCRIPT, pids
            )
        elif "single" in phases:
            single |= await phase_single(url, users, args.seconds, args.concurrency)
        if "fills" in phases:
            fills = await phase_fill_latency(url, f"127.0.0.1:{port}", users, args.fill_samples)
        if "bulk" in phases and use_wrk:
            measured = await phase_wrk(
                url, database, users, args.seconds, args.bulk_concurrency, WRK_BULK_SCRIPT, pids
            )
            bulk = {
                "bulk_orders_per_s": measured["orders_per_s"],
                "bulk_call_p50_ms": measured["p50_ms"],
                "bulk_call_p99_ms": measured["p99_ms"],
                "bulk_server_cpu_ms_per_order": measured["server_cpu_ms_per_order"],
                "bulk_postgres_cpu_ms_per_order": measured["postgres_cpu_ms_per_order"],
                "bulk_machine_cpu_ms_per_order": measured["machine_cpu_ms_per_order"],
            }
            if args.workers > 1:
                bulk["bulk_engine_cpu_ms_per_order"] = measured["engine_cpu_ms_per_order"]
                bulk["bulk_redis_cpu_ms_per_order"] = measured["redis_cpu_ms_per_order"]
        elif "bulk" in phases:
            bulk = await phase_bulk(url, users, args.seconds, args.bulk_concurrency)
        async with httpx.AsyncClient(base_url=url) as client:
            metrics = (await client.get("/metrics")).text
        values = {
            ln.split()[0]: float(ln.split()[1])
            for ln in metrics.splitlines()
            if ln.startswith("tradegraph_engine_")
        }
        batches = values.get("tradegraph_engine_batch_commands_count", 0)
        if batches:  # the embedded engine's metrics; a separate engine process has its own
            single["avg_engine_batch"] = round(
                values.get("tradegraph_engine_batch_commands_sum", 0) / batches, 1
            )
            single["avg_engine_commit_ms"] = round(
                values.get("tradegraph_engine_commit_seconds_sum", 0) / batches * 1000, 2
            )
        return {
            "bench": "http_orders",
            "database": "postgresql",
            "workers": args.workers,
            "concurrency": args.concurrency,
            "bulk_concurrency": args.bulk_concurrency,
            **single,
            **fills,
            **bulk,
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        }
    finally:
        for server in servers:
            server.terminate()
            server.wait(10)
        admin = await asyncpg.connect(PG_ADMIN)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
        if "TRADEGRAPH_REDIS_PREFIX" in env:  # the command stream alone holds ~40 MB a run
            import redis.asyncio as aioredis

            client = aioredis.from_url(args.redis)
            keys = [k async for k in client.scan_iter(f"{env['TRADEGRAPH_REDIS_PREFIX']}*")]
            if keys:
                await client.unlink(*keys)
            await client.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument(
        "--bulk-concurrency", type=int, default=8, help="connections sending placeOrders"
    )
    parser.add_argument("--fill-samples", type=int, default=200)
    parser.add_argument("--httpx", action="store_true", help="use httpx even if wrk exists")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help=">1: remote engine process + that many uvicorn workers (Redis)",
    )
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument(
        "--phases",
        default="single,fills,bulk",
        help="comma-separated subset of single,fills,bulk (e.g. bulk alone for a profiler)",
    )
    print(json.dumps(asyncio.run(main(parser.parse_args()))))
