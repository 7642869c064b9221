"""The command bus between API workers and the sequencer: in-process or Redis Streams.

The sequencer (DESIGN.md section 5) is the single writer of balances and orders. API
workers hand it commands through a :class:`CommandBus` and wait for the answer; the engine
drains them in order through an :class:`EngineBus`. Commands and results are opaque JSON
objects here: the bus moves them, the sequencer gives them meaning.

Semantics shared by both transports:

* **Timeouts.** ``request`` never hangs: it raises :class:`EngineUnavailable` (code
  ``ENGINE_UNAVAILABLE``) when no answer arrives within ``timeout``, when the command
  cannot be handed over in time (full queue, Redis down or slow), when the bus knows the
  engine is not running, or when it is closed. Such a failure means *outcome unknown*:
  the command may still be executed. Retrying with the same ``command_id`` is the safe
  follow-up, because the sequencer answers an already committed ``command_id`` from the
  database instead of applying it twice.
* **Deadline.** Each command carries the wall-clock instant its caller stops waiting
  (:attr:`Incoming.deadline`). The engine may refuse stale commands (:meth:`Incoming.expired`)
  so that a command queued during an outage is not executed long after its caller was
  told it failed. The bus itself never drops commands.
* **Duplicates.** Concurrent requests with one ``command_id`` in one process share a single
  send and get the same result dict (treat it as read-only). Across processes, retries
  and engine restarts the *engine must dedupe* by ``command_id``: a retried request is a
  new stream entry, and an entry delivered to an engine that died before replying is
  delivered again (flagged :attr:`Incoming.redelivered`). The sequencer has to keep
  ``command_id`` unique anyway, so the bus adds no second dedupe store.
* **Copies.** Payloads and results cross the bus as JSON in both transports (``Decimal``
  becomes a string, ``datetime`` ISO-8601, ``UUID`` a string, ``Enum`` its value), so
  the engine never shares a mutable dict with a caller and embedded mode behaves exactly
  like production.
* **Replies.** Every :class:`Incoming` the engine takes must be replied to exactly once
  (``reply`` or ``reply_many``); a reply for a caller that has given up is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import random
import socket
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.typing import EncodableT, FieldT

from tradegraph.config import Settings
from tradegraph.errors import Unavailable
from tradegraph.wire import decode, encode_object

__all__ = [
    "DEFAULT_TIMEOUT",
    "BusStats",
    "BusUnavailable",
    "CommandBus",
    "EngineBus",
    "EngineUnavailable",
    "Envelope",
    "InProcessBus",
    "Incoming",
    "RedisStreamsBus",
]

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT: Final = 5.0
"""Seconds ``request`` waits for the engine's answer when no ``timeout`` is given."""

Result = dict[str, Any]


class EngineUnavailable(Unavailable):
    """The sequencer did not answer in time, is not running, or cannot be reached.

    The command may or may not have been executed: retry with the same ``command_id``.
    """

    code = "ENGINE_UNAVAILABLE"


class BusUnavailable(Unavailable):
    """Engine side: the transport failed (Redis down), e.g. while sending replies."""

    code = "BUS_UNAVAILABLE"


@dataclass(frozen=True, slots=True)
class Envelope:
    """One command on the wire. ``reply_to`` and ``deadline`` are set by the bus."""

    command_id: str
    kind: str
    payload: dict[str, Any]
    reply_to: str = ""
    deadline: float | None = None  # epoch seconds: the caller stops waiting then


@dataclass(frozen=True, slots=True, eq=False)
class Incoming:
    """A command as the engine receives it; hand it back to ``reply``.

    ``redelivered`` is True for a Redis entry that an earlier engine read but never
    acknowledged: it may already be committed, so look its ``command_id`` up first.
    ``receipt`` is the transport's handle (the stream entry id on Redis).
    """

    envelope: Envelope
    redelivered: bool = False
    receipt: str = ""

    @property
    def command_id(self) -> str:
        return self.envelope.command_id

    @property
    def kind(self) -> str:
        return self.envelope.kind

    @property
    def payload(self) -> dict[str, Any]:
        return self.envelope.payload

    @property
    def deadline(self) -> float | None:
        return self.envelope.deadline

    def expired(self, now: float | None = None) -> bool:
        """True once the caller has stopped waiting (its ``request`` timed out)."""
        deadline = self.envelope.deadline
        return deadline is not None and (time.time() if now is None else now) > deadline


class CommandBus(Protocol):
    """What API workers use: send one command, await its result."""

    async def request(
        self,
        kind: str,
        payload: Mapping[str, Any],
        *,
        command_id: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - a deadline for the whole exchange
    ) -> Result:
        """Send a command and return the engine's result; :class:`EngineUnavailable`
        when there is none within ``timeout`` seconds (default :data:`DEFAULT_TIMEOUT`)."""
        ...


