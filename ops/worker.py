"""Runs a worker process: the faust score agent, the Redis read side and the outbound sinks.

Wires ``streams`` (agents, table) to ``connectors`` (Redis writer, Slack/webhook
runners) and ``ops`` (metrics, health, rules hot reload). A small aiohttp server on
``worker_http_port`` serves /metrics, /healthz and /readyz.
"""

from __future__ import annotations

import asyncio
import re
import logging
import os
from typing import Any

import orjson
from aiohttp import web
from redis.asyncio import Redis

from connectors.sinks.delivery import build_runners
from connectors.sinks.redis_sink import RedisStateWriter, RedisTriggerSink
from ops.gc_policy import tune_garbage_collector
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
        added = 0
        try:
            if out.views or out.triggers:
                # One round trip; Redis runs the pipeline in order, so the state goes first.
                pipe = redis.pipeline(transaction=False)
                if out.views:
                    await state_writer.queue(pipe, out.views, out.docs)
                if out.triggers:
                    await trigger_sink.queue(pipe, out.triggers)
                replies = await pipe.execute()
                if out.triggers:
                    added = int(replies[-1])
        except Exception:
            # The stream layer holds the batch and retries publish: count each attempt.
            metrics.sink_retries.labels(sink="redis").inc()
            if out.triggers:
                metrics.sink_deliveries.labels(sink="redis", outcome="failed").inc(len(out.triggers))
            raise
        _count_redis_deliveries(metrics, len(out.triggers), added)

    score: ScoreApp

    async def dead_letter(sink: str, triggers: list[dict[str, Any]], reason: str) -> None:
        for trigger in triggers:
            record = {"stage": "sink", "sink": sink, "reason": reason, "payload": trigger}
            await score.dlq_topic.send(value=orjson.dumps(record))
        metrics.dlq.labels(reason="sink").inc(len(triggers))
        log.warning("sink %s dead-lettered %d triggers: %s", sink, len(triggers), reason,
                    extra={"sink": sink, "triggers": len(triggers)})

    runners = build_runners(settings, metrics=metrics, redis=redis, dead_letter=dead_letter)
    metrics.declare_worker_series([trigger_sink.name] + [runner.name for runner in runners])

    def deliver_to(runner: Any) -> Any:
        async def deliver(triggers: list[dict[str, Any]]) -> None:
            await runner.put(triggers)
            await runner.flush()

        return deliver

    deliveries = {re.sub(r"[^a-z0-9_]", "_", runner.name.lower()): deliver_to(runner) for runner in runners}

    holder = ModelHolder(settings.rules)
    metrics.set_rules_version(holder.model.version)
    config = StreamConfig.from_settings(settings, broker_url)
    score = ScoreApp(config, holder.model, publish, metrics, deliveries=deliveries)

    def on_model(model: Any) -> None:
        score.set_model(model)
        metrics.set_rules_version(model.version)

    holder.on_change = on_model
    app = score.app

    @app.timer(interval=1.0)
    async def reload_rules() -> None:
        holder.maybe_reload()

    lag_inputs: dict[Any, tuple[int | None, int | None]] = {}

    @app.timer(interval=2.0)
    async def observe_lag() -> None:
        await observe_consumer(score, metrics, lag_inputs)

    async def start_http() -> None:
        if settings.worker_http_port:
            await _start_http(settings, score, redis, metrics)

    # run_worker starts it before the app, so /readyz answers 503 with the reason
    # (consumer group, table recovery) while the worker is still joining.
    score.start_http = start_http  # type: ignore[attr-defined]

    @app.on_before_shutdown.connect
    async def close_sinks(app: Any, **kwargs: Any) -> None:
        for runner in runners:
            await runner.close()
        await redis.aclose()

    score.redis = redis  # type: ignore[attr-defined]
    return score


def _count_redis_deliveries(metrics: Metrics, offered: int, added: int) -> None:
    if offered:
        metrics.sink_deliveries.labels(sink="redis", outcome="delivered").inc(added)
        if offered > added:
            # Replays of ids the stream already holds (a batch re-run after a restart).
            metrics.sink_deliveries.labels(sink="redis", outcome="duplicate").inc(offered - added)


def events_partitions(score: ScoreApp) -> list[int]:
    """Partitions of the events topic this worker owns right now."""
    consumer = score.app._consumer  # noqa: SLF001 - reading app.consumer would create it
    if consumer is None:
        return []
    try:
        assignment = consumer.assignment()
    except Exception:  # noqa: BLE001 - consumer not started yet
        return []
    return sorted(tp.partition for tp in assignment if tp.topic == score.config.events_topic)


