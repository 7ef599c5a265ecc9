"""Read a topic from the beginning without a consumer group (Tansu's group joins are slow)."""

from __future__ import annotations

import time
from typing import Callable

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition


async def read_until(bootstrap: str, topic: str, done: Callable[[list], bool], timeout: float = 20.0) -> list:
    """Decode every record of ``topic`` as JSON until ``done(records)`` or the timeout; returns (key, value) pairs."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    records: list = []
    try:
        deadline = time.monotonic() + timeout
        partitions: set[int] = set()
        while not partitions and time.monotonic() < deadline:
            await consumer.topics()  # full metadata refresh: we subscribe to nothing
            partitions = consumer.partitions_for_topic(topic) or set()
        assert partitions, f"topic {topic} does not exist"
        consumer.assign([TopicPartition(topic, p) for p in partitions])
        await consumer.seek_to_beginning()
        while time.monotonic() < deadline and not done(records):
            for batch in (await consumer.getmany(timeout_ms=300)).values():
                records.extend((r.key, orjson.loads(r.value)) for r in batch)
    finally:
        await consumer.stop()
    return records
