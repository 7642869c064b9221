"""The spot exchange through GraphQL, on both legs: life cycle, errors, idempotency, access."""

from __future__ import annotations

from decimal import Decimal

from tests.helpers import gql, register

OPEN = """mutation($k: AccountKind!) { openAccount(input: {kind: $k}) {
  account { id kind } errors { code field } } }"""
DEPOSIT = """mutation($i: DepositInput!) { deposit(input: $i) {
  transaction { id amount kind } balance { total available } errors { code field message } } }"""
WITHDRAW = """mutation($i: WithdrawInput!) { withdraw(input: $i) {
  balance { total available } errors { code field } } }"""
PLACE = """mutation($i: PlaceOrderInput!) { placeOrder(input: $i) {
  order { id status filledQuantity remainingQuantity averagePrice fee clientOrderId }
  fills { price quantity fee liquidity } errors { code field message } } }"""
BALANCES = """query($id: ID!) { account(id: $id) { balances { asset total locked available } } }"""


async def trader(client, email: str, kind: str = "PAPER") -> tuple[str, str]:
    session = await register(client, email=email, display_name=email.split("@")[0])
    token = session["accessToken"]
    opened = await gql(client, OPEN, {"k": kind}, token=token)
    payload = opened["data"]["openAccount"]
    assert payload["errors"] == [], payload
    return token, payload["account"]["id"]


async def deposit(client, token, account, asset, amount, key=None):
    body = await gql(
        client,
        DEPOSIT,
        {"i": {"accountId": account, "asset": asset, "amount": amount, "idempotencyKey": key}},
        token=token,
    )
    return body["data"]["deposit"]


async def place(client, token, account, **fields):
    order = {"accountId": account, "symbol": "BTC-USD", "type": "LIMIT", **fields}
    body = await gql(client, PLACE, {"i": order}, token=token)
    assert "errors" not in body, body
    return body["data"]["placeOrder"]


async def balances(client, token, account) -> dict[str, dict[str, str]]:
    body = await gql(client, BALANCES, {"id": account}, token=token)
    return {b["asset"]: b for b in body["data"]["account"]["balances"]}


async def test_order_life_cycle_fees_and_balances(client):
    alice, a_acct = await trader(client, "alice@example.com")
    bob, b_acct = await trader(client, "bob@example.com")
    assert (await deposit(client, alice, a_acct, "USD", "100000"))["errors"] == []
    assert (await deposit(client, bob, b_acct, "BTC", "2"))["errors"] == []

    ask = await place(
        client, bob, b_acct, side="SELL", quantity="1", price="50000.00", clientOrderId="bob-1"
    )
    assert ask["errors"] == [] and ask["order"]["status"] == "NEW"
    book = await gql(
        client,
        '{ orderBook(symbol: "BTC-USD") { asks { price quantity } bids { price } sequence } }',
    )
    assert book["data"]["orderBook"]["asks"] == [{"price": "50000.00", "quantity": "1.0000"}]

    buy = await place(client, alice, a_acct, side="BUY", quantity="0.4", price="50000.00")
    assert buy["errors"] == []
    assert buy["order"]["status"] == "FILLED"
    assert buy["order"]["averagePrice"] == "50000.00"
    assert buy["fills"] == [
        {"price": "50000.00", "quantity": "0.4000", "fee": "40.000000", "liquidity": "TAKER"}
    ]

    a = await balances(client, alice, a_acct)
    assert Decimal(a["USD"]["total"]) == Decimal("100000") - Decimal("20000") - Decimal("40")
    assert Decimal(a["BTC"]["total"]) == Decimal("0.4")
    b = await balances(client, bob, b_acct)
    assert Decimal(b["USD"]["total"]) == Decimal("20000") - Decimal("20")  # maker 10 bps
    assert Decimal(b["BTC"]["total"]) == Decimal("1.6")
    assert Decimal(b["BTC"]["locked"]) == Decimal("0.6")

    mine = await gql(
        client,
        '{ order(clientOrderId: "bob-1") { status filledQuantity '
        "fills { liquidity quantity } account { kind } instrument { symbol } } }",
        token=bob,
    )
    assert mine["data"]["order"] == {
        "status": "PARTIALLY_FILLED",
        "filledQuantity": "0.4000",
        "fills": [{"liquidity": "MAKER", "quantity": "0.4000"}],
        "account": {"kind": "PAPER"},
        "instrument": {"symbol": "BTC-USD"},
    }
    cancel = await gql(
        client,
        'mutation { cancelOrder(input: {clientOrderId: "bob-1"}) { order { status } '
        "errors { code } } }",
        token=bob,
    )
    assert cancel["data"]["cancelOrder"] == {"order": {"status": "CANCELED"}, "errors": []}
    b = await balances(client, bob, b_acct)
    assert Decimal(b["BTC"]["locked"]) == 0

    trades = await gql(client, '{ recentTrades(symbol: "BTC-USD") { price quantity takerSide } }')
    assert trades["data"]["recentTrades"] == [
        {"price": "50000.00", "quantity": "0.4000", "takerSide": "BUY"}
    ]
    fills = await gql(client, "{ fills(first: 10) { nodes { side liquidity fee } } }", token=alice)
    assert fills["data"]["fills"]["nodes"] == [
        {"side": "BUY", "liquidity": "TAKER", "fee": "40.000000"}
    ]
    instruments = await gql(client, "{ instruments { symbol lastPrice stats24h { trades last } } }")
    btc = next(i for i in instruments["data"]["instruments"] if i["symbol"] == "BTC-USD")
    assert btc == {
        "symbol": "BTC-USD",
        "lastPrice": "50000.00",
        "stats24h": {"trades": 1, "last": "50000.00"},
    }


