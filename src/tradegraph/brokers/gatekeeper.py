"""The gatekeeper: which access level a user has, and why.

``decide`` is the policy as a pure function (evidence in, decision out) so it can be read
and tested alone. ``GatekeeperService`` gathers the evidence from BingX (the user's own
deposit history through their linked key, the referral relation through the referrer's
agent key), applies the decision to the user, audits every decision, and schedules the
next review. ``run_gatekeeper_forever`` re-validates due users every 24 hours.

An administrator's override always wins. It is stored on the review row; a change made
with the identity module's ``adminSetAccessLevel`` (audited as ``user.access_level``) is
adopted as an override too, so the two admin paths cannot fight each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal

from prometheus_client import Counter
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from tradegraph.audit.models import AuditEntry
from tradegraph.brokers.adapters.bingx import BingXBroker
from tradegraph.brokers.common import BrokerContext
from tradegraph.brokers.linking import LinkingService, effective_status
from tradegraph.brokers.models import AccessReview, BrokerLink, LinkStatus
from tradegraph.brokers.protocol import BrokerAuthError, BrokerProvider, BrokerUnavailable
from tradegraph.errors import DomainError, NotFound, RateLimited
from tradegraph.identity.models import AccessLevel, User
from tradegraph.identity.principal import Principal
from tradegraph.metrics import Metrics

if TYPE_CHECKING:
    from tradegraph.services import Services

log = logging.getLogger("tradegraph.gatekeeper")

STABLE_USD = frozenset({"USD", "USDT", "USDC", "FDUSD", "DAI", "TUSD", "BUSD"})
RETRY_BASE = timedelta(minutes=5)
RETRY_MAX = timedelta(hours=6)
CLAIM_LEASE = timedelta(minutes=10)
SELF_COOLDOWN = timedelta(minutes=1)


# -- the policy (pure) ---------------------------------------------------------------------


@dataclass(frozen=True)
class AccessPolicy:
    """The rule's parameters, from settings."""

    referrer_id: str
    min_deposit_usd: Decimal
    window: timedelta
    signup_url: str


@dataclass(frozen=True)
class AccessEvidence:
    """What the checks found. ``None`` means "could not be established"."""

    bingx_account: str | None
    credentials_ok: bool = True
    referred: bool | None = None
    referral_note: str | None = None
    deposits_usd: Decimal | None = None


@dataclass(frozen=True)
class Check:
    """One named check and its outcome, shown to the user and kept in the audit log."""

    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class Override:
    level: AccessLevel
    reason: str


@dataclass(frozen=True)
class AccessDecision:
    level: AccessLevel
    reason: str
    next_step: str | None
    checks: tuple[Check, ...]
    source: Literal["policy", "override"]


def _signup(policy: AccessPolicy) -> str:
    if policy.signup_url:
        return f"sign up on BingX through {policy.signup_url}"
    if policy.referrer_id:
        return f"sign up on BingX with referral id {policy.referrer_id}"
    return "sign up on BingX through the TradeGraph referral link"


