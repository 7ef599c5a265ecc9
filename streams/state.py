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
  dropped, so memory is bounded by the contact's event rate over the window (6 bytes
  per remembered event: a bucket is stored as its fingerprints packed end to end).
- ``held``: handoff triggers waiting for the watermark; ``sup``: event time at which the
  current suppression began (vetoes held triggers at or after it).
- ``redirect``: set on an anonymous visitor once it was linked to a known contact;
  ``linked``: anonymous ids this contact already asked to merge.
- ``bot``: the little memory machine-traffic detection needs (recent deliveries, clicks).

Records are MessagePack bytes (the table uses the raw serializer): the same document
as JSON would be, with floats and timestamps in 9 bytes instead of up to 24 characters
and the fingerprints as raw bytes, which keeps a typical record under 1 KB. Records
written as JSON by earlier versions (they start with ``{``) are still read.
"""

from __future__ import annotations

import base64
from hashlib import blake2b
from typing import Any

import orjson
import ormsgpack

from rules.engine import new_state

DAY_MS = 86_400_000
MARK_BYTES = 6
_MISSING = object()


def fingerprint(event_id: str) -> bytes:
    """The 48-bit BLAKE2b fingerprint of an event id (stable across processes)."""
    return blake2b(event_id.encode("utf-8"), digest_size=MARK_BYTES).digest()


def _packed(bucket: Any) -> bytes:
    """A bucket as stored: packed bytes, base64 text of them (link records), or a list of
    ints (records and link records of earlier versions); returned packed."""
    if isinstance(bucket, str):
        return base64.b64decode(bucket)
    if isinstance(bucket, (bytes, bytearray)):
        return bytes(bucket)
    return b"".join(int(mark).to_bytes(MARK_BYTES, "big") for mark in bucket)


def _marks_of(packed: bytes | bytearray) -> list[bytes]:
    return [bytes(packed[i:i + MARK_BYTES]) for i in range(0, len(packed), MARK_BYTES)]


# Engine-state fields a record leaves out while they hold the value a new state starts
# with (most contacts never get an MQL, a rejection, a health score, ...), and the
# contact id, which is the record's key: ~150 bytes of a typical record.
_DEFAULT_OF = new_state("")


def _stored_state(state: dict[str, Any]) -> dict[str, Any]:
    defaults = _DEFAULT_OF
    return {
        name: value for name, value in state.items()
        if name != "contact_id" and not (type(value) is type(d := defaults.get(name, _MISSING)) and value == d)
    }


def _full_state(key: str, stored: dict[str, Any]) -> dict[str, Any]:
    if "contact_id" in stored:  # a record of an earlier version: the state as it was
        return stored
    state = new_state(key)  # fresh containers, in the engine's key order
    state.update(stored)
    return state


def _unpack(raw: bytes) -> Any:
    """MessagePack, or the JSON of earlier versions (a JSON object starts with ``{``)."""
    return orjson.loads(raw) if raw[:1] == b"{" else ormsgpack.unpackb(raw)


def state_from_doc(raw: bytes, contact_id: str) -> dict[str, Any]:
    """The full engine state from the read side's ``doc`` field.

    The worker publishes MessagePack of the stored state (defaults and the contact id left
    out, as in the table record); earlier versions published the whole state as JSON.
    """
    return _full_state(contact_id, _unpack(raw))


def read_record(raw: bytes, key: str) -> dict[str, Any]:
    """The record stored under ``key`` as a plain document (``"s"`` is the full engine state), whatever its format."""
    doc = _unpack(raw)
    doc["s"] = _full_state(key, doc["s"])
    return doc


class ContactRecord:
    """Mutable view of one table value; :meth:`encode` turns it back into bytes."""

    __slots__ = ("key", "state", "pos", "seen", "_marks", "held", "suppressed_since", "redirect", "linked", "bot")

    def __init__(self, key: str, state: dict[str, Any], doc: dict[str, Any] | None = None) -> None:
        doc = doc or {}
        self.key = key
        self.state = state
        self.pos: list[int] = doc.get("pos") or [-1, -1]
        # Buckets stay packed in memory, appended to as ids arrive, so writing a busy
        # contact's record copies its buckets instead of joining thousands of marks;
        # _marks (the union, as a set) answers membership.
        self.seen: dict[str, bytearray] = {}
        self._marks: set[bytes] = set()
        self.merge_seen(doc.get("seen") or {})
        self.held: list[dict[str, Any]] = doc.get("held") or []
        self.suppressed_since: int | None = doc.get("sup")
        self.redirect: str | None = doc.get("redirect")
        self.linked: list[str] = doc.get("linked") or []
        self.bot: dict[str, Any] = doc.get("bot") or {}

    @classmethod
    def decode(cls, key: str, raw: bytes) -> "ContactRecord":
        doc = read_record(raw, key)
        return cls(key, doc["s"], doc)

    def encode(self) -> bytes:
        return self.encode_with_state()[0]

    def state_doc(self) -> bytes:
        """The read side's ``doc``: MessagePack of the stored state (see :func:`state_from_doc`)."""
        return ormsgpack.packb(_stored_state(self.state))

    def encode_with_state(self) -> tuple[bytes, bytes]:
        """The record's bytes, and the state document inside them (the read side's ``doc``).

        The record is the MessagePack map ``{"s": state, "pos": ..., "seen": ..., ...}``;
        it is assembled around the packed state so that the state is encoded once for
        both the table and Redis (see :func:`state_from_doc`).
        """
        state = self.state_doc()
        rest: dict[str, Any] = {"pos": self.pos, "seen": {d: bytes(packed) for d, packed in self.seen.items()}}
        # Optional parts are left out when empty: most contacts never need them.
        if self.held:
            rest["held"] = self.held
        if self.suppressed_since is not None:
            rest["sup"] = self.suppressed_since
        if self.redirect:
            rest["redirect"] = self.redirect
        if self.linked:
            rest["linked"] = self.linked
        if self.bot:
            rest["bot"] = self.bot
        # At most 8 entries with "s": a one-byte fixmap header (0x80 | n), then "s" (0xa1 0x73).
        return bytes((0x80 | (len(rest) + 1),)) + b"\xa1s" + state + ormsgpack.packb(rest)[1:], state

    def remember(self, event_id: str, received_at: int, window_ms: int) -> bool:
        """Record ``event_id``; return False when it was already seen in the window."""
        mark = fingerprint(event_id)
        if mark in self._marks:
            return False
        self._marks.add(mark)
        bucket = self.seen.get(day := str(received_at // DAY_MS))
        if bucket is None:
            self.seen[day] = bytearray(mark)
        else:
            bucket += mark
        return True

    def seen_doc(self) -> dict[str, str]:
        """The dedupe buckets as JSON-ready text (base64 of the packed fingerprints, for link records)."""
        return {day: base64.b64encode(packed).decode("ascii") for day, packed in self.seen.items()}

    def clear_seen(self) -> None:
        self.seen = {}
        self._marks = set()

    def merge_seen(self, other: dict[str, Any]) -> None:
        """Add buckets in the form :meth:`seen_doc` writes (or the int lists of earlier versions)."""
        marks = self._marks
        for day, bucket in other.items():
            packed = self.seen.setdefault(day, bytearray())
            for mark in _marks_of(_packed(bucket)):
                if mark not in marks:
                    marks.add(mark)
                    packed += mark

    def forget_before(self, window_ms: int) -> None:
        if not self.seen:
            return
        newest = max(int(day) for day in self.seen)
        oldest_kept = newest - max(1, window_ms // DAY_MS)
        expired = [d for d in self.seen if int(d) < oldest_kept]
        for day in expired:
            del self.seen[day]
        if expired:
            self._marks = {mark for packed in self.seen.values() for mark in _marks_of(packed)}


# Last: run the compiled twin of this module when it was built from this exact file (rules/native.py).
from rules.native import adopt  # noqa: E402

adopt(globals())
