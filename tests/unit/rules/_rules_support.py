"""Shared helpers for the rules unit tests: event builders and a fixed clock origin."""

from __future__ import annotations

from typing import Any

from rules import default_model
from rules.engine import apply_event, new_state

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z, a Thursday: the start of a 7d epoch-aligned window
MIN = 60_000
HOUR = 3_600_000
DAY = 86_400_000

_counter = [0]


def ev(etype: str, ts: int = T0, contact: str = "c1", traits: dict | None = None, properties: dict | None = None,
       **extra: Any) -> dict[str, Any]:
    _counter[0] += 1
    event = {
        "id": f"e{_counter[0]}",
        "type": etype,
        "contact_id": contact,
        "anonymous_id": None,
        "ts": ts,
        "received_at": ts,
        "source": "test",
        "traits": traits or {},
        "properties": properties or {},
    }
    event.update(extra)
    return event


PERFECT = {
    "title": "Psychologist",
    "company": {"industry": "University", "employee_count": 5000},
    "address": {"country": "US"},
}


def run(events: list[dict], model=None, contact: str = "c1") -> tuple[dict, list[dict]]:
    model = model or default_model()
    state = new_state(contact)
    out: list[dict] = []
    for e in events:
        out.extend(apply_event(state, e, model))
    return state, out


def types(triggers: list[dict]) -> list[str]:
    return [t["type"] for t in triggers]