class EngineBus(Protocol):
    """What the sequencer uses: take commands in order, answer each one."""

    async def take(self, max_items: int, max_wait: float) -> list[Incoming]:
        """Block until at least one command is there, then gather more for up to
        ``max_wait`` seconds or until ``max_items`` (group commit). Never empty."""
        ...

    async def reply(self, incoming: Incoming, result: Mapping[str, Any]) -> None:
        """Answer one command."""
        ...

    async def reply_many(
        self,
        replies: Iterable[tuple[Incoming, Mapping[str, Any]]],
        *,
        bodies: Mapping[str, str] | None = None,
    ) -> None:
        """Answer a batch at once (one round trip on Redis).

        ``bodies`` may map a command id to its result already encoded with
        :func:`tradegraph.wire.encode_object` (the sequencer encodes each result once
        for its command log), so a transport that sends JSON does not encode it again.
        """
        ...


@dataclass(slots=True)
class BusStats:
    """Monotonic counters for the metrics module (read the attributes, never reset)."""

    requests: int = 0
    sent: int = 0
    joined: int = 0
    timeouts: int = 0
    unavailable: int = 0
    late_replies: int = 0
    taken: int = 0
    redelivered: int = 0
    replies: int = 0
    poison: int = 0
    reconnects: int = 0
    send_batches: int = 0  # worker side: XADD pipelines written (one per burst)


def _check_wire_format(value: Mapping[str, Any]) -> None:
    """Raise unless ``value`` arrives unchanged through JSON (as over Redis)."""
    encode_object(value)  # refuses what JSON cannot carry at all (objects)
    if not _json_shaped(value):
        raise TypeError(
            "payload is not JSON-shaped (tuples, non-string keys, Decimal...): it would "
            f"arrive changed through the Redis transport: {value!r:.300}"
        )


def _json_shaped(value: object) -> bool:
    """Only dict (str keys), list, str, int, float, bool and None, all the way down;
    ValueError for NaN and infinities (the wire writes them as null)."""
    if value is None or isinstance(value, str | int):  # bool is an int
        return True
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value} cannot travel as JSON")
        return True
    if type(value) is list:
        return all(_json_shaped(v) for v in value)
    if type(value) is dict:
        return all(type(k) is str and _json_shaped(v) for k, v in value.items())
    return False


def _check_take_args(max_items: int, max_wait: float) -> None:
    if max_items < 1:
        raise ValueError("max_items must be at least 1")
    if max_wait < 0:
        raise ValueError("max_wait must not be negative")


def _redact(url: str) -> str:
    """The URL without credentials, for error messages and logs."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _entry_key(entry_id: str) -> tuple[int, int]:
    """A stream entry id (``"<ms>-<seq>"``) as numbers, which order like the stream."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _backoff(attempt: int, base: float, cap: float) -> float:
    """Exponential backoff with jitter, so reconnecting workers do not stampede."""
    delay = min(cap, base * 2 ** min(attempt, 30))
    return delay / 2 + random.uniform(0, delay / 2)


class _Pending:
    __slots__ = ("future", "waiters")

    def __init__(self, future: asyncio.Future[Result]) -> None:
        self.future = future
        self.waiters = 0


class _Requester:
    """The caller half both transports share: pending futures keyed by ``command_id``."""

    _send_stall = "sending stalled"

    def __init__(self, default_timeout: float) -> None:
        if default_timeout <= 0:
            raise ValueError("default_timeout must be positive")
        self.default_timeout = default_timeout
        self.stats = BusStats()
        self._pending: dict[str, _Pending] = {}

    @property
    def in_flight(self) -> int:
        """Gauge: commands sent and not yet answered."""
        return len(self._pending)

    def _check_ready(self) -> None:
        """Raise :class:`EngineUnavailable` when sending is known to be pointless."""
        raise NotImplementedError

    def _encode(self, payload: Mapping[str, Any]) -> Any:
        """The payload as this transport carries it (JSON text unless overridden)."""
        return encode_object(payload)

    async def _send(self, command_id: str, kind: str, body: Any, deadline: float) -> None:
        """Hand one encoded command to the transport (``deadline`` in epoch seconds)."""
        raise NotImplementedError

    async def request(
        self,
        kind: str,
        payload: Mapping[str, Any],
        *,
        command_id: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - a deadline for the whole exchange
    ) -> Result:
        """Send a command and await its result (see the module docstring for semantics)."""
        wait = self.default_timeout if timeout is None else timeout
        if wait <= 0:
            raise ValueError("timeout must be positive")
        if not kind:
            raise ValueError("kind must be a non-empty string")
        body = self._encode(payload)
        cid = command_id or str(uuid.uuid4())
        self.stats.requests += 1
        try:
            self._check_ready()
        except EngineUnavailable:
            self.stats.unavailable += 1
            raise
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        entry = self._pending.get(cid)
        owner = entry is None
        if entry is None:
            entry = self._pending[cid] = _Pending(loop.create_future())
        else:
            self.stats.joined += 1
        entry.waiters += 1
        sent = not owner
        try:
            async with asyncio.timeout_at(deadline):
                if owner:
                    try:
                        await self._send(cid, kind, body, time.time() + wait)
                    except BaseException as exc:
                        self._abandon(cid, entry, exc)
                        raise
                    sent = True
                    self.stats.sent += 1
                return await asyncio.shield(entry.future)
        except TimeoutError:
            self.stats.timeouts += 1
            if not sent:
                raise EngineUnavailable(
                    f"could not hand {kind} {cid} to the engine within {wait:g}s"
                    f" ({self._send_stall})"
                ) from None
            raise EngineUnavailable(
                f"the engine did not answer {kind} {cid} within {wait:g}s"
            ) from None
        except EngineUnavailable:
            self.stats.unavailable += 1
            raise
        finally:
            entry.waiters -= 1
            if entry.waiters == 0 and self._pending.get(cid) is entry:
                del self._pending[cid]

    def _abandon(self, cid: str, entry: _Pending, exc: BaseException) -> None:
        """The send failed: fail callers that joined this ``command_id`` too."""
        if self._pending.get(cid) is entry:
            del self._pending[cid]
        if not entry.future.done():
            error = (
                exc
                if isinstance(exc, EngineUnavailable)
                else EngineUnavailable(f"sending command {cid} failed")
            )
            entry.future.set_exception(error)
            entry.future.exception()  # retrieved: no "never retrieved" warning if alone

    def _resolve(self, command_id: str, result: Result) -> None:
        entry = self._pending.pop(command_id, None)
        if entry is None or entry.future.done():
            self.stats.late_replies += 1
            return
        entry.future.set_result(result)

    def _fail_all(self, reason: str) -> None:
        pending, self._pending = self._pending, {}
        for entry in pending.values():
            if not entry.future.done():
                entry.future.set_exception(EngineUnavailable(reason))
                entry.future.exception()


