"""SendGrid Event Webhook: ECDSA verification on the raw body and mapping to normalised events.

Verification (SendGrid "Signed Event Webhook"): ``X-Twilio-Email-Event-Webhook-Signature`` is a
base64 DER ECDSA P-256 / SHA-256 signature over ``X-Twilio-Email-Event-Webhook-Timestamp`` (epoch
seconds, as sent) immediately followed by the raw request body. The public key comes from the
settings as SendGrid shows it (base64 DER SubjectPublicKeyInfo) or as PEM. SendGrid documents no
freshness window, so timestamps further than ``tolerance_ms`` (default 5 min) from now, either
way, are refused: a captured request cannot be replayed later.

The body is a JSON array of events. Mapping (``id`` = ``sg_event_id``, ``ts`` = ``timestamp`` *
1000, ``contact_id`` = ``email`` lowercased):

=====================================  =============================================
SendGrid ``event``                     normalised ``type`` / properties
=====================================  =============================================
open                                   email_open, ``machine_open`` = ``sg_machine_open``
                                       (Apple Mail Privacy Protection prefetch), useragent, ip
click                                  email_click, url, useragent, ip
delivered                              email_delivered
bounce                                 email_bounce, ``bounce_type`` "hard" for SendGrid
                                       ``type`` "bounce", "soft" for "blocked" (or absent)
dropped                                email_bounce, ``bounce_type`` "soft", ``dropped`` true,
                                       reason: the message never reached the contact, but the
                                       suppression SendGrid applied is already reported by the
                                       original bounce/unsubscribe/spam event, so a drop must not
                                       suppress on its own (hence soft)
spamreport                             spam_report
unsubscribe, group_unsubscribe         unsubscribe (``asm_group_id`` for group unsubscribes)
processed, deferred, group_resubscribe counted as ignored (no scoring meaning), not dead-lettered
anything else                          counted as ignored ``unknown_event``
=====================================  =============================================

Every event also carries ``sg_message_id`` and, when present, SendGrid ``category`` (list or str).
An item that is not an object or lacks ``sg_event_id``/``email``/``timestamp`` is rejected on its
own (dead-lettered); the rest of the array is still accepted, because SendGrid retries whole
batches and a bad item would never get better.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from connectors.webhooks.common import (
    AuthFailure,
    ItemProblem,
    ItemRejected,
    Outcome,
    PayloadError,
    decode_json,
    email_contact,
    header,
    make_event,
    require_str,
    seconds_to_ms,
    short_str,
)

SOURCE = "sendgrid"
SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"
DEFAULT_TOLERANCE_MS = 5 * 60_000

_DIRECT = {
    "open": "email_open",
    "click": "email_click",
    "delivered": "email_delivered",
    "bounce": "email_bounce",
    "dropped": "email_bounce",
    "spamreport": "spam_report",
    "unsubscribe": "unsubscribe",
    "group_unsubscribe": "unsubscribe",
}
_IGNORED = frozenset({"processed", "deferred", "group_resubscribe"})


def load_public_key(text: str) -> ec.EllipticCurvePublicKey:
    """Parse the key as SendGrid shows it (base64 DER) or as PEM; must be an EC P-256 key."""
    text = text.strip()
    try:
        if text.startswith("-----BEGIN"):
            key = serialization.load_pem_public_key(text.encode("ascii"))
        else:
            key = serialization.load_der_public_key(base64.b64decode("".join(text.split()), validate=True))
    except (ValueError, binascii.Error, TypeError, UnicodeEncodeError) as exc:
        raise ValueError(f"sendgrid_public_key is not a base64 DER or PEM public key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValueError("sendgrid_public_key must be an ECDSA P-256 public key")
    return key


class SendGridReceiver:
    """Verifies and maps SendGrid Event Webhook requests."""

    source = SOURCE
    content_types = ("application/json",)

    def __init__(
        self,
        public_key: str | ec.EllipticCurvePublicKey,
        *,
        now_ms: Callable[[], int],
        tolerance_ms: int = DEFAULT_TOLERANCE_MS,
    ) -> None:
        self._key = load_public_key(public_key) if isinstance(public_key, str) else public_key
        self._now = now_ms
        self._tolerance = tolerance_ms

    def verify(self, headers: Mapping[str, str], raw: bytes) -> None:
        signature_b64 = header(headers, SIGNATURE_HEADER)
        timestamp = header(headers, TIMESTAMP_HEADER)
        if not signature_b64 or not timestamp:
            raise AuthFailure(
                f"missing {SIGNATURE_HEADER} or {TIMESTAMP_HEADER} header",
                code="missing_signature",
                status=401,
                field=SIGNATURE_HEADER if not signature_b64 else TIMESTAMP_HEADER,
            )
        timestamp = timestamp.strip()
        if not timestamp.isdigit() or len(timestamp) > 12:
            raise AuthFailure("timestamp header is not epoch seconds", code="bad_timestamp", status=403, field=TIMESTAMP_HEADER)
        try:
            signature = base64.b64decode(signature_b64.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise AuthFailure("signature is not base64", code="bad_signature", status=403, field=SIGNATURE_HEADER) from None
        try:
            # The signed content is the timestamp exactly as sent plus the untouched body bytes.
            self._key.verify(signature, timestamp.encode("ascii") + raw, ec.ECDSA(hashes.SHA256()))
        except (InvalidSignature, ValueError):
            raise AuthFailure("signature does not match", code="bad_signature", status=403, field=SIGNATURE_HEADER) from None
        # Checked after the signature so that an attacker cannot probe the clock for free,
        # and so a stale but genuine request is reported as stale.
        if abs(self._now() - int(timestamp) * 1000) > self._tolerance:
            raise AuthFailure("timestamp outside the allowed window", code="stale_timestamp", status=403, field=TIMESTAMP_HEADER)

    async def receive(self, headers: Mapping[str, str], raw: bytes, received_at: int) -> Outcome:
        self.verify(headers, raw)
        return parse_events(decode_json(raw, trusted=True), received_at)


def parse_events(payload: Any, received_at: int) -> Outcome:
    """Map a decoded SendGrid body (a JSON array) to an :class:`Outcome`."""
    if not isinstance(payload, list):
        raise PayloadError("body must be a JSON array of events", code="invalid_payload", field="body", payload=payload)
    outcome = Outcome()
    for index, item in enumerate(payload):
        try:
            event = map_event(item, received_at)
        except ItemRejected as exc:
            outcome.problems.append(ItemProblem(index, f"[{index}] {exc.reason}", exc.code, exc.field, item))
            continue
        outcome.keep(event)
    return outcome


def map_event(item: Any, received_at: int) -> dict[str, Any] | str:
    """One SendGrid event -> a normalised event, or the ignore code when it has no meaning here."""
    if not isinstance(item, dict):
        raise ItemRejected("event is not a JSON object", code="invalid_event")
    name = item.get("event")
    if not isinstance(name, str) or not name:
        raise ItemRejected("event: missing event name", field="event", code="missing_field")
    if name in _IGNORED:
        return f"ignored_{name}"
    event_type = _DIRECT.get(name)
    if event_type is None:
        return "unknown_event"
    event_id = require_str(item, "sg_event_id")
    contact_id = email_contact(item.get("email"), "email")
    ts = seconds_to_ms(item.get("timestamp"), "timestamp")
    properties: dict[str, Any] = {
        "sg_message_id": short_str(item.get("sg_message_id"), 512),
        "esp_event": name,
    }
    category = item.get("category")
    if isinstance(category, str):
        properties["category"] = [category[:200]]
    elif isinstance(category, list):
        properties["category"] = [str(c)[:200] for c in category[:20] if isinstance(c, (str, int))]
    if name in ("open", "click"):
        properties["useragent"] = short_str(item.get("useragent"))
        properties["ip"] = short_str(item.get("ip"), 64)
    if name == "open":
        properties["machine_open"] = item.get("sg_machine_open") is True
    elif name == "click":
        properties["url"] = short_str(item.get("url"), 4000)
    elif name == "bounce":
        # SendGrid: type "bounce" is a hard bounce, "blocked" a block (temporary, soft).
        properties["bounce_type"] = "hard" if item.get("type") == "bounce" else "soft"
        properties["reason"] = short_str(item.get("reason"))
        properties["status"] = short_str(item.get("status"), 32)
        properties["bounce_classification"] = short_str(item.get("bounce_classification"), 64)
    elif name == "dropped":
        properties["bounce_type"] = "soft"
        properties["dropped"] = True
        properties["reason"] = short_str(item.get("reason"))
    elif name == "group_unsubscribe":
        group = item.get("asm_group_id")
        if isinstance(group, int) and not isinstance(group, bool):
            properties["asm_group_id"] = group
    return make_event(
        event_id=event_id,
        event_type=event_type,
        contact_id=contact_id,
        ts=ts,
        received_at=received_at,
        source=SOURCE,
        properties=properties,
    )
