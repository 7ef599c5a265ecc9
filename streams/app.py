"""The faust application: topics, the ``contacts`` table and the ``score`` agent.

The agent takes batches of records (:func:`streams.batching.take_ready`: whatever is
buffered, as soon as it is free) with concurrency 1 per partition set and hands them to
:class:`streams.processor.BatchProcessor`. The agent only computes and hands records
to the producer; the waits (broker acks, the read side, the changelog) are done by one
writer task beside it, so the next batch is scored while the last one's output is in
flight. The writer works in rounds: each round takes everything queued so far, awaits
its broker acks, writes the read side in one call (``publish`` hook: the trigger
stream, idempotent by trigger id, and contact views; a contact's newest view wins),
then the changelog records, awaiting the acks. Rounds run one after another, so the
read side and the changelog see writes in the order they were made; under load a
round carries many batches, so round trips do not add up per batch (measured at 10k
events/s: one link per batch and per checkpoint, each with its own round trips, kept
a chain of them ~100 % busy and the worker fell behind).

1. a batch: its triggers go to ``leadpulse-triggers`` and bad events to ``leadpulse-dlq``
   at once, and the views of the contacts those triggers name are queued for the read
   side. Touched contacts stay dirty in the processor's write-back cache.
2. a checkpoint: dirty contacts are encoded once each and put in the in-memory table at
   once (so a record the cache drops is read back current); their views, states and
   changelog records are queued.

After every batch and timer tick a rolling checkpoint takes the contacts that have been
dirty for ``checkpoint_interval_ms`` or longer: each contact is written at most once
per interval, and the encoding is spread over the batches instead of pausing scoring
for all of it at once (measured at 10k events/s: ~200 ms once a second). With
``MAX_PENDING_WRITES`` batches and checkpoints queued, scoring waits for the writer.

A batch's events are acked to faust only when every contact the batch dirtied has been
written (the writer acks them after the round that wrote the last of them), and faust
commits only acked offsets, so a committed offset never runs ahead of the changelog and
the commit timer never waits for a checkpoint (measured at 10k events/s: a full
checkpoint and drain before each commit paused scoring ~300 ms every 2.8 s; p99
event -> trigger 663 ms with it, 315 ms without). Offsets are committed about one
checkpoint interval after their batch. Before a revoke (faust waits for every event to
be acked: a hook there), before a table rebuild and on shutdown, a full checkpoint runs
and the writer is drained, which acks everything handled. A failed write (a lost
broker; the read side is retried) stops the worker without committing. A crash
before a checkpoint replays the uncommitted records onto what the changelog holds,
which recomputes the same triggers with the same deterministic ids (the sinks drop the
repeats); records already in the changelog find their positions applied and apply
nothing twice.

The I/O around Redis and the sinks is injected (``publish``), so streams/ stays free
of connectors and the agent can run under faust's test context.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import faust
import orjson
from faust.sensors.monitor import Monitor

from streams.batching import take_ready
from streams.bots import DEFAULT_BOT_AGENTS, BotRules
from streams.processor import TIMERS_KEY, BatchOutcome, BatchProcessor, StreamLimits

log = logging.getLogger(__name__)

# Batches and checkpoints queued for the writer before scoring waits for it to catch up.
MAX_PENDING_WRITES = 64


@dataclass
class _PendingWrite:
    """Output the agent queued for the writer: the outcome, broker acks to await, then a callback.

    ``then_ack``: events of earlier batches whose state this write (with those before it)
    makes durable; the writer acks them to faust once the round is written.
    """

    out: BatchOutcome
    acks: list[Any]
    written: Callable[[], None] | None = None
    then_ack: list[Any] = field(default_factory=list)

Publish = Callable[[BatchOutcome], Awaitable[None]]
Deliver = Callable[[list[dict[str, Any]]], Awaitable[None]]


class QuietMonitor(Monitor):
    """faust's Monitor keeps per-event statistics we do not read; skip that work."""

    def on_message_in(self, tp: Any, offset: int, message: Any) -> None:  # noqa: D102
        return None

    def on_stream_event_in(self, tp: Any, offset: int, stream: Any, event: Any) -> None:  # noqa: D102
        return None

    def on_stream_event_out(self, tp: Any, offset: int, stream: Any, event: Any, state: Any = None) -> None:  # noqa: D102
        return None

    def on_message_out(self, tp: Any, offset: int, message: Any) -> None:  # noqa: D102
        return None


