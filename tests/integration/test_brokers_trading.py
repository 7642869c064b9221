"""Deriv contracts and account summaries through GraphQL against the sandbox (both legs).

The fake Deriv's clock is pinned so contract prices are known exactly: an open contract
is worth a fixed share of its payout depending on whether the synthetic spot moved its way
(see ``FakeDeriv._bid``), computed here independently from ``spot``.
"""

from __future__ import annotations

import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from tests.conftest import Leg, make_settings
from tests.helpers import gql, register
from tests.integration.test_brokers_linking import (
    REDIRECT,
    audit_actions,
    link_bingx,
    link_deriv,
    link_kite,
)
from tradegraph.audit.models import AuditEntry
from tradegraph.brokers.models import BrokerContract, BrokerPosition
from tradegraph.brokers.sandbox.deriv import spot
from tradegraph.config import Settings
from tradegraph.services import Services

BUY = """
mutation($input: BuyContractInput!) {
  buyContract(input: $input) {
    contract { id linkId contractReference symbol direction status currency stake buyPrice
               payout sellPrice profit duration durationUnit purchasedAt expiresAt closedAt }
    errors { code field message }
  }
}"""
SELL = """
mutation($input: SellContractInput!) {
  sellContract(input: $input) {
    contract { id status sellPrice profit closedAt }
    errors { code field message }
  }
}"""
LINK_SUMMARY = """
query($id: ID!) {
  node(id: $id) {
    ... on BrokerLink {
      summary { balance equity openPositions realizedPnl unrealizedPnl currency stale }
      positions { symbol side kind quantity averagePrice markPrice marketValue unrealizedPnl }
    }
  }
}"""
ME_SUMMARY = """
query($currency: String!) {
  me {
    summary(currency: $currency) {
      balance equity openPositions realizedPnl unrealizedPnl currency stale
      accounts {
        link { accountReference provider }
        summary { balance currency }
        converted { balance equity }
        includedInTotal
        error { code }
      }
      rates { currency usdPerUnit }
    }
  }
}"""
CONTRACTS = """
query($first: Int, $after: String, $open: Boolean) {
  brokerContracts(first: $first, after: $after, openOnly: $open) {
    edges { cursor node { id status symbol } }
    pageInfo { hasNextPage endCursor }
  }
}"""

T0 = int(time.time())


@pytest.fixture
def settings(tmp_path: Path, leg: Leg) -> Settings:
    return make_settings(
        tmp_path,
        leg,
        broker_sandbox=True,
        broker_redirect_uris=REDIRECT,
        broker_timeout_seconds=2,
    )


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def deriv_clock(services: Services) -> Clock:
    clock = Clock(float(T0))
    assert services.brokers.sandbox is not None
    services.brokers.sandbox.fakes.deriv.clock = clock
    return clock


def expected_bid(symbol: str, purchase: int, now: int, payout: Decimal, rise: bool) -> Decimal:
    entry = spot(symbol, purchase + 1)
    current = spot(symbol, now)
    if current == entry:
        share = Decimal("0.5")
    else:
        share = Decimal("0.6") if (current > entry) == rise else Decimal("0.4")
    return (payout * share).quantize(Decimal("0.01"))


async def deriv_real_link(client: httpx.AsyncClient, token: str) -> str:
    links = await link_deriv(client, token)
    return next(link["id"] for link in links if link["accountReference"] == "CR900001")


async def buy(
    client: httpx.AsyncClient, token: str, link_id: str, **overrides: Any
) -> dict[str, Any]:
    values: dict[str, Any] = {
        "linkId": link_id,
        "symbol": "R_100",
        "direction": "RISE",
        "stake": "10",
        "duration": 5,
        "durationUnit": "MINUTES",
    }
    values.update(overrides)
    body = await gql(client, BUY, {"input": values}, token=token)
    payload: dict[str, Any] = body["data"]["buyContract"]
    return payload


