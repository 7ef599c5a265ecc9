"""State size per contact (table record and Redis hash) and rescore time after a model change.

States are built by the worker's own pure batch logic (``streams.processor.BatchProcessor``,
the code the score agent runs, minus faust): each synthetic contact gets an identify
with scored traits and 2-14 behaviour events over the last days (page views, email,
content, a few demo requests), 1 % of them re-sent as duplicates. ``distinct``
contacts are built that way; for larger counts the built records are cloned under
new contact ids (only the id differs), which keeps the per-contact distribution.

- table: mean bytes of key + value of the ``contacts`` table records (what the
  changelog carries and the in-memory store holds as bytes);
- Redis: ``MEMORY USAGE leadpulse:contact:{id}`` over a sample of 2,000 contacts, and
  the growth of ``used_memory`` per contact (hash + band sorted sets + key overhead),
  written by the worker's own ``RedisStateWriter``.

Rescore (a model change): two ways, both timed on one core:

- ``scan``: read every stored record, decode it and compute the contact's view with the
  new model (``rules.engine.view``: groups rebuilt for the new version, score, band,
  reasons) and encode the result, i.e. what a table scan that republishes the read side
  does. It re-weighs what the state keeps; it cannot re-price points of past events;
- ``replay``: re-apply every contact's events to a fresh state with the new model
  (``apply_event``), exact for any change; measured on the distinct contacts' events
  and extrapolated to the full count at the same events per contact.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import yaml
from redis.asyncio import Redis

import rules
from benchmarks.common import Progress
from benchmarks.workload import make_event, random_traits
from connectors.sinks.redis_sink import RedisStateWriter
from rules import default_model, load_model
from rules.engine import apply_event, new_state, view
from streams.processor import BatchProcessor
from streams.state import read_record

DAY = 86_400_000
BEHAVIOUR = ["page"] * 60 + ["email_open"] * 14 + ["email_click"] * 6 + ["time_on_site"] * 5 + \
    ["whitepaper"] * 3 + ["webinar"] * 2 + ["demo"] * 1 + ["linkedin"] * 4 + ["reply"] * 1 + ["email_delivered"] * 4


def changed_model() -> Any:
    """The default model with a new version and re-priced rules (demo 25 -> 35, page view 5 -> 4, MQL 75)."""
    src = Path(rules.__file__).parent / "models"
    doc = yaml.safe_load((src / "default.yaml").read_text())
    doc["version"] = str(doc["version"]) + "-bench-change"
    for rule in doc["behaviour"]["rules"]:
        if rule["id"] == "demo_request":
            rule["points"] = 35
        if rule["id"] == "page_view":
            rule["points"] = 4
    doc["mql_threshold"] = 75
    doc["thresholds"][0]["score"] = 75
    tmp = Path(tempfile.mkdtemp(prefix="leadpulse-bench-model-"))
    for extra in src.glob("*.yaml"):
        shutil.copy(extra, tmp / extra.name)
    (tmp / "changed.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    try:
        return load_model(str(tmp / "changed.yaml"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def contact_events(i: int, rng: random.Random, now: int, run: str) -> list[dict[str, Any]]:
    cid = f"{run}-s{i}"
    t = now - rng.randrange(1, 6) * DAY
    events = [make_event("identify", rng, cid, None, t, random_traits(cid, rng))]
    for _ in range(rng.randint(2, 14)):
        t += rng.randrange(60_000, 12 * 3_600_000)
        events.append(make_event(rng.choice(BEHAVIOUR), rng, cid, None, min(t, now - 1000)))
    if rng.random() < 0.1:
        events.append(dict(events[-1]))  # a duplicate
    return events


async def measure(redis_url: str, sizes: list[int], distinct: int, progress: Progress,
                  flush_redis: bool, seed: int = 11) -> dict[str, Any]:
    now = int(time.time() * 1000)
    rng = random.Random(seed)
    model = default_model()
    store: dict[str, bytes] = {}  # everything the processor writes (contacts and its per-partition timers)
    records: dict[str, bytes] = {}  # contact records only
    processor = BatchProcessor(model, lambda key: store.get(key))
    redis = Redis.from_url(redis_url)
    writer = RedisStateWriter(redis)
    run = f"st{seed}"
    all_events: list[list[dict[str, Any]]] = []
    views_of: dict[str, dict[str, Any]] = {}
    docs_of: dict[str, bytes] = {}
    result: dict[str, Any] = {}
    try:
        if flush_redis:
            await redis.flushdb()
        base_mem = (await redis.info("memory"))["used_memory"]
        # 1) distinct contacts through the worker's batch logic, 500 contacts per batch.
        t0 = time.perf_counter()
        offset = 0
        built = 0
        chunk = 500
        for start in range(0, distinct, chunk):
            batch_events: list[dict[str, Any]] = []
            for i in range(start, min(distinct, start + chunk)):
                evs = contact_events(i, rng, now, run)
                all_events.append(evs)
                batch_events.extend(evs)
            recs = [(0, offset + j, orjson.dumps(batch_events[j:j + 100])) for j in range(0, len(batch_events), 100)]
            offset += len(recs)
            processor.process(recs, now)
            out = processor.checkpoint(now)  # what the worker writes at its next checkpoint
            for writes in out.writes.values():
                store.update(writes)
                records.update((k, v) for k, v in writes.items() if not k.startswith("\x00"))  # not the timer index
            await writer.write(out.views, out.docs)
            views_of.update(out.views)
            docs_of.update(out.docs)
            built = min(distinct, start + chunk)
            progress.step("state", f"built {built:,}/{distinct:,} contacts")
        build_s = time.perf_counter() - t0
        events_total = sum(len(e) for e in all_events)
        progress.done("state", f"built {distinct:,} contacts from {events_total:,} events in {build_s:.1f} s "
                               f"({events_total / build_s:,.0f} events/s through BatchProcessor + Redis)")
        distinct_items = list(records.items())
        for size in sorted(sizes):
            # 2) clone up to `size` contacts (ids renamed), writing table records and Redis hashes.
            i = len(records)
            t1 = time.perf_counter()
            while len(records) < size:
                views: dict[str, Any] = {}
                docs: dict[str, bytes] = {}
                for _ in range(min(2_000, size - len(records))):
                    key, raw = distinct_items[i % len(distinct_items)]
                    new_key = f"{run}-s{i}"
                    # Neither the table record nor the Redis doc holds the contact id.
                    records[new_key] = raw
                    views[new_key] = {**views_of[key], "contact_id": new_key}
                    docs[new_key] = docs_of[key]
                    i += 1
                await writer.write(views, docs)
                progress.step("state", f"{len(records):,}/{size:,} contacts stored")
            keys = list(records)[:size]
            table_bytes = sum(len(k) + len(records[k]) for k in keys) / size
            sample = random.Random(1).sample(keys, min(2_000, size))
            pipe = redis.pipeline(transaction=False)
            for key in sample:
                pipe.memory_usage(f"leadpulse:contact:{key}", samples=0)
            usage = [u for u in await pipe.execute() if u]
            mem = (await redis.info("memory"))["used_memory"]
            row = {
                "contacts": size,
                "table_record_bytes": round(table_bytes),
                "redis_hash_bytes": round(sum(usage) / len(usage)) if usage else None,
                "redis_used_memory_per_contact": round((mem - base_mem) / size) if flush_redis else None,
                "fill_s": round(time.perf_counter() - t1, 1),
            }
            result[str(size)] = row
            progress.done("state", f"{size:,} contacts: table {row['table_record_bytes']} B/contact, Redis hash "
                                   f"{row['redis_hash_bytes']} B (MEMORY USAGE), used_memory "
                                   f"{row['redis_used_memory_per_contact']} B/contact")
        # 3) rescore after a model change.
        new = changed_model()
        largest = max(sizes)
        keys = list(records)[:largest]
        t2 = time.perf_counter()
        checksum = 0.0
        for n, key in enumerate(keys, 1):
            doc = read_record(records[key], key)
            v = view(doc["s"], new, now)
            checksum += v["score"]
            orjson.dumps(v)
            if n % 50_000 == 0:
                progress.step("rescore", f"scan {n:,}/{largest:,} contacts")
        scan_s = time.perf_counter() - t2
        t3 = time.perf_counter()
        replayed = 0
        for evs in all_events:
            state = new_state(evs[0]["contact_id"])
            for event in sorted(evs, key=lambda e: e["ts"]):
                apply_event(state, event, new)
                replayed += 1
        replay_s = time.perf_counter() - t3
        per_contact = replay_s / len(all_events)
        rescore = {
            "model": new.version,
            "contacts": largest,
            "scan_s": round(scan_s, 2),
            "scan_contacts_per_s": round(largest / scan_s),
            "replay_events_per_s": round(replayed / replay_s),
            "replay_events_per_contact": round(replayed / len(all_events), 1),
            "replay_s_extrapolated": round(per_contact * largest, 1),
        }
        progress.done("rescore", f"{largest:,} contacts: table scan + view with the new model {scan_s:.1f} s "
                                 f"({rescore['scan_contacts_per_s']:,}/s); full replay {rescore['replay_events_per_s']:,} "
                                 f"events/s -> ~{rescore['replay_s_extrapolated']} s for {largest:,} contacts")
        if flush_redis:
            # In the background: a blocking FLUSHDB of 1M hashes outlasts the client's read timeout.
            await redis.flushdb(asynchronous=True)
    finally:
        await redis.aclose()
    return {"sizes": result, "rescore": rescore, "build_events_per_s": round(events_total / build_s)}
