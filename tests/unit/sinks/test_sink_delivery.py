"""SinkRunner: retries, Retry-After, dead-letter, exactly-once by trigger id, isolation, backpressure."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr

from connectors.sinks.delivery import (
    DeliveryError,
    InMemoryLedger,
    PermanentError,
    RedisLedger,
    RetryAfter,
    SinkRunner,
    build_runners,
    parse_retry_after,
    webhook_sink_name,
)
from ops.metrics import Metrics
from ops.settings import Settings
from sink_receiver import FakeTime, trigger


class RecordingSink:
    """Fails according to a script of exceptions, then records what it delivered."""

    def __init__(self, name: str = "fake", failures: list[BaseException] | None = None) -> None:
        self.name = name
        self.failures = list(failures or [])
        self.calls: list[list[str]] = []
        self.delivered: list[str] = []
        self.gate: asyncio.Event | None = None
        self.closed = False

    async def write(self, triggers: list[dict[str, Any]]) -> None:
        ids = [t["trigger_id"] for t in triggers]
        self.calls.append(ids)
        if self.gate is not None:
            await self.gate.wait()
        if self.failures:
            raise self.failures.pop(0)
        self.delivered.extend(ids)

    async def close(self) -> None:
        self.closed = True


class DLQ:
    def __init__(self, fail_times: int = 0) -> None:
        self.records: list[tuple[str, list[str], str]] = []
        self.fail_times = fail_times

    async def __call__(self, sink: str, triggers: list[dict[str, Any]], reason: str) -> None:
        if self.fail_times:
            self.fail_times -= 1
            raise ConnectionError("dlq topic unavailable")
        self.records.append((sink, [t["trigger_id"] for t in triggers], reason))


def count(metrics: Metrics, sink: str, outcome: str) -> float:
    return metrics.sink_deliveries.labels(sink=sink, outcome=outcome)._value.get()


def retries(metrics: Metrics, sink: str) -> float:
    return metrics.sink_retries.labels(sink=sink)._value.get()


def runner(sink, ft: FakeTime, **kw) -> SinkRunner:
    kw.setdefault("rng", random.Random(7))
    return SinkRunner(sink, clock=ft.clock, sleep=ft.sleep, **kw)


async def test_retries_with_backoff_then_delivers():
    ft, metrics = FakeTime(), Metrics()
    sink = RecordingSink(failures=[ConnectionError("down"), DeliveryError("HTTP 503")])
    r = runner(sink, ft, metrics=metrics, ledger=InMemoryLedger(), base_delay_ms=100)
    assert r.offer([trigger(1), trigger(2)])
    assert await r.flush(5)
    assert sink.delivered == ["t1", "t2"]
    assert len(sink.calls) == 3
    # Full jitter: attempt n waits within [0, base * 2**(n-1)].
    assert len(ft.sleeps) == 2
    assert 0 <= ft.sleeps[0] <= 0.1 and 0 <= ft.sleeps[1] <= 0.2
    assert count(metrics, "fake", "delivered") == 2
    assert count(metrics, "fake", "failed") == 4  # two triggers, two failed attempts each
    assert retries(metrics, "fake") == 2
    await r.close()
    assert sink.closed


async def test_retry_after_is_honoured():
    ft = FakeTime()
    sink = RecordingSink(failures=[RetryAfter(7)])
    r = runner(sink, ft, base_delay_ms=10)
    r.offer([trigger(1)])
    assert await r.flush(5)
    assert ft.sleeps and ft.sleeps[0] >= 7
    assert sink.delivered == ["t1"]


async def test_retry_after_is_capped():
    ft = FakeTime()
    sink = RecordingSink(failures=[RetryAfter(86_400)])
    r = runner(sink, ft, max_retry_after_ms=60_000)
    r.offer([trigger(1)])
    assert await r.flush(5)
    assert ft.sleeps == [60.0]


async def test_dead_letter_after_max_attempts():
    ft, metrics, dlq = FakeTime(), Metrics(), DLQ()
    sink = RecordingSink(failures=[ConnectionError("refused")] * 10)
    r = runner(sink, ft, metrics=metrics, max_attempts=3, dead_letter=dlq)
    r.offer([trigger(1), trigger(2)])
    assert await r.flush(5)
    assert len(sink.calls) == 3
    assert dlq.records == [("fake", ["t1", "t2"], dlq.records[0][2])]
    assert "gave up after 3 attempts" in dlq.records[0][2] and "refused" in dlq.records[0][2]
    assert count(metrics, "fake", "dead_letter") == 2
    assert count(metrics, "fake", "delivered") == 0
    assert count(metrics, "fake", "failed") == 4  # the last attempt ends in dead_letter, not failed
    assert retries(metrics, "fake") == 2


async def test_permanent_error_dead_letters_without_retry():
    ft, dlq = FakeTime(), DLQ()
    sink = RecordingSink(failures=[PermanentError("HTTP 404 channel_not_found")])
    r = runner(sink, ft, dead_letter=dlq)
    r.offer([trigger(1)])
    assert await r.flush(5)
    assert len(sink.calls) == 1 and ft.sleeps == []
    assert dlq.records[0][1] == ["t1"] and "channel_not_found" in dlq.records[0][2]


async def test_partial_delivery_marks_rejects_and_retries_the_rest():
    ft, dlq, ledger, metrics = FakeTime(), DLQ(), InMemoryLedger(), Metrics()
    sink = RecordingSink(failures=[DeliveryError("mixed", delivered={"t1"}, rejected={"t2"})])
    r = runner(sink, ft, dead_letter=dlq, ledger=ledger, metrics=metrics)
    r.offer([trigger(1), trigger(2), trigger(3)])
    assert await r.flush(5)
    assert sink.calls == [["t1", "t2", "t3"], ["t3"]]
    assert dlq.records[0][1] == ["t2"]
    assert await ledger.claim("fake", ["t1", "t2", "t3"]) == ["t2"]
    assert count(metrics, "fake", "delivered") == 2
    assert count(metrics, "fake", "dead_letter") == 1


async def test_exactly_once_despite_retries_reoffers_and_restart():
    ledger, metrics = InMemoryLedger(), Metrics()
    first = RecordingSink(failures=[ConnectionError("blip")])
    r1 = runner(first, FakeTime(), ledger=ledger, metrics=metrics)
    batch = [trigger(1), trigger(2)]
    r1.offer(batch)
    r1.offer(batch)  # the worker re-offers the same batch (e.g. a rebalance replay)
    assert await r1.flush(5)
    await r1.close()

    # "Restart": a new runner and sink instance sharing the durable ledger get the
    # uncommitted batch again plus one new trigger.
    second = RecordingSink()
    r2 = runner(second, FakeTime(), ledger=ledger, metrics=metrics)
    r2.offer(batch + [trigger(3)])
    assert await r2.flush(5)
    assert first.delivered + second.delivered == ["t1", "t2", "t3"]
    assert count(metrics, "fake", "delivered") == 3
    assert count(metrics, "fake", "duplicate") == 4


async def test_slow_sink_does_not_block_another_runner():
    slow, fast = RecordingSink("slow"), RecordingSink("fast")
    slow.gate = asyncio.Event()
    rs, rf = SinkRunner(slow), SinkRunner(fast)
    assert rs.offer([trigger(1)]) and rf.offer([trigger(1)])
    assert await rf.flush(5)
    assert fast.delivered == ["t1"]
    assert not await rs.flush(0.05)
    assert rs.pending == 1
    slow.gate.set()
    assert await rs.flush(5)
    assert slow.delivered == ["t1"] and rs.pending == 0
    await rs.close()
    await rf.close()


async def test_full_queue_refuses_offer_and_put_waits_for_room():
    sink = RecordingSink()
    sink.gate = asyncio.Event()
    r = SinkRunner(sink, max_pending=2)
    assert r.offer([trigger(1), trigger(2)])
    assert not r.offer([trigger(3)])  # full: nothing dropped, the caller keeps the batch
    put = asyncio.create_task(r.put([trigger(3)]))
    await asyncio.sleep(0.01)
    assert not put.done()
    sink.gate.set()
    await asyncio.wait_for(put, 5)
    assert await r.flush(5)
    assert sink.delivered == ["t1", "t2", "t3"]
    await r.close()


async def test_oversized_batch_is_accepted_into_an_empty_queue():
    sink = RecordingSink()
    r = SinkRunner(sink, max_pending=2, max_batch=2)
    assert r.offer([trigger(i) for i in range(5)])
    assert await r.flush(5)
    assert sink.delivered == [f"t{i}" for i in range(5)]


async def test_queued_batches_are_coalesced_and_flush_covers_them():
    sink = RecordingSink()
    r = SinkRunner(sink, max_batch=3)
    for i in range(5):
        r.offer([trigger(i)])
    assert await r.flush(5)
    assert sink.calls == [["t0", "t1", "t2"], ["t3", "t4"]]


async def test_sink_filter_keeps_unwanted_types_out_of_the_queue():
    sink = RecordingSink()
    sink.wants = lambda t: t["type"] == "mql"  # type: ignore[attr-defined]
    r = SinkRunner(sink)
    assert r.offer([trigger(1, "suppress"), trigger(2, "mql")])
    assert await r.flush(5)
    assert sink.delivered == ["t2"]


async def test_ledger_outage_fails_open():
    class BrokenLedger:
        async def claim(self, sink, ids):
            raise ConnectionError("redis down")

        async def mark_delivered(self, sink, ids):
            raise ConnectionError("redis down")

    sink = RecordingSink()
    r = SinkRunner(sink, ledger=BrokenLedger())
    r.offer([trigger(1)])
    assert await r.flush(5)
    assert sink.delivered == ["t1"]


async def test_dead_letter_failure_is_retried_not_dropped():
    ft, dlq = FakeTime(), DLQ(fail_times=2)
    r = runner(RecordingSink(failures=[PermanentError("400")]), ft, dead_letter=dlq)
    r.offer([trigger(1)])
    assert await r.flush(5)
    assert [rec[1] for rec in dlq.records] == [["t1"]]
    assert len(ft.sleeps) == 2


async def test_offer_after_close_raises():
    r = SinkRunner(RecordingSink())
    await r.close()
    with pytest.raises(RuntimeError):
        r.offer([trigger(1)])


async def test_flush_with_nothing_offered_is_immediate():
    r = SinkRunner(RecordingSink())
    assert await r.flush(0.01)


async def test_oldest_pending_age_uses_the_injected_clock():
    ft = FakeTime()
    sink = RecordingSink()
    sink.gate = asyncio.Event()
    r = runner(sink, ft)
    r.offer([trigger(1)])
    ft.now += 12
    await asyncio.sleep(0)
    assert r.oldest_pending_s() == 12
    sink.gate.set()
    assert await r.flush(5)
    assert r.oldest_pending_s() == 0


@given(attempt=st.integers(min_value=1, max_value=200), seed=st.integers(0, 2**32))
def test_backoff_is_full_jitter_within_the_cap(attempt, seed):
    r = SinkRunner(RecordingSink(), base_delay_ms=200, max_delay_ms=30_000, rng=random.Random(seed))
    delay = r.backoff(attempt)
    assert 0 <= delay <= min(30.0, 0.2 * 2 ** (attempt - 1))


def test_parse_retry_after():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("1.5") == 1.5
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now_s=1445412480) == 10.0


async def test_in_memory_ledger_is_bounded():
    ledger = InMemoryLedger(max_entries=3)
    await ledger.mark_delivered("s", ["a", "b", "c", "d"])
    assert await ledger.claim("s", ["a", "b", "c", "d"]) == ["a"]
    assert await ledger.claim("other", ["a"]) == ["a"]


class FakeRedis:
    """Just enough of redis.asyncio for RedisLedger: pipelined EXISTS and SET NX PX."""

    def __init__(self) -> None:
        self.data: dict[str, tuple[bytes, int | None]] = {}

    def pipeline(self, transaction: bool = True) -> FakeRedis._Pipe:
        return FakeRedis._Pipe(self)

    class _Pipe:
        def __init__(self, redis: FakeRedis) -> None:
            self.redis, self.ops = redis, []

        def exists(self, key):
            self.ops.append(lambda: int(key in self.redis.data))

        def set(self, key, value, nx=False, px=None):
            def op():
                if nx and key in self.redis.data:
                    return None
                self.redis.data[key] = (value, px)
                return True

            self.ops.append(op)

        async def execute(self):
            return [op() for op in self.ops]


async def test_redis_ledger_keys_ttl_and_claim():
    redis = FakeRedis()
    ledger = RedisLedger(redis, ttl_ms=1234)
    assert await ledger.claim("slack", ["a", "b"]) == ["a", "b"]
    await ledger.mark_delivered("slack", ["a"])
    assert redis.data == {"leadpulse:delivered:slack:a": (b"1", 1234)}
    assert await ledger.claim("slack", ["a", "b"]) == ["b"]
    assert await ledger.claim("webhook:x", ["a"]) == ["a"]
    assert await ledger.claim("slack", []) == []


async def test_redis_ledger_with_a_runner_survives_restart():
    redis = FakeRedis()
    s1, s2 = RecordingSink("slack"), RecordingSink("slack")
    r1 = SinkRunner(s1, ledger=RedisLedger(redis))
    r1.offer([trigger(1)])
    assert await r1.flush(5)
    r2 = SinkRunner(s2, ledger=RedisLedger(redis))
    r2.offer([trigger(1), trigger(2)])
    assert await r2.flush(5)
    assert s1.delivered == ["t1"] and s2.delivered == ["t2"]


def test_build_runners_from_settings():
    none = build_runners(Settings(_env_file=None), metrics=None, redis=None, dead_letter=None)
    assert none == []
    settings = Settings(
        _env_file=None,
        slack_webhook_url=SecretStr("https://hooks.slack.example/services/T/B/secret"),
        webhook_urls="https://a.example/hook?token=s3cret,https://b.example:8443/x",
        webhook_secret=SecretStr("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
        public_url="https://leads.example",
    )
    runners = build_runners(settings, metrics=Metrics(), redis=FakeRedis(), dead_letter=DLQ())
    names = [r.name for r in runners]
    assert names[0] == "slack"
    assert names[1].startswith("webhook:a.example:") and names[2].startswith("webhook:b.example:")
    assert all("s3cret" not in n for n in names)
    assert isinstance(runners[0].ledger, RedisLedger)
    assert runners[0].sink.base_url == "https://leads.example"
    assert webhook_sink_name("https://a.example/hook?token=s3cret") == names[1]
    assert runners[0].sink.min_interval == 1.0  # Slack's ~1 message/s per webhook by default


def test_slack_pacing_comes_from_settings():
    settings = Settings(_env_file=None, slack_webhook_url=SecretStr("https://hooks.slack.example/x"),
                        slack_min_interval="250ms")
    (runner,) = build_runners(settings, metrics=None, redis=None, dead_letter=None)
    assert runner.sink.min_interval == 0.25
