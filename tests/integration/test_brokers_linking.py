"""Broker linking through GraphQL against the sandbox fakes (both legs).

Each OAuth test follows the fake broker's real login redirect, exactly as a browser would,
and hands the resulting callback URL to completeBrokerLink.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from tests.conftest import Leg, make_settings
from tests.helpers import gql, register
from tradegraph.audit.models import AuditEntry
from tradegraph.brokers.models import BrokerLink, BrokerLinkState
from tradegraph.brokers.sandbox import SANDBOX_BINGX_API_KEY, SANDBOX_BINGX_SECRET
from tradegraph.config import Settings
from tradegraph.services import Services

REDIRECT = "https://app.example.com/brokers/callback"

START = """
mutation($input: StartBrokerLinkInput!) {
  startBrokerLink(input: $input) { authorizationUrl state expiresAt errors { code field message } }
}"""
COMPLETE = """
mutation($input: CompleteBrokerLinkInput!) {
  completeBrokerLink(input: $input) {
    links { id provider method status accountReference currency scopes isVirtual linkedAt
            lastCheckedAt expiresAt }
    errors { code field message }
  }
}"""
API_KEY = """
mutation($input: LinkBrokerApiKeyInput!) {
  linkBrokerApiKey(input: $input) {
    link { id provider method status accountReference currency scopes }
    errors { code field message }
  }
}"""
LINKS = """
query($rev: Boolean) {
  brokerLinks(includeRevoked: $rev) {
    id provider status statusReason accountReference scopes expiresAt revokedAt
  }
}"""
UNLINK = """
mutation($id: ID!) {
  unlinkBroker(input: {linkId: $id}) { link { id status revokedAt } errors { code message } }
}"""


@pytest.fixture
def settings(tmp_path: Path, leg: Leg) -> Settings:
    return make_settings(tmp_path, leg, broker_sandbox=True, broker_redirect_uris=REDIRECT)


async def start_link(client: httpx.AsyncClient, token: str, provider: str) -> dict[str, Any]:
    body = await gql(
        client,
        START,
        {"input": {"provider": provider, "redirectUri": REDIRECT}},
        token=token,
    )
    payload: dict[str, Any] = body["data"]["startBrokerLink"]
    assert payload["errors"] == [], payload
    return payload


async def broker_login(authorization_url: str) -> str:
    """Open the fake broker's login page like a browser; return where it redirects."""
    async with httpx.AsyncClient() as browser:
        response = await browser.get(authorization_url)
    assert response.status_code in (302, 307), response.text
    return response.headers["location"]


async def complete(
    client: httpx.AsyncClient, token: str, state: str, callback_url: str
) -> dict[str, Any]:
    body = await gql(
        client,
        COMPLETE,
        {"input": {"state": state, "callbackUrl": callback_url}},
        token=token,
    )
    payload: dict[str, Any] = body["data"]["completeBrokerLink"]
    return payload


async def link_deriv(client: httpx.AsyncClient, token: str) -> list[dict[str, Any]]:
    started = await start_link(client, token, "DERIV")
    callback = await broker_login(started["authorizationUrl"])
    done = await complete(client, token, started["state"], callback)
    assert done["errors"] == [], done
    links: list[dict[str, Any]] = done["links"]
    return links


async def link_kite(client: httpx.AsyncClient, token: str) -> dict[str, Any]:
    started = await start_link(client, token, "ZERODHA")
    callback = await broker_login(started["authorizationUrl"])
    done = await complete(client, token, started["state"], callback)
    assert done["errors"] == [], done
    link: dict[str, Any] = done["links"][0]
    return link


async def link_bingx(
    client: httpx.AsyncClient,
    token: str,
    api_key: str = SANDBOX_BINGX_API_KEY,
    secret: str = SANDBOX_BINGX_SECRET,
) -> dict[str, Any]:
    body = await gql(
        client,
        API_KEY,
        {"input": {"provider": "BINGX", "apiKey": api_key, "apiSecret": secret}},
        token=token,
    )
    payload: dict[str, Any] = body["data"]["linkBrokerApiKey"]
    return payload


