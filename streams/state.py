"""Per-contact stream state: the record stored in the ``contacts`` table.

A record wraps the engine's state (owned by ``rules.engine``) with what the stream
layer needs to make replays harmless:

- ``pos``: the last applied position ``[offset, index]`` on the contact's partition.
  A contact lives on exactly one partition, so a record replayed after a crash
  (offset not yet committed, state already in the changelog) has ``pos`` at or
  below it and is skipped: nothing is applied twice.
- ``seen``: event-id fingerprints bucketed by day of event time, kept for the
  dedupe window. Fingerprints are the first 48 bits of BLAKE2b of the id; with
  n ids remembered per contact the chance that a new id collides with one of them
  is n / 2**48 (1e-11 for 1,000 ids), and buckets older than the window are
  dropped, so memory per contact is bounded by its event rate.

Records are orjson bytes (the table uses the raw serializer).
"""

from __future__ import annotations

from hashlib import blake2b
from typing import Any

import orjson

DAY_MS = 86_400_000


def fingerprint(event_id: str) -> int:
    return int.from_bytes(blake2b(event_id.encode("utf-8"), digest_size=6).digest(), "big")


class ContactRecord:
    """Mutable view of one table value; :meth:`encode` turns it back into bytes."""

    __slots__ = ("key", "state", "pos", "seen")

    def __init__(self, key: str, state: dict[str, Any], pos: list[int] | None = None, seen: dict[str, list[int]] | None = None):
        self.key = key
        self.state = state
        self.pos = pos or [-1, -1]
        self.seen = seen or {}

    @classmethod
    def decode(cls, key: str, raw: bytes) -> "ContactRecord":
        doc = orjson.loads(raw)
        return cls(key, doc["s"], doc.get("pos"), doc.get("seen"))

    def encode(self) -> bytes:
        return orjson.dumps({"s": self.state, "pos": self.pos, "seen": self.seen})

    def already_applied(self, offset: int, index: int) -> bool:
        last_offset, last_index = self.pos
        return offset < last_offset or (offset == last_offset and index <= last_index)

    def advance(self, offset: int, index: int) -> None:
        if not self.already_applied(offset, index):
            self.pos = [offset, index]

    def remember(self, event_id: str, ts: int, window_ms: int) -> bool:
        """Record ``event_id``; return False when it was already seen in the window."""
        mark = fingerprint(event_id)
        for bucket in self.seen.values():
            if mark in bucket:
                return False
        self.seen.setdefault(str(ts // DAY_MS), []).append(mark)
        return True

    def forget_before(self, now_ms: int, window_ms: int) -> None:
        oldest_day = (now_ms - window_ms) // DAY_MS
        for day in [d for d in self.seen if int(d) < oldest_day]:
            del self.seen[day]