def decide(
    evidence: AccessEvidence, policy: AccessPolicy, override: Override | None = None
) -> AccessDecision:
    """FULL when the user was referred by ``policy.referrer_id`` AND deposited at least
    ``min_deposit_usd`` in the last ``window``; otherwise LIMITED with the reason and the
    next step. An override decides the level but the checks are still reported.
    """
    days = max(1, round(policy.window / timedelta(days=1)))
    minimum = policy.min_deposit_usd
    checks: list[Check] = []
    steps: list[str] = []

    linked = evidence.bingx_account is not None and evidence.credentials_ok
    if evidence.bingx_account is None:
        checks.append(Check("bingx_linked", False, "no BingX account is linked"))
        steps.append(f"{_signup(policy)}, then link your BingX API key")
    elif not evidence.credentials_ok:
        checks.append(Check("bingx_linked", False, "BingX refused the linked API key"))
        steps.append("link your BingX API key again")
    else:
        checks.append(Check("bingx_linked", True, f"BingX account {evidence.bingx_account}"))

    if linked:
        if evidence.referred is True:
            checks.append(Check("referral", True, f"referred by {policy.referrer_id}"))
        elif evidence.referred is False:
            checks.append(Check("referral", False, "the BingX account was not referred by us"))
            steps.append(f"{_signup(policy)} (the account must be opened through our referral)")
        else:
            note = evidence.referral_note or "the referral could not be checked"
            checks.append(Check("referral", False, note))
            steps.append("contact support: the referral check is not available")

        deposited = evidence.deposits_usd
        if deposited is not None and deposited >= minimum:
            checks.append(
                Check("deposits", True, f"deposited {deposited} USD in the last {days} days")
            )
        elif deposited is not None:
            checks.append(
                Check(
                    "deposits",
                    False,
                    f"deposited {deposited} USD in the last {days} days; {minimum} needed",
                )
            )
            steps.append(f"deposit at least {minimum - deposited} USD more on BingX")
        else:
            checks.append(Check("deposits", False, "the deposit history could not be read"))

    passed = bool(checks) and all(c.passed for c in checks) and len(checks) == 3
    if override is not None:
        return AccessDecision(
            level=override.level,
            reason=f"set by an administrator: {override.reason}",
            next_step=None,
            checks=tuple(checks),
            source="override",
        )
    if passed:
        return AccessDecision(
            level=AccessLevel.FULL,
            reason=(
                f"referred by {policy.referrer_id} and deposited at least {minimum} USD "
                f"in the last {days} days"
            ),
            next_step=None,
            checks=tuple(checks),
            source="policy",
        )
    failing = next(c for c in checks if not c.passed)
    return AccessDecision(
        level=AccessLevel.LIMITED,
        reason=failing.detail,
        next_step="; ".join(steps) or None,
        checks=tuple(checks),
        source="policy",
    )


def retry_delay(failures: int) -> timedelta:
    """Backoff for reviews that could not reach BingX: 5 min doubling, at most 6 hours."""
    return min(RETRY_MAX, RETRY_BASE * (2 ** max(0, failures - 1)))


# -- the service ---------------------------------------------------------------------------


class ReviewDeferred(DomainError):
    """BingX did not answer; the user's level is unchanged and the review is retried."""

    code = "BROKER_UNAVAILABLE"


