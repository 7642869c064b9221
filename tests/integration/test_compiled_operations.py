"""Compiled trading mutations answer exactly what the regular Strawberry pipeline answers.

Two apps on two identical databases receive the same requests in the same order; one
compiles (the default), the other never does. Every response must be byte-identical,
successes, payload errors, GraphQL errors and authentication failures alike, and the
compiled app must really have answered from compiled operations.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from graphql import parse

from tests.conftest import Leg, make_settings
from tradegraph.app import create_app
from tradegraph.config import Settings
from tradegraph.graphql.compiled import COMPILABLE_FIELDS
from tradegraph.graphql.schema import build_schema
from tradegraph.services import Services

# Every field of the payloads except timestamps (which differ between the two apps).
ORDER_FIELDS = """id __typename clientOrderId symbol side type timeInForce status price
  stopPrice quantity quoteQuantity filledQuantity remainingQuantity quoteFilled averagePrice
  fee postOnly reason"""
FILL_FIELDS = "tradeId orderId accountId symbol side price quantity quoteQuantity fee liquidity"
ERRORS = "errors { code field message __typename }"

PLACE_DOCUMENTS = [
    "mutation($i: PlaceOrderInput!) { placeOrder(input: $i) { order { id } errors { code } } }",
    f"""mutation Place($i: PlaceOrderInput!) {{ placeOrder(input: $i) {{
      order {{ {ORDER_FIELDS} }} fills {{ {FILL_FIELDS} }} {ERRORS} __typename }} }}""",
    """mutation($i: PlaceOrderInput!) { p: placeOrder(input: $i) {
      o: order { s: status q: quantity i: id } e: errors { c: code } } }""",
]
BULK_DOCUMENT = f"""mutation($i: [PlaceOrderInput!]!) {{ placeOrders(inputs: $i) {{
  results {{ order {{ {ORDER_FIELDS} }} fills {{ {FILL_FIELDS} }} {ERRORS} }} {ERRORS} }} }}"""
CANCEL_DOCUMENT = f"""mutation($i: CancelOrderInput!) {{ cancelOrder(input: $i) {{
  order {{ {ORDER_FIELDS} }} {ERRORS} }} }}"""
# Not compilable: a field with a resolver of its own (Order.instrument), and a fragment.
REGULAR_DOCUMENTS = [
    """mutation($i: PlaceOrderInput!) { placeOrder(input: $i) {
      order { id instrument { symbol } } errors { code } } }""",
    """mutation($i: PlaceOrderInput!) { placeOrder(input: $i) { ...P } }
    fragment P on PlaceOrderPayload { order { id } errors { code } }""",
]
SETUP = """mutation($k: AccountKind!) { openAccount(input: {kind: $k}) { account { id } } }"""
DEPOSIT = """mutation($i: DepositInput!) { deposit(input: $i) { errors { code } } }"""
REGISTER = """mutation($i: RegisterInput!) { register(input: $i) { accessToken } }"""


class Twin:
    """One app; requests carry this app's own tokens for the same users."""

    def __init__(self, client: httpx.AsyncClient, services: Services, schema: Any) -> None:
        self.client = client
        self.services = services
        self.schema = schema
        self.tokens: dict[str, str] = {}

    async def send(self, query: str, variables: dict[str, Any], user: str | None) -> str:
        headers = {}
        if user == "bad-token":
            headers["authorization"] = "Bearer not-a-token"
        elif user is not None:
            headers["authorization"] = f"Bearer {self.tokens[user]}"
        response = await self.client.post(
            "/graphql", json={"query": query, "variables": variables}, headers=headers
        )
        return f"{response.status_code} {response.text}"


@pytest.fixture
async def twins(tmp_path: Path, sqlite_template: Path) -> AsyncIterator[tuple[Twin, Twin]]:
    made: list[Services] = []
    pair = []
    async with httpx.AsyncClient() as _:
        for name, compile_operations in (("compiled", True), ("regular", False)):
            folder = tmp_path / name
            folder.mkdir()
            shutil.copy(sqlite_template, folder / "db.sqlite")
            leg = Leg("sqlite", f"sqlite+aiosqlite:///{folder / 'db.sqlite'}", None)
            settings = make_settings(folder, leg, compile_operations=compile_operations)
            services = Services(settings)
            await services.start()
            made.append(services)
            app = create_app(settings, services=services)
            client = httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app, client=("10.0.0.1", 1)),
                base_url="http://testserver",
            )
            pair.append(Twin(client, services, app.state.schema))
        try:
            yield pair[0], pair[1]
        finally:
            for twin in pair:
                await twin.client.aclose()
            for services in made:
                await services.stop()