def use_fetch_max_wait(max_wait_ms: int) -> None:
    """Make faust's consumer long-poll for at most ``max_wait_ms`` instead of its fixed 1500 ms.

    Kafka answers a fetch as soon as data arrives, but Tansu holds it for most of the
    wait (measured here: 1500 ms -> ~450 ms per event, 100 ms -> 2-4 ms), and faust
    hard-codes 1500 ms in its aiokafka driver. The wrapper sets the value on each
    consumer it creates, before the consumer starts its fetcher.
    """
    from faust.transport.drivers import aiokafka as driver

    thread_cls = driver.AIOKafkaConsumerThread
    original = getattr(thread_cls._create_worker_consumer, "__wrapped__", thread_cls._create_worker_consumer)

    def create_worker_consumer(self: Any, transport: Any) -> Any:
        consumer = original(self, transport)
        consumer._fetch_max_wait_ms = max_wait_ms  # noqa: SLF001 - no public setting in faust
        return consumer

    create_worker_consumer.__wrapped__ = original  # type: ignore[attr-defined]
    thread_cls._create_worker_consumer = create_worker_consumer


class LiveActivePartitions:
    """faust's set of active partitions as aiokafka's fetcher sees it: live, and never "empty".

    aiokafka's ``Fetcher.fetched_records(partitions, timeout)`` drains the buffered
    records of every partition in ``partitions`` and moves their positions, but it reads
    an empty collection as "no filter" (``if partitions and tp not in partitions``).
    faust 0.15.3 hands it its own live set of active partitions, checked non-empty only
    before the call; while the fetch waits (up to a second), recovery pauses the
    changelog partitions and that set becomes empty. The wait then wakes on records of
    the still-paused stream partitions (the seek to the committed offsets starts their
    fetch), drains them and moves their positions past them; faust skips them as paused,
    and its gap filling then counts them as processed. Seen here: a restarted worker
    skipped the first ~25-450 records of each events partition after the previous
    worker's commit and committed past them. Through this view the filter stays
    "only what faust wants now", however the set changes during the wait.
    """

    __slots__ = ("_partitions",)

    def __init__(self, partitions: set[Any]) -> None:
        self._partitions = partitions

    def __bool__(self) -> bool:
        return True

    def __contains__(self, tp: object) -> bool:
        return tp in self._partitions

    def __iter__(self) -> Any:
        return iter(list(self._partitions))


def use_live_active_partitions() -> None:
    """Give aiokafka's fetcher a :class:`LiveActivePartitions` view instead of faust's set."""
    from faust.transport.drivers import aiokafka as driver

    thread_cls = driver.AIOKafkaConsumerThread
    original = getattr(thread_cls._fetch_records, "__wrapped__", thread_cls._fetch_records)

    async def fetch_records(self: Any, consumer: Any, active_partitions: Any, timeout: float | None = None,
                            max_records: int | None = None) -> Any:
        if active_partitions is not None:  # None: a client-only app, every partition
            active_partitions = LiveActivePartitions(active_partitions)
        return await original(self, consumer, active_partitions, timeout=timeout, max_records=max_records)

    fetch_records.__wrapped__ = original  # type: ignore[attr-defined]
    thread_cls._fetch_records = fetch_records


def use_logged_offset_gaps() -> None:
    """Make every jump faust finds in the offsets it reads visible: an error line and ``app.on_offset_gap``.

    faust counts the offsets skipped by a jump as processed, so that compacted topics
    and transaction markers do not hold commits back. leadpulse's topics are neither,
    so on them a jump means records this worker never processed (the fetcher race above
    was one). They are still counted as faust does, so that records a retention policy
    deleted cannot stop commits forever, but never silently: the worker counts them in
    ``leadpulse_consumer_offset_gaps_total`` (alert LeadpulseOffsetGap).
    """
    from faust.transport.consumer import Consumer

    original = getattr(Consumer._add_gap, "__wrapped__", Consumer._add_gap)

    async def add_gap(self: Any, tp: Any, offset_from: int, offset_to: int) -> None:
        hook = getattr(self.app, "on_offset_gap", None)
        if hook is not None:
            hook()
        log.error("offsets jumped on %s:%d (read %d after %d): faust counts the records between as processed, "
                  "but they were never delivered to this worker", tp.topic, tp.partition, offset_to, offset_from - 1)
        await original(self, tp, offset_from, offset_to)

    add_gap.__wrapped__ = original  # type: ignore[attr-defined]
    Consumer._add_gap = add_gap


