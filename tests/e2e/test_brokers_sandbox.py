"""The newcomer's path in sandbox mode, over real HTTP against a running server: link
Deriv, Kite and BingX from "GraphiQL" using the sandbox callback page, trade, read the
summary and see FULL access. No real broker and no internet involved.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Leg, make_settings
from tradegraph.audit.service import AuditLog
from tradegraph.brokers.sandbox import SANDBOX_BINGX_API_KEY, SANDBOX_BINGX_SECRET
from tradegraph.brokers.service import BrokerService
from tradegraph.config import Settings
from tradegraph.db import Database
from tradegraph.metrics import Metrics
from tradegraph.security.vault import Keyring


@pytest.fixture
def settings(tmp_path: Path, leg: Leg) -> Settings:
    return make_settings(tmp_path, leg, broker_sandbox=True)


async def graphql(
    http: httpx.AsyncClient, query: str, variables: dict[str, Any] | None = None
) -> dict[str, Any]:
    response = await http.post("/graphql", json={"query": query, "variables": variables or {}})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert "errors" not in body, body
    return body["data"]


async def test_link_trade_and_summarize_from_graphiql(live_server: str) -> None:
    base = f"http://{live_server}"
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        session = await graphql(
            http,
            """mutation { register(input: {email: "newcomer@example.com",
               password: "correct horse battery", displayName: "New"}) {
               accessToken errors { code } } }""",
        )
        http.headers["authorization"] = f"Bearer {session['register']['accessToken']}"

        found = await graphql(
            http, "{ brokerProviders { provider configured sandbox } brokerRedirectUris }"
        )
        assert all(p["configured"] and p["sandbox"] for p in found["brokerProviders"])
        uris = found["brokerRedirectUris"]

        async def oauth(provider: str, suffix: str) -> list[dict[str, Any]]:
            redirect = next(u for u in uris if u.endswith(suffix))
            started = (
                await graphql(
                    http,
                    """mutation($p: BrokerProvider!, $r: String!) {
                       startBrokerLink(input: {provider: $p, redirectUri: $r}) {
                       authorizationUrl state errors { code } } }""",
                    {"p": provider, "r": redirect},
                )
            )["startBrokerLink"]
            # The browser: broker login page -> redirect -> the sandbox callback page.
            async with httpx.AsyncClient(follow_redirects=True) as browser:
                page = await browser.get(
                    started["authorizationUrl"], headers={"accept": "application/json"}
                )
                html = await browser.get(page.json()["callbackUrl"])
            assert page.status_code == 200 and page.json()["callbackUrl"].startswith(redirect)
            assert "completeBrokerLink" in html.text
            done = (
                await graphql(
                    http,
                    """mutation($s: String!, $u: String!) {
                       completeBrokerLink(input: {state: $s, callbackUrl: $u}) {
                       links { id accountReference status } errors { code message } } }""",
                    {"s": started["state"], "u": page.json()["callbackUrl"]},
                )
            )["completeBrokerLink"]
            assert done["errors"] == []
            links: list[dict[str, Any]] = done["links"]
            return links

        deriv = await oauth("DERIV", "/deriv/callback")
        kite = await oauth("ZERODHA", "/kite/callback")
        assert {link["accountReference"] for link in deriv} == {"CR900001", "VRTC900001"}
        assert kite[0]["status"] == "ACTIVE"

        bingx = await graphql(
            http,
            """mutation($k: String!, $s: String!) { linkBrokerApiKey(input: {provider: BINGX,
               apiKey: $k, apiSecret: $s}) { link { status } errors { code } } }""",
            {"k": SANDBOX_BINGX_API_KEY, "s": SANDBOX_BINGX_SECRET},
        )
        assert bingx["linkBrokerApiKey"]["errors"] == []

        real = next(link["id"] for link in deriv if link["accountReference"] == "CR900001")
        bought = await graphql(
            http,
            """mutation($id: ID!) { buyContract(input: {linkId: $id, symbol: "R_100",
               direction: RISE, stake: "25", duration: 10, durationUnit: MINUTES}) {
               contract { id status buyPrice } errors { code message } } }""",
            {"id": real},
        )
        assert bought["buyContract"]["errors"] == []
        assert bought["buyContract"]["contract"]["buyPrice"] == "25.00"

        me = await graphql(
            http,
            """{ me { accessLevel summary(currency: "USD") {
                 balance openPositions currency stale } } }""",
        )
        assert me["me"]["accessLevel"] == "FULL"
        summary = me["me"]["summary"]
        # 9975 USD (Deriv after the stake) + 6000 USD (500000 INR) + 5000 USDT.
        assert summary == {
            "balance": "20975.00",
            "openPositions": 2,
            "currency": "USD",
            "stale": False,
        }


async def test_sandbox_refuses_to_start_in_production(tmp_path: Path) -> None:
    settings = Settings(
        env="production",
        broker_sandbox=True,
        jwt_secret="p" * 40,
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'x.db'}",
    )
    db = Database(settings.resolved_database_url)
    brokers = BrokerService(
        settings=settings,
        db=db,
        audit=AuditLog(db),
        keyring=Keyring.generate(),
        metrics=Metrics(),
    )
    try:
        with pytest.raises(RuntimeError, match="must not be set in production"):
            await brokers.start()
        assert brokers.sandbox is None
    finally:
        await db.dispose()
