"""BingX adapter against the local fake BingX open API."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx
import pytest

from tradegraph.brokers.adapters.bingx import BingXBroker, bingx_signed_params
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
    PositionSide,
)
from tradegraph.brokers.sandbox import FakeBingX

KEY, SECRET, UID = "bx-key", "bx-secret", "3001"
AGENT_KEY, AGENT_SECRET, AGENT_UID = "bx-agent", "bx-agent-secret", "1001"
FAST = RetryPolicy(
    max_attempts=3,
    base_delay=0.01,
    max_delay=0.02,
    connect_timeout=1,
    attempt_timeout=1,
    deadline=3,
)


@pytest.fixture
def fake() -> FakeBingX:
    bx = FakeBingX(prices={"BTC-USDT": Decimal("65000"), "ETH-USDT": Decimal("3200")})
    bx.add_account(KEY, SECRET, uid=UID, balance=Decimal("1000"))
    bx.add_account(AGENT_KEY, AGENT_SECRET, uid=AGENT_UID, balance=Decimal(0))
    return bx


def make(fake: FakeBingX, key: str = KEY, secret: str = SECRET, **kwargs) -> BingXBroker:
    kwargs.setdefault("policy", FAST)
    return BingXBroker(
        key, secret, base_url="http://bingx.test", transport=fake.transport(), **kwargs
    )


@pytest.fixture
async def bingx(fake: FakeBingX) -> AsyncIterator[BingXBroker]:
    async with make(fake) as broker:
        yield broker


async def test_validate_credentials(bingx: BingXBroker) -> None:
    account = await bingx.validate_credentials()
    assert account.uid == UID
    assert account.balance.total == Decimal("1000")
    assert isinstance(bingx, Broker)


async def test_wrong_secret_fails_signature_verification(fake: FakeBingX) -> None:
    async with make(fake, secret="wrong-secret") as broker:
        with pytest.raises(BrokerAuthError) as info:
            await broker.validate_credentials()
    assert info.value.code == "BROKER_AUTH_FAILED"
    assert info.value.broker_code == "100001"
    assert "wrong-secret" not in info.value.message


async def test_unknown_api_key(fake: FakeBingX) -> None:
    async with make(fake, key="nobody") as broker:
        with pytest.raises(BrokerAuthError) as info:
            await broker.validate_credentials()
    assert info.value.broker_code == "100413"


async def test_skewed_clock_is_refused_by_the_timestamp_window(fake: FakeBingX) -> None:
    async with make(fake, clock=lambda: time.time() - 60) as broker:
        with pytest.raises(BrokerUnavailable) as info:  # our clock, not the user's keys
            await broker.validate_credentials()
    assert info.value.broker_code == "100421"
    async with make(fake, clock=lambda: time.time() - 60, recv_window_ms=120_000) as broker:
        assert (await broker.validate_credentials()).uid == UID


async def test_the_fake_rejects_tampered_parameters(fake: FakeBingX) -> None:
    signed = dict(bingx_signed_params({"uid": "1"}, SECRET, int(time.time() * 1000)))
    async with httpx.AsyncClient(transport=fake.transport(), base_url="http://bingx.test") as http:
        path = "/openApi/agent/v1/account/inviteRelationCheck"
        ok = await http.get(path, params=signed, headers={"X-BX-APIKEY": KEY})
        assert ok.json()["code"] == 0
        tampered = await http.get(path, params={**signed, "uid": "2"}, headers={"X-BX-APIKEY": KEY})
        assert tampered.json()["code"] == 100001
        unsigned = {k: v for k, v in signed.items() if k != "signature"}
        missing = await http.get(path, params=unsigned, headers={"X-BX-APIKEY": KEY})
        assert missing.json()["code"] == 100001


async def test_market_order_opens_a_position(bingx: BingXBroker) -> None:
    order = await bingx.place_order(
        OrderRequest("BTC-USDT", OrderSide.BUY, Decimal("0.01"), client_order_id="tg-42")
    )
    assert order.status is OrderStatus.FILLED
    assert (order.filled_quantity, order.average_price) == (Decimal("0.01"), Decimal("65000"))
    assert order.client_order_id == "tg-42"
    [position] = await bingx.positions()
    assert (position.symbol, position.side, position.quantity) == (
        "BTC-USDT",
        PositionSide.LONG,
        Decimal("0.01"),
    )
    [balance] = await bingx.balances()
    assert balance.locked == Decimal("65")  # 650 notional at 10x
    assert balance.available == Decimal("935")

    closing = await bingx.place_order(
        OrderRequest("BTC-USDT", OrderSide.SELL, Decimal("0.01"), options={"positionSide": "LONG"})
    )
    assert closing.status is OrderStatus.FILLED
    assert await bingx.positions() == []


async def test_limit_order_rests_and_cancels(bingx: BingXBroker) -> None:
    order = await bingx.place_order(
        OrderRequest(
            "ETH-USDT", OrderSide.BUY, Decimal("0.5"), OrderType.LIMIT, price=Decimal(3000)
        )
    )
    assert order.status is OrderStatus.NEW
    assert order.price == Decimal(3000)
    cancelled = await bingx.cancel_order(order.order_id, symbol="ETH-USDT")
    assert cancelled.status is OrderStatus.CANCELED
    assert (await bingx.cancel_order(order.order_id, symbol="ETH-USDT")).status is (
        OrderStatus.CANCELED
    )


async def test_rejections(bingx: BingXBroker) -> None:
    with pytest.raises(BrokerRejected) as info:
        await bingx.place_order(OrderRequest("BTC-USDT", OrderSide.BUY, Decimal("1")))
    assert info.value.broker_code == "101204"  # insufficient margin
    with pytest.raises(BrokerRejected) as info:
        await bingx.place_order(OrderRequest("DOGE-USDT", OrderSide.BUY, Decimal("1")))
    assert info.value.broker_code == "80014"
    filled = await bingx.place_order(OrderRequest("ETH-USDT", OrderSide.BUY, Decimal("0.1")))
    with pytest.raises(BrokerRejected):
        await bingx.cancel_order(filled.order_id, symbol="ETH-USDT")
    with pytest.raises(BrokerRejected) as info:
        await bingx.cancel_order("123", symbol="ETH-USDT")
    assert info.value.broker_code == "80016"


async def test_deposit_history_filters_by_time(fake: FakeBingX, bingx: BingXBroker) -> None:
    now = datetime.now(UTC)
    old = int((now - timedelta(days=10)).timestamp() * 1000)
    fake.add_deposit(KEY, Decimal("500"), at_ms=old)
    fake.add_deposit(KEY, Decimal("150.5"))
    fake.add_deposit(KEY, Decimal("75"), status=0)
    recent = await bingx.deposit_history(start_time=now - timedelta(days=5))
    assert sorted(d.amount for d in recent) == [Decimal("75"), Decimal("150.5")]
    assert sum(d.amount for d in recent if d.credited) == Decimal("150.5")
    assert len(await bingx.deposit_history()) == 3


async def test_referral_check(fake: FakeBingX) -> None:
    fake.set_invite(UID, inviter_uid=AGENT_UID, deposit=True)
    fake.set_invite("3002", inviter_uid="9999")
    async with make(fake, AGENT_KEY, AGENT_SECRET) as agent:
        ours = await agent.invite_relation(UID)
        assert (ours.invited_by_us, ours.has_inviter, ours.deposited) == (True, True, True)
        theirs = await agent.invite_relation("3002")
        assert (theirs.invited_by_us, theirs.has_inviter) == (False, True)
        nobody = await agent.invite_relation("3003")
        assert (nobody.invited_by_us, nobody.has_inviter) == (False, False)


async def test_throttled_then_success(fake: FakeBingX, bingx: BingXBroker) -> None:
    fake.faults.status(429, times=2, retry_after=0.05, match="/user/balance")
    assert (await bingx.validate_credentials()).uid == UID
    assert fake.faults.count("/user/balance") == 3


async def test_server_errors_then_success(fake: FakeBingX, bingx: BingXBroker) -> None:
    fake.faults.status(502, times=2, match="/user/positions")
    assert await bingx.positions() == []
    assert fake.faults.count("/user/positions") == 3


async def test_retries_exhausted(fake: FakeBingX, bingx: BingXBroker) -> None:
    fake.faults.status(503, times=10)
    with pytest.raises(BrokerUnavailable) as info:
        await bingx.balances()
    assert info.value.code == "BROKER_UNAVAILABLE"
    assert fake.faults.count("/user/balance") == FAST.max_attempts


async def test_retries_are_resigned_with_a_fresh_timestamp(fake: FakeBingX) -> None:
    """A retry after a long Retry-After must not reuse a timestamp the window now refuses."""
    ticks = iter([1_700_000_000.0, 1_700_000_010.0])
    fake.clock = lambda: 1_700_000_010.0
    fake.faults.status(429, retry_after=0, match="/user/balance")
    async with make(fake, clock=lambda: next(ticks)) as broker:
        assert (await broker.validate_credentials()).uid == UID


async def test_order_placement_is_not_repeated_after_a_server_error(
    fake: FakeBingX, bingx: BingXBroker
) -> None:
    fake.faults.status(500, match="/trade/order")
    with pytest.raises(BrokerUnavailable, match="outcome is unknown"):
        await bingx.place_order(OrderRequest("ETH-USDT", OrderSide.BUY, Decimal("0.1")))
    assert fake.faults.count("POST /openApi/swap/v2/trade/order") == 1


async def test_over_a_real_socket_with_a_slow_response(fake: FakeBingX) -> None:
    async with fake:
        policy = RetryPolicy(
            max_attempts=5, base_delay=0.01, max_delay=0.02, attempt_timeout=0.2, deadline=0.8
        )
        async with BingXBroker(KEY, SECRET, base_url=fake.base_url, policy=policy) as broker:
            assert (await broker.validate_credentials()).uid == UID
            fake.faults.delay(30, times=10)
            started = time.monotonic()
            with pytest.raises(BrokerUnavailable):
                await broker.balances()
            assert time.monotonic() - started < 1.5