class GatekeeperService:
    """Computes, applies, audits and schedules access decisions."""

    def __init__(
        self,
        ctx: BrokerContext,
        linking: LinkingService,
        metrics: Metrics,
        *,
        on_user_changed: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self.ctx = ctx
        self.linking = linking
        # Told after a user's access level is written (drops cached principals).
        self.on_user_changed = on_user_changed
        self.decisions = Counter(
            "tradegraph_gatekeeper_decisions_total",
            "Access decisions by resulting level and source.",
            ["level", "source"],
            registry=metrics.registry,
        )
        self.runs = Counter(
            "tradegraph_gatekeeper_runs_total",
            "Gatekeeper job iterations by outcome.",
            ["outcome"],
            registry=metrics.registry,
        )

    @property
    def policy(self) -> AccessPolicy:
        settings = self.ctx.settings
        endpoints = self.ctx.endpoints
        return AccessPolicy(
            referrer_id=endpoints.bingx_referrer_id,
            min_deposit_usd=settings.gatekeeper_min_deposit_usd,
            window=timedelta(days=settings.gatekeeper_deposit_window_days),
            signup_url=endpoints.bingx_signup_url,
        )

    @property
    def interval(self) -> timedelta:
        return timedelta(seconds=max(60, self.ctx.settings.gatekeeper_interval_seconds))

    # -- evidence ----------------------------------------------------------------------

    async def _bingx_link(self, user_id: str) -> BrokerLink | None:
        now = self.ctx.clock.now()
        async with self.ctx.db.session() as session:
            links = list(
                await session.scalars(
                    select(BrokerLink)
                    .where(
                        BrokerLink.user_id == user_id,
                        BrokerLink.provider == BrokerProvider.BINGX,
                        BrokerLink.status.in_((LinkStatus.ACTIVE, LinkStatus.ERROR)),
                    )
                    .order_by(BrokerLink.linked_at.desc())
                )
            )
        usable = [link for link in links if effective_status(link, now) is LinkStatus.ACTIVE]
        candidates = usable or links
        return candidates[0] if candidates else None

    async def gather(self, user_id: str) -> AccessEvidence:
        """Ask BingX; raises ``ReviewDeferred`` when it cannot answer right now."""
        link = await self._bingx_link(user_id)
        if link is None:
            return AccessEvidence(bingx_account=None)
        if link.status is LinkStatus.ERROR:
            return AccessEvidence(bingx_account=link.account_ref, credentials_ok=False)
        endpoints = self.ctx.endpoints
        now = self.ctx.clock.now()
        policy = self.policy
        credentials = self.ctx.vault.open(link)
        try:
            async with BingXBroker(
                credentials["api_key"],
                credentials["api_secret"],
                base_url=endpoints.bingx_api_url,
                policy=self.ctx.policy,
            ) as user_key:
                deposits = await self.ctx.bounded(
                    user_key.deposit_history(start_time=now - policy.window, end_time=now)
                )
        except BrokerAuthError as exc:
            await self.linking.mark_error(link, exc)
            return AccessEvidence(bingx_account=link.account_ref, credentials_ok=False)
        except BrokerUnavailable as exc:
            raise ReviewDeferred(f"BingX deposit history: {exc.message}") from None
        rates = {k.upper(): v for k, v in self.ctx.settings.broker_fx_rates.items()}
        total = Decimal(0)
        for deposit in deposits:
            coin = deposit.coin.upper()
            when = deposit.inserted_at
            if not deposit.credited or when is None or not now - policy.window <= when <= now:
                continue
            rate = Decimal(1) if coin in STABLE_USD else rates.get(coin)
            if rate is not None:
                total += deposit.amount * rate
        referred: bool | None = None
        note = None
        if endpoints.referral_check_configured:
            try:
                async with BingXBroker(
                    endpoints.bingx_referrer_api_key,
                    endpoints.bingx_referrer_api_secret,
                    base_url=endpoints.bingx_api_url,
                    policy=self.ctx.policy,
                ) as agent:
                    relation = await self.ctx.bounded(agent.invite_relation(link.account_ref))
                referred = relation.invited_by_us
            except BrokerUnavailable as exc:
                raise ReviewDeferred(f"BingX referral check: {exc.message}") from None
            except DomainError as exc:
                # The agent key itself was refused: a server misconfiguration, not the user's.
                log.error("BingX referral check failed: %s", exc.code)
                note = "the referral check is misconfigured on this server"
        else:
            note = "the referral check is not configured on this server"
        return AccessEvidence(
            bingx_account=link.account_ref,
            referred=referred,
            referral_note=note,
            deposits_usd=total.quantize(Decimal("0.01")),
        )

    # -- reviews -----------------------------------------------------------------------

    async def _review_row(self, user_id: str) -> AccessReview:
        async with self.ctx.db.session() as session:
            row = await session.get(AccessReview, user_id)
            if row is None:
                if await session.get(User, user_id) is None:
                    raise NotFound("user not found", field="userId")
                row = AccessReview(user_id=user_id, next_check_at=self.ctx.clock.now())
                session.add(row)
                try:
                    await session.commit()
                except IntegrityError:
                    await session.rollback()  # created concurrently
                    row = await session.get(AccessReview, user_id)
                    if row is None:
                        raise
        return row

    async def _adopt_admin_changes(self, row: AccessReview) -> AccessReview:
        """Treat an ``adminSetAccessLevel`` newer than what we saw as an override."""
        async with self.ctx.db.session() as session:
            entry = await session.scalar(
                select(AuditEntry)
                .where(
                    AuditEntry.action == "user.access_level",
                    AuditEntry.target_id == row.user_id,
                    AuditEntry.seq > row.admin_audit_seq,
                )
                .order_by(AuditEntry.seq.desc())
                .limit(1)
            )
            if entry is None:
                return row
            after = json.loads(entry.data).get("after", {})
            level = str(after.get("access_level", "")).rsplit(".", 1)[-1]
            values: dict[str, Any] = {"admin_audit_seq": entry.seq}
            if level in AccessLevel.__members__:
                values.update(
                    override_level=AccessLevel(level),
                    override_reason=str(after.get("access_reason") or "set by an administrator")[
                        :255
                    ],
                    override_by=entry.actor_id,
                    override_at=entry.at,
                )
            await session.execute(
                update(AccessReview).where(AccessReview.user_id == row.user_id).values(**values)
            )
            await session.commit()
            fresh = await session.get(AccessReview, row.user_id, populate_existing=True)
        assert fresh is not None
        return fresh

    async def review(
        self,
        user_id: str,
        *,
        actor_id: str | None = None,
        trigger: str = "schedule",
        ip: str | None = None,
    ) -> AccessDecision:
        """Re-validate one user now: gather, decide, apply, audit, schedule."""
        row = await self._adopt_admin_changes(await self._review_row(user_id))
        now = self.ctx.clock.now()
        try:
            evidence = await self.gather(user_id)
        except ReviewDeferred as exc:
            failures = row.failures + 1
            async with self.ctx.db.session() as session:
                await session.execute(
                    update(AccessReview)
                    .where(AccessReview.user_id == user_id)
                    .values(
                        failures=failures,
                        last_error=exc.message[:255],
                        next_check_at=now + retry_delay(failures),
                    )
                )
                await session.commit()
            await self.ctx.audit.record(
                "access.review_deferred",
                actor_id=actor_id,
                target_type="user",
                target_id=user_id,
                ip=ip,
                data={"trigger": trigger, "reason": exc.message[:200], "failures": failures},
            )
            raise
        override = (
            Override(row.override_level, row.override_reason or "no reason given")
            if row.override_level is not None
            else None
        )
        decision = decide(evidence, self.policy, override)
        await self._apply(user_id, decision, now=now, actor_id=actor_id, trigger=trigger, ip=ip)
        return decision

    async def _apply(
        self,
        user_id: str,
        decision: AccessDecision,
        *,
        now: datetime,
        actor_id: str | None,
        trigger: str,
        ip: str | None,
    ) -> None:
        reason = decision.reason
        if decision.next_step:
            reason = f"{reason}. Next step: {decision.next_step}"
        async with self.ctx.db.session() as session:
            user = await session.get(User, user_id)
            if user is None:
                raise NotFound("user not found", field="userId")
            previous = user.access_level
            user.access_level = decision.level
            user.access_reason = reason[:255]
            await session.execute(
                update(AccessReview)
                .where(AccessReview.user_id == user_id)
                .values(
                    level=decision.level,
                    reason=decision.reason[:255],
                    next_step=(decision.next_step or None) and decision.next_step[:512],
                    checks=json.dumps([asdict(c) for c in decision.checks]),
                    last_checked_at=now,
                    next_check_at=now + self.interval,
                    failures=0,
                    last_error=None,
                )
            )
            await session.commit()
        if self.on_user_changed is not None and previous is not decision.level:
            await self.on_user_changed(user_id)
        self.decisions.labels(decision.level.value, decision.source).inc()
        await self.ctx.audit.record(
            "access.decided",
            actor_id=actor_id,
            target_type="user",
            target_id=user_id,
            ip=ip,
            data={
                "trigger": trigger,
                "level": decision.level.value,
                "previous": previous.value,
                "changed": previous is not decision.level,
                "downgraded": previous is AccessLevel.FULL
                and decision.level is AccessLevel.LIMITED,
                "source": decision.source,
                "reason": decision.reason,
                "checks": [asdict(c) for c in decision.checks],
            },
        )

    async def current(self, user_id: str) -> AccessReview | None:
        async with self.ctx.db.session() as session:
            return await session.get(AccessReview, user_id)

    async def review_self(self, principal: Principal, *, ip: str | None = None) -> AccessDecision:
        """A user asking again; at most once a minute (each review calls BingX twice)."""
        row = await self.current(principal.user_id)
        now = self.ctx.clock.now()
        if row is not None and row.last_checked_at and now - row.last_checked_at < SELF_COOLDOWN:
            raise RateLimited("your access was checked less than a minute ago; try again soon")
        return await self.review(
            principal.user_id, actor_id=principal.user_id, trigger="user", ip=ip
        )

    async def admin_review(
        self, admin: Principal, user_id: str, *, ip: str | None = None
    ) -> AccessDecision:
        admin.require_admin()
        return await self.review(user_id, actor_id=admin.user_id, trigger="admin", ip=ip)

    async def set_override(
        self,
        admin: Principal,
        user_id: str,
        level: AccessLevel | None,
        reason: str | None,
        *,
        ip: str | None = None,
    ) -> AccessDecision:
        """Pin a user's level (``level``) or hand them back to the policy (``None``)."""
        admin.require_admin()
        text = (reason or "").strip()[:200] or "no reason given"
        await self._adopt_admin_changes(await self._review_row(user_id))
        now = self.ctx.clock.now()
        async with self.ctx.db.session() as session:
            await session.execute(
                update(AccessReview)
                .where(AccessReview.user_id == user_id)
                .values(
                    override_level=level,
                    override_reason=text if level is not None else None,
                    override_by=admin.user_id if level is not None else None,
                    override_at=now if level is not None else None,
                )
            )
            await session.commit()
        await self.ctx.audit.record(
            "access.override_set" if level is not None else "access.override_cleared",
            actor_id=admin.user_id,
            target_type="user",
            target_id=user_id,
            ip=ip,
            data={"level": level.value if level is not None else None, "reason": text},
        )
        try:
            return await self.review(user_id, actor_id=admin.user_id, trigger="override", ip=ip)
        except ReviewDeferred:
            if level is None:
                raise
        # BingX is unreachable, but an override does not need its answer.
        decision = AccessDecision(level, f"set by an administrator: {text}", None, (), "override")
        await self._apply(
            user_id, decision, now=now, actor_id=admin.user_id, trigger="override", ip=ip
        )
        return decision

    async def after_link_change(self, user_id: str) -> None:
        """A BingX link appeared or went away: review now (deferred on broker trouble)."""
        with contextlib.suppress(ReviewDeferred):
            await self.review(user_id, trigger="link_changed")

    async def run_due(self, *, limit: int = 100) -> int:
        """Review every user whose next check is due; each is claimed by one worker."""
        now = self.ctx.clock.now()
        async with self.ctx.db.session() as session:
            due = list(
                await session.scalars(
                    select(AccessReview.user_id)
                    .where(AccessReview.next_check_at <= now)
                    .order_by(AccessReview.next_check_at)
                    .limit(limit)
                )
            )
        done = 0
        for user_id in due:
            async with self.ctx.db.session() as session:
                claimed = await session.execute(
                    update(AccessReview)
                    .where(AccessReview.user_id == user_id, AccessReview.next_check_at <= now)
                    .values(next_check_at=now + CLAIM_LEASE)
                )
                await session.commit()
            if claimed.rowcount != 1:  # type: ignore[attr-defined]
                continue
            try:
                await self.review(user_id, trigger="schedule")
            except ReviewDeferred:
                pass
            except Exception:
                log.exception("gatekeeper review of user %s failed", user_id)
            done += 1
        return done


async def run_gatekeeper_forever(
    services: Services, stop: asyncio.Event, *, poll_seconds: float = 60.0
) -> None:
    """The periodic job: expire/refresh broker links, then re-validate due users.

    Stops promptly when ``stop`` is set; an iteration that fails (database down, ...) is
    retried with exponential backoff up to 5 minutes. Counted in
    ``tradegraph_gatekeeper_runs_total``.
    """
    brokers = services.brokers
    failures = 0
    while not stop.is_set():
        try:
            await brokers.linking.sweep()
            await brokers.linking.stale_states()
            await brokers.gatekeeper.run_due()
        except Exception:
            failures += 1
            brokers.gatekeeper.runs.labels("error").inc()
            log.exception("gatekeeper iteration failed (%d in a row)", failures)
            delay = min(300.0, 2.0**failures)
        else:
            failures = 0
            brokers.gatekeeper.runs.labels("ok").inc()
            delay = poll_seconds
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=delay)