async def test_order_validation_error_codes(client):
    alice, acct = await trader(client, "alice@example.com")
    await deposit(client, alice, acct, "USD", "1000")
    cases = [
        ({"side": "BUY", "quantity": "0.01", "price": "100.001"}, "INVALID_PRICE_TICK", "price"),
        (
            {"side": "BUY", "quantity": "0.00001", "price": "100"},
            "INVALID_QUANTITY_STEP",
            "quantity",
        ),
        ({"side": "BUY", "quantity": "0.0001", "price": "1.00"}, "BELOW_MIN_NOTIONAL", None),
        ({"side": "BUY", "quantity": "1", "price": "50000"}, "INSUFFICIENT_FUNDS", None),
        ({"side": "BUY", "quantity": "-1", "price": "100"}, "INVALID_QUANTITY_STEP", "quantity"),
        (
            {"side": "BUY", "quantity": "0.01", "price": "100", "clientOrderId": "bad id!"},
            "INVALID_CLIENT_ORDER_ID",
            "clientOrderId",
        ),
    ]
    for fields, code, field in cases:
        result = await place(client, alice, acct, **fields)
        assert result["order"] is None
        assert result["errors"][0]["code"] == code, (fields, result)
        if field:
            assert result["errors"][0]["field"] == field
    unknown = await place(
        client, alice, acct, side="BUY", quantity="1", price="1", symbol="NOPE-USD"
    )
    assert unknown["errors"][0]["code"] == "UNKNOWN_INSTRUMENT"
    # Nothing was reserved by any of the rejections.
    assert Decimal((await balances(client, alice, acct))["USD"]["locked"]) == 0


async def test_client_order_id_idempotency(client):
    alice, acct = await trader(client, "alice@example.com")
    await deposit(client, alice, acct, "USD", "10000")
    first = await place(
        client, alice, acct, side="BUY", quantity="0.01", price="100", clientOrderId="retry-1"
    )
    again = await place(
        client, alice, acct, side="BUY", quantity="0.01", price="100", clientOrderId="retry-1"
    )
    assert first["order"]["id"] == again["order"]["id"] and again["errors"] == []
    other = await place(
        client, alice, acct, side="BUY", quantity="0.02", price="100", clientOrderId="retry-1"
    )
    assert other["errors"][0]["code"] == "DUPLICATE_CLIENT_ORDER_ID"
    orders = await gql(client, "{ orders(first: 10) { edges { node { id } } } }", token=alice)
    assert len(orders["data"]["orders"]["edges"]) == 1


