"""Which partitions a fetch may drain (streams.app.use_live_active_partitions), and what a
jump in the offsets read leaves behind (use_logged_offset_gaps).

These run faust's own aiokafka driver method and aiokafka's own ``Fetcher.fetched_records``
over a real ``SubscriptionState``; only the broker side (the records a fetch response
brought) is stood in for. The race they replay: a fetch starts while recovery reads the
changelog, recovery then pauses the changelog (faust's active set becomes empty) and the
seek of the paused events partition to its committed offset brings that partition's
records in while the fetch still waits.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from types import SimpleNamespace

from aiokafka.consumer.fetcher import Fetcher, FetchResult
from aiokafka.consumer.subscription_state import SubscriptionState
from aiokafka.structs import TopicPartition
from faust.transport.consumer import Consumer
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from intervaltree import IntervalTree

from streams.app import LiveActivePartitions, use_live_active_partitions, use_logged_offset_gaps

EVENTS = TopicPartition("leadpulse-events", 0)
CHANGELOG = TopicPartition("leadpulse-contacts-changelog", 0)


class BrokerRecords:
    """What a fetch response for one partition holds, as aiokafka's FetchResult reads it."""

    def __init__(self, offsets: list[int]) -> None:
        self._offsets = list(offsets)
        self.next_fetch_offset = offsets[0]

    def __iter__(self) -> "BrokerRecords":
        return self

    def __next__(self) -> SimpleNamespace:
        if not self._offsets:
            raise StopIteration
        offset = self._offsets.pop(0)
        self.next_fetch_offset = offset + 1
        return SimpleNamespace(offset=offset)


def consumer_at_zero() -> tuple[SimpleNamespace, SubscriptionState]:
    """An aiokafka consumer (only what faust's driver touches) with both partitions at offset 0."""
    subscriptions = SubscriptionState()
    subscriptions.assign_from_user({EVENTS, CHANGELOG})
    for tp in (EVENTS, CHANGELOG):
        subscriptions.seek(tp, 0)
    fetcher = object.__new__(Fetcher)  # no client: the background fetch routine is not run
    fetcher._subscriptions = subscriptions
    fetcher._records = {}
    fetcher._closed = False
    fetcher._wait_consume_future = None
    fetcher._fetch_waiters = set()
    fetcher._loop = asyncio.get_running_loop()
    return SimpleNamespace(_fetcher=fetcher, _closed=False), subscriptions


def driver_thread() -> SimpleNamespace:
    """faust's consumer thread, as its ``_fetch_records`` reads it: the flow is running."""
    return SimpleNamespace(consumer=SimpleNamespace(flow_active=True))


def records_arrive(consumer: SimpleNamespace, subscriptions: SubscriptionState, tp: TopicPartition,
                   offsets: list[int]) -> None:
    """What aiokafka's fetch routine does with a response: buffer it and wake the waiting fetch."""
    fetcher = consumer._fetcher
    fetcher._records[tp] = FetchResult(tp, assignment=subscriptions.subscription.assignment,
                                       partition_records=BrokerRecords(offsets), backoff=0)
    for waiter in list(fetcher._fetch_waiters):
        waiter.set_result(None)


async def fetch_while_recovery_ends(fetch_records) -> tuple[dict, int]:
    """Start a fetch with the changelog active, end recovery, let the events records arrive."""
    consumer, subscriptions = consumer_at_zero()
    thread = driver_thread()
    active = {CHANGELOG}
    fetch = asyncio.ensure_future(fetch_records(thread, consumer, active, timeout=2.0))
    for _ in range(3):
        await asyncio.sleep(0)
    assert not fetch.done(), "the fetch should be waiting for records"
    active.clear()  # recovery is done: faust pauses the changelog partitions
    records_arrive(consumer, subscriptions, EVENTS, [0, 1, 2])
    drained = await fetch
    return drained, subscriptions.subscription.assignment.state_value(EVENTS).position


def test_aiokafka_reads_an_emptied_active_set_as_every_partition():
    """Why the view exists: faust's own set, emptied during the wait, lets the paused partition be drained."""
    unpatched = getattr(AIOKafkaConsumerThread._fetch_records, "__wrapped__", AIOKafkaConsumerThread._fetch_records)
    drained, events_position = asyncio.run(fetch_while_recovery_ends(unpatched))
    assert [r.offset for r in drained[EVENTS]] == [0, 1, 2]
    assert events_position == 3  # moved past records faust then skips as paused


def test_a_partition_paused_during_the_fetch_keeps_its_records_and_position():
    use_live_active_partitions()
    drained, events_position = asyncio.run(fetch_while_recovery_ends(AIOKafkaConsumerThread._fetch_records))
    assert drained == {}
    assert events_position == 0  # the records stay for when faust resumes the partition


def test_active_partitions_are_drained_through_the_view():
    use_live_active_partitions()

    async def run() -> tuple[dict, int]:
        consumer, subscriptions = consumer_at_zero()
        thread = driver_thread()
        records_arrive(consumer, subscriptions, EVENTS, [0, 1])
        records_arrive(consumer, subscriptions, CHANGELOG, [0])
        drained = await AIOKafkaConsumerThread._fetch_records(thread, consumer, {EVENTS}, timeout=0)
        return drained, subscriptions.subscription.assignment.state_value(CHANGELOG).position

    drained, changelog_position = asyncio.run(run())
    assert {tp: [r.offset for r in records] for tp, records in drained.items()} == {EVENTS: [0, 1]}
    assert changelog_position == 0


def test_the_view_follows_the_set_and_is_never_empty():
    partitions = {EVENTS}
    view = LiveActivePartitions(partitions)
    assert view and EVENTS in view and CHANGELOG not in view
    partitions.clear()
    assert view and EVENTS not in view and list(view) == []
    partitions.add(CHANGELOG)
    assert CHANGELOG in view and list(view) == [CHANGELOG]


def test_patching_twice_wraps_faust_once():
    use_live_active_partitions()
    first = AIOKafkaConsumerThread._fetch_records
    use_live_active_partitions()
    assert AIOKafkaConsumerThread._fetch_records.__wrapped__ is first.__wrapped__


def test_a_jump_in_offsets_is_logged_and_counted_and_still_filled_as_faust_does(caplog):
    use_logged_offset_gaps()
    counted = []
    consumer = SimpleNamespace(app=SimpleNamespace(on_offset_gap=lambda: counted.append(1)),
                               _committed_offset=defaultdict(lambda: None), _gap=defaultdict(IntervalTree))
    with caplog.at_level(logging.ERROR, logger="streams.app"):
        asyncio.run(Consumer._add_gap(consumer, EVENTS, 515, 539))  # read 539 right after 514
    assert counted == [1]
    (record,) = [r for r in caplog.records if "offsets jumped" in r.getMessage()]
    assert "leadpulse-events:0 (read 539 after 514)" in record.getMessage()
    # Still counted as processed, as faust does, so deleted records cannot hold commits forever.
    assert [(i.begin, i.end) for i in consumer._gap[EVENTS]] == [(515, 540)]
