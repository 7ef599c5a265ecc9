"""Offline recomputation: what the scores must be, from the raw events alone.

``recompute`` takes every record of the events topic (any order), keeps the distinct
events (by id, per final identity) that the worker would accept, resolves anonymous
visitors to the contacts they were linked to, applies each contact's events in
event-time order with the pure engine, and returns the resulting states. ``compare``
reads a live state (Redis doc or table record) and the offline one at the same time
and reports the contacts whose scores differ.

It shares the rules (DLQ limits, bot rules, engine) with the worker but none of its
streaming machinery (positions, envelopes order, watermarks, link records), which is
what makes it a check.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import orjson

from rules.engine import apply_event, new_state, view
from streams.bots import BotRules
from streams.events import ANONYMOUS_PREFIX, decode_record
from streams.processor import LINK_IN, LINK_OUT, StreamLimits, rejection


@dataclass
class Recomputed:
    states: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: int = 0
    distinct: int = 0
    rejected: int = 0
    bots: int = 0


def recompute(values: Iterable[bytes], model: Any, limits: StreamLimits = StreamLimits(), bots: BotRules | None = None) -> Recomputed:
    bots = bots or BotRules()
    result = Recomputed()
    events: list[dict[str, Any]] = []
    links: dict[str, str] = {}  # anonymous id -> contact id (first link wins, as live)
    for value in values:
        try:
            decoded = decode_record(value)
        except orjson.JSONDecodeError:
            continue
        for event in decoded:
            if isinstance(event, dict) and event.get("type") in (LINK_OUT, LINK_IN):
                continue  # the worker's own bookkeeping, derived from the events themselves
            result.events += 1
            if rejection(event, limits) is not None:
                result.rejected += 1
                continue
            events.append(event)
    for event in sorted(events, key=lambda e: e["ts"]):
        if event["type"] in ("identify", "alias") and event.get("contact_id") and event.get("anonymous_id"):
            links.setdefault(str(event["anonymous_id"]), str(event["contact_id"]))
    per_key: dict[str, dict[str, dict[str, Any]]] = {}
    for event in events:
        if event.get("contact_id"):
            key = str(event["contact_id"])
        else:
            anonymous = str(event["anonymous_id"])
            key = links.get(anonymous, ANONYMOUS_PREFIX + anonymous)
        per_key.setdefault(key, {}).setdefault(event["id"], event)  # distinct by id per identity
    for key, by_id in per_key.items():
        state = new_state(key)
        memory: dict[str, Any] = {}
        for event in sorted(by_id.values(), key=lambda e: (e["ts"], e["id"])):
            result.distinct += 1
            if bots.classify(event, memory) is not None:
                result.bots += 1
                continue
            apply_event(state, {**event, "contact_id": key}, model)
        result.states[key] = state
    return result


@dataclass
class Mismatch:
    contact: str
    expected: float | None
    live: float | None

    def __str__(self) -> str:
        return f"{self.contact}: offline {self.expected} live {self.live}"


def compare(expected: dict[str, dict[str, Any]], live: dict[str, dict[str, Any]], model: Any, at_ms: int,
            tolerance: float = 0.011) -> list[Mismatch]:
    """Contacts whose score as of ``at_ms`` differs by more than ``tolerance`` (scores carry 2 decimals)."""
    problems = []
    for key in sorted(set(expected) | set(live)):
        want = view(expected[key], model, at_ms)["score"] if key in expected else None
        have = view(live[key], model, at_ms)["score"] if key in live else None
        if want is None and have == 0:
            continue  # an anonymous visitor whose history moved to a contact
        if want is None or have is None or abs(want - have) > tolerance:
            problems.append(Mismatch(key, want, have))
    return problems