async def test_deposit_withdraw_idempotency_and_limits(client):
    alice, acct = await trader(client, "alice@example.com")
    one = await deposit(client, alice, acct, "USD", "50", key="dep-1")
    two = await deposit(client, alice, acct, "USD", "50", key="dep-1")
    assert one["transaction"]["id"] == two["transaction"]["id"]
    assert two["balance"]["total"] == "50.000000"
    clash = await deposit(client, alice, acct, "USD", "60", key="dep-1")
    assert clash["errors"][0]["code"] == "DUPLICATE_IDEMPOTENCY_KEY"
    bad = await deposit(client, alice, acct, "USD", "0.0000001")
    assert bad["errors"][0]["code"] == "INVALID_AMOUNT"
    await place(client, alice, acct, side="BUY", quantity="0.1", price="100")  # locks ~10.02
    too_much = await gql(
        client, WITHDRAW, {"i": {"accountId": acct, "asset": "USD", "amount": "45"}}, token=alice
    )
    assert too_much["data"]["withdraw"]["errors"][0]["code"] == "INSUFFICIENT_FUNDS"
    ok = await gql(
        client, WITHDRAW, {"i": {"accountId": acct, "asset": "USD", "amount": "30"}}, token=alice
    )
    assert ok["data"]["withdraw"]["balance"]["total"] == "20.000000"
    txs = await gql(client, "{ transactions(first: 10) { nodes { kind amount } } }", token=alice)
    assert [t["kind"] for t in txs["data"]["transactions"]["nodes"]] == ["WITHDRAWAL", "DEPOSIT"]


async def test_spot_rules_access_level_and_faucet(client, services):
    alice, spot = await trader(client, "alice@example.com", kind="SPOT")
    refused = await deposit(client, alice, spot, "USD", "100")
    assert refused["errors"][0]["code"] == "DEPOSIT_NOT_ALLOWED"
    limited = await place(client, alice, spot, side="BUY", quantity="0.01", price="100")
    assert limited["errors"][0]["code"] == "ACCESS_LIMITED"


async def test_other_users_cannot_see_or_cancel(client):
    alice, a_acct = await trader(client, "alice@example.com")
    eve, e_acct = await trader(client, "eve@example.com")
    await deposit(client, alice, a_acct, "USD", "1000")
    order = await place(
        client, alice, a_acct, side="BUY", quantity="0.01", price="100", clientOrderId="mine"
    )
    oid = order["order"]["id"]
    seen = await gql(client, "query($id: ID!) { node(id: $id) { id } }", {"id": oid}, token=eve)
    assert seen["data"]["node"] is None
    seen = await gql(
        client,
        "query($id: ID!) { node(id: $id) { ... on Account { id } } }",
        {"id": a_acct},
        token=eve,
    )
    assert seen["data"]["node"] is None
    by_coid = await gql(client, '{ order(clientOrderId: "mine") { id } }', token=eve)
    assert by_coid["data"]["order"] is None
    cancel = await gql(
        client,
        "mutation($id: ID!) { cancelOrder(input: {id: $id}) { errors { code } } }",
        {"id": oid},
        token=eve,
    )
    assert cancel["data"]["cancelOrder"]["errors"][0]["code"] == "ORDER_NOT_FOUND"
    steal = await place(client, eve, a_acct, side="BUY", quantity="0.01", price="100")
    assert steal["errors"][0]["code"] == "ACCOUNT_NOT_FOUND"
    their = await gql(client, BALANCES, {"id": a_acct}, token=eve)
    assert their["data"]["account"] is None
    assert e_acct != a_acct


