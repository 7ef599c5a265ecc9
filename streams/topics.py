"""Topic names and creation: events, triggers and DLQ, with the configured partition count.

Both the collector and the workers call :func:`ensure_topics` at start, so whichever
comes up first creates them and nobody produces to a topic that does not exist.
"""

from __future__ import annotations

import asyncio
import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

log = logging.getLogger(__name__)


async def ensure_topics(bootstrap: str, names: list[str], partitions: int, timeout_s: float = 20.0) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [name for name in names if name not in existing]
        if not missing:
            return
        try:
            await admin.create_topics([NewTopic(name, partitions, 1) for name in missing])
        except TopicAlreadyExistsError:
            pass  # another process won the race
        # Metadata propagation is asynchronous on some brokers: wait until they are listed.
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            listed = set(await admin.list_topics())
            if all(name in listed for name in names):
                return
            if asyncio.get_running_loop().time() > deadline:
                raise KafkaError(f"topics {missing} were not created within {timeout_s}s")
            await asyncio.sleep(0.1)
    finally:
        await admin.close()


async def read_all(bootstrap: str, topic: str, idle_ms: int = 1500, timeout_s: float = 300.0) -> list[tuple[bytes | None, bytes | None]]:
    """Every (key, value) on ``topic`` from the beginning, until nothing new arrived for ``idle_ms``.

    No consumer group is used (nothing is committed, no join delay). Completion is judged
    by silence, not by ``end_offsets``, which Tansu can under-report.
    """
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, max_poll_records=10_000)
    await consumer.start()
    records: list[tuple[bytes | None, bytes | None]] = []
    try:
        await consumer.topics()
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            raise KafkaError(f"topic {topic} does not exist")
        consumer.assign([TopicPartition(topic, p) for p in partitions])
        await consumer.seek_to_beginning()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        quiet_since = loop.time()
        while loop.time() < deadline and (loop.time() - quiet_since) * 1000 < idle_ms:
            batches = await consumer.getmany(timeout_ms=200)
            for batch in batches.values():
                records.extend((r.key, r.value) for r in batch)
            if batches:
                quiet_since = loop.time()
    finally:
        await consumer.stop()
    return records