async def audit_actions(services: Services) -> list[str]:
    async with services.db.session() as session:
        return list(await session.scalars(select(AuditEntry.action).order_by(AuditEntry.seq)))


async def test_deriv_link_flow_validates_every_token_and_links_each_account(
    client: httpx.AsyncClient, services: Services
) -> None:
    alice = await register(client)
    started = await start_link(client, alice["accessToken"], "DERIV")
    assert started["authorizationUrl"].startswith(services.brokers.ctx.endpoints.deriv_oauth_url)
    assert "app_id=1089" in started["authorizationUrl"]
    callback = await broker_login(started["authorizationUrl"])
    assert "acct1=" in callback and "token1=" in callback and "acct2=" in callback

    done = await complete(client, alice["accessToken"], started["state"], callback)
    assert done["errors"] == []
    by_account = {link["accountReference"]: link for link in done["links"]}
    assert set(by_account) == {"CR900001", "VRTC900001"}
    real, demo = by_account["CR900001"], by_account["VRTC900001"]
    assert real["provider"] == "DERIV" and real["method"] == "OAUTH"
    assert real["status"] == "ACTIVE" and real["currency"] == "USD"
    assert real["scopes"] == ["read", "trade"]  # what Deriv's authorize reported
    assert real["isVirtual"] is False and demo["isVirtual"] is True
    assert real["expiresAt"] is None and real["lastCheckedAt"] is not None

    listed = await gql(client, LINKS, token=alice["accessToken"])
    assert {link["accountReference"] for link in listed["data"]["brokerLinks"]} == set(by_account)
    assert (await audit_actions(services)).count("broker.linked") == 2


async def test_deriv_token_of_another_account_is_refused_and_nothing_stored(
    client: httpx.AsyncClient, services: Services
) -> None:
    alice = await register(client)
    started = await start_link(client, alice["accessToken"], "DERIV")
    callback = await broker_login(started["authorizationUrl"])
    # Swap the tokens: each account now claims the other's token.
    params = dict(httpx.URL(callback).params)
    params["token1"], params["token2"] = params["token2"], params["token1"]
    body = await gql(
        client,
        COMPLETE,
        {"input": {"state": started["state"], "params": params}},
        token=alice["accessToken"],
    )
    payload = body["data"]["completeBrokerLink"]
    assert payload["links"] == []
    assert payload["errors"][0]["code"] == "BROKER_AUTH_FAILED"
    async with services.db.session() as session:
        assert await session.scalar(select(func.count()).select_from(BrokerLink)) == 0
    assert "broker.link_failed" in await audit_actions(services)


async def test_revoked_deriv_token_is_refused(
    client: httpx.AsyncClient, services: Services
) -> None:
    alice = await register(client)
    started = await start_link(client, alice["accessToken"], "DERIV")
    callback = await broker_login(started["authorizationUrl"])
    params = dict(httpx.URL(callback).params)
    assert services.brokers.sandbox is not None
    services.brokers.sandbox.fakes.deriv.revoke_token(params["token2"])
    done = await complete(client, alice["accessToken"], started["state"], callback)
    assert done["errors"][0]["code"] == "BROKER_AUTH_FAILED"
    assert done["links"] == []


