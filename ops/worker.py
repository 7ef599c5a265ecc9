"""Runs a worker process: the faust score agent, the Redis read side and the outbound sinks.

Wires ``streams`` (agents, table) to ``connectors`` (Redis writer, Slack/webhook
runners) and ``ops`` (metrics, health, rules hot reload). A small aiohttp server on
``worker_http_port`` serves /metrics, /healthz and /readyz.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

import orjson
from aiohttp import web
from redis.asyncio import Redis

from connectors.sinks.delivery import build_runners
from connectors.sinks.redis_sink import RedisStateWriter, RedisTriggerSink
from ops.logging import configure_logging
from ops.metrics import Metrics
from ops.model_holder import ModelHolder
from streams.app import ScoreApp, StreamConfig
from streams.processor import BatchOutcome
from streams.topics import ensure_topics

log = logging.getLogger(__name__)


def build_worker(settings: Any, broker_url: str, redis_url: str, metrics: Metrics | None = None) -> ScoreApp:
    metrics = metrics or Metrics()
    redis = Redis.from_url(redis_url)
    state_writer = RedisStateWriter(redis)
    trigger_sink = RedisTriggerSink(redis, maxlen=settings.trigger_stream_maxlen)

    async def publish(out: BatchOutcome) -> None:
        # Contact state first: whoever sees a trigger can then read the contact it names.
        await state_writer.write(out.views, out.docs)
        if out.triggers:
            await trigger_sink.write(out.triggers)

    score: ScoreApp

    async def dead_letter(sink: str, triggers: list[dict[str, Any]], reason: str) -> None:
        for trigger in triggers:
            record = {"stage": "sink", "sink": sink, "reason": reason, "payload": trigger}
            await score.dlq_topic.send(value=orjson.dumps(record))

    runners = build_runners(settings, metrics=metrics, redis=redis, dead_letter=dead_letter)

    async def deliver(triggers: list[dict[str, Any]]) -> None:
        for runner in runners:
            await runner.put(triggers)
        await asyncio.gather(*(runner.flush() for runner in runners))

    holder = ModelHolder(settings.rules)
    metrics.set_rules_version(holder.model.version)
    config = StreamConfig.from_settings(settings, broker_url)
    score = ScoreApp(config, holder.model, publish, metrics, deliver=deliver if runners else None)

    def on_model(model: Any) -> None:
        score.set_model(model)
        metrics.set_rules_version(model.version)

    holder.on_change = on_model
    app = score.app

    @app.timer(interval=1.0)
    async def reload_rules() -> None:
        holder.maybe_reload()

    @app.timer(interval=5.0)
    async def observe_lag() -> None:
        consumer = app.consumer
        for tp in consumer.assignment():
            if tp.topic != config.events_topic:
                continue
            highwater = consumer.highwater(tp)
            position = consumer._committed_offset.get(tp)  # noqa: SLF001 - faust exposes no public getter
            if highwater is not None and position is not None:
                metrics.consumer_lag.labels(partition=str(tp.partition)).set(max(0, highwater - position - 1))

    if settings.worker_http_port:

        @app.task
        async def serve_http() -> None:
            await _start_http(settings, score, redis, metrics)

    @app.on_before_shutdown.connect
    async def close_sinks(app: Any, **kwargs: Any) -> None:
        for runner in runners:
            await runner.close()
        await redis.aclose()

    score.redis = redis  # type: ignore[attr-defined]
    return score


async def _start_http(settings: Any, score: ScoreApp, redis: Redis, metrics: Metrics) -> None:
    async def metrics_endpoint(request: web.Request) -> web.Response:
        body, content_type = metrics.render()
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "pid": os.getpid()})

    async def readyz(request: web.Request) -> web.Response:
        problems = []
        try:
            await asyncio.wait_for(redis.ping(), timeout=2)
        except Exception as exc:  # noqa: BLE001
            problems.append(f"redis: {exc or type(exc).__name__}")
        app = score.app
        if app.rebalancing:
            problems.append("consumer group: rebalancing")
        if not app.tables.recovery.completed.is_set():
            problems.append("tables: recovery not finished")
        if not app.consumer.assignment():
            problems.append("consumer group: no partitions assigned yet")
        if problems:
            return web.json_response({"status": "not ready", "problems": problems}, status=503)
        return web.json_response({"status": "ready", "batches": score.batches})

    web_app = web.Application()
    web_app.router.add_get("/metrics", metrics_endpoint)
    web_app.router.add_get("/healthz", healthz)
    web_app.router.add_get("/readyz", readyz)
    runner = web.AppRunner(web_app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, settings.http_host, settings.worker_http_port, reuse_address=True).start()
    log.warning("worker metrics on http://%s:%d/metrics", settings.http_host, settings.worker_http_port)


def run_worker(settings: Any, broker_url: str, redis_url: str) -> None:
    """Blocking: run one worker until SIGINT/SIGTERM (faust finishes the batch and commits)."""
    import faust

    configure_logging(settings.log_level, settings.log_json)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(
        ensure_topics(broker_url, [settings.events_topic, settings.triggers_topic, settings.dlq_topic], settings.partitions)
    )
    score = build_worker(settings, broker_url, redis_url)
    worker = faust.Worker(score.app, loglevel=settings.log_level, quiet=True, redirect_stdouts=False, override_logging=False)
    worker.execute_from_commandline()
