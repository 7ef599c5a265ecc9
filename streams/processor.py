"""One batch of records in, state writes, triggers and dead letters out.

This is the score agent's logic without faust or any I/O, so the stream layer can be
tested record by record: the agent hands it ``(partition, offset, value)`` triples
and a loader for stored records; it returns what to write, emit and dead-letter.

Per batch it decodes every record (a single event or an envelope), checks each
event, groups events by contact, sorts each contact's events by event time, skips
what was already applied (position and event-id dedupe), runs the pure rules
engine, and encodes each touched contact once.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

import orjson

from rules.engine import apply_event, new_state, view
from streams.events import contact_key, decode_record, event_problem
from streams.state import ContactRecord

Loader = Callable[[str], "bytes | None"]

# Traits copied onto triggers so alerts can say who the lead is without a lookup.
TRIGGER_TRAITS = ("name", "first_name", "last_name", "email", "title", "company.name")


@dataclass(frozen=True)
class StreamLimits:
    """The time limits the processor applies, all in milliseconds."""

    late_limit_ms: int = 30 * 86_400_000
    future_skew_ms: int = 300_000
    dedupe_window_ms: int = 7 * 86_400_000


@dataclass
class BatchOutcome:
    writes: dict[int, dict[str, bytes]] = field(default_factory=dict)
    views: dict[str, dict[str, Any]] = field(default_factory=dict)
    docs: dict[str, bytes] = field(default_factory=dict)
    triggers: list[dict[str, Any]] = field(default_factory=list)
    trigger_latencies_ms: list[int] = field(default_factory=list)
    dead_letters: list[dict[str, Any]] = field(default_factory=list)
    events: int = 0
    applied: int = 0
    duplicates: Counter = field(default_factory=Counter)
    received: Counter = field(default_factory=Counter)


class BatchProcessor:
    def __init__(self, model: Any, load: Loader, limits: StreamLimits = StreamLimits()) -> None:
        self.model = model
        self.load = load
        self.limits = limits

    def process(self, records: list[tuple[int, int, bytes]], now_ms: int) -> BatchOutcome:
        out = BatchOutcome()
        grouped: dict[tuple[int, str], list[tuple[int, int, dict[str, Any]]]] = {}
        for partition, offset, value in records:
            self._collect(partition, offset, value, now_ms, grouped, out)
        for (partition, key), items in grouped.items():
            self._apply_contact(partition, key, items, now_ms, out)
        return out

    def _collect(self, partition: int, offset: int, value: bytes, now_ms: int, grouped: dict, out: BatchOutcome) -> None:
        try:
            events = decode_record(value)
        except orjson.JSONDecodeError as exc:
            out.dead_letters.append(_dead(partition, offset, None, "invalid_json", f"invalid JSON: {exc}", value))
            return
        limits = self.limits
        for index, event in enumerate(events):
            out.events += 1
            code, problem = "invalid_event", event_problem(event)
            if problem is None:
                ts = event["ts"]
                if ts < now_ms - limits.late_limit_ms:
                    code, problem = "too_late", "too late: event time is beyond the late limit"
                elif ts > now_ms + limits.future_skew_ms:
                    code, problem = "future", "in the future: event time is beyond the allowed clock skew"
            if problem is not None:
                out.dead_letters.append(_dead(partition, offset, index, code, problem, event))
                continue
            grouped.setdefault((partition, contact_key(event)), []).append((offset, index, event))

    def _apply_contact(self, partition: int, key: str, items: list, now_ms: int, out: BatchOutcome) -> None:
        raw = self.load(key)
        record = ContactRecord.decode(key, raw) if raw is not None else ContactRecord(key, new_state(key))
        # Event-time order within the batch; position breaks ties so order stays deterministic.
        items.sort(key=lambda item: (item[2]["ts"], item[0], item[1]))
        window = self.limits.dedupe_window_ms
        model = self.model
        touched = False
        for offset, index, event in items:
            source = event.get("source") or "unknown"
            if record.already_applied(offset, index) or not record.remember(event["id"], event["ts"], window):
                out.duplicates[source] += 1
                record.advance(offset, index)
                continue
            record.advance(offset, index)
            touched = True
            out.applied += 1
            out.received[(source, event["type"])] += 1
            for trigger in apply_event(record.state, event, model):
                trigger["emitted_at"] = now_ms
                trigger["contact"] = {"traits": _trigger_traits(record.state)}
                out.triggers.append(trigger)
                received_at = event.get("received_at")
                if isinstance(received_at, int):
                    out.trigger_latencies_ms.append(max(0, now_ms - received_at))
        record.forget_before(now_ms, window)
        # Even a batch of pure duplicates advances the position, so the record is rewritten.
        out.writes.setdefault(partition, {})[key] = record.encode()
        if touched:
            out.views[key] = view(record.state, model, now_ms)
            out.docs[key] = orjson.dumps(record.state)


def _trigger_traits(state: dict[str, Any]) -> dict[str, Any]:
    traits = state.get("traits") or {}
    return {name: traits[name] for name in TRIGGER_TRAITS if name in traits}


def _dead(partition: int, offset: int, index: int | None, code: str, reason: str, payload: Any) -> dict[str, Any]:
    """A DLQ record: ``code`` is the short metric label, ``reason`` the sentence for people."""
    if isinstance(payload, (bytes, bytearray)):
        payload = bytes(payload).decode("utf-8", errors="replace")
    return {"code": code, "reason": reason, "partition": partition, "offset": offset, "index": index, "payload": payload}
