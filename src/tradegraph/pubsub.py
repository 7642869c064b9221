"""Event topics: ``memory://`` in one process, ``redis://`` across processes.

Built on broadcaster's idea (URL-selected backend, ``subscribe`` as a context manager)
but with what a trading API needs and broadcaster lacks:

* **Bounded queues.** broadcaster gives every subscriber an unbounded ``asyncio.Queue``
  and its listener ``await``s each ``put``, so one stuck websocket grows memory without
  limit. Here fan-out is ``put_nowait`` into a per-subscriber queue of at most
  ``max_queue`` items; a subscriber that falls behind has its queue dropped and receives
  one final ``GAP`` marker (see :data:`GAP`), then its iteration ends. The publisher and
  the other subscribers never wait for it.
* **Reconnect.** broadcaster's Redis listener dies for good when the connection drops.
  :class:`_RedisTransport` owns one subscriber connection, detects loss (EOF, errors, or
  a missing PONG after ``health_interval`` of silence), reconnects with exponential
  backoff plus jitter, re-subscribes every channel still wanted, and then hands each live
  subscriber an in-band (non-final) ``GAP`` because messages published during the outage
  are gone.
* **No hanging.** publish, subscribe, connect and ping all run under timeouts.

``memory://`` still uses broadcaster's ``MemoryBackend`` (publish enqueues, a pump task
fans out), so in-process delivery is asynchronous exactly like Redis delivery.

Message contract: ``publish`` takes a JSON-serialisable mapping (``Decimal`` becomes a
string, ``datetime``/``date`` ISO-8601, ``UUID`` a string, ``Enum`` its value) and every
subscriber gets the decoded ``dict``. One decoded dict is shared by all subscribers of a
topic (decoded once per message, not once per subscriber): treat it as read-only.
``publish_many`` sends the messages it has for one topic as a single payload, a JSON
array of them (the sequencer emits hundreds of events per batch for one user's topic;
one ``PUBLISH`` each was a quarter of the engine's CPU); subscribers receive them one by
one, in order, exactly as if they had been published separately.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, Literal, Protocol
from urllib.parse import urlsplit, urlunsplit

from broadcaster._backends.memory import MemoryBackend
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection, Connection, parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from tradegraph.errors import Unavailable
from tradegraph.wire import decode, encode_object

__all__ = [
    "GAP",
    "PubSub",
    "PubSubStats",
    "PubSubUnavailable",
    "Subscription",
    "is_gap",
]

logger = logging.getLogger(__name__)

GAP: Final = "GAP"
"""``type`` of the marker a subscriber gets when it may have missed messages.

``{"type": "GAP", "topic": ..., "reason": "overflow", "final": True, "dropped": n}``:
the subscriber fell ``max_queue`` messages behind; its queue was discarded and the
iteration ends after this marker. Resubscribe and fetch a fresh snapshot.

