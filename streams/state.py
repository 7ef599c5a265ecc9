"""Per-contact stream state: the record stored in the ``contacts`` table.

A record wraps the engine's state (owned by ``rules.engine``) with what the stream
layer needs to make replays harmless and order safe:

- ``pos``: the last applied position ``[offset, index]`` on the contact's partition.
  A contact lives on exactly one partition, so a record replayed after a crash
  (offset not yet committed, state already in the changelog) has ``pos`` at or
  below it and is skipped: nothing is applied twice.
- ``seen``: event-id fingerprints bucketed by the day the collector received the event,
  kept for the dedupe window (a retry is caught however old its event time is). A
  fingerprint is the first 48 bits of BLAKE2b of the id: with n ids remembered per
  contact, the chance that a new id collides with one of them is n / 2**48 (4e-12 for
  1,000 ids). Buckets older than the window, counted from the newest bucket, are
  dropped, so memory is bounded by the contact's event rate over the window (about
  15 bytes of JSON per remembered event).
- ``held``: handoff triggers waiting for the watermark; ``sup``: event time at which the
  current suppression began (vetoes held triggers at or after it).
- ``redirect``: set on an anonymous visitor once it was linked to a known contact;
  ``linked``: anonymous ids this contact already asked to merge.
- ``bot``: the little memory machine-traffic detection needs (recent deliveries, clicks).

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

    __slots__ = ("key", "state", "pos", "seen", "_marks", "held", "suppressed_since", "redirect", "linked", "bot")

    def __init__(self, key: str, state: dict[str, Any], doc: dict[str, Any] | None = None) -> None:
        doc = doc or {}
        self.key = key
        self.state = state
        self.pos: list[int] = doc.get("pos") or [-1, -1]
        # Buckets are sets in memory (O(1) membership); _marks is their union.
        self.seen: dict[str, set[int]] = {day: set(marks) for day, marks in (doc.get("seen") or {}).items()}
        self._marks: set[int] = set().union(*self.seen.values()) if self.seen else set()
        self.held: list[dict[str, Any]] = doc.get("held") or []
        self.suppressed_since: int | None = doc.get("sup")
        self.redirect: str | None = doc.get("redirect")
        self.linked: list[str] = doc.get("linked") or []
        self.bot: dict[str, Any] = doc.get("bot") or {}

    @classmethod
    def decode(cls, key: str, raw: bytes) -> "ContactRecord":
        doc = orjson.loads(raw)
        return cls(key, doc["s"], doc)

    def encode(self, state_json: bytes | None = None) -> bytes:
        """The record as stored; ``state_json`` is ``orjson.dumps(self.state)`` when the caller has it."""
        state: Any = self.state if state_json is None else orjson.Fragment(state_json)
        doc: dict[str, Any] = {"s": state, "pos": self.pos, "seen": {d: list(m) for d, m in self.seen.items()}}
        # Optional parts are left out when empty: most contacts never need them.
        if self.held:
            doc["held"] = self.held
        if self.suppressed_since is not None:
            doc["sup"] = self.suppressed_since
        if self.redirect:
            doc["redirect"] = self.redirect
        if self.linked:
            doc["linked"] = self.linked
        if self.bot:
            doc["bot"] = self.bot
        return orjson.dumps(doc)

    def already_applied(self, offset: int, index: int) -> bool:
        """True when ``[offset, index]`` is at or before the stored position.

        Events of one batch are applied in event-time order, not position order, so the
        caller checks every event against the position stored before the batch and
        calls :meth:`advance` with each position; the stored position only moves forward.
        """
        last_offset, last_index = self.pos
        return offset < last_offset or (offset == last_offset and index <= last_index)

    def advance(self, offset: int, index: int, newest: list[int]) -> list[int]:
        """Return the later of ``newest`` and ``[offset, index]`` (the batch's high mark)."""
        if offset > newest[0] or (offset == newest[0] and index > newest[1]):
            return [offset, index]
        return newest

    def remember(self, event_id: str, received_at: int, window_ms: int) -> bool:
        """Record ``event_id``; return False when it was already seen in the window."""
        mark = fingerprint(event_id)
        if mark in self._marks:
            return False
        self._marks.add(mark)
        self.seen.setdefault(str(received_at // DAY_MS), set()).add(mark)
        return True

    def seen_doc(self) -> dict[str, list[int]]:
        """The dedupe buckets as JSON-ready lists (for link records)."""
        return {day: list(marks) for day, marks in self.seen.items()}

    def clear_seen(self) -> None:
        self.seen = {}
        self._marks = set()

    def merge_seen(self, other: dict[str, list[int]]) -> None:
        for day, marks in other.items():
            self.seen.setdefault(day, set()).update(marks)
            self._marks.update(marks)

    def forget_before(self, window_ms: int) -> None:
        if not self.seen:
            return
        newest = max(int(day) for day in self.seen)
        oldest_kept = newest - max(1, window_ms // DAY_MS)
        expired = [d for d in self.seen if int(d) < oldest_kept]
        for day in expired:
            del self.seen[day]
        if expired:
            self._marks = set().union(*self.seen.values()) if self.seen else set()
