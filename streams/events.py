"""The normalised event model that travels on ``leadpulse-events`` (DESIGN.md section 3).

Events are plain dicts (orjson in, orjson out): pydantic validates at the HTTP edge,
and the hot path only runs :func:`event_problem`, a cheap structural check, on
records that other producers may have written.

A Kafka record on the events topic is either one event (a JSON object) or an
*envelope*: a JSON array of events that all belong to that record's partition.

>>> decode_record(encode_envelope([{"id": "a"}, {"id": "b"}]))
[{'id': 'a'}, {'id': 'b'}]
>>> contact_key({"contact_id": None, "anonymous_id": "x1"})
'anon:x1'
"""

from __future__ import annotations

from typing import Any, TypedDict

import orjson

from rules.schema import EVENT_SIGNALS

ANONYMOUS_PREFIX = "anon:"

# What the engine understands, plus "track": a Segment track call whose event name the
# model maps to a signal (or scores 0 when it does not).
EVENT_TYPES = EVENT_SIGNALS | {"track"}

IDENTITY_TYPES = frozenset({"identify", "alias"})


class Event(TypedDict):
    """One normalised event; see DESIGN.md section 3."""

    id: str
    type: str
    contact_id: str | None
    anonymous_id: str | None
    ts: int
    received_at: int
    source: str
    traits: dict[str, Any]
    properties: dict[str, Any]


def contact_key(event: dict[str, Any]) -> str:
    """The Kafka key of an event: its contact id, else ``anon:<anonymous id>``."""
    contact_id = event.get("contact_id")
    if contact_id:
        return str(contact_id)
    return ANONYMOUS_PREFIX + str(event.get("anonymous_id"))


# The latest event time an event may carry: the end of the year 9999, the latest any connector
# accepts. It also keeps every time within the engine's 64-bit arithmetic (rules/engine.py).
LATEST_TS_MS = 253_402_300_799_999


def event_problem(event: Any) -> str | None:
    """Return why ``event`` is not a usable normalised event, or ``None`` when it is."""
    # Runs on every event: exact type checks (orjson yields exact types, and ``bool`` must
    # not pass for an int), one dict lookup per field.
    if type(event) is not dict:
        return "event is not a JSON object"
    event_id = event.get("id")
    if type(event_id) is not str or not event_id:
        return "id: missing or not a non-empty string"
    if event.get("type") not in EVENT_TYPES:
        return f"type: unknown event type {event.get('type')!r}"
    if not event.get("contact_id") and not event.get("anonymous_id"):
        return "contact_id/anonymous_id: one of them is required"
    ts = event.get("ts")
    if type(ts) is not int or not 0 < ts <= LATEST_TS_MS:
        return "ts: missing or not epoch milliseconds (up to the year 9999)"
    traits = event.get("traits")
    if traits is not None and type(traits) is not dict:
        return "traits: must be an object"
    properties = event.get("properties")
    if properties is not None and type(properties) is not dict:
        return "properties: must be an object"
    return None


def encode_event(event: dict[str, Any]) -> bytes:
    return orjson.dumps(event)


def encode_envelope(events: list[dict[str, Any]]) -> bytes:
    """Pack events that share a partition into one record (a JSON array)."""
    return orjson.dumps(events)


def decode_record(value: bytes) -> list[Any]:
    """Unpack one record into its events; raises ``orjson.JSONDecodeError`` on bad JSON."""
    decoded = orjson.loads(value)
    if isinstance(decoded, list):
        return decoded
    return [decoded]


# Last: run the compiled twin of this module when it was built from this exact file (rules/native.py).
from rules.native import adopt  # noqa: E402

adopt(globals())
