"""Segment HTTP Tracking API payloads -> normalised leadpulse events (pure, no I/O).

Accepts the calls of Segment's spec (track, page, screen, identify, alias, group;
batch is split by the route) as sent by analytics.js, analytics-python, RudderStack
SDKs and the like, validates them with pydantic and returns event dicts as
described in DESIGN.md section 3.

Event time follows Segment's clock-skew correction: when the client says when it
sent the call (``sentAt``) the event time is
``receivedAt - (sentAt - timestamp)``, so a phone whose clock is an hour off still
lands its events at the right moment. Which client time is corrected follows Segment's
spec (Spec: Common Fields, Timestamps): ``originalTimestamp`` when given (a call that
already went through Segment carries its corrected ``timestamp`` next to the client's
``originalTimestamp``), else ``timestamp`` (what analytics.js and the server libraries
send); without ``sentAt`` the given time is taken as is (historical import); without any
time the event happened when it was received.

A single call's type comes from its path (``/v1/track`` is a track call whatever the body
says); every call in a batch must name its ``type`` (Segment's HTTP API rule). A batch's
top-level ``context`` is merged into each call's context (the call's own keys win) and its
``sentAt`` applies to calls that do not carry their own: :func:`batch_item`.

>>> ev = normalise("track", {"messageId": "m1", "userId": "u1", "event": "Demo Requested",
...     "timestamp": "2026-11-23T10:00:00Z", "sentAt": "2026-11-23T10:00:05Z"},
...     received_at=1_795_428_010_000, source="segment")
>>> ev["type"], ev["name"], ev["contact_id"], ev["ts"]
('track', 'Demo Requested', 'u1', 1795428005000)
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from connectors.types import BadInput
from streams.events import LATEST_TS_MS

CALL_TYPES = ("track", "page", "screen", "identify", "alias", "group")
SHORT_PATHS = {"t": "track", "p": "page", "s": "screen", "i": "identify", "a": "alias", "g": "group", "b": "batch"}

# Keep ids and names sane; Segment itself caps messageId at 100 characters.
MAX_ID_LENGTH = 200
# Segment's HTTP API takes at most 2,500 calls in one batch request.
MAX_BATCH_CALLS = 2500
# Deepest nesting accepted in one call (orjson parses 1024 levels but writes only ~250).
MAX_DEPTH = 32


class SegmentCall(BaseModel):
    """The fields leadpulse reads from one Segment call; everything else is ignored."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    type: str | None = None
    message_id: str = Field(alias="messageId", min_length=1, max_length=MAX_ID_LENGTH)
    user_id: str | int | None = Field(None, alias="userId")
    anonymous_id: str | int | None = Field(None, alias="anonymousId")
    event: str | None = Field(None, max_length=MAX_ID_LENGTH)
    name: str | None = Field(None, max_length=MAX_ID_LENGTH)
    category: str | None = None
    previous_id: str | int | None = Field(None, alias="previousId")
    group_id: str | int | None = Field(None, alias="groupId")
    properties: dict[str, Any] = Field(default_factory=dict)
    traits: dict[str, Any] = Field(default_factory=dict)
    context: dict[str, Any] = Field(default_factory=dict)
    timestamp: datetime | None = None
    original_timestamp: datetime | None = Field(None, alias="originalTimestamp")
    sent_at: datetime | None = Field(None, alias="sentAt")

    @field_validator("properties", "traits", "context", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        return {} if value is None else value


def _ms(moment: datetime) -> int:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return int(moment.timestamp() * 1000)


def _id(value: str | int | None) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def event_time(call: SegmentCall, received_at: int) -> int:
    """Segment's skew correction ``receivedAt - (sentAt - originalTimestamp)``.

    The client time corrected is ``originalTimestamp`` when present, else ``timestamp``;
    without ``sentAt`` there is nothing to correct with, so the given time is used as is
    (``timestamp`` first: on a call that went through Segment it is already corrected);
    without any time the event happened when it was received.
    """
    if call.sent_at is not None:
        moment = call.original_timestamp or call.timestamp
        if moment is None:
            return received_at
        return received_at - (_ms(call.sent_at) - _ms(moment))
    moment = call.timestamp or call.original_timestamp
    return received_at if moment is None else _ms(moment)


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def batch_item(item: Any, batch: dict[str, Any]) -> Any:
    """One call of a ``/v1/batch`` body with the batch-level ``context`` and ``sentAt`` applied."""
    if not isinstance(item, dict):
        return item
    shared = batch.get("context")
    if isinstance(shared, dict) and shared:
        own = item.get("context")
        item = {**item, "context": _deep_merge(shared, own) if isinstance(own, dict) else shared}
    if item.get("sentAt") is None and batch.get("sentAt") is not None:
        item = {**item, "sentAt": batch["sentAt"]}
    return item


def nesting_problem(payload: dict[str, Any], limit: int = MAX_DEPTH) -> BadInput | None:
    """A :class:`BadInput` naming the top-level field nested deeper than ``limit`` levels, else None."""
    # Runs on every event the collector takes: scalars (most fields) cost one check, and
    # only containers go on the stack.
    containers = (dict, list)
    for field, value in payload.items():
        if not isinstance(value, containers):
            continue
        stack = [(value, 2)]
        while stack:
            node, depth = stack.pop()
            if depth > limit:
                return BadInput(f"{field}: nested deeper than {limit} levels", field=str(field))
            for child in node.values() if isinstance(node, dict) else node:
                if isinstance(child, containers):
                    stack.append((child, depth + 1))
    return None


def bounded(value: Any, depth: int = MAX_DEPTH) -> Any:
    """A JSON-writable copy of ``value`` with what lies below ``depth`` levels replaced by a marker.

    Used for DLQ records of refused input, which may be nested deeper than orjson writes.
    """
    if isinstance(value, (dict, list)):
        if depth <= 0:
            return f"<nested deeper than {MAX_DEPTH} levels>"
        if isinstance(value, dict):
            return {str(k): bounded(v, depth - 1) for k, v in value.items()}
        return [bounded(v, depth - 1) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)[:1000]


def _first_error(exc: ValidationError) -> BadInput:
    err = exc.errors()[0]
    # The top-level field names the culprit; deeper parts of loc are union members ("str", "int").
    field = str(err["loc"][0]) if err["loc"] else None
    aliases = {
        "message_id": "messageId", "user_id": "userId", "anonymous_id": "anonymousId", "sent_at": "sentAt",
        "original_timestamp": "originalTimestamp", "previous_id": "previousId", "group_id": "groupId",
    }
    field = aliases.get(field or "", field)
    return BadInput(f"{field}: {err['msg']}" if field else err["msg"], field=field)


def normalise(
    call_type: str | None, payload: Any, *, received_at: int, source: str, nesting_checked: bool = False,
) -> dict[str, Any]:
    """One Segment call -> one normalised event; raises :class:`BadInput` naming the field.

    ``call_type`` is the type the path names; ``None`` (a batch item) takes it from the
    call's ``type``, which is then required. ``nesting_checked``: the caller already ran
    :func:`nesting_problem` on ``payload`` (the batch handler must, before measuring it).
    """
    if not isinstance(payload, dict):
        raise BadInput("each call must be a JSON object")
    too_deep = None if nesting_checked else nesting_problem(payload)
    if too_deep is not None:
        raise too_deep
    if call_type is None:
        call_type = payload.get("type")
        if not call_type:
            raise BadInput("type: every call in a batch needs a type", field="type")
    if call_type not in CALL_TYPES:
        raise BadInput(f"type: unknown call type {call_type!r}", field="type")
    try:
        call = SegmentCall.model_validate(payload)
    except ValidationError as exc:
        raise _first_error(exc) from None
    contact_id = _id(call.user_id)
    anonymous_id = _id(call.anonymous_id)
    if call_type == "alias":
        previous = _id(call.previous_id)
        if not contact_id or not previous:
            raise BadInput("alias needs userId and previousId", field="previousId" if contact_id else "userId")
        anonymous_id = anonymous_id or previous
    if not contact_id and not anonymous_id:
        raise BadInput("userId or anonymousId is required", field="userId")

    properties = dict(call.properties)
    # context.traits describe the user on any call (RudderStack's identify sends its traits
    # only there); top-level traits win over them.
    context_traits = call.context.get("traits")
    traits = _deep_merge(context_traits, call.traits) if isinstance(context_traits, dict) else dict(call.traits)
    name: str | None = None
    if call_type == "track":
        if not call.event:
            raise BadInput("event: a track call needs an event name", field="event")
        kind, name = "track", call.event
    elif call_type in ("page", "screen"):
        kind = "page_view"
        page = call.context.get("page") if isinstance(call.context.get("page"), dict) else {}
        for key in ("path", "url", "title", "referrer"):
            if key not in properties and page.get(key) is not None:
                properties[key] = page[key]
        if call.name:
            properties.setdefault("name", call.name)
        if call.category:
            properties.setdefault("category", call.category)
        if call_type == "screen":
            properties.setdefault("screen", True)
    elif call_type == "alias":
        kind = "alias"
        properties["previous_id"] = _id(call.previous_id)
    elif call_type == "group":
        kind = "group"
        properties["group_id"] = _id(call.group_id)
        if not properties["group_id"]:
            raise BadInput("groupId: a group call needs a groupId", field="groupId")
    else:
        kind = "identify"

    ts = event_time(call, received_at)
    if not 0 < ts <= LATEST_TS_MS:  # the worker's bound (year 9999, within JSON's safe integers)
        field = "sentAt" if call.sent_at is not None else "timestamp"
        raise BadInput(f"{field}: the corrected event time is not after 1970", field=field)

    event: dict[str, Any] = {
        "id": call.message_id,
        "type": kind,
        "contact_id": contact_id,
        "anonymous_id": anonymous_id,
        "ts": ts,
        "received_at": received_at,
        "source": source,
        "traits": traits,
        "properties": properties,
    }
    if name is not None:
        event["name"] = name
    user_agent = call.context.get("userAgent")
    ip = call.context.get("ip")
    if user_agent or ip:
        event["context"] = {k: v for k, v in (("user_agent", user_agent), ("ip", ip)) if v}
    return event
