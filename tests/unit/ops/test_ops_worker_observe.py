"""ops.worker.observe_consumer: per-partition lag arithmetic, revoked partitions, contacts gauge."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from types import SimpleNamespace

from faust.types import TP

from ops.metrics import Metrics
from ops.worker import _count_redis_deliveries, events_partitions, observe_consumer


class FakeConsumer:
    def __init__(self, assignment, highwater, committed, read=None, positions=None):
        self._assignment = set(assignment)
        self._positions = positions or {}
        self.positions_asked: list = []
        self._highwater = highwater
        self._committed_offset = defaultdict(lambda: None, committed)
        self._read_offset = defaultdict(lambda: None, read or {})

    def assignment(self):
        return self._assignment

    def highwater(self, tp):
        return self._highwater.get(tp)

    async def position(self, tp):
        self.positions_asked.append(tp)
        return self._positions.get(tp)


def score_with(consumer, contacts=3):
    app = SimpleNamespace(_consumer=consumer, consumer=consumer)
    return SimpleNamespace(app=app, config=SimpleNamespace(events_topic="ev"), contacts=SimpleNamespace(data=dict.fromkeys(range(contacts))))


def lag(metrics: Metrics) -> dict[str, float]:
    return {s.labels["partition"]: s.value for s in metrics.consumer_lag.collect()[0].samples}


def test_lag_is_highwater_minus_committed_per_owned_events_partition():
    tp0, tp1, other = TP("ev", 0), TP("ev", 1), TP("ev-changelog", 0)
    consumer = FakeConsumer({tp0, tp1, other}, {tp0: 120, tp1: 50, other: 9}, {tp0: 100, tp1: 50, other: 1})
    metrics = Metrics()
    asyncio.run(observe_consumer(score_with(consumer), metrics))
    assert lag(metrics) == {"0": 20.0, "1": 0.0}
    assert metrics.contacts.collect()[0].samples[0].value == 3


def test_before_the_first_commit_the_read_position_stands_in():
    tp0 = TP("ev", 0)
    metrics = Metrics()
    asyncio.run(observe_consumer(score_with(FakeConsumer({tp0}, {tp0: 10}, {}, {tp0: 3})), metrics))
    assert lag(metrics) == {"0": 6.0}  # offsets 4..9 are still to be read


def test_partitions_moved_away_are_no_longer_reported():
    tp0, tp1 = TP("ev", 0), TP("ev", 1)
    metrics = Metrics()
    asyncio.run(observe_consumer(score_with(FakeConsumer({tp0, tp1}, {tp0: 5, tp1: 5}, {tp0: 5, tp1: 4})), metrics))
    asyncio.run(observe_consumer(score_with(FakeConsumer({tp1}, {tp1: 5}, {tp1: 5})), metrics))
    assert lag(metrics) == {"1": 0.0}


def test_events_partitions_lists_only_the_events_topic_and_tolerates_no_consumer():
    consumer = FakeConsumer({TP("ev", 3), TP("ev", 1), TP("x", 0)}, {}, {})
    assert events_partitions(score_with(consumer)) == [1, 3]
    assert events_partitions(score_with(None)) == []


def test_redis_sink_counts_replayed_triggers_as_duplicates():
    metrics = Metrics()
    metrics.declare_worker_series(["redis"])
    _count_redis_deliveries(metrics, offered=5, added=3)
    samples = {(s.labels["sink"], s.labels["outcome"]): s.value
               for s in metrics.sink_deliveries.collect()[0].samples if s.name.endswith("_total")}
    assert samples[("redis", "delivered")] == 3 and samples[("redis", "duplicate")] == 2
    assert samples[("redis", "dead_letter")] == 0  # declared at 0 so Prometheus sees the first rise


def test_an_idle_partition_of_a_fresh_group_reports_lag_from_its_fetch_position():
    tp0, tp1 = TP("ev", 0), TP("ev", 1)
    consumer = FakeConsumer({tp0, tp1}, {tp0: 7, tp1: 0}, {tp0: 7}, positions={tp1: 0})
    score = score_with(consumer)
    metrics = Metrics()
    asyncio.run(observe_consumer(score, metrics, {}))
    assert consumer.positions_asked == [tp1]  # tp0 has a commit: no need to ask
    assert lag(metrics) == {"0": 0.0, "1": 0.0}


def test_without_a_position_an_unread_partition_is_not_reported():
    tp0 = TP("ev", 0)
    score = score_with(FakeConsumer({tp0}, {tp0: 4}, {}))
    metrics = Metrics()
    asyncio.run(observe_consumer(score, metrics, {}))
    assert lag(metrics) == {}
