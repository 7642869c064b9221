"""Login flows that end in broker credentials: Deriv's legacy OAuth, Kite Connect's
request-token exchange, and a generic OAuth 2.0 authorization-code flow (authlib, PKCE)
for brokers added later.

A flow only builds the authorization URL and turns the redirect's parameters into
validated accounts; states, storage and audit belong to ``LinkingService``. Every error a
flow raises is a ``BrokerError`` whose message never contains a token or secret.
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

import httpx

from tradegraph.brokers.adapters.deriv import (
    DerivClient,
    DerivOAuthAccount,
    deriv_authorize_url,
    parse_deriv_redirect,
)
from tradegraph.brokers.adapters.kite import KiteBroker, kite_login_url, parse_kite_redirect
from tradegraph.brokers.adapters.retry import RetryPolicy
from tradegraph.brokers.common import BrokerEndpoints, Clock
from tradegraph.brokers.protocol import (
    BrokerAuthError,
    BrokerProvider,
    BrokerRejected,
    BrokerUnavailable,
)

with warnings.catch_warnings():
    # authlib warns that its httpx integration will move to "httpx2"; it works with httpx.
    from authlib.deprecate import AuthlibDeprecationWarning

    warnings.simplefilter("ignore", AuthlibDeprecationWarning)
    from authlib.integrations.httpx_client import AsyncOAuth2Client, OAuthError


@dataclass(frozen=True)
class LinkedAccount:
    """One broker account a completed login gives access to."""

    account_ref: str
    currency: str | None
    scopes: tuple[str, ...]
    credentials: Mapping[str, str] = field(repr=False)
    expires_at: datetime | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RefreshedCredentials:
    credentials: Mapping[str, str] = field(repr=False)
    expires_at: datetime | None = None


class LinkFlow(Protocol):
    """How one provider's login starts and ends."""

    provider: str
    supports_pkce: bool

    def authorization_url(
        self, *, state: str, redirect_uri: str, code_verifier: str | None
    ) -> str: ...

    async def complete(
        self,
        params: Mapping[str, str],
        *,
        state: str,
        redirect_uri: str,
        code_verifier: str | None,
    ) -> list[LinkedAccount]: ...


class RefreshableFlow(LinkFlow, Protocol):
    """A flow whose credentials can be renewed without the user (OAuth 2 refresh tokens)."""

    async def refresh(self, credentials: Mapping[str, str]) -> RefreshedCredentials: ...


# -- Deriv ---------------------------------------------------------------------------------


class DerivFlow:
    """Deriv legacy OAuth: the redirect carries ``acctN/tokenN/curN``; every token is
    checked with ``authorize`` and must belong to the account it is listed with.

    Deriv does not echo a ``state`` (the app's redirect URL is fixed at registration), so
    the binding to the user is the single-use state the client sends back with the
    parameters.
    """

    provider = BrokerProvider.DERIV.value
    supports_pkce = False

    def __init__(self, endpoints: BrokerEndpoints, policy: RetryPolicy) -> None:
        self.endpoints = endpoints
        self.policy = policy

    def authorization_url(self, *, state: str, redirect_uri: str, code_verifier: str | None) -> str:
        return deriv_authorize_url(
            self.endpoints.deriv_app_id, base_url=self.endpoints.deriv_oauth_url
        )

    async def complete(
        self,
        params: Mapping[str, str],
        *,
        state: str,
        redirect_uri: str,
        code_verifier: str | None,
    ) -> list[LinkedAccount]:
        accounts = parse_deriv_redirect(params)
        if len(accounts) > 20:
            raise BrokerRejected("Deriv redirect lists too many accounts", provider=_DERIV)
        return list(await asyncio.gather(*(self._validate(a) for a in accounts)))

    async def _validate(self, account: DerivOAuthAccount) -> LinkedAccount:
        client = DerivClient(
            self.endpoints.deriv_app_id, url=self.endpoints.deriv_ws_url, policy=self.policy
        )
        try:
            reply = await client.call({"authorize": account.token}, what="authorize")
        finally:
            await client.aclose()
        data = reply.get("authorize") or {}
        loginid = str(data.get("loginid") or "")
        if loginid != account.account:
            raise BrokerAuthError(
                f"the Deriv token listed for {account.account} belongs to another account",
                provider=_DERIV,
            )
        scopes = data.get("scopes")
        return LinkedAccount(
            account_ref=loginid,
            currency=str(data.get("currency") or account.currency or "") or None,
            scopes=tuple(str(s) for s in scopes) if isinstance(scopes, list) else (),
            credentials={"token": account.token},
            meta={
                "is_virtual": bool(data.get("is_virtual")),
                "landing_company": str(data.get("landing_company_name") or ""),
            },
        )