``{"type": "GAP", "topic": ..., "reason": "reconnect", "final": False}``: the Redis
connection was lost and is back; messages published meanwhile are lost. The subscription
stays live (delivery continues after the marker); refetch the snapshot. A caller that
simply resubscribes on any GAP is also correct.
"""

DEFAULT_PREFIX: Final = "tradegraph:"
DEFAULT_MAX_QUEUE: Final = 1024

Message = dict[str, Any]
_OnMessage = Callable[[str, str | bytes], None]


def is_gap(message: Mapping[str, Any]) -> bool:
    """True for the GAP marker (see :data:`GAP`)."""
    return message.get("type") == GAP


class PubSubUnavailable(Unavailable):
    """The pub/sub transport is not connected or did not answer in time.

    Raised by ``publish`` (no buffering: events carry per-topic sequence numbers, so a
    lost event shows up as a gap that subscribers already know how to repair, while a
    replay buffer would deliver stale events after clients refetched snapshots), by
    ``subscribe`` while disconnected, and by ``connect`` when the first connection
    fails within ``connect_timeout``.
    """


@dataclass(slots=True)
class PubSubStats:
    """Monotonic counters for the metrics module (read the attributes, never reset)."""

    published: int = 0
    publish_errors: int = 0
    delivered: int = 0
    overflows: int = 0
    dropped: int = 0
    decode_errors: int = 0
    reconnects: int = 0


class _End:
    """Queue sentinel: the subscription is over."""


_END: Final = _End()


class Subscription:
    """One subscriber's bounded view of a topic.

    Use ``async with pubsub.subscribe(topic) as sub: async for message in sub: ...``.
    Iteration ends after an overflow ``GAP``, after :meth:`aclose`, or when the
    :class:`PubSub` disconnects.
    """

    def __init__(self, pubsub: PubSub, topic: str, channel: str, max_queue: int) -> None:
        self.topic = topic
        self.channel = channel
        self.max_queue = max_queue
        self._pubsub = pubsub
        self._queue: asyncio.Queue[Message | _End] = asyncio.Queue()
        self._state: Literal["new", "active", "ended"] = "new"
        self._finished = False
        self._detached = False

    async def __aenter__(self) -> Subscription:
        if self._state != "new":
            raise RuntimeError("a Subscription can be entered only once")
        try:
            await self._pubsub._attach(self)
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Message:
        if self._state == "new":
            raise RuntimeError("use 'async with pubsub.subscribe(...)' before iterating")
        if self._finished:
            raise StopAsyncIteration
        item = await self._queue.get()
        if isinstance(item, _End):
            self._finished = True
            raise StopAsyncIteration
        return item

    async def aclose(self) -> None:
        """Stop receiving; pending messages are discarded. Idempotent."""
        attached = self._state != "new"
        self._end(discard=True)
        if attached and not self._detached:
            self._detached = True
            await self._pubsub._detach(self)

    @property
    def active(self) -> bool:
        """True while messages are still being delivered to this subscriber."""
        return self._state == "active"

    @property
    def queued(self) -> int:
        """Messages waiting to be read (at most ``max_queue`` plus a final marker)."""
        return self._queue.qsize()

    def _offer(self, message: Message) -> bool:
        """Enqueue without ever blocking; on overflow end with a GAP. False = ended."""
        if self._state != "active":
            return False
        if self._queue.qsize() < self.max_queue:
            self._queue.put_nowait(message)
            return True
        dropped = self._drain() + 1
        self._state = "ended"
        self._queue.put_nowait(
            {
                "type": GAP,
                "topic": self.topic,
                "reason": "overflow",
                "final": True,
                "dropped": dropped,
            }
        )
        self._queue.put_nowait(_END)
        self._pubsub._on_overflow(self, dropped)
        return False

    def _end(self, *, discard: bool) -> None:
        if self._state == "ended":
            return
        self._state = "ended"
        if discard:
            self._drain()
        self._queue.put_nowait(_END)

    def _drain(self) -> int:
        dropped = 0
        while not self._queue.empty():
            self._queue.get_nowait()
            dropped += 1
        return dropped


@dataclass(eq=False, slots=True)
class _Topic:
    """Local subscribers of one channel; ``lock`` orders transport (un)subscribe calls."""

    channel: str
    subs: set[Subscription] = field(default_factory=set)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    subscribed: bool = False


class _Transport(Protocol):
    """What :class:`PubSub` needs from a backend."""

    #: Only this process can receive what is published (the in-process backend).
    local_only: bool

    @property
    def connected(self) -> bool: ...

    @property
    def last_error(self) -> str | None: ...

    async def start(self, *, wait: bool) -> None: ...

    async def close(self) -> None: ...

    async def subscribe(self, channel: str) -> None: ...

    async def unsubscribe(self, channel: str) -> None: ...

    async def publish(self, channel: str, payload: str) -> None: ...

    async def publish_many(self, items: list[tuple[str, str]]) -> None: ...

    async def ping(self) -> bool: ...


class _MemoryTransport:
    """broadcaster's in-process ``MemoryBackend`` plus a pump task that fans out.

    The backend's queue between ``publish`` and the pump is unbounded, but the pump
    never waits on subscribers, so it holds at most what publishers produced since they
    last yielded to the event loop.
    """

    local_only = True

    def __init__(self, url: str, on_message: _OnMessage) -> None:
        self._backend = MemoryBackend(url)
        self._on_message = on_message
        self._pump: asyncio.Task[None] | None = None
        self.last_error: str | None = None

    @property
    def connected(self) -> bool:
        return self._pump is not None and not self._pump.done()

    async def start(self, *, wait: bool) -> None:
        await self._backend.connect()
        self._pump = asyncio.create_task(self._run(), name="pubsub-memory-pump")

    async def _run(self) -> None:
        while True:
            event = await self._backend.next_published()
            self._on_message(event.channel, event.message)

    async def close(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
        await self._backend.disconnect()

    async def subscribe(self, channel: str) -> None:
        await self._backend.subscribe(channel)

    async def unsubscribe(self, channel: str) -> None:
        await self._backend.unsubscribe(channel)

    async def publish(self, channel: str, payload: str) -> None:
        if not self.connected:
            raise PubSubUnavailable("in-memory pub/sub is not running")
        await self._backend.publish(channel, payload)

    async def publish_many(self, items: list[tuple[str, str]]) -> None:
        for channel, payload in items:
            await self.publish(channel, payload)

    async def ping(self) -> bool:
        return self.connected


def _redact(url: str) -> str:
    """The URL without credentials, for error messages and logs."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class _RedisTransport:
    """Redis pub/sub with its own reconnecting listener.

    Publishing uses a small blocking pool (one retry, so a connection made stale by a
    server restart is replaced transparently). Subscribing uses one dedicated RESP2
    connection read only by the listener task; other tasks only write SUBSCRIBE /
    UNSUBSCRIBE to it, and only while it is up, so redis-py never reconnects it behind
    the listener's back. Each reconnect builds a fresh connection object.
    """

    local_only = False

    def __init__(
        self,
        url: str,
        on_message: _OnMessage,
        on_resubscribed: Callable[[], None],
        stats: PubSubStats,
        *,
        publish_timeout: float,
        subscribe_timeout: float,
        connect_timeout: float,
        health_interval: float,
        reconnect_base: float,
        reconnect_cap: float,
        max_connections: int,
    ) -> None:
        self._raw_url = url
        self._url = _redact(url)
        self._on_message = on_message
        self._on_resubscribed = on_resubscribed
        self._stats = stats
        self._publish_timeout = publish_timeout
        self._subscribe_timeout = subscribe_timeout
        self._connect_timeout = connect_timeout
        self._health_interval = health_interval
        self._reconnect_base = reconnect_base
        self._reconnect_cap = reconnect_cap
        self._pool: BlockingConnectionPool = BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=publish_timeout,
            socket_timeout=publish_timeout,
            socket_connect_timeout=connect_timeout,
            retry=Retry(NoBackoff(), 1),
        )
        self._client = Redis(connection_pool=self._pool)
        self._wanted: set[str] = set()
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._resub_pending: set[str] = set()
        self._conn: AbstractConnection | None = None
        self._up = asyncio.Event()
        self._kick = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.last_error: str | None = None

    @property
    def connected(self) -> bool:
        return self._up.is_set()

    async def start(self, *, wait: bool) -> None:
        self._task = asyncio.create_task(self._run(), name="pubsub-redis-listener")
        if not wait:
            return
        try:
            async with asyncio.timeout(self._connect_timeout):
                await self._up.wait()
        except TimeoutError:
            error = self.last_error
            await self.close()
            raise PubSubUnavailable(f"cannot connect to Redis at {self._url}: {error}") from None

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for waiters in self._waiters.values():
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(PubSubUnavailable("pub/sub is closed"))
        self._waiters.clear()
        await self._client.aclose()
        await self._pool.aclose()

    async def subscribe(self, channel: str) -> None:
        """SUBSCRIBE and wait for Redis to confirm, so later publishes are seen."""
        if not self.connected:
            raise PubSubUnavailable(f"Redis at {self._url} is unreachable: {self.last_error}")
        self._wanted.add(channel)
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(channel, []).append(waiter)
        try:
            # If the connection drops now, the listener re-subscribes everything in
            # _wanted and that confirmation resolves the waiter.
            await self._send("SUBSCRIBE", channel)
            async with asyncio.timeout(self._subscribe_timeout):
                await waiter
        except TimeoutError:
            self._wanted.discard(channel)
            raise PubSubUnavailable(
                f"Redis at {self._url} did not confirm SUBSCRIBE within {self._subscribe_timeout}s"
            ) from None
        except BaseException:
            self._wanted.discard(channel)
            raise
        finally:
            waiters = self._waiters.get(channel, [])
            if waiter in waiters:
                waiters.remove(waiter)
            if not waiters:
                self._waiters.pop(channel, None)

    async def unsubscribe(self, channel: str) -> None:
        self._wanted.discard(channel)
        self._resubscribed(channel)
        await self._send("UNSUBSCRIBE", channel)

    async def publish(self, channel: str, payload: str) -> None:
        try:
            async with asyncio.timeout(self._publish_timeout):
                await self._client.publish(channel, payload)
        except (RedisError, OSError, TimeoutError) as exc:
            reason = str(exc) or type(exc).__name__
            raise PubSubUnavailable(f"publish to Redis at {self._url} failed: {reason}") from exc
        if not self.connected:
            self._kick.set()  # Redis answers again: cut the listener's backoff short

    async def publish_many(self, items: list[tuple[str, str]]) -> None:
        """All in one pipeline: one round trip instead of one per message."""
        try:
            async with asyncio.timeout(self._publish_timeout):
                async with self._client.pipeline(transaction=False) as pipe:
                    for channel, payload in items:
                        pipe.publish(channel, payload)
                    await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            reason = str(exc) or type(exc).__name__
            raise PubSubUnavailable(f"publish to Redis at {self._url} failed: {reason}") from exc
        if not self.connected:
            self._kick.set()

    async def ping(self) -> bool:
        """Both halves healthy: the listener is connected and the server answers PING."""
        if not self.connected:
            return False
        try:
            async with asyncio.timeout(self._publish_timeout):
                return bool(await self._client.ping())
        except Exception:
            return False

    async def _send(self, *args: str) -> None:
        conn = self._conn
        # No await between this check and the socket write (socket_timeout is None on
        # this connection), so a dropped connection is never silently reopened here.
        if conn is None or not conn.is_connected:
            return
        try:
            await conn.send_command(*args, check_health=False)
        except Exception as exc:
            logger.debug("pubsub: %s failed, listener will recover: %r", args[0], exc)

    def _new_connection(self) -> AbstractConnection:
        kwargs: dict[str, Any] = dict(parse_url(self._raw_url))
        connection_class: type[AbstractConnection] = kwargs.pop("connection_class", Connection)
        kwargs.update(
            socket_timeout=None,  # reads pass explicit timeouts; writes must not yield
            socket_connect_timeout=self._connect_timeout,
            retry=Retry(NoBackoff(), 0),  # the listener owns retrying
            protocol=2,  # pub/sub frames as plain arrays
            decode_responses=False,
            health_check_interval=0,  # our own PING, see _read_loop
        )
        return connection_class(**kwargs)

    async def _run(self) -> None:
        """Connect, re-subscribe, read until the connection dies; repeat with backoff."""
        attempt = 0
        ever_connected = False
        while True:
            conn: AbstractConnection | None = None
            try:
                conn = self._new_connection()
                async with asyncio.timeout(self._connect_timeout):
                    await conn.connect()
                channels = sorted(self._wanted)
                self._resub_pending = set(channels) if ever_connected else set()
                self._conn = conn
                self._up.set()
                if channels:
                    await conn.send_command("SUBSCRIBE", *channels, check_health=False)
                if ever_connected:
                    self._stats.reconnects += 1
                    logger.info("pubsub: reconnected to %s (%d channels)", self._url, len(channels))
                    if not self._resub_pending:
                        self._on_resubscribed()
                ever_connected = True
                attempt = 0
                self.last_error = None
                await self._read_loop(conn)
            except asyncio.CancelledError:
                await self._drop(conn)
                raise
            except Exception as exc:  # any failure, even a bug, means: reconnect
                was_up = self.connected
                self.last_error = str(exc) or type(exc).__name__
                await self._drop(conn)
                if was_up:
                    logger.warning("pubsub: lost Redis at %s: %s", self._url, self.last_error)
                else:
                    logger.debug("pubsub: connect to %s failed: %s", self._url, self.last_error)
            delay = min(self._reconnect_cap, self._reconnect_base * 2**attempt)
            delay = delay / 2 + random.uniform(0, delay / 2)
            attempt = min(attempt + 1, 30)
            self._kick.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._kick.wait()

    async def _drop(self, conn: AbstractConnection | None) -> None:
        self._up.clear()
        self._conn = None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.disconnect(nowait=True)

    async def _read_loop(self, conn: AbstractConnection) -> None:
        """Dispatch frames; PING after ``health_interval`` of silence, give up after 2x."""
        ping_outstanding = False
        while True:
            frame = await conn.read_response(timeout=self._health_interval)
            if frame is None:
                if ping_outstanding:
                    raise RedisConnectionError(f"no reply to PING within {self._health_interval}s")
                await conn.send_command("PING", check_health=False)
                ping_outstanding = True
                continue
            ping_outstanding = False
            self._handle(frame)

    def _handle(self, frame: Any) -> None:
        if not isinstance(frame, list) or len(frame) < 2:
            return  # b"PONG" outside subscribed mode, or anything unexpected
        kind = frame[0]
        if kind == b"message" and len(frame) == 3:
            self._on_message(frame[1].decode(), frame[2])
        elif kind == b"subscribe":
            channel = frame[1].decode()
            for waiter in self._waiters.get(channel, ()):
                if not waiter.done():
                    waiter.set_result(None)
            self._resubscribed(channel)

    def _resubscribed(self, channel: str) -> None:
        """Fire the reconnect GAP once every channel wanted at reconnect is back."""
        if channel in self._resub_pending:
            self._resub_pending.discard(channel)
            if not self._resub_pending:
                self._on_resubscribed()