async def both(twins: tuple[Twin, Twin], query: str, variables: dict[str, Any], user: str | None):
    compiled, regular = twins
    got = await compiled.send(query, variables, user)
    expected = await regular.send(query, variables, user)
    assert _masked(got) == _masked(expected), f"{query}\n{variables}"
    return got


def _masked(text: str) -> str:
    """Error ids are random per occurrence; everything else must match."""
    return re.sub(r"\b[0-9a-f]{16}\b", "<error-id>", text)


async def setup_traders(twins: tuple[Twin, Twin]) -> dict[str, str]:
    accounts: dict[str, str] = {}
    for twin in twins:
        for user in ("alice", "bob"):
            body = (
                await twin.client.post(
                    "/graphql",
                    json={
                        "query": REGISTER,
                        "variables": {
                            "i": {
                                "email": f"{user}@example.com",
                                "password": "correct horse battery",
                                "displayName": user,
                            }
                        },
                    },
                )
            ).json()
            twin.tokens[user] = body["data"]["register"]["accessToken"]
    for user, asset, amount in (("alice", "USD", "1000000"), ("bob", "BTC", "50")):
        opened = await both(twins, SETUP, {"k": "PAPER"}, user)
        account = json.loads(opened.split(" ", 1)[1])
        accounts[user] = account["data"]["openAccount"]["account"]["id"]
        deposit = {"accountId": accounts[user], "asset": asset, "amount": amount}
        await both(twins, DEPOSIT, {"i": {**deposit, "idempotencyKey": f"{user}-1"}}, user)
    return accounts


def order(account: str, **fields: Any) -> dict[str, Any]:
    return {"accountId": account, "symbol": "BTC-USD", "type": "LIMIT", **fields}


async def test_compiled_responses_are_identical_to_the_regular_pipeline(twins) -> None:
    accounts = await setup_traders(twins)
    alice, bob = accounts["alice"], accounts["bob"]
    n = 0

    def next_id() -> str:
        nonlocal n
        n += 1
        return f"c-{n}"

    for document in PLACE_DOCUMENTS:
        cases: list[tuple[dict[str, Any], str | None]] = [
            # resting orders, both sides
            ({"i": order(alice, side="BUY", quantity="0.5", price="49000.00")}, "alice"),
            ({"i": order(bob, side="SELL", quantity="0.7", price="51000.00")}, "bob"),
            # crossing: fills as taker, partial
            ({"i": order(alice, side="BUY", quantity="1", price="51000.00")}, "alice"),
            # market order, IOC, post-only refusal, stop order
            ({"i": order(bob, side="SELL", type="MARKET", quantity="0.1")}, "bob"),
            (
                {"i": order(alice, side="BUY", quantity="0.1", price="1.00", timeInForce="IOC")},
                "alice",
            ),
            ({"i": order(bob, side="SELL", quantity="0.1", price="1.00", postOnly=True)}, "bob"),
            (
                {
                    "i": order(
                        alice,
                        side="BUY",
                        type="STOP_LIMIT",
                        quantity="0.1",
                        price="60000.00",
                        stopPrice="59000.00",
                    )
                },
                "alice",
            ),
            # idempotent retry and a clashing retry
            (
                {
                    "i": order(
                        alice, side="BUY", quantity="0.2", price="40000.00", clientOrderId="k"
                    )
                },
                "alice",
            ),
            (
                {
                    "i": order(
                        alice, side="BUY", quantity="0.2", price="40000.00", clientOrderId="k"
                    )
                },
                "alice",
            ),
            (
                {
                    "i": order(
                        alice, side="BUY", quantity="0.3", price="40000.00", clientOrderId="k"
                    )
                },
                "alice",
            ),
            # payload errors: tick, lot, notional, funds, someone else's account, bad id
            ({"i": order(alice, side="BUY", quantity="0.1", price="40000.001")}, "alice"),
            ({"i": order(alice, side="BUY", quantity="0.1234567891", price="40000.00")}, "alice"),
            ({"i": order(alice, side="BUY", quantity="0.00001", price="1.00")}, "alice"),
            ({"i": order(alice, side="BUY", quantity="1000", price="50000.00")}, "alice"),
            ({"i": order(bob, side="BUY", quantity="0.1", price="40000.00")}, "alice"),
            ({"i": order("not-an-id", side="BUY", quantity="0.1", price="40000.00")}, "alice"),
            (
                {
                    "i": order(
                        alice, side="BUY", quantity="0.1", price="40000.00", clientOrderId="bad id!"
                    )
                },
                "alice",
            ),
            # GraphQL errors before execution: bad variables
            ({"i": order(alice, side="SIDEWAYS", quantity="0.1", price="1.00")}, "alice"),
            ({"i": {"accountId": alice}}, "alice"),
            ({"i": order(alice, side="BUY", quantity="lots", price="1.00")}, "alice"),
            # authentication: none, and a broken token
            ({"i": order(alice, side="BUY", quantity="0.1", price="40000.00")}, None),
            ({"i": order(alice, side="BUY", quantity="0.1", price="40000.00")}, "bad-token"),
        ]
        for variables, user in cases:
            if variables["i"].get("clientOrderId") is None and "side" in variables["i"]:
                variables["i"]["clientOrderId"] = next_id()
            await both(twins, document, variables, user)

    bulk = [
        order(alice, side="BUY", quantity="0.1", price="48000.00", clientOrderId="b-1"),
        order(alice, side="BUY", quantity="0.1", price="48000.001"),
        order(bob, side="SELL", quantity="0.2", price="47000.00", clientOrderId="b-2"),
        order(alice, side="BUY", quantity="0.1", price="48000.00", clientOrderId="b-1"),
    ]
    await both(twins, BULK_DOCUMENT, {"i": bulk}, "alice")
    await both(twins, BULK_DOCUMENT, {"i": bulk}, "alice")
    await both(twins, BULK_DOCUMENT, {"i": [bulk[0]] * 101}, "alice")
    await both(twins, BULK_DOCUMENT, {"i": []}, "alice")

    for cancel in (
        {"clientOrderId": "b-1", "accountId": alice},
        {"clientOrderId": "b-1", "accountId": alice},  # already cancelled
        {"clientOrderId": "nope", "accountId": alice},
        {"id": "T3JkZXI6MQ=="},  # order 1: alice's resting buy
        {"id": "T3JkZXI6Mg=="},  # order 2 is bob's: not found for alice
        {},
    ):
        await both(twins, CANCEL_DOCUMENT, {"i": cancel}, "alice")

    for document in REGULAR_DOCUMENTS:
        for _ in range(2):
            variables = {"i": order(alice, side="BUY", quantity="0.1", price="30000.00")}
            await both(twins, document, variables, "alice")

    compiled, regular = twins
    plans = compiled.schema.compiled._plans
    runs = {key[0]: plan.runs for key, plan in plans.items() if plan is not None}
    for document in [*PLACE_DOCUMENTS, BULK_DOCUMENT, CANCEL_DOCUMENT]:
        assert runs.get(document, 0) > 0, document
    for document in REGULAR_DOCUMENTS:
        assert document not in runs
    assert len(regular.schema.compiled) == 0


