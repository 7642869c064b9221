"""The number of SQL statements a page costs does not grow with the page size."""

from __future__ import annotations

from sqlalchemy import event

from tests.helpers import gql
from tests.integration.test_exchange_api import deposit, trader

PAGE = """query($n: Int!) { orders(first: $n) { edges { node {
  id status fills { price quantity fee } instrument { symbol tickSize }
  account { id kind balances { asset total } } } } } }"""


async def test_orders_page_statement_count_is_flat(client, services):
    alice, acct = await trader(client, "alice@example.com")
    bob, b_acct = await trader(client, "bob@example.com")
    await deposit(client, alice, acct, "USD", "1000000")
    await deposit(client, bob, b_acct, "BTC", "100")
    inputs = [
        {
            "accountId": b_acct,
            "symbol": "BTC-USD",
            "side": "SELL",
            "type": "LIMIT",
            "quantity": "10",
            "price": "100",
        }
    ]
    await gql(
        client,
        "mutation($i: [PlaceOrderInput!]!) { placeOrders(inputs: $i) { errors { code } } }",
        {"i": inputs},
        token=bob,
    )
    buys = [
        {
            "accountId": acct,
            "symbol": "BTC-USD",
            "side": "BUY",
            "type": "LIMIT",
            "quantity": "0.01",
            "price": "100",
        }
        for _ in range(100)
    ]
    placed = await gql(
        client,
        "mutation($i: [PlaceOrderInput!]!) { placeOrders(inputs: $i) "
        "{ results { errors { code } } } }",
        {"i": buys},
        token=alice,
    )
    assert all(r["errors"] == [] for r in placed["data"]["placeOrders"]["results"])

    statements: list[str] = []

    def count(conn, cursor, statement, *args):
        statements.append(statement)

    sync_engine = services.db.engine.sync_engine
    event.listen(sync_engine, "before_cursor_execute", count)
    try:
        small = await gql(client, PAGE, {"n": 5}, token=alice)
        small_count = len(statements)
        statements.clear()
        big = await gql(client, PAGE, {"n": 100}, token=alice)
        big_count = len(statements)
    finally:
        event.remove(sync_engine, "before_cursor_execute", count)
    assert len(small["data"]["orders"]["edges"]) == 5
    edges = big["data"]["orders"]["edges"]
    assert len(edges) == 100
    assert all(e["node"]["fills"][0]["quantity"] == "0.0100" for e in edges)
    assert big_count == small_count, (small_count, big_count)
    assert big_count <= 8
