"""One batch of records in, state writes, triggers and dead letters out.

This is the score agent's logic without faust or any I/O, so the stream layer can be
tested record by record: the agent hands it ``(partition, offset, value)`` triples
and a loader for stored records; it returns what to write, emit, forward and
dead-letter.

Per batch it decodes every record (one event or an envelope), checks each event,
groups events by contact, sorts each contact's events by event time, skips what was
already applied (record position and event-id dedupe), sets machine traffic aside,
runs the pure rules engine, and marks each touched contact dirty.

Checkpoints
-----------
Touched records stay in memory, marked dirty, until :meth:`BatchProcessor.checkpoint`
encodes each dirty contact once for the table/changelog and the read side (DESIGN.md
section 2: a write-back cache flushed once per commit interval). A busy contact touched
by many batches in one interval is written once. The stream layer lets faust commit a
record's offset only after every contact it dirtied was checkpointed
(:meth:`BatchProcessor.oldest_dirty`), so a committed offset never runs ahead of the durable state;
a crash in between replays the uncommitted records onto the last checkpoint, and the
stored positions and deterministic trigger ids make that replay harmless. A contact that
fires a trigger has its read-side view published with the batch, so whoever sees the
trigger can read the contact it names.

Event time and order
--------------------
Scores are order-independent in the engine, so events are applied as they arrive and
the read side is current within milliseconds. Handoff triggers (``HELD_TYPES``: mql,
route_to_sales), which suppression must be able to veto whatever the arrival order,
are held in the contact record until the partition's watermark passes their event
time. The watermark is the largest event time seen on the partition minus the allowed
lateness, and moves with the wall clock when the partition is idle. At release a
suppression that began at or before the trigger's event time vetoes it. Alerts that
need no veto (hot_lead, suppress, unsuppress, ...) go out at once. Which contacts hold
triggers or have an engine timer due (the MQL handoff SLA, ``rules.engine.next_due``)
is kept per partition in the table under a reserved key, so both survive restarts and
rebalances; when the watermark passes a contact's due time, held triggers are released
and ``rules.engine.due_triggers`` fires what is due (``sla_breach``).

Events older than ``late_limit`` or newer than ``future_skew`` relative to the time the
collector received them go to the DLQ; both checks use ``received_at`` so an offline
recomputation reaches the same verdicts.

Identity
--------
An identify/alias naming both an anonymous id and a contact id is applied on the
contact's partition, then a ``link_out`` record keyed by the anonymous id moves that
visitor's state: its partition answers with a ``link_in`` record keyed by the contact
carrying the anonymous state (merged with ``rules.engine.merge_state``) and leaves a
redirect, so anonymous events that arrive later are forwarded to the contact, not lost.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

import orjson

from rules.engine import apply_event, due_triggers, merge_state, new_state, next_due, summary
from streams.bots import BotRules
from streams.events import ANONYMOUS_PREFIX, IDENTITY_TYPES, contact_key, decode_record, event_problem
from streams.state import ContactRecord

Loader = Callable[[str], "bytes | None"]

# Traits copied onto triggers so alerts can say who the lead is without a lookup.
TRIGGER_TRAITS = ("name", "first_name", "last_name", "email", "title", "company.name")
# Handoff triggers that wait for the watermark so a late suppression can veto them.
HELD_TYPES = frozenset({"mql", "route_to_sales"})
LINK_OUT = "__link_out"
LINK_IN = "__link_in"
TIMERS_KEY = "\x00timers:{}"
NEVER = -(2**62)


@dataclass(frozen=True)
class StreamLimits:
    """The time limits the processor applies, all in milliseconds."""

    late_limit_ms: int = 30 * 86_400_000
    future_skew_ms: int = 300_000
    dedupe_window_ms: int = 7 * 86_400_000
    lateness_ms: int = 10_000


@dataclass
class BatchOutcome:
    """What a batch (or a tick, or a checkpoint) asks the stream layer to write and send.

    ``writes`` (table records per partition) come only from :meth:`BatchProcessor.checkpoint`;
    ``views``/``docs`` (read side) from a checkpoint and, for contacts a trigger names, from
    the batch that fired it.
    """

    writes: dict[int, dict[str, bytes]] = field(default_factory=dict)
    views: dict[str, dict[str, Any]] = field(default_factory=dict)
    docs: dict[str, bytes] = field(default_factory=dict)
    triggers: list[dict[str, Any]] = field(default_factory=list)
    trigger_latencies_ms: list[int] = field(default_factory=list)
    dead_letters: list[dict[str, Any]] = field(default_factory=list)
    forward: list[tuple[str, bytes]] = field(default_factory=list)  # (key, record) for the events topic
    events: int = 0
    applied: int = 0
    late: int = 0
    vetoed: int = 0
    duplicates: Counter = field(default_factory=Counter)
    bots: Counter = field(default_factory=Counter)


class BatchProcessor:
    def __init__(
        self, model: Any, load: Loader, limits: StreamLimits = StreamLimits(), bots: BotRules | None = None,
        cache_size: int = 200_000,
    ) -> None:
        self.model = model
        self.load = load
        self.limits = limits
        self.bots = bots or BotRules()
        self.max_ts: dict[int, int] = {}  # partition -> largest event time seen
        self.last_event_at: dict[int, int] = {}  # partition -> wall clock of its last record
        self.timers: dict[int, dict[str, int]] = {}  # partition -> contact key -> earliest held event time
        # Decoded records stay in memory between batches (most recently used last), so a busy
        # contact is decoded once, not once per batch. The table stays the durable copy.
        self.cache: dict[str, ContactRecord] = {}
        self.cache_size = cache_size
        # Written at the next checkpoint: partition -> key -> record (never evicted before it;
        # in the order they became dirty), when each became dirty (wall clock ms), contacts
        # whose read-side view changed, partitions whose timer list changed (-> since when).
        self.dirty: dict[int, dict[str, ContactRecord]] = {}
        self.dirty_since: dict[str, int] = {}
        self.stale_views: set[str] = set()
        self.dirty_timers: dict[int, int] = {}

    # ---- watermark and timers ---------------------------------------------------------
    def watermark(self, partition: int, now_ms: int) -> int:
        lateness = self.limits.lateness_ms
        mark = self.max_ts.get(partition, NEVER) - lateness
        if now_ms - self.last_event_at.get(partition, NEVER) >= lateness:
            mark = max(mark, now_ms - lateness)  # idle partition: wall clock moves it on
        return mark

    def _timers(self, partition: int) -> dict[str, int]:
        timers = self.timers.get(partition)
        if timers is None:
            raw = self.load(TIMERS_KEY.format(partition))
            timers = self.timers[partition] = orjson.loads(raw) if raw else {}
        return timers

    def forget_partitions(self, partitions: set[int] | None = None) -> None:
        """Drop in-memory per-partition state (on rebalance); reloaded from the table lazily.

        Call :meth:`checkpoint` first and write its outcome: dirty records are dropped too.
        """
        self.cache.clear()
        self.dirty.clear()
        self.dirty_since.clear()
        self.stale_views.clear()
        self.dirty_timers.clear()
        for part in list(self.timers) if partitions is None else partitions:
            self.timers.pop(part, None)
            self.max_ts.pop(part, None)
            self.last_event_at.pop(part, None)

    # ---- batches ----------------------------------------------------------------------
    def process(self, records: list[tuple[int, int, bytes]], now_ms: int) -> BatchOutcome:
        out = BatchOutcome()
        grouped: dict[tuple[int, str], list[tuple[int, int, dict[str, Any]]]] = {}
        for partition, offset, value in records:
            self.last_event_at[partition] = now_ms
            self._collect(partition, offset, value, grouped, out)
        loaded: dict[str, ContactRecord] = {}
        for (partition, key), items in grouped.items():
            loaded[key] = self._apply_contact(partition, key, items, now_ms, out)
        self._release(now_ms, set(self.last_event_at) if records else set(), out, loaded)
        self._publish_alerted(out, now_ms)
        return out

    def tick(self, partitions: set[int], now_ms: int) -> BatchOutcome:
        """Release held triggers that became due while no record arrived."""
        out = BatchOutcome()
        self._release(now_ms, partitions, out, {})
        self._publish_alerted(out, now_ms)
        return out

    def checkpoint(self, now_ms: int, dirty_since: int | None = None) -> BatchOutcome:
        """Encode dirty contacts once each: ``writes`` for the table, ``views``/``docs`` for the read side.

        With ``dirty_since=None`` every dirty contact (and timer list) is encoded, and
        afterwards nothing is dirty (before a revoke, a table rebuild or shutdown). With a
        time, only what has been dirty since then or earlier: a rolling checkpoint that
        writes each contact at most once per interval but spreads the work over the
        batches instead of pausing scoring for all of it at once.
        """
        out = BatchOutcome()
        stale = self.stale_views
        since = self.dirty_since
        model = self.model
        for partition, records in self.dirty.items():
            writes = out.writes[partition] = {}
            for key, record in records.items():
                if dirty_since is not None and since[key] > dirty_since:
                    break  # the rest became dirty later (insertion order)
                writes[key], state_doc = record.encode_with_state()
                if key in stale:
                    stale.discard(key)
                    out.views[key] = summary(record.state, model, now_ms)
                    out.docs[key] = state_doc
            for key in writes:
                del records[key]
                del since[key]
        for partition, dirty_at in list(self.dirty_timers.items()):
            if dirty_since is None or dirty_at <= dirty_since:
                out.writes.setdefault(partition, {})[TIMERS_KEY.format(partition)] = orjson.dumps(self._timers(partition))
                del self.dirty_timers[partition]
        self.dirty = {partition: records for partition, records in self.dirty.items() if records}
        return out

    def oldest_dirty(self) -> int | None:
        """When the longest-dirty contact or timer list became dirty (None: nothing is dirty).

        Everything dirtied earlier than this has been handed to a checkpoint; the stream
        layer acks a batch's records once that holds for the batch's time.
        """
        oldest = next(iter(self.dirty_since.values()), None)
        if self.dirty_timers:
            timers = min(self.dirty_timers.values())
            oldest = timers if oldest is None else min(oldest, timers)
        return oldest

    def _publish_alerted(self, out: BatchOutcome, now_ms: int) -> None:
        """Views of the contacts named by this batch's triggers go out with it, ahead of the checkpoint."""
        for key in {trigger["contact_id"] for trigger in out.triggers}:
            record = self._record(key)
            out.views[key] = summary(record.state, self.model, now_ms)
            out.docs[key] = record.state_doc()

    def _collect(self, partition: int, offset: int, value: bytes, grouped: dict, out: BatchOutcome) -> None:
        try:
            events = decode_record(value)
        except orjson.JSONDecodeError as exc:
            out.dead_letters.append(_dead(partition, offset, None, "invalid_json", f"invalid JSON: {exc}", value))
            return
        # Hot loop (every event of the batch): locals instead of attribute lookups.
        seen_before = out.events  # + index: a sequence number unique within the batch
        out.events += len(events)
        limits = self.limits
        dead_letters = out.dead_letters
        max_ts = self.max_ts.get(partition, NEVER)
        for index, event in enumerate(events):
            if isinstance(event, dict) and event.get("type") in (LINK_OUT, LINK_IN):
                key = event["key"]
            else:
                verdict = rejection(event, limits)
                if verdict is not None:
                    dead_letters.append(_dead(partition, offset, index, *verdict, event))
                    continue
                if event["ts"] > max_ts:
                    max_ts = event["ts"]
                key = contact_key(event)
            # Sorting these tuples gives the apply order: event time, then position; the
            # sequence number keeps a record delivered twice from comparing two dicts.
            item = (event.get("ts", 0), offset, index, seen_before + index, event)
            bucket = grouped.get((partition, key))
            if bucket is None:
                grouped[(partition, key)] = [item]
            else:
                bucket.append(item)
        if max_ts != NEVER:
            self.max_ts[partition] = max_ts

    def _record(self, key: str) -> ContactRecord:
        cache = self.cache
        record = cache.pop(key, None)
        if record is None:
            record = self._dirty_record(key)
        if record is None:
            raw = self.load(key)
            record = ContactRecord.decode(key, raw) if raw is not None else ContactRecord(key, new_state(key))
            if len(cache) >= self.cache_size:
                del cache[next(iter(cache))]  # least recently used
        cache[key] = record
        return record

    def _dirty_record(self, key: str) -> ContactRecord | None:
        """A dirty record the cache evicted: newer than the table's copy until the checkpoint."""
        for records in self.dirty.values():
            record = records.get(key)
            if record is not None:
                return record
        return None

    def _apply_contact(self, partition: int, key: str, items: list, now_ms: int, out: BatchOutcome) -> ContactRecord:
        record = self._record(key)
        # Event-time order within the batch; position breaks ties so order stays deterministic.
        items.sort()
        window = self.limits.dedupe_window_ms
        watermark = self.watermark(partition, now_ms)
        touched = False
        # Hot loop (every event of the batch): locals and inlined position checks.
        stored_offset, stored_index = record.pos  # applied before this batch: skipped on replay
        newest_offset, newest_index = stored_offset, stored_index
        duplicates = out.duplicates
        remember = record.remember
        classify = self.bots.classify
        model = self.model
        for _ts, offset, index, _seq, event in items:
            if offset < stored_offset or (offset == stored_offset and index <= stored_index):
                duplicates[event.get("source") or "internal"] += 1
                continue
            if offset > newest_offset or (offset == newest_offset and index > newest_index):
                newest_offset, newest_index = offset, index
            kind = event["type"]
            if kind == LINK_OUT:
                # The visitor's history moved: publish its (now empty) view so readers see that too.
                self._link_out(record, event, out)
                touched = True
                continue
            if kind == LINK_IN:
                touched |= self._link_in(record, event, now_ms, out)
                continue
            if record.redirect:
                # This anonymous visitor became a known contact: the event belongs there now.
                moved = {**event, "contact_id": record.redirect}
                out.forward.append((record.redirect, orjson.dumps(moved)))
                continue
            received_at = event.get("received_at")
            if not remember(event["id"], received_at or event["ts"], window):
                duplicates[event.get("source") or "unknown"] += 1
                continue
            bot = classify(event, record.bot)
            if bot is not None:
                out.bots[bot] += 1
                continue
            if event["ts"] < watermark:
                out.late += 1
            touched = True
            out.applied += 1
            triggers = apply_event(record.state, event, model)
            if triggers:
                self._decide(record, triggers, received_at, now_ms, out)
            if kind in IDENTITY_TYPES and event.get("contact_id") and event.get("anonymous_id"):
                self._request_link(record, str(event["anonymous_id"]), event["ts"], out)
        record.pos = [newest_offset, newest_index]
        record.forget_before(window)
        self._mark_dirty(partition, record, touched, now_ms)
        return record

    def _decide(
        self, record: ContactRecord, triggers: list[dict[str, Any]], received_at: Any, now_ms: int, out: BatchOutcome
    ) -> None:
        """Emit or hold ``triggers``; ``received_at`` (the causing event's, if any) feeds the latency metric."""
        for trigger in triggers:
            kind = trigger["type"]
            if kind == "suppress":
                record.suppressed_since = trigger["event_ts"]
            elif kind == "unsuppress":
                record.suppressed_since = None
            trigger["contact"] = {"traits": _trigger_traits(record.state)}
            if isinstance(received_at, int):
                trigger["_received_at"] = received_at
            if kind in HELD_TYPES and self.limits.lateness_ms > 0:
                record.held.append(trigger)
            else:
                self._emit(trigger, now_ms, out)

    def _emit(self, trigger: dict[str, Any], now_ms: int, out: BatchOutcome) -> None:
        received_at = trigger.pop("_received_at", None)
        trigger["emitted_at"] = now_ms
        out.triggers.append(trigger)
        if received_at is not None:
            out.trigger_latencies_ms.append(max(0, now_ms - received_at))

    def _release(self, now_ms: int, partitions: set[int], out: BatchOutcome, loaded: dict[str, ContactRecord]) -> None:
        for partition in partitions:
            timers = self._timers(partition)
            watermark = self.watermark(partition, now_ms)
            for key in [k for k, due in timers.items() if due <= watermark]:
                record = loaded.get(key) or self._record(key)
                # Engine timers (the MQL handoff SLA) fire on the same watermark as holds.
                fired = due_triggers(record.state, self.model, watermark)
                if fired:
                    self._decide(record, fired, None, now_ms, out)
                keep = []
                for trigger in record.held:
                    if trigger["event_ts"] > watermark:
                        keep.append(trigger)
                    elif record.suppressed_since is not None and record.suppressed_since <= trigger["event_ts"]:
                        out.vetoed += 1
                    else:
                        self._emit(trigger, now_ms, out)
                record.held = keep
                self._mark_dirty(partition, record, bool(fired), now_ms)

    def _mark_dirty(self, partition: int, record: ContactRecord, touched: bool, now_ms: int) -> None:
        timers = self._timers(partition)
        dues = [t["event_ts"] for t in record.held]
        engine_due = next_due(record.state, self.model)
        if engine_due is not None:
            dues.append(engine_due)
        due = min(dues, default=None)
        if timers.get(record.key) != due:
            self.dirty_timers.setdefault(partition, now_ms)
            if due is None:
                del timers[record.key]
            else:
                timers[record.key] = due
        dirty = self.dirty.get(partition)
        if dirty is None:
            dirty = self.dirty[partition] = {}
        if record.key not in dirty:
            dirty[record.key] = record
            self.dirty_since[record.key] = now_ms
        if touched:
            self.stale_views.add(record.key)

    # ---- identity stitching ---------------------------------------------------------------
    def _request_link(self, record: ContactRecord, anonymous_id: str, ts: int, out: BatchOutcome) -> None:
        if anonymous_id in record.linked:
            return
        record.linked.append(anonymous_id)
        del record.linked[:-64]  # bounded; a repeat link is harmless (the anonymous side is empty)
        anon_key = ANONYMOUS_PREFIX + anonymous_id
        message = {"type": LINK_OUT, "key": anon_key, "contact": record.key, "ts": ts}
        out.forward.append((anon_key, orjson.dumps(message)))

    def _link_out(self, record: ContactRecord, message: dict[str, Any], out: BatchOutcome) -> None:
        target = message["contact"]
        if record.redirect is None:
            payload = {"type": LINK_IN, "key": target, "anonymous_id": record.key, "ts": message["ts"],
                       "state": record.state, "seen": record.seen_doc()}
            out.forward.append((target, orjson.dumps(payload)))
            record.state = new_state(record.key)
            record.clear_seen()
            record.held = []
            record.redirect = target

    def _link_in(self, record: ContactRecord, message: dict[str, Any], now_ms: int, out: BatchOutcome) -> bool:
        merged_mark = "=" + message["anonymous_id"]
        if merged_mark in record.linked:
            return False  # a replayed link_out re-sent the same history: merge once
        record.linked.append(merged_mark)
        other = message["state"]
        if not other.get("updated_at") and not other.get("b"):
            return False  # the visitor had no history: nothing to merge
        merge_state(record.state, other, self.model)
        record.merge_seen(message.get("seen") or {})
        # Thresholds are decided at an event: a trait-less identify at the merge time asks the
        # engine whether the merged score crossed one.
        probe = {"id": f"merge:{message['anonymous_id']}", "type": "identify", "contact_id": record.key,
                 "anonymous_id": None, "ts": max(message["ts"], record.state.get("updated_at") or 0),
                 "received_at": now_ms, "source": "identity", "traits": {}, "properties": {}}
        self._decide(record, apply_event(record.state, probe, self.model), now_ms, now_ms, out)
        return True


