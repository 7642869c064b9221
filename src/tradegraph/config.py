"""One ``Settings`` object, read from ``TRADEGRAPH_*`` environment variables.

It is built once and passed explicitly (``create_app(settings)``), so tests build their own
without patching module globals. The defaults are the embedded, zero-configuration mode:
a SQLite file under ``var/``, in-process pub/sub, the sequencer inside the API process.
"""

from __future__ import annotations

import os
import secrets
import time
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

Environment = Literal["development", "test", "production"]


class Settings(BaseSettings):
    """Runtime configuration. Every field maps to ``TRADEGRAPH_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="TRADEGRAPH_", extra="ignore")

    env: Environment = "development"
    data_dir: Path = Path("var")
    database_url: str = ""
    redis_url: str | None = None
    redis_prefix: str = "tg"
    db_pool_size: int = 30
    db_echo: bool = False

    # HTTP surface
    host: str = "127.0.0.1"
    port: int = 8000
    # Comma-separated in the environment (NoDecode: not parsed as JSON first).
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    max_body_bytes: int = 1_000_000
    public_url: str = "http://127.0.0.1:8000"

    # Tokens
    jwt_secret: str = ""
    jwt_issuer: str = "tradegraph"
    jwt_audience: str = "tradegraph-api"
    access_token_ttl_seconds: int = 15 * 60
    refresh_token_ttl_seconds: int = 30 * 24 * 3600
    email_token_ttl_seconds: int = 24 * 3600

    # Passwords (argon2id); the minimums are enforced in the validator below
    argon2_memory_kib: int = 19_456
    argon2_time_cost: int = 2
    argon2_parallelism: int = 1

    # Vault: "kid:base64key,..." primary first; empty means a key file in data_dir
    vault_keys: str = ""

    # Query limits (security baseline)
    max_query_depth: int = 12
    max_aliases: int = 30
    max_tokens: int = 2_000
    max_query_cost: int = 50_000
    max_page_size: int = 200
    ws_max_subscriptions: int = 20
    ws_connection_init_timeout_seconds: float = 10.0

    # Rate limits
    rate_limit_ip_per_minute: int = 600
    rate_limit_user_per_minute: int = 1_200
    login_max_failures: int = 5
    login_lockout_seconds: int = 15 * 60

    # Exchange engine: "embedded" runs the sequencer in this process (in-process bus);
    # "remote" sends commands over Redis Streams to a `tradegraph engine` process.
    engine_mode: Literal["embedded", "remote"] = "embedded"
    engine_request_timeout_seconds: float = 10.0
    # Embedded mode: prove every command and result is JSON-shaped, as the Redis transport
    # needs (costs a JSON round trip each; the test suite turns it on)
    bus_wire_check: bool = False

    # HMAC secret shared with the payment provider; empty disables /webhooks/deposits
    deposit_webhook_secret: str = ""

    # Periodic jobs (gatekeeper re-validation...), each run by one leader-locked worker
    background_jobs: bool = True
    # Run repeated trading mutations compiled (graphql/compiled.py); off = always Strawberry
    compile_operations: bool = True
    # How long a bearer token's principal is remembered (0 disables; see principal_cache)
    auth_cache_seconds: float = 2.0
    # Freeze the startup heap and raise GC thresholds once started (see gctuning.py)
    gc_tuning: bool = True

    # Demo and embedded runtime
    market_maker: bool = False
    demo_faucet: bool = False
    broker_sandbox: bool = False
    log_json: bool = True
    log_level: str = "INFO"

    # Brokers. Empty credentials mean "not configured"; TRADEGRAPH_BROKER_SANDBOX fills
    # them with the local fakes' well-known values instead.
    broker_redirect_uris: str = ""  # comma-separated allowlist for startBrokerLink
    broker_timeout_seconds: float = 15.0  # hard budget of one broker call in a request
    broker_fx_rates: dict[str, Decimal] = Field(
        default_factory=lambda: {
            "USD": Decimal(1),
            "USDT": Decimal(1),
            "USDC": Decimal(1),
            "EUR": Decimal("1.08"),
            "GBP": Decimal("1.27"),
            "INR": Decimal("0.012"),
        }
    )  # units of USD per unit of currency, for summaries in a chosen currency
    deriv_app_id: str = ""
    deriv_oauth_url: str = "https://oauth.deriv.com/oauth2/authorize"
    deriv_ws_url: str = "wss://ws.derivws.com/websockets/v3"
    kite_api_key: str = ""
    kite_api_secret: str = ""
    kite_login_url: str = "https://kite.zerodha.com/connect/login"
    kite_api_url: str = "https://api.kite.trade"
    bingx_api_url: str = "https://open-api.bingx.com"
    bingx_referrer_id: str = ""  # the referrer's BingX uid (the gatekeeper's check)
    bingx_referrer_api_key: str = ""  # the referrer's agent key, for inviteRelationCheck
    bingx_referrer_api_secret: str = ""
    bingx_signup_url: str = ""  # the referral signup link shown as the next step
    gatekeeper_min_deposit_usd: Decimal = Decimal(200)
    gatekeeper_deposit_window_days: int = 5
    gatekeeper_interval_seconds: int = 24 * 3600

    # Market data. The simulator is the embedded default's price source for SIM-venue
    # instruments (tests turn it off); Binance/Deriv feeds are off until symbols are set,
    # as "VENUE:OURS,..." pairs, e.g. "BTCUSDT:BTCUSD" or "frxEURUSD:EURUSD".
    market_simulator: bool = True
    market_simulator_seed: int = 7
    market_mark_interval_seconds: float = 1.0  # at most one mark-price command per symbol
    candle_grace_ms: int = 2_000  # a tick this late still corrects its bar
    candle_publish_interval_seconds: float = 0.5  # forming-bar updates per topic, at most
    market_binance_symbols: str = ""
    market_binance_url: str = "wss://stream.binance.com:9443"
    market_deriv_symbols: str = ""
    market_deriv_url: str = ""  # full websocket URL; default deriv_ws_url?app_id=...

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [o.strip() for o in value.split(",") if o.strip()]
        return value

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.argon2_memory_kib < 19_456 and self.env == "production":
            raise ValueError("argon2 memory must be at least 19 MiB in production")
        if self.env == "production" and len(self.jwt_secret) < 32:
            raise ValueError("TRADEGRAPH_JWT_SECRET must be set (32+ chars) in production")
        if self.max_page_size < 1:
            raise ValueError("max_page_size must be positive")
        return self

    @property
    def is_production(self) -> bool:
        return self.env == "production"

    @property
    def resolved_database_url(self) -> str:
        """The database URL, defaulting to a SQLite file in ``data_dir``."""
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'tradegraph.db').as_posix()}"

    @property
    def pubsub_url(self) -> str:
        return self.redis_url or "memory://"

    def resolved_jwt_secret(self) -> str:
        """The signing secret; in development a random one is kept in ``data_dir``.

        Keeping it in a file (mode 0600) means tokens survive a restart of ``make run``.
        """
        if self.jwt_secret:
            return self.jwt_secret
        path = self.data_dir / "jwt.secret"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            # O_EXCL: when several workers start at once, exactly one writes the secret.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            for _ in range(50):  # the winner may still be writing it
                value = path.read_text().strip()
                if value:
                    return value
                time.sleep(0.01)
            raise RuntimeError(f"{path} is empty") from None
        value = secrets.token_urlsafe(48)
        with os.fdopen(fd, "w") as handle:
            handle.write(value)
        return value
