"""aiohttp routes for the signed ESP webhooks and the CRM endpoint (DESIGN.md section 6).

``add_webhook_routes(app, intake=..., settings=..., metrics=...)`` registers::

    POST /webhooks/sendgrid   SendGrid Event Webhook       (connectors.webhooks.sendgrid)
    POST /webhooks/mailgun    Mailgun webhooks             (connectors.webhooks.mailgun)
    POST /webhooks/postmark   Postmark webhooks            (connectors.webhooks.postmark)
    POST /webhooks/ses        Amazon SES through SNS       (connectors.webhooks.ses)
    POST /v1/crm/events       CRM and sales feedback       (connectors.crm)

Every request goes through the same steps:

1. A vendor without its secret in the settings answers 404 with the setting to set, so
   unsigned traffic is never accepted.
2. Content-Type must be one the vendor sends (400 ``field: Content-Type`` otherwise; SNS posts
   text/plain).
3. The body is read up to ``settings.max_batch_bytes`` and no further (413 beyond it).
4. The vendor receiver authenticates: on the raw bytes before any parsing for SendGrid
   (signature headers) and Postmark (Basic auth); Mailgun and SNS carry their signature
   inside the JSON, so they are parsed first (bounded by 3. and orjson's depth limit) and
   authenticated before anything is trusted. Failures: 401 (missing credentials), 403
   (wrong/stale signature, unpinned certificate), 406 (replayed Mailgun token: Mailgun stops
   retrying on 406). They are counted in ``events_rejected{source,reason}`` and logged, and
   never dead-lettered: an unauthenticated payload is not ours to keep, and an anonymous sender
   must not be able to fill the DLQ topic.
5. Parse and map. A request that is unusable as a whole after authentication (not UTF-8, not
   JSON, wrong shape) -> 400 with the field and a DLQ record of the raw text. Within a batch,
   each bad item is dead-lettered with its reason and listed under ``rejected`` while the good
   items are accepted (vendors retry whole batches, and a bad item never gets better); when
   nothing usable is left the answer is 400 with the first item's reason. Items that have no
   meaning for scoring (SendGrid "processed", ...) are counted as ``ignored`` in the answer and
   in ``events_rejected{reason="ignored_..."}``. An event over ``settings.max_event_bytes``
   after normalisation is rejected on its own.
6. ``await intake.submit(events)``: 200 ``{"success": true, "accepted": n}`` only after the
   broker acknowledged. Backpressure -> 429, BrokerUnavailable -> 503, both with Retry-After;
   nothing is dead-lettered then (the vendor retries the same request) and a recorded Mailgun
   token is forgotten so that retry is not taken for a replay.

Metrics: ``events_received{source,type}`` on success, ``events_rejected{source,reason}`` for
every refusal. ``dlq{reason}`` is left to the Intake that writes the DLQ record, so a record is
counted once whoever dead-letters it.

Settings read beyond ops/settings.py (with defaults until they are added there):
``webhook_tolerance`` (ms, default 300000: SendGrid/Mailgun timestamp window and SNS future
skew), ``sns_max_age`` (ms, default 3600000: oldest SNS Timestamp accepted, SNS retries reuse
the signed message), ``ses_topic_arns`` (list of allowed TopicArns; empty = any topic signed
with a pinned certificate).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import orjson
from aiohttp import web

from connectors.crm import CrmReceiver
from connectors.types import Backpressure, BrokerUnavailable, Intake
from connectors.webhooks.common import AuthFailure, ItemProblem, NotConfigured, Outcome, PayloadError
from connectors.webhooks.mailgun import MailgunReceiver
from connectors.webhooks.postmark import REALM, PostmarkReceiver
from connectors.webhooks.replay import InMemoryReplayGuard, ReplayGuard
from connectors.webhooks.sendgrid import SendGridReceiver
from connectors.webhooks.ses import SesReceiver

log = logging.getLogger(__name__)

DEFAULT_TOLERANCE_MS = 5 * 60_000
DEFAULT_SNS_MAX_AGE_MS = 60 * 60_000
_READ_CHUNK = 64 * 1024


class Receiver(Protocol):
    source: str
    content_types: tuple[str, ...]

    async def receive(self, headers: Any, raw: bytes, received_at: int) -> Outcome: ...


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


def _secret(value: Any) -> str | None:
    """SecretStr or str or None -> the plain value, None when unset or blank."""
    if value is None:
        return None
    plain = value.get_secret_value() if hasattr(value, "get_secret_value") else str(value)
    return plain if plain.strip() else None


def _json(body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json", headers=headers)


def add_webhook_routes(
    app: web.Application,
    *,
    intake: Intake,
    settings: Any,
    metrics: Any,
    replay_guard: ReplayGuard | None = None,
    now_ms: Callable[[], int] | None = None,
) -> None:
    """Register the ESP webhook and CRM routes on ``app`` (see the module docstring)."""
    clock = now_ms or _wall_ms
    tolerance = int(getattr(settings, "webhook_tolerance", DEFAULT_TOLERANCE_MS))
    sns_max_age = int(getattr(settings, "sns_max_age", DEFAULT_SNS_MAX_AGE_MS))
    topic_arns = getattr(settings, "ses_topic_arns", None) or ()

    receivers: dict[str, Receiver | NotConfigured] = {}

    key = _secret(settings.sendgrid_public_key)
    # A malformed key raises here, at start-up, rather than failing every request later.
    receivers["/webhooks/sendgrid"] = (
        SendGridReceiver(key, now_ms=clock, tolerance_ms=tolerance) if key else NotConfigured("SendGrid", "sendgrid_public_key")
    )

    signing_key = _secret(settings.mailgun_signing_key)
    receivers["/webhooks/mailgun"] = (
        MailgunReceiver(
            signing_key,
            replay_guard=replay_guard if replay_guard is not None else InMemoryReplayGuard(now_ms=clock),
            now_ms=clock,
            tolerance_ms=tolerance,
        )
        if signing_key
        else NotConfigured("Mailgun", "mailgun_signing_key")
    )

    user, password = _secret(settings.postmark_webhook_user), _secret(settings.postmark_webhook_password)
    receivers["/webhooks/postmark"] = (
        PostmarkReceiver(user, password)
        if user and password
        else NotConfigured("Postmark", "postmark_webhook_user", "postmark_webhook_password")
    )

    cert_dir = settings.ses_cert_dir
    if cert_dir is not None and not Path(cert_dir).is_dir():
        log.error("ses_cert_dir %s is not a directory; /webhooks/ses answers 404", cert_dir)
        cert_dir = None
    receivers["/webhooks/ses"] = (
        SesReceiver(Path(cert_dir), now_ms=clock, max_age_ms=sns_max_age, future_tolerance_ms=tolerance, topic_arns=topic_arns)
        if cert_dir is not None
        else NotConfigured("SES/SNS", "ses_cert_dir")
    )

    receivers["/v1/crm/events"] = CrmReceiver(settings.write_keys)

    for path, receiver in receivers.items():
        handler = _Handler(
            receiver,
            intake=intake,
            metrics=metrics,
            clock=clock,
            max_bytes=int(settings.max_batch_bytes),
            max_event_bytes=int(settings.max_event_bytes),
        )
        app.router.add_post(path, handler)


class _Handler:
    """One route: read, authenticate, map, submit; every refusal answered with a reason."""

    def __init__(
        self,
        receiver: Receiver | NotConfigured,
        *,
        intake: Intake,
        metrics: Any,
        clock: Callable[[], int],
        max_bytes: int,
        max_event_bytes: int,
    ) -> None:
        self.receiver = receiver
        self.intake = intake
        self.metrics = metrics
        self.clock = clock
        self.max_bytes = max_bytes
        self.max_event_bytes = max_event_bytes

    def _rejected(self, source: str, reason: str, count: int = 1) -> None:
        if count:
            self.metrics.events_rejected.labels(source=source, reason=reason).inc(count)

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        receiver = self.receiver
        source = request.path.rstrip("/").rsplit("/", 1)[-1] if isinstance(receiver, NotConfigured) else receiver.source
        if isinstance(receiver, NotConfigured):
            self._rejected(source, receiver.code)
            return _json(receiver.as_json(), receiver.status)
        received_at = self.clock()

        if request.content_type not in receiver.content_types:
            self._rejected(source, "wrong_content_type")
            return _json(
                {
                    "success": False,
                    "error": f"Content-Type must be {' or '.join(receiver.content_types)}, not {request.content_type}",
                    "field": "Content-Type",
                },
                400,
            )

        raw = await _read_capped(request, self.max_bytes)
        if raw is None:
            # Not dead-lettered: the body was not read past the limit, so it is neither whole nor authenticated.
            self._rejected(source, "too_large")
            return _json({"success": False, "error": f"body larger than {self.max_bytes} bytes", "field": "body"}, 413)

        try:
            outcome = await receiver.receive(request.headers, raw, received_at)
        except AuthFailure as exc:
            self._rejected(source, exc.code)
            log.warning("%s webhook refused from %s: %s", source, request.remote, exc.reason)
            headers = {"WWW-Authenticate": REALM} if exc.status == 401 and source in ("postmark", "crm") else None
            return _json(exc.as_json(), exc.status, headers)
        except PayloadError as exc:
            self._rejected(source, exc.code)
            if exc.trusted:
                payload = exc.payload if exc.payload is not None else raw.decode("utf-8", errors="backslashreplace")
                await self.intake.dead_letter(payload, exc.reason, source)
            return _json(exc.as_json(), exc.status)
        except Exception:
            # A mapper bug must not take the collector down; the vendor will retry.
            log.exception("%s webhook: unexpected error while mapping a request", source)
            self._rejected(source, "internal_error")
            return _json({"success": False, "error": "internal error"}, 500)

        events: list[dict[str, Any]] = []
        problems = list(outcome.problems)
        for event in outcome.events:
            try:
                size = len(orjson.dumps(event))
            except TypeError as exc:  # orjson.JSONEncodeError: the broker could not carry it either
                problems.append(ItemProblem(None, f"event {event['id'][:100]} is not serialisable: {exc}", "not_serialisable", None, repr(event)[:10_000]))
                continue
            if size > self.max_event_bytes:
                problems.append(ItemProblem(None, f"event {event['id'][:100]} larger than {self.max_event_bytes} bytes", "too_large", None, event))
            else:
                events.append(event)

        if events:
            try:
                await self.intake.submit(events)
            except (Backpressure, BrokerUnavailable) as exc:
                busy = isinstance(exc, Backpressure)
                self._rejected(source, "backpressure" if busy else "broker_unavailable", len(events))
                if outcome.release is not None:
                    await outcome.release()
                return _json(
                    {"success": False, "error": str(exc)},
                    429 if busy else 503,
                    {"Retry-After": str(max(1, int(exc.retry_after)))},
                )
            for event_type, count in Counter(e["type"] for e in events).items():
                self.metrics.events_received.labels(source=source, type=event_type).inc(count)

        for problem in problems:
            self._rejected(source, problem.code)
            await self.intake.dead_letter(problem.payload, problem.reason, source)
        for code, count in outcome.ignored.items():
            self._rejected(source, code, count)

        body: dict[str, Any] = {"success": True, "accepted": len(events)}
        if outcome.ignored:
            body["ignored"] = sum(outcome.ignored.values())
        if problems:
            body["rejected"] = [p.as_json() for p in problems]
        body.update(outcome.reply)
        if not events and problems and not outcome.ignored and not outcome.reply:
            first = problems[0]
            error: dict[str, Any] = {"success": False, "error": first.reason, "rejected": body["rejected"]}
            if first.field:
                error["field"] = first.field
            return _json(error, 400)
        return _json(body)


async def _read_capped(request: web.Request, limit: int) -> bytes | None:
    """The body, or None as soon as it exceeds ``limit`` bytes (never buffers more)."""
    if request.content_length is not None and request.content_length > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.read(_READ_CHUNK)
        if not chunk:
            break
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)
