"""Live exchange streams over real websockets: orders, fills, trades, book deltas, ticker."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal

import httpx
import websockets

from tests.helpers import gql
from tests.integration.test_exchange_api import deposit, place, trader


class Socket:
    """A graphql-transport-ws client with per-subscription queues."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self.queues: dict[str, asyncio.Queue] = {}
        self.reader = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, server: str, token: str | None = None) -> Socket:
        ws = await websockets.connect(
            f"ws://{server}/graphql", subprotocols=["graphql-transport-ws"]
        )
        payload = {"authorization": f"Bearer {token}"} if token else {}
        await ws.send(json.dumps({"type": "connection_init", "payload": payload}))
        assert json.loads(await ws.recv())["type"] == "connection_ack"
        return cls(ws)

    async def _read(self) -> None:
        async for raw in self.ws:
            msg = json.loads(raw)
            if "id" in msg:
                await self.queues.setdefault(msg["id"], asyncio.Queue()).put(msg)

    async def subscribe(self, sid: str, query: str, variables: dict | None = None) -> None:
        self.queues.setdefault(sid, asyncio.Queue())
        await self.ws.send(
            json.dumps(
                {
                    "id": sid,
                    "type": "subscribe",
                    "payload": {"query": query, "variables": variables or {}},
                }
            )
        )

    async def next(self, sid: str, timeout: float = 5.0) -> dict:
        msg = await asyncio.wait_for(self.queues[sid].get(), timeout)
        assert msg["type"] == "next", msg
        assert "errors" not in msg["payload"], msg
        return msg["payload"]["data"]

    async def close(self) -> None:
        self.reader.cancel()
        await self.ws.close()


BOOK_SUB = """subscription($s: String!) { orderBook(symbol: $s, depth: 50) {
  type sequence bids { price quantity } asks { price quantity } } }"""


def apply(book: dict[str, dict[str, str]], event: dict) -> None:
    for side in ("bids", "asks"):
        for level in event[side]:
            if Decimal(level["quantity"]) == 0:
                book[side].pop(level["price"], None)
            else:
                book[side][level["price"]] = level["quantity"]


async def test_book_deltas_rebuild_the_order_book_query(live_server):
    async with httpx.AsyncClient(base_url=f"http://{live_server}") as client:
        alice, a_acct = await trader(client, "alice@example.com")
        bob, b_acct = await trader(client, "bob@example.com")
        await deposit(client, alice, a_acct, "USD", "1000000")
        await deposit(client, bob, b_acct, "BTC", "50")
        sock = await Socket.open(live_server)
        try:
            await sock.subscribe("book", BOOK_SUB, {"s": "BTC-USD"})
            snap = await sock.next("book")
            assert snap["orderBook"]["type"] == "SNAPSHOT"
            book = {"bids": {}, "asks": {}}
            apply(book, snap["orderBook"])
            seq = snap["orderBook"]["sequence"]
            for i in range(6):
                await place(
                    client, bob, b_acct, side="SELL", quantity="0.5", price=str(50000 + 10 * i)
                )
                await place(
                    client, alice, a_acct, side="BUY", quantity="0.3", price=str(49900 - 10 * i)
                )
            await place(client, alice, a_acct, side="BUY", quantity="1.2", price="50020")
            expected = await gql(
                client,
                '{ orderBook(symbol: "BTC-USD", depth: 50) { sequence '
                "bids { price quantity } asks { price quantity } } }",
            )
            target = expected["data"]["orderBook"]["sequence"]
            while seq < target:
                event = (await sock.next("book"))["orderBook"]
                assert event["type"] == "DELTA"
                assert event["sequence"] == seq + 1, "book sequence must have no gaps"
                seq = event["sequence"]
                apply(book, event)
        finally:
            await sock.close()
    query = expected["data"]["orderBook"]
    assert book["bids"] == {lv["price"]: lv["quantity"] for lv in query["bids"]}
    assert book["asks"] == {lv["price"]: lv["quantity"] for lv in query["asks"]}


async def test_my_orders_my_fills_trades_and_ticker(live_server):
    async with httpx.AsyncClient(base_url=f"http://{live_server}") as client:
        alice, a_acct = await trader(client, "alice@example.com")
        bob, b_acct = await trader(client, "bob@example.com")
        await deposit(client, alice, a_acct, "USD", "100000")
        await deposit(client, bob, b_acct, "BTC", "1")
        a_sock = await Socket.open(live_server, alice)
        b_sock = await Socket.open(live_server, bob)
        public = await Socket.open(live_server)
        try:
            await a_sock.subscribe(
                "orders",
                "subscription { myOrders { sequence order { status side filledQuantity } } }",
            )
            await a_sock.subscribe(
                "fills", "subscription { myFills { side price quantity liquidity } }"
            )
            await b_sock.subscribe("orders", "subscription { myOrders { order { side status } } }")
            await public.subscribe(
                "trades", 'subscription { trades(symbol: "BTC-USD") { price quantity takerSide } }'
            )
            await public.subscribe(
                "ticker", 'subscription { ticker(symbols: ["BTC-USD"]) { symbol last bestAsk } }'
            )
            await asyncio.sleep(0.3)  # subscriptions attach
            await place(client, bob, b_acct, side="SELL", quantity="0.5", price="50000")
            await place(client, alice, a_acct, side="BUY", quantity="0.2", price="50000")

            bob_new = await b_sock.next("orders")
            assert bob_new["myOrders"]["order"] == {"side": "SELL", "status": "NEW"}
            first = (await a_sock.next("orders"))["myOrders"]
            assert first["order"] == {"status": "FILLED", "side": "BUY", "filledQuantity": "0.2000"}
            fill = (await a_sock.next("fills"))["myFills"]
            assert fill == {
                "side": "BUY",
                "price": "50000.00",
                "quantity": "0.2000",
                "liquidity": "TAKER",
            }
            bob_partial = await b_sock.next("orders")
            assert bob_partial["myOrders"]["order"]["status"] == "PARTIALLY_FILLED"
            trade = (await public.next("trades"))["trades"]
            assert trade == {"price": "50000.00", "quantity": "0.2000", "takerSide": "BUY"}
            tick = (await public.next("ticker"))["ticker"]
            while tick["last"] is None:
                tick = (await public.next("ticker"))["ticker"]
            assert tick == {"symbol": "BTC-USD", "last": "50000.00", "bestAsk": "50000.00"}
            # Alice's stream never carries Bob's events.
            assert a_sock.queues["orders"].empty()
        finally:
            for s in (a_sock, b_sock, public):
                await s.close()
