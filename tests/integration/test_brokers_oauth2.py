"""The generic OAuth 2.0 authorization-code provider (authlib, PKCE S256, refresh tokens),
against a small local authorization server that checks what RFC 6749/7636 require.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from sqlalchemy import select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from tests.helpers import register
from tests.integration.test_brokers_linking import audit_actions
from tradegraph.brokers.models import BrokerLink, BrokerLinkState, LinkStatus
from tradegraph.brokers.oauth import OAuth2Flow, OAuth2ProviderConfig
from tradegraph.errors import DomainError
from tradegraph.identity.principal import Principal
from tradegraph.services import Services

REDIRECT = "http://127.0.0.1:8000/brokers/callback"  # the development default allowlist
CLIENT_ID, CLIENT_SECRET = "tradegraph-client", "client-secret-xyz"


class FakeAuthServer:
    """Authorization endpoint + token endpoint with PKCE and refresh tokens."""

    def __init__(self) -> None:
        self.codes: dict[str, dict[str, str]] = {}
        self.refresh_tokens: set[str] = set()
        self.token_requests: list[dict[str, str]] = []
        self.app = Starlette(
            routes=[
                Route("/authorize", self.authorize, methods=["GET"]),
                Route("/token", self.token, methods=["POST"]),
            ]
        )

    async def authorize(self, request: Request) -> Response:
        q = request.query_params
        if q.get("client_id") != CLIENT_ID or q.get("response_type") != "code":
            return JSONResponse({"error": "invalid_request"}, 400)
        code = secrets.token_urlsafe(16)
        self.codes[code] = {
            "challenge": q.get("code_challenge", ""),
            "method": q.get("code_challenge_method", ""),
            "redirect_uri": q.get("redirect_uri", ""),
            "scope": q.get("scope", ""),
        }
        query = urlencode({"code": code, "state": q.get("state", "")})
        return RedirectResponse(f"{q['redirect_uri']}?{query}", 302)

    def _client_ok(self, request: Request) -> bool:
        expected = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
        return request.headers.get("authorization") == f"Basic {expected}"

    def _issue(self, scope: str) -> dict[str, Any]:
        refresh = secrets.token_urlsafe(16)
        self.refresh_tokens.add(refresh)
        return {
            "access_token": secrets.token_urlsafe(16),
            "refresh_token": refresh,
            "token_type": "Bearer",
            "expires_in": 3600,
            "scope": scope,
            "account_id": "ACME-42",
        }

    async def token(self, request: Request) -> Response:
        form = dict(await request.form())
        self.token_requests.append({k: str(v) for k, v in form.items()})
        if not self._client_ok(request):
            return JSONResponse({"error": "invalid_client"}, 401)
        if form.get("grant_type") == "refresh_token":
            if form.get("refresh_token") not in self.refresh_tokens:
                return JSONResponse({"error": "invalid_grant"}, 400)
            self.refresh_tokens.discard(str(form["refresh_token"]))
            return JSONResponse(self._issue("read trade"))
        grant = self.codes.pop(str(form.get("code")), None)  # single use
        if grant is None or grant["redirect_uri"] != form.get("redirect_uri"):
            return JSONResponse({"error": "invalid_grant"}, 400)
        verifier = str(form.get("code_verifier", ""))
        digest = hashlib.sha256(verifier.encode()).digest()
        challenge = base64.urlsafe_b64encode(digest).decode().rstrip("=")
        if grant["method"] != "S256" or challenge != grant["challenge"]:
            return JSONResponse({"error": "invalid_grant", "error_description": "PKCE"}, 400)
        return JSONResponse(self._issue(grant["scope"]))


@pytest.fixture
def auth_server(services: Services) -> FakeAuthServer:
    server = FakeAuthServer()
    flow = OAuth2Flow(
        OAuth2ProviderConfig(
            provider="ACME",
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            authorize_url="https://auth.acme.test/authorize",
            token_url="https://auth.acme.test/token",
            scopes=("read", "trade"),
        ),
        clock=services.brokers.clock,
        policy=services.brokers.ctx.policy,
        transport=httpx.ASGITransport(app=server.app),
    )
    services.brokers.linking.register_flow(flow)
    return server


async def login(server: FakeAuthServer, url: str) -> dict[str, str]:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=server.app), base_url="https://auth.acme.test"
    ) as browser:
        response = await browser.get(url)
    assert response.status_code == 302
    return dict(httpx.URL(response.headers["location"]).params)


async def principal_of(client: httpx.AsyncClient, services: Services) -> Principal:
    alice = await register(client)
    principal = await services.identity.principal_from_header(f"Bearer {alice['accessToken']}")
    assert principal is not None
    return principal


async def test_authorization_code_with_pkce_links_the_account(
    client: httpx.AsyncClient, services: Services, auth_server: FakeAuthServer
) -> None:
    principal = await principal_of(client, services)
    now = datetime.now(UTC)
    services.brokers.clock.set(now)
    started = await services.brokers.linking.start(principal, "ACME", REDIRECT)
    url = httpx.URL(started.authorization_url)
    assert url.params["code_challenge_method"] == "S256"
    assert url.params["state"] == started.state
    assert url.params["scope"] == "read trade"
    async with services.db.session() as session:
        state_row = (await session.scalars(select(BrokerLinkState))).one()
    assert state_row.code_verifier_enc is not None
    assert state_row.code_verifier_enc.startswith("v1.")  # the verifier is encrypted

    params = await login(auth_server, started.authorization_url)
    [link] = await services.brokers.linking.complete(principal, started.state, params)
    assert link.provider == "ACME" and link.account_ref == "ACME-42"
    assert link.scope_list == ["read", "trade"]
    assert link.expires_at == now + timedelta(seconds=3600)
    sent = auth_server.token_requests[-1]
    assert sent["grant_type"] == "authorization_code" and len(sent["code_verifier"]) >= 43
    assert "broker.linked" in await audit_actions(services)


async def test_a_redirect_for_another_state_or_a_replayed_code_is_refused(
    client: httpx.AsyncClient, services: Services, auth_server: FakeAuthServer
) -> None:
    principal = await principal_of(client, services)
    first = await services.brokers.linking.start(principal, "ACME", REDIRECT)
    second = await services.brokers.linking.start(principal, "ACME", REDIRECT)
    params = await login(auth_server, first.authorization_url)
    with pytest.raises(DomainError) as mixed:
        await services.brokers.linking.complete(principal, second.state, params)
    assert mixed.value.code == "BROKER_AUTH_FAILED"

    # The mixed-up attempt stopped before the token call: the code is redeemed here once...
    await services.brokers.linking.complete(principal, first.state, params)
    # ...and replaying it under a fresh state is refused by the token endpoint.
    third = await services.brokers.linking.start(principal, "ACME", REDIRECT)
    replay = dict(params, state=third.state)
    with pytest.raises(DomainError) as replayed:
        await services.brokers.linking.complete(principal, third.state, replay)
    assert replayed.value.code == "BROKER_AUTH_FAILED"
    assert "invalid_grant" in replayed.value.message


async def test_refresh_before_expiry_and_expire_when_refused(
    client: httpx.AsyncClient, services: Services, auth_server: FakeAuthServer
) -> None:
    principal = await principal_of(client, services)
    now = datetime.now(UTC)
    services.brokers.clock.set(now)
    started = await services.brokers.linking.start(principal, "ACME", REDIRECT)
    [link] = await services.brokers.linking.complete(
        principal, started.state, await login(auth_server, started.authorization_url)
    )
    vault = services.brokers.ctx.vault
    first_token = vault.open(link)["access_token"]

    services.brokers.clock.set(now + timedelta(minutes=55))  # within 10 minutes of expiry
    assert await services.brokers.linking.sweep() == {"refreshed": 1, "expired": 0}
    async with services.db.session() as session:
        renewed = await session.get(BrokerLink, link.id)
    assert renewed is not None
    assert vault.open(renewed)["access_token"] != first_token
    assert renewed.expires_at == now + timedelta(minutes=55, seconds=3600)
    assert "broker.token_refreshed" in await audit_actions(services)

    auth_server.refresh_tokens.clear()  # the provider revoked the grant
    services.brokers.clock.set(now + timedelta(minutes=55 + 58))
    assert await services.brokers.linking.sweep() == {"refreshed": 0, "expired": 1}
    async with services.db.session() as session:
        final = await session.get(BrokerLink, link.id)
    assert final is not None and final.status is LinkStatus.EXPIRED
    actions = await audit_actions(services)
    assert "broker.token_refresh_failed" in actions and "broker.link_expired" in actions
