"""Linking broker accounts to TradeGraph users: OAuth starts and completions, API keys,
unlinking, listing, re-validation, expiry and token refresh.

Why it looks like this:

* ``state`` is the CSRF and binding token of a login: 256 random bits, stored only as a
  SHA-256 hash, bound to the user who started it, valid 10 minutes and claimed with one
  conditional UPDATE, so two racing completions cannot both use it.
* Credentials are validated with the broker before anything is stored, then written
  encrypted (``CredentialVault``); nothing secret is ever returned, logged or audited.
* One real broker account can be actively linked to one TradeGraph user only, otherwise
  a single BingX account could satisfy the gatekeeper for many users.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, delete, func, select, update
from sqlalchemy.exc import IntegrityError

from tradegraph.brokers.adapters.bingx import BingXBroker
from tradegraph.brokers.adapters.deriv import DerivBroker
from tradegraph.brokers.adapters.kite import KiteBroker
from tradegraph.brokers.common import BrokerContext, normalize_redirect_uri, open_broker
from tradegraph.brokers.models import (
    BrokerBalance,
    BrokerLink,
    BrokerLinkState,
    BrokerPosition,
    LinkMethod,
    LinkStatus,
)
from tradegraph.brokers.oauth import (
    DerivFlow,
    KiteFlow,
    LinkedAccount,
    LinkFlow,
    RefreshedCredentials,
)
from tradegraph.brokers.protocol import (
    BrokerAuthError,
    BrokerError,
    BrokerProvider,
    BrokerUnavailable,
)
from tradegraph.db import new_id
from tradegraph.errors import DomainError, NotFound, RateLimited
from tradegraph.identity.principal import Principal
from tradegraph.security.vault import VaultError, aad_for

log = logging.getLogger("tradegraph.brokers")

STATE_TTL = timedelta(minutes=10)
MAX_PENDING_STATES = 10
MAX_LINKS_PER_USER = 50
REFRESH_AHEAD = timedelta(minutes=10)
STATE_TABLE = "broker_link_states"
VERIFIER_FIELD = "code_verifier_enc"
_CREDENTIAL_RE = re.compile(r"^[\x21-\x7e]{8,256}$")
_PARAM_KEY_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")

LinkChanged = Callable[[str, str], Awaitable[None]]
Refresher = Callable[[Mapping[str, str]], Awaitable[RefreshedCredentials]]


@dataclass(frozen=True)
class StartedLink:
    """What the client needs to send the user to the broker and to finish afterwards."""

    authorization_url: str
    state: str = field(repr=False)
    expires_at: datetime
    provider: str


@dataclass(frozen=True)
class ProviderInfo:
    provider: str
    method: LinkMethod
    configured: bool
    pkce: bool
    sandbox: bool


def hash_state(state: str) -> str:
    return hashlib.sha256(state.encode()).hexdigest()


def links_readable_by(principal: Principal) -> Select[BrokerLink]:
    """The links a principal may load: their own, or every link for an admin."""
    stmt = select(BrokerLink)
    if not principal.is_admin:
        stmt = stmt.where(BrokerLink.user_id == principal.user_id)
    return stmt


def effective_status(link: BrokerLink, now: datetime) -> LinkStatus:
    """ACTIVE links past their expiry read as EXPIRED even before the sweep marks them."""
    if link.status is LinkStatus.ACTIVE and link.expires_at is not None and link.expires_at <= now:
        return LinkStatus.EXPIRED
    return link.status


def clean_params(params: Mapping[str, object]) -> dict[str, str]:
    """Redirect parameters as plain strings; refuses anything that is not a flat map."""
    if len(params) > 64:
        raise DomainError("too many redirect parameters", field="params")
    out: dict[str, str] = {}
    for key, value in params.items():
        if not isinstance(key, str) or not _PARAM_KEY_RE.match(key):
            raise DomainError("redirect parameter names must be simple words", field="params")
        if isinstance(value, list) and len(value) == 1:
            value = value[0]
        if not isinstance(value, str | int) or isinstance(value, bool):
            raise DomainError(f"redirect parameter {key} must be a string", field="params")
        text = str(value)
        if len(text) > 2048:
            raise DomainError(f"redirect parameter {key} is too long", field="params")
        out[key] = text
    return out


class LinkingService:
    """Everything about the life of a broker link, for one app."""

    def __init__(self, ctx: BrokerContext, *, on_change: LinkChanged | None = None) -> None:
        self.ctx = ctx
        self.on_change = on_change
        self._extra_flows: dict[str, LinkFlow] = {}

    # -- providers ---------------------------------------------------------------------

    def register_flow(self, flow: LinkFlow) -> None:
        """Add an OAuth provider (e.g. an ``OAuth2Flow`` for a new broker)."""
        self._extra_flows[flow.provider] = flow

    def flow(self, provider: str) -> LinkFlow:
        """The login flow of an OAuth provider, or a clear error."""
        if provider in self._extra_flows:
            return self._extra_flows[provider]
        endpoints = self.ctx.endpoints
        if provider == BrokerProvider.BINGX:
            raise DomainError(
                "BingX links with an API key: use linkBrokerApiKey",
                code="PROVIDER_NOT_SUPPORTED",
                field="provider",
            )
        if provider not in (BrokerProvider.DERIV, BrokerProvider.ZERODHA):
            raise DomainError("unknown broker", code="PROVIDER_NOT_SUPPORTED", field="provider")
        if not endpoints.configured(BrokerProvider(provider)):
            raise DomainError(
                f"{provider} is not configured on this server",
                code="PROVIDER_NOT_CONFIGURED",
                field="provider",
            )
        if provider == BrokerProvider.DERIV:
            return DerivFlow(endpoints, self.ctx.policy)
        return KiteFlow(endpoints, self.ctx.policy)

    def providers(self) -> list[ProviderInfo]:
        endpoints = self.ctx.endpoints
        out = [
            ProviderInfo(
                provider=p.value,
                method=LinkMethod.API_KEY if p is BrokerProvider.BINGX else LinkMethod.OAUTH,
                configured=endpoints.configured(p),
                pkce=False,
                sandbox=endpoints.sandbox,
            )
            for p in BrokerProvider
        ]
        return out

    def allowed_redirect_uris(self) -> list[str]:
        return [
            u for u in (normalize_redirect_uri(v) for v in self.ctx.endpoints.redirect_uris) if u
        ]

    def _check_redirect(self, redirect_uri: str) -> str:
        normalized = normalize_redirect_uri(redirect_uri or "")
        if normalized is None or normalized not in self.allowed_redirect_uris():
            raise DomainError(
                "redirectUri is not on this server's allowlist",
                code="REDIRECT_URI_NOT_ALLOWED",
                field="redirectUri",
            )
        return normalized

    # -- OAuth -------------------------------------------------------------------------

    async def start(
        self, principal: Principal, provider: str, redirect_uri: str, *, ip: str | None = None
    ) -> StartedLink:
        """Create a single-use state and the broker's authorization URL."""
        principal.require_scope("trade")
        flow = self.flow(provider)
        uri = self._check_redirect(redirect_uri)
        now = self.ctx.clock.now()
        state = secrets.token_urlsafe(32)
        verifier = secrets.token_urlsafe(64) if flow.supports_pkce else None  # 86 chars
        row_id = new_id()
        async with self.ctx.db.session() as session:
            await session.execute(
                delete(BrokerLinkState).where(
                    BrokerLinkState.user_id == principal.user_id,
                    BrokerLinkState.expires_at <= now,
                )
            )
            pending = await session.scalar(
                select(func.count())
                .select_from(BrokerLinkState)
                .where(
                    BrokerLinkState.user_id == principal.user_id,
                    BrokerLinkState.used_at.is_(None),
                )
            )
            if (pending or 0) >= MAX_PENDING_STATES:
                raise RateLimited(
                    "too many unfinished broker logins; finish one or wait 10 minutes",
                    field="provider",
                )
            session.add(
                BrokerLinkState(
                    id=row_id,
                    user_id=principal.user_id,
                    provider=provider,
                    state_hash=hash_state(state),
                    redirect_uri=uri,
                    code_verifier_enc=(
                        self.ctx.vault.keyring.encrypt(
                            verifier, aad_for(STATE_TABLE, row_id, VERIFIER_FIELD)
                        )
                        if verifier
                        else None
                    ),
                    created_at=now,
                    expires_at=now + STATE_TTL,
                )
            )
            await session.commit()
        url = flow.authorization_url(state=state, redirect_uri=uri, code_verifier=verifier)
        return StartedLink(url, state, now + STATE_TTL, provider)

    async def complete(
        self,
        principal: Principal,
        state: str,
        params: Mapping[str, object],
        *,
        ip: str | None = None,
    ) -> list[BrokerLink]:
        """Claim the state, validate what the broker sent back, store the links."""
        principal.require_scope("trade")
        values = clean_params(params)
        now = self.ctx.clock.now()
        digest = hash_state(state or "")
        async with self.ctx.db.session() as session:
            claimed = await session.execute(
                update(BrokerLinkState)
                .where(
                    BrokerLinkState.state_hash == digest,
                    BrokerLinkState.user_id == principal.user_id,
                    BrokerLinkState.used_at.is_(None),
                    BrokerLinkState.expires_at > now,
                )
                .values(used_at=now)
            )
            row = await session.scalar(
                select(BrokerLinkState).where(BrokerLinkState.state_hash == digest)
            )
            refused: DomainError | None = None
            if claimed.rowcount != 1 or row is None:  # type: ignore[attr-defined]
                refused = self._state_error(row, principal, now)
            else:
                await session.commit()
        if refused is not None:
            await self._audit_failure(principal.user_id, None, refused, ip)
            raise refused
        assert row is not None
        verifier = None
        if row.code_verifier_enc:
            verifier = self.ctx.vault.keyring.decrypt_text(
                row.code_verifier_enc, aad_for(STATE_TABLE, row.id, VERIFIER_FIELD)
            )
        try:
            flow = self.flow(row.provider)
            accounts = await self.ctx.bounded(
                flow.complete(
                    values, state=state, redirect_uri=row.redirect_uri, code_verifier=verifier
                )
            )
        except DomainError as error:
            await self._audit_failure(principal.user_id, row.provider, error, ip)
            raise
        return await self._store(principal, row.provider, LinkMethod.OAUTH, accounts, ip)

    @staticmethod
    def _state_error(
        row: BrokerLinkState | None, principal: Principal, now: datetime
    ) -> DomainError:
        if row is None or row.user_id != principal.user_id:
            # Someone else's state is "unknown" to this caller: no hint that it exists.
            return DomainError(
                "this broker login is unknown; start it again",
                code="INVALID_STATE",
                field="state",
            )
        if row.used_at is not None:
            return DomainError(
                "this broker login was already completed; start a new one",
                code="STATE_ALREADY_USED",
                field="state",
            )
        return DomainError(
            "this broker login expired (10 minutes); start it again",
            code="STATE_EXPIRED",
            field="state",
        )

    # -- API keys ----------------------------------------------------------------------

    async def link_api_key(
        self,
        principal: Principal,
        provider: str,
        api_key: str,
        api_secret: str,
        *,
        ip: str | None = None,
    ) -> BrokerLink:
        """Validate a BingX key pair with a signed call, then store it encrypted."""
        principal.require_scope("trade")
        if provider != BrokerProvider.BINGX:
            raise DomainError(
                f"{provider} links through startBrokerLink, not an API key",
                code="PROVIDER_NOT_SUPPORTED",
                field="provider",
            )
        for name, value in (("apiKey", api_key), ("apiSecret", api_secret)):
            if not isinstance(value, str) or not _CREDENTIAL_RE.match(value):
                raise DomainError(
                    f"{name} must be 8 to 256 visible characters", code="INVALID_INPUT", field=name
                )
        endpoints = self.ctx.endpoints
        if not endpoints.configured(BrokerProvider.BINGX):
            raise DomainError(
                "BingX is not configured on this server",
                code="PROVIDER_NOT_CONFIGURED",
                field="provider",
            )
        try:
            async with BingXBroker(
                api_key, api_secret, base_url=endpoints.bingx_api_url, policy=self.ctx.policy
            ) as bingx:
                account = await self.ctx.bounded(bingx.validate_credentials())
        except BrokerAuthError as exc:
            error = BrokerAuthError(
                "BingX refused this API key and secret"
                + (f" (code {exc.broker_code})" if exc.broker_code else ""),
                provider=BrokerProvider.BINGX,
                broker_code=exc.broker_code,
                field="apiSecret",
            )
            await self._audit_failure(principal.user_id, provider, error, ip)
            raise error from None
        except DomainError as exc:
            await self._audit_failure(principal.user_id, provider, exc, ip)
            raise
        if not account.uid:
            raise BrokerUnavailable("BingX did not report the account id", provider=_BINGX)
        linked = LinkedAccount(
            account_ref=account.uid,
            currency=account.balance.asset or "USDT",
            scopes=("read",),  # what the signed read proved; trading rights are unknown
            credentials={"api_key": api_key, "api_secret": api_secret},
        )
        links = await self._store(principal, provider, LinkMethod.API_KEY, [linked], ip)
        return links[0]

    # -- storage -----------------------------------------------------------------------

    async def _store(
        self,
        principal: Principal,
        provider: str,
        method: LinkMethod,
        accounts: Sequence[LinkedAccount],
        ip: str | None,
    ) -> list[BrokerLink]:
        user_id = principal.user_id
        now = self.ctx.clock.now()
        refs = [a.account_ref for a in accounts]
        async with self.ctx.db.session() as session:
            lapsed = list(
                await session.scalars(
                    select(BrokerLink).where(
                        BrokerLink.provider == provider,
                        BrokerLink.account_ref.in_(refs),
                        BrokerLink.status == LinkStatus.ACTIVE,
                        BrokerLink.expires_at <= now,
                    )
                )
            )
        for old in lapsed:  # an expired session does not hold the account any more
            await self.expire(old)
        try:
            async with self.ctx.db.session() as session:
                taken = list(
                    await session.scalars(
                        select(BrokerLink.account_ref).where(
                            BrokerLink.provider == provider,
                            BrokerLink.account_ref.in_(refs),
                            BrokerLink.status == LinkStatus.ACTIVE,
                            BrokerLink.user_id != user_id,
                        )
                    )
                )
                if taken:
                    raise _already_linked(provider)
                existing = {
                    link.account_ref: link
                    for link in await session.scalars(
                        select(BrokerLink).where(
                            BrokerLink.user_id == user_id,
                            BrokerLink.provider == provider,
                            BrokerLink.account_ref.in_(refs),
                        )
                    )
                }
                stored: list[BrokerLink] = []
                for account in accounts:
                    link = existing.get(account.account_ref)
                    if link is None:
                        link = BrokerLink(
                            id=new_id(),
                            user_id=user_id,
                            provider=provider,
                            account_ref=account.account_ref,
                        )
                        session.add(link)
                    link.method = method
                    link.status = LinkStatus.ACTIVE
                    link.currency = account.currency
                    link.scopes = ",".join(account.scopes)[:255]
                    link.credentials_enc = self.ctx.vault.seal(link.id, account.credentials)
                    link.meta = json.dumps(dict(account.meta), sort_keys=True, default=str)
                    link.status_reason = None
                    link.expires_at = account.expires_at
                    link.linked_at = now
                    link.last_checked_at = now
                    link.revoked_at = None
                    stored.append(link)
                await session.flush()
                active = await session.scalar(
                    select(func.count())
                    .select_from(BrokerLink)
                    .where(BrokerLink.user_id == user_id, BrokerLink.status == LinkStatus.ACTIVE)
                )
                if (active or 0) > MAX_LINKS_PER_USER:
                    raise DomainError(
                        f"at most {MAX_LINKS_PER_USER} active broker links per user",
                        code="TOO_MANY_LINKS",
                    )
                await session.commit()
        except IntegrityError:
            # The partial unique index lost a race with another user's link.
            error = _already_linked(provider)
            await self._audit_failure(user_id, provider, error, ip)
            raise error from None
        except DomainError as error:
            await self._audit_failure(user_id, provider, error, ip)
            raise
        for link in stored:
            await self.ctx.audit.record(
                "broker.linked",
                actor_id=user_id,
                target_type="broker_link",
                target_id=link.id,
                ip=ip,
                data={
                    "provider": provider,
                    "method": method.value,
                    "account": link.account_ref,
                    "scopes": link.scope_list,
                    "expires_at": link.expires_at,
                },
            )
        await self._changed(user_id, provider)
        return stored

    async def _changed(self, user_id: str, provider: str) -> None:
        if self.on_change is None:
            return
        try:
            await self.on_change(user_id, provider)
        except Exception:
            # A follow-up (the gatekeeper review) failing must not undo the link change.
            log.exception("broker link follow-up failed for user %s", user_id)

    async def _audit_failure(
        self, user_id: str, provider: str | None, error: DomainError, ip: str | None
    ) -> None:
        await self.ctx.audit.record(
            "broker.link_failed",
            actor_id=user_id,
            target_type="user",
            target_id=user_id,
            ip=ip,
            data={"provider": provider, "code": error.code, "reason": error.message[:200]},
        )

    # -- reading -----------------------------------------------------------------------

    async def list_links(
        self, principal: Principal, *, include_revoked: bool = False
    ) -> list[BrokerLink]:
        stmt = (
            select(BrokerLink)
            .where(BrokerLink.user_id == principal.user_id)
            .order_by(BrokerLink.linked_at.desc(), BrokerLink.id)
            .limit(MAX_LINKS_PER_USER * 2)
        )
        if not include_revoked:
            stmt = stmt.where(BrokerLink.status != LinkStatus.REVOKED)
        async with self.ctx.db.session() as session:
            return list(await session.scalars(stmt))

    async def get_many(self, principal: Principal, ids: Sequence[str]) -> list[BrokerLink]:
        async with self.ctx.db.session() as session:
            return list(
                await session.scalars(links_readable_by(principal).where(BrokerLink.id.in_(ids)))
            )

    async def owned_link(
        self,
        principal: Principal,
        link_id: str,
        *,
        provider: str | None = None,
        active: bool = False,
    ) -> BrokerLink:
        """The caller's own link (admins act on their own links too), with checks."""
        async with self.ctx.db.session() as session:
            link = await session.scalar(
                select(BrokerLink).where(
                    BrokerLink.id == link_id, BrokerLink.user_id == principal.user_id
                )
            )
        if link is None:
            raise NotFound("broker link not found", field="linkId")
        if provider is not None and link.provider != provider:
            raise DomainError(
                f"this needs a {provider} link", code="WRONG_PROVIDER", field="linkId"
            )
        if active:
            status = effective_status(link, self.ctx.clock.now())
            if status is not LinkStatus.ACTIVE:
                if status is LinkStatus.EXPIRED and link.status is LinkStatus.ACTIVE:
                    await self.expire(link)
                raise DomainError(
                    f"this broker link is {status.value}; link the account again",
                    code="BROKER_LINK_INACTIVE",
                    field="linkId",
                )
        return link

    # -- changes -----------------------------------------------------------------------

    async def unlink(
        self, principal: Principal, link_id: str, *, ip: str | None = None
    ) -> BrokerLink:
        """Revoke a link: credentials are erased, contracts stay for the record."""
        principal.require_scope("trade")
        link = await self.owned_link(principal, link_id)
        if link.status is LinkStatus.REVOKED:
            return link
        credentials: dict[str, str] | None = None
        if link.provider == BrokerProvider.ZERODHA and link.credentials_enc:
            with contextlib.suppress(DomainError):
                credentials = self.ctx.vault.open(link)
        now = self.ctx.clock.now()
        async with self.ctx.db.session() as session:
            await session.execute(
                update(BrokerLink)
                .where(BrokerLink.id == link.id)
                .values(
                    status=LinkStatus.REVOKED,
                    revoked_at=now,
                    credentials_enc=None,
                    status_reason="unlinked by the user",
                )
            )
            await session.execute(delete(BrokerPosition).where(BrokerPosition.link_id == link.id))
            await session.execute(delete(BrokerBalance).where(BrokerBalance.link_id == link.id))
            await session.commit()
            fresh = await session.get(BrokerLink, link.id, populate_existing=True)
        await self.ctx.audit.record(
            "broker.unlinked",
            actor_id=principal.user_id,
            target_type="broker_link",
            target_id=link.id,
            ip=ip,
            data={"provider": link.provider, "account": link.account_ref},
        )
        if credentials is not None:
            await self._kite_logout(credentials)
        await self._changed(link.user_id, link.provider)
        assert fresh is not None
        return fresh

    async def _kite_logout(self, credentials: Mapping[str, str]) -> None:
        """Best effort: the link is gone locally whatever Kite answers."""
        endpoints = self.ctx.endpoints
        try:
            async with KiteBroker(
                endpoints.kite_api_key,
                access_token=credentials.get("access_token"),
                base_url=endpoints.kite_api_url,
                policy=self.ctx.policy,
            ) as kite:
                await self.ctx.bounded(kite.invalidate_session())
        except (BrokerError, DomainError) as exc:
            log.info("Kite logout on unlink failed: %s", exc.code)

    async def expire(self, link: BrokerLink, *, reason: str = "the broker session expired") -> bool:
        """Mark an ACTIVE link EXPIRED once (audited); False when someone else did."""
        async with self.ctx.db.session() as session:
            result = await session.execute(
                update(BrokerLink)
                .where(BrokerLink.id == link.id, BrokerLink.status == LinkStatus.ACTIVE)
                .values(status=LinkStatus.EXPIRED, status_reason=reason[:255])
            )
            await session.commit()
        if result.rowcount != 1:  # type: ignore[attr-defined]
            return False
        await self.ctx.audit.record(
            "broker.link_expired",
            target_type="broker_link",
            target_id=link.id,
            data={"provider": link.provider, "account": link.account_ref, "reason": reason[:200]},
        )
        return True

    async def mark_error(self, link: BrokerLink, error: DomainError) -> None:
        """The broker refused the stored credentials: ERROR until the user relinks."""
        now = self.ctx.clock.now()
        async with self.ctx.db.session() as session:
            result = await session.execute(
                update(BrokerLink)
                .where(
                    BrokerLink.id == link.id,
                    BrokerLink.status.in_((LinkStatus.ACTIVE, LinkStatus.ERROR)),
                )
                .values(
                    status=LinkStatus.ERROR, status_reason=error.message[:255], last_checked_at=now
                )
            )
            await session.commit()
        if result.rowcount == 1:  # type: ignore[attr-defined]
            await self.ctx.audit.record(
                "broker.validation_failed",
                actor_id=None,
                target_type="broker_link",
                target_id=link.id,
                data={"provider": link.provider, "code": error.code, "reason": error.message[:200]},
            )

    async def check(
        self, principal: Principal, link_id: str, *, ip: str | None = None
    ) -> BrokerLink:
        """Re-validate a link's credentials with one cheap call to the broker."""
        link = await self.owned_link(principal, link_id)
        return await self.check_link(link)

    async def check_link(self, link: BrokerLink) -> BrokerLink:
        now = self.ctx.clock.now()
        status = effective_status(link, now)
        if status is LinkStatus.EXPIRED and link.status is LinkStatus.ACTIVE:
            await self.expire(link)
        if status in (LinkStatus.ACTIVE, LinkStatus.ERROR) and link.credentials_enc:
            credentials = self.ctx.vault.open(link)
            broker = open_broker(self.ctx.endpoints, link.provider, credentials, self.ctx.policy)
            try:
                async with broker:
                    await self.ctx.bounded(_probe(broker))
            except BrokerAuthError as exc:
                await self.mark_error(link, exc)
            else:
                async with self.ctx.db.session() as session:
                    await session.execute(
                        update(BrokerLink)
                        .where(BrokerLink.id == link.id, BrokerLink.status == status)
                        .values(status=LinkStatus.ACTIVE, status_reason=None, last_checked_at=now)
                    )
                    await session.commit()
        async with self.ctx.db.session() as session:
            fresh = await session.get(BrokerLink, link.id)
        assert fresh is not None
        return fresh

    async def sweep(self, *, limit: int = 200) -> dict[str, int]:
        """Refresh renewable tokens about to expire, mark the other expired links EXPIRED.

        Run by the periodic job; safe to run in several workers at once (every change is a
        conditional UPDATE).
        """
        now = self.ctx.clock.now()
        counts = {"refreshed": 0, "expired": 0}
        async with self.ctx.db.session() as session:
            due = list(
                await session.scalars(
                    select(BrokerLink)
                    .where(
                        BrokerLink.status == LinkStatus.ACTIVE,
                        BrokerLink.expires_at.is_not(None),
                        BrokerLink.expires_at <= now + REFRESH_AHEAD,
                    )
                    .order_by(BrokerLink.expires_at)
                    .limit(limit)
                )
            )
        for link in due:
            refresh = getattr(self._extra_flows.get(link.provider), "refresh", None)
            outcome = await self._refresh(link, refresh) if callable(refresh) else "retry"
            if outcome == "retry" and link.expires_at is not None and link.expires_at <= now:
                outcome = "expired" if await self.expire(link) else "retry"
            if outcome in counts:
                counts[outcome] += 1
        return counts

    async def _refresh(self, link: BrokerLink, refresh: Refresher) -> str:
        """ "refreshed", "expired" (the provider refused: relink) or "retry" (unreachable)."""
        try:
            credentials = self.ctx.vault.open(link)
            renewed = await self.ctx.bounded(refresh(credentials))
        except BrokerUnavailable:
            return "retry"  # try again on the next sweep; expiry still applies
        except (BrokerAuthError, DomainError, VaultError) as exc:
            await self.ctx.audit.record(
                "broker.token_refresh_failed",
                target_type="broker_link",
                target_id=link.id,
                data={"provider": link.provider, "reason": str(exc)[:200]},
            )
            expired = await self.expire(link, reason="the broker refused to renew the session")
            return "expired" if expired else "retry"
        async with self.ctx.db.session() as session:
            await session.execute(
                update(BrokerLink)
                .where(BrokerLink.id == link.id, BrokerLink.status == LinkStatus.ACTIVE)
                .values(
                    credentials_enc=self.ctx.vault.seal(link.id, renewed.credentials),
                    expires_at=renewed.expires_at,
                    last_checked_at=self.ctx.clock.now(),
                )
            )
            await session.commit()
        await self.ctx.audit.record(
            "broker.token_refreshed",
            target_type="broker_link",
            target_id=link.id,
            data={"provider": link.provider, "expires_at": renewed.expires_at},
        )
        return "refreshed"

    async def stale_states(self) -> int:
        """Delete expired link states (housekeeping for the periodic job)."""
        now = self.ctx.clock.now()
        async with self.ctx.db.session() as session:
            result = await session.execute(
                delete(BrokerLinkState).where(BrokerLinkState.expires_at <= now)
            )
            await session.commit()
        return int(result.rowcount or 0)  # type: ignore[attr-defined]


_BINGX = BrokerProvider.BINGX


def _already_linked(provider: str) -> DomainError:
    return DomainError(
        f"this {provider} account is already linked to another TradeGraph user",
        code="ACCOUNT_ALREADY_LINKED",
    )


async def _probe(broker: Any) -> None:
    """The cheapest authenticated call of each adapter."""
    if isinstance(broker, DerivBroker):
        await broker.authorize()
    elif isinstance(broker, BingXBroker):
        await broker.validate_credentials()
    else:
        await broker.balances()
