"""The sequencer: the single writer of balances, orders and books.

Loop: take a batch of commands from the bus, apply each to the in-memory ``Engine`` in
order (collecting results and effects), write the whole batch in one transaction, and only
then answer the callers and publish the events. If the commit fails, every caller of the
batch gets ENGINE_UNAVAILABLE, the in-memory state is dropped and rebuilt from the
database: an acknowledged command is never lost, an unacknowledged one never half-applied.
Batches grow under load by themselves (group commit).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from tradegraph.bus import EngineBus, Incoming
from tradegraph.db import new_id, utcnow
from tradegraph.errors import DomainError
from tradegraph.exchange import models as m
from tradegraph.exchange.book import InstrumentStatus, OrderType, Side, STPMode, TimeInForce
from tradegraph.exchange.engine import (
    BalanceUpdate,
    BookDelta,
    Engine,
    InstrumentSpec,
    InstrumentStatusChanged,
    MarkPrice,
    OrderRequest,
    OrderUpdate,
    PlaceResult,
    Posting,
    Trade,
)
from tradegraph.exchange.store import BatchWrite, ExchangeStore, order_from_row
from tradegraph.exchange.values import TEXT
from tradegraph.metrics import Metrics
from tradegraph.wire import encode_object

log = logging.getLogger("tradegraph.sequencer")

FEE_ACCOUNT_ID = 1
MAX_BATCH = 512
_INITIAL_BACKOFF = 0.05
# How long the engine keeps a closed order's clientOrderId in memory (seconds): retries
# within it are answered from memory; later ones cost one query (_recall_client_order_ids).
CLIENT_ORDER_ID_MEMORY = 600.0


Publish = Callable[[list[tuple[str, dict[str, Any]]]], None]


@dataclass
class AccountInfo:
    owner_id: str | None
    kind: str
    status: str
    # The owner's event topic, made once (events name it several times per order).
    topic: str | None = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.topic = None if self.owner_id is None else f"user:{self.owner_id}"


# Results written to ``engine_commands`` (the same text ``json.dumps(result, default=str)``
# gives), built once: ``json.dumps`` with options makes a new encoder on every call.
_LOG_ENCODER = json.JSONEncoder(default=str)


E = TypeVar("E")

_SIDES = {e.value: e for e in Side}
_ORDER_TYPES = {e.value: e for e in OrderType}
_TIMES_IN_FORCE = {e.value: e for e in TimeInForce}
_STP_MODES = {e.value: e for e in STPMode}


def _member(members: dict[str, E], value: Any, field: str) -> E:
    """The enum member named by a command's text, or INVALID_INPUT.

    A dict lookup, not ``Enum(value)``: this runs four times per order, and a bad value
    in a command from the bus must be that order's error, not a failed batch.
    """
    member = members.get(value) if isinstance(value, str) else None
    if member is None:
        raise DomainError(f"invalid {field} {value!r}", code="INVALID_INPUT", field=field)
    return member


def params_hash(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def order_dict(u: OrderUpdate) -> dict[str, Any]:
    r = u.request
    return {
        "id": u.order_id,
        "account_id": r.account_id,
        "symbol": r.symbol,
        "side": TEXT[r.side],
        "type": TEXT[r.type],
        "time_in_force": TEXT[r.time_in_force],
        "status": TEXT[u.status],
        "price": r.price,
        "stop_price": r.stop_price,
        "quantity": r.quantity,
        "quote_quantity": r.quote_quantity,
        "post_only": r.post_only,
        "client_order_id": r.client_order_id,
        "filled_qty": u.filled_qty,
        "remaining_qty": u.remaining_qty,
        "quote_filled": u.quote_filled,
        "fee_paid": u.fee_paid,
        "reason": u.reason,
    }


def trade_dict(t: Trade, ts: str) -> dict[str, Any]:
    return {
        "id": t.trade_id,
        "symbol": t.symbol,
        "seq": t.seq,
        "price": t.price,
        "qty": t.qty,
        "notional": t.notional,
        "taker_side": TEXT[t.taker_side],
        "taker_fee": t.taker_fee,
        "maker_fee": t.maker_fee,
        "ts": ts,
    }


def _tx_dict(t: m.Transaction) -> dict[str, Any]:
    return {
        "id": t.id,
        "account_id": t.account_id,
        "kind": t.kind.value,
        "status": t.status.value,
        "asset": t.asset,
        "amount": t.amount,
        "idempotency_key": t.idempotency_key,
        "params_hash": t.params_hash,
        "reference": t.reference,
        "created_at": t.created_at.isoformat(),
    }


def error_result(error: DomainError) -> dict[str, Any]:
    return {"error": {"code": error.code, "message": error.message, "field": error.field}}


@dataclass
class PreparedBatch:
    """A batch applied in memory: what to write, whom to answer, what to publish."""

    batch: list[Any]
    replies: list[tuple[Any, dict[str, Any]]]
    write: BatchWrite
    events: list[tuple[str, dict[str, Any]]]
    bodies: dict[str, str]  # command id -> its result as wire JSON, where already encoded
    started: float


class Sequencer:
    """Owns one ``Engine``; applies bus commands in order; persists, answers, publishes."""

    def __init__(
        self,
        store: ExchangeStore,
        bus: EngineBus,
        publish: Publish,
        *,
        demo_faucet: bool = False,
        log_commands: bool = True,
        metrics: Metrics | None = None,
        max_batch: int = MAX_BATCH,
        batch_wait: float = 0.001,
        client_order_id_memory: float = CLIENT_ORDER_ID_MEMORY,
    ) -> None:
        self.store = store
        self.bus = bus
        self.publish = publish
        self.demo_faucet = demo_faucet
        # The command log answers redelivered commands (Redis Streams); an in-process bus
        # never redelivers, so the embedded engine skips that write.
        self.log_commands = log_commands
        self.metrics = metrics
        self.max_batch = max_batch
        self.batch_wait = batch_wait
        self.client_order_id_memory = client_order_id_memory
        # (closed at, account, clientOrderId) of closed orders, oldest first
        self._closed_coids: deque[tuple[float, int, str]] = deque()
        self._clock = 0.0
        self.engine = Engine(fee_account_id=FEE_ACCOUNT_ID)
        self.accounts: dict[int, AccountInfo] = {}
        self.venues: dict[str, str] = {}
        self.user_seq: dict[str, int] = {}
        self.next_account_id = FEE_ACCOUNT_ID + 1
        # (account, idempotency key) -> (params hash, transaction row) for money commands
        self.tx_keys: dict[tuple[int, str], tuple[str, dict[str, Any]]] = {}
        self.ready = asyncio.Event()
        self.batches = 0
        self.commands = 0
        self._batch = BatchWrite()
        self._events: list[tuple[str, dict[str, Any]]] = []
        self._last_order: tuple[OrderUpdate, dict[str, Any]] | None = None  # see _place_result
        self._ts = ""
        self._bodies: dict[str, str] = {}
        self._backoff = _INITIAL_BACKOFF

    # --------------------------------------------------------------------- rebuild

    async def rebuild(self) -> None:
        """Drop all in-memory state and load it again from the database."""
        snap = await self.store.load()
        self._closed_coids.clear()
        engine = Engine(fee_account_id=FEE_ACCOUNT_ID)
        for asset in snap.assets:
            engine.add_asset(asset.code, asset.decimals)
        decimals = {a.code: a.decimals for a in snap.assets}
        self.venues = {}
        for ins in snap.instruments:
            engine.add_instrument(
                InstrumentSpec(
                    symbol=ins.symbol,
                    base_asset=ins.base_asset,
                    quote_asset=ins.quote_asset,
                    base_decimals=decimals[ins.base_asset],
                    quote_decimals=decimals[ins.quote_asset],
                    price_decimals=ins.price_decimals,
                    qty_decimals=ins.qty_decimals,
                    tick=ins.tick,
                    lot=ins.lot,
                    min_qty=ins.min_qty,
                    min_notional=ins.min_notional,
                    maker_fee_bps=ins.maker_fee_bps,
                    taker_fee_bps=ins.taker_fee_bps,
                    status=ins.status,
                )
            )
            engine.restore_last_price(ins.symbol, ins.last_price)
            self.venues[ins.symbol] = ins.venue.value
        for bal in snap.balances:
            engine.load_balance(bal.account_id, bal.asset, bal.total, bal.locked)
        for row in snap.open_orders:
            engine.restore_order(order_from_row(row))
        state = snap.state
        restored = engine.counters()
        engine.set_counters(
            next_order_id=max(state.get("next_order_id", 1), restored.next_order_id),
            next_trade_id=state.get("next_trade_id", 1),
            next_priority=max(state.get("next_priority", 1), restored.next_priority),
            topic_seqs={
                k[len("seq:") :]: v
                for k, v in state.items()
                if (k.startswith("seq:book:") or k.startswith("seq:trades:"))
                and k.split(":", 2)[2] in self.venues
            },
        )
        self.user_seq = {k[len("seq:") :]: v for k, v in state.items() if k.startswith("seq:user:")}
        self.accounts = {
            a.id: AccountInfo(a.owner_id, a.kind.value, a.status.value) for a in snap.accounts
        }
        self.next_account_id = max([FEE_ACCOUNT_ID, *self.accounts]) + 1
        self.tx_keys = {
            (t.account_id, t.idempotency_key): (t.params_hash, _tx_dict(t))
            for t in snap.transactions
            if t.idempotency_key
        }
        self.engine = engine
        if FEE_ACCOUNT_ID not in self.accounts:
            self._batch.accounts.append(
                {
                    "id": FEE_ACCOUNT_ID,
                    "owner_id": None,
                    "kind": m.AccountKind.SYSTEM.value,
                    "status": m.AccountStatus.ACTIVE.value,
                    "name": "Exchange fees",
                    "created_at": utcnow(),
                }
            )
            await self.store.commit(self._batch)
            self._batch = BatchWrite()
            self.accounts[FEE_ACCOUNT_ID] = AccountInfo(None, "SYSTEM", "ACTIVE")
        problems = engine.check_invariants()
        if problems:
            raise RuntimeError(f"rebuilt state is inconsistent: {problems[:5]}")
        self.ready.set()
        log.info(
            "sequencer rebuilt",
            extra={"open_orders": len(snap.open_orders), "accounts": len(self.accounts)},
        )

    # ------------------------------------------------------------------------ loop

    async def run(self, stop: asyncio.Event) -> None:
        """Process batches until ``stop`` is set; rebuild after any failed commit.

        Pipelined: while one batch's commit is in flight, the next batch is taken and
        applied in memory (on top of the first). Its commit starts only after the first
        one committed, so commits, answers and events keep the batch order. When a
        commit fails, the batch applied on top of it fails too (nothing of it was
        written or answered) and the state is rebuilt from the database.
        """
        await self.rebuild()
        committing: asyncio.Task[bool] | None = None
        try:
            while not stop.is_set():
                batch = await self._take(stop)
                if batch is None:
                    break
                if not batch:
                    continue
                if committing is not None and (
                    committing.done() or any(getattr(i, "redelivered", False) for i in batch)
                ):
                    # A redelivered command looks up committed results: settle first.
                    ok, committing = await committing, None
                    if not ok:
                        await self._recover()
                try:
                    prepared = await self.prepare(batch)
                except Exception:
                    log.exception("applying a batch of %d commands failed", len(batch))
                    await self._fail(batch)
                    if committing is not None:
                        await committing
                        committing = None
                    await self._recover()
                    continue
                if committing is not None:
                    ok, committing = await committing, None
                    if not ok:  # applied on top of a batch that is not in the database
                        await self._fail(batch)
                        await self._recover()
                        continue
                committing = asyncio.create_task(self.commit(prepared), name="sequencer-commit")
        finally:
            if committing is not None:  # answer what was applied before stopping
                await asyncio.shield(committing)

    async def _take(self, stop: asyncio.Event) -> list[Any] | None:
        """The next batch from the bus, or None once ``stop`` is set."""
        take = asyncio.ensure_future(self.bus.take(self.max_batch, self.batch_wait))
        stopper = asyncio.ensure_future(stop.wait())
        done, _ = await asyncio.wait({take, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if take not in done:
            take.cancel()
            return None
        return take.result()

    async def _fail(self, batch: list[Any]) -> None:
        """Answer every command of a batch that will never be written: try again."""
        if self.metrics is not None:
            self.metrics.engine_failures.inc()
        failed = {"error": {"code": "ENGINE_UNAVAILABLE", "message": "try again", "field": None}}
        try:
            await self.bus.reply_many([(incoming, failed) for incoming in batch])
        except Exception:  # the callers time out instead; Redis redelivers
            log.exception("could not answer a failed batch of %d commands", len(batch))

    async def _recover(self) -> None:
        """Rebuild from the database after a failure, with a growing pause between tries."""
        await asyncio.sleep(self._backoff)
        self._backoff = min(self._backoff * 2, 2.0)
        try:
            await self.rebuild()
        except Exception:
            log.exception("rebuild failed; will retry on the next batch")

    async def prepare(self, batch: list[Any]) -> PreparedBatch:
        """Apply a batch to the in-memory engine; collect its rows, answers and events."""
        started = self._clock = time.perf_counter()
        self._forget_closed_client_order_ids()
        await self._recall_client_order_ids(batch)
        self._batch = BatchWrite()
        self._events = []
        self._bodies = {}
        self._ts = utcnow().isoformat()
        replies: list[tuple[Any, dict[str, Any]]] = []
        for incoming in batch:
            if getattr(incoming, "redelivered", False):
                # An earlier engine may have committed it before dying: answer, don't redo.
                stored = await self.store.command_result(incoming.command_id)
                if stored is not None:
                    replies.append((incoming, stored))
                    continue
            replies.append((incoming, self.apply(incoming)))
        # Book deltas and balance rows are coalesced over the batch by the engine.
        self._absorb(self.engine.flush())
        self._flush_counters()
        return PreparedBatch(batch, replies, self._batch, self._events, self._bodies, started)

    async def _recall_client_order_ids(self, batch: list[Any]) -> None:
        """Give the engine back the stored orders of the clientOrderIds a batch names that
        it does not hold.

        The engine holds the ids of open orders and of orders closed in the last
        ``client_order_id_memory`` seconds; an older id (or any closed before a restart)
        is still taken in the database. Placed as new, it would fail the unique key and
        with it the whole batch, on every retry. One query, only for unknown ids.
        """
        engine = self.engine
        unknown: set[tuple[int, str]] = set()
        for incoming in batch:
            payload = incoming.payload if isinstance(incoming.payload, dict) else {}
            orders: Any
            if incoming.kind == "place":
                orders = [payload.get("order")]
            elif incoming.kind == "place_many":
                orders = payload.get("orders")
            else:
                continue
            for order in orders if isinstance(orders, list) else ():
                coid = order.get("client_order_id") if isinstance(order, dict) else None
                if coid is None:  # most orders: one lookup
                    continue
                account = order.get("account_id")
                if (
                    isinstance(coid, str)
                    and isinstance(account, int)
                    and not engine.knows_client_order_id(account, coid)
                ):
                    unknown.add((account, coid))
        if unknown:
            for row in await self.store.orders_by_client_order_id(unknown):
                stored = order_from_row(row)
                engine.remember_client_order_id(stored.request, PlaceResult(stored, []))
                coid = stored.request.client_order_id
                if coid is not None and not stored.is_open:
                    self._closed_coids.append((self._clock, row.account_id, coid))

    def _forget_closed_client_order_ids(self) -> None:
        """Drop closed orders' clientOrderIds held longer than the memory period."""
        closed, engine = self._closed_coids, self.engine
        horizon = self._clock - self.client_order_id_memory
        while closed and closed[0][0] <= horizon:
            _, account, coid = closed.popleft()
            engine.forget_client_order_id(account, coid)

    async def commit(self, prepared: PreparedBatch) -> bool:
        """Write a prepared batch; then answer its callers and publish its events.

        Returns False (callers told ENGINE_UNAVAILABLE) when the write failed: the
        in-memory state is then ahead of the database and must be rebuilt.
        """
        try:
            await self.store.commit(prepared.write)
        except Exception:
            log.exception("commit of a batch of %d commands failed", len(prepared.batch))
            await self._fail(prepared.batch)
            return False
        self._backoff = _INITIAL_BACKOFF
        self.batches += 1
        self.commands += len(prepared.batch)
        if self.metrics is not None:
            self.metrics.engine_batch_size.observe(len(prepared.batch))
            self.metrics.engine_commit_seconds.observe(time.perf_counter() - prepared.started)
        try:
            await self.bus.reply_many(prepared.replies, bodies=prepared.bodies)
        except Exception:  # written: a redelivered command is answered from the log
            log.exception("could not answer a batch of %d commands", len(prepared.batch))
        if prepared.events:
            try:
                self.publish(prepared.events)
            except Exception:  # events are best effort; the write and answers stand
                log.exception("could not publish a batch's events")
        return True

    def _flush_counters(self) -> None:
        c = self.engine.counters()
        self._batch.state.update(
            {
                "next_order_id": c.next_order_id,
                "next_trade_id": c.next_trade_id,
                "next_priority": c.next_priority,
            }
        )
        for topic, seq in c.topic_seqs.items():
            self._batch.state[f"seq:{topic}"] = seq

    # ------------------------------------------------------------------ commands

    def apply(self, incoming: Incoming) -> dict[str, Any]:
        handler = getattr(self, f"_cmd_{incoming.kind}", None)
        if handler is None:
            return error_result(DomainError(f"unknown command {incoming.kind}"))
        try:
            result: dict[str, Any] = handler(incoming.payload)
        except DomainError as error:
            result = error_result(error)
        if self.log_commands and incoming.kind not in ("book", "mark_price"):
            try:
                # The same text answers the caller over Redis: encoded once.
                text = self._bodies[incoming.command_id] = encode_object(result)
            except (TypeError, ValueError):  # not wire-clean: the bus will say so
                text = _LOG_ENCODER.encode(result)
            self._batch.commands.append(
                {"command_id": incoming.command_id, "kind": incoming.kind, "result": text}
            )
        return result

    def _account(self, account_id: int, user_id: str | None, *, admin: bool = False) -> AccountInfo:
        info = self.accounts.get(account_id)
        if info is None or (not admin and info.owner_id != user_id):
            raise DomainError("account not found", code="ACCOUNT_NOT_FOUND", field="accountId")
        if info.status != m.AccountStatus.ACTIVE.value:
            raise DomainError(
                "this account is not active", code="ACCOUNT_INACTIVE", field="accountId"
            )
        return info

    def _cmd_open_account(self, p: dict[str, Any]) -> dict[str, Any]:
        kind = p["kind"]
        if kind not in {k.value for k in m.AccountKind} or kind == "SYSTEM":
            raise DomainError("unknown account kind", code="INVALID_INPUT", field="kind")
        account_id = self.next_account_id
        self.next_account_id += 1
        self.accounts[account_id] = AccountInfo(p["owner_id"], kind, "ACTIVE")
        self._batch.accounts.append(
            {
                "id": account_id,
                "owner_id": p["owner_id"],
                "kind": kind,
                "status": "ACTIVE",
                "name": p.get("name") or kind.title(),
                "created_at": utcnow(),
            }
        )
        return {"account_id": account_id}

    @staticmethod
    def _request(p: dict[str, Any]) -> OrderRequest:
        get = p.get  # the service leaves out what is None (and post_only when False)
        # Positional, in OrderRequest's field order (keywords cost ~15% more per order).
        return OrderRequest(
            int(p["account_id"]),
            p["symbol"],
            _member(_SIDES, p["side"], "side"),
            _member(_ORDER_TYPES, p["type"], "type"),
            get("quantity"),
            get("price"),
            get("stop_price"),
            get("quote_quantity"),
            _member(_TIMES_IN_FORCE, get("time_in_force", "GTC"), "timeInForce"),
            bool(get("post_only", False)),
            get("client_order_id"),
            _member(_STP_MODES, get("stp", "EXPIRE_TAKER"), "selfTradePrevention"),
        )

    def _place_one(self, p: dict[str, Any], user_id: str | None, limited: bool) -> dict[str, Any]:
        try:
            info = self._account(int(p["account_id"]), user_id)
            if limited and info.kind == m.AccountKind.SPOT.value:
                raise DomainError(
                    "your access level is LIMITED: SPOT trading needs FULL access",
                    code="ACCESS_LIMITED",
                    field="accountId",
                )
            result, effects = self.engine.place(self._request(p))
        except DomainError as error:
            return error_result(error)
        if not result.replayed:
            self._batch.new_orders.add(result.order.order_id)
        self._absorb(effects)
        return self._place_result(result)

    def _place_result(self, result: PlaceResult) -> dict[str, Any]:
        # The order's final state is usually the command's last ORDER event: one dict
        # for both (neither is changed after this).
        last = self._last_order
        order = (
            last[1] if last is not None and last[0] is result.order else order_dict(result.order)
        )
        self._last_order = None
        return {
            "order": order,
            "trades": [trade_dict(t, self._ts) for t in result.trades],
            "replayed": result.replayed,
        }

    def _cmd_noop(self, p: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True}

    def _cmd_place(self, p: dict[str, Any]) -> dict[str, Any]:
        return self._place_one(p["order"], p.get("user_id"), bool(p.get("limited")))

    def _cmd_place_many(self, p: dict[str, Any]) -> dict[str, Any]:
        user_id, limited = p.get("user_id"), bool(p.get("limited"))
        return {"results": [self._place_one(o, user_id, limited) for o in p["orders"]]}

    def _cmd_cancel(self, p: dict[str, Any]) -> dict[str, Any]:
        account_id = int(p["account_id"])
        self._account(account_id, p.get("user_id"), admin=bool(p.get("admin")))
        update, effects = self.engine.cancel(
            account_id, p.get("order_id"), client_order_id=p.get("client_order_id")
        )
        self._absorb(effects)
        return {"order": order_dict(update)}

    def _cmd_cancel_all(self, p: dict[str, Any]) -> dict[str, Any]:
        account_id = int(p["account_id"])
        self._account(account_id, p.get("user_id"), admin=bool(p.get("admin")))
        updates, effects = self.engine.cancel_all(account_id, p.get("symbol"))
        self._absorb(effects)
        return {"orders": [order_dict(u) for u in updates]}

    def _money(self, kind: m.TransactionKind, p: dict[str, Any]) -> dict[str, Any]:
        account_id = int(p["account_id"])
        admin = kind is m.TransactionKind.CREDIT
        info = self._account(account_id, p.get("user_id"), admin=admin)
        if (
            kind is m.TransactionKind.DEPOSIT
            and info.kind != "PAPER"
            and not (info.kind == "SPOT" and self.demo_faucet)
        ):
            raise DomainError(
                "deposits here only go to PAPER accounts (or SPOT with the demo faucet); real "
                "money arrives through the payment provider",
                code="DEPOSIT_NOT_ALLOWED",
                field="accountId",
            )
        asset, amount = p["asset"], int(p["amount"])
        key = p.get("idempotency_key")
        if key:
            seen = self.tx_keys.get((account_id, key))
            if seen is not None:
                if seen[0] != p.get("params_hash"):
                    raise DomainError(
                        "this idempotency key was used with other parameters",
                        code="DUPLICATE_IDEMPOTENCY_KEY",
                        field="idempotencyKey",
                    )
                current = self.engine.balance(account_id, seen[1]["asset"])
                return {
                    "transaction": seen[1],
                    "balance": {"total": current.total, "locked": current.locked},
                    "replayed": True,
                }
        tx_id = new_id()
        if kind is m.TransactionKind.WITHDRAWAL:
            balance, effects = self.engine.withdraw(account_id, asset, amount, ref=tx_id)
        elif kind is m.TransactionKind.DEPOSIT:
            balance, effects = self.engine.deposit(account_id, asset, amount, ref=tx_id)
        else:
            balance, effects = self.engine.credit(account_id, asset, amount, ref=tx_id)
        self._absorb(effects)
        tx = {
            "id": tx_id,
            "account_id": account_id,
            "kind": kind.value,
            "status": m.TransactionStatus.COMPLETED.value,
            "asset": asset,
            "amount": amount,
            "idempotency_key": p.get("idempotency_key"),
            "params_hash": p.get("params_hash") or "",
            "reference": p.get("reference"),
            "created_at": utcnow(),
        }
        self._batch.transactions.append(tx)
        public = {**tx, "created_at": tx["created_at"].isoformat()}
        if key:
            self.tx_keys[(account_id, key)] = (tx["params_hash"], public)
        return {
            "transaction": public,
            "balance": {"total": balance.total, "locked": balance.locked},
            "replayed": False,
        }

    def _cmd_deposit(self, p: dict[str, Any]) -> dict[str, Any]:
        return self._money(m.TransactionKind.DEPOSIT, p)

    def _cmd_withdraw(self, p: dict[str, Any]) -> dict[str, Any]:
        return self._money(m.TransactionKind.WITHDRAWAL, p)

    def _cmd_credit(self, p: dict[str, Any]) -> dict[str, Any]:
        return self._money(m.TransactionKind.CREDIT, p)

    def _cmd_halt(self, p: dict[str, Any]) -> dict[str, Any]:
        spec, effects = self.engine.halt(p["symbol"])
        self._absorb(effects)
        return {"symbol": spec.symbol, "status": spec.status.value}

    def _cmd_resume(self, p: dict[str, Any]) -> dict[str, Any]:
        spec, effects = self.engine.resume(p["symbol"])
        self._absorb(effects)
        return {"symbol": spec.symbol, "status": spec.status.value}

    def _cmd_mark_price(self, p: dict[str, Any]) -> dict[str, Any]:
        triggered, effects = self.engine.mark_price(p["symbol"], int(p["price"]))
        self._absorb(effects)
        return {"triggered": triggered}

    def _cmd_book(self, p: dict[str, Any]) -> dict[str, Any]:
        snap = self.engine.depth(p["symbol"], int(p.get("depth", 20)))
        bid, ask = self.engine.best_bid_ask(p["symbol"])
        return {
            "symbol": snap.symbol,
            "seq": snap.seq,
            "bids": [list(level) for level in snap.bids],  # JSON-shaped: [price, qty]
            "asks": [list(level) for level in snap.asks],
            "last": self.engine.last_price(p["symbol"]),
            "best_bid": bid,
            "best_ask": ask,
        }

    # ------------------------------------------------------------------- effects

    def _user_topic(self, account_id: int) -> str | None:
        info = self.accounts.get(account_id)
        return None if info is None else info.topic

    def _emit_user(self, account_id: int, type_: str, data: dict[str, Any]) -> None:
        topic = self._user_topic(account_id)
        if topic is None:
            return
        seq = self.user_seq.get(topic, 0) + 1
        self.user_seq[topic] = seq
        self._batch.state[f"seq:{topic}"] = seq
        self._events.append(
            (topic, {"topic": topic, "seq": seq, "ts": self._ts, "type": type_, "data": data})
        )

    def _absorb(self, effects: list[Any]) -> None:
        """Route one command's effects into the batch write and the event list."""
        batch = self._batch
        events = self._events
        ts = self._ts
        for e in effects:
            if isinstance(e, OrderUpdate):
                batch.orders[e.order_id] = e
                data = order_dict(e)
                self._last_order = (e, data)
                request = e.request
                self._emit_user(request.account_id, "ORDER", data)
                if request.client_order_id is not None and not e.is_open:
                    self._closed_coids.append(
                        (self._clock, request.account_id, request.client_order_id)
                    )
            elif isinstance(e, Trade):
                batch.trades.append(e)
                batch.postings.extend((p, None) for p in e.postings())
                data = trade_dict(e, ts)
                topic = f"trades:{e.symbol}"
                events.append(
                    (topic, {"topic": topic, "seq": e.seq, "ts": ts, "type": "TRADE", "data": data})
                )
                for account_id, order_id, side, fee, liquidity in (
                    (
                        e.taker_account_id,
                        e.taker_order_id,
                        e.taker_side.value,
                        e.taker_fee,
                        "TAKER",
                    ),
                    (
                        e.maker_account_id,
                        e.maker_order_id,
                        "SELL" if e.taker_side is Side.BUY else "BUY",
                        e.maker_fee,
                        "MAKER",
                    ),
                ):
                    self._emit_user(
                        account_id,
                        "FILL",
                        {
                            **data,
                            "order_id": order_id,
                            "account_id": account_id,
                            "side": side,
                            "fee": fee,
                            "liquidity": liquidity,
                        },
                    )
            elif isinstance(e, Posting):
                batch.postings.append((e, None))
            elif isinstance(e, BalanceUpdate):
                batch.balances[(e.account_id, e.asset)] = e
                self._emit_user(
                    e.account_id,
                    "BALANCE",
                    {
                        "account_id": e.account_id,
                        "asset": e.asset,
                        "total": e.total,
                        "locked": e.locked,
                    },
                )
            elif isinstance(e, BookDelta):
                topic = f"book:{e.symbol}"
                events.append(
                    (
                        topic,
                        {
                            "topic": topic,
                            "seq": e.seq,
                            "ts": ts,
                            "type": "DELTA",
                            "data": {"changes": [[s.value, p, q] for s, p, q in e.changes]},
                        },
                    )
                )
            elif isinstance(e, MarkPrice):
                batch.instrument_prices[e.symbol] = e.price
            elif isinstance(e, InstrumentStatusChanged):
                batch.instrument_status[e.symbol] = e.status.value
        for t in (e for e in effects if isinstance(e, Trade)):
            batch.instrument_prices[t.symbol] = t.price


__all__ = ["FEE_ACCOUNT_ID", "InstrumentStatus", "Sequencer", "params_hash"]
