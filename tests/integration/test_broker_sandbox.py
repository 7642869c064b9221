"""The in-process broker sandbox: all three fakes, seeded, reachable over real sockets."""

from __future__ import annotations

from decimal import Decimal

import httpx

from tradegraph.brokers.adapters.bingx import BingXBroker
from tradegraph.brokers.adapters.deriv import DerivBroker, deriv_authorize_url, parse_deriv_redirect
from tradegraph.brokers.adapters.kite import KiteBroker, kite_login_url, parse_kite_redirect
from tradegraph.brokers.protocol import ContractDirection, OrderRequest, OrderSide, OrderStatus
from tradegraph.brokers.sandbox import (
    SANDBOX_BINGX_AGENT_API_KEY,
    SANDBOX_BINGX_AGENT_SECRET,
    SANDBOX_BINGX_API_KEY,
    SANDBOX_BINGX_SECRET,
    SANDBOX_DERIV_APP_ID,
    SANDBOX_KITE_API_KEY,
    SANDBOX_KITE_API_SECRET,
    start_broker_sandbox,
)


async def test_sandbox_end_to_end() -> None:
    sandbox = await start_broker_sandbox(
        deriv_redirect_uri="http://app.local/deriv/callback",
        kite_redirect_url="http://app.local/kite/callback",
    )
    try:
        async with httpx.AsyncClient() as http:
            # Deriv: OAuth page -> redirect with tokens -> trade on the websocket.
            url = deriv_authorize_url(SANDBOX_DERIV_APP_ID, base_url=sandbox.deriv_oauth_url)
            location = (await http.get(url)).headers["location"]
            accounts = parse_deriv_redirect(location)
            assert len(accounts) == 2
            async with DerivBroker.connect(
                SANDBOX_DERIV_APP_ID, accounts[0].token, url=sandbox.deriv_ws_url
            ) as deriv:
                contract = await deriv.buy_contract(
                    "R_10", ContractDirection.RISE, Decimal("5"), 1, "m"
                )
                assert contract.buy_price == Decimal("5")

            # Kite: login page -> request_token -> session -> order.
            url = kite_login_url(
                SANDBOX_KITE_API_KEY,
                redirect_params={"state": "abc"},
                base_url=sandbox.kite_login_url,
            )
            redirect = parse_kite_redirect((await http.get(url)).headers["location"])
            assert redirect.params == {"state": "abc"}
        async with KiteBroker(
            SANDBOX_KITE_API_KEY, api_secret=SANDBOX_KITE_API_SECRET, base_url=sandbox.kite_api_url
        ) as kite:
            await kite.exchange_request_token(redirect.request_token)
            order = await kite.place_order(OrderRequest("NSE:TCS", OrderSide.BUY, Decimal(1)))
            assert order.status is OrderStatus.FILLED

        # BingX: user key validates; the agent key sees the referral and the deposit.
        async with BingXBroker(
            SANDBOX_BINGX_API_KEY, SANDBOX_BINGX_SECRET, base_url=sandbox.bingx_api_url
        ) as user:
            account = await user.validate_credentials()
            deposits = await user.deposit_history()
            assert sum(d.amount for d in deposits) == Decimal("250")
        async with BingXBroker(
            SANDBOX_BINGX_AGENT_API_KEY, SANDBOX_BINGX_AGENT_SECRET, base_url=sandbox.bingx_api_url
        ) as agent:
            assert (await agent.invite_relation(account.uid)).invited_by_us
    finally:
        await sandbox.stop()
