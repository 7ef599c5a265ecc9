"""Mailgun webhooks: HMAC verification, staleness and replay checks, mapping of ``event-data``.

A Mailgun webhook body is JSON ``{"signature": {"timestamp", "token", "signature"},
"event-data": {...}}``. The signature is inside the body and covers only timestamp + token (not
the event data), so this is the one vendor where the body must be parsed before the sender is
known; parsing is bounded by the request size limit and orjson's nesting limit, and nothing is
dead-lettered before the signature checks out.

Verification: ``signature`` = hex HMAC-SHA256(signing key, timestamp + token), compared in
constant time; then the timestamp must be within ``tolerance_ms`` (default 5 min) of now; then
the token must not have been seen before (:mod:`connectors.webhooks.replay`, TTL = twice the
tolerance plus a minute, so a token cannot come back once its timestamp is still acceptable).
A replayed token is answered 406 because Mailgun documents that it stops retrying on 406: a
genuine retry of a request we already accepted must not loop, and downstream dedupe by event id
makes a lost duplicate harmless. If the broker then refuses the events (429/503), the token is
forgotten again so that Mailgun's retry of the same request is accepted.

Mapping (``id`` = ``event-data.id``, ``ts`` = ``event-data.timestamp`` * 1000 (float seconds),
``contact_id`` = ``recipient`` lowercased, ``message_id`` from ``message.headers.message-id``):

- opened -> email_open; clicked -> email_click (``url``). Both carry ``client-info``
  (user_agent, client_type, device_type) and ``machine_open`` / ``machine_click`` = whether
  Mailgun's bot detection set ``client-info.bot`` ("apple" = Apple MPP, "gmail", "generic"),
  with the value in ``bot``.
- delivered -> email_delivered.
- failed -> email_bounce, ``bounce_type`` "hard" for ``severity`` "permanent", "soft" for
  "temporary"; ``reason`` and the SMTP ``code``/``description`` from ``delivery-status``.
- complained -> spam_report; unsubscribed -> unsubscribe.
- accepted, rejected, stored, list events -> counted as ignored.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Mapping
from typing import Any

from connectors.webhooks.common import (
    AuthFailure,
    ItemProblem,
    ItemRejected,
    Outcome,
    PayloadError,
    decode_json,
    email_contact,
    make_event,
    require_str,
    scalar_dict,
    seconds_to_ms,
    short_str,
)
from connectors.webhooks.replay import ReplayGuard

SOURCE = "mailgun"
DEFAULT_TOLERANCE_MS = 5 * 60_000
MAX_TOKEN_CHARS = 256

_DIRECT = {
    "opened": "email_open",
    "clicked": "email_click",
    "delivered": "email_delivered",
    "failed": "email_bounce",
    "complained": "spam_report",
    "unsubscribed": "unsubscribe",
}


def compute_signature(signing_key: str, timestamp: str, token: str) -> str:
    return hmac.new(signing_key.encode("utf-8"), (timestamp + token).encode("utf-8"), hashlib.sha256).hexdigest()


class MailgunReceiver:
    """Verifies and maps Mailgun webhook requests."""

    source = SOURCE
    content_types = ("application/json",)

    def __init__(
        self,
        signing_key: str,
        *,
        replay_guard: ReplayGuard,
        now_ms: Callable[[], int],
        tolerance_ms: int = DEFAULT_TOLERANCE_MS,
    ) -> None:
        if not signing_key:
            raise ValueError("mailgun signing key is empty")
        self._key = signing_key
        self._guard = replay_guard
        self._now = now_ms
        self._tolerance = tolerance_ms

    def check_signature(self, payload: Any) -> str:
        """Verify signature and freshness; return the token (the replay check is async)."""
        block = payload.get("signature") if isinstance(payload, dict) else None
        if not isinstance(block, dict):
            raise AuthFailure("missing signature object", code="missing_signature", status=401, field="signature")
        timestamp, token, signature = block.get("timestamp"), block.get("token"), block.get("signature")
        if isinstance(timestamp, int) and not isinstance(timestamp, bool):
            timestamp = str(timestamp)
        for name, value in (("timestamp", timestamp), ("token", token), ("signature", signature)):
            if not isinstance(value, str) or not value:
                raise AuthFailure(f"signature.{name}: missing", code="missing_signature", status=401, field=f"signature.{name}")
        assert isinstance(timestamp, str) and isinstance(token, str) and isinstance(signature, str)
        if len(token) > MAX_TOKEN_CHARS or len(timestamp) > 12 or not timestamp.isdigit():
            raise AuthFailure("signature fields are malformed", code="bad_signature", status=403, field="signature")
        expected = compute_signature(self._key, timestamp, token)
        if not hmac.compare_digest(expected.encode("ascii"), signature.strip().lower().encode("utf-8", "replace")):
            raise AuthFailure("signature does not match", code="bad_signature", status=403, field="signature.signature")
        if abs(self._now() - int(timestamp) * 1000) > self._tolerance:
            raise AuthFailure("timestamp outside the allowed window", code="stale_timestamp", status=403, field="signature.timestamp")
        return token

    async def receive(self, headers: Mapping[str, str], raw: bytes, received_at: int) -> Outcome:
        # Not trusted yet: a body that is not JSON cannot carry a valid signature.
        payload = decode_json(raw, trusted=False)
        token = self.check_signature(payload)
        ttl = 2 * self._tolerance + 60_000
        if await self._guard.seen(token, ttl):
            raise AuthFailure("token already used (replayed request)", code="replayed", status=406, field="signature.token")
        try:
            outcome = parse_event_data(payload.get("event-data"), received_at)
        except BaseException:
            await self._guard.forget(token)
            raise

        async def release() -> None:
            await self._guard.forget(token)

        outcome.release = release
        return outcome


def parse_event_data(data: Any, received_at: int) -> Outcome:
    if not isinstance(data, dict):
        raise PayloadError("event-data: missing or not an object", code="missing_field", field="event-data", payload=data)
    outcome = Outcome()
    try:
        event = map_event(data, received_at)
    except ItemRejected as exc:
        outcome.problems.append(ItemProblem(None, exc.reason, exc.code, exc.field and f"event-data.{exc.field}", data))
        return outcome
    outcome.keep(event)
    return outcome


def map_event(data: dict[str, Any], received_at: int) -> dict[str, Any] | str:
    name = data.get("event")
    if not isinstance(name, str) or not name:
        raise ItemRejected("event: missing event name", field="event", code="missing_field")
    event_type = _DIRECT.get(name)
    if event_type is None:
        return f"ignored_{name}" if name.isidentifier() and len(name) <= 40 else "unknown_event"
    event_id = require_str(data, "id")
    contact_id = email_contact(data.get("recipient"), "recipient")
    ts = seconds_to_ms(data.get("timestamp"), "timestamp")
    message = data.get("message")
    headers = message.get("headers") if isinstance(message, dict) else None
    properties: dict[str, Any] = {
        "esp_event": name,
        "message_id": short_str(headers.get("message-id"), 512) if isinstance(headers, dict) else None,
        "tags": [str(t)[:200] for t in data["tags"][:20]] if isinstance(data.get("tags"), list) else None,
        "user_variables": scalar_dict(data.get("user-variables")),
    }
    if name in ("opened", "clicked"):
        info = data.get("client-info") if isinstance(data.get("client-info"), dict) else {}
        bot = short_str(info.get("bot"), 32)
        properties.update(
            {
                "ip": short_str(data.get("ip"), 64),
                "user_agent": short_str(info.get("user-agent")),
                "client_type": short_str(info.get("client-type"), 64),
                "device_type": short_str(info.get("device-type"), 64),
                "bot": bot,
                # Mailgun's bot detection: "apple" (Mail Privacy Protection), "gmail", "generic".
                ("machine_open" if name == "opened" else "machine_click"): bot is not None,
            }
        )
        if name == "clicked":
            properties["url"] = short_str(data.get("url"), 4000)
    elif name == "failed":
        severity = data.get("severity")
        if severity not in ("permanent", "temporary"):
            raise ItemRejected("severity: must be permanent or temporary", field="severity", code="invalid_field")
        status = data.get("delivery-status") if isinstance(data.get("delivery-status"), dict) else {}
        code = status.get("code")
        properties.update(
            {
                "bounce_type": "hard" if severity == "permanent" else "soft",
                "severity": severity,
                "reason": short_str(data.get("reason"), 200),
                "smtp_code": code if isinstance(code, int) and not isinstance(code, bool) else None,
                "description": short_str(status.get("description")) or short_str(status.get("message")),
            }
        )
    return make_event(
        event_id=event_id,
        event_type=event_type,
        contact_id=contact_id,
        ts=ts,
        received_at=received_at,
        source=SOURCE,
        properties=properties,
    )
