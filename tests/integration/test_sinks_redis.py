"""The Redis read side and the delivery ledger against a real redis-server (embedded or container).

What the unit tests fake, here for real: the Lua script that adds a trigger to the stream once
per id, the ledger that survives a new runner (as after a worker restart), and the contact
hash / suppression set / band index writes, including a contact leaving the suppression set.
"""

from __future__ import annotations

import uuid

import orjson
import pytest
from redis.asyncio import Redis

from connectors.sinks.delivery import RedisLedger, SinkRunner
from connectors.sinks.redis_sink import SUPPRESSED_SET, TRIGGER_STREAM, RedisStateWriter, RedisTriggerSink, contact_key

pytestmark = pytest.mark.integration


@pytest.fixture
async def redis(services):
    client = Redis.from_url(services.redis_url)
    yield client
    await client.aclose()


def trig(tid: str, contact: str = "c", ttype: str = "mql") -> dict:
    return {"trigger_id": tid, "type": ttype, "contact_id": contact, "score": 81.0}


async def test_trigger_stream_adds_each_id_once_with_a_ttl_marker(redis):
    tag = uuid.uuid4().hex[:8]
    sink = RedisTriggerSink(redis, maxlen=1000)
    batch = [trig(f"{tag}-1"), trig(f"{tag}-2"), trig(f"{tag}-1")]
    assert await sink.write(batch) == 2
    assert await sink.write(batch) == 0  # a replay of the same batch
    entries = await redis.xrange(TRIGGER_STREAM)
    ids = [orjson.loads(f[b"trigger"])["trigger_id"] for _, f in entries]
    assert ids.count(f"{tag}-1") == 1 and ids.count(f"{tag}-2") == 1
    assert 0 < await redis.pttl(f"leadpulse:trigger:{tag}-1") <= sink.dedupe_ttl_ms


class Recorder:
    def __init__(self, name: str) -> None:
        self.name = name
        self.sent: list[str] = []

    async def write(self, triggers):
        self.sent.extend(t["trigger_id"] for t in triggers)

    async def close(self):
        return None


async def test_ledger_in_redis_survives_a_new_runner(redis):
    tag = uuid.uuid4().hex[:8]
    ledger = RedisLedger(redis, ttl_ms=60_000, prefix=f"lp-test-{tag}:delivered")
    first = Recorder("webhook:x")
    runner = SinkRunner(first, ledger=ledger)
    runner.offer([trig(f"{tag}-a"), trig(f"{tag}-b")])
    assert await runner.flush(5)
    await runner.close()
    # "Restart": a new runner and a new sink object, the uncommitted batch replayed plus a new trigger.
    second = Recorder("webhook:x")
    runner = SinkRunner(second, ledger=RedisLedger(redis, ttl_ms=60_000, prefix=f"lp-test-{tag}:delivered"))
    runner.offer([trig(f"{tag}-a"), trig(f"{tag}-b"), trig(f"{tag}-c")])
    assert await runner.flush(5)
    await runner.close()
    assert first.sent == [f"{tag}-a", f"{tag}-b"] and second.sent == [f"{tag}-c"]
    assert 0 < await redis.pttl(ledger.key("webhook:x", f"{tag}-a")) <= 60_000
    # Another sink has its own ledger entries: it still gets everything.
    other = Recorder("slack")
    runner = SinkRunner(other, ledger=ledger)
    runner.offer([trig(f"{tag}-a")])
    assert await runner.flush(5)
    await runner.close()
    assert other.sent == [f"{tag}-a"]


def view(score: float, band: str, suppressed: bool, state: str = "nurture") -> dict:
    return {"score": score, "fit": 20.0, "behaviour": score - 20.0, "band": band, "state": state,
            "suppressed": suppressed, "rules_version": "v-test", "updated_at": 1}


async def test_state_writer_moves_bands_and_syncs_the_suppression_set(redis):
    who = f"c-{uuid.uuid4().hex[:8]}"
    writer = RedisStateWriter(redis)
    await writer.write({who: view(55.0, "hot", False)}, {who: b'{"x": 1}'})
    assert await redis.zscore("leadpulse:band:hot", who) == 55.0
    assert not await redis.sismember(SUPPRESSED_SET, who)
    await writer.write({who: view(80.0, "sql", True, "mql")}, {who: b"{}"})
    assert await redis.zscore("leadpulse:band:hot", who) is None
    assert await redis.zscore("leadpulse:band:sql", who) == 80.0
    assert await redis.sismember(SUPPRESSED_SET, who)
    stored = await redis.hgetall(contact_key(who))
    assert stored[b"state"] == b"mql" and stored[b"suppressed"] == b"1" and stored[b"band"] == b"sql"
    await writer.write({who: view(80.0, "sql", False, "mql")}, {who: b"{}"})
    assert not await redis.sismember(SUPPRESSED_SET, who)
    await redis.delete(contact_key(who))
    await redis.zrem("leadpulse:band:sql", who)
