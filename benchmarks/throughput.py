"""Pre-produce the workload and measure consumers of it: the ceiling (raw aiokafka + orjson).

Pre-producing goes through :class:`connectors.intake.KafkaIntake` (the collector's own
producer: envelopes per partition, acks=all, same linger and envelope size settings),
with several ``submit`` calls in flight as concurrent HTTP requests would have.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from benchmarks.common import Progress
from connectors.intake import KafkaIntake
from streams.topics import ensure_topics


async def preproduce(broker: str, topics: dict[str, str], partitions: int, events: list[dict[str, Any]],
                     progress: Progress, *, linger_ms: int = 5, max_envelope_events: int = 500,
                     chunk: int = 100, inflight: int = 256, rate: float | None = None) -> dict[str, Any]:
    """Submit ``events`` in calls of ``chunk`` (like /v1/batch calls), paced at ``rate`` events/s when given.

    Pacing matters: the collector packs what arrives within its linger time, so the
    offered rate decides how many events share an envelope record (at 50k events/s,
    5 ms linger and 4 partitions ~60; unpaced, up to the 500 cap).
    """
    await ensure_topics(broker, list(topics.values()), partitions)
    intake = KafkaIntake(broker, topics["events"], topics["dlq"], partitions, linger_ms=linger_ms,
                         max_envelope_events=max_envelope_events, max_pending=10**9)
    await intake.start()
    started = time.perf_counter()
    sent = 0
    sem = asyncio.Semaphore(inflight)
    try:
        async def one(part: list[dict[str, Any]]) -> None:
            nonlocal sent
            try:
                await intake.submit(part)
            finally:
                sem.release()
            sent += len(part)
            progress.step("produce", f"{sent:,}/{len(events):,} events ({sent / len(events):.0%}) "
                                     f"{sent / (time.perf_counter() - started):,.0f} events/s")

        tasks = []
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        for start in range(0, len(events), chunk):
            if rate:
                delay = t0 + start / rate - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            await sem.acquire()
            tasks.append(asyncio.create_task(one(events[start:start + chunk])))
        await asyncio.gather(*tasks)
    finally:
        await intake.stop()
    seconds = time.perf_counter() - started
    progress.done("produce", f"{len(events):,} events in {seconds:.1f} s ({len(events) / seconds:,.0f} events/s)")
    return {"events": len(events), "seconds": round(seconds, 2), "events_per_s": round(len(events) / seconds),
            "paced_at": rate, "linger_ms": linger_ms, "max_envelope_events": max_envelope_events}


async def ceiling(broker: str, topic: str, expected: int, progress: Progress, idle_s: float = 10.0) -> dict[str, Any]:
    """Raw aiokafka consume + orjson decode of every record of ``topic``; counts what it consumed."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=broker, enable_auto_commit=False, auto_offset_reset="earliest", group_id=None,
        fetch_max_wait_ms=10, max_partition_fetch_bytes=8 * 1024 * 1024, fetch_max_bytes=64 * 1024 * 1024,
    )
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        if not parts:
            await consumer._client.force_metadata_update()  # noqa: SLF001
            parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        events = records = 0
        first = last = None
        last_progress = time.monotonic()
        while events < expected:
            asked = time.perf_counter()
            batch = await consumer.getmany(timeout_ms=200, max_records=10_000)
            if not batch:
                if time.monotonic() - last_progress > idle_s:
                    break
                continue
            last_progress = time.monotonic()
            if first is None:
                first = asked
            for msgs in batch.values():
                for msg in msgs:
                    decoded = orjson.loads(msg.value)
                    events += len(decoded) if isinstance(decoded, list) else 1
                    records += 1
            last = time.perf_counter()
            progress.step("ceiling", f"{events:,}/{expected:,} events")
    finally:
        await consumer.stop()
    seconds = (last - first) if first and last else 0.0
    eps = events / seconds if seconds else 0.0
    progress.done("ceiling", f"{events:,} events in {records:,} records, {seconds:.2f} s -> {eps:,.0f} events/s")
    return {"events": events, "records": records, "seconds": round(seconds, 3), "events_per_s": round(eps),
            "events_per_record": round(events / records, 1) if records else 0}
