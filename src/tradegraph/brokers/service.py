"""``BrokerService``: the broker domain as one collaborator of ``Services``.

It owns the shared context (clock, vault, endpoints, retry limits) and the four services
built on it: ``linking`` (OAuth and API-key links), ``trading`` (Deriv contracts),
``summaries`` (balances and P/L) and ``gatekeeper`` (access levels). In sandbox mode it
starts the fake brokers and points the endpoints at them.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from tradegraph.audit.service import AuditLog
from tradegraph.brokers.common import (
    BrokerContext,
    BrokerEndpoints,
    Clock,
    CredentialVault,
    install_log_redaction,
    request_policy,
)
from tradegraph.brokers.gatekeeper import GatekeeperService
from tradegraph.brokers.linking import LinkingService
from tradegraph.brokers.protocol import BrokerProvider
from tradegraph.brokers.sandbox_mode import RunningSandbox, start_sandbox
from tradegraph.brokers.summary import SummaryService
from tradegraph.brokers.trading import TradingService
from tradegraph.config import Settings
from tradegraph.db import Database
from tradegraph.metrics import Metrics
from tradegraph.security.vault import Keyring

log = logging.getLogger("tradegraph.brokers")


class BrokerService:
    """Everything broker-related for one app."""

    def __init__(
        self,
        *,
        settings: Settings,
        db: Database,
        audit: AuditLog,
        keyring: Keyring,
        metrics: Metrics,
        on_user_changed: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        install_log_redaction()
        self.clock = Clock()
        self.ctx = BrokerContext(
            settings=settings,
            db=db,
            audit=audit,
            vault=CredentialVault(keyring),
            clock=self.clock,
            endpoints=BrokerEndpoints.from_settings(settings),
            policy=request_policy(settings),
        )
        self.linking = LinkingService(self.ctx, on_change=self._link_changed)
        self.trading = TradingService(self.ctx, self.linking)
        self.summaries = SummaryService(self.ctx, self.linking, self.trading)
        self.gatekeeper = GatekeeperService(
            self.ctx, self.linking, metrics, on_user_changed=on_user_changed
        )
        self.sandbox: RunningSandbox | None = None

    async def start(self) -> None:
        """Start the fake brokers when sandbox mode is on (never in production)."""
        settings = self.ctx.settings
        if not settings.broker_sandbox or self.sandbox is not None:
            return
        if settings.is_production:
            raise RuntimeError("TRADEGRAPH_BROKER_SANDBOX must not be set in production")
        self.sandbox, self.ctx.endpoints = await start_sandbox(self.ctx.endpoints)

    async def stop(self) -> None:
        sandbox, self.sandbox = self.sandbox, None
        if sandbox is not None:
            await sandbox.stop()

    async def _link_changed(self, user_id: str, provider: str) -> None:
        # The gatekeeper's evidence comes from BingX: review when that link changes.
        if provider == BrokerProvider.BINGX:
            await self.gatekeeper.after_link_change(user_id)