async def test_buy_and_sell_a_contract_with_summary_numbers(
    client: httpx.AsyncClient, services: Services, deriv_clock: Clock
) -> None:
    alice = await register(client)
    token = alice["accessToken"]
    link_id = await deriv_real_link(client, token)

    bought = await buy(client, token, link_id)
    assert bought["errors"] == []
    contract = bought["contract"]
    assert contract["linkId"] == link_id
    assert contract["status"] == "OPEN" and contract["direction"] == "RISE"
    assert contract["symbol"] == "R_100" and contract["currency"] == "USD"
    assert contract["stake"] == "10.00" and contract["buyPrice"] == "10.00"
    assert contract["payout"] == "19.50"
    assert contract["duration"] == 5 and contract["durationUnit"] == "MINUTES"
    assert contract["sellPrice"] is None and contract["profit"] is None

    deriv_clock.now = T0 + 30
    bid = expected_bid("R_100", T0, T0 + 30, Decimal("19.50"), rise=True)
    body = await gql(client, LINK_SUMMARY, {"id": link_id}, token=token)
    summary = body["data"]["node"]["summary"]
    assert summary == {
        "balance": "9990.00",
        "equity": str(Decimal("9990.00") + bid),
        "openPositions": 1,
        "realizedPnl": "0.00",
        "unrealizedPnl": str(bid - Decimal("10.00")),
        "currency": "USD",
        "stale": False,
    }
    positions = body["data"]["node"]["positions"]
    assert positions == [
        {
            "symbol": "R_100",
            "side": "LONG",
            "kind": "CONTRACT",
            "quantity": "1.00",
            "averagePrice": "10.00",
            "markPrice": str(bid),
            "marketValue": str(bid),
            "unrealizedPnl": str(bid - Decimal("10.00")),
        }
    ]

    sold = await gql(client, SELL, {"input": {"contractId": contract["id"]}}, token=token)
    payload = sold["data"]["sellContract"]
    assert payload["errors"] == []
    assert payload["contract"]["status"] == "SOLD"
    assert payload["contract"]["sellPrice"] == str(bid)
    assert payload["contract"]["profit"] == str(bid - Decimal("10.00"))
    assert payload["contract"]["closedAt"] is not None

    again = await gql(client, SELL, {"input": {"contractId": contract["id"]}}, token=token)
    assert again["data"]["sellContract"]["errors"][0]["code"] == "CONTRACT_CLOSED"

    summary = (await gql(client, LINK_SUMMARY, {"id": link_id}, token=token))["data"]["node"][
        "summary"
    ]
    balance = Decimal("9990.00") + bid
    assert summary["balance"] == str(balance) and summary["equity"] == str(balance)
    assert summary["openPositions"] == 0
    assert summary["realizedPnl"] == str(bid - Decimal("10.00"))
    assert summary["unrealizedPnl"] == "0.00"

    actions = await audit_actions(services)
    assert "broker.contract_bought" in actions and "broker.contract_sold" in actions
    async with services.db.session() as session:
        entry = (
            await session.scalars(
                select(AuditEntry).where(AuditEntry.action == "broker.contract_sold")
            )
        ).one()
    assert entry.actor_id is not None and '"profit"' in entry.data


async def test_settled_contracts_are_recorded_on_the_next_refresh(
    client: httpx.AsyncClient, services: Services, deriv_clock: Clock
) -> None:
    alice = await register(client)
    token = alice["accessToken"]
    link_id = await deriv_real_link(client, token)
    bought = await buy(client, token, link_id, duration=15, durationUnit="SECONDS")
    assert bought["errors"] == []
    deriv_clock.now = T0 + 60  # exit tick at T0 + 16 is long past
    won = spot("R_100", T0 + 16) > spot("R_100", T0 + 1)
    summary = (await gql(client, LINK_SUMMARY, {"id": link_id}, token=token))["data"]["node"][
        "summary"
    ]
    assert summary["openPositions"] == 0
    assert summary["realizedPnl"] == ("9.50" if won else "-10.00")
    assert summary["balance"] == ("10009.50" if won else "9990.00")
    async with services.db.session() as session:
        row = (await session.scalars(select(BrokerContract))).one()
    assert row.status.value == ("WON" if won else "LOST")


async def test_contracts_bought_elsewhere_are_imported(
    client: httpx.AsyncClient, services: Services, deriv_clock: Clock
) -> None:
    from tradegraph.brokers.adapters.deriv import DerivBroker
    from tradegraph.brokers.protocol import ContractDirection

    alice = await register(client)
    token = alice["accessToken"]
    link_id = await deriv_real_link(client, token)
    sandbox = services.brokers.sandbox
    assert sandbox is not None
    outside_token = sandbox.fakes.deriv.issue_token("CR900001")
    async with DerivBroker.connect("1089", outside_token, url=sandbox.fakes.deriv_ws_url) as other:
        await other.buy_contract("R_50", ContractDirection.FALL, Decimal("2"), 3, "m")
    await gql(client, LINK_SUMMARY, {"id": link_id}, token=token)
    page = await gql(client, CONTRACTS, {"first": 10}, token=token)
    nodes = [e["node"] for e in page["data"]["brokerContracts"]["edges"]]
    assert [(n["symbol"], n["status"]) for n in nodes] == [("R_50", "OPEN")]


