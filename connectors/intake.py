"""The collector's producer: events in, broker acks out, packed into envelopes per partition.

faust pays a fixed cost per Kafka record, so the collector groups the events it
accepted in the last few milliseconds by target partition (Kafka's default
partitioner on the contact key, see ``streams.partitioning``) and writes one
envelope record (a JSON array) per partition. A contact always maps to one
partition, so per-contact order holds.

Durability contract: :meth:`KafkaIntake.submit` resolves only after the broker
acknowledged (acks=all) every envelope holding the caller's events. Memory is
bounded: above ``max_pending`` events in flight it raises :class:`Backpressure`
(HTTP 429) instead of buffering; a broker that does not answer within
``produce_timeout_ms`` gives :class:`BrokerUnavailable` (HTTP 503).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from connectors.segment import bounded
from connectors.types import Backpressure, BrokerUnavailable
from streams.events import contact_key, encode_envelope
from streams.partitioning import partition_for

log = logging.getLogger(__name__)


class _Envelope:
    __slots__ = ("events", "done", "key")

    def __init__(self, loop: asyncio.AbstractEventLoop, key: str) -> None:
        self.events: list[dict[str, Any]] = []
        self.done: asyncio.Future = loop.create_future()
        # A failure that arrives after every waiter gave up is still "retrieved" (no asyncio warning).
        self.done.add_done_callback(lambda f: f.cancelled() or f.exception())
        self.key = key


class KafkaIntake:
    def __init__(
        self,
        bootstrap: str,
        events_topic: str,
        dlq_topic: str,
        partitions: int,
        *,
        linger_ms: int = 20,
        max_envelope_events: int = 500,
        max_pending: int = 50_000,
        produce_timeout_ms: int = 10_000,
        metrics: Any = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.events_topic = events_topic
        self.dlq_topic = dlq_topic
        self.partitions = partitions
        self.linger = linger_ms / 1000
        self.max_envelope_events = max_envelope_events
        self.max_pending = max_pending
        self.produce_timeout = produce_timeout_ms / 1000
        self.metrics = metrics  # ops.metrics.Metrics: counts dlq{reason="collector"}
        self.pending = 0
        self.producer: AIOKafkaProducer | None = None
        self._open: dict[int, _Envelope] = {}
        self._flush_handle: asyncio.TimerHandle | None = None
        self._sends: set[asyncio.Task] = set()

    async def start(self) -> None:
        self.producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            acks="all",
            linger_ms=0,  # we already linger while packing envelopes
            max_request_size=8 * 1024 * 1024,
            request_timeout_ms=int(self.produce_timeout * 1000),
        )
        await self.producer.start()
        found = await self.producer.partitions_for(self.events_topic)
        if found and len(found) != self.partitions:
            log.warning(
                "topic %s has %d partitions, settings say %d: using the topic's count",
                self.events_topic, len(found), self.partitions,
            )
            self.partitions = len(found)

    async def stop(self) -> None:
        self._flush_all()
        if self._sends:
            await asyncio.wait(self._sends, timeout=self.produce_timeout)
        if self.producer is not None:
            await self.producer.stop()
            self.producer = None

    async def ping(self) -> bool:
        """True when the broker answers a metadata request now."""
        if self.producer is None:
            return False
        try:
            await asyncio.wait_for(self.producer.client.fetch_all_metadata(), timeout=2)
            return True
        except Exception:  # noqa: BLE001 - any failure means not ready
            return False

    async def submit(self, events: list[dict[str, Any]]) -> None:
        if not events:
            return
        if self.producer is None:
            raise BrokerUnavailable("collector is not connected to the broker")
        if self.pending + len(events) > self.max_pending:
            raise Backpressure(retry_after=1)
        loop = asyncio.get_running_loop()
        waits: dict[int, asyncio.Future] = {}
        for event in events:
            key = contact_key(event)
            partition = partition_for(key, self.partitions)
            envelope = self._open.get(partition)
            if envelope is None:
                envelope = self._open[partition] = _Envelope(loop, key)
            envelope.events.append(event)
            waits[id(envelope)] = envelope.done
            if len(envelope.events) >= self.max_envelope_events:
                self._seal(partition)
        self.pending += len(events)
        if self._open and self._flush_handle is None:
            self._flush_handle = loop.call_later(self.linger, self._flush_all)
        try:
            # asyncio.wait, not wait_for(gather(...)): an envelope's future is shared by every
            # request whose events it carries, and a timeout here must not cancel it for the others.
            done, not_done = await asyncio.wait(waits.values(), timeout=self.produce_timeout)
        finally:
            self.pending -= len(events)
        if not_done:
            raise BrokerUnavailable(f"broker did not acknowledge within {self.produce_timeout:g}s")
        for future in done:
            if future.cancelled():
                raise BrokerUnavailable("the send was cancelled (collector shutting down)")
            if future.exception() is not None:
                raise BrokerUnavailable(f"broker refused the events: {future.exception()}")

    def _flush_all(self) -> None:
        self._flush_handle = None
        for partition in list(self._open):
            self._seal(partition)

    def _seal(self, partition: int) -> None:
        envelope = self._open.pop(partition)
        task = asyncio.get_running_loop().create_task(self._send(partition, envelope))
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)

    async def _send(self, partition: int, envelope: _Envelope) -> None:
        assert self.producer is not None
        try:
            value = encode_envelope(envelope.events) if len(envelope.events) > 1 else orjson.dumps(envelope.events[0])
            ack = await self.producer.send(self.events_topic, value, key=envelope.key.encode(), partition=partition)
            await ack
        except Exception as exc:  # noqa: BLE001 - handed to every waiter of this envelope
            if not envelope.done.done():
                envelope.done.set_exception(exc)
            return
        if not envelope.done.done():
            envelope.done.set_result(None)

    async def dead_letter(self, payload: Any, reason: str, source: str) -> None:
        if self.producer is None:
            log.error("DLQ unavailable, dropping record from %s: %s", source, reason)
            return
        if isinstance(payload, (bytes, bytearray)):
            payload = bytes(payload).decode("utf-8", errors="replace")
        record = {"stage": "collector", "source": source, "reason": reason, "payload": payload}
        try:
            value = orjson.dumps(record)
        except TypeError:  # orjson.JSONEncodeError: nested deeper than orjson writes (~250 levels)
            value = orjson.dumps({**record, "payload": bounded(payload)})
        try:
            await asyncio.wait_for(self.producer.send_and_wait(self.dlq_topic, value), self.produce_timeout)
        except Exception as exc:  # noqa: BLE001 - the DLQ must never take the request down with it
            log.error("could not write DLQ record from %s (%s): %s", source, reason, exc)
            return
        if self.metrics is not None:
            self.metrics.dlq.labels(reason="collector").inc()

