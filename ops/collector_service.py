"""Runs the collector process: HTTP server, broker intake and Redis client, with clean shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

from aiohttp import web
from redis.asyncio import Redis

from connectors.collector import Collector, build_app
from connectors.intake import KafkaIntake
from ops.metrics import Metrics
from ops.model_holder import ModelHolder
from streams.topics import ensure_topics

log = logging.getLogger(__name__)


def _extra_routes(settings: Any, intake: Any, metrics: Metrics, redis: Redis):
    """ESP webhooks and CRM routes, when that module is present.

    One-time webhook tokens (Mailgun) are remembered in Redis, so a replay is caught
    whichever collector process of a scaled-out deployment receives it.
    """
    try:
        from connectors.webhook_routes import add_webhook_routes
        from connectors.webhooks.replay import RedisReplayGuard
    except ImportError:
        return None

    guard = RedisReplayGuard(redis, prefix=f"{settings.topic_prefix}:webhook-token:")

    def add(app: web.Application) -> None:
        add_webhook_routes(app, intake=intake, settings=settings, metrics=metrics, replay_guard=guard)

    return add


async def start_collector(settings: Any, broker_url: str, redis_url: str, metrics: Metrics | None = None):
    """Start everything and return ``(runner, intake, redis, port)``; the caller stops them."""
    metrics = metrics or Metrics()
    holder = ModelHolder(settings.rules, on_change=lambda m: metrics.set_rules_version(m.version))
    metrics.set_rules_version(holder.model.version)
    await ensure_topics(broker_url, [settings.events_topic, settings.triggers_topic, settings.dlq_topic], settings.partitions)
    intake = KafkaIntake(
        broker_url,
        settings.events_topic,
        settings.dlq_topic,
        settings.partitions,
        linger_ms=settings.envelope_linger,
        max_envelope_events=settings.envelope_max_events,
        max_pending=settings.max_pending_events,
        produce_timeout_ms=settings.produce_timeout,
        metrics=metrics,
    )
    await intake.start()
    redis = Redis.from_url(redis_url)
    collector = Collector(
        settings, intake=intake, redis=redis, metrics=metrics, current_model=holder.current, broker_ready=intake.ping
    )
    app = build_app(collector, _extra_routes(settings, intake, metrics, redis))
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, settings.http_host, settings.http_port, reuse_address=True)
    await site.start()
    port = runner.addresses[0][1]
    return runner, intake, redis, port


async def serve_collector(settings: Any, broker_url: str, redis_url: str) -> None:
    runner, intake, redis, port = await start_collector(settings, broker_url, redis_url)
    log.warning("collector listening on http://%s:%d", settings.http_host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    # Finish in-flight requests (their events are acked) before closing the producer.
    await runner.cleanup()
    await intake.stop()
    await redis.aclose()