async def test_kite_link_exchanges_request_token_and_expires_at_six_ist(
    client: httpx.AsyncClient, services: Services
) -> None:
    # 2024-03-10 10:00 IST: the session dies at 2024-03-11 06:00 IST (00:30 UTC).
    login = datetime(2024, 3, 10, 4, 30, tzinfo=UTC)
    assert services.brokers.sandbox is not None
    services.brokers.sandbox.fakes.kite.clock = login.timestamp
    services.brokers.clock.set(login)
    alice = await register(client)
    started = await start_link(client, alice["accessToken"], "ZERODHA")
    url = httpx.URL(started["authorizationUrl"])
    assert url.params["v"] == "3" and url.params["api_key"] == "sandboxkite"
    callback = await broker_login(started["authorizationUrl"])
    assert "request_token=" in callback and f"state={started['state']}" in callback

    link = (await complete(client, alice["accessToken"], started["state"], callback))["links"][0]
    assert link["provider"] == "ZERODHA" and link["accountReference"] == "SB0001"
    assert link["currency"] == "INR" and link["status"] == "ACTIVE"
    assert link["expiresAt"] == "2024-03-11T00:30:00+00:00"

    services.brokers.clock.set(datetime(2024, 3, 11, 0, 29, 59, tzinfo=UTC))
    links = (await gql(client, LINKS, token=alice["accessToken"]))["data"]["brokerLinks"]
    assert links[0]["status"] == "ACTIVE"

    services.brokers.clock.set(datetime(2024, 3, 11, 0, 30, tzinfo=UTC))
    links = (await gql(client, LINKS, token=alice["accessToken"]))["data"]["brokerLinks"]
    assert links[0]["status"] == "EXPIRED"  # shown at once, before any job ran

    assert await services.brokers.linking.sweep() == {"refreshed": 0, "expired": 1}
    assert await services.brokers.linking.sweep() == {"refreshed": 0, "expired": 0}
    assert (await audit_actions(services)).count("broker.link_expired") == 1
    async with services.db.session() as session:
        row = (await session.scalars(select(BrokerLink))).one()
    assert row.status.value == "EXPIRED"


async def test_kite_redirect_of_another_login_is_refused(
    client: httpx.AsyncClient, services: Services
) -> None:
    alice = await register(client)
    first = await start_link(client, alice["accessToken"], "ZERODHA")
    second = await start_link(client, alice["accessToken"], "ZERODHA")
    callback = await broker_login(first["authorizationUrl"])  # carries first's state
    done = await complete(client, alice["accessToken"], second["state"], callback)
    assert done["errors"][0]["code"] == "BROKER_AUTH_FAILED"
    assert done["links"] == []


async def test_state_is_single_use(client: httpx.AsyncClient, services: Services) -> None:
    alice = await register(client)
    started = await start_link(client, alice["accessToken"], "DERIV")
    callback = await broker_login(started["authorizationUrl"])
    assert (await complete(client, alice["accessToken"], started["state"], callback))[
        "errors"
    ] == []
    again = await complete(client, alice["accessToken"], started["state"], callback)
    assert again["errors"] == [
        {
            "code": "STATE_ALREADY_USED",
            "field": "state",
            "message": "this broker login was already completed; start a new one",
        }
    ]


async def test_state_expires_after_ten_minutes(
    client: httpx.AsyncClient, services: Services
) -> None:
    alice = await register(client)
    now = datetime.now(UTC)
    services.brokers.clock.set(now)
    started = await start_link(client, alice["accessToken"], "DERIV")
    assert datetime.fromisoformat(started["expiresAt"]) == now + timedelta(minutes=10)
    callback = await broker_login(started["authorizationUrl"])
    services.brokers.clock.set(now + timedelta(minutes=10, seconds=1))
    late = await complete(client, alice["accessToken"], started["state"], callback)
    assert late["errors"][0]["code"] == "STATE_EXPIRED"
    assert late["links"] == []


async def test_state_of_another_user_is_unknown_and_stays_usable_by_its_owner(
    client: httpx.AsyncClient, services: Services
) -> None:
    alice = await register(client)
    mallory = await register(client, email="mallory@example.com", display_name="Mallory")
    started = await start_link(client, alice["accessToken"], "DERIV")
    callback = await broker_login(started["authorizationUrl"])
    stolen = await complete(client, mallory["accessToken"], started["state"], callback)
    assert stolen["errors"][0]["code"] == "INVALID_STATE"
    assert stolen["links"] == []
    mine = await complete(client, alice["accessToken"], started["state"], callback)
    assert mine["errors"] == [] and len(mine["links"]) == 2
    garbage = await complete(client, alice["accessToken"], "not-a-state", callback)
    assert garbage["errors"][0]["code"] == "INVALID_STATE"