_DERIV = BrokerProvider.DERIV


# -- Zerodha Kite --------------------------------------------------------------------------


class KiteFlow:
    """Kite Connect: the single-use ``request_token`` is exchanged (with the SHA-256
    checksum) for an access token that expires at 06:00 IST the next morning.
    """

    provider = BrokerProvider.ZERODHA.value
    supports_pkce = False
    # A Kite Connect access token may read the portfolio and place orders.
    scopes = ("read", "trade")

    def __init__(self, endpoints: BrokerEndpoints, policy: RetryPolicy) -> None:
        self.endpoints = endpoints
        self.policy = policy

    def authorization_url(self, *, state: str, redirect_uri: str, code_verifier: str | None) -> str:
        # Kite returns ``redirect_params`` untouched, so our state comes back with the token.
        return kite_login_url(
            self.endpoints.kite_api_key,
            redirect_params={"state": state},
            base_url=self.endpoints.kite_login_url,
        )

    async def complete(
        self,
        params: Mapping[str, str],
        *,
        state: str,
        redirect_uri: str,
        code_verifier: str | None,
    ) -> list[LinkedAccount]:
        redirect = parse_kite_redirect(params)
        echoed = redirect.params.get("state")
        if echoed is not None and echoed != state:
            raise BrokerAuthError(
                "the Kite redirect belongs to another link request", provider=_KITE
            )
        async with KiteBroker(
            self.endpoints.kite_api_key,
            api_secret=self.endpoints.kite_api_secret,
            base_url=self.endpoints.kite_api_url,
            policy=self.policy,
        ) as kite:
            session = await kite.exchange_request_token(redirect.request_token)
        if not session.user_id:
            raise BrokerUnavailable("Kite session exchange: no user id", provider=_KITE)
        return [
            LinkedAccount(
                account_ref=session.user_id,
                currency="INR",
                scopes=self.scopes,
                credentials={"access_token": session.access_token},
                expires_at=session.expires_at,
                meta={"user_name": session.user_name},
            )
        ]


_KITE = BrokerProvider.ZERODHA


# -- generic OAuth 2.0 ---------------------------------------------------------------------


@dataclass(frozen=True)
class OAuth2ProviderConfig:
    """A broker that speaks plain OAuth 2.0 authorization code (RFC 6749, PKCE RFC 7636).

    The account id is read from the token response (``account_field``) or, when
    ``userinfo_url`` is set, from that endpoint's JSON called with the new access token.
    """

    provider: str
    client_id: str
    client_secret: str = field(repr=False)
    authorize_url: str
    token_url: str
    scopes: tuple[str, ...] = ()
    pkce: bool = True
    account_field: str = "account_id"
    currency_field: str = "currency"
    userinfo_url: str | None = None