async def test_portfolio_summary_totals_every_account_in_one_currency(
    client: httpx.AsyncClient, services: Services, deriv_clock: Clock
) -> None:
    alice = await register(client)
    token = alice["accessToken"]
    await deriv_real_link(client, token)
    await link_kite(client, token)
    assert (await link_bingx(client, token))["errors"] == []

    usd = (await gql(client, ME_SUMMARY, {"currency": "usd"}, token=token))["data"]["me"]["summary"]
    # Deriv CR 10000 USD; Kite 500000 INR cash + 10 INFY at 1500.50 (bought at 1400);
    # BingX 5000 USDT. INR at 0.012 USD; the demo Deriv account is listed, not totalled.
    assert usd["currency"] == "USD"
    assert usd["balance"] == "21000.00"
    assert usd["equity"] == "21180.06"
    assert usd["unrealizedPnl"] == "12.06"
    assert usd["openPositions"] == 1
    assert usd["realizedPnl"] == "0.00"
    assert usd["stale"] is False
    accounts = {a["link"]["accountReference"]: a for a in usd["accounts"]}
    assert accounts["VRTC900001"]["includedInTotal"] is False
    assert accounts["SB0001"]["summary"] == {"balance": "500000.00", "currency": "INR"}
    assert accounts["SB0001"]["converted"]["equity"] == "6180.06"
    assert {r["currency"]: r["usdPerUnit"] for r in usd["rates"]} == {
        "INR": "0.012",
        "USD": "1",
        "USDT": "1",
    }

    inr = (await gql(client, ME_SUMMARY, {"currency": "INR"}, token=token))["data"]["me"]["summary"]
    assert inr["balance"] == "1750000.00"  # 21000 USD / 0.012

    bad = await gql(client, ME_SUMMARY, {"currency": "XYZ"}, token=token)
    assert bad["errors"][0]["extensions"]["code"] == "UNSUPPORTED_CURRENCY"

    async with services.db.session() as session:
        rows = list(await session.scalars(select(BrokerPosition)))
    assert {r.symbol for r in rows} == {"NSE:INFY"}


async def test_summary_of_someone_else_is_null(
    client: httpx.AsyncClient, services: Services
) -> None:
    from tradegraph.graphql.ids import decode_id
    from tradegraph.identity.models import Role, User

    alice = await register(client)
    admin = await register(client, email="root@example.com", display_name="Root")
    async with services.db.session() as session:
        user = await session.get(User, decode_id(admin["user"]["id"], "User"))
        assert user is not None
        user.role = Role.ADMIN
        await session.commit()
    query = "query($id: ID!) { node(id: $id) { ... on User { email summary { balance } } } }"
    body = await gql(client, query, {"id": alice["user"]["id"]}, token=admin["accessToken"])
    assert body["data"]["node"] == {"email": "alice@example.com", "summary": None}
    own = await gql(client, query, {"id": alice["user"]["id"]}, token=alice["accessToken"])
    assert own["data"]["node"]["summary"] == {"balance": "0.00"}


async def test_broker_down_shows_stale_numbers_then_a_clear_error(
    client: httpx.AsyncClient, services: Services
) -> None:
    alice = await register(client)
    token = alice["accessToken"]
    link = (await link_bingx(client, token))["link"]
    fresh = (await gql(client, LINK_SUMMARY, {"id": link["id"]}, token=token))["data"]["node"]
    assert fresh["summary"]["stale"] is False and fresh["summary"]["balance"] == "5000.00"

    sandbox = services.brokers.sandbox
    assert sandbox is not None
    sandbox.fakes.bingx.faults.status(503, times=50)
    started = time.monotonic()
    stale = (await gql(client, LINK_SUMMARY, {"id": link["id"]}, token=token))["data"]["node"]
    assert time.monotonic() - started < 10
    assert stale["summary"]["stale"] is True and stale["summary"]["balance"] == "5000.00"

    total = (await gql(client, ME_SUMMARY, {"currency": "USD"}, token=token))["data"]["me"][
        "summary"
    ]
    assert total["stale"] is True and total["balance"] == "5000.00"

    # A Deriv link with no stored snapshot: the error is BROKER_UNAVAILABLE, fast.
    deriv_id = await deriv_real_link(client, token)
    sandbox.fakes.deriv.faults.delay(30, times=10, match="balance")
    started = time.monotonic()
    body = await gql(client, LINK_SUMMARY, {"id": deriv_id}, token=token)
    assert time.monotonic() - started < 15
    assert body["errors"][0]["extensions"]["code"] == "BROKER_UNAVAILABLE"