# ------------------------------------------------------------------------- in-process


class InProcessBus(_Requester):
    """Both sides in one process: a bounded ``asyncio.Queue`` and futures.

    ``max_queue`` is the backpressure: when the engine falls that far behind, ``request``
    waits for room (within its own timeout) instead of growing memory without bound.

    Payloads and results are handed over as they are, not encoded: a JSON round trip of a
    100-order ``placeOrders`` and its results cost about a tenth of the request's CPU.
    Both sides build fresh dicts and only read what they receive, so nothing is shared
    mutably. ``wire_check`` (on in the test suite) proves each one is exactly what the
    Redis transport would deliver (only dicts with string keys, lists, strings, numbers,
    booleans and None; finite floats), so code tested in-process behaves the same across
    processes.
    """

    _send_stall = "the engine's queue stayed full"

    def __init__(
        self,
        *,
        max_queue: int = 10_000,
        default_timeout: float = DEFAULT_TIMEOUT,
        wire_check: bool = True,
    ) -> None:
        if max_queue < 1:
            raise ValueError("max_queue must be at least 1")
        super().__init__(default_timeout)
        self._queue: asyncio.Queue[Incoming] = asyncio.Queue(max_queue)
        self._carry: list[Incoming] = []
        self._closed = False
        self.wire_check = wire_check

    def _encode(self, payload: Mapping[str, Any]) -> Any:
        if not isinstance(payload, Mapping):
            raise TypeError(f"expected a mapping, not {type(payload).__name__}")
        if self.wire_check:
            _check_wire_format(payload)
        return payload

    @property
    def queued(self) -> int:
        """Gauge: commands waiting for the engine."""
        return self._queue.qsize() + len(self._carry)

    @property
    def connected(self) -> bool:
        return not self._closed

    async def start(self) -> None:
        """Nothing to connect; present so both transports have the same lifecycle."""

    async def close(self) -> None:
        """Fail every waiting caller and refuse new requests. Idempotent.

        Commands still queued stay queued; ``take`` keeps working so an engine can drain.
        """
        self._closed = True
        self._fail_all("the command bus is closed")

    def _check_ready(self) -> None:
        if self._closed:
            raise EngineUnavailable("the command bus is closed")

    async def _send(self, command_id: str, kind: str, body: Any, deadline: float) -> None:
        incoming = Incoming(Envelope(command_id, kind, body, "", deadline))
        await self._queue.put(incoming)

    async def take(self, max_items: int, max_wait: float) -> list[Incoming]:
        """See :meth:`EngineBus.take`. Cancelling it loses nothing: items already
        gathered are returned by the next call."""
        _check_take_args(max_items, max_wait)
        if self._carry:
            return self._pop_carry(max_items)
        batch = self._carry  # gathered in place, so a cancellation keeps what we have
        batch.append(await self._queue.get())
        self._drain(batch, max_items)
        if len(batch) < max_items and max_wait > 0:
            deadline = asyncio.get_running_loop().time() + max_wait
            while len(batch) < max_items:
                try:
                    async with asyncio.timeout_at(deadline):
                        item = await self._queue.get()
                except TimeoutError:
                    break
                batch.append(item)
                self._drain(batch, max_items)
        self._carry = []
        self.stats.taken += len(batch)
        return batch

    def _drain(self, batch: list[Incoming], max_items: int) -> None:
        queue = self._queue
        while len(batch) < max_items and not queue.empty():
            batch.append(queue.get_nowait())

    def _pop_carry(self, max_items: int) -> list[Incoming]:
        batch, self._carry = self._carry[:max_items], self._carry[max_items:]
        self.stats.taken += len(batch)
        return batch

    async def reply(self, incoming: Incoming, result: Mapping[str, Any]) -> None:
        await self.reply_many(((incoming, result),))

    async def reply_many(
        self,
        replies: Iterable[tuple[Incoming, Mapping[str, Any]]],
        *,
        bodies: Mapping[str, str] | None = None,
    ) -> None:
        replies = list(replies)  # results are handed over as they are: bodies unused
        for _, result in replies:  # all checked before any is delivered
            if not isinstance(result, Mapping):
                raise TypeError(f"expected a mapping, not {type(result).__name__}")
            if self.wire_check:
                _check_wire_format(result)
        for incoming, result in replies:
            self.stats.replies += 1
            self._resolve(incoming.command_id, result if isinstance(result, dict) else dict(result))


