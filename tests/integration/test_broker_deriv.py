"""Deriv adapter against the local fake websocket server."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from decimal import Decimal

import httpx
import pytest

from tradegraph.brokers.adapters.deriv import DerivBroker, DerivClient, parse_deriv_redirect
from tradegraph.brokers.adapters.retry import RetryPolicy
from tradegraph.brokers.protocol import (
    Broker,
    BrokerAuthError,
    BrokerRejected,
    BrokerUnavailable,
    ContractDirection,
    ContractStatus,
    OrderRequest,
    OrderSide,
    OrderStatus,
    PositionKind,
    PositionSide,
)
from tradegraph.brokers.sandbox import FakeDeriv
from tradegraph.brokers.sandbox.deriv import spot
from tradegraph.errors import DomainError

APP_ID = "1089"
FAST = RetryPolicy(
    max_attempts=3,
    base_delay=0.01,
    max_delay=0.02,
    connect_timeout=1,
    attempt_timeout=1,
    deadline=3,
)


class Clock:
    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock(1_700_000_000.0)


@pytest.fixture
async def fake(clock: Clock) -> AsyncIterator[FakeDeriv]:
    async with FakeDeriv(clock=clock, app_ids={APP_ID}) as server:
        yield server


@pytest.fixture
async def broker(fake: FakeDeriv) -> AsyncIterator[DerivBroker]:
    token = fake.add_account("CR100001", currency="USD", balance=Decimal("100"))
    async with DerivBroker.connect(APP_ID, token, url=fake.url, policy=FAST) as b:
        yield b


async def test_authorize_reports_account_and_siblings(fake: FakeDeriv) -> None:
    token = fake.add_account("CR1", balance=Decimal("10000.50"), email="a@example.com")
    fake.add_account("VRTC2", balance=Decimal("10000"), email="a@example.com")
    async with DerivClient(APP_ID, url=fake.url, policy=FAST) as client:
        auth = await client.authorize(token)
    assert (auth.loginid, auth.currency, auth.balance) == ("CR1", "USD", Decimal("10000.50"))
    assert [(a.loginid, a.is_virtual) for a in auth.accounts] == [("CR1", False), ("VRTC2", True)]


async def test_invalid_token_is_an_auth_error(fake: FakeDeriv) -> None:
    async with DerivBroker.connect(APP_ID, "a1-notatoken", url=fake.url, policy=FAST) as b:
        with pytest.raises(BrokerAuthError) as info:
            await b.balances()
    assert info.value.broker_code == "InvalidToken"
    assert "a1-notatoken" not in info.value.message


async def test_calls_before_authorize_are_refused_by_the_server(fake: FakeDeriv) -> None:
    async with DerivClient(APP_ID, url=fake.url, policy=FAST) as client:
        with pytest.raises(BrokerAuthError) as info:
            await client.balance()
    assert info.value.broker_code == "AuthorizationRequired"


async def test_unknown_app_id_is_refused_at_the_handshake(fake: FakeDeriv) -> None:
    async with DerivClient("999", url=fake.url, policy=FAST) as client:
        with pytest.raises(BrokerUnavailable):
            await client.ping()


async def test_is_a_broker(broker: DerivBroker) -> None:
    assert isinstance(broker, Broker)


async def test_buy_rise_and_settle_at_expiry(
    fake: FakeDeriv, broker: DerivBroker, clock: Clock
) -> None:
    contract = await broker.buy_contract("R_50", ContractDirection.RISE, Decimal("10"), 5, "t")
    assert contract.status is ContractStatus.OPEN
    assert (contract.buy_price, contract.payout) == (Decimal("10"), Decimal("19.50"))
    assert contract.balance_after == Decimal("90")
    assert (await broker.balances())[0].total == Decimal("90")

    positions = await broker.positions()
    assert [(p.position_id, p.kind, p.side) for p in positions] == [
        (contract.contract_id, PositionKind.CONTRACT, PositionSide.LONG)
    ]

    clock.now += 10  # past the 5-tick expiry
    settled = await broker.contract(contract.contract_id)
    start = int(1_700_000_000.0)
    won = spot("R_50", start + 6) > spot("R_50", start + 1)
    assert settled.status is (ContractStatus.WON if won else ContractStatus.LOST)
    assert settled.entry_spot == spot("R_50", start + 1)
    assert settled.exit_spot == spot("R_50", start + 6)
    expected = Decimal("90") + (Decimal("19.50") if won else 0)
    assert (await broker.balances())[0].total == expected
    assert await broker.positions() == []


async def test_fall_wins_exactly_when_rise_loses(
    fake: FakeDeriv, broker: DerivBroker, clock: Clock
) -> None:
    rise = await broker.buy_contract("R_100", ContractDirection.RISE, Decimal("1"), 3, "t")
    fall = await broker.buy_contract("R_100", ContractDirection.FALL, Decimal("1"), 3, "t")
    clock.now += 5
    statuses = {(await broker.contract(c.contract_id)).status for c in (rise, fall)}
    entry, exit_ = spot("R_100", 1_700_000_001), spot("R_100", 1_700_000_004)
    if entry == exit_:
        assert statuses == {ContractStatus.LOST}
    else:
        assert statuses == {ContractStatus.WON, ContractStatus.LOST}


async def test_sell_at_market(fake: FakeDeriv, broker: DerivBroker, clock: Clock) -> None:
    contract = await broker.buy_contract("R_50", ContractDirection.FALL, Decimal("10"), 5, "m")
    clock.now += 30
    sold = await broker.sell_contract(contract.contract_id)
    assert sold.status is ContractStatus.SOLD
    assert sold.sell_price in {Decimal("7.80"), Decimal("9.75"), Decimal("11.70")}
    assert sold.profit == sold.sell_price - Decimal("10")
    assert sold.balance_after == Decimal("90") + sold.sell_price
    with pytest.raises(BrokerRejected) as info:
        await broker.sell_contract(contract.contract_id)
    assert info.value.broker_code == "InvalidSellContractProposal"


async def test_sell_below_minimum_is_rejected(broker: DerivBroker, clock: Clock) -> None:
    contract = await broker.buy_contract("R_50", ContractDirection.RISE, Decimal("10"), 5, "m")
    with pytest.raises(BrokerRejected) as info:
        await broker.sell_contract(contract.contract_id, min_price=Decimal("1000"))
    assert info.value.broker_code == "PriceMoved"


async def test_insufficient_balance(broker: DerivBroker) -> None:
    with pytest.raises(BrokerRejected) as info:
        await broker.buy_contract("R_50", ContractDirection.RISE, Decimal("500"), 5, "t")
    assert info.value.code == "BROKER_REJECTED"
    assert info.value.broker_code == "InsufficientBalance"


async def test_price_above_the_callers_maximum_is_refused(broker: DerivBroker) -> None:
    await broker.authorize()
    proposal = await broker.client.proposal(
        symbol="R_50",
        direction=ContractDirection.RISE,
        amount=Decimal("10"),
        duration=5,
        duration_unit="t",
        currency="USD",
    )
    with pytest.raises(BrokerRejected) as info:
        await broker.client.buy(proposal.proposal_id, max_price=Decimal("9.99"))
    assert info.value.broker_code == "PriceMoved"


async def test_invalid_contract_requests(broker: DerivBroker) -> None:
    with pytest.raises(BrokerRejected) as info:
        await broker.buy_contract("NOPE", ContractDirection.RISE, Decimal("10"), 5, "t")
    assert info.value.broker_code == "InvalidSymbol"
    with pytest.raises(BrokerRejected) as info:
        await broker.buy_contract("R_50", ContractDirection.RISE, Decimal("10"), 50, "t")
    assert info.value.broker_code == "ContractCreationFailure"
    with pytest.raises(DomainError):  # caught before anything is sent
        await broker.buy_contract("R_50", ContractDirection.RISE, Decimal("-1"), 5, "t")


async def test_place_order_buys_a_contract_and_cancel_is_refused(broker: DerivBroker) -> None:
    order = await broker.place_order(
        OrderRequest(
            "R_50",
            OrderSide.SELL,
            Decimal("5"),
            options={"duration": "2", "duration_unit": "m"},
        )
    )
    assert order.status is OrderStatus.FILLED
    contract = await broker.contract(order.order_id)
    assert contract.direction is ContractDirection.FALL
    with pytest.raises(DomainError) as missing:
        await broker.place_order(OrderRequest("R_50", OrderSide.BUY, Decimal("5")))
    assert missing.value.field == "duration"
    with pytest.raises(BrokerRejected):
        await broker.cancel_order(order.order_id)


async def test_history_is_the_deterministic_tick_stream(broker: DerivBroker, clock: Clock) -> None:
    ticks = await broker.client.ticks_history("R_50", count=5)
    now = int(clock.now)
    assert [t.price for t in ticks] == [spot("R_50", e) for e in range(now - 4, now + 1)]
    assert int(ticks[-1].time.timestamp()) == now
    candles = await broker.client.candles("R_50", granularity=60, count=3)
    assert len(candles) == 3
    for c in candles:
        assert c.low <= min(c.open, c.close) <= max(c.open, c.close) <= c.high
    with pytest.raises(DomainError):
        await broker.client.candles("R_50", granularity=61)


async def test_rate_limit_is_retried_then_succeeds(fake: FakeDeriv, broker: DerivBroker) -> None:
    await broker.authorize()
    fake.faults.error("RateLimit", times=2, match="balance")
    assert (await broker.balances())[0].total == Decimal("100")
    assert fake.faults.count("balance") == 3


async def test_rate_limit_exhausted_is_unavailable(fake: FakeDeriv, broker: DerivBroker) -> None:
    await broker.authorize()
    fake.faults.error("RateLimit", times=10, match="balance")
    with pytest.raises(BrokerUnavailable) as info:
        await broker.balances()
    assert info.value.code == "BROKER_UNAVAILABLE"
    assert fake.faults.count("balance") == FAST.max_attempts


async def test_dropped_connection_reconnects_and_reauthorizes(
    fake: FakeDeriv, broker: DerivBroker
) -> None:
    await broker.authorize()
    fake.faults.drop(match="balance")
    assert (await broker.balances())[0].total == Decimal("100")  # needs the session back
    assert fake.connections_opened == 2
    assert fake.faults.count("authorize") == 2


async def test_dropped_buy_is_not_repeated(fake: FakeDeriv, broker: DerivBroker) -> None:
    await broker.authorize()
    fake.faults.drop(match="buy")
    with pytest.raises(BrokerUnavailable, match="outcome is unknown"):
        await broker.buy_contract("R_50", ContractDirection.RISE, Decimal("10"), 5, "t")
    assert fake.faults.count("buy") == 1
    # The next call reconnects and works.
    assert (await broker.balances())[0].total == Decimal("100")


async def test_slow_server_does_not_hang(fake: FakeDeriv) -> None:
    token = fake.add_account("CR9", balance=Decimal("1"))
    policy = RetryPolicy(
        max_attempts=5, base_delay=0.01, max_delay=0.02, attempt_timeout=0.2, deadline=0.8
    )
    async with DerivBroker.connect(APP_ID, token, url=fake.url, policy=policy) as b:
        await b.authorize()
        fake.faults.delay(30, times=10, match="balance")
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable):
            await b.balances()
        assert time.monotonic() - started < 1.5


async def test_unreachable_server_is_unavailable_quickly(fake: FakeDeriv) -> None:
    url = fake.url
    await fake.stop()
    started = time.monotonic()
    async with DerivClient(APP_ID, url=url, policy=FAST) as client:
        with pytest.raises(BrokerUnavailable):
            await client.ping()
    assert time.monotonic() - started < 2


async def test_sandbox_oauth_page_redirects_with_tokens_that_work(clock: Clock) -> None:
    async with FakeDeriv(
        clock=clock,
        app_ids={APP_ID},
        oauth_redirect_uri="http://app.local/deriv/callback",
        demo_email="demo@example.com",
    ) as fake:
        fake.add_account("CR7", currency="USD", email="demo@example.com")
        fake.add_account("VRTC7", currency="USD", email="demo@example.com")
        async with httpx.AsyncClient() as http:
            response = await http.get(fake.oauth_url, params={"app_id": APP_ID})
        assert response.status_code == 302
        location = response.headers["location"]
        assert location.startswith("http://app.local/deriv/callback?")
        accounts = parse_deriv_redirect(location)
        assert [(a.account, a.currency) for a in accounts] == [("CR7", "USD"), ("VRTC7", "USD")]
        async with DerivBroker.connect(APP_ID, accounts[1].token, url=fake.url, policy=FAST) as b:
            assert (await b.authorize()).loginid == "VRTC7"


async def test_hanging_reauthorization_is_bounded_and_recovers(fake: FakeDeriv) -> None:
    token = fake.add_account("CR10", balance=Decimal("3"))
    policy = RetryPolicy(
        max_attempts=3, base_delay=0.01, max_delay=0.02, attempt_timeout=0.2, deadline=1
    )
    async with DerivBroker.connect(APP_ID, token, url=fake.url, policy=policy) as b:
        await b.authorize()
        fake.faults.drop(match="balance")
        fake.faults.delay(30, times=3, match="authorize")
        with pytest.raises(BrokerUnavailable):
            await b.balances()
        fake.faults.clear()
        fake.faults.release()
        assert (await b.balances())[0].total == Decimal("3")
