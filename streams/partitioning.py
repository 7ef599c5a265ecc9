"""Which partition a contact key lands on: Kafka's default (murmur2) partitioner.

The collector packs events per target partition into envelopes, so it must agree
exactly with the partitioner the Java client, aiokafka and faust use for keyed
records; one contact then always lives on one partition and its order holds.
"""

from __future__ import annotations

from functools import lru_cache

from aiokafka.partitioner import murmur2


@lru_cache(maxsize=262_144)
def partition_for(key: str, partitions: int) -> int:
    """``toPositive(murmur2(key)) % partitions``, as Kafka's DefaultPartitioner does."""
    return (murmur2(key.encode("utf-8")) & 0x7FFFFFFF) % partitions