# ---------------------------------------------------------------------- Redis Streams

Role = Literal["worker", "engine"]

_UNSET: Final = "0-0"


class RedisStreamsBus(_Requester):
    """Commands over Redis Streams, for N API workers and one (leader-locked) engine.

    Keys (``prefix`` is prepended verbatim, e.g. ``"tg:"``):

    * ``{prefix}cmd``: the commands stream. A worker ``XADD``s one entry per request
      (``command_id``, ``kind``, ``payload`` JSON, ``reply_to``, ``deadline`` epoch ms),
      capped with ``MAXLEN ~ cmd_maxlen``; one sender task writes whatever requests
      are waiting in one pipeline of at most ``send_batch`` entries. The engine reads
      it through the consumer group ``group``, ``XACK``s an entry only after replying
      to it, and trims the stream to its oldest unanswered entry (``MINID ~``).
    * ``{prefix}reply:{worker_id}``: one reply stream per worker instance. Its single
      reader task resolves futures by ``command_id``; replies nobody waits for are
      dropped. The engine trims it (``MAXLEN ~ reply_maxlen``) and refreshes a TTL
      (``reply_ttl``) so the stream of a worker that died disappears by itself.
    * ``{prefix}engine``: the engine's heartbeat (a key with a TTL of
      ``engine_ttl`` seconds, refreshed every ``heartbeat_interval``). Workers check it
      from their reader task, so ``request`` fails fast while no engine runs instead of
      queueing commands nobody will execute in time.

    ``role="worker"`` instances call ``request``; ``role="engine"`` instances call
    ``take``/``reply``/``reply_many``. Only the leader (see ``jobs.leader``) may run an
    engine instance: on its first ``take`` it claims every entry still pending in the
    group (delivered to a previous engine, never acknowledged) and hands those out first,
    flagged ``redelivered``, before any new command, so order is kept.

    Failures: a worker whose reader loses Redis fails its in-flight requests at once and
    rejects new ones until it reconnects (exponential backoff with jitter); the same
    happens when the engine heartbeat disappears. An engine's ``take`` keeps retrying
    with backoff (it only returns commands); ``reply_many`` raises
    :class:`BusUnavailable`, after which calling it again with the same replies is safe.
    """

    _send_stall = "Redis did not take the command"

    def __init__(
        self,
        url: str,
        *,
        role: Role,
        prefix: str = "tg:",
        worker_id: str | None = None,
        group: str = "sequencer",
        default_timeout: float = DEFAULT_TIMEOUT,
        io_timeout: float = 2.0,
        connect_timeout: float = 2.0,
        start_timeout: float | None = None,
        heartbeat_interval: float = 1.0,
        engine_ttl: float = 3.0,
        cmd_maxlen: int = 100_000,
        reply_maxlen: int = 10_000,
        reply_ttl: int = 3600,
        reconnect_base: float = 0.05,
        reconnect_cap: float = 2.0,
        max_connections: int = 32,
        send_batch: int = 500,
    ) -> None:
        if role not in ("worker", "engine"):
            raise ValueError("role must be 'worker' or 'engine'")
        if engine_ttl <= heartbeat_interval:
            raise ValueError("engine_ttl must be longer than heartbeat_interval")
        super().__init__(default_timeout)
        self.role: Role = role
        self.prefix = prefix
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.command_stream = f"{prefix}cmd"
        self.reply_stream = f"{prefix}reply:{self.worker_id}"
        self.engine_key = f"{prefix}engine"
        self.group = group
        self.consumer = f"engine-{self.worker_id}"
        self.last_error: str | None = None
        self._url = _redact(url)
        self._io_timeout = io_timeout
        self._connect_timeout = connect_timeout
        # start() waits for one whole first attempt (connect, then a round trip or two),
        # not for a single operation's budget: a loaded host must not fail a healthy start.
        self._start_timeout = (
            start_timeout if start_timeout is not None else connect_timeout + 2 * io_timeout
        )
        self._heartbeat_interval = heartbeat_interval
        self._engine_ttl = engine_ttl
        self._cmd_maxlen = cmd_maxlen
        self._reply_maxlen = reply_maxlen
        self._reply_ttl = reply_ttl
        self._reconnect_base = reconnect_base
        self._reconnect_cap = reconnect_cap
        self._send_batch = send_batch
        common: dict[str, Any] = {
            "decode_responses": True,
            "protocol": 2,
            "socket_connect_timeout": connect_timeout,
            "health_check_interval": 0,
        }
        # One retry on a connection error only: replaces a pooled connection made stale
        # by a server restart, but never repeats a command that merely timed out.
        self._pool: BlockingConnectionPool = BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=io_timeout,
            socket_timeout=io_timeout,
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            **common,
        )
        self._client = Redis(connection_pool=self._pool)
        # Blocking reads (XREAD/XREADGROUP BLOCK) get their own connection with no socket
        # timeout; asyncio.timeout around each call detects a server that went silent.
        self._blocking = Redis.from_url(
            url,
            single_connection_client=True,
            socket_timeout=None,
            retry=Retry(NoBackoff(), 0),
            **common,
        )
        self._state: Literal["new", "open", "closed"] = "new"
        self._task: asyncio.Task[None] | None = None
        self._up = asyncio.Event()
        self._engine_alive = False
        # engine side
        self._carry: list[Incoming] = []
        self._inflight: set[str] = set()
        self._claim_cursor: str | None = _UNSET  # None once the group's backlog is served
        self._group_ready = False
        self._poison_ids: list[str] = []
        # worker side: commands waiting for the sender task
        self._outbox: list[tuple[dict[FieldT, EncodableT], asyncio.Future[None]]] = []
        self._outbox_ready = asyncio.Event()
        self._sender: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(cls, settings: Settings, *, role: Role, **kwargs: Any) -> RedisStreamsBus:
        """Build from ``Settings``: keys live under ``{redis_prefix}:bus:``."""
        if not settings.redis_url:
            raise ValueError("TRADEGRAPH_REDIS_URL is not set")
        prefix = f"{settings.redis_prefix}:bus:"
        return cls(settings.redis_url, role=role, prefix=prefix, **kwargs)

    # ------------------------------------------------------------------ lifecycle

    @property
    def connected(self) -> bool:
        """Whether Redis answered the last time this instance talked to it."""
        return self._state == "open" and self._up.is_set()

    @property
    def engine_alive(self) -> bool:
        """Worker side: whether the engine heartbeat was present at the last check."""
        return self._engine_alive

    async def start(self, *, wait: bool = True) -> None:
        """Connect and start the background task (reply reader or heartbeat).

        With ``wait`` (default) raise :class:`BusUnavailable` if Redis does not answer
        within ``start_timeout`` (by default one connect and two round trips); without
        it, keep trying in the background.
        """
        if self._state != "new":
            raise RuntimeError("RedisStreamsBus.start() can be called only once")
        self._state = "open"
        if self.role == "worker":
            self._task = asyncio.create_task(self._reply_loop(), name="bus-reply-reader")
            self._sender = asyncio.create_task(self._send_loop(), name="bus-command-sender")
        else:
            self._task = asyncio.create_task(self._heartbeat_loop(), name="bus-engine-heartbeat")
        if not wait:
            return
        try:
            async with asyncio.timeout(self._start_timeout):
                await self._up.wait()
        except TimeoutError:
            error = self.last_error
            await self.close()
            raise BusUnavailable(f"cannot connect to Redis at {self._url}: {error}") from None

    async def close(self) -> None:
        """Stop background work and fail waiting callers. Idempotent.

        An engine instance acknowledges nothing on close: entries it took but did not
        reply to stay pending and go to the next engine, exactly as after a crash.
        """
        if self._state == "closed":
            return
        was_open = self._state == "open"
        self._state = "closed"
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._sender is not None:
            self._sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sender
            self._sender = None
        self._fail_outbox(self._outbox, "the command bus is closed")
        self._outbox.clear()
        self._up.clear()
        self._fail_all("the command bus is closed")
        if was_open:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self._io_timeout):
                    if self.role == "worker":
                        await self._client.delete(self.reply_stream)
                    else:
                        await self._release_heartbeat()
        await self._blocking.aclose()
        await self._client.aclose()
        await self._pool.aclose()

    def _lost(self, exc: BaseException) -> None:
        was_up = self._up.is_set()
        self.last_error = str(exc) or type(exc).__name__
        self._up.clear()
        if was_up:
            logger.warning("bus: lost Redis at %s: %s", self._url, self.last_error)
        else:
            logger.debug("bus: Redis at %s unreachable: %s", self._url, self.last_error)

    def _reached(self, ever: bool) -> None:
        if not self._up.is_set():
            if ever:
                self.stats.reconnects += 1
                logger.info("bus: reconnected to Redis at %s", self._url)
            self._up.set()
            self.last_error = None

    # ---------------------------------------------------------------- worker side

    def _check_ready(self) -> None:
        if self.role != "worker":
            raise RuntimeError("request() needs a bus started with role='worker'")
        if self._state != "open":
            raise EngineUnavailable(f"the command bus is {self._state}, not started")
        if not self._up.is_set():
            raise EngineUnavailable(f"Redis at {self._url} is unreachable: {self.last_error}")
        if not self._engine_alive:
            raise EngineUnavailable("the engine is not running (no heartbeat)")

    async def _send(self, command_id: str, kind: str, body: str, deadline: float) -> None:
        """Queue the command for the sender task and wait until Redis has taken it.

        One sender writes every queued command in a single pipeline, so a burst of
        requests costs one round trip and one connection instead of one each (no
        connection storm under load) and commands leave in the order they were queued.
        """
        fields: dict[FieldT, EncodableT] = {
            "command_id": command_id,
            "kind": kind,
            "payload": body,
            "reply_to": self.reply_stream,
            "deadline": str(int(deadline * 1000)),
        }
        handed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._outbox.append((fields, handed))
        self._outbox_ready.set()
        await handed  # a caller that gives up cancels it: the sender then skips the entry

    async def _send_loop(self) -> None:
        """The worker's one writer: drains the outbox into XADD pipelines."""
        while True:
            await self._outbox_ready.wait()
            self._outbox_ready.clear()
            batch = [entry for entry in self._outbox[: self._send_batch] if not entry[1].done()]
            del self._outbox[: self._send_batch]
            if self._outbox:
                self._outbox_ready.set()
            if not batch:
                continue
            try:
                async with asyncio.timeout(self._io_timeout):
                    async with self._client.pipeline(transaction=False) as pipe:
                        for fields, _ in batch:
                            pipe.xadd(
                                self.command_stream,
                                fields,
                                maxlen=self._cmd_maxlen,
                                approximate=True,
                            )
                        await pipe.execute()
            except asyncio.CancelledError:
                self._fail_outbox(batch, "the command bus is closed")
                raise
            except Exception as exc:  # any failure fails this batch; the next one retries
                reason = str(exc) or type(exc).__name__
                self._fail_outbox(
                    batch, f"sending to Redis failed (it may or may not be queued): {reason}"
                )
            else:
                self.stats.send_batches += 1
                for _, handed in batch:
                    if not handed.done():
                        handed.set_result(None)

    @staticmethod
    def _fail_outbox(batch: Iterable[tuple[object, asyncio.Future[None]]], reason: str) -> None:
        for _, handed in batch:
            if not handed.done():
                handed.set_exception(EngineUnavailable(reason))

    async def _reply_loop(self) -> None:
        """The worker's one reader: replies in, futures resolved; reconnects forever."""
        last_id = "0-0"  # the stream is this instance's own: everything in it is ours
        block_ms = max(1, int(self._heartbeat_interval * 1000))
        attempt = 0
        ever = False
        while True:
            try:
                async with asyncio.timeout(self._connect_timeout + self._io_timeout):
                    await self._blocking.ping()
                await self._check_engine()
                self._reached(ever)
                ever = True
                attempt = 0
                next_check = time.monotonic() + self._heartbeat_interval
                while True:
                    async with asyncio.timeout(self._heartbeat_interval + self._io_timeout):
                        response: Any = await self._blocking.xread(
                            {self.reply_stream: last_id}, count=1000, block=block_ms
                        )
                    for _stream, entries in response or ():
                        for entry_id, data in entries:
                            last_id = entry_id
                            self._on_reply(data)
                    if time.monotonic() >= next_check:
                        await self._check_engine()
                        next_check = time.monotonic() + self._heartbeat_interval
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure, even a bug, means: reconnect
                self._lost(exc)
                self._engine_alive = False
                self._fail_all(f"lost Redis at {self._url}: {self.last_error}")
                with contextlib.suppress(Exception):
                    await self._blocking.connection.disconnect()  # type: ignore[union-attr]
            await asyncio.sleep(_backoff(attempt, self._reconnect_base, self._reconnect_cap))
            attempt += 1

    async def _check_engine(self) -> None:
        async with asyncio.timeout(self._io_timeout):
            alive = bool(await self._blocking.exists(self.engine_key))
        if self._engine_alive and not alive:
            logger.warning("bus: engine heartbeat is gone; failing in-flight commands")
            self._fail_all("the engine stopped before answering")
        self._engine_alive = alive

    def _on_reply(self, data: Mapping[str, str]) -> None:
        command_id = data.get("command_id")
        body = data.get("result")
        if not command_id or body is None:
            self.stats.poison += 1
            return
        entry = self._pending.get(command_id)
        if entry is None:
            self.stats.late_replies += 1
            return
        try:
            result = decode(body)
        except ValueError:
            result = None
        if not isinstance(result, dict):
            self.stats.poison += 1
            logger.warning("bus: reply to %s is not a JSON object; dropped", command_id)
            return
        self._resolve(command_id, result)

    # ---------------------------------------------------------------- engine side

    def _check_engine_role(self) -> None:
        if self.role != "engine":
            raise RuntimeError("take()/reply() need a bus started with role='engine'")
        if self._state != "open":
            raise BusUnavailable(f"the command bus is {self._state}, not started")

    async def _heartbeat_loop(self) -> None:
        """Keep ``{prefix}engine`` alive so workers know someone executes commands."""
        ttl_ms = int(self._engine_ttl * 1000)
        ever = False
        attempt = 0
        while True:
            try:
                async with asyncio.timeout(self._io_timeout):
                    if not self._group_ready:
                        await self._ensure_group()
                    await self._client.set(self.engine_key, self.consumer, px=ttl_ms)
                self._reached(ever)
                ever = True
                attempt = 0
                delay = self._heartbeat_interval
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._lost(exc)
                delay = min(self._heartbeat_interval, _backoff(attempt, self._reconnect_base, 1.0))
                attempt += 1
            await asyncio.sleep(delay)

    async def _release_heartbeat(self) -> None:
        """Delete the heartbeat if it is still ours (a successor may have taken over)."""
        async with self._client.pipeline(transaction=True) as pipe:
            await pipe.watch(self.engine_key)
            if await pipe.get(self.engine_key) == self.consumer:
                pipe.multi()
                pipe.delete(self.engine_key)
                await pipe.execute()

    async def _ensure_group(self) -> None:
        """Create the consumer group (from the stream's start: nothing sent is skipped)."""
        try:
            await self._client.xgroup_create(self.command_stream, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    async def take(self, max_items: int, max_wait: float) -> list[Incoming]:
        """See :meth:`EngineBus.take`. Pending entries of earlier engines come first.

        While Redis is down this keeps retrying with backoff (it never returns empty).
        Cancelling it loses nothing: gathered entries are returned by the next call, and
        entries cut off mid-read are still pending in Redis and are re-read.
        """
        self._check_engine_role()
        _check_take_args(max_items, max_wait)
        if self._carry:
            return self._pop_carry(max_items)
        batch = self._carry
        attempt = 0
        while not batch:
            self._check_engine_role()  # close() ends a take stuck retrying
            try:
                await self._read_into(batch, max_items, block=self._heartbeat_interval)
                attempt = 0
            except (RedisError, OSError, TimeoutError) as exc:
                await self._read_failed(exc)
                await asyncio.sleep(_backoff(attempt, self._reconnect_base, self._reconnect_cap))
                attempt += 1
        if len(batch) < max_items and max_wait > 0:
            # Gather more for the batch with a local timer and one non-blocking read. A
            # Redis BLOCK of a millisecond or two is only noticed at the server's next
            # cron tick (up to 100 ms on an idle server), which made every quiet-time
            # command wait that long.
            await asyncio.sleep(max_wait)
            try:
                await self._read_into(batch, max_items, block=None)
            except (RedisError, OSError, TimeoutError) as exc:
                await self._read_failed(exc)  # deliver what we have; the next take retries
        self._carry = []
        self.stats.taken += len(batch)
        return batch

    def _pop_carry(self, max_items: int) -> list[Incoming]:
        batch, self._carry = self._carry[:max_items], self._carry[max_items:]
        self.stats.taken += len(batch)
        return batch

    async def _read_failed(self, exc: BaseException) -> None:
        if isinstance(exc, ResponseError) and "NOGROUP" in str(exc):
            self._group_ready = False  # Redis lost its data (restart): recreate the group
            logger.warning("bus: consumer group %s is gone; recreating it", self.group)
        else:
            self._lost(exc)
            with contextlib.suppress(Exception):
                await self._blocking.connection.disconnect()  # type: ignore[union-attr]

    async def _read_into(
        self, batch: list[Incoming], max_items: int, *, block: float | None
    ) -> None:
        """Append up to ``max_items - len(batch)`` commands: the group's backlog first.

        ``block``: seconds to wait for new entries, or None not to wait at all.
        """
        if not self._group_ready:
            async with asyncio.timeout(self._io_timeout):
                await self._ensure_group()
        want = max_items - len(batch)
        while self._claim_cursor is not None:
            cursor = self._claim_cursor
            async with asyncio.timeout(self._io_timeout):
                claimed: Any = await self._blocking.xautoclaim(
                    self.command_stream, self.group, self.consumer, 0, cursor, count=want
                )
            self._reached(True)
            next_cursor, entries = claimed[0], claimed[1]  # (Redis 7 adds deleted ids)
            self._claim_cursor = None if next_cursor == "0-0" else next_cursor
            added = self._accept(batch, entries, redelivered=True)
            await self._ack_poison()
            if added:
                return
        block_ms = None if block is None else max(1, int(block * 1000))
        try:
            async with asyncio.timeout((block or 0) + self._io_timeout):
                response: Any = await self._blocking.xreadgroup(
                    self.group,
                    self.consumer,
                    {self.command_stream: ">"},
                    count=want,
                    block=block_ms,
                )
        except BaseException:
            # Entries Redis delivered before the failure are pending but unseen here:
            # re-run the backlog claim on the next read (in-flight ones are skipped).
            self._claim_cursor = _UNSET
            raise
        self._reached(True)
        for _stream, entries in response or ():
            self._accept(batch, entries, redelivered=False)
        await self._ack_poison()

    def _accept(
        self,
        batch: list[Incoming],
        entries: Iterable[tuple[str, Mapping[str, str] | None]],
        *,
        redelivered: bool,
    ) -> int:
        added = 0
        for entry_id, data in entries:
            if entry_id in self._inflight:
                continue  # handed out already and not yet replied to
            incoming = self._decode(entry_id, data, redelivered)
            if incoming is None:
                self._poison_ids.append(entry_id)
                continue
            self._inflight.add(entry_id)
            batch.append(incoming)
            added += 1
        if redelivered:
            self.stats.redelivered += added
        return added

    async def _ack_poison(self) -> None:
        """Acknowledge entries nobody can answer (malformed, or trimmed while pending)."""
        ids = self._poison_ids
        if not ids:
            return
        self.stats.poison += len(ids)
        logger.warning("bus: dropping %d malformed command entries %s", len(ids), ids[:5])
        async with asyncio.timeout(self._io_timeout):
            await self._client.xack(self.command_stream, self.group, *ids)
        ids.clear()

    def _decode(
        self, entry_id: str, data: Mapping[str, str] | None, redelivered: bool
    ) -> Incoming | None:
        if not data:
            return None
        try:
            payload = decode(data["payload"])
            command_id = data["command_id"]
            kind = data["kind"]
            reply_to = data.get("reply_to", "")
            raw_deadline = data.get("deadline")
            deadline = int(raw_deadline) / 1000 if raw_deadline else None
        except (KeyError, ValueError, TypeError):
            return None
        if not isinstance(payload, dict) or not command_id or not kind:
            return None
        envelope = Envelope(command_id, kind, payload, reply_to, deadline)
        return Incoming(envelope, redelivered=redelivered, receipt=entry_id)

    def _trim_floor(self, acked: list[str]) -> str | None:
        """The oldest command entry still needed once ``acked`` are acknowledged.

        Everything older has been answered: the group is read in order by this one
        consumer, and an earlier engine's backlog is claimed before any new command. So
        the stream is trimmed to it (``MINID ~``) and holds only what is unanswered,
        whatever the commands weigh. None while part of the backlog is still unclaimed.
        """
        if self._claim_cursor is not None:
            return None
        waiting = self._inflight.difference(acked)
        if waiting:
            return min(waiting, key=_entry_key)
        return max(acked, key=_entry_key)

    async def reply(self, incoming: Incoming, result: Mapping[str, Any]) -> None:
        await self.reply_many(((incoming, result),))

    async def reply_many(
        self,
        replies: Iterable[tuple[Incoming, Mapping[str, Any]]],
        *,
        bodies: Mapping[str, str] | None = None,
    ) -> None:
        """Send every reply, refresh each reply stream's TTL, then ``XACK`` the entries,
        all in one pipelined round trip. Raises :class:`BusUnavailable` on failure."""
        self._check_engine_role()
        known = bodies or {}
        encoded: list[tuple[Incoming, str]] = []
        for incoming, result in replies:
            if not incoming.receipt:
                raise ValueError("this Incoming did not come from a RedisStreamsBus")
            body = known.get(incoming.command_id)
            encoded.append((incoming, body if body is not None else encode_object(result)))
        if not encoded:
            return
        pipe = self._client.pipeline(transaction=False)
        streams: set[str] = set()
        for incoming, body in encoded:
            if incoming.envelope.reply_to:
                pipe.xadd(
                    incoming.envelope.reply_to,
                    {"command_id": incoming.command_id, "result": body},
                    maxlen=self._reply_maxlen,
                    approximate=True,
                )
                streams.add(incoming.envelope.reply_to)
        for stream in streams:
            pipe.expire(stream, self._reply_ttl)
        ids = [incoming.receipt for incoming, _ in encoded]
        pipe.xack(self.command_stream, self.group, *ids)
        floor = self._trim_floor(ids)
        if floor is not None:
            pipe.xtrim(self.command_stream, minid=floor, approximate=True)
        try:
            async with asyncio.timeout(self._io_timeout):
                await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            self._lost(exc)
            reason = str(exc) or type(exc).__name__
            raise BusUnavailable(f"sending {len(encoded)} replies failed: {reason}") from exc
        self._inflight.difference_update(ids)
        self.stats.replies += len(encoded)
