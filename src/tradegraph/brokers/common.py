"""Pieces every broker service shares: the clock, endpoint configuration, the credential
vault wrapper, adapter construction and log redaction.

Kept apart from the services so linking, trading, summaries and the gatekeeper can use
them without importing each other.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from tradegraph.audit.service import AuditLog
from tradegraph.brokers.adapters.bingx import BingXBroker
from tradegraph.brokers.adapters.deriv import DerivBroker
from tradegraph.brokers.adapters.kite import KiteBroker
from tradegraph.brokers.adapters.retry import RetryPolicy
from tradegraph.brokers.models import BrokerLink
from tradegraph.brokers.protocol import BrokerProvider, BrokerUnavailable
from tradegraph.config import Settings
from tradegraph.db import Database, utcnow
from tradegraph.errors import DomainError
from tradegraph.security.vault import Keyring, VaultError, aad_for

T = TypeVar("T")

CREDENTIALS_TABLE = "broker_links"
CREDENTIALS_FIELD = "credentials_enc"


class Clock:
    """Wall clock that tests can pin (``set``) or move (``advance``); always UTC-aware."""

    def __init__(self) -> None:
        self._fixed: datetime | None = None

    def now(self) -> datetime:
        return self._fixed if self._fixed is not None else utcnow()

    def set(self, when: datetime | None) -> None:
        if when is not None and when.tzinfo is None:
            raise ValueError("the clock needs a timezone-aware datetime")
        self._fixed = when

    def advance(self, delta: timedelta) -> None:
        self._fixed = self.now() + delta


def _split(value: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in value.split(",") if item.strip())


@dataclass(frozen=True)
class BrokerEndpoints:
    """Where each broker lives and the app's credentials there (secrets kept out of repr)."""

    deriv_app_id: str = ""
    deriv_oauth_url: str = ""
    deriv_ws_url: str = ""
    kite_api_key: str = ""
    kite_api_secret: str = field(default="", repr=False)
    kite_login_url: str = ""
    kite_api_url: str = ""
    bingx_api_url: str = ""
    bingx_referrer_id: str = ""
    bingx_referrer_api_key: str = field(default="", repr=False)
    bingx_referrer_api_secret: str = field(default="", repr=False)
    bingx_signup_url: str = ""
    redirect_uris: tuple[str, ...] = ()
    sandbox: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> BrokerEndpoints:
        redirect_uris = _split(settings.broker_redirect_uris)
        if not redirect_uris and not settings.is_production:
            # Development default: a callback page on the app's own origin.
            redirect_uris = (f"{settings.public_url.rstrip('/')}/brokers/callback",)
        return cls(
            deriv_app_id=settings.deriv_app_id,
            deriv_oauth_url=settings.deriv_oauth_url,
            deriv_ws_url=settings.deriv_ws_url,
            kite_api_key=settings.kite_api_key,
            kite_api_secret=settings.kite_api_secret,
            kite_login_url=settings.kite_login_url,
            kite_api_url=settings.kite_api_url,
            bingx_api_url=settings.bingx_api_url,
            bingx_referrer_id=settings.bingx_referrer_id,
            bingx_referrer_api_key=settings.bingx_referrer_api_key,
            bingx_referrer_api_secret=settings.bingx_referrer_api_secret,
            bingx_signup_url=settings.bingx_signup_url,
            redirect_uris=redirect_uris,
        )

    def with_changes(self, **changes: Any) -> BrokerEndpoints:
        return replace(self, **changes)

    def configured(self, provider: BrokerProvider) -> bool:
        if provider is BrokerProvider.DERIV:
            return bool(self.deriv_app_id and self.deriv_oauth_url and self.deriv_ws_url)
        if provider is BrokerProvider.ZERODHA:
            return bool(self.kite_api_key and self.kite_api_secret and self.kite_api_url)
        return bool(self.bingx_api_url)

    @property
    def referral_check_configured(self) -> bool:
        return bool(
            self.bingx_referrer_id
            and self.bingx_referrer_api_key
            and self.bingx_referrer_api_secret
            and self.bingx_api_url
        )


def normalize_redirect_uri(value: str) -> str | None:
    """The comparable form of a redirect URI, or None when it is not an acceptable one.

    Only absolute http(s) URIs without credentials or fragment; scheme and host are
    lower-cased, so the allowlist compares like a browser would navigate.
    """
    try:
        parts = urlsplit(value.strip())
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    if parts.username or parts.password or parts.fragment:
        return None
    try:
        port = parts.port
    except ValueError:
        return None
    host = parts.hostname.lower()
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc = f"{netloc}:{port}"
    return urlunsplit((parts.scheme.lower(), netloc, parts.path or "/", parts.query, ""))


class CredentialVault:
    """Encrypts a link's credentials (a small JSON object) bound to its row and column."""

    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring

    def seal(self, link_id: str, credentials: Mapping[str, str]) -> str:
        data = json.dumps(dict(credentials), sort_keys=True, separators=(",", ":"))
        return self.keyring.encrypt(data, aad_for(CREDENTIALS_TABLE, link_id, CREDENTIALS_FIELD))

    def open(self, link: BrokerLink) -> dict[str, str]:
        """The plaintext credentials; a clear error when they are gone or unreadable."""
        if not link.credentials_enc:
            raise DomainError(
                "this broker link has no credentials any more; link it again",
                code="BROKER_LINK_INACTIVE",
                field="linkId",
            )
        try:
            raw = self.keyring.decrypt_text(
                link.credentials_enc, aad_for(CREDENTIALS_TABLE, link.id, CREDENTIALS_FIELD)
            )
        except VaultError:
            # The message names the row, never the secret; the keyring may be incomplete.
            logging.getLogger("tradegraph.brokers").error(
                "broker credentials of link %s cannot be decrypted", link.id
            )
            raise DomainError(
                "this broker link's credentials cannot be read; link it again",
                code="BROKER_LINK_INACTIVE",
                field="linkId",
            ) from None
        value = json.loads(raw)
        if not isinstance(value, dict):
            raise DomainError("broken broker credentials", code="BROKER_LINK_INACTIVE")
        return {str(k): str(v) for k, v in value.items()}