async def _seek_uncommitted_to_earliest(consumer: Any, partitions: set[Any]) -> None:
    """Put partitions the group never committed back at their first offset.

    aiokafka's ``seek_to_committed`` leaves a partition without a committed offset where
    the fetcher happens to be, and during recovery the fetcher may already have read past
    records that the queue clear then drops (seen on a fresh triggers partition: a restarted
    worker began at its end and never delivered what the first worker had produced). With
    no commit the right place is what ``auto_offset_reset="earliest"`` means: the start.
    """
    committed = consumer._committed_offset  # noqa: SLF001 - faust keeps no public view
    uncommitted = [tp for tp in partitions if not committed.get(tp)]
    if not uncommitted:
        return
    earliest = await consumer.earliest_offsets(*uncommitted)
    for tp in uncommitted:
        await consumer.seek(tp, earliest.get(tp) or 0)


def use_flush_in_wait_empty(limit_s: float = 30.0) -> None:
    """Run ``app.before_wait_empty`` (if an app sets it) while faust waits for unacked events.

    faust's ``Consumer.wait_empty`` (before a revoke and at shutdown, after the flow has
    stopped) commits and waits until every event handed to an agent is acked. The score
    agent acks an event only once the state it changed is durable (a rolling checkpoint
    wrote it), so here the hook writes everything at once and acks it; a batch the agent
    had in hand is acked by the next call. After ``limit_s`` faust's own wait takes over.
    """
    from faust.transport.consumer import Consumer

    original = getattr(Consumer.wait_empty, "__wrapped__", Consumer.wait_empty)

    async def wait_empty(self: Any) -> None:
        hook = getattr(self.app, "before_wait_empty", None)
        if hook is not None:
            deadline = time.monotonic() + limit_s
            while not self.should_stop and self._unacked_messages and time.monotonic() < deadline:
                await hook()
                self._clean_unacked_messages()  # noqa: SLF001 - faust's own bookkeeping
                if self._unacked_messages:
                    await asyncio.sleep(0.05)
        await original(self)

    wait_empty.__wrapped__ = original  # type: ignore[attr-defined]
    Consumer.wait_empty = wait_empty


def use_seek_before_resume() -> None:
    """Resume the stream partitions only after the seek to committed offsets and the queue clear.

    After every assignment faust's ``Recovery.on_recovery_completed`` (0.15.3, same on
    upstream master; faust-streaming issue #596) resumes the stream partitions, awaits the
    seek to the committed offsets, then calls ``flow_control.resume()``, which empties every
    agent's queue. The consumer flow is already running (recovery resumed it to read the
    changelog), so in the ~100 ms seek the fetcher hands the agent records that are then
    cleared, while the fetch position and faust's read offset have already moved past them;
    a record fetched from the old position just before the seek can also make faust drop the
    re-fetched copies ("offset < read offset"). Those records are never processed by this
    process and, as faust commits only contiguous acked offsets, the commit stays stuck
    below the first one. Here the stream partitions stay paused until the seek and the
    clear are done, so what they deliver afterwards starts at the committed offsets, and a
    partition the group never committed goes back to its first offset (the seek leaves it
    wherever the fetcher was, possibly past records the clear dropped).
    """
    from faust.tables.recovery import Recovery

    if getattr(Recovery.on_recovery_completed, "_seek_before_resume", False):
        return

    async def on_recovery_completed(self: Any, generation_id: int = 0) -> None:
        consumer = self.app.consumer
        self.log.info("Restore complete!")
        await self.app.on_rebalance_complete.send()
        self._set_recovery_ended()
        callback_coros = [
            asyncio.ensure_future(table.on_recovery_completed(self.actives_for_table[table], self.standbys_for_table[table]))
            for table in self.tables.values()
        ]
        if callback_coros:
            await asyncio.wait(callback_coros)
        assignment = consumer.assignment()
        if self.app.consumer_generation_id != generation_id:
            self.log.warning(f"Recovery rebalancing again app id {self.app.consumer_generation_id} param {generation_id}")
            return
        streams = {tp for tp in assignment if not self._is_changelog_tp(tp)}
        # A partition faust marked "buffer full" is fetched even while paused: not during the seek.
        consumer._buffered_partitions.difference_update(streams)  # noqa: SLF001
        if assignment:
            self.log.info("Seek stream partitions to committed offsets.")
            await self._wait(consumer.perform_seek(), timeout=self.app.conf.broker_request_timeout)
            await self._wait(_seek_uncommitted_to_earliest(consumer, streams), timeout=self.app.conf.broker_request_timeout)
        self.completed.set()
        self.app.flow_control.resume()  # empties the agents' queues
        consumer.resume_partitions(streams)
        consumer.resume_flow()
        await self.app._fetcher.maybe_start()  # noqa: SLF001
        self.tables.on_actives_ready()
        if not self.app.assignor.assigned_standbys():
            self.tables.on_standbys_ready()
        self.app.on_rebalance_end()
        self.log.info("Worker ready")

    on_recovery_completed._seek_before_resume = True  # type: ignore[attr-defined]
    Recovery.on_recovery_completed = on_recovery_completed  # type: ignore[method-assign]


