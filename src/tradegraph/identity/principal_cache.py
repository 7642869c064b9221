"""A few seconds' memory of who a bearer token belongs to.

Every authenticated request needs the caller's role, status and access level. Reading the
user row each time cost one database round trip per request (py-spy: about a fifth of
the server's CPU under ``placeOrder`` load), so principals are kept here for ``ttl``
seconds, keyed by token.

Staleness is bounded both ways:

* every change to a user's role, status, access level or token version goes through
  ``IdentityService.user_changed``, which forgets that user's entries in this process at
  once and publishes the user id on :data:`USER_CHANGES_TOPIC`; every process drops its
  entries when the message arrives (milliseconds);
* if a message is lost (pub/sub reconnect or overflow), the whole cache is cleared; and
  nothing lives longer than ``ttl`` or past the token's own expiry, whatever happens.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import NamedTuple

from tradegraph.identity.principal import Principal
from tradegraph.pubsub import PubSub, PubSubUnavailable, is_gap

log = logging.getLogger("tradegraph.identity")

USER_CHANGES_TOPIC = "identity.user_changed"


class _Entry(NamedTuple):
    principal: Principal
    expires_at: float  # on the cache's monotonic clock


class PrincipalCache:
    """Token -> principal for at most ``ttl_seconds``; ``ttl_seconds <= 0`` disables it."""

    def __init__(
        self,
        ttl_seconds: float,
        *,
        max_entries: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl_seconds
        self.max_entries = max_entries
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._tokens_by_user: dict[str, set[str]] = {}

    @property
    def enabled(self) -> bool:
        return self.ttl > 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, token: str) -> Principal | None:
        entry = self._entries.get(token)
        if entry is None:
            return None
        if entry.expires_at <= self._clock():
            self._drop(token, entry.principal.user_id)
            return None
        return entry.principal

    def put(self, token: str, principal: Principal, *, valid_for: float | None = None) -> None:
        """Remember ``principal`` for ``ttl`` seconds, or ``valid_for`` if that is shorter
        (the token's remaining lifetime)."""
        if not self.enabled:
            return
        lifetime = self.ttl if valid_for is None else min(self.ttl, valid_for)
        if lifetime <= 0:
            return
        if len(self._entries) >= self.max_entries:
            self._purge_expired()
            if len(self._entries) >= self.max_entries:
                self.clear()
        self._entries[token] = _Entry(principal, self._clock() + lifetime)
        self._tokens_by_user.setdefault(principal.user_id, set()).add(token)

    def forget_user(self, user_id: str) -> None:
        for token in self._tokens_by_user.pop(user_id, ()):
            self._entries.pop(token, None)

    def clear(self) -> None:
        self._entries.clear()
        self._tokens_by_user.clear()

    def _drop(self, token: str, user_id: str) -> None:
        self._entries.pop(token, None)
        tokens = self._tokens_by_user.get(user_id)
        if tokens is not None:
            tokens.discard(token)
            if not tokens:
                del self._tokens_by_user[user_id]

    def _purge_expired(self) -> None:
        now = self._clock()
        for token, entry in list(self._entries.items()):
            if entry.expires_at <= now:
                self._drop(token, entry.principal.user_id)


async def follow_user_changes(
    cache: PrincipalCache, pubsub: PubSub, stop: asyncio.Event, *, retry_seconds: float = 1.0
) -> None:
    """Forget users changed by other processes until ``stop``; clear all on any gap."""
    while not stop.is_set():
        try:
            async with pubsub.subscribe(USER_CHANGES_TOPIC) as sub:
                async for message in sub:
                    if is_gap(message):
                        cache.clear()  # messages may be lost: forget everything
                        continue
                    user_id = message.get("userId")
                    if isinstance(user_id, str):
                        cache.forget_user(user_id)
            cache.clear()  # the subscription ended (overflow): resubscribe from a clean slate
        except asyncio.CancelledError:
            raise
        except (PubSubUnavailable, OSError) as error:
            cache.clear()
            log.warning("principal cache: user-change feed unavailable (%s); retrying", error)
            await asyncio.sleep(retry_seconds)