async def test_place_orders_bulk_each_on_its_own(client):
    alice, acct = await trader(client, "alice@example.com")
    await deposit(client, alice, acct, "USD", "1000")
    inputs = [
        {
            "accountId": acct,
            "symbol": "BTC-USD",
            "side": "BUY",
            "type": "LIMIT",
            "quantity": "0.01",
            "price": str(100 + i),
        }
        for i in range(5)
    ]
    inputs[2]["price"] = "1.001"
    inputs[3]["symbol"] = "NOPE-USD"
    body = await gql(
        client,
        "mutation($i: [PlaceOrderInput!]!) { placeOrders(inputs: $i) { results { "
        "order { status } errors { code } } errors { code } } }",
        {"i": inputs},
        token=alice,
    )
    results = body["data"]["placeOrders"]["results"]
    assert [r["errors"][0]["code"] if r["errors"] else r["order"]["status"] for r in results] == [
        "NEW",
        "NEW",
        "INVALID_PRICE_TICK",
        "UNKNOWN_INSTRUMENT",
        "NEW",
    ]
    canceled = await gql(
        client,
        "mutation($a: ID!) { cancelAllOrders(input: {accountId: $a}) { orders { status } } }",
        {"a": acct},
        token=alice,
    )
    assert [o["status"] for o in canceled["data"]["cancelAllOrders"]["orders"]] == ["CANCELED"] * 3
    too_many = await gql(
        client,
        "mutation($i: [PlaceOrderInput!]!) { placeOrders(inputs: $i) { errors { code } } }",
        {"i": [inputs[0]] * 101},
        token=alice,
    )
    assert too_many["data"]["placeOrders"]["errors"][0]["code"] == "INVALID_INPUT"
    # 100 valid + 1 refused at the API edge (an id of the wrong type) is still too many:
    # refused whole, nothing placed.
    mixed = await gql(
        client,
        "mutation($i: [PlaceOrderInput!]!) { placeOrders(inputs: $i) { errors { code } } }",
        {"i": [inputs[0]] * 100 + [{**inputs[0], "accountId": "VXNlcjp4"}]},
        token=alice,
    )
    assert mixed["data"]["placeOrders"]["errors"][0]["code"] == "INVALID_INPUT"
    orders = await gql(client, "{ orders(first: 200) { edges { node { id } } } }", token=alice)
    assert len(orders["data"]["orders"]["edges"]) == 3  # only the first call's orders


async def test_admin_credit_and_halt(client, services):
    from tradegraph.identity.models import Role, User

    admin = await register(client, email="root@example.com", display_name="Root")
    from tradegraph.graphql.ids import decode_id

    async with services.db.session() as s:
        user = await s.get(User, decode_id(admin["user"]["id"], "User"))
        user.role = Role.ADMIN
        await s.commit()
    alice, acct = await trader(client, "alice@example.com", kind="SPOT")
    credit = """mutation($i: AdminCreditAccountInput!) { adminCreditAccount(input: $i) {
      balance { total } errors { code } } }"""
    denied = await gql(
        client, credit, {"i": {"accountId": acct, "asset": "USD", "amount": "500"}}, token=alice
    )
    assert denied["data"]["adminCreditAccount"]["errors"][0]["code"] == "FORBIDDEN"
    done = await gql(
        client,
        credit,
        {"i": {"accountId": acct, "asset": "USD", "amount": "500", "reference": "wire 42"}},
        token=admin["accessToken"],
    )
    assert done["data"]["adminCreditAccount"] == {"balance": {"total": "500.000000"}, "errors": []}
    halt = """mutation($h: Boolean!) { adminSetInstrumentStatus(symbol: "BTC-USD", halted: $h) {
      instrument { status } errors { code } } }"""
    halted = await gql(client, halt, {"h": True}, token=admin["accessToken"])
    assert halted["data"]["adminSetInstrumentStatus"]["instrument"]["status"] == "HALTED"
    # Only the admin was refused here; the trader's order is refused while halted.
    from tradegraph.identity.models import AccessLevel

    async with services.db.session() as s:
        u = await s.get(User, (await services.identity.get_user_by_email("alice@example.com")).id)
        u.access_level = AccessLevel.FULL
        await s.commit()
    await services.identity.user_changed(u.id)  # what every writer of user rows does
    refused = await place(client, alice, acct, side="BUY", quantity="0.01", price="100")
    assert refused["errors"][0]["code"] == "INSTRUMENT_HALTED"
    resumed = await gql(client, halt, {"h": False}, token=admin["accessToken"])
    assert resumed["data"]["adminSetInstrumentStatus"]["instrument"]["status"] == "TRADING"
    accepted = await place(client, alice, acct, side="BUY", quantity="0.01", price="100")
    assert accepted["errors"] == []


async def test_malformed_decimal_variables_are_client_errors_not_internal(client):
    alice, acct = await trader(client, "alice@example.com")
    for bad in ("lots", 0.5, "NaN"):
        order = {"accountId": acct, "symbol": "BTC-USD", "type": "LIMIT", "side": "BUY"}
        body = await gql(
            client, PLACE, {"i": {**order, "quantity": bad, "price": "1.00"}}, token=alice
        )
        error = body["errors"][0]
        assert error["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED", error
        assert "quantity" in error["message"] and "errorId" not in error["extensions"]
