"""Event -> trigger latency at fixed offered rates, through the collector's HTTP API.

For each rate a fresh stack (``ops.supervisor.Stack``: one ``leadpulse collector`` and
one ``leadpulse worker`` child, Redis sink attached, on the suite's broker and Redis,
fresh topics and consumer group) takes open-loop load from ``benchmarks.load`` (a
separate process); ``shared_stack`` runs every rate in turn on one stack. This process consumes the triggers topic
(aiokafka, 5 ms fetch wait) and notes when each trigger arrived; a demo request's
latency is ``trigger received - HTTP call acknowledged`` (both wall clock on this
machine), matched by (contact_id, event_ts). Receiving the record means the broker
had acknowledged it, so this is an upper bound of "acknowledged on the triggers
topic" by at most one fetch wait.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from benchmarks.common import Progress, percentile
from ops.settings import load_settings
from ops.supervisor import Stack


class TriggerWatch:
    def __init__(self, broker: str, topic: str) -> None:
        self.broker = broker
        self.topic = topic
        self.seen: dict[tuple[str, int], float] = {}
        self.count = 0
        self._task: asyncio.Task | None = None
        self._stop = asyncio.Event()

    async def start(self, partitions: int) -> None:
        self.consumer = AIOKafkaConsumer(bootstrap_servers=self.broker, enable_auto_commit=False, group_id=None,
                                         auto_offset_reset="earliest", fetch_max_wait_ms=5)
        await self.consumer.start()
        tps = [TopicPartition(self.topic, p) for p in range(partitions)]
        self.consumer.assign(tps)
        await self.consumer.seek_to_beginning(*tps)
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while not self._stop.is_set():
            batch = await self.consumer.getmany(timeout_ms=100, max_records=5_000)
            now = time.time() * 1000
            for msgs in batch.values():
                for msg in msgs:
                    trigger = orjson.loads(msg.value)
                    self.count += 1
                    key = (trigger.get("contact_id"), trigger.get("event_ts"))
                    if key not in self.seen:
                        self.seen[key] = now

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        await self.consumer.stop()


async def _run_load(url: str, rate: float, duration: float, run_id: str, out: Path, progress: Progress,
                    watch: TriggerWatch, label: str) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "benchmarks.load", "--url", url, "--rate", str(rate), "--duration", str(duration),
        "--run", run_id, "--out", str(out), cwd=str(Path(__file__).resolve().parent.parent))
    started = time.monotonic()
    while proc.returncode is None:
        try:
            await asyncio.wait_for(proc.wait(), timeout=0.5)
        except asyncio.TimeoutError:
            pass
        progress.step(label, f"offering {rate:,.0f} events/s: {time.monotonic() - started:.0f}/{duration:.0f} s, "
                             f"{watch.count:,} triggers seen")
    if proc.returncode != 0:
        raise RuntimeError(f"load generator exited with {proc.returncode}")
    return orjson.loads(out.read_bytes())


@asynccontextmanager
async def _fresh_stack(broker: str, redis: str, partitions: int, work_dir: Path,
                       progress: Progress) -> AsyncIterator[tuple[Stack, TriggerWatch, str]]:
    """A collector + worker on fresh topics and a fresh consumer group, and a watch on its triggers topic."""
    prefix = f"bench-lat-{uuid.uuid4().hex[:6]}"
    settings = load_settings(broker_url=broker, redis_url=redis, topic_prefix=prefix,
                             app_id=f"{prefix}-app", partitions=partitions, http_port=0, worker_http_port=0,
                             data_dir=work_dir / prefix, log_level="WARNING")
    progress.step("latency", "starting collector + worker ...", force=True)
    stack = await asyncio.to_thread(lambda: Stack(settings).start(log_dir=work_dir))
    watch = TriggerWatch(broker, settings.triggers_topic)
    try:
        await watch.start(partitions)
        yield stack, watch, prefix
    finally:
        await watch.stop()
        await asyncio.to_thread(stack.stop)


async def measure(broker: str, redis: str, partitions: int, rates: list[float], duration: float, work_dir: Path,
                  progress: Progress, settle_s: float = 3.0, shared_stack: bool = False) -> dict[str, Any]:
    """Latency per offered rate; each rate on its own fresh stack and topics unless ``shared_stack``.

    Separate stacks keep one rate's leftovers out of the next: a backlog, and on the embedded
    Tansu broker the record batches of the earlier rates, because its memory store lists every
    batch a partition holds on each fetch (benchmarks/README.md, 2026-11-24 evening), so the
    10k/s step would pay for the 1k and 5k steps' traffic. ``shared_stack`` runs the rates in
    turn on one stack, as before.
    """
    results: dict[str, Any] = {}
    for rates_on_one_stack in [rates] if shared_stack else [[rate] for rate in rates]:
        async with _fresh_stack(broker, redis, partitions, work_dir, progress) as (stack, watch, prefix):
            for rate in rates_on_one_stack:
                results[str(int(rate))] = await _measure_rate(stack, watch, prefix, rate, duration, work_dir,
                                                              progress, settle_s)
    return results


async def _measure_rate(stack: Stack, watch: TriggerWatch, prefix: str, rate: float, duration: float,
                        work_dir: Path, progress: Progress, settle_s: float) -> dict[str, Any]:
    label = f"latency {rate / 1000:g}k"
    run_id = f"{prefix}-{int(rate)}"
    load = await _run_load(stack.base_url, rate, duration, run_id, work_dir / f"{run_id}.json", progress,
                           watch, label)
    # Wait for the last triggers (up to settle_s; stop early when all matched or nothing new for 3 s).
    deadline = time.monotonic() + settle_s
    last_change, last_count = time.monotonic(), -1
    while time.monotonic() < deadline:
        matched = sum(1 for cid, ts, _ in load["acked"] if (cid, ts) in watch.seen)
        if matched == len(load["acked"]):
            break
        if matched != last_count:
            last_change, last_count = time.monotonic(), matched
        elif time.monotonic() - last_change > 3.0:
            break
        await asyncio.sleep(0.2)
    lat = sorted(watch.seen[(cid, ts)] - ack for cid, ts, ack in load["acked"] if (cid, ts) in watch.seen)
    missing = sum(1 for cid, ts, _ in load["acked"] if (cid, ts) not in watch.seen)
    row = {
        "offered_eps": rate,
        "achieved_eps": load["achieved_eps"],
        "sent": load["sent"], "ok": load["ok"], "refused": load["refused"], "errors": load["errors"],
        "behind": load["behind"], "per_call": load["per_call"],
        "http_p50_ms": load["call_p50_ms"], "http_p99_ms": load["call_p99_ms"],
        "samples": len(lat), "missing": missing,
        "p50_ms": _r(percentile(lat, 50)), "p99_ms": _r(percentile(lat, 99)),
        "p999_ms": _r(percentile(lat, 99.9)), "max_ms": _r(lat[-1] if lat else None),
        "min_ms": _r(lat[0] if lat else None),
    }
    progress.done(label, f"offered {rate:,.0f}/s achieved {row['achieved_eps']:,}/s: event->trigger "
                         f"p50 {row['p50_ms']} ms p99 {row['p99_ms']} ms p99.9 {row['p999_ms']} ms "
                         f"({row['samples']} samples, {missing} missing, {row['refused']} refused)")
    return row


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