async def test_buy_failures_are_clear_and_audited(
    client: httpx.AsyncClient, services: Services, deriv_clock: Clock
) -> None:
    alice = await register(client)
    token = alice["accessToken"]
    link_id = await deriv_real_link(client, token)
    kite = await link_kite(client, token)

    too_small = await buy(client, token, link_id, stake="0.10")
    assert too_small["errors"][0]["code"] == "BROKER_REJECTED"
    assert "Stake must be between" in too_small["errors"][0]["message"]

    fractional = await buy(client, token, link_id, stake="1.001")
    assert fractional["errors"][0] == {
        "code": "INVALID_AMOUNT",
        "field": "stake",
        "message": "stake has more than 2 decimal places",
    }
    wrong_link = await buy(client, token, kite["id"])
    assert wrong_link["errors"][0]["code"] == "WRONG_PROVIDER"
    bad_duration = await buy(client, token, link_id, duration=0)
    assert bad_duration["errors"][0]["field"] == "duration"

    sandbox = services.brokers.sandbox
    assert sandbox is not None
    sandbox.fakes.deriv.faults.drop(match="buy")
    dropped = await buy(client, token, link_id)
    assert dropped["errors"][0]["code"] == "BROKER_UNAVAILABLE"
    assert "outcome is unknown" in dropped["errors"][0]["message"]

    actions = await audit_actions(services)
    assert actions.count("broker.contract_buy_failed") == 2  # the two that reached Deriv
    async with services.db.session() as session:
        assert list(await session.scalars(select(BrokerContract))) == []


async def test_revoked_token_turns_the_link_to_error(
    client: httpx.AsyncClient, services: Services, deriv_clock: Clock
) -> None:
    alice = await register(client)
    token = alice["accessToken"]
    link_id = await deriv_real_link(client, token)
    sandbox = services.brokers.sandbox
    assert sandbox is not None
    sandbox.fakes.deriv._tokens.clear()  # the user revoked the app at Deriv
    failed = await buy(client, token, link_id)
    assert failed["errors"][0]["code"] == "BROKER_AUTH_FAILED"
    links = await gql(
        client, "{ brokerLinks { accountReference status statusReason } }", token=token
    )
    status = {link["accountReference"]: link for link in links["data"]["brokerLinks"]}
    assert status["CR900001"]["status"] == "ERROR"
    assert status["CR900001"]["statusReason"]
    assert "broker.validation_failed" in await audit_actions(services)
    inactive = await buy(client, token, link_id)
    assert inactive["errors"][0]["code"] == "BROKER_LINK_INACTIVE"


async def test_contract_list_pages_newest_first(
    client: httpx.AsyncClient, services: Services, deriv_clock: Clock
) -> None:
    alice = await register(client)
    token = alice["accessToken"]
    link_id = await deriv_real_link(client, token)
    for n in range(3):
        deriv_clock.now = T0 + n
        assert (await buy(client, token, link_id, stake=str(5 + n)))["errors"] == []
    first = await gql(client, CONTRACTS, {"first": 2}, token=token)
    page = first["data"]["brokerContracts"]
    assert len(page["edges"]) == 2 and page["pageInfo"]["hasNextPage"] is True
    rest = await gql(
        client, CONTRACTS, {"first": 2, "after": page["pageInfo"]["endCursor"]}, token=token
    )
    more = rest["data"]["brokerContracts"]
    assert len(more["edges"]) == 1 and more["pageInfo"]["hasNextPage"] is False
    ids = [e["node"]["id"] for e in page["edges"] + more["edges"]]
    assert len(set(ids)) == 3