async def test_state_is_stored_hashed(client: httpx.AsyncClient, services: Services) -> None:
    alice = await register(client)
    started = await start_link(client, alice["accessToken"], "DERIV")
    async with services.db.session() as session:
        row = (await session.scalars(select(BrokerLinkState))).one()
    assert row.state_hash != started["state"] and started["state"] not in row.state_hash
    assert row.code_verifier_enc is None  # Deriv's legacy OAuth has no PKCE


@pytest.mark.parametrize(
    "uri",
    [
        "https://evil.example.com/brokers/callback",
        "https://app.example.com/brokers/callback/../../steal",
        "https://app.example.com.evil.com/brokers/callback",
        "https://user:pw@app.example.com/brokers/callback",
        "javascript:alert(1)",
        "",
    ],
)
async def test_redirect_uri_must_be_on_the_allowlist(
    client: httpx.AsyncClient, services: Services, uri: str
) -> None:
    alice = await register(client)
    body = await gql(
        client,
        START,
        {"input": {"provider": "DERIV", "redirectUri": uri}},
        token=alice["accessToken"],
    )
    payload = body["data"]["startBrokerLink"]
    assert payload["authorizationUrl"] is None and payload["state"] is None
    assert payload["errors"][0]["code"] == "REDIRECT_URI_NOT_ALLOWED"
    assert payload["errors"][0]["field"] == "redirectUri"
    async with services.db.session() as session:
        assert await session.scalar(select(func.count()).select_from(BrokerLinkState)) == 0


async def test_allowlist_comparison_ignores_host_case(
    client: httpx.AsyncClient, services: Services
) -> None:
    alice = await register(client)
    body = await gql(
        client,
        START,
        {"input": {"provider": "DERIV", "redirectUri": "HTTPS://App.Example.com/brokers/callback"}},
        token=alice["accessToken"],
    )
    assert body["data"]["startBrokerLink"]["errors"] == []


async def test_bingx_api_key_is_validated_before_it_is_stored(
    client: httpx.AsyncClient, services: Services
) -> None:
    alice = await register(client)
    wrong = await link_bingx(client, alice["accessToken"], secret="definitely-not-the-secret")
    assert wrong["link"] is None
    assert wrong["errors"][0]["code"] == "BROKER_AUTH_FAILED"
    assert wrong["errors"][0]["field"] == "apiSecret"
    assert "definitely-not-the-secret" not in json.dumps(wrong)
    async with services.db.session() as session:
        assert await session.scalar(select(func.count()).select_from(BrokerLink)) == 0

    good = await link_bingx(client, alice["accessToken"])
    assert good["errors"] == []
    assert good["link"]["provider"] == "BINGX" and good["link"]["method"] == "API_KEY"
    assert good["link"]["accountReference"] == "20000001"
    assert good["link"]["currency"] == "USDT" and good["link"]["scopes"] == ["read"]
    actions = await audit_actions(services)
    assert actions.index("broker.link_failed") < actions.index("broker.linked")


async def test_bingx_is_not_an_oauth_provider_and_deriv_has_no_api_key(
    client: httpx.AsyncClient, services: Services
) -> None:
    alice = await register(client)
    body = await gql(
        client,
        START,
        {"input": {"provider": "BINGX", "redirectUri": REDIRECT}},
        token=alice["accessToken"],
    )
    assert body["data"]["startBrokerLink"]["errors"][0]["code"] == "PROVIDER_NOT_SUPPORTED"
    wrong = await link_bingx(client, alice["accessToken"])
    assert wrong["errors"] == []
    body = await gql(
        client,
        API_KEY,
        {"input": {"provider": "DERIV", "apiKey": "abcdefgh", "apiSecret": "abcdefgh"}},
        token=alice["accessToken"],
    )
    assert body["data"]["linkBrokerApiKey"]["errors"][0]["code"] == "PROVIDER_NOT_SUPPORTED"


