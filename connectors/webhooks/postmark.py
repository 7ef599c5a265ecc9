"""Postmark webhooks: HTTP Basic auth on the webhook URL and mapping by ``RecordType``.

Postmark signs nothing; its documented protection is Basic auth credentials in the webhook
URL (``https://user:password@host/webhooks/postmark``), which Postmark sends as an
``Authorization: Basic`` header. User and password are both compared in constant time (both
comparisons always run) before the body is read as JSON.

Mapping (``contact_id`` = ``Recipient``, or ``Email`` for bounces/complaints, lowercased):

==================  ==============================================  ==========================
RecordType          normalised type / properties                    ``ts`` from
==================  ==============================================  ==========================
Open                email_open: first_open (``FirstOpen``),         ReceivedAt
                    platform, user_agent, read_seconds
Click               email_click: url (``OriginalLink``),            ReceivedAt
                    click_location, platform, user_agent
Bounce              email_bounce: ``bounce_type`` "hard" for        BouncedAt
                    ``Type`` HardBounce, else "soft"; postmark_type
SpamComplaint       spam_report                                     BouncedAt
SubscriptionChange  unsubscribe when ``SuppressSending`` is true    ChangedAt
                    (suppression_reason, origin); a reactivation
                    (false) is counted as ignored: no event type
                    models a resubscribe
Delivery            email_delivered                                 DeliveredAt
==================  ==============================================  ==========================

Event ids. Postmark has no per-event id, so ``id`` = ``MessageID:RecordType:recipient`` plus
what keeps distinct events distinct while staying identical on Postmark's retries of one event:

- Open: ``:ReceivedAt`` (with PostFirstOpenOnly off every open of one message is posted),
- Click: ``:OriginalLink:ReceivedAt`` (several links, or one link clicked twice),
- Bounce / SpamComplaint: ``:ID`` (Postmark's bounce id),
- SubscriptionChange: ``:ChangedAt``; ``MessageID`` is null for manual suppressions, then
  ``manual`` stands in for it.

The recipient is part of the id because one Postmark message can have several recipients.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Mapping
from typing import Any

from connectors.webhooks.common import (
    AuthFailure,
    ItemProblem,
    ItemRejected,
    Outcome,
    PayloadError,
    decode_json,
    email_contact,
    header,
    iso_to_ms,
    make_event,
    require_str,
    scalar_dict,
    short_str,
)

SOURCE = "postmark"
REALM = 'Basic realm="leadpulse postmark webhook"'

_TIME_FIELD = {
    "Open": "ReceivedAt",
    "Click": "ReceivedAt",
    "Bounce": "BouncedAt",
    "SpamComplaint": "BouncedAt",
    "SubscriptionChange": "ChangedAt",
    "Delivery": "DeliveredAt",
}
_TYPE = {
    "Open": "email_open",
    "Click": "email_click",
    "Bounce": "email_bounce",
    "SpamComplaint": "spam_report",
    "SubscriptionChange": "unsubscribe",
    "Delivery": "email_delivered",
}


class PostmarkReceiver:
    """Checks the Basic-auth credentials and maps Postmark webhook records."""

    source = SOURCE
    content_types = ("application/json",)

    def __init__(self, user: str, password: str) -> None:
        if not user or not password:
            raise ValueError("postmark webhook user and password must both be set")
        self._user = user.encode("utf-8")
        self._password = password.encode("utf-8")

    def verify(self, headers: Mapping[str, str]) -> None:
        value = header(headers, "Authorization") or ""
        scheme, _, encoded = value.strip().partition(" ")
        if scheme.lower() != "basic" or not encoded:
            raise AuthFailure("missing Basic credentials", code="missing_credentials", status=401, field="Authorization")
        try:
            user, sep, password = base64.b64decode(encoded.strip(), validate=True).partition(b":")
        except (binascii.Error, ValueError):
            raise AuthFailure("malformed Basic credentials", code="bad_credentials", status=401, field="Authorization") from None
        # Both comparisons always run so the timing does not tell which half was wrong.
        user_ok = hmac.compare_digest(user, self._user)
        password_ok = hmac.compare_digest(password, self._password)
        if not (sep and user_ok and password_ok):
            raise AuthFailure("wrong Basic credentials", code="bad_credentials", status=401, field="Authorization")

    async def receive(self, headers: Mapping[str, str], raw: bytes, received_at: int) -> Outcome:
        self.verify(headers)
        return parse_record(decode_json(raw, trusted=True), received_at)


def parse_record(payload: Any, received_at: int) -> Outcome:
    if not isinstance(payload, dict):
        raise PayloadError("body must be a JSON object", code="invalid_payload", field="body", payload=payload)
    outcome = Outcome()
    try:
        event = map_record(payload, received_at)
    except ItemRejected as exc:
        outcome.problems.append(ItemProblem(None, exc.reason, exc.code, exc.field, payload))
        return outcome
    outcome.keep(event)
    return outcome


def map_record(record: dict[str, Any], received_at: int) -> dict[str, Any] | str:
    kind = record.get("RecordType")
    if not isinstance(kind, str) or not kind:
        raise ItemRejected("RecordType: missing", field="RecordType", code="missing_field")
    if kind not in _TYPE:
        return "unknown_record_type"
    recipient_field = "Email" if kind in ("Bounce", "SpamComplaint") else "Recipient"
    contact_id = email_contact(record.get(recipient_field), recipient_field)
    time_field = _TIME_FIELD[kind]
    ts = iso_to_ms(record.get(time_field), time_field)
    if kind == "SubscriptionChange":
        if record.get("SuppressSending") is not True:
            if record.get("SuppressSending") is False:
                return "ignored_reactivation"
            raise ItemRejected("SuppressSending: must be true or false", field="SuppressSending", code="invalid_field")
        message_id = record.get("MessageID") or "manual"
        if not isinstance(message_id, str):
            raise ItemRejected("MessageID: not a string", field="MessageID", code="invalid_field")
    else:
        message_id = require_str(record, "MessageID")
    event_id = f"{message_id}:{kind}:{contact_id}"
    properties: dict[str, Any] = {
        "message_id": message_id if message_id != "manual" else None,
        "message_stream": short_str(record.get("MessageStream"), 100),
        "tag": short_str(record.get("Tag"), 200),
        "metadata": scalar_dict(record.get("Metadata")),
    }
    if kind == "Open":
        event_id += f":{record[time_field]}"
        read_seconds = record.get("ReadSeconds")
        properties.update(
            {
                "first_open": record.get("FirstOpen") is True,
                "platform": short_str(record.get("Platform"), 64),
                "user_agent": short_str(record.get("UserAgent")),
                "read_seconds": read_seconds if isinstance(read_seconds, int) and not isinstance(read_seconds, bool) else None,
            }
        )
    elif kind == "Click":
        link = require_str(record, "OriginalLink", max_chars=4000)
        event_id += f":{link}:{record[time_field]}"
        properties.update(
            {
                "url": link,
                "click_location": short_str(record.get("ClickLocation"), 32),
                "platform": short_str(record.get("Platform"), 64),
                "user_agent": short_str(record.get("UserAgent")),
            }
        )
    elif kind in ("Bounce", "SpamComplaint"):
        bounce_id = record.get("ID")
        if isinstance(bounce_id, bool) or not isinstance(bounce_id, (int, str)) or bounce_id == "":
            raise ItemRejected("ID: missing bounce id", field="ID", code="missing_field")
        event_id += f":{bounce_id}"
        postmark_type = short_str(record.get("Type"), 64)
        properties["postmark_type"] = postmark_type
        properties["description"] = short_str(record.get("Description"))
        if kind == "Bounce":
            properties["bounce_type"] = "hard" if postmark_type == "HardBounce" else "soft"
    elif kind == "SubscriptionChange":
        event_id += f":{record[time_field]}"
        properties["suppression_reason"] = short_str(record.get("SuppressionReason"), 64)
        properties["origin"] = short_str(record.get("Origin"), 64)
    return make_event(
        event_id=event_id,
        event_type=_TYPE[kind],
        contact_id=contact_id,
        ts=ts,
        received_at=received_at,
        source=SOURCE,
        properties=properties,
    )
