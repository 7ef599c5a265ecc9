"""The HTTP edge: Segment-compatible intake, read API, trigger SSE, live page, health and metrics.

Routes (DESIGN.md section 6):

- ``POST /v1/{track,page,screen,identify,alias,group,batch}`` and analytics.js short
  paths ``/v1/{t,p,s,i,a,g,b}``; JSON or text/plain bodies; write key as HTTP Basic
  user or ``writeKey`` in the body; 200 ``{"success": true}`` only after the broker
  acknowledged.
- ``GET /v1/contacts/{id}`` (score as of now), ``GET /v1/contacts?band=hot&limit=50``,
  ``GET /v1/triggers/stream`` (Server-Sent Events), ``GET /`` (live hot-leads page).
- ``GET /metrics``, ``/healthz``, ``/readyz``.

Bad input gets a 4xx naming the field and reason and, where an event was involved,
a DLQ record; nothing half-written reaches the broker because every call in a
request is validated before any of it is submitted.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import time
from importlib import resources
from typing import Any, Awaitable, Callable

import orjson
from aiohttp import web
from redis.asyncio import Redis

from connectors import segment
from connectors.sinks.redis_sink import BANDS, TRIGGER_STREAM, read_contact
from connectors.types import Backpressure, BadInput, BrokerUnavailable, Intake
from rules.engine import view

log = logging.getLogger(__name__)

CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST, GET, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type, Content-Encoding",
    "Access-Control-Max-Age": "86400",
}
JSON_TYPES = ("application/json", "text/plain", "")


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
    def _source_for(self, request: web.Request, body: dict[str, Any] | None) -> str:
        key = basic_auth_user(request)
        if key is None and isinstance(body, dict):
            key = body.get("writeKey")
        if not key:
            raise BadInput("missing write key: send it as the HTTP Basic user or as writeKey", field="writeKey", status=401)
        source = self.settings.write_keys.get(str(key))
        if source is None:
            raise BadInput("unknown write key", field="writeKey", status=401)
        return source

    async def _read_json(self, request: web.Request, limit: int) -> Any:
        ctype = request.content_type if request.headers.get("Content-Type") else ""
        if ctype not in JSON_TYPES:
            raise BadInput(f"Content-Type: expected application/json or text/plain, got {ctype}", field="Content-Type", status=415)
        if request.content_length is not None and request.content_length > limit:
            raise BadInput(f"body is larger than {limit} bytes", status=413)
        raw = await request.content.read(limit + 1)
        if len(raw) > limit:
            raise BadInput(f"body is larger than {limit} bytes", status=413)
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            await self.intake.dead_letter(raw, f"invalid JSON: {exc}", "http")
            self.metrics.events_rejected.labels(source="unknown", reason="invalid_json").inc()
            raise BadInput(f"invalid JSON: {exc}") from None

    async def handle_call(self, request: web.Request) -> web.Response:
        call = request.match_info["call"]
        call = segment.SHORT_PATHS.get(call, call)
        if call == "batch":
            return await self._handle_batch(request)
        body = await self._read_json(request, self.settings.max_event_bytes)
        source = self._source_for(request, body)
        received = now_ms()
        try:
            event = segment.normalise(call, body, received_at=received, source=source)
        except BadInput as exc:
            self.metrics.events_rejected.labels(source=source, reason="invalid_event").inc()
            await self.intake.dead_letter(body, exc.reason, source)
            raise
        await self.intake.submit([event])
        self.metrics.events_received.labels(source=source, type=event["type"]).inc()
        return json_response({"success": True})

    async def _handle_batch(self, request: web.Request) -> web.Response:
        body = await self._read_json(request, self.settings.max_batch_bytes)
        if not isinstance(body, dict) or not isinstance(body.get("batch"), list):
            raise BadInput("batch: expected an object with a batch array", field="batch")
        source = self._source_for(request, body)
        received = now_ms()
        shared_context = body.get("context") if isinstance(body.get("context"), dict) else None
        accepted: list[dict[str, Any]] = []
        rejected: list[dict[str, Any]] = []
        for index, item in enumerate(body["batch"]):
            try:
                if isinstance(item, dict):
                    if len(orjson.dumps(item)) > self.settings.max_event_bytes:
                        raise BadInput(f"event is larger than {self.settings.max_event_bytes} bytes", status=413)
                    if "sentAt" not in item and body.get("sentAt"):
                        item = {**item, "sentAt": body["sentAt"]}
                    if shared_context and "context" not in item:
                        item = {**item, "context": shared_context}
                accepted.append(segment.normalise("track", item, received_at=received, source=source))
            except BadInput as exc:
                rejected.append({"index": index, "error": exc.reason, "field": exc.field})
                self.metrics.events_rejected.labels(source=source, reason="invalid_event").inc()
                await self.intake.dead_letter(item, f"batch[{index}]: {exc.reason}", source)
        if not accepted:
            return json_response({"success": False, "error": "no valid event in batch", "rejected": rejected}, status=400)
        await self.intake.submit(accepted)
        for event in accepted:
            self.metrics.events_received.labels(source=source, type=event["type"]).inc()
        return json_response({"success": True, "accepted": len(accepted), "rejected": rejected})

    # ---- read side ----------------------------------------------------------------
    async def get_contact(self, request: web.Request) -> web.Response:
        contact_id = request.match_info["contact_id"]
        stored = await read_contact(self.redis, contact_id)
        if stored is None:
            return json_response({"error": f"unknown contact {contact_id}"}, status=404)
        doc = stored.get(b"doc")
        if doc:
            body = view(orjson.loads(doc), self.current_model(), now_ms())
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
        rows = await self.redis.zrevrange(f"leadpulse:band:{band}", 0, limit - 1, withscores=True)
        return json_response({"band": band, "contacts": [{"contact_id": cid.decode(), "score": score} for cid, score in rows]})

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
        response = json_response(exc.as_json(), status=exc.status, headers=headers)
    except Backpressure as exc:
        response = json_response({"success": False, "error": str(exc)}, 429, {**headers, "Retry-After": str(exc.retry_after)})
    except BrokerUnavailable as exc:
        response = json_response({"success": False, "error": str(exc)}, 503, {**headers, "Retry-After": str(exc.retry_after)})
    except web.HTTPException as exc:
        response = json_response({"success": False, "error": exc.reason}, exc.status, headers)
    except Exception:  # noqa: BLE001 - a bug must not take the collector down
        log.exception("unhandled error on %s %s", request.method, request.path)
        response = json_response({"success": False, "error": "internal error"}, 500, headers)
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