async def test_one_broker_account_links_to_one_user_only(
    client: httpx.AsyncClient, services: Services
) -> None:
    alice = await register(client)
    bob = await register(client, email="bob@example.com", display_name="Bob")
    assert (await link_bingx(client, alice["accessToken"]))["errors"] == []
    taken = await link_bingx(client, bob["accessToken"])
    assert taken["errors"][0]["code"] == "ACCOUNT_ALREADY_LINKED"
    # Linking it again by its owner just refreshes the same link.
    again = await link_bingx(client, alice["accessToken"])
    assert again["errors"] == []
    async with services.db.session() as session:
        assert await session.scalar(select(func.count()).select_from(BrokerLink)) == 1


async def test_unlink_revokes_and_erases_credentials(
    client: httpx.AsyncClient, services: Services
) -> None:
    alice = await register(client)
    bob = await register(client, email="bob@example.com", display_name="Bob")
    kite = await link_kite(client, alice["accessToken"])
    assert services.brokers.sandbox is not None
    fake = services.brokers.sandbox.fakes.kite
    assert len(fake._sessions) == 1

    denied = await gql(client, UNLINK, {"id": kite["id"]}, token=bob["accessToken"])
    assert denied["data"]["unlinkBroker"]["errors"][0]["code"] == "NOT_FOUND"

    done = await gql(client, UNLINK, {"id": kite["id"]}, token=alice["accessToken"])
    payload = done["data"]["unlinkBroker"]
    assert payload["errors"] == [] and payload["link"]["status"] == "REVOKED"
    assert payload["link"]["revokedAt"] is not None
    assert fake._sessions == {}  # logged out at Kite too
    async with services.db.session() as session:
        row = (await session.scalars(select(BrokerLink))).one()
    assert row.credentials_enc is None

    visible = (await gql(client, LINKS, token=alice["accessToken"]))["data"]["brokerLinks"]
    assert visible == []
    history = await gql(client, LINKS, {"rev": True}, token=alice["accessToken"])
    assert [link["status"] for link in history["data"]["brokerLinks"]] == ["REVOKED"]
    assert "broker.unlinked" in await audit_actions(services)

    # Unlinking twice is harmless; the account can be linked again afterwards.
    again = await gql(client, UNLINK, {"id": kite["id"]}, token=alice["accessToken"])
    assert again["data"]["unlinkBroker"]["errors"] == []
    relinked = await link_kite(client, alice["accessToken"])
    assert relinked["status"] == "ACTIVE" and relinked["id"] == kite["id"]


async def test_linking_needs_a_signed_in_user(client: httpx.AsyncClient) -> None:
    body = await gql(client, START, {"input": {"provider": "DERIV", "redirectUri": REDIRECT}})
    assert body["data"]["startBrokerLink"]["errors"][0]["code"] == "UNAUTHENTICATED"
    links = await gql(client, LINKS)
    assert links["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"


async def test_providers_and_redirect_uris_are_discoverable(
    client: httpx.AsyncClient, services: Services
) -> None:
    alice = await register(client)
    body = await gql(
        client,
        "{ brokerProviders { provider method configured sandbox } brokerRedirectUris }",
        token=alice["accessToken"],
    )
    providers = {p["provider"]: p for p in body["data"]["brokerProviders"]}
    assert providers["DERIV"] == {
        "provider": "DERIV",
        "method": "OAUTH",
        "configured": True,
        "sandbox": True,
    }
    assert providers["BINGX"]["method"] == "API_KEY"
    uris = body["data"]["brokerRedirectUris"]
    assert REDIRECT in uris
    assert any(u.endswith("/deriv/callback") for u in uris)  # the sandbox callback page


async def test_pending_logins_are_capped(client: httpx.AsyncClient, services: Services) -> None:
    alice = await register(client)
    for _ in range(10):
        await start_link(client, alice["accessToken"], "DERIV")
    body = await gql(
        client,
        START,
        {"input": {"provider": "DERIV", "redirectUri": REDIRECT}},
        token=alice["accessToken"],
    )
    assert body["data"]["startBrokerLink"]["errors"][0]["code"] == "RATE_LIMITED"
