"""Segment HTTP Tracking API payloads -> normalised leadpulse events (pure, no I/O).

Accepts the calls of Segment's spec (track, page, screen, identify, alias, group;
batch is split by the route) as sent by analytics.js, analytics-python, RudderStack
SDKs and the like, validates them with pydantic and returns event dicts as
described in DESIGN.md section 3.

Event time follows Segment's clock-skew correction: when the client says when it
sent the call (``sentAt``) the event time is
``receivedAt - (sentAt - timestamp)``, so a phone whose clock is an hour off still
lands its events at the right moment.

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

CALL_TYPES = ("track", "page", "screen", "identify", "alias", "group")
SHORT_PATHS = {"t": "track", "p": "page", "s": "screen", "i": "identify", "a": "alias", "g": "group", "b": "batch"}

# Keep ids and names sane; Segment itself caps messageId at 100 characters.
MAX_ID_LENGTH = 200


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
    """Segment's skew correction; falls back to the receive time when the client gave none."""
    moment = call.timestamp or call.original_timestamp
    if moment is None:
        return received_at
    if call.sent_at is not None:
        return received_at - (_ms(call.sent_at) - _ms(moment))
    return _ms(moment)


def _first_error(exc: ValidationError) -> BadInput:
    err = exc.errors()[0]
    field = ".".join(str(part) for part in err["loc"]) or None
    aliases = {"message_id": "messageId", "user_id": "userId", "anonymous_id": "anonymousId", "sent_at": "sentAt"}
    field = aliases.get(field or "", field)
    return BadInput(f"{field}: {err['msg']}" if field else err["msg"], field=field)


def normalise(call_type: str, payload: Any, *, received_at: int, source: str) -> dict[str, Any]:
    """One Segment call -> one normalised event; raises :class:`BadInput` naming the field."""
    if not isinstance(payload, dict):
        raise BadInput("each call must be a JSON object")
    call_type = payload.get("type") or call_type
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
    traits = dict(call.traits) if call.traits else dict(call.context.get("traits") or {})
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
        if call_type == "screen":
            properties.setdefault("screen", True)
    elif call_type == "alias":
        kind = "alias"
        properties["previous_id"] = _id(call.previous_id)
    elif call_type == "group":
        kind = "group"
        properties["group_id"] = _id(call.group_id)
    else:
        kind = "identify"

    event: dict[str, Any] = {
        "id": call.message_id,
        "type": kind,
        "contact_id": contact_id,
        "anonymous_id": anonymous_id,
        "ts": event_time(call, received_at),
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
