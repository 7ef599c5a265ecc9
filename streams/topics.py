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
