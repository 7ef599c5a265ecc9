"""Replay guards: remember one-time webhook tokens (Mailgun's ``signature.token``) for a while.

A guard answers ``await guard.seen(token, ttl_ms)``: ``False`` the first time (and records the
token for ``ttl_ms``), ``True`` for every later call within the TTL. ``await guard.forget(token)``
drops a token again: the route calls it when the broker refused the events, so the
vendor's retry of the very same signed request is not mistaken for a replay.

- :class:`InMemoryReplayGuard`: one process, bounded (oldest tokens evicted first).
- :class:`RedisReplayGuard`: shared by every collector process, ``SET key 1 NX PX ttl``.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


class ReplayGuard(Protocol):
    async def seen(self, token: str, ttl_ms: int) -> bool:
        """True when ``token`` was recorded within its TTL; otherwise record it and return False."""

    async def forget(self, token: str) -> None:
        """Drop ``token`` (best effort) so that a retry of the same request is accepted."""


class InMemoryReplayGuard:
    """A bounded TTL set for one process; asyncio-safe because no call awaits in between."""

    def __init__(self, max_tokens: int = 100_000, now_ms: Callable[[], int] | None = None) -> None:
        if max_tokens < 1:
            raise ValueError("max_tokens must be >= 1")
        self._max = max_tokens
        self._now = now_ms or _wall_ms
        # token -> expiry (epoch ms); insertion order ~ expiry order because the TTL is one setting.
        self._tokens: OrderedDict[str, int] = OrderedDict()

    def __len__(self) -> int:
        return len(self._tokens)

    def _prune(self, now: int) -> None:
        while self._tokens:
            token, expiry = next(iter(self._tokens.items()))
            if expiry > now:
                break
            del self._tokens[token]

    async def seen(self, token: str, ttl_ms: int) -> bool:
        now = self._now()
        self._prune(now)
        expiry = self._tokens.get(token)
        if expiry is not None and expiry > now:
            return True
        self._tokens[token] = now + ttl_ms
        self._tokens.move_to_end(token)
        while len(self._tokens) > self._max:
            # Evicting the oldest only re-opens a window the timestamp check already closes.
            self._tokens.popitem(last=False)
        return False

    async def forget(self, token: str) -> None:
        self._tokens.pop(token, None)


class RedisReplayGuard:
    """Tokens in Redis, shared across collector processes; ``client`` is a ``redis.asyncio.Redis``."""

    def __init__(self, client: Any, prefix: str = "leadpulse:webhook-token:") -> None:
        self._client = client
        self._prefix = prefix

    async def seen(self, token: str, ttl_ms: int) -> bool:
        # SET NX is atomic: of two concurrent deliveries of one token exactly one wins.
        created = await self._client.set(self._prefix + token, b"1", nx=True, px=max(1, int(ttl_ms)))
        return not created

    async def forget(self, token: str) -> None:
        await self._client.delete(self._prefix + token)