async def observe_consumer(
    score: ScoreApp, metrics: Metrics, known: dict[Any, tuple[int | None, int | None]] | None = None,
) -> None:
    """Set ``leadpulse_consumer_lag`` per owned partition and ``leadpulse_contacts``.

    Lag is the broker's high watermark (next offset to be written) minus the
    group's committed offset (next offset to read), the number kafka-consumer-groups
    reports. Before the first commit of a fresh group the read position stands in,
    and before the first record the consumer's fetch position (where reading starts),
    so an idle partition has a lag series too.
    Partitions this worker no longer owns (a rebalance moved them) are removed, so
    two workers never both report one partition for long.
    """
    consumer = score.app.consumer
    owned: set[str] = set()
    # After a rebalance the client forgets a partition's highwater and read offset until new
    # records arrive; the last known values keep an idle partition's lag series alive.
    known = {} if known is None else known
    for tp in consumer.assignment():
        if tp.topic != score.config.events_topic:
            continue
        last_highwater, last_committed = known.get(tp, (None, None))
        highwater = consumer.highwater(tp)
        committed = consumer._committed_offset.get(tp)  # noqa: SLF001 - faust exposes no public getter
        if committed is None:
            read = getattr(consumer, "_read_offset", {}).get(tp)
            if read is not None:
                committed = read + 1
            elif last_committed is None:
                committed = await _fetch_position(consumer, tp)
        highwater = highwater if highwater is not None else last_highwater
        committed = committed if committed is not None else last_committed
        known[tp] = (highwater, committed)
        if highwater is None or committed is None:
            continue
        owned.add(str(tp.partition))
        metrics.consumer_lag.labels(partition=str(tp.partition)).set(max(0, highwater - committed))
    for labels in list(metrics.consumer_lag._metrics):  # noqa: SLF001 - prometheus_client has no public listing
        if labels[0] not in owned:
            metrics.consumer_lag.remove(*labels)
    metrics.contacts.set(len(score.contacts.data))


async def _fetch_position(consumer: Any, tp: Any) -> int | None:
    try:
        return await asyncio.wait_for(consumer.position(tp), timeout=2)
    except Exception:  # noqa: BLE001 - revoked meanwhile or no answer yet; the next tick tries again
        return None


async def _broker_problem(score: ScoreApp) -> str | None:
    """None when the broker answers a metadata request within 2 s, else the reason."""
    producer = getattr(score.app._producer, "_producer", None)  # noqa: SLF001 - app.producer would create it
    if producer is None:
        return "broker: producer not started"
    try:
        await asyncio.wait_for(producer.client.fetch_all_metadata(), timeout=2)
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        return f"broker: {exc or type(exc).__name__}"
    return None


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
        broker = await _broker_problem(score)
        if broker:
            problems.append(broker)
        app = score.app
        if app._consumer is None:  # noqa: SLF001 - reading app.consumer would create it
            problems.append("consumer group: consumer not started yet")
        elif app.rebalancing:
            problems.append("consumer group: rebalancing")
        if not app.tables.recovery.completed.is_set():
            problems.append("tables: recovery not finished")
        partitions = events_partitions(score)
        if app._consumer is not None and not partitions:  # noqa: SLF001
            problems.append("consumer group: no partitions assigned yet")
        body = {"partitions": partitions, "batches": score.batches, "pid": os.getpid()}
        if problems:
            return web.json_response({"status": "not ready", "problems": problems, **body}, status=503)
        return web.json_response({"status": "ready", **body})

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
    tune_garbage_collector()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(
        ensure_topics(broker_url, [settings.events_topic, settings.triggers_topic, settings.dlq_topic], settings.partitions)
    )
    score = build_worker(settings, broker_url, redis_url)
    class Worker(faust.Worker):
        async def on_first_start(self) -> None:
            await super().on_first_start()
            await score.start_http()  # type: ignore[attr-defined]

    worker = Worker(score.app, loglevel=settings.log_level, quiet=True, redirect_stdouts=False, override_logging=False)
    # faust's terminal spinner writes cursor escape codes to stdout even when it is
    # not a terminal; they would break one-JSON-object-per-line logs.
    worker.spinner = None
    worker.execute_from_commandline()
