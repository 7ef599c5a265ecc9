"""CRM and sales feedback: ``POST /v1/crm/events`` -> ``crm_update`` / ``sales_feedback`` events.

These events feed suppression (customer, active sales conversation) and the MQL handoff flow
(DESIGN.md section 5). Body: one object, or ``{"batch": [object, ...], "writeKey": ...}``.

Common fields of every object::

    type        "stage_change" | "sales_conversation" | "customer" | "feedback"   (required)
    contact_id  the contact (required; lowercased when it is an e-mail address, so it
                joins the ESP events, whose contact id is the recipient address)
    timestamp   ISO-8601 (e.g. "2024-05-01T09:30:00Z", naive = UTC) or epoch ms  (required)
    id          idempotency key (optional); when missing a deterministic one is derived:
                "crm:" + sha256 of (type, contact_id, ts, traits, properties), so a CRM
                re-sending the same change produces the same id and is deduped downstream
    in_sales_conversation, customer   optional bools, merged into the traits of any crm_update
    properties  optional object of extra context (at most 8 levels deep)
    writeKey    optional; alternatively the write key is the HTTP Basic user

Per type::

    stage_change        stage: lead | opportunity | closed_won | closed_lost | customer
                        (case, spaces and dashes are forgiven: "Closed Won" -> closed_won;
                        "won"/"lost" also accepted). -> crm_update, traits.lifecycle_stage;
                        stage "customer" also sets traits.customer = true unless given.
    sales_conversation  active: bool -> crm_update, traits.in_sales_conversation
    customer            customer: bool (default true) -> crm_update, traits.customer
    feedback            decision: "accept" | "reject", reason (required for reject),
                        trigger_id (the MQL trigger answered, optional), by (SDR, optional)
                        -> sales_feedback, properties {decision, reason, trigger_id, by}

Authentication mirrors the Segment API: the write key is the HTTP Basic user (empty password)
or ``writeKey`` in the body (top level of a batch); ``settings.write_keys`` maps key -> source.
Events carry ``source`` "crm"; a key mapped to another source than the default "segment" puts
that name in ``properties.origin`` (e.g. "hubspot").
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping
from typing import Annotated, Any, Literal, Union

import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator

from connectors.webhooks.common import (
    MAX_TS_MS,
    AuthFailure,
    ItemProblem,
    ItemRejected,
    Outcome,
    PayloadError,
    decode_json,
    header,
    iso_to_ms,
    make_event,
)

SOURCE = "crm"
MAX_PROPERTY_DEPTH = 8
MAX_BATCH_ITEMS = 1000
# Epoch ms below this (1973-03-03) are almost certainly epoch *seconds* sent by mistake.
MIN_EPOCH_MS = 100_000_000_000

STAGES = ("lead", "opportunity", "closed_won", "closed_lost", "customer")
_STAGE_SYNONYMS = {
    "won": "closed_won",
    "closedwon": "closed_won",
    "lost": "closed_lost",
    "closedlost": "closed_lost",
    "opportunity_open": "opportunity",
    "open_opportunity": "opportunity",
}


def _depth(value: Any, limit: int, level: int = 1) -> int:
    """Nesting depth of ``value``, stopping early once ``limit`` is exceeded."""
    if level > limit:
        return level
    if isinstance(value, dict):
        return max((_depth(v, limit, level + 1) for v in value.values()), default=level)
    if isinstance(value, list):
        return max((_depth(v, limit, level + 1) for v in value), default=level)
    return level - 1


class _CrmBase(BaseModel):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True, frozen=True)

    contact_id: str = Field(min_length=1, max_length=320)
    timestamp: Union[int, str]
    id: str | None = Field(None, min_length=1, max_length=256)
    in_sales_conversation: bool | None = None
    customer: bool | None = None
    properties: dict[str, Any] = Field(default_factory=dict)

    @field_validator("timestamp")
    @classmethod
    def _to_ms(cls, value: int | str) -> int:
        if isinstance(value, bool):
            raise ValueError("must be ISO-8601 or epoch milliseconds")
        if isinstance(value, int):
            if value < MIN_EPOCH_MS:
                raise ValueError("epoch milliseconds expected (this looks like seconds)")
            if value >= MAX_TS_MS:
                raise ValueError("not a plausible epoch time in milliseconds")
            return value
        if value.isdigit():
            return cls._to_ms(int(value))
        try:
            return iso_to_ms(value, "timestamp")
        except ItemRejected:
            raise ValueError("must be ISO-8601 or epoch milliseconds") from None

    @field_validator("properties")
    @classmethod
    def _shallow(cls, value: dict[str, Any]) -> dict[str, Any]:
        if _depth(value, MAX_PROPERTY_DEPTH) > MAX_PROPERTY_DEPTH:
            raise ValueError(f"nested deeper than {MAX_PROPERTY_DEPTH} levels")
        return value

    @field_validator("contact_id")
    @classmethod
    def _contact(cls, value: str) -> str:
        return value.lower() if "@" in value else value

    def traits(self) -> dict[str, Any]:
        traits: dict[str, Any] = {}
        if self.in_sales_conversation is not None:
            traits["in_sales_conversation"] = self.in_sales_conversation
        if self.customer is not None:
            traits["customer"] = self.customer
        return traits


class StageChange(_CrmBase):
    type: Literal["stage_change"]
    stage: str

    @field_validator("stage")
    @classmethod
    def _stage(cls, value: str) -> str:
        key = "_".join(value.lower().replace("-", " ").split())
        key = _STAGE_SYNONYMS.get(key, key)
        if key not in STAGES:
            raise ValueError(f"must be one of {', '.join(STAGES)}")
        return key

    def traits(self) -> dict[str, Any]:
        traits = {"lifecycle_stage": self.stage, **super().traits()}
        if self.stage == "customer":
            traits.setdefault("customer", True)
        return traits


class SalesConversation(_CrmBase):
    type: Literal["sales_conversation"]
    active: bool

    def traits(self) -> dict[str, Any]:
        return {**super().traits(), "in_sales_conversation": self.active}


class CustomerFlag(_CrmBase):
    type: Literal["customer"]
    customer: bool | None = True


class Feedback(_CrmBase):
    type: Literal["feedback"]
    decision: Literal["accept", "reject"]
    reason: str | None = Field(None, max_length=2000)
    trigger_id: str | None = Field(None, max_length=256)
    by: str | None = Field(None, max_length=320)

    @field_validator("decision", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _reason_for_reject(self) -> "Feedback":
        if self.decision == "reject" and not self.reason:
            raise ValueError("reason is required when decision is reject")
        return self


CrmEvent = Annotated[Union[StageChange, SalesConversation, CustomerFlag, Feedback], Field(discriminator="type")]
_ADAPTER: TypeAdapter[Any] = TypeAdapter(CrmEvent)


def _problem_from(exc: ValidationError) -> tuple[str, str | None]:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("stage_change", "sales_conversation", "customer", "feedback"))
    message = str(err.get("msg", "invalid"))
    if err.get("type") == "union_tag_invalid":
        message = "must be one of stage_change, sales_conversation, customer, feedback"
        loc = "type"
    elif err.get("type") == "union_tag_not_found":
        message = "missing"
        loc = "type"
    return (f"{loc}: {message}" if loc else message), (loc or None)


def to_event(item: Any, received_at: int, *, origin: str | None = None) -> dict[str, Any]:
    """Validate one CRM object and map it to a normalised event (raises ItemRejected)."""
    if not isinstance(item, dict):
        raise ItemRejected("event is not a JSON object", code="invalid_event")
    try:
        model = _ADAPTER.validate_python(item)
    except ValidationError as exc:
        reason, field = _problem_from(exc)
        raise ItemRejected(reason, field=field, code="invalid_field") from None
    ts = model.timestamp
    assert isinstance(ts, int)
    properties = dict(model.properties)
    if origin:
        properties["origin"] = origin
    if isinstance(model, Feedback):
        event_type, traits = "sales_feedback", {}
        properties.update({"decision": model.decision, "reason": model.reason, "trigger_id": model.trigger_id, "by": model.by})
    else:
        event_type, traits = "crm_update", model.traits()
    properties = {k: v for k, v in properties.items() if v is not None}
    event_id = model.id or derive_id(model.type, model.contact_id, ts, traits, properties)
    return make_event(
        event_id=event_id,
        event_type=event_type,
        contact_id=model.contact_id,
        ts=ts,
        received_at=received_at,
        source=SOURCE,
        properties=properties,
        traits=traits,
    )


def derive_id(kind: str, contact_id: str, ts: int, traits: dict[str, Any], properties: dict[str, Any]) -> str:
    """Deterministic idempotency key for CRM events sent without one."""
    body = orjson.dumps([kind, contact_id, ts, traits, properties], option=orjson.OPT_SORT_KEYS)
    return "crm:" + hashlib.sha256(body).hexdigest()[:32]


class CrmReceiver:
    """Authenticates with a write key and maps CRM objects or batches."""

    source = SOURCE
    content_types = ("application/json", "text/plain")

    def __init__(self, write_keys: Mapping[str, str]) -> None:
        self._keys = dict(write_keys)

    def _lookup(self, key: Any) -> str | None:
        """Mapped source of ``key``; every configured key is compared so timing leaks nothing."""
        if not isinstance(key, str) or not key:
            return None
        candidate = key.encode("utf-8")
        found: str | None = None
        for known, source in self._keys.items():
            if hmac.compare_digest(candidate, known.encode("utf-8")):
                found = source
        return found

    def header_key(self, headers: Mapping[str, str]) -> str | None:
        value = header(headers, "Authorization") or ""
        scheme, _, encoded = value.strip().partition(" ")
        if scheme.lower() != "basic" or not encoded:
            return None
        try:
            user, _, _password = base64.b64decode(encoded.strip(), validate=True).decode("utf-8").partition(":")
        except (binascii.Error, ValueError):
            raise AuthFailure("malformed Basic credentials", code="bad_credentials", status=401, field="Authorization") from None
        return user

    async def receive(self, headers: Mapping[str, str], raw: bytes, received_at: int) -> Outcome:
        key = self.header_key(headers)
        source = self._lookup(key) if key else None
        if key and source is None:
            raise AuthFailure("unknown write key", code="bad_write_key", status=401, field="writeKey")
        payload = decode_json(raw, trusted=source is not None)
        if source is None:
            body_key = payload.get("writeKey") if isinstance(payload, dict) else None
            if body_key is None:
                raise AuthFailure("missing write key (HTTP Basic user or writeKey)", code="missing_write_key", status=401, field="writeKey")
            source = self._lookup(body_key)
            if source is None:
                raise AuthFailure("unknown write key", code="bad_write_key", status=401, field="writeKey")
        origin = source if source not in ("segment", SOURCE) else None
        return parse_body(payload, received_at, origin=origin)


def parse_body(payload: Any, received_at: int, *, origin: str | None = None) -> Outcome:
    if not isinstance(payload, dict):
        raise PayloadError("body must be a JSON object", code="invalid_payload", field="body", payload=payload)
    if "batch" in payload:
        items = payload["batch"]
        if not isinstance(items, list) or not items:
            raise PayloadError("batch: must be a non-empty array", code="invalid_payload", field="batch", payload=payload)
        if len(items) > MAX_BATCH_ITEMS:
            raise PayloadError(f"batch: more than {MAX_BATCH_ITEMS} events", code="invalid_payload", field="batch", status=413, payload=payload)
        indexed: list[tuple[int | None, Any]] = list(enumerate(items))
    else:
        indexed = [(None, payload)]
    outcome = Outcome()
    for index, item in indexed:
        try:
            outcome.events.append(to_event(item, received_at, origin=origin))
        except ItemRejected as exc:
            prefix = f"batch[{index}]." if index is not None else ""
            field = f"{prefix}{exc.field}" if exc.field else (prefix.rstrip(".") or None)
            outcome.problems.append(ItemProblem(index, f"{prefix}{exc.reason}", exc.code, field, item))
    return outcome
