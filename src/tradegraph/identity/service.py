"""Identity business rules: registration, sessions, 2FA, API tokens, user administration.

Every method takes plain values and the acting principal, raises ``DomainError`` for
expected failures and commits its own unit of work. Nothing here knows about GraphQL.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from tradegraph.audit.service import AuditLog
from tradegraph.config import Settings
from tradegraph.db import Database, new_id, utcnow
from tradegraph.errors import DomainError, Forbidden, NotFound, RateLimited, Unauthenticated
from tradegraph.identity.models import (
    AccessLevel,
    ApiToken,
    EmailToken,
    OutboxEmail,
    RefreshToken,
    Role,
    User,
    UserStatus,
)
from tradegraph.identity.principal import ALL_SCOPES, Principal
from tradegraph.identity.principal_cache import USER_CHANGES_TOPIC, PrincipalCache
from tradegraph.notifications.service import NotificationService
from tradegraph.pubsub import PubSub, PubSubUnavailable
from tradegraph.security import totp
from tradegraph.security.passwords import PasswordHasher, check_password_policy
from tradegraph.security.ratelimit import RateLimiter
from tradegraph.security.tokens import (
    API_TOKEN_PREFIX,
    REFRESH_TOKEN_PREFIX,
    decode_access_token,
    hash_token,
    issue_access_token,
    new_opaque_token,
)
from tradegraph.security.vault import Keyring, aad_for

log = logging.getLogger("tradegraph.identity")

_EMAIL_RE = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]{2,}$")
_API_TOKEN_NAME_RE = re.compile(r"^[\w .:/-]{1,64}$")
INVALID_CREDENTIALS = "wrong email or password"


@dataclass(frozen=True)
class SessionTokens:
    """What a successful login/refresh hands back to the client."""

    user: User
    access_token: str
    access_expires_at: datetime
    refresh_token: str
    refresh_expires_at: datetime


def normalize_email(email: str) -> str:
    """Trimmed and lower-cased, so ``A@X.com`` and ``a@x.com `` are one account."""
    value = (email or "").strip().lower()
    if len(value) > 320 or not _EMAIL_RE.match(value):
        raise DomainError("enter a valid e-mail address", code="INVALID_EMAIL", field="email")
    return value


def _display_name(value: str) -> str:
    name = (value or "").strip()
    if not 1 <= len(name) <= 64:
        raise DomainError(
            "display name must be 1 to 64 characters", code="INVALID_INPUT", field="displayName"
        )
    return name


class IdentityService:
    """Accounts, sessions (rotating refresh-token families), TOTP, API tokens, roles."""

    def __init__(
        self,
        *,
        db: Database,
        settings: Settings,
        hasher: PasswordHasher,
        keyring: Keyring,
        rate_limiter: RateLimiter,
        audit: AuditLog,
        notifications: NotificationService,
        pubsub: PubSub | None = None,
    ) -> None:
        self.db = db
        self.pubsub = pubsub
        self.principals = PrincipalCache(settings.auth_cache_seconds)
        self.settings = settings
        self.hasher = hasher
        self.keyring = keyring
        self.rate_limiter = rate_limiter
        self.audit = audit
        self.notifications = notifications
        self._jwt_secret = settings.resolved_jwt_secret()

    # ------------------------------------------------------------------ sessions

    async def register(
        self,
        *,
        email: str,
        password: str,
        display_name: str,
        ip: str | None = None,
        user_agent: str | None = None,
        role: Role = Role.TRADER,
    ) -> SessionTokens:
        address = normalize_email(email)
        name = _display_name(display_name)
        check_password_policy(password, user_inputs=(address, name))
        password_hash = await asyncio.to_thread(self.hasher.hash, password)
        async with self.db.session() as session:
            exists = await session.scalar(select(User.id).where(User.email == address))
            if exists:
                raise DomainError(
                    "an account with this e-mail already exists",
                    code="EMAIL_TAKEN",
                    field="email",
                )
            user = User(email=address, password_hash=password_hash, display_name=name, role=role)
            session.add(user)
            await session.flush()
            self._queue_verification_email(session, user)
            tokens = await self._start_session(session, user, ip=ip, user_agent=user_agent)
            await session.commit()
        await self.audit.record(
            "user.register", actor_id=user.id, target_type="user", target_id=user.id, ip=ip
        )
        return tokens

    async def login(
        self,
        *,
        email: str,
        password: str,
        otp: str | None = None,
        ip: str | None = None,
        user_agent: str | None = None,
    ) -> SessionTokens:
        address = (email or "").strip().lower()
        lock_key = f"login-fail:{address}:{ip or '-'}"
        window = self.settings.login_lockout_seconds
        limit = self.settings.login_max_failures
        # Count the attempt before checking the password (and clear it on success), so
        # parallel guesses cannot all slip past a check made before any was counted.
        state = await self.rate_limiter.hit(lock_key, limit, window)
        if not state.allowed:
            await self.audit.record(
                "user.login_locked", target_type="email", target_id=address[:64], ip=ip
            )
            raise RateLimited(
                f"too many failed sign-in attempts; try again in {int(state.retry_after) + 1} s"
            )
        async with self.db.session() as session:
            user = await session.scalar(select(User).where(User.email == address))
            # argon2 takes tens of ms of CPU: keep it off the event loop.
            ok = await asyncio.to_thread(
                self.hasher.verify, password or "", user.password_hash if user else None
            )
            if user is None or not ok:
                await self._login_failed(address, user, ip, "password")
                raise DomainError(INVALID_CREDENTIALS, code="INVALID_CREDENTIALS")
            if user.status is UserStatus.SUSPENDED:
                await self.audit.record(
                    "user.login_refused",
                    actor_id=user.id,
                    target_type="user",
                    target_id=user.id,
                    ip=ip,
                    data={"reason": "suspended"},
                )
                raise Forbidden("this account is suspended", code="ACCOUNT_SUSPENDED")
            if user.totp_enabled:
                if not otp:
                    raise DomainError(
                        "enter the code from your authenticator app",
                        code="OTP_REQUIRED",
                        field="otp",
                    )
                step = self._check_otp(user, otp)
                if step is None:
                    await self._login_failed(address, user, ip, "otp")
                    raise DomainError(
                        "the code is wrong or was already used", code="INVALID_OTP", field="otp"
                    )
                user.totp_last_step = step
            if self.hasher.needs_rehash(user.password_hash):
                user.password_hash = await asyncio.to_thread(self.hasher.hash, password)
            tokens = await self._start_session(session, user, ip=ip, user_agent=user_agent)
            await session.commit()
        await self.rate_limiter.reset(lock_key)
        await self.audit.record(
            "user.login", actor_id=user.id, target_type="user", target_id=user.id, ip=ip
        )
        return tokens

    async def _login_failed(
        self, address: str, user: User | None, ip: str | None, reason: str
    ) -> None:
        await self.audit.record(
            "user.login_failed",
            actor_id=user.id if user else None,
            target_type="email",
            target_id=address[:64],
            ip=ip,
            data={"reason": reason},
        )

    async def refresh(
        self, refresh_token: str, *, ip: str | None = None, user_agent: str | None = None
    ) -> SessionTokens:
        """Rotate: the presented token is spent and a new one of the same family issued.

        Presenting a spent token means it leaked (or the client raced itself): the whole
        family is revoked, so a thief holding either copy is locked out.
        """
        invalid = Unauthenticated("the refresh token is invalid or expired")
        invalid.code = "INVALID_REFRESH_TOKEN"
        if not refresh_token or not refresh_token.startswith(REFRESH_TOKEN_PREFIX):
            raise invalid
        now = utcnow()
        async with self.db.session() as session:
            row = await session.scalar(
                select(RefreshToken).where(RefreshToken.token_hash == hash_token(refresh_token))
            )
            if row is None:
                raise invalid
            claimed = await session.execute(
                update(RefreshToken)
                .where(
                    RefreshToken.id == row.id,
                    RefreshToken.used_at.is_(None),
                    RefreshToken.revoked_at.is_(None),
                )
                .values(used_at=now)
            )
            if claimed.rowcount != 1:  # type: ignore[attr-defined]
                await self._revoke_family(session, row.family_id, now)
                await session.commit()
                await self.audit.record(
                    "session.refresh_reuse",
                    actor_id=row.user_id,
                    target_type="session",
                    target_id=row.family_id,
                    ip=ip,
                )
                raise invalid
            if row.expires_at <= now:
                await session.commit()
                raise invalid
            user = await session.get(User, row.user_id)
            if user is None or user.status is not UserStatus.ACTIVE:
                await self._revoke_family(session, row.family_id, now)
                await session.commit()
                raise invalid
            tokens = await self._start_session(
                session, user, ip=ip, user_agent=user_agent, family_id=row.family_id
            )
            await session.commit()
        return tokens

    async def logout(self, refresh_token: str) -> bool:
        """End the session family the token belongs to. Unknown tokens are a no-op."""
        if not refresh_token:
            return False
        async with self.db.session() as session:
            row = await session.scalar(
                select(RefreshToken).where(RefreshToken.token_hash == hash_token(refresh_token))
            )
            if row is None:
                return False
            await self._revoke_family(session, row.family_id, utcnow())
            await session.commit()
        await self.audit.record(
            "session.logout", actor_id=row.user_id, target_type="session", target_id=row.family_id
        )
        return True

    async def _revoke_family(self, session: AsyncSession, family_id: str, now: datetime) -> None:
        await session.execute(
            update(RefreshToken)
            .where(RefreshToken.family_id == family_id, RefreshToken.revoked_at.is_(None))
            .values(revoked_at=now)
        )

    async def _start_session(
        self,
        session: AsyncSession,
        user: User,
        *,
        ip: str | None,
        user_agent: str | None,
        family_id: str | None = None,
    ) -> SessionTokens:
        now = utcnow()
        family = family_id or new_id()
        refresh_plain = new_opaque_token(REFRESH_TOKEN_PREFIX)
        refresh_expires = now + timedelta(seconds=self.settings.refresh_token_ttl_seconds)
        session.add(
            RefreshToken(
                family_id=family,
                user_id=user.id,
                token_hash=hash_token(refresh_plain),
                expires_at=refresh_expires,
                ip=(ip or "")[:64] or None,
                user_agent=(user_agent or "")[:255] or None,
            )
        )
        issued = issue_access_token(
            secret=self._jwt_secret,
            issuer=self.settings.jwt_issuer,
            audience=self.settings.jwt_audience,
            subject=user.id,
            role=user.role.value,
            token_version=user.token_version,
            session_id=family,
            ttl=timedelta(seconds=self.settings.access_token_ttl_seconds),
        )
        return SessionTokens(
            user=user,
            access_token=issued.token,
            access_expires_at=issued.claims.expires_at,
            refresh_token=refresh_plain,
            refresh_expires_at=refresh_expires,
        )

    # ------------------------------------------------------------- authentication

    async def principal_from_header(self, value: object) -> Principal | None:
        """``Bearer <access token | API token>`` -> principal; None when absent.

        The answer is remembered for ``auth_cache_seconds`` (see ``principal_cache``):
        changes made through ``user_changed`` (suspension, role, access level) take
        effect on the very next request in this process and within milliseconds in the
        others; nothing is ever trusted longer than the cache's TTL.
        """
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            raise Unauthenticated("the authorization value must be a string")
        scheme, _, token = value.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("use 'Authorization: Bearer <token>'")
        token = token.strip()
        cached = self.principals.get(token)
        if cached is not None:
            return cached
        if token.startswith(API_TOKEN_PREFIX):
            principal = await self._principal_from_api_token(token)
            self.principals.put(token, principal)
            return principal
        claims = decode_access_token(
            token,
            secret=self._jwt_secret,
            issuer=self.settings.jwt_issuer,
            audience=self.settings.jwt_audience,
        )
        # One autocommit round trip, on a cache miss only.
        async with self.db.reader.connect() as conn:
            row = (
                await conn.execute(
                    select(User.role, User.status, User.access_level, User.token_version).where(
                        User.id == claims.subject
                    )
                )
            ).first()
        if row is None or row.token_version != claims.token_version:
            raise Unauthenticated("this session is no longer valid; sign in again")
        if row.status is not UserStatus.ACTIVE:
            raise Unauthenticated("this account is suspended", code="ACCOUNT_SUSPENDED")
        principal = Principal(
            user_id=claims.subject,
            role=row.role,
            status=row.status,
            access_level=row.access_level,
            via="session",
        )
        self.principals.put(
            token, principal, valid_for=(claims.expires_at - utcnow()).total_seconds()
        )
        return principal

    async def user_changed(self, user_id: str) -> None:
        """Forget cached principals of ``user_id`` here and, through pub/sub, everywhere.

        Call after committing any change to a user's role, status, access level, token
        version or API tokens.
        """
        self.principals.forget_user(user_id)
        # Not connected (a CLI command): other processes' entries expire within the TTL.
        if self.pubsub is not None and self.pubsub.connected:
            try:
                await self.pubsub.publish(USER_CHANGES_TOPIC, {"userId": user_id})
            except PubSubUnavailable:
                log.warning("could not publish a change of user %s; it expires", user_id)

    async def _principal_from_api_token(self, token: str) -> Principal:
        now = utcnow()
        async with self.db.session() as session:
            row = await session.execute(
                select(ApiToken, User)
                .join(User, User.id == ApiToken.user_id)
                .where(ApiToken.token_hash == hash_token(token), ApiToken.revoked_at.is_(None))
            )
            found = row.first()
            if found is None:
                raise Unauthenticated("the API token is invalid or revoked")
            api_token, user = found
            self._require_active(user)
            if api_token.last_used_at is None or now - api_token.last_used_at > timedelta(
                minutes=1
            ):
                api_token.last_used_at = now
                await session.commit()
        return Principal(
            user_id=user.id,
            role=user.role,
            status=user.status,
            access_level=user.access_level,
            via="api_token",
            scopes=frozenset(api_token.scope_list),
            token_id=api_token.id,
        )

    @staticmethod
    def _require_active(user: User) -> None:
        if user.status is not UserStatus.ACTIVE:
            raise Unauthenticated("this account is suspended", code="ACCOUNT_SUSPENDED")

    async def get_user(self, user_id: str) -> User | None:
        async with self.db.session() as session:
            return await session.get(User, user_id)

    async def get_user_by_email(self, email: str) -> User | None:
        async with self.db.session() as session:
            return await session.scalar(select(User).where(User.email == email.strip().lower()))

    # ------------------------------------------------------------ e-mail tokens

    def _queue_verification_email(self, session: AsyncSession, user: User) -> None:
        plain = new_opaque_token("tgv_")
        session.add(
            EmailToken(
                user_id=user.id,
                token_hash=hash_token(plain),
                expires_at=utcnow() + timedelta(seconds=self.settings.email_token_ttl_seconds),
            )
        )
        link = f"{self.settings.public_url.rstrip('/')}/verify-email?token={plain}"
        mail = OutboxEmail(
            to_address=user.email,
            subject="Confirm your TradeGraph e-mail address",
            body=f"Welcome to TradeGraph. Confirm your address: {link}\n"
            f"Or run the verifyEmail mutation with token {plain}.",
        )
        if not self.settings.is_production:
            # Development "delivery": the link goes to the log, the row is marked sent.
            log.info("verification e-mail for %s: %s", user.email, link)
            mail.sent_at = utcnow()
        session.add(mail)

    async def request_email_verification(self, principal: Principal) -> None:
        async with self.db.session() as session:
            user = await session.get(User, principal.user_id)
            if user is None:
                raise NotFound("user not found")
            if user.email_verified_at is not None:
                raise DomainError(
                    "this e-mail address is already verified", code="ALREADY_VERIFIED"
                )
            self._queue_verification_email(session, user)
            await session.commit()

    async def verify_email(self, token: str) -> User:
        now = utcnow()
        async with self.db.session() as session:
            row = await session.scalar(
                select(EmailToken).where(EmailToken.token_hash == hash_token(token or ""))
            )
            if row is None or row.used_at is not None or row.expires_at <= now:
                raise DomainError(
                    "the verification link is invalid or expired",
                    code="INVALID_TOKEN",
                    field="token",
                )
            row.used_at = now
            user = await session.get(User, row.user_id)
            assert user is not None
            user.email_verified_at = now
            await session.commit()
        return user

    # ---------------------------------------------------------------------- TOTP

    def _totp_aad(self, user: User) -> str:
        return aad_for("users", user.id, "totp_secret")

    def _check_otp(self, user: User, code: str) -> int | None:
        if not user.totp_secret_enc:
            return None
        secret = self.keyring.decrypt_text(user.totp_secret_enc, self._totp_aad(user))
        return totp.verify(secret, code, utcnow(), user.totp_last_step)

    async def begin_totp_setup(self, principal: Principal) -> str:
        """Store a new (not yet enabled) secret and return its ``otpauth://`` URI."""
        async with self.db.session() as session:
            user = await session.get(User, principal.user_id)
            if user is None:
                raise NotFound("user not found")
            if user.totp_enabled:
                raise DomainError(
                    "two-factor authentication is already on", code="TOTP_ALREADY_ENABLED"
                )
            secret = totp.new_secret()
            user.totp_secret_enc = self.keyring.encrypt(secret, self._totp_aad(user))
            user.totp_last_step = 0
            await session.commit()
            return totp.provisioning_uri(secret, user.email, "TradeGraph")

    async def enable_totp(self, principal: Principal, code: str) -> User:
        async with self.db.session() as session:
            user = await session.get(User, principal.user_id)
            if user is None:
                raise NotFound("user not found")
            if user.totp_enabled:
                raise DomainError(
                    "two-factor authentication is already on", code="TOTP_ALREADY_ENABLED"
                )
            if not user.totp_secret_enc:
                raise DomainError("start with setupTotp first", code="TOTP_NOT_SET_UP")
            step = self._check_otp(user, code)
            if step is None:
                raise DomainError(
                    "the code is wrong or was already used", code="INVALID_OTP", field="code"
                )
            user.totp_last_step = step
            user.totp_enabled = True
            await session.commit()
        await self.audit.record(
            "user.totp_enabled", actor_id=user.id, target_type="user", target_id=user.id
        )
        await self.notifications.notify(
            user.id,
            "SECURITY",
            "Two-factor authentication is on",
            "Sign-ins now need a code from your authenticator app.",
        )
        return user

    async def disable_totp(self, principal: Principal, code: str) -> User:
        async with self.db.session() as session:
            user = await session.get(User, principal.user_id)
            if user is None:
                raise NotFound("user not found")
            if not user.totp_enabled:
                raise DomainError("two-factor authentication is off", code="TOTP_NOT_ENABLED")
            step = self._check_otp(user, code)
            if step is None:
                raise DomainError(
                    "the code is wrong or was already used", code="INVALID_OTP", field="code"
                )
            user.totp_enabled = False
            user.totp_secret_enc = None
            user.totp_last_step = step
            await session.commit()
        await self.audit.record(
            "user.totp_disabled", actor_id=user.id, target_type="user", target_id=user.id
        )
        await self.notifications.notify(
            user.id,
            "SECURITY",
            "Two-factor authentication is off",
            "If this was not you, change your password and turn it back on.",
        )
        return user

    # ---------------------------------------------------------------- API tokens

    async def create_api_token(
        self, principal: Principal, *, name: str, scopes: list[str]
    ) -> tuple[ApiToken, str]:
        """Create a token; the plaintext is returned once and only its hash is kept."""
        if principal.via != "session":
            raise Forbidden("API tokens cannot create API tokens")
        label = (name or "").strip()
        if not _API_TOKEN_NAME_RE.match(label):
            raise DomainError(
                "name must be 1 to 64 letters, digits, spaces or ._:/-",
                code="INVALID_INPUT",
                field="name",
            )
        wanted = sorted(set(scopes))
        if not wanted or not set(wanted) <= ALL_SCOPES:
            raise DomainError(
                f"scopes must be a non-empty subset of {sorted(ALL_SCOPES)}",
                code="INVALID_SCOPE",
                field="scopes",
            )
        plain = new_opaque_token(API_TOKEN_PREFIX)
        async with self.db.session() as session:
            active = await session.scalar(
                select(func.count())
                .select_from(ApiToken)
                .where(ApiToken.user_id == principal.user_id, ApiToken.revoked_at.is_(None))
            )
            if (active or 0) >= 50:
                raise DomainError("at most 50 active API tokens", code="LIMIT_REACHED")
            row = ApiToken(
                user_id=principal.user_id,
                name=label,
                token_hash=hash_token(plain),
                prefix=plain[:12],
                scopes=",".join(wanted),
            )
            session.add(row)
            await session.commit()
        await self.audit.record(
            "api_token.create",
            actor_id=principal.user_id,
            target_type="api_token",
            target_id=row.id,
            data={"scopes": wanted},
        )
        await self.notifications.notify(
            principal.user_id,
            "SECURITY",
            f"API token '{label}' created",
            f"Scopes: {', '.join(wanted)}. Revoke it if you did not create it.",
            {"apiTokenId": row.id},
        )
        return row, plain

    async def list_api_tokens(self, principal: Principal) -> list[ApiToken]:
        async with self.db.session() as session:
            rows = await session.scalars(
                select(ApiToken)
                .where(ApiToken.user_id == principal.user_id)
                .order_by(ApiToken.created_at.desc())
                .limit(200)
            )
            return list(rows)

    async def revoke_api_token(self, principal: Principal, token_id: str) -> ApiToken:
        async with self.db.session() as session:
            row = await session.scalar(
                select(ApiToken).where(
                    ApiToken.id == token_id, ApiToken.user_id == principal.user_id
                )
            )
            if row is None:
                raise NotFound("API token not found", field="id")
            if row.revoked_at is None:
                row.revoked_at = utcnow()
                await session.commit()
        await self.user_changed(principal.user_id)
        await self.audit.record(
            "api_token.revoke",
            actor_id=principal.user_id,
            target_type="api_token",
            target_id=token_id,
        )
        return row

    # -------------------------------------------------------------------- admin

    async def _admin_update(
        self, admin: Principal, user_id: str, action: str, **changes: object
    ) -> User:
        admin.require_admin()
        async with self.db.session() as session:
            user = await session.get(User, user_id)
            if user is None:
                raise NotFound("user not found", field="userId")
            before = {key: str(getattr(user, key)) for key in changes}
            for key, value in changes.items():
                setattr(user, key, value)
            await session.commit()
        await self.user_changed(user_id)
        await self.audit.record(
            action,
            actor_id=admin.user_id,
            target_type="user",
            target_id=user_id,
            data={"before": before, "after": {k: str(v) for k, v in changes.items()}},
        )
        return user

    async def set_status(
        self, admin: Principal, user_id: str, status: UserStatus, reason: str | None = None
    ) -> User:
        if user_id == admin.user_id and status is UserStatus.SUSPENDED:
            raise DomainError("you cannot suspend yourself", code="INVALID_INPUT", field="userId")
        user = await self._admin_update(admin, user_id, "user.status", status=status)
        if status is UserStatus.SUSPENDED:
            async with self.db.session() as session:
                await session.execute(
                    update(RefreshToken)
                    .where(RefreshToken.user_id == user_id, RefreshToken.revoked_at.is_(None))
                    .values(revoked_at=utcnow())
                )
                await session.commit()
        return user

    async def set_role(self, admin: Principal, user_id: str, role: Role) -> User:
        if user_id == admin.user_id and role is not Role.ADMIN:
            raise DomainError(
                "you cannot remove your own admin role", code="INVALID_INPUT", field="userId"
            )
        return await self._admin_update(admin, user_id, "user.role", role=role)

    async def set_access_level(
        self, admin: Principal, user_id: str, level: AccessLevel, reason: str | None
    ) -> User:
        return await self._admin_update(
            admin,
            user_id,
            "user.access_level",
            access_level=level,
            access_reason=(reason or "set by an administrator")[:255],
        )

    async def list_users(
        self, admin: Principal, *, search: str | None, limit: int, after: str | None
    ) -> list[User]:
        admin.require_admin()
        stmt = select(User).order_by(User.id).limit(limit)
        if after:
            stmt = stmt.where(User.id > after)
        if search:
            pattern = f"%{search.strip().lower()}%"
            stmt = stmt.where(
                or_(User.email.like(pattern), func.lower(User.display_name).like(pattern))
            )
        async with self.db.session() as session:
            return list(await session.scalars(stmt))

    async def create_admin(self, *, email: str, password: str, display_name: str) -> User:
        """Create an admin, or promote an existing account (CLI ``create-admin``)."""
        address = normalize_email(email)
        async with self.db.session() as session:
            user = await session.scalar(select(User).where(User.email == address))
            if user is not None:
                user.role = Role.ADMIN
                await session.commit()
                await self.user_changed(user.id)
                created = False
            else:
                check_password_policy(password, user_inputs=(address, display_name))
                user = User(
                    email=address,
                    password_hash=await asyncio.to_thread(self.hasher.hash, password),
                    display_name=_display_name(display_name),
                    role=Role.ADMIN,
                    access_level=AccessLevel.FULL,
                    email_verified_at=utcnow(),
                )
                session.add(user)
                await session.commit()
                created = True
        await self.audit.record(
            "user.role",
            target_type="user",
            target_id=user.id,
            data={"after": {"role": "ADMIN"}, "via": "cli", "created": created},
        )
        return user