class OAuth2Flow:
    """Authorization code with PKCE (S256) through authlib, plus refresh-token renewal."""

    def __init__(
        self,
        config: OAuth2ProviderConfig,
        *,
        clock: Clock,
        policy: RetryPolicy,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.config = config
        self.provider = config.provider
        self.supports_pkce = config.pkce
        self.clock = clock
        self.policy = policy
        self.transport = transport

    def _client(self, redirect_uri: str | None = None) -> AsyncOAuth2Client:
        return AsyncOAuth2Client(
            client_id=self.config.client_id,
            client_secret=self.config.client_secret,
            scope=" ".join(self.config.scopes) or None,
            redirect_uri=redirect_uri,
            code_challenge_method="S256" if self.config.pkce else None,
            transport=self.transport,
            timeout=httpx.Timeout(self.policy.attempt_timeout, connect=self.policy.connect_timeout),
            follow_redirects=False,
        )

    def authorization_url(self, *, state: str, redirect_uri: str, code_verifier: str | None) -> str:
        client = self._client(redirect_uri)
        url, _ = client.create_authorization_url(
            self.config.authorize_url,
            state=state,
            code_verifier=code_verifier if self.config.pkce else None,
        )
        return str(url)

    async def complete(
        self,
        params: Mapping[str, str],
        *,
        state: str,
        redirect_uri: str,
        code_verifier: str | None,
    ) -> list[LinkedAccount]:
        provider = self.config.provider
        if params.get("error"):
            raise BrokerAuthError(
                f"{provider} refused the authorization ({str(params['error'])[:64]})",
                provider=None,
            )
        if params.get("state") not in (None, state):
            raise BrokerAuthError(f"the {provider} redirect belongs to another link request")
        code = params.get("code")
        if not code:
            raise BrokerAuthError(f"the {provider} redirect carries no authorization code")
        async with self._client(redirect_uri) as client:
            token = await self._token_call(
                client.fetch_token(
                    self.config.token_url,
                    grant_type="authorization_code",
                    code=code,
                    code_verifier=code_verifier if self.config.pkce else None,
                    redirect_uri=redirect_uri,
                ),
                "token exchange",
            )
            info: Mapping[str, Any] = token
            if self.config.userinfo_url:
                response = await self._token_call(
                    client.get(self.config.userinfo_url), "account lookup"
                )
                if response.status_code != 200:
                    raise BrokerUnavailable(f"{provider} account lookup failed")
                body = response.json()
                info = body if isinstance(body, dict) else {}
        account = str(info.get(self.config.account_field) or "")
        if not account:
            raise BrokerUnavailable(f"{provider} did not say which account was linked")
        granted = str(token.get("scope") or " ".join(self.config.scopes))
        refreshed = self._credentials(token)
        return [
            LinkedAccount(
                account_ref=account[:64],
                currency=str(info.get(self.config.currency_field) or "") or None,
                scopes=tuple(s for s in granted.replace(",", " ").split() if s),
                credentials=refreshed.credentials,
                expires_at=refreshed.expires_at,
            )
        ]

    async def refresh(self, credentials: Mapping[str, str]) -> RefreshedCredentials:
        refresh_token = credentials.get("refresh_token")
        if not refresh_token:
            raise BrokerAuthError(f"{self.config.provider} gave no refresh token; log in again")
        async with self._client() as client:
            token = await self._token_call(
                client.refresh_token(self.config.token_url, refresh_token=refresh_token),
                "token refresh",
            )
        if not token.get("refresh_token"):
            token["refresh_token"] = refresh_token  # the old one stays valid
        return self._credentials(token)

    def _credentials(self, token: Mapping[str, Any]) -> RefreshedCredentials:
        access = token.get("access_token")
        if not access:
            raise BrokerUnavailable(f"{self.config.provider} returned no access token")
        values = {"access_token": str(access)}
        if token.get("refresh_token"):
            values["refresh_token"] = str(token["refresh_token"])
        expires_at = None
        expires_in = token.get("expires_in")
        if isinstance(expires_in, int | float | str) and str(expires_in).isdigit():
            expires_at = self.clock.now() + timedelta(seconds=int(expires_in))
        return RefreshedCredentials(values, expires_at)

    async def _token_call(self, call: Any, what: str) -> Any:
        provider = self.config.provider
        try:
            async with asyncio.timeout(self.policy.deadline):
                return await call
        except OAuthError as exc:
            raise BrokerAuthError(
                f"{provider} {what} was refused ({str(exc.error)[:64]})"
            ) from None
        except (TimeoutError, httpx.TransportError) as exc:
            raise BrokerUnavailable(f"{provider} {what}: {type(exc).__name__}") from None
        except ValueError:
            raise BrokerUnavailable(f"{provider} {what}: unreadable reply") from None
