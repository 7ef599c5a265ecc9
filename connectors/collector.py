"""The HTTP edge: Segment-compatible intake, read API, trigger SSE, live page, health and metrics.

Routes (DESIGN.md section 6):

- ``POST /v1/{track,page,screen,identify,alias,group,batch}`` and analytics.js short
  paths ``/v1/{t,p,s,i,a,g,b}``; JSON or text/plain bodies; write key as HTTP Basic
  user or ``writeKey`` in the body; 200 ``{"success": true}`` only after the broker
  acknowledged.
- ``GET /v1/contacts/{id}`` (score as of now), ``GET /v1/contacts?band=hot&limit=50`` (the
  band as of now, see :func:`band_as_of`),
  ``GET /v1/triggers/stream`` (Server-Sent Events), ``GET /`` (live hot-leads page).
- ``GET /metrics``, ``/healthz``, ``/readyz``.

Bad input gets a 4xx naming the field and reason (400 bad JSON/event, 401 write key,
413 over 32 KB per call / 500 KB per batch body / 2,500 calls, 415 content type or
encoding) and, where an event was involved, a DLQ record; nothing half-written reaches
the broker because every call in a request is validated before any of it is submitted.
Error bodies carry ``code`` and ``message`` besides ``error``: analytics-python and
rudder-sdk-python read those two.

DLQ policy: a request is dead-lettered only once the sender proved a write key (a known
HTTP Basic user is checked before the body is read; a body ``writeKey`` after parsing).
A request without a valid key gets its 401/400 and a metric, never a DLQ record, so an
anonymous sender cannot fill the topic (the ESP webhook routes follow the same rule).

Bodies may be gzip or deflate encoded (rudder-sdk-python gzips by default): aiohttp
inflates them as they stream in, in bounded steps, and the limits apply to the inflated
bytes, so a compression bomb is cut off at the limit. A body left unread (413) or
undecodable is answered with ``Connection: close``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import time
from collections import Counter
from importlib import resources
from typing import Any, Awaitable, Callable

import orjson
from aiohttp import web
from aiohttp.http_exceptions import ContentEncodingError, PayloadEncodingError
from aiohttp.web_protocol import RequestPayloadError
from redis.asyncio import Redis

from connectors import segment
from connectors.sinks.redis_sink import BANDS, TRIGGER_STREAM, contact_key, read_contact
from connectors.types import Backpressure, BadInput, BrokerUnavailable, Intake
from rules.engine import view
from streams.state import state_from_doc

log = logging.getLogger(__name__)

CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST, GET, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type, Content-Encoding",
    "Access-Control-Max-Age": "86400",
}
JSON_TYPES = ("application/json", "text/plain", "")
# aiohttp inflates these request encodings itself, in bounded steps (see Collector._read_body).
CONTENT_ENCODINGS = ("", "identity", "gzip", "deflate")
_READ_CHUNK = 64 * 1024
# Set on a request whose body was left unread or undecodable: answer with Connection: close,
# so neither the server drains a (possibly huge) body nor the client reuses a broken connection.
CLOSE_AFTER = "leadpulse.close_after"
_PREVIEW_BYTES = 2048
# Segment's error codes are not documented; clients (analytics-python, rudder-sdk-python)
# read "code" and "message" from an error body, so every error answer carries both.
ERROR_CODES = {
    400: "bad_request", 401: "unauthorized", 413: "payload_too_large", 415: "unsupported_media_type",
    429: "rate_limited", 500: "internal_error", 503: "unavailable",
}


def now_ms() -> int:
    return int(time.time() * 1000)


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json", headers=headers)


def basic_auth_user(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    if not header.lower().startswith("basic "):
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise BadInput("Authorization: malformed Basic credentials", field="Authorization", status=401) from None
    return decoded.partition(":")[0]


class Collector:
    """Request handlers bound to one intake, one Redis client and the current model."""

    def __init__(
        self,
        settings: Any,
        *,
        intake: Intake,
        redis: Redis,
        metrics: Any,
        current_model: Callable[[], Any],
        broker_ready: Callable[[], Awaitable[bool]] | None = None,
    ) -> None:
        self.settings = settings
        self.intake = intake
        self.redis = redis
        self.metrics = metrics
        self.current_model = current_model
        self.broker_ready = broker_ready

    # ---- intake -------------------------------------------------------------------
    def _header_source(self, request: web.Request) -> str | None:
        """The source of a write key sent as HTTP Basic user; 401 when it is unknown."""
        key = basic_auth_user(request)
        if key is None:
            return None
        source = self.settings.write_keys.get(key)
        if source is None:
            raise BadInput("unknown write key", field="writeKey", status=401)
        return source

    def _source_for(self, header_source: str | None, body: Any) -> str:
        if header_source is not None:
            return header_source
        key = body.get("writeKey") if isinstance(body, dict) else None
        if not key:
            raise BadInput("missing write key: send it as the HTTP Basic user or as writeKey", field="writeKey", status=401)
        source = self.settings.write_keys.get(str(key))
        if source is None:
            raise BadInput("unknown write key", field="writeKey", status=401)
        return source

    async def _refuse(self, source: str | None, reason_code: str, exc: BadInput, payload: Any) -> BadInput:
        """Count a refused request; dead-letter it when the sender proved a write key."""
        self.metrics.events_rejected.labels(source=source or "unknown", reason=reason_code).inc()
        if source is not None:
            await self.intake.dead_letter(segment.bounded(payload), exc.reason, source)
        return exc

    async def _read_body(self, request: web.Request, limit: int, source: str | None) -> bytes:
        """The (decompressed) body, at most ``limit`` bytes; 415/413/400 with a reason otherwise.

        aiohttp inflates gzip/deflate bodies as they stream in, in bounded steps, so a
        compression bomb is cut off after ``limit`` inflated bytes, never buffered whole.
        """
        ctype = request.content_type if request.headers.get("Content-Type") else ""
        encoding = request.headers.get("Content-Encoding", "").strip().lower()
        problem: BadInput | None = None
        code = ""
        if ctype not in JSON_TYPES:
            problem = BadInput(
                f"Content-Type: expected application/json or text/plain, got {ctype}", field="Content-Type", status=415
            )
            code = "wrong_content_type"
        elif encoding not in CONTENT_ENCODINGS:
            problem = BadInput(
                f"Content-Encoding: expected gzip, deflate or identity, got {encoding}", field="Content-Encoding", status=415
            )
            code = "wrong_content_encoding"
        elif request.content_length is not None and request.content_length > limit:
            request[CLOSE_AFTER] = True  # the body stays unread: do not drain it, close
            exc = BadInput(f"body is larger than {limit} bytes", field="body", status=413)
            raise await self._refuse(source, "too_large", exc, {"content_length": request.content_length})
        chunks: list[bytes] = []
        size = 0
        try:
            while True:
                chunk = await request.content.read(_READ_CHUNK)
                if not chunk:
                    break
                size += len(chunk)
                if size > limit:
                    request[CLOSE_AFTER] = True
                    what = "decompressed body" if encoding not in ("", "identity") else "body"
                    exc = BadInput(f"{what} is larger than {limit} bytes", field="body", status=413)
                    preview = b"".join(chunks)[:_PREVIEW_BYTES].decode("utf-8", errors="replace")
                    raise await self._refuse(source, "too_large", exc, {"preview": preview, "bytes_read": size})
                chunks.append(chunk)
        except (ContentEncodingError, PayloadEncodingError, RequestPayloadError):
            request[CLOSE_AFTER] = True  # the stream is broken: the connection cannot be reused
            exc = BadInput(f"Content-Encoding: body is not valid {encoding}", field="Content-Encoding")
            raise await self._refuse(source, "bad_encoding", exc, {"content_encoding": encoding}) from None
        raw = b"".join(chunks)
        if problem is not None:
            raise await self._refuse(source, code, problem, raw.decode("utf-8", errors="replace"))
        return raw

    async def _read_json(self, request: web.Request, limit: int, source: str | None) -> Any:
        raw = await self._read_body(request, limit, source)
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            # Not UTF-8, not JSON, or nested deeper than orjson's limit (1024 levels).
            bad = BadInput(f"invalid JSON: {exc}", field="body")
            raise await self._refuse(source, "invalid_json", bad, raw.decode("utf-8", errors="replace")) from None

    async def handle_call(self, request: web.Request) -> web.Response:
        call = request.match_info["call"]
        call = segment.SHORT_PATHS.get(call, call)
        header_source = self._header_source(request)
        if call == "batch":
            return await self._handle_batch(request, header_source)
        body = await self._read_json(request, self.settings.max_event_bytes, header_source)
        source = self._source_for(header_source, body)
        received = now_ms()
        try:
            event = segment.normalise(call, body, received_at=received, source=source)
        except BadInput as exc:
            raise await self._refuse(source, "invalid_event", exc, body) from None
        await self.intake.submit([event])
        self.metrics.events_received.labels(source=source, type=event["type"]).inc()
        return json_response({"success": True})

    async def _handle_batch(self, request: web.Request, header_source: str | None) -> web.Response:
        body = await self._read_json(request, self.settings.max_batch_bytes, header_source)
        if not isinstance(body, dict) or not isinstance(body.get("batch"), list):
            source = header_source
            if source is None and isinstance(body, dict):
                source = self._source_for(None, body)
            exc = BadInput("batch: expected an object with a batch array", field="batch")
            raise await self._refuse(source, "invalid_batch", exc, body)
        source = self._source_for(header_source, body)
        calls = body["batch"]
        if len(calls) > segment.MAX_BATCH_CALLS:
            exc = BadInput(f"batch: {len(calls)} calls, at most {segment.MAX_BATCH_CALLS} per request", field="batch", status=413)
            raise await self._refuse(source, "too_many_calls", exc, body)
        received = now_ms()
        accepted: list[dict[str, Any]] = []
        rejected: list[dict[str, Any]] = []
        for index, item in enumerate(calls):
            try:
                item = segment.batch_item(item, body)
                if isinstance(item, dict) and (too_deep := segment.nesting_problem(item)) is not None:
                    raise too_deep
                if isinstance(item, dict) and len(orjson.dumps(item)) > self.settings.max_event_bytes:
                    raise BadInput(f"event is larger than {self.settings.max_event_bytes} bytes", status=413)
                accepted.append(segment.normalise(None, item, received_at=received, source=source, nesting_checked=True))
            except BadInput as exc:
                rejected.append({"index": index, "error": exc.reason, "field": exc.field})
                self.metrics.events_rejected.labels(source=source, reason="too_large" if exc.status == 413 else "invalid_event").inc()
                await self.intake.dead_letter(segment.bounded(item), f"batch[{index}]: {exc.reason}", source)
        if not accepted:
            status = 413 if rejected and all(r["error"].startswith("event is larger") for r in rejected) else 400
            reason = "no valid event in batch"
            return json_response({**_error_body(status, reason), "rejected": rejected}, status=status)
        await self.intake.submit(accepted)
        # One labelled update per event type, not per event (label lookups cost ~4 % of intake CPU).
        for kind, count in Counter(event["type"] for event in accepted).items():
            self.metrics.events_received.labels(source=source, type=kind).inc(count)
        return json_response({"success": True, "accepted": len(accepted), "rejected": rejected})

    # ---- read side ----------------------------------------------------------------
    async def get_contact(self, request: web.Request) -> web.Response:
        contact_id = request.match_info["contact_id"]
        stored = await read_contact(self.redis, contact_id)
        if stored is None:
            return json_response({"error": f"unknown contact {contact_id}"}, status=404)
        doc = stored.get(b"doc")
        if doc:
            body = view(state_from_doc(doc, contact_id), self.current_model(), now_ms())
        else:
            body = {k.decode(): v.decode() for k, v in stored.items()}
        return json_response(body)

    async def list_contacts(self, request: web.Request) -> web.Response:
        band = request.query.get("band", "hot")
        if band not in BANDS:
            raise BadInput(f"band: expected one of {', '.join(BANDS)}", field="band")
        try:
            limit = max(1, min(500, int(request.query.get("limit", "50"))))
        except ValueError:
            raise BadInput("limit: expected an integer", field="limit") from None
        contacts, complete = await band_as_of(self.redis, band, limit, self.current_model(), now_ms())
        body: dict[str, Any] = {"band": band, "contacts": contacts}
        if not complete:
            body["partial"] = True
        return json_response(body)

    async def trigger_stream(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", **CORS_HEADERS})
        await response.prepare(request)
        last_id = request.headers.get("Last-Event-ID") or request.query.get("since") or "$"
        try:
            while True:
                entries = await self.redis.xread({TRIGGER_STREAM: last_id}, block=15_000, count=100)
                if not entries:
                    await response.write(b": keep-alive\n\n")
                    continue
                for _stream, items in entries:
                    for entry_id, fields in items:
                        last_id = entry_id.decode()
                        await response.write(b"id: " + entry_id + b"\nevent: trigger\ndata: " + fields[b"trigger"] + b"\n\n")
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        return response

    async def live_page(self, request: web.Request) -> web.Response:
        html = resources.files("connectors").joinpath("static/live.html").read_text(encoding="utf-8")
        return web.Response(text=html, content_type="text/html")

    # ---- ops ----------------------------------------------------------------------
    async def metrics_endpoint(self, request: web.Request) -> web.Response:
        body, content_type = self.metrics.render()
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def healthz(self, request: web.Request) -> web.Response:
        return json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        problems = []
        try:
            await asyncio.wait_for(self.redis.ping(), timeout=2)
        except Exception as exc:  # noqa: BLE001
            problems.append(f"redis: {exc or type(exc).__name__}")
        if self.broker_ready is not None and not await self.broker_ready():
            problems.append("broker: not reachable")
        if problems:
            return json_response({"status": "not ready", "problems": problems}, status=503)
        return json_response({"status": "ready", "rules_version": self.current_model().version})


async def band_as_of(
    redis: Redis, band: str, limit: int, model: Any, at_ms: int, chunk: int = 200, max_scanned: int = 5_000,
) -> tuple[list[dict[str, Any]], bool]:
    """The ``limit`` contacts with the highest score as of ``at_ms`` whose band then is ``band``.

    The band indexes hold each contact's score as of its last event; behaviour decays
    after that, so a contact listed as hot may be warm by now, and one listed as
    sql-ready may be hot. A score only falls between events, so the candidates are the
    requested band's index and every higher band's, read in descending stored score;
    each candidate's state is re-viewed at ``at_ms`` (exact decay). Reading stops once
    ``limit`` contacts were found and no stored score left can beat the lowest of them,
    or after ``max_scanned`` candidates (then the answer is marked incomplete).
    Returns ``(contacts, complete)``.
    """
    wanted = BANDS.index(band)
    found: list[dict[str, Any]] = []
    scanned = 0
    for candidate_band in reversed(BANDS[wanted:]):
        start = 0
        while True:
            rows = await redis.zrevrange(f"leadpulse:band:{candidate_band}", start, start + chunk - 1, withscores=True)
            if not rows:
                break
            start += len(rows)
            if len(found) >= limit and rows[0][1] < found[limit - 1]["score"]:
                return found, True  # stored scores only fall from here on: none can beat the top
            pipe = redis.pipeline(transaction=False)
            for contact_id, _stored_score in rows:
                pipe.hget(contact_key(contact_id.decode()), "doc")
            for (contact_id, _stored_score), doc in zip(rows, await pipe.execute()):
                if not doc:
                    continue
                now = view(state_from_doc(doc, contact_id.decode()), model, at_ms)
                if now["band"] == band:
                    found.append({"contact_id": contact_id.decode(), "score": now["score"]})
            found.sort(key=lambda c: -c["score"])
            del found[limit:]
            scanned += len(rows)
            if scanned >= max_scanned:
                return found, False
    return found, True


def _error_body(status: int, reason: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """``{"success": false, "error": reason, "code": ..., "message": reason}`` (+ ``field``)."""
    out = dict(body) if body else {"success": False, "error": reason}
    out.setdefault("code", ERROR_CODES.get(status, "error"))
    out.setdefault("message", reason)
    return out


@web.middleware
async def error_middleware(request: web.Request, handler: Callable) -> web.StreamResponse:
    """Turn domain errors into HTTP answers and count every request by route and code."""
    collector: Collector = request.app["collector"]
    started = time.perf_counter()
    route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
    headers = dict(CORS_HEADERS) if request.path.startswith("/v1/") else {}
    try:
        if request.method == "OPTIONS":
            response: web.StreamResponse = web.Response(status=204, headers=headers)
        else:
            response = await handler(request)
            for name, value in headers.items():
                response.headers.setdefault(name, value)
    except BadInput as exc:
        response = json_response(_error_body(exc.status, exc.reason, exc.as_json()), status=exc.status, headers=headers)
    except Backpressure as exc:
        response = json_response(_error_body(429, str(exc)), 429, {**headers, "Retry-After": str(exc.retry_after)})
    except BrokerUnavailable as exc:
        response = json_response(_error_body(503, str(exc)), 503, {**headers, "Retry-After": str(exc.retry_after)})
    except web.HTTPException as exc:
        response = json_response(_error_body(exc.status, exc.reason), exc.status, headers)
    except Exception:  # noqa: BLE001 - a bug must not take the collector down
        log.exception("unhandled error on %s %s", request.method, request.path)
        response = json_response(_error_body(500, "internal error"), 500, headers)
    if request.get(CLOSE_AFTER):
        response.force_close()
    collector.metrics.http_requests.labels(route=route, code=str(response.status)).inc()
    collector.metrics.http_duration.labels(route=route).observe(time.perf_counter() - started)
    return response


def build_app(collector: Collector, extra_routes: Callable[[web.Application], None] | None = None) -> web.Application:
    app = web.Application(middlewares=[error_middleware], client_max_size=collector.settings.max_batch_bytes + 1024)
    app["collector"] = collector
    calls = "|".join(list(segment.CALL_TYPES) + ["batch"] + list(segment.SHORT_PATHS))
    app.router.add_route("POST", "/v1/{call:(" + calls + ")}", collector.handle_call)
    app.router.add_route("OPTIONS", "/v1/{tail:.*}", collector.healthz)
    app.router.add_get("/v1/contacts", collector.list_contacts)
    app.router.add_get("/v1/contacts/{contact_id}", collector.get_contact)
    app.router.add_get("/v1/triggers/stream", collector.trigger_stream)
    app.router.add_get("/", collector.live_page)
    app.router.add_get("/metrics", collector.metrics_endpoint)
    app.router.add_get("/healthz", collector.healthz)
    app.router.add_get("/readyz", collector.readyz)
    if extra_routes is not None:
        extra_routes(app)
    return app