def request_policy(settings: Settings) -> RetryPolicy:
    """Retry limits for broker calls made while a GraphQL request waits."""
    deadline = max(1.0, settings.broker_timeout_seconds)
    return RetryPolicy(
        max_attempts=3,
        base_delay=0.2,
        max_delay=2.0,
        connect_timeout=min(5.0, deadline),
        attempt_timeout=min(8.0, deadline),
        deadline=deadline,
    )


AnyBroker = DerivBroker | KiteBroker | BingXBroker


def open_broker(
    endpoints: BrokerEndpoints,
    provider: str,
    credentials: Mapping[str, str],
    policy: RetryPolicy,
) -> AnyBroker:
    """The adapter for one link (nothing is connected until the first call)."""
    if provider == BrokerProvider.DERIV:
        return DerivBroker.connect(
            endpoints.deriv_app_id, credentials["token"], url=endpoints.deriv_ws_url, policy=policy
        )
    if provider == BrokerProvider.ZERODHA:
        return KiteBroker(
            endpoints.kite_api_key,
            access_token=credentials["access_token"],
            base_url=endpoints.kite_api_url,
            policy=policy,
        )
    if provider == BrokerProvider.BINGX:
        return BingXBroker(
            credentials["api_key"],
            credentials["api_secret"],
            base_url=endpoints.bingx_api_url,
            policy=policy,
        )
    raise DomainError(f"no adapter for provider {provider}", code="PROVIDER_NOT_SUPPORTED")


# -- money ---------------------------------------------------------------------------------

CURRENCY_DECIMALS = {"BTC": 8, "ETH": 8, "LTC": 8, "USDT": 2, "USDC": 2, "JPY": 0}
MAX_DECIMALS = 18
_INT64_LIMIT = Decimal(2**63)


def currency_decimals(currency: str | None) -> int:
    return CURRENCY_DECIMALS.get((currency or "").upper(), 2)


def scale_for(*values: Decimal | None, minimum: int = 0) -> int:
    """Decimals that hold every value exactly (at most 18), reduced until they fit int64."""
    present = [v for v in values if v is not None]
    scale = minimum
    for value in present:
        exponent = value.normalize().as_tuple().exponent
        if isinstance(exponent, int) and exponent < 0:
            scale = max(scale, -exponent)
    scale = min(scale, MAX_DECIMALS)
    largest = max((abs(v) for v in present), default=Decimal(0))
    while scale > 0 and largest.scaleb(scale) >= _INT64_LIMIT:
        scale -= 1
    return scale


def to_units(value: Decimal, decimals: int) -> int:
    """Minor units of a broker-reported value, rounded half-even beyond ``decimals``.

    Broker numbers are facts we record, not amounts we move, so an absurdly precise one is
    kept as close as the column allows instead of being refused.
    """
    with localcontext() as ctx:
        ctx.prec = 80
        units = int(value.scaleb(decimals).to_integral_value(rounding=ROUND_HALF_EVEN))
    if abs(units) >= _INT64_LIMIT:
        raise DomainError("a broker reported a number out of range", code="BROKER_UNAVAILABLE")
    return units


def from_units(units: int, decimals: int) -> Decimal:
    return Decimal(units).scaleb(-decimals)


# -- logs ----------------------------------------------------------------------------------


class _StripUrlQuery(logging.Filter):
    """httpx logs every request URL at INFO; broker URLs carry tokens and signatures."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and record.args:
            record.args = tuple(_strip_query(a) for a in record.args)
        return True


def _strip_query(value: object) -> object:
    text = str(value)
    if "?" in text and "://" in text:
        return text.split("?", 1)[0] + "?[redacted]"
    return value


class _DropFrames(logging.Filter):
    """websockets logs frame contents at DEBUG; Deriv frames carry OAuth tokens."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        return not (message.startswith("> ") or message.startswith("< "))


_installed = False


def install_log_redaction() -> None:
    """Attach the filters above once per process (idempotent)."""
    global _installed
    if _installed:
        return
    logging.getLogger("httpx").addFilter(_StripUrlQuery())
    for name in ("websockets.client", "websockets.server"):
        logging.getLogger(name).addFilter(_DropFrames())
    _installed = True


# -- shared context ------------------------------------------------------------------------


@dataclass
class BrokerContext:
    """What the broker services share; ``endpoints`` changes once when the sandbox starts."""

    settings: Settings
    db: Database
    audit: AuditLog
    vault: CredentialVault
    clock: Clock
    endpoints: BrokerEndpoints
    policy: RetryPolicy

    async def bounded(self, call: Awaitable[T]) -> T:
        """Backstop so no broker work outlives a request: each adapter call has its own
        deadline, this caps a sequence of them (authorize + proposal + buy, ...).
        """
        try:
            async with asyncio.timeout(self.policy.deadline * 3 + 5):
                return await call
        except TimeoutError:
            raise BrokerUnavailable(
                "the broker did not finish in time; check the broker before retrying"
            ) from None
