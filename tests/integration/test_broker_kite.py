"""Kite adapter against the local fake Kite Connect server."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal

import httpx
import pytest

from tradegraph.brokers.adapters.kite import (
    KiteBroker,
    kite_login_url,
    kite_token_expiry,
    parse_kite_redirect,
)
from tradegraph.brokers.adapters.retry import RetryPolicy
from tradegraph.brokers.protocol import (
    Broker,
    BrokerAuthError,
    BrokerRejected,
    BrokerUnavailable,
    OrderRequest,
    OrderSide,
    OrderStatus,
    OrderType,
    PositionKind,
)
from tradegraph.brokers.sandbox import FakeKite

KEY, SECRET, USER = "kitekey1", "kitesecret1", "AB1234"
FAST = RetryPolicy(
    max_attempts=3,
    base_delay=0.01,
    max_delay=0.02,
    connect_timeout=1,
    attempt_timeout=1,
    deadline=3,
)
# 2024-03-10 10:00 IST
LOGIN_TS = datetime(2024, 3, 10, 4, 30, tzinfo=UTC).timestamp()


class Clock:
    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock(LOGIN_TS)


@pytest.fixture
def fake(clock: Clock) -> FakeKite:
    kite = FakeKite(
        clock=clock, prices={"NSE:INFY": Decimal("1500.50"), "NSE:TCS": Decimal("3900")}
    )
    kite.register_app(KEY, SECRET)
    kite.add_user(USER, cash=Decimal("10000"))
    kite.add_holding(USER, "NSE:TCS", 3, Decimal("3500"))
    return kite


def make(fake: FakeKite, *, secret: str = SECRET, policy: RetryPolicy = FAST) -> KiteBroker:
    return KiteBroker(
        KEY,
        api_secret=secret,
        base_url="http://kite.test",
        transport=fake.transport(),
        policy=policy,
    )


@pytest.fixture
async def kite(fake: FakeKite) -> AsyncIterator[KiteBroker]:
    async with make(fake) as broker:
        await broker.exchange_request_token(fake.issue_request_token(KEY, USER))
        yield broker


async def test_exchange_request_token(fake: FakeKite) -> None:
    async with make(fake) as broker:
        session = await broker.exchange_request_token(fake.issue_request_token(KEY, USER))
        assert session.user_id == USER
        assert session.login_time == datetime.fromtimestamp(LOGIN_TS, UTC)
        assert session.expires_at == kite_token_expiry(session.login_time)
        assert session.expires_at == datetime(2024, 3, 11, 0, 30, tzinfo=UTC)  # 06:00 IST
        assert session.access_token not in repr(session)
        assert isinstance(broker, Broker)
        assert (await broker.balances())[0].available == Decimal("10000")


async def test_wrong_secret_fails_the_checksum_and_burns_the_token(fake: FakeKite) -> None:
    request_token = fake.issue_request_token(KEY, USER)
    async with make(fake, secret="not-the-secret") as broker:
        with pytest.raises(BrokerAuthError) as info:
            await broker.exchange_request_token(request_token)
    assert info.value.code == "BROKER_AUTH_FAILED"
    assert info.value.broker_code == "TokenException"
    assert "not-the-secret" not in info.value.message
    async with make(fake) as broker:  # single use: even the right secret is too late now
        with pytest.raises(BrokerAuthError):
            await broker.exchange_request_token(request_token)


async def test_request_token_is_single_use(fake: FakeKite) -> None:
    request_token = fake.issue_request_token(KEY, USER)
    async with make(fake) as broker:
        await broker.exchange_request_token(request_token)
        with pytest.raises(BrokerAuthError):
            await broker.exchange_request_token(request_token)


async def test_stale_request_token_is_refused(fake: FakeKite, clock: Clock) -> None:
    request_token = fake.issue_request_token(KEY, USER)
    clock.now += 600
    async with make(fake) as broker:
        with pytest.raises(BrokerAuthError):
            await broker.exchange_request_token(request_token)


async def test_the_fake_enforces_version_and_token_headers(
    fake: FakeKite, kite: KiteBroker
) -> None:
    async with httpx.AsyncClient(transport=fake.transport(), base_url="http://kite.test") as http:
        no_version = await http.get("/portfolio/holdings", headers={"Authorization": "token x:y"})
        assert no_version.status_code == 400
        bad_token = await http.get(
            "/portfolio/holdings",
            headers={"X-Kite-Version": "3", "Authorization": f"token {KEY}:forged"},
        )
        assert bad_token.status_code == 403
        assert bad_token.json()["error_type"] == "TokenException"


async def test_access_token_dies_at_0600_ist(kite: KiteBroker, clock: Clock) -> None:
    clock.now = datetime(2024, 3, 11, 0, 29, 59, tzinfo=UTC).timestamp()  # 05:59:59 IST
    assert await kite.holdings()
    clock.now = datetime(2024, 3, 11, 0, 30, tzinfo=UTC).timestamp()  # 06:00 IST
    with pytest.raises(BrokerAuthError):
        await kite.holdings()


async def test_calls_without_a_session_are_refused_locally(fake: FakeKite) -> None:
    async with make(fake) as broker:
        with pytest.raises(BrokerAuthError):
            await broker.orders()
    assert fake.faults.count("/orders") == 0


async def test_market_order_fills_and_shows_in_portfolio(kite: KiteBroker) -> None:
    order = await kite.place_order(
        OrderRequest("NSE:INFY", OrderSide.BUY, Decimal(2), client_order_id="tg-1")
    )
    assert order.status is OrderStatus.FILLED
    assert (order.filled_quantity, order.average_price) == (Decimal(2), Decimal("1500.5"))
    assert order.client_order_id == "tg-1"
    [balance] = await kite.balances()
    assert balance.available == Decimal("6999")
    assert balance.total == balance.available + balance.locked == Decimal("10000")
    portfolio = {(p.symbol, p.kind): p for p in await kite.positions()}
    assert portfolio[("NSE:TCS", PositionKind.HOLDING)].quantity == Decimal(3)
    assert portfolio[("NSE:INFY", PositionKind.POSITION)].quantity == Decimal(2)
    assert [o.order_id for o in await kite.orders()] == [order.order_id]


async def test_limit_order_rests_and_cancels(kite: KiteBroker) -> None:
    order = await kite.place_order(
        OrderRequest("NSE:INFY", OrderSide.BUY, Decimal(1), OrderType.LIMIT, price=Decimal("1400"))
    )
    assert (order.status, order.venue_status) == (OrderStatus.NEW, "OPEN")
    cancelled = await kite.cancel_order(order.order_id)
    assert cancelled.status is OrderStatus.CANCELED
    # A repeated cancel (e.g. after a lost reply) reports the cancelled order, not an error.
    assert (await kite.cancel_order(order.order_id)).status is OrderStatus.CANCELED


async def test_cancel_of_a_filled_order_is_rejected(kite: KiteBroker) -> None:
    order = await kite.place_order(OrderRequest("NSE:INFY", OrderSide.BUY, Decimal(1)))
    with pytest.raises(BrokerRejected) as info:
        await kite.cancel_order(order.order_id)
    assert info.value.broker_code == "OrderException"


async def test_insufficient_funds_is_a_rejected_order(kite: KiteBroker) -> None:
    order = await kite.place_order(OrderRequest("NSE:INFY", OrderSide.BUY, Decimal(100)))
    assert order.status is OrderStatus.REJECTED
    assert order.status_message and "Insufficient funds" in order.status_message


async def test_invalid_input_is_rejected(kite: KiteBroker) -> None:
    with pytest.raises(BrokerRejected) as info:
        await kite.place_order(OrderRequest("NSE:NOPE", OrderSide.BUY, Decimal(1)))
    assert info.value.broker_code == "InputException"
    with pytest.raises(BrokerRejected):
        await kite.place_order(
            OrderRequest("NSE:INFY", OrderSide.BUY, Decimal(1), options={"product": "XYZ"})
        )


async def test_throttled_reads_are_retried(fake: FakeKite, kite: KiteBroker) -> None:
    fake.faults.status(429, times=2, retry_after=0.05, match="/portfolio/holdings")
    started = time.monotonic()
    assert len(await kite.holdings()) == 1
    assert time.monotonic() - started >= 0.1  # Retry-After honoured twice
    assert fake.faults.count("/portfolio/holdings") == 3


async def test_server_errors_on_reads_are_retried(fake: FakeKite, kite: KiteBroker) -> None:
    fake.faults.status(503, times=2, match="/user/margins")
    assert (await kite.balances())[0].asset == "INR"
    assert fake.faults.count("/user/margins") == 3


async def test_retries_exhausted(fake: FakeKite, kite: KiteBroker) -> None:
    fake.faults.status(500, times=10, match="/orders")
    with pytest.raises(BrokerUnavailable) as info:
        await kite.orders()
    assert info.value.code == "BROKER_UNAVAILABLE"
    assert fake.faults.count("GET /orders") == FAST.max_attempts


async def test_order_placement_is_not_repeated_after_a_server_error(
    fake: FakeKite, kite: KiteBroker
) -> None:
    fake.faults.status(500, match="/orders/regular")
    with pytest.raises(BrokerUnavailable, match="outcome is unknown"):
        await kite.place_order(OrderRequest("NSE:INFY", OrderSide.BUY, Decimal(1)))
    assert fake.faults.count("POST /orders/regular") == 1


async def test_order_placement_is_retried_when_throttled(fake: FakeKite, kite: KiteBroker) -> None:
    fake.faults.status(429, retry_after=0, match="/orders/regular")
    order = await kite.place_order(OrderRequest("NSE:INFY", OrderSide.BUY, Decimal(1)))
    assert order.status is OrderStatus.FILLED
    assert fake.faults.count("POST /orders/regular") == 2
    assert len(await kite.orders()) == 1  # exactly one order placed


async def test_logout(fake: FakeKite, kite: KiteBroker) -> None:
    await kite.invalidate_session()
    with pytest.raises(BrokerAuthError):
        await kite.holdings()


async def test_over_a_real_socket_with_a_slow_response(fake: FakeKite) -> None:
    base_url = await fake.start()
    try:
        policy = RetryPolicy(
            max_attempts=5, base_delay=0.01, max_delay=0.02, attempt_timeout=0.2, deadline=0.8
        )
        async with KiteBroker(KEY, api_secret=SECRET, base_url=base_url, policy=policy) as b:
            await b.exchange_request_token(fake.issue_request_token(KEY, USER))
            assert len(await b.holdings()) == 1
            fake.faults.delay(30, times=10, match="/portfolio/holdings")
            started = time.monotonic()
            with pytest.raises(BrokerUnavailable):
                await b.holdings()
            assert time.monotonic() - started < 1.5
    finally:
        await fake.stop()


async def test_connection_refused_is_unavailable(fake: FakeKite) -> None:
    base_url = await fake.start()
    await fake.stop()
    async with KiteBroker(KEY, api_secret=SECRET, base_url=base_url, policy=FAST) as b:
        with pytest.raises(BrokerUnavailable, match="could not connect"):
            await b.exchange_request_token("abc")


async def test_sandbox_login_redirect_round_trip(fake: FakeKite) -> None:
    fake.default_user = USER
    url = kite_login_url(
        KEY, redirect_params={"state": "xyz"}, base_url="http://kite.test/connect/login"
    )
    async with httpx.AsyncClient(transport=fake.transport()) as http:
        response = await http.get(url)
    assert response.status_code == 302
    redirect = parse_kite_redirect(response.headers["location"])
    assert redirect.params == {"state": "xyz"}
    async with make(fake) as broker:
        assert (await broker.exchange_request_token(redirect.request_token)).user_id == USER
