"""GraphQL for identity: ``me``, sessions, two-factor, API tokens. Translation only."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Annotated

import strawberry
from sqlalchemy import Select, select
from strawberry import relay

from tradegraph.errors import DomainError
from tradegraph.graphql.context import Info
from tradegraph.graphql.errors import UserError, returns_payload
from tradegraph.graphql.ids import decode_id
from tradegraph.identity import models
from tradegraph.identity.principal import Principal
from tradegraph.identity.service import SessionTokens

if TYPE_CHECKING:
    from tradegraph.graphql.brokers import PortfolioSummary

Role = models.Role
strawberry.enum(Role, description="What a user may administer.")
UserStatus = models.UserStatus
strawberry.enum(UserStatus, description="Whether a user may sign in.")
AccessLevel = models.AccessLevel
strawberry.enum(
    AccessLevel, description="What a user may trade: LIMITED until checks pass, or FULL."
)
KycStatus = models.KycStatus
strawberry.enum(KycStatus, description="Identity verification state.")


def users_readable_by(principal: Principal) -> Select[models.User]:
    """Rows of ``users`` the principal may load: themselves, or everyone for admins."""
    stmt = select(models.User)
    if not principal.is_admin:
        stmt = stmt.where(models.User.id == principal.user_id)
    return stmt


@strawberry.type(description="A TradeGraph user account.")
class User(relay.Node):
    id: relay.NodeID[str]
    email: str = strawberry.field(description="Normalized (lower-case) e-mail address.")
    email_verified: bool = strawberry.field(description="Whether the e-mail was confirmed.")
    display_name: str = strawberry.field(description="Public name shown to others.")
    role: Role = strawberry.field(description="TRADER or ADMIN.")
    status: UserStatus = strawberry.field(description="ACTIVE or SUSPENDED.")
    access_level: AccessLevel = strawberry.field(description="LIMITED or FULL trading access.")
    access_reason: str | None = strawberry.field(
        description="Why the access level is what it is, and the next step if LIMITED."
    )
    kyc_status: KycStatus = strawberry.field(description="Identity verification state.")
    two_factor_enabled: bool = strawberry.field(description="Whether login needs a TOTP code.")
    created_at: datetime = strawberry.field(description="When the account was created (UTC).")

    @strawberry.field(
        description="Balances and P/L of all your linked broker accounts, totalled in "
        "`currency`; null for anyone but yourself."
    )
    async def summary(
        self, info: Info, currency: str = "USD"
    ) -> Annotated[PortfolioSummary, strawberry.lazy("tradegraph.graphql.brokers")] | None:
        from tradegraph.graphql.brokers import portfolio_summary

        return await portfolio_summary(info, str(self.id), currency)

    @classmethod
    def from_model(cls, user: models.User) -> User:
        return cls(
            id=user.id,
            email=user.email,
            email_verified=user.email_verified_at is not None,
            display_name=user.display_name,
            role=user.role,
            status=user.status,
            access_level=user.access_level,
            access_reason=user.access_reason,
            kyc_status=user.kyc_status,
            two_factor_enabled=user.totp_enabled,
            created_at=user.created_at,
        )

    @classmethod
    async def resolve_nodes(  # type: ignore[override]
        cls, *, info: Info, node_ids: Iterable[str], required: bool = False
    ) -> list[User | None]:
        principal = info.context.principal
        ids = list(node_ids)
        if principal is None:
            return [None] * len(ids)
        stmt = users_readable_by(principal).where(models.User.id.in_(ids))
        async with info.context.services.db.session() as session:
            found = {u.id: u for u in await session.scalars(stmt)}
        return [User.from_model(found[i]) if i in found else None for i in ids]


@strawberry.type(description="The result of register, login and refreshSession.")
class AuthPayload:
    access_token: str | None = strawberry.field(
        default=None, description="JWT for 'Authorization: Bearer'; valid 15 minutes."
    )
    access_token_expires_at: datetime | None = strawberry.field(
        default=None, description="When the access token expires (UTC)."
    )
    refresh_token: str | None = strawberry.field(
        default=None,
        description="Single-use token for refreshSession; each use returns a new one.",
    )
    refresh_token_expires_at: datetime | None = strawberry.field(
        default=None, description="When the refresh token expires (UTC)."
    )
    user: User | None = strawberry.field(default=None, description="The signed-in user.")
    errors: list[UserError] = strawberry.field(
        default_factory=list, description="Why the request failed; empty on success."
    )

    @classmethod
    def from_tokens(cls, tokens: SessionTokens) -> AuthPayload:
        return cls(
            access_token=tokens.access_token,
            access_token_expires_at=tokens.access_expires_at,
            refresh_token=tokens.refresh_token,
            refresh_token_expires_at=tokens.refresh_expires_at,
            user=User.from_model(tokens.user),
        )


@strawberry.type(description="The result of logout.")
class LogoutPayload:
    ok: bool = strawberry.field(default=False, description="True if a session was ended.")
    errors: list[UserError] = strawberry.field(default_factory=list, description="Failures.")


@strawberry.type(description="The result of a mutation that returns the current user.")
class UserPayload:
    user: User | None = strawberry.field(default=None, description="The updated user.")
    errors: list[UserError] = strawberry.field(default_factory=list, description="Failures.")


@strawberry.type(description="The result of setupTotp: scan the URI, then call enableTotp.")
class TotpSetupPayload:
    otpauth_uri: str | None = strawberry.field(
        default=None, description="otpauth:// URI for an authenticator app (show as QR code)."
    )
    errors: list[UserError] = strawberry.field(default_factory=list, description="Failures.")


ApiTokenScope = models.ApiScope
strawberry.enum(ApiTokenScope, name="ApiTokenScope", description="What an API token may do.")


@strawberry.type(description="An API token for integrators; the secret is shown only once.")
class ApiToken(relay.Node):
    id: relay.NodeID[str]
    name: str = strawberry.field(description="Label chosen by the owner.")
    prefix: str = strawberry.field(description="First characters of the token, to recognise it.")
    scopes: list[str] = strawberry.field(description="Granted scopes: read, trade.")
    created_at: datetime = strawberry.field(description="Creation time (UTC).")
    last_used_at: datetime | None = strawberry.field(description="Last use, to the minute.")
    revoked: bool = strawberry.field(description="Whether the token was revoked.")

    @classmethod
    def from_model(cls, row: models.ApiToken) -> ApiToken:
        return cls(
            id=row.id,
            name=row.name,
            prefix=row.prefix,
            scopes=row.scope_list,
            created_at=row.created_at,
            last_used_at=row.last_used_at,
            revoked=row.revoked_at is not None,
        )

    @classmethod
    async def resolve_nodes(  # type: ignore[override]
        cls, *, info: Info, node_ids: Iterable[str], required: bool = False
    ) -> list[ApiToken | None]:
        principal = info.context.principal
        ids = list(node_ids)
        if principal is None:
            return [None] * len(ids)
        tokens = {t.id: t for t in await info.context.services.identity.list_api_tokens(principal)}
        return [ApiToken.from_model(tokens[i]) if i in tokens else None for i in ids]


@strawberry.type(description="The result of createApiToken.")
class CreateApiTokenPayload:
    token: str | None = strawberry.field(
        default=None, description="The secret token. Store it now: it is never shown again."
    )
    api_token: ApiToken | None = strawberry.field(default=None, description="Its metadata.")
    errors: list[UserError] = strawberry.field(default_factory=list, description="Failures.")


@strawberry.type(description="The result of revokeApiToken.")
class RevokeApiTokenPayload:
    api_token: ApiToken | None = strawberry.field(default=None, description="The revoked token.")
    errors: list[UserError] = strawberry.field(default_factory=list, description="Failures.")


@strawberry.input(description="New account details.")
class RegisterInput:
    email: str = strawberry.field(description="E-mail address; normalized to lower case.")
    password: str = strawberry.field(description="At least 12 characters.")
    display_name: str = strawberry.field(description="Public name, 1 to 64 characters.")


@strawberry.input(description="Credentials for login.")
class LoginInput:
    email: str = strawberry.field(description="E-mail address.")
    password: str = strawberry.field(description="Password.")
    otp: str | None = strawberry.field(
        default=None, description="Authenticator code, required when two-factor is on."
    )


@strawberry.input(description="A new API token.")
class CreateApiTokenInput:
    name: str = strawberry.field(description="Label, 1 to 64 characters.")
    scopes: list[ApiTokenScope] = strawberry.field(
        description="Scopes to grant: READ and/or TRADE."
    )


def _ua(info: Info) -> str | None:
    return info.context.request.headers.get("user-agent")


@strawberry.type
class IdentityQuery:
    @strawberry.field(description="The signed-in user, or null when not signed in.")
    async def me(self, info: Info) -> User | None:
        principal = info.context.principal
        if principal is None:
            return None
        user = await info.context.services.identity.get_user(principal.user_id)
        return User.from_model(user) if user else None

    @strawberry.field(description="Your API tokens (secrets are never shown again).")
    async def api_tokens(self, info: Info) -> list[ApiToken]:
        principal = info.context.require_principal()
        rows = await info.context.services.identity.list_api_tokens(principal)
        return [ApiToken.from_model(r) for r in rows]


@strawberry.type
class IdentityMutation:
    @strawberry.mutation(description="Create an account and sign in.")
    @returns_payload(AuthPayload)
    async def register(self, info: Info, input: RegisterInput) -> AuthPayload:
        tokens = await info.context.services.identity.register(
            email=input.email,
            password=input.password,
            display_name=input.display_name,
            ip=info.context.ip,
            user_agent=_ua(info),
        )
        return AuthPayload.from_tokens(tokens)

    @strawberry.mutation(description="Sign in with e-mail, password and (if enabled) a TOTP code.")
    @returns_payload(AuthPayload)
    async def login(self, info: Info, input: LoginInput) -> AuthPayload:
        tokens = await info.context.services.identity.login(
            email=input.email,
            password=input.password,
            otp=input.otp,
            ip=info.context.ip,
            user_agent=_ua(info),
        )
        return AuthPayload.from_tokens(tokens)

    @strawberry.mutation(
        description="Trade a refresh token for new tokens. Reusing a spent refresh token "
        "ends the whole session family."
    )
    @returns_payload(AuthPayload)
    async def refresh_session(self, info: Info, refresh_token: str) -> AuthPayload:
        tokens = await info.context.services.identity.refresh(
            refresh_token, ip=info.context.ip, user_agent=_ua(info)
        )
        return AuthPayload.from_tokens(tokens)

    @strawberry.mutation(description="End the session the refresh token belongs to.")
    @returns_payload(LogoutPayload)
    async def logout(self, info: Info, refresh_token: str) -> LogoutPayload:
        return LogoutPayload(ok=await info.context.services.identity.logout(refresh_token))

    @strawberry.mutation(description="Confirm an e-mail address with the token sent by mail.")
    @returns_payload(UserPayload)
    async def verify_email(self, info: Info, token: str) -> UserPayload:
        user = await info.context.services.identity.verify_email(token)
        return UserPayload(user=User.from_model(user))

    @strawberry.mutation(description="Send a new e-mail verification link.")
    @returns_payload(UserPayload)
    async def request_email_verification(self, info: Info) -> UserPayload:
        principal = info.context.require_principal()
        await info.context.services.identity.request_email_verification(principal)
        user = await info.context.services.identity.get_user(principal.user_id)
        return UserPayload(user=User.from_model(user) if user else None)

    @strawberry.mutation(description="Start two-factor setup: returns an otpauth:// URI.")
    @returns_payload(TotpSetupPayload)
    async def setup_totp(self, info: Info) -> TotpSetupPayload:
        principal = _session_principal(info)
        uri = await info.context.services.identity.begin_totp_setup(principal)
        return TotpSetupPayload(otpauth_uri=uri)

    @strawberry.mutation(description="Turn two-factor on with a current code from the app.")
    @returns_payload(UserPayload)
    async def enable_totp(self, info: Info, code: str) -> UserPayload:
        user = await info.context.services.identity.enable_totp(_session_principal(info), code)
        return UserPayload(user=User.from_model(user))

    @strawberry.mutation(description="Turn two-factor off; needs a current code.")
    @returns_payload(UserPayload)
    async def disable_totp(self, info: Info, code: str) -> UserPayload:
        user = await info.context.services.identity.disable_totp(_session_principal(info), code)
        return UserPayload(user=User.from_model(user))

    @strawberry.mutation(description="Create an API token (scopes READ, TRADE); shown once.")
    @returns_payload(CreateApiTokenPayload)
    async def create_api_token(
        self, info: Info, input: CreateApiTokenInput
    ) -> CreateApiTokenPayload:
        principal = info.context.require_principal()
        row, plain = await info.context.services.identity.create_api_token(
            principal, name=input.name, scopes=[s.value for s in input.scopes]
        )
        return CreateApiTokenPayload(token=plain, api_token=ApiToken.from_model(row))

    @strawberry.mutation(description="Revoke one of your API tokens; it stops working at once.")
    @returns_payload(RevokeApiTokenPayload)
    async def revoke_api_token(
        self, info: Info, id: Annotated[strawberry.ID, strawberry.argument(description="Token id")]
    ) -> RevokeApiTokenPayload:
        principal = info.context.require_principal()
        token_id = decode_id(id, "ApiToken")
        row = await info.context.services.identity.revoke_api_token(principal, token_id)
        return RevokeApiTokenPayload(api_token=ApiToken.from_model(row))


def _session_principal(info: Info) -> Principal:
    principal = info.context.require_principal()
    if principal.via != "session":
        raise DomainError("sign in with a password session for this", code="FORBIDDEN")
    return principal


__all__ = ["IdentityMutation", "IdentityQuery", "User"]