async def test_compiled_orders_report_timestamps_and_metrics(twins) -> None:
    accounts = await setup_traders(twins)
    compiled = twins[0]
    query = """mutation Stamp($i: PlaceOrderInput!) { placeOrder(input: $i) {
      order { createdAt updatedAt } errors { code } } }"""
    for _ in range(3):
        variables = {"i": order(accounts["alice"], side="BUY", quantity="0.1", price="1000.00")}
        body = json.loads((await compiled.send(query, variables, "alice"))[4:])
        assert body["data"]["placeOrder"]["order"]["updatedAt"].endswith("+00:00")
    metrics = compiled.services.metrics.render().decode()
    assert 'tradegraph_graphql_operations_total{operation="Stamp",type="mutation"} 3.0' in metrics


def test_only_resolvers_that_use_just_the_context_are_compilable() -> None:
    """The compiled path hands resolvers an ``info`` with only ``context``."""
    import inspect

    from tradegraph.graphql import exchange

    sources = {
        "placeOrder": inspect.getsource(exchange.ExchangeMutation.place_order),
        "placeOrders": inspect.getsource(exchange.ExchangeMutation.place_orders),
        "cancelOrder": inspect.getsource(exchange.ExchangeMutation.cancel_order),
    }
    assert set(sources) == COMPILABLE_FIELDS
    helpers = inspect.getsource(exchange._place_payload)
    for source in [*sources.values(), helpers]:
        uses = {
            part.split(".", 1)[1].split("(")[0].split(".")[0]
            for part in source.replace("\n", " ").split()
            if part.startswith("info.")
        }
        assert uses <= {"context"}, uses


def test_the_compiled_cache_is_bounded_in_entries_and_document_size() -> None:
    from tradegraph.graphql.compiled import CompiledOperations

    schema = build_schema(Settings())
    cache = CompiledOperations(max_size=2, max_query_chars=200)
    document = PLACE_DOCUMENTS[0]
    for n in range(3):
        query = document + " " * n  # distinct texts, same operation
        cache.learn(schema._schema, query, parse(query), None)
    assert len(cache) == 2 and cache.get(document, None) is None  # the oldest went first
    assert cache.get(document + "  ", None) is not None
    long_query = document + " " * 300
    cache.learn(schema._schema, long_query, parse(long_query), None)
    assert not cache.knows(long_query, None)