@dataclass(frozen=True)
class StreamConfig:
    """What the stream layer needs from the settings (see ops.settings.Settings)."""

    app_id: str
    broker_url: str
    events_topic: str
    triggers_topic: str
    dlq_topic: str
    partitions: int
    batch_max: int
    batch_within_ms: int
    session_timeout_ms: int
    fetch_max_wait_ms: int
    data_dir: str
    instance_id: str
    limits: StreamLimits
    bots: BotRules
    checkpoint_interval_ms: int = 1_000
    standby_replicas: int = 0

    @classmethod
    def from_settings(cls, settings: Any, broker_url: str) -> "StreamConfig":
        return cls(
            app_id=settings.app_id,
            broker_url=broker_url,
            events_topic=settings.events_topic,
            triggers_topic=settings.triggers_topic,
            dlq_topic=settings.dlq_topic,
            partitions=settings.partitions,
            batch_max=settings.batch_max,
            batch_within_ms=settings.batch_within,
            session_timeout_ms=settings.session_timeout,
            fetch_max_wait_ms=settings.fetch_max_wait,
            data_dir=str(settings.data_dir),
            instance_id=settings.worker_instance_id,
            limits=StreamLimits(
                late_limit_ms=settings.late_limit,
                future_skew_ms=settings.future_skew,
                dedupe_window_ms=settings.dedupe_window,
                lateness_ms=settings.lateness,
            ),
            bots=BotRules(
                user_agents=settings.bot_user_agents or DEFAULT_BOT_AGENTS,
                scanner_window_ms=settings.scanner_click_window,
                scanner_burst=settings.scanner_burst,
            ),
            checkpoint_interval_ms=settings.checkpoint_interval,
            standby_replicas=settings.standby_replicas,
        )