class PubSub:
    """Topics with bounded per-subscriber queues, over ``memory://`` or ``redis://``.

    One instance per process (or per test). ``prefix`` is prepended to every topic to
    form the transport channel, so deployments and test runs sharing a Redis never see
    each other's events. Single use: ``connect`` once, ``disconnect`` once.
    """

    def __init__(
        self,
        url: str = "memory://",
        *,
        prefix: str = DEFAULT_PREFIX,
        max_queue: int = DEFAULT_MAX_QUEUE,
        publish_timeout: float = 2.0,
        subscribe_timeout: float = 5.0,
        connect_timeout: float = 5.0,
        health_interval: float = 5.0,
        reconnect_base: float = 0.1,
        reconnect_cap: float = 5.0,
        max_connections: int = 16,
    ) -> None:
        if max_queue < 1:
            raise ValueError("max_queue must be at least 1")
        self.prefix = prefix
        self.max_queue = max_queue
        self.stats = PubSubStats()
        self._topics: dict[str, _Topic] = {}
        self._state: Literal["new", "open", "closed"] = "new"
        scheme = urlsplit(url).scheme
        self._transport: _Transport
        if scheme == "memory":
            self._transport = _MemoryTransport(url, self._dispatch)
        elif scheme in ("redis", "rediss", "unix"):
            self._transport = _RedisTransport(
                url,
                self._dispatch,
                self._on_resubscribed,
                self.stats,
                publish_timeout=publish_timeout,
                subscribe_timeout=subscribe_timeout,
                connect_timeout=connect_timeout,
                health_interval=health_interval,
                reconnect_base=reconnect_base,
                reconnect_cap=reconnect_cap,
                max_connections=max_connections,
            )
        else:
            raise ValueError(f"unsupported pub/sub URL scheme {scheme!r}")

    async def __aenter__(self) -> PubSub:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.disconnect()

    async def connect(self, *, wait: bool = True) -> None:
        """Start the transport. With ``wait`` (default) raise if Redis is unreachable
        for ``connect_timeout``; without it, keep trying in the background."""
        if self._state != "new":
            raise RuntimeError("PubSub.connect() can be called only once")
        self._state = "open"
        try:
            await self._transport.start(wait=wait)
        except BaseException:
            self._state = "closed"
            raise

    async def disconnect(self) -> None:
        """Stop the transport and end every subscription's iteration. Idempotent."""
        if self._state == "closed":
            return
        was_open = self._state == "open"
        self._state = "closed"
        if was_open:
            await self._transport.close()
        for topic in self._topics.values():
            for sub in topic.subs:
                sub._end(discard=False)
        self._topics.clear()

    def channel(self, topic: str) -> str:
        """The transport channel name for ``topic``."""
        if not topic:
            raise ValueError("topic must be a non-empty string")
        return self.prefix + topic

    async def publish(self, topic: str, message: Mapping[str, Any]) -> None:
        """Send ``message`` to every current subscriber of ``topic`` (at most once).

        Raises :class:`PubSubUnavailable` when the transport is down or slow (after
        ``publish_timeout``); nothing is buffered. ``TypeError`` for a message that is
        not a JSON-serialisable mapping (NaN and infinities travel as null, see
        :mod:`tradegraph.wire`).
        """
        channel, payload = self._encode(topic, message)
        self._check_open()
        try:
            await self._transport.publish(channel, payload)
        except PubSubUnavailable:
            self.stats.publish_errors += 1
            raise
        self.stats.published += 1

    async def publish_many(self, messages: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
        """``publish`` each ``(topic, message)``, in one round trip on Redis.

        The messages of one topic keep their order and travel as one payload (a JSON
        array, unpacked by the receiving side); there is no order between topics, as
        with separate publishes. Every message is encoded before any is sent, so a bad
        one sends none; a transport failure raises :class:`PubSubUnavailable` (some may
        have been delivered).

        On the in-process transport a message for a topic nobody in this process
        subscribes to is dropped before it is encoded (nobody could receive it, and the
        engine publishes several events per order whether or not anyone listens), so
        only its type is checked.
        """
        if not messages:
            return
        by_channel: dict[str, list[str]] = {}
        channels: dict[str, str] = {}  # topic -> channel, for this call's many events
        listened = self._topics if self._transport.local_only else None
        for topic, message in messages:
            channel = channels.get(topic)
            if channel is None:
                channel = channels[topic] = self.channel(topic)
            if listened is not None and channel not in listened:
                if not isinstance(message, Mapping):
                    raise TypeError(f"message must be a mapping, not {type(message).__name__}")
                continue
            # encode_object checks the type itself (a dict without the ABC check)
            payload = encode_object(message)
            texts = by_channel.get(channel)
            if texts is None:
                by_channel[channel] = [payload]
            else:
                texts.append(payload)
        if not by_channel:
            self._check_open()
            self.stats.published += len(messages)
            return
        items = [
            (channel, texts[0] if len(texts) == 1 else f"[{','.join(texts)}]")
            for channel, texts in by_channel.items()
        ]
        self._check_open()
        try:
            await self._transport.publish_many(items)
        except PubSubUnavailable:
            self.stats.publish_errors += len(messages)
            raise
        self.stats.published += len(messages)

    def _encode(self, topic: str, message: Mapping[str, Any]) -> tuple[str, str]:
        if not isinstance(message, Mapping):
            raise TypeError(f"message must be a mapping, not {type(message).__name__}")
        return self.channel(topic), encode_object(message)

    def _check_open(self) -> None:
        if self._state != "open":
            raise PubSubUnavailable(f"pub/sub is {self._state}, not connected")

    def subscribe(self, topic: str, *, max_queue: int | None = None) -> Subscription:
        """A :class:`Subscription` to ``topic``; enter it with ``async with``.

        Entering waits until the transport confirms the subscription, so anything
        published after ``__aenter__`` returns is delivered. ``max_queue`` bounds this
        subscriber's backlog (default: the instance's ``max_queue``).
        """
        size = self.max_queue if max_queue is None else max_queue
        if size < 1:
            raise ValueError("max_queue must be at least 1")
        return Subscription(self, topic, self.channel(topic), size)

    async def ping(self) -> bool:
        """Readiness: True when publishing and receiving both work right now."""
        return self._state == "open" and await self._transport.ping()

    @property
    def connected(self) -> bool:
        """Whether the transport is up (False while reconnecting)."""
        return self._state == "open" and self._transport.connected

    @property
    def last_error(self) -> str | None:
        """Why the transport last failed, for /readyz details."""
        return self._transport.last_error

    @property
    def active_subscriptions(self) -> int:
        """Gauge: subscriptions currently receiving messages."""
        return sum(len(topic.subs) for topic in self._topics.values())

    @property
    def active_topics(self) -> int:
        """Gauge: distinct topics with local subscribers (or being released)."""
        return len(self._topics)

    @property
    def queued_messages(self) -> int:
        """Gauge: messages waiting in all subscriber queues."""
        return sum(sub.queued for topic in self._topics.values() for sub in topic.subs)

    async def _attach(self, sub: Subscription) -> None:
        if self._state != "open":
            raise PubSubUnavailable(f"pub/sub is {self._state}, not connected")
        topic = self._topics.get(sub.channel)
        if topic is None:
            topic = self._topics[sub.channel] = _Topic(sub.channel)
        sub._state = "active"
        topic.subs.add(sub)
        async with topic.lock:  # on failure the Subscription detaches itself
            if not topic.subscribed:
                await self._transport.subscribe(sub.channel)
                topic.subscribed = True

    async def _detach(self, sub: Subscription) -> None:
        topic = self._topics.get(sub.channel)
        if topic is None:
            return
        topic.subs.discard(sub)
        if topic.subs:
            return
        async with topic.lock:
            if topic.subs:
                return  # someone subscribed while we waited; the channel stays
            if topic.subscribed and self._state == "open":
                topic.subscribed = False
                try:
                    await self._transport.unsubscribe(sub.channel)
                except Exception as exc:
                    logger.debug("pubsub: unsubscribe %s failed: %r", sub.channel, exc)
            if self._topics.get(sub.channel) is topic and not topic.subs:
                del self._topics[sub.channel]

    def _dispatch(self, channel: str, payload: str | bytes) -> None:
        """Fan one message out; runs in the listener, so it must never block or raise."""
        topic = self._topics.get(channel)
        if topic is None or not topic.subs:
            return
        try:
            decoded = decode(payload)
        except (ValueError, RecursionError):
            decoded = None
        # One message, or several of one topic sent together by ``publish_many``.
        messages = decoded if isinstance(decoded, list) else [decoded]
        if not messages or not all(isinstance(m, dict) for m in messages):
            self.stats.decode_errors += 1
            if self.stats.decode_errors & (self.stats.decode_errors - 1) == 0:  # 1, 2, 4, ...
                logger.warning(
                    "pubsub: dropped a payload on %s that is not a JSON object (%d so far)",
                    channel,
                    self.stats.decode_errors,
                )
            return
        delivered = 0
        for message in messages:
            for sub in list(topic.subs):
                try:
                    delivered += sub._offer(message)
                except Exception:  # pragma: no cover - a bug here must not kill the listener
                    logger.exception("pubsub: delivery to a subscriber of %s failed", channel)
        self.stats.delivered += delivered

    def _on_overflow(self, sub: Subscription, dropped: int) -> None:
        topic = self._topics.get(sub.channel)
        if topic is not None:
            topic.subs.discard(sub)
        self.stats.overflows += 1
        self.stats.dropped += dropped
        logger.info(
            "pubsub: subscriber of %s fell %d messages behind; sent GAP", sub.topic, dropped
        )

    def _on_resubscribed(self) -> None:
        """After a reconnect: tell every live subscriber that it may have missed events."""
        for topic in list(self._topics.values()):
            for sub in list(topic.subs):
                sub._offer({"type": GAP, "topic": sub.topic, "reason": "reconnect", "final": False})
