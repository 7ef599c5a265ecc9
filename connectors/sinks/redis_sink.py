"""Redis as the read side: contact hashes, the suppression set, band indexes and the trigger stream.

Keys (all under ``leadpulse:``):

- ``contact:{id}``  hash: score, fit, behaviour, band, state, suppressed, rules_version,
  updated_at, and ``doc`` (the engine state, so readers can compute the score as of now
  with exact decay, and ``leadpulse rules explain`` can break it down): MessagePack of
  the state as the table record stores it, defaults left out; read it with
  ``streams.state.state_from_doc`` (which also reads the JSON of earlier versions).
- ``suppressed``    set of suppressed contact ids: an email tool checks membership.
- ``band:{band}``   sorted set of contact ids by score, for "hot leads" listings.
- ``triggers``      stream of triggers (XADD MAXLEN ~), field ``trigger`` = JSON.
- ``trigger:{trigger_id}`` marker with a TTL: a trigger id is added to the stream once,
  however often a replay re-emits it.

Contact views go out in one script call per batch, triggers in another (both atomic).
"""

from __future__ import annotations

from typing import Any

import orjson
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

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


# ARGV[1] = JSON array of [contact_id, score, fit, behaviour, band, state, suppressed, rules_version,
# updated_at] (all strings), ARGV[1 + i] = the state document of row i.
# One call per batch, atomic: the hash, the suppression set and the band indexes never
# disagree, and what to move is read from the hash itself, not from process memory.
_WRITE_CONTACTS = """
local rows = cjson.decode(ARGV[1])
for i, r in ipairs(rows) do
  local id, band, suppressed = r[1], r[5], r[7]
  local key = 'leadpulse:contact:' .. id
  local before = redis.call('HMGET', key, 'band', 'suppressed')
  redis.call('HSET', key, 'contact_id', id, 'score', r[2], 'fit', r[3], 'behaviour', r[4], 'band', band,
             'state', r[6], 'suppressed', suppressed, 'rules_version', r[8], 'updated_at', r[9], 'doc', ARGV[i + 1])
  if before[2] ~= suppressed then
    if suppressed == '1' then
      redis.call('SADD', 'leadpulse:suppressed', id)
    else
      redis.call('SREM', 'leadpulse:suppressed', id)
    end
  end
  if before[1] and before[1] ~= band then
    redis.call('ZREM', 'leadpulse:band:' .. before[1], id)
  end
  redis.call('ZADD', 'leadpulse:band:' .. band, r[2], id)
end
return #rows
"""


class RedisStateWriter:
    """Publishes contact summaries (``rules.engine.summary``) after each batch.

    Every contact of the batch goes out in one script call: its hash is rewritten (the
    score moved), and the suppression set and band indexes change only when the hash
    says the band or the suppression changed. Packing one argument per contact instead
    of six commands with ten fields each is what keeps the read side cheap for the
    worker (redis-py encodes every command argument in Python).
    """

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._script = redis.register_script(_WRITE_CONTACTS)

    async def write(self, views: dict[str, dict[str, Any]], docs: dict[str, bytes]) -> None:
        if views:
            pipe = self.redis.pipeline(transaction=False)
            await self.queue(pipe, views, docs)
            await pipe.execute()

    async def queue(self, pipe: Pipeline, views: dict[str, dict[str, Any]], docs: dict[str, bytes]) -> None:
        """Add the write of ``views`` to ``pipe`` (one script call), to go with other commands."""
        rows = []
        args: list[Any] = [b""]
        for contact_id, v in views.items():
            # The same text redis-py would send for these values (repr of floats, str of ints).
            rows.append((
                contact_id, repr(v["score"]), repr(v["fit"]), repr(v["behaviour"]), v["band"], v["state"],
                "1" if v["suppressed"] else "0", str(v["rules_version"]), str(v.get("updated_at") or 0),
            ))
            args.append(docs.get(contact_id, b"{}"))
        args[0] = orjson.dumps(rows)
        await self._script(args=args, client=pipe)


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
        pipe = self.redis.pipeline(transaction=False)
        await self.queue(pipe, triggers)
        (added,) = await pipe.execute()
        return int(added)

    async def queue(self, pipe: Pipeline, triggers: list[dict[str, Any]]) -> None:
        """Add the append of ``triggers`` to ``pipe``; its reply is how many were new."""
        args: list[Any] = [self.maxlen, self.dedupe_ttl_ms]
        for trigger in triggers:
            args.append(trigger["trigger_id"])
            args.append(orjson.dumps(trigger))
        await self._script(keys=[TRIGGER_STREAM], args=args, client=pipe)

    async def close(self) -> None:
        return None


async def read_contact(redis: Redis, contact_id: str) -> dict[bytes, bytes] | None:
    data = await redis.hgetall(contact_key(contact_id))
    return data or None
