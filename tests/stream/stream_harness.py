"""An in-memory stand-in for the broker and the table, to drive BatchProcessor like the agent does."""

from __future__ import annotations

from typing import Any

import orjson

from rules import default_model
from streams.events import contact_key, encode_envelope
from streams.partitioning import partition_for
from streams.processor import BatchOutcome, BatchProcessor, StreamLimits
from streams.state import read_record

T0 = 1_795_000_000_000


def event(eid: str, kind: str, ts: int, contact: str | None = "c1", anon: str | None = None, **extra: Any) -> dict:
    return {"id": eid, "type": kind, "contact_id": contact, "anonymous_id": anon, "ts": ts, "received_at": ts,
            "source": "segment", "traits": extra.pop("traits", {}), "properties": extra.pop("properties", {}), **extra}


FIT = {"title": "Psychologist", "company": {"industry": "University", "employee_count": 5000}, "address": {"country": "US"}}


class Harness:
    """Partitions as lists of records; the table as a dict; offsets are list positions."""

    def __init__(self, partitions: int = 2, limits: StreamLimits | None = None, model: Any = None) -> None:
        self.partitions = partitions
        self.logs: list[list[bytes]] = [[] for _ in range(partitions)]
        self.read: list[int] = [0] * partitions
        self.table: dict[str, bytes] = {}
        self.processor = BatchProcessor(model or default_model(), self.table.get, limits or StreamLimits(lateness_ms=0))
        self.triggers: list[dict] = []
        self.dead: list[dict] = []
        self.outcomes: list[BatchOutcome] = []
        self.checkpoints = True  # after every batch and tick; False: only when the test says

    def produce(self, events: list[dict], envelope: bool = True) -> None:
        by_partition: dict[int, list[dict]] = {}
        for ev in events:
            by_partition.setdefault(partition_for(contact_key(ev), self.partitions), []).append(ev)
        for part, evs in by_partition.items():
            if envelope:
                self.logs[part].append(encode_envelope(evs))
            else:
                self.logs[part].extend(orjson.dumps(e) for e in evs)

    def run(self, now_ms: int, batch: int = 1000, rounds: int = 20) -> None:
        """Consume everything (including records the processor forwards) like the agent would."""
        for _ in range(rounds):
            records = []
            for part in range(self.partitions):
                log = self.logs[part]
                while self.read[part] < len(log) and len(records) < batch:
                    records.append((part, self.read[part], log[self.read[part]]))
                    self.read[part] += 1
            if not records:
                return
            self.apply(self.processor.process(records, now_ms))
            if self.checkpoints:
                self.checkpoint(now_ms)

    def tick(self, now_ms: int) -> None:
        self.apply(self.processor.tick(set(range(self.partitions)), now_ms))
        if self.checkpoints:
            self.checkpoint(now_ms)

    def checkpoint(self, now_ms: int, dirty_since: int | None = None) -> None:
        """What the worker does before a revoke or shutdown: write every dirty contact to the table
        (or, with ``dirty_since``, its rolling checkpoint: those dirty since then or earlier)."""
        self.apply(self.processor.checkpoint(now_ms, dirty_since))

    def apply(self, out: BatchOutcome) -> None:
        self.outcomes.append(out)
        self.triggers += out.triggers
        self.dead += out.dead_letters
        for key, value in out.forward:
            self.logs[partition_for(key, self.partitions)].append(value)
        for writes in out.writes.values():
            self.table.update(writes)

    def replay_from(self, offsets: list[int]) -> None:
        """A restart: offsets committed only up to ``offsets``, memory gone (dirty records too), the table kept."""
        self.read = list(offsets)
        self.processor.forget_partitions()

    def state(self, key: str) -> dict:
        return read_record(self.table[key], key)["s"]
