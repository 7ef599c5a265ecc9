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


async def test_band_listing_is_as_of_now_after_decay(services):
    """``band_as_of`` against a brute-force oracle: contacts written at their last event, read
    weeks later, when behaviour decayed some out of their stored band (own Redis db)."""
    import random

    from benchmarks.workload import high_fit_traits, random_traits
    from connectors.collector import band_as_of
    from rules import default_model
    from rules.engine import apply_event, new_state
    from rules.engine import view as engine_view

    model, rng = default_model(), random.Random(5)
    client = Redis.from_url(services.redis_url, db=7)
    await client.flushdb()
    writer = RedisStateWriter(client)
    now, day = 1_790_000_000_000, 86_400_000
    states = {}
    for i in range(40):
        cid = f"c{i}"
        state = new_state(cid)
        start = now - rng.randrange(1, 80) * day
        traits = high_fit_traits(cid, rng) if i % 2 else random_traits(cid, rng)
        kinds = ["identify"] + rng.choices(["page_view", "demo_request", "webinar_attended", "email_click"], k=rng.randrange(1, 9))
        for n, kind in enumerate(kinds):
            ts = start + n * 60_000
            apply_event(state, {"id": f"{cid}-{n}", "type": kind, "contact_id": cid, "anonymous_id": None, "ts": ts,
                                "received_at": ts, "source": "segment", "traits": traits if kind == "identify" else {},
                                "properties": {"path": "/pricing"} if kind == "page_view" else {}}, model)
        states[cid] = state
        await writer.write({cid: engine_view(state, model, ts)}, {cid: orjson.dumps(state)})

    current = {cid: engine_view(state, model, now) for cid, state in states.items()}
    stored = {cid: engine_view(state, model, state["updated_at"]) for cid, state in states.items()}
    assert any(current[c]["band"] != stored[c]["band"] for c in states), "the data must show decay across a band edge"
    for band in ("warm", "hot", "sql"):
        expected = sorted((v["score"] for v in current.values() if v["band"] == band), reverse=True)[:5]
        listed, complete = await band_as_of(client, band, 5, model, now, chunk=3)
        assert complete
        assert [c["score"] for c in listed] == expected, band
        assert all(current[c["contact_id"]]["band"] == band for c in listed)
    listed, complete = await band_as_of(client, "warm", 50, model, now, chunk=3, max_scanned=6)
    assert not complete and listed  # a capped scan says so
    await client.flushdb()
    await client.aclose()