def rejection(event: Any, limits: StreamLimits) -> tuple[str, str] | None:
    """Why ``event`` goes to the DLQ as ``(code, reason)``, or None when it is accepted.

    Time limits are relative to when the collector received the event, so the worker and
    an offline recomputation (``streams.checker``) reach the same verdict.
    """
    problem = event_problem(event)
    if problem is not None:
        return "invalid_event", problem
    ts = event["ts"]
    reference = event.get("received_at") if isinstance(event.get("received_at"), int) else ts
    if ts < reference - limits.late_limit_ms:
        return "too_late", "too late: event time is beyond the late limit"
    if ts > reference + limits.future_skew_ms:
        return "future", "in the future: event time is beyond the allowed clock skew"
    return None


def _trigger_traits(state: dict[str, Any]) -> dict[str, Any]:
    traits = state.get("traits") or {}
    return {name: traits[name] for name in TRIGGER_TRAITS if name in traits}


def _dead(partition: int, offset: int, index: int | None, code: str, reason: str, payload: Any) -> dict[str, Any]:
    """A DLQ record: ``code`` is the short metric label, ``reason`` the sentence for people."""
    if isinstance(payload, (bytes, bytearray)):
        payload = bytes(payload).decode("utf-8", errors="replace")
    return {"code": code, "reason": reason, "partition": partition, "offset": offset, "index": index, "payload": payload}


# Last: run the compiled twin of this module when it was built from this exact file (rules/native.py).
from rules.native import adopt  # noqa: E402

adopt(globals())