class ScoreApp:
    """Builds and owns the faust app; ``publish`` receives every batch outcome."""

    def __init__(
        self,
        config: StreamConfig,
        model: Any,
        publish: Publish,
        metrics: Any = None,
        deliveries: dict[str, Deliver] | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.publish = publish
        use_fetch_max_wait(config.fetch_max_wait_ms)
        use_seek_before_resume()
        use_flush_in_wait_empty()
        use_live_active_partitions()
        use_logged_offset_gaps()
        brokers = [f"kafka://{host.strip()}" for host in config.broker_url.split(",") if host.strip()]
        self.app = faust.App(
            config.app_id,
            broker=brokers,
            store="memory://",
            web_enabled=False,
            datadir=config.data_dir,
            topic_partitions=config.partitions,
            topic_replication_factor=1,
            broker_session_timeout=config.session_timeout_ms / 1000,
            broker_heartbeat_interval=min(1.0, config.session_timeout_ms / 3000),
            broker_rebalance_timeout=max(10.0, config.session_timeout_ms / 1000 * 2),
            consumer_auto_offset_reset="earliest",
            producer_acks=-1,
            producer_linger=0.002,
            # Changelog records go out as record batches (ScoreApp._write_changelog): room for
            # a few hundred ~1 KB records per batch instead of aiokafka's 16 KB.
            producer_max_batch_size=262_144,
            stream_buffer_maxsize=16_384,
            Monitor=QuietMonitor,
            # Static membership: a restarted worker reclaims its partitions at once instead
            # of waiting out the dead member's session (Tansu stalls ~30 s otherwise).
            consumer_group_instance_id=config.instance_id or None,
            # Kafka Streams' default, not faust's (1): a standby copy makes every worker also read
            # and apply the other workers' changelogs. Workers sharing a machine's cores pay for
            # it in throughput (the bench's 2-worker step: ~86-97k -> ~105-117k events/s without);
            # without it a worker that takes over a partition restores it from the changelog first.
            table_standby_replicas=config.standby_replicas,
        )
        raw = {"key_serializer": "raw", "value_serializer": "raw"}
        self.events_topic = self.app.topic(config.events_topic, partitions=config.partitions, **raw)
        self.triggers_topic = self.app.topic(config.triggers_topic, partitions=config.partitions, **raw)
        self.dlq_topic = self.app.topic(config.dlq_topic, partitions=config.partitions, **raw)
        self.contacts = self.app.Table("contacts", partitions=config.partitions, key_type=bytes, value_type=bytes)
        self._changelog_topic = self.contacts.changelog_topic.get_topic_name()
        self.processor = BatchProcessor(model, self._load, config.limits, config.bots)
        self.batches = 0
        # The agent, the timer tick and checkpoints all read and write contact records: one at a time.
        self._lock = asyncio.Lock()
        # Output waiting for the writer task, the task, and what stopped it (see the module docstring).
        self._pending_writes: list[_PendingWrite] = []
        self._writer: asyncio.Future | None = None
        self._write_error: BaseException | None = None
        self._last_rolling = time.monotonic()
        self.app.before_wait_empty = self.checkpoint  # type: ignore[attr-defined] - read by use_flush_in_wait_empty
        self.app.on_offset_gap = self._count_offset_gap  # type: ignore[attr-defined] - read by use_logged_offset_gaps
        # Batches handled but not acked yet: (when they were scored, their events), oldest first.
        # An event is acked once every contact it dirtied is written (see _enqueue_write).
        self._unacked: deque[tuple[int, list[Any]]] = deque()
        self._ack: Callable[[Any], Awaitable[Any]] | None = None
        self._last_now_ms = 0
        self._rebuilt: set[int] = set()
        self.app.agent(self.events_topic, name="score", concurrency=1)(self._score)
        self.app.timer(interval=1.0, name="release_held_triggers")(self._tick)
        self.app.on_partitions_revoked.connect(self._on_revoked)
        # One agent per outbound sink on the trigger topic: each acks its batch only after its
        # sink delivered or dead-lettered it, and faust commits an offset only when every agent
        # acked it. A crash re-delivers (the sinks' ledger drops ids already sent), and a slow
        # sink holds back only its own agent, never scoring or the other sinks.
        self.deliveries = dict(deliveries or {})
        for sink_name, deliver_one in self.deliveries.items():
            self.app.agent(self.triggers_topic, name=f"deliver_{sink_name}", concurrency=1)(self._deliver_with(deliver_one))

    def _count_offset_gap(self) -> None:
        if self.metrics is not None:
            self.metrics.offset_gaps.inc()

    def set_model(self, model: Any) -> None:
        self.processor.model = model

    def _load(self, key: str) -> bytes | None:
        return self.contacts.data.get(key.encode("utf-8"))

    async def _score(self, stream: Any) -> None:
        # The agent acks events itself, once their state is durable (see _enqueue_write).
        batches = take_ready(stream, self.config.batch_max, linger=self.config.batch_within_ms / 1000, ack=False)
        self._ack = stream.ack
        active = getattr(stream, "_active_agens", None)
        if active is not None:  # faust closes the buffering generators of a stopping stream
            active.add(batches)
        async for batch in batches:
            try:
                await self.handle([(e.message.partition, e.message.offset, e.value) for e in batch], batch)
            except Exception as exc:  # noqa: BLE001
                # A batch that failed half-way may have changed contacts in memory, and
                # acking what came after it would let faust commit past it. Bad input
                # never gets here (it goes to the DLQ); this is a bug or a lost broker, so
                # stop at once without committing: a restart replays the batch.
                self.stop_without_commit("score agent failed on a batch", exc)

    def stop_without_commit(self, what: str, exc: BaseException) -> None:
        """Exit the process at once: nothing after the last commit counts, a restart replays it."""
        log.critical("%s; exiting without commit so it is replayed", what, exc_info=exc)
        logging.shutdown()
        os._exit(70)

    def _enqueue_write(self, item: "_PendingWrite") -> None:
        """Queue output for the writer task (started if idle); the agent does not wait for it.

        The write also carries the events of every handled batch whose dirtied contacts
        have all been handed to a checkpoint by now: rounds run in order, so when this
        one is written, so are those contacts and the batches' own triggers, and the
        events can be acked. faust commits only acked offsets, so a committed offset never
        runs ahead of the changelog, and no commit has to wait for a full checkpoint.
        """
        item.then_ack += self._take_clean_batches()
        self._pending_writes.append(item)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.ensure_future(self._write_loop())

    async def _write_loop(self) -> None:
        """Write everything queued, in rounds, until nothing is left (see the module docstring)."""
        try:
            while self._pending_writes:
                items, self._pending_writes = self._pending_writes, []
                await self._write_round(items)
        except Exception as exc:  # noqa: BLE001 - a lost broker: nothing after the last commit may count
            self._write_error = exc
            self.stop_without_commit("writing batches' and checkpoints' output failed", exc)

    async def _write_round(self, items: list["_PendingWrite"]) -> None:
        """One round: the broker acks, then one read-side call, then the changelog records.

        Later items overwrite earlier ones for the same contact (views and records are
        whole snapshots), so the round writes each contact's newest state once.
        """
        for item in items:
            for ack in item.acks:
                await ack
        merged = BatchOutcome()
        writes: dict[int, dict[str, bytes]] = {}
        for item in items:
            out = item.out
            merged.triggers += out.triggers
            merged.views.update(out.views)
            merged.docs.update(out.docs)
            for partition, records in out.writes.items():
                writes.setdefault(partition, {}).update(records)
        if merged.triggers or merged.views:
            await self._publish_with_retry(merged)
        if writes:
            await self._write_changelog(writes)
        for item in items:
            if item.written is not None:
                item.written()
        ack = self._ack
        if ack is not None:
            for item in items:
                for event in item.then_ack:
                    await ack(event)

    def _take_clean_batches(self) -> list[Any]:
        """Events of the handled batches (oldest first) none of whose dirtied contacts is still dirty."""
        unacked = self._unacked
        events: list[Any] = []
        if unacked:
            oldest = self.processor.oldest_dirty()
            while unacked and (oldest is None or unacked[0][0] < oldest):
                events += unacked.popleft()[1]
        return events

    def _release_clean(self) -> None:
        """Queue an empty write for handled batches that are clean already (so no checkpoint will carry them)."""
        events = self._take_clean_batches()
        if events:
            self._enqueue_write(_PendingWrite(BatchOutcome(), [], then_ack=events))

    async def _flush_all(self) -> None:
        """Write every dirty contact, wait for every write, and so ack every handled event. Caller holds the lock."""
        await self._checkpoint()
        self._release_clean()
        await self.drain()

    def _now_ms(self) -> int:
        """Wall clock in ms, never going back: dirty stamps must follow the order contacts became dirty."""
        now = max(int(time.time() * 1000), self._last_now_ms)
        self._last_now_ms = now
        return now

    async def drain(self) -> None:
        """Wait until everything queued so far is written and acknowledged."""
        while self._writer is not None and not self._writer.done():
            await asyncio.shield(self._writer)
        if self._write_error is not None:
            raise self._write_error

    @staticmethod
    def _deliver_with(deliver: Deliver) -> Callable[[Any], Awaitable[None]]:
        async def agent(stream: Any) -> None:
            async for batch in stream.take_events(500, within=0.05):
                await deliver([orjson.loads(e.value) for e in batch])

        return agent

    async def _on_revoked(self, app: Any, revoked: Any = None, **kwargs: Any) -> None:
        # faust commits (the hook checkpoints first) before a revoke; checkpoint again in case
        # a tick dirtied something since, so a partition that comes back, here or elsewhere,
        # is rebuilt from a changelog that holds our latest writes.
        async with self._lock:
            await self._flush_all()
            self.processor.forget_partitions()
            self._rebuilt.clear()

    async def checkpoint(self) -> None:
        """Write every dirty contact (read side, then changelog), wait for every write, ack every handled event."""
        async with self._lock:
            await self._flush_all()

    async def _maybe_checkpoint(self) -> None:
        """The rolling checkpoint after a batch or tick: contacts dirty for a whole interval.

        It runs at most every tenth of the interval, so small batches do not each pay
        for a pass over the dirty contacts and a queued write.
        """
        interval_ms = self.config.checkpoint_interval_ms
        now = time.monotonic()
        if interval_ms and now - self._last_rolling < interval_ms / 10_000:
            return
        self._last_rolling = now
        await self._checkpoint(dirty_since=self._now_ms() - interval_ms)

    async def _checkpoint(self, dirty_since: int | None = None) -> None:
        """Encode dirty contacts (all, or those dirty since ``dirty_since``) and chain their writes.

        Caller holds the lock.
        """
        if len(self._pending_writes) >= MAX_PENDING_WRITES:
            # The read side or the broker fell behind: scoring waits here instead of piling
            # up unwritten state.
            await self.drain()
        if not self.processor.dirty and not self.processor.dirty_timers:
            return
        started = time.perf_counter()
        out = self.processor.checkpoint(self._now_ms(), dirty_since)
        if not out.writes:
            return
        # Contact records only, not the partitions' timer lists.
        contacts = sum(len(records) - (TIMERS_KEY.format(partition) in records) for partition, records in out.writes.items())
        for partition, records in out.writes.items():
            for key, value in records.items():
                self._store_put(key.encode("utf-8"), value, partition)

        def written() -> None:
            if self.metrics is not None:
                self.metrics.checkpoint_duration.observe(time.perf_counter() - started)
                self.metrics.state_writes.inc(contacts)
                self.metrics.contacts.set(len(self.contacts.data))

        self._enqueue_write(_PendingWrite(out, [], written))

    def assigned_partitions(self) -> set[int]:
        return {tp.partition for tp in self.app.consumer.assignment() if tp.topic == self.config.events_topic}

    async def _tick(self) -> None:
        if self.app.rebalancing:
            return
        async with self._lock:
            partitions = self.assigned_partitions()
            if partitions - self._rebuilt:
                await self._flush_all()
                await self._rebuild_table(partitions - self._rebuilt)
            out = self.processor.tick(partitions, self._now_ms())
            if out.triggers or out.views:
                await self._commit_outcome(out, time.perf_counter())
            await self._maybe_checkpoint()
            self._release_clean()

    async def _rebuild_table(self, partitions: set[int]) -> None:
        """Rebuild the table for ``partitions`` from their changelog, to its real end.

        faust recovers a table up to the highwater that ``end_offsets`` reports, and Tansu
        under-reports it (by about the last batch), which leaves some contacts older than
        the committed offsets: their last events would never be applied again. So after
        every (re)assignment, before this process writes to a partition, the worker
        replays that changelog partition from the beginning up to the highwater that fetch
        responses report (exact). faust's memory store reads the whole changelog on
        recovery anyway, so this costs no more than recovery did; on Kafka it repeats it.
        """
        from aiokafka import AIOKafkaConsumer, TopicPartition

        changelog = self._changelog_topic
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.config.broker_url.split(","), enable_auto_commit=False,
            max_partition_fetch_bytes=8 * 1024 * 1024, fetch_max_wait_ms=100,
        )
        await consumer.start()
        applied = 0
        try:
            tps = {p: TopicPartition(changelog, p) for p in partitions}
            consumer.assign(list(tps.values()))
            await consumer.seek_to_beginning(*tps.values())
            store = self.contacts.data
            # Done when every partition's position reached the highwater its fetch responses
            # report and two polls in a row brought nothing more: neither a silent partition
            # nor a highwater alone is trusted to mean "the end".
            deadline = time.monotonic() + 60
            empty_polls = 0
            while True:
                batches = await consumer.getmany(timeout_ms=300)
                empty_polls = 0 if batches else empty_polls + 1
                for tp, batch in batches.items():
                    for message in batch:
                        if message.value is None:
                            try:
                                del store[message.key]
                            except KeyError:
                                pass
                        else:
                            self._store_put(message.key, message.value, tp.partition)
                        applied += 1
                caught_up = True
                for tp in tps.values():
                    highwater = consumer.highwater(tp)
                    if highwater is None or await consumer.position(tp) < highwater:
                        caught_up = False
                if caught_up and empty_polls >= 2:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"table changelog {changelog} did not catch up within 60 s")
        finally:
            await consumer.stop()
        self._rebuilt |= partitions
        self.processor.cache.clear()  # the table changed under any record held in memory
        log.info("table rebuilt from %d changelog records on partitions %s", applied, sorted(partitions))

    async def handle(self, records: list[tuple[int, int, bytes]], events: list[Any] | None = None) -> BatchOutcome:
        """Score one batch; ``events`` (the faust events behind ``records``) are acked once their state is durable."""
        async with self._lock:
            fresh = {partition for partition, _offset, _value in records} - self._rebuilt
            if fresh:
                await self._flush_all()  # the rebuild drops every record held in memory
                await self._rebuild_table(fresh)
            started = time.perf_counter()
            now_ms = self._now_ms()
            out = self.processor.process(records, now_ms)
            await self._commit_outcome(out, started)
            await self._maybe_checkpoint()
            if events:
                self._unacked.append((now_ms, events))
                self._release_clean()
            self.batches += 1
            return out

    async def _commit_outcome(self, out: BatchOutcome, started: float) -> None:
        """Hand the batch's records to the producer now; the writer waits for their acks and writes the read side."""
        acks = []
        for trigger in out.triggers:
            acks.append(await self.triggers_topic.send(key=trigger["contact_id"].encode(), value=orjson.dumps(trigger)))
        for dead in out.dead_letters:
            acks.append(await self.dlq_topic.send(value=orjson.dumps({**dead, "stage": "worker"})))
        for key, value in out.forward:
            acks.append(await self.events_topic.send(key=key.encode("utf-8"), value=value))

        def written() -> None:
            if self.metrics is not None:
                self._observe(out, time.perf_counter() - started)

        self._enqueue_write(_PendingWrite(out, acks, written))

    async def _write_changelog(self, writes: dict[int, dict[str, bytes]]) -> None:
        """Write a checkpoint's records to the table's changelog, and wait for the acks.

        The records go straight to the producer rather than through ``Table.send_changelog``:
        that path queues each record in faust's producer buffer, drained one message at a
        time by a background task, and faust's conductor stops handing records to every
        agent while more than 100 wait there. With hundreds of contacts per batch the score
        agent was then fed a few records at a time (measured on the 1M-event bench: batches
        of 2-3 envelope records and an empty agent queue, ~10k events/s, while the same
        processing keeps up with 40k+ events/s). Waiting for the acks here keeps "the
        checkpoint is done" meaning "its state is durable", which acking the batches it covers relies on.
        """
        producer = self.app.producer._ensure_producer()  # noqa: SLF001 - aiokafka's batch API
        topic = self._changelog_topic
        acks = []
        for partition, records in writes.items():
            # Record batches built here cost a few microseconds per record; a send() per
            # record (a future and an accumulator step each) cost ~25 us in the live profile.
            batch = producer.create_batch()
            for key, value in records.items():
                raw_key = key.encode("utf-8")
                if batch.append(key=raw_key, value=value, timestamp=None) is None:  # full
                    batch.close()
                    acks.append(await producer.send_batch(batch, topic, partition=partition))
                    batch = producer.create_batch()
                    batch.append(key=raw_key, value=value, timestamp=None)
            batch.close()
            acks.append(await producer.send_batch(batch, topic, partition=partition))
        for ack in acks:
            await ack

    def _store_put(self, raw_key: bytes, value: bytes, partition: int) -> None:
        """Write the in-memory table, and tell faust's memory store which partition owns the key
        (it drops keys of partitions it thinks are gone after a recovery)."""
        store = self.contacts.data
        store[raw_key] = value
        key_partition = getattr(store, "_key_partition", None)
        if key_partition is not None:
            key_partition[raw_key] = partition

    async def _publish_with_retry(self, out: BatchOutcome) -> None:
        """The read side (Redis) may blip; hold the batch and retry rather than lose or skip it."""
        delay = 0.1
        while True:
            try:
                await self.publish(out)
                return
            except Exception as exc:  # noqa: BLE001 - any read-side failure is retried
                log.error("publishing batch to the read side failed (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _observe(self, out: BatchOutcome, seconds: float) -> None:
        m = self.metrics
        if out.events:
            m.batch_duration.observe(seconds)
            m.batch_size.observe(out.events)
        m.events_scored.inc(out.applied)
        for source, count in out.duplicates.items():
            m.events_duplicate.labels(source=source).inc(count)
        for kind, count in out.bots.items():
            m.events_bot.labels(kind=kind).inc(count)
        if out.late:
            m.events_late.inc(out.late)
        for dead in out.dead_letters:
            m.dlq.labels(reason=dead["code"]).inc()
        for trigger in out.triggers:
            m.triggers.labels(type=trigger["type"]).inc()
        for latency_ms in out.trigger_latencies_ms:
            m.event_to_trigger.observe(latency_ms / 1000)
