"""Effectively-once on the real broker and Redis: kill -9 a worker mid-stream, restart it,
and the scores must equal an offline recomputation over the distinct events; no trigger
id may reach Redis twice. Also the offline checker (``leadpulse verify``) on 100k events.
"""

from __future__ import annotations

import asyncio
import io
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
import uuid

import orjson
import pytest
from redis.asyncio import Redis

from connectors.intake import KafkaIntake
from ops.embedded import free_port
from ops.settings import settings_env
from ops.verify_commands import live_from_redis, verify
from rules import default_model
from streams.checker import compare, recompute
from streams.topics import ensure_topics

pytestmark = pytest.mark.integration

TITLES = ["Psychologist", "Professor", "Student", "Office Manager"]
INDUSTRIES = ["University", "Healthcare", "Private practice", "Retail"]
NAMES = ["Demo Requested", "Webinar Attended", "Whitepaper Downloaded", "Email Link Clicked", "Email Opened"]


def workload(n_events: int, contacts: int, now: int, seed: int = 11) -> list[dict]:
    """Sessions per contact, some anonymous first then identified, 1 % duplicates, shuffled within seconds."""
    rng = random.Random(seed)
    events: list[dict] = []

    def ev(kind: str, who: str | None, anon: str | None, ts: int, **extra) -> dict:
        return {"id": str(uuid.UUID(int=rng.getrandbits(128))), "type": kind, "contact_id": who, "anonymous_id": anon,
                "ts": ts, "received_at": now, "source": "segment", "traits": extra.pop("traits", {}),
                "properties": extra.pop("properties", {}), **extra}

    while len(events) < n_events:
        c = rng.randrange(contacts)
        who, anon = f"c{c}", f"v{c}"
        start = now - rng.randrange(3_600_000)
        anonymous_first = rng.random() < 0.2
        for i in range(rng.randrange(5, 30)):
            ts = start + i * rng.randrange(1_000, 60_000)
            if anonymous_first and i < 3:
                events.append(ev("page_view", None, anon, ts, properties={"path": rng.choice(["/", "/pricing"])}))
            elif anonymous_first and i == 3:
                events.append(ev("identify", who, anon, ts, traits={"title": rng.choice(TITLES),
                                 "company": {"industry": rng.choice(INDUSTRIES), "employee_count": rng.choice([50, 500, 5000])}}))
            elif rng.random() < 0.7:
                events.append(ev("page_view", who, None, ts, properties={"path": rng.choice(["/", "/pricing", "/blog"])}))
            else:
                events.append(ev("track", who, None, ts, name=rng.choice(NAMES)))
    events = events[:n_events]
    events += [dict(rng.choice(events)) for _ in range(n_events // 100)]  # tracker retries
    # A little out-of-order: shuffle within small blocks.
    for i in range(0, len(events), 50):
        block = events[i:i + 50]
        rng.shuffle(block)
        events[i:i + 50] = block
    return events


def start_worker(settings, instance: str, port: int, log_path) -> subprocess.Popen:
    env = {**os.environ, **settings_env(settings), "LEADPULSE_WORKER_INSTANCE_ID": instance,
           "LEADPULSE_WORKER_HTTP_PORT": str(port), "LEADPULSE_LOG_LEVEL": "WARNING"}
    log = open(log_path, "ab")
    return subprocess.Popen([sys.executable, "-m", "ops.cli", "worker"], env=env, stdout=log, stderr=subprocess.STDOUT)


def scored(port: int) -> float:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1) as response:
            text = response.read().decode()
    except OSError:
        return -1
    for line in text.splitlines():
        if line.startswith("leadpulse_events_scored_total "):
            return float(line.split()[1])
    return 0


async def produce(settings, events: list[dict]) -> None:
    await ensure_topics(settings.broker_url, [settings.events_topic, settings.triggers_topic, settings.dlq_topic], settings.partitions)
    intake = KafkaIntake(settings.broker_url, settings.events_topic, settings.dlq_topic, settings.partitions,
                         max_envelope_events=200, max_pending=len(events) + 1)
    await intake.start()
    try:
        for i in range(0, len(events), 5_000):
            await intake.submit(events[i:i + 5_000])
    finally:
        await intake.stop()


async def wait_until_agrees(settings, offline, model, at_ms: int, timeout: float) -> list:
    deadline = time.monotonic() + timeout
    problems: list = ["not checked"]
    while time.monotonic() < deadline:
        problems = compare(offline.states, await live_from_redis(settings.redis_url), model, at_ms)
        if not problems:
            return problems
        await asyncio.sleep(1.0)
    return problems


async def trigger_ids_in_redis(redis_url: str) -> list[str]:
    redis = Redis.from_url(redis_url)
    try:
        entries = await redis.xrange("leadpulse:triggers")
    finally:
        await redis.aclose()
    return [orjson.loads(fields[b"trigger"])["trigger_id"] for _id, fields in entries]


async def flush_redis(redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    await redis.flushdb()
    await redis.aclose()


async def assert_matches_offline(settings, events: list[dict], now: int, timeout: float) -> str:
    """Redis equals the offline recomputation, no trigger id twice, and ``verify`` agrees (table too)."""
    model = default_model()
    offline = recompute((orjson.dumps([e]) for e in events), model)
    at_ms = now + 3_600_000
    problems = await wait_until_agrees(settings, offline, model, at_ms, timeout=timeout)
    assert not problems, f"{len(problems)} contacts differ, e.g. {[str(p) for p in problems[:5]]}"
    ids = await trigger_ids_in_redis(settings.redis_url)
    assert ids and len(ids) == len(set(ids)), "a trigger id reached Redis twice"
    report = io.StringIO()
    assert await verify(settings, settings.broker_url, settings.redis_url, at_ms, out=report) == 0, report.getvalue()
    text = report.getvalue()
    assert "table: " in text and "redis: " in text and "differ" not in text
    return text


def stop(worker: subprocess.Popen) -> None:
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(20)
        except subprocess.TimeoutExpired:
            worker.kill()


async def test_offline_checker_agrees_with_the_live_pipeline_on_100k_events(make_settings, tmp_path):
    """100k generated events (1 % duplicates, shuffled, anonymous visitors identified later):
    table and Redis equal the offline recomputation, and no trigger id reaches Redis twice."""
    settings = make_settings(partitions=4, lateness="1s")
    await flush_redis(settings.redis_url)
    now = int(time.time() * 1000)
    events = workload(100_000, 4_000, now)
    await produce(settings, events)
    port = free_port()
    worker = start_worker(settings, "w-check", port, tmp_path / "worker.log")
    try:
        print("\n" + await assert_matches_offline(settings, events, now, timeout=150))
    finally:
        stop(worker)


async def test_kill_9_mid_stream_then_restart_matches_offline(make_settings, tmp_path):
    settings = make_settings(partitions=4, lateness="1s")
    await flush_redis(settings.redis_url)
    now = int(time.time() * 1000)
    events = workload(100_000, 4_000, now)
    await produce(settings, events)
    port = free_port()
    worker = start_worker(settings, "w1", port, tmp_path / "worker.log")
    try:
        deadline = time.monotonic() + 120
        while scored(port) < 15_000 and time.monotonic() < deadline and worker.poll() is None:
            await asyncio.sleep(0.05)
        progress = scored(port)
        assert 0 < progress < len(events), f"worker made no usable progress ({progress}); see {tmp_path / 'worker.log'}"
        worker.send_signal(signal.SIGKILL)  # no goodbye: no commit, no flush
        worker.wait(10)
        print(f"\nkilled the worker after {progress:.0f} of {len(events)} events")
        worker = start_worker(settings, "w1", port, tmp_path / "worker.log")
        print(await assert_matches_offline(settings, events, now, timeout=60))
    finally:
        stop(worker)
