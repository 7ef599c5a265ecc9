"""``leadpulse verify``: recompute every score offline from the raw topic and compare with the live side.

Reads the whole events topic, recomputes with ``streams.checker`` and compares the
score of every contact as of one instant with (a) the worker's table, read from its
changelog topic, and (b) the Redis read side. Exit 0 when they agree, 1 otherwise.
Run it on a quiet system (or a replay): events still in flight show up as differences.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

from ops.settings import load_settings
from streams.state import read_record, state_from_doc


async def live_from_redis(redis_url: str) -> dict[str, dict[str, Any]]:
    from redis.asyncio import Redis

    redis = Redis.from_url(redis_url)
    states: dict[str, dict[str, Any]] = {}
    try:
        async for key in redis.scan_iter(match="leadpulse:contact:*", count=1000):
            doc = await redis.hget(key, "doc")
            if doc:
                contact_id = key.decode()[len("leadpulse:contact:"):]
                states[contact_id] = state_from_doc(doc, contact_id)
    finally:
        await redis.aclose()
    return states


def live_from_changelog(records: list[tuple[bytes | None, bytes | None]]) -> dict[str, dict[str, Any]]:
    latest: dict[str, bytes | None] = {}
    for key, value in records:
        if key is not None and not key.startswith(b"\x00"):
            latest[key.decode()] = value
    return {key: read_record(value, key)["s"] for key, value in latest.items() if value}


async def verify(settings: Any, broker_url: str, redis_url: str, at_ms: int, out=sys.stdout) -> int:
    from ops.model_holder import ModelHolder
    from streams.app import StreamConfig
    from streams.checker import compare, recompute
    from streams.topics import read_all

    model = ModelHolder(settings.rules).model
    config = StreamConfig.from_settings(settings, broker_url)
    started = time.monotonic()
    raw = await read_all(broker_url, settings.events_topic)
    offline = recompute((value for _, value in raw if value is not None), model, config.limits, config.bots)
    print(f"read {len(raw)} records, {offline.events} events: {offline.distinct} distinct accepted, "
          f"{offline.rejected} rejected, {offline.bots} machine; {len(offline.states)} contacts "
          f"({time.monotonic() - started:.1f}s)", file=out)
    failures = 0
    changelog = await read_all(broker_url, f"{settings.app_id}-contacts-changelog")
    for name, live in (("table", live_from_changelog(changelog)), ("redis", await live_from_redis(redis_url))):
        problems = compare(offline.states, live, model, at_ms)
        status = "agrees" if not problems else f"{len(problems)} contacts differ"
        print(f"{name}: {len(live)} contacts, {status}", file=out)
        for problem in problems[:10]:
            print(f"  {problem}", file=out)
        failures += len(problems)
    return 0 if failures == 0 else 1


def cmd_verify(args: argparse.Namespace) -> int:
    settings = load_settings()
    if not settings.broker_url or not settings.redis_url:
        print("leadpulse verify needs LEADPULSE_BROKER_URL and LEADPULSE_REDIS_URL", file=sys.stderr)
        return 2
    at_ms = args.at or int(time.time() * 1000)
    return asyncio.run(verify(settings, settings.broker_url, settings.redis_url, at_ms))


def add_verify_commands(subparsers: Any) -> None:
    parser = subparsers.add_parser("verify", help="recompute scores offline from the events topic and compare with the table and Redis")
    parser.add_argument("--at", type=int, default=None, help="compare scores as of this epoch ms (default: now)")
    parser.set_defaults(func=cmd_verify)
