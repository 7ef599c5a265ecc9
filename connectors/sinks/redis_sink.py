"""Redis as the read side: contact hashes, the suppression set, band indexes and the trigger stream.

Keys (all under ``leadpulse:``):

- ``contact:{id}``  hash: score, fit, behaviour, band, state, suppressed, rules_version,
  updated_at, and ``doc`` (the engine state as JSON, so readers can compute the score
  as of now with exact decay, and ``leadpulse rules explain`` can break it down).
- ``suppressed``    set of suppressed contact ids: an email tool checks membership.
- ``band:{band}``   sorted set of contact ids by score, for "hot leads" listings.
- ``triggers``      stream of triggers (XADD MAXLEN ~), field ``trigger`` = JSON.
- ``trigger:{trigger_id}`` marker with a TTL: a trigger id is added to the stream once,
  however often a replay re-emits it.

Everything is written pipelined, once per batch.
"""

from __future__ import annotations

from typing import Any

import orjson
from redis.asyncio import Redis

PREFIX = "leadpulse:"
TRIGGER_STREAM = PREFIX + "triggers"
SUPPRESSED_SET = PREFIX + "suppressed"
BANDS = ("cold", "warm", "hot", "sql")
DEDUPE_TTL_MS = 7 * 86_400_000

# KEYS[1] = stream; ARGV = maxlen, ttl_ms, then (trigger_id, json) pairs.
# Atomic per trigger: the marker and the XADD happen together or not at all.
_ADD_TRIGGERS = """
local added = 0
for i = 3, #ARGV, 2 do
  if redis.call('SET', 'leadpulse:trigger:' .. ARGV[i], '1', 'NX', 'PX', ARGV[2]) then
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'trigger', ARGV[i + 1])
    added = added + 1
  end
end
return added
"""


def contact_key(contact_id: str) -> str:
    return f"{PREFIX}contact:{contact_id}"


class RedisStateWriter:
    """Publishes contact views (from ``rules.engine.view``) after each batch.

    The hash is rewritten every time (the score moved); the suppression set and the band
    indexes only change when the contact's band or suppression changed since this process
    last published it. A contact this process has not published yet gets the full set of
    writes, so a restart or a partition moving to another worker converges at once.
    """

    def __init__(self, redis: Redis, memory: int = 500_000) -> None:
        self.redis = redis
        self.memory = memory
        self._published: dict[str, tuple[str, bool]] = {}  # contact -> (band, suppressed) last written

    async def write(self, views: dict[str, dict[str, Any]], docs: dict[str, bytes]) -> None:
        if not views:
            return
        published = self._published
        pipe = self.redis.pipeline(transaction=False)
        for contact_id, v in views.items():
            band, suppressed = v["band"], bool(v["suppressed"])
            pipe.hset(
                contact_key(contact_id),
                mapping={
                    "contact_id": contact_id,
                    "score": v["score"],
                    "fit": v["fit"],
                    "behaviour": v["behaviour"],
                    "band": band,
                    "state": v["state"],
                    "suppressed": int(suppressed),
                    "rules_version": v["rules_version"],
                    "updated_at": v.get("updated_at") or 0,
                    "doc": docs.get(contact_id, b"{}"),
                },
            )
            before = published.get(contact_id)
            if before is None or before[1] != suppressed:
                if suppressed:
                    pipe.sadd(SUPPRESSED_SET, contact_id)
                else:
                    pipe.srem(SUPPRESSED_SET, contact_id)
            pipe.zadd(f"{PREFIX}band:{band}", {contact_id: v["score"]})
            if before is None:
                for other in BANDS:
                    if other != band:
                        pipe.zrem(f"{PREFIX}band:{other}", contact_id)
            elif before[0] != band:
                pipe.zrem(f"{PREFIX}band:{before[0]}", contact_id)
            published.pop(contact_id, None)
            published[contact_id] = (band, suppressed)
            if len(published) > self.memory:
                del published[next(iter(published))]
        await pipe.execute()


class RedisTriggerSink:
    """Appends triggers to the ``leadpulse:triggers`` stream exactly once per trigger id."""

    name = "redis"

    def __init__(self, redis: Redis, maxlen: int = 100_000, dedupe_ttl_ms: int = DEDUPE_TTL_MS) -> None:
        self.redis = redis
        self.maxlen = maxlen
        self.dedupe_ttl_ms = dedupe_ttl_ms
        self._script = redis.register_script(_ADD_TRIGGERS)

    async def write(self, triggers: list[dict[str, Any]]) -> int:
        """Returns how many were new (the rest were replays of ids already delivered)."""
        if not triggers:
            return 0
        args: list[Any] = [self.maxlen, self.dedupe_ttl_ms]
        for trigger in triggers:
            args.append(trigger["trigger_id"])
            args.append(orjson.dumps(trigger))
        return int(await self._script(keys=[TRIGGER_STREAM], args=args))

    async def close(self) -> None:
        return None


async def read_contact(redis: Redis, contact_id: str) -> dict[bytes, bytes] | None:
    data = await redis.hgetall(contact_key(contact_id))
    return data or None
