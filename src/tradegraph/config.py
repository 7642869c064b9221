"""One ``Settings`` object, read from ``TRADEGRAPH_*`` environment variables.

It is built once and passed explicitly (``create_app(settings)``), so tests build their own
without patching module globals. The defaults are the embedded, zero-configuration mode:
a SQLite file under ``var/``, in-process pub/sub, the sequencer inside the API process.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Environment = Literal["development", "test", "production"]


class Settings(BaseSettings):
    """Runtime configuration. Every field maps to ``TRADEGRAPH_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="TRADEGRAPH_", extra="ignore")

    env: Environment = "development"
    data_dir: Path = Path("var")
    database_url: str = ""
    redis_url: str | None = None
    redis_prefix: str = "tg"
    db_pool_size: int = 10
    db_echo: bool = False

    # HTTP surface
    host: str = "127.0.0.1"
    port: int = 8000
    cors_origins: list[str] = Field(default_factory=list)
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

    # Demo and embedded runtime
    demo_faucet: bool = False
    broker_sandbox: bool = False
    log_json: bool = True
    log_level: str = "INFO"

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
        if path.exists():
            return path.read_text().strip()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        value = secrets.token_urlsafe(48)
        path.touch(mode=0o600)
        path.write_text(value)
        return value
