"""Worker processes on the real broker and Redis: readiness, scale-out, graceful shutdown.

Each test runs `leadpulse worker` processes (the real CLI, as compose or `leadpulse
up` runs them) in a fresh consumer group, writes normalised events straight to
the events topic (so the expected outcome is known exactly), and checks the
result in Redis, on the topics and on the workers' /metrics and /readyz.

Tansu delays JoinGroup by about half the session timeout and handles rebalances
slowly, so the session timeout is short (6 s) and every wait is bounded.
"""

from __future__ import annotations

import asyncio
import importlib.util
import subprocess
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from redis import Redis

from ops.embedded import free_port, redis_service
from ops.supervisor import child_env, http_json, spawn, stop_process, wait_ready
from streams.partitioning import partition_for
from streams.state import state_from_doc
from streams.topics import ensure_topics
from topic_reader import read_until

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("_ops_support", REPO / "tests" / "unit" / "ops" / "_ops_support.py")
ops_support = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ops_support)

TRIGGER_STREAM = "leadpulse:triggers"
QUALIFIED_TRAITS = {
    "name": "Grace Hopper", "title": "Psychologist",
    "company": {"name": "Northfield University", "industry": "University", "employee_count": 12000},
    "address": {"country": "US"},
}


@dataclass
class Workers:
    """``leadpulse worker`` children sharing one consumer group."""

    settings: object
    broker_url: str
    redis_url: str
    log_dir: Path
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)

    def start(self, name: str, *, redis_url: str | None = None, wait: bool = True) -> subprocess.Popen:
        port = self.ports.setdefault(name, free_port())
        data_dir = self.log_dir / f"data-{name}"
        data_dir.mkdir(parents=True, exist_ok=True)
        env = child_env(self.settings, self.broker_url, redis_url or self.redis_url,
                        worker_http_port=port, data_dir=data_dir)
        self.processes[name] = process = spawn("worker", env, self.log_dir / f"{name}.log")
        if wait:
            wait_ready({name: (self.url(name, "/readyz"), process)}, 60, self.log_dir)
        return process

    def url(self, name: str, path: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}{path}"

    def readyz(self, name: str) -> tuple[int, dict]:
        return http_json(self.url(name, "/readyz"))

    def metrics(self, name: str) -> dict:
        return ops_support.scrape(self.url(name, "/metrics"))

    def stop(self, name: str) -> int:
        return stop_process(self.processes[name], timeout=30)

    def stop_all(self) -> None:
        for process in self.processes.values():
            stop_process(process, timeout=30)


@pytest.fixture
def make_workers(make_settings, services, tmp_path):
    started: list[Workers] = []

    def build(**overrides) -> Workers:
        settings = make_settings(session_timeout="6s", lateness="500ms", **overrides)
        asyncio.run(ensure_topics(services.broker_url,
                                  [settings.events_topic, settings.triggers_topic, settings.dlq_topic],
                                  settings.partitions))
        workers = Workers(settings, services.broker_url, services.redis_url, tmp_path)
        started.append(workers)
        return workers

    yield build
    for workers in started:
        workers.stop_all()
    # A jump in the offsets a worker read means records it never processed (streams.app logs it).
    jumps = [line for log in tmp_path.glob("*.log") for line in log.read_text(errors="replace").splitlines()
             if "offsets jumped" in line]
    assert jumps == [], jumps


# ---------------------------------------------------------------------------- traffic


@dataclass
class Plan:
    """Events per contact, known in advance: the offline expectation."""

    prefix: str
    contacts: int
    events: dict[str, list[dict]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        now = int(time.time() * 1000)
        for i in range(self.contacts):
            contact = self.contact(i)
            kinds = ["page_view"] * (1 + i % 5) + ["email_open"] * (i % 3)
            if self.qualified(i):
                # Full fit + content + demo + a click: at least 80 (MQL) even with a single page view.
                kinds = ["identify"] + kinds + ["whitepaper_download", "webinar_attended", "demo_request", "email_click"]
            events = []
            for n, kind in enumerate(kinds):
                event = {"id": f"{contact}-{n}", "type": kind, "contact_id": contact, "anonymous_id": None,
                         "ts": now - 60_000 + n * 10, "received_at": now, "source": "segment",
                         "traits": QUALIFIED_TRAITS if kind == "identify" else {}, "properties": {}}
                events.append(event)
            self.events[contact] = events

    def contact(self, i: int) -> str:
        return f"{self.prefix}-{i}"

    @staticmethod
    def qualified(i: int) -> bool:
        return i % 4 == 0

    def wave(self, n: int, of: int) -> list[dict]:
        """The n-th of ``of`` slices of every contact's events, in order."""
        out = []
        for events in self.events.values():
            size = -(-len(events) // of)
            out.extend(events[n * size:(n + 1) * size])
        return out

    @property
    def total(self) -> int:
        return sum(len(events) for events in self.events.values())

    def expected_counts(self, contact: str) -> Counter:
        return Counter(e["type"] for e in self.events[contact] if e["type"] != "identify")


async def produce(bootstrap: str, topic: str, partitions: int, events: list[dict], per_record: int = 1) -> None:
    """Write events keyed by contact, ``per_record`` per record (an envelope when > 1), as the collector does."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        by_contact: dict[str, list[dict]] = {}
        for event in events:
            by_contact.setdefault(event["contact_id"], []).append(event)
        acks = []
        for contact, items in by_contact.items():
            for start in range(0, len(items), per_record):
                chunk = items[start:start + per_record]
                value = orjson.dumps(chunk if len(chunk) > 1 else chunk[0])
                acks.append(await producer.send(topic, value, key=contact.encode(),
                                                partition=partition_for(contact, partitions)))
        await asyncio.gather(*acks)
    finally:
        await producer.stop()


def applied_counts(redis: Redis, contact: str) -> Counter | None:
    """Events of each behaviour type applied to ``contact``, from the state the worker published."""
    doc = redis.hget(f"leadpulse:contact:{contact}", "doc")
    if not doc:
        return None
    return Counter({rule: entry[3] for rule, entry in state_from_doc(doc, contact)["b"].items() if entry[3]})


def triggers_for(redis: Redis, prefix: str) -> list[dict]:
    found = []
    for _id, fields in redis.xrange(TRIGGER_STREAM, "-", "+"):
        trigger = orjson.loads(fields[b"trigger"])
        if trigger["contact_id"].startswith(prefix + "-"):
            found.append(trigger)
    return found


def wait_all_applied(redis: Redis, plan: Plan, timeout: float = 30, workers: Workers | None = None) -> None:
    mismatched: dict[str, object] = {}

    def all_applied() -> bool:
        mismatched.clear()
        for contact in plan.events:
            got = applied_counts(redis, contact)
            if got != plan.expected_counts(contact):
                mismatched[contact] = got
        return not mismatched

    ops_support.eventually("every event to be applied", all_applied, timeout=timeout,
                           detail=lambda: {k: mismatched[k] for k in list(mismatched)[:5]} | {"n": len(mismatched)}
                           | ({"workers": _describe(workers)} if workers else {}))


def _describe(workers: Workers) -> dict:
    out = {}
    for name, process in workers.processes.items():
        if process.poll() is not None:
            out[name] = f"exited {process.returncode}"
            continue
        metrics = workers.metrics(name)
        out[name] = {
            "readyz": workers.readyz(name),
            "scored": ops_support.total(metrics, "leadpulse_events_scored_total"),
            "duplicates": ops_support.total(metrics, "leadpulse_events_duplicate_total"),
            "lag": {dict(ls)["partition"]: v for (n, ls), v in metrics.items() if n == "leadpulse_consumer_lag"},
        }
    return out


def check_triggers(redis: Redis, plan: Plan) -> list[dict]:
    """Each qualified contact crossed MQL once, nobody else did, and no trigger id is in the stream twice.

    MQL is a held trigger: it goes out when the partition's watermark passes it (``lateness``
    after the partition goes idle, on the worker's 1 s tick), so it may trail the last apply.
    """
    expected = {plan.contact(i) for i in range(plan.contacts) if plan.qualified(i)}
    ops_support.eventually("every qualified contact's MQL trigger", timeout=15, check=lambda: expected <= {
        t["contact_id"] for t in triggers_for(redis, plan.prefix) if t["type"] == "mql"},
        detail=lambda: Counter(t["type"] for t in triggers_for(redis, plan.prefix)))
    triggers = triggers_for(redis, plan.prefix)
    ids = Counter(t["trigger_id"] for t in triggers)
    assert [tid for tid, n in ids.items() if n > 1] == []
    per_type = Counter((t["contact_id"], t["type"]) for t in triggers)
    mql = {contact for (contact, kind) in per_type if kind == "mql"}
    assert mql == expected
    assert all(n == 1 for (contact, kind), n in per_type.items() if kind == "mql")
    return triggers


# ---------------------------------------------------------------------------- tests


def test_readyz_reports_redis_down_and_recovers(make_workers, tmp_path):
    redis_child = redis_service(tmp_path / "own-redis", free_port())
    redis_child.start()
    try:
        workers = make_workers()
        process = workers.start("w1", redis_url=f"redis://{redis_child.address}/0", wait=False)
        # Before the group assigned partitions (Tansu holds JoinGroup for ~3 s) the worker is not ready.
        answers = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            status, body = workers.readyz("w1")
            if status:
                answers.append((status, body))
                if status == 200:
                    break
            time.sleep(0.1)
        assert answers and answers[-1][0] == 200, answers[-3:]
        assert answers[-1][1]["partitions"] == [0, 1]
        waiting = [body for status, body in answers if status == 503]
        assert waiting, "the worker answered ready before it had partitions"
        assert all(body["problems"] for body in waiting)
        assert all(p.startswith(("consumer group:", "tables:")) for body in waiting for p in body["problems"])

        redis_child.stop()
        status, body = ops_support.eventually("/readyz to report Redis down", lambda: (
            answer if (answer := workers.readyz("w1"))[0] == 503 else None), timeout=20)
        assert any(p.startswith("redis:") for p in body["problems"]), body
        assert not any(p.startswith("broker:") for p in body["problems"]), body
        assert http_json(workers.url("w1", "/healthz"))[0] == 200  # alive, just not ready

        redis_child.start()
        ops_support.eventually("/readyz to recover with Redis back", lambda: workers.readyz("w1")[0] == 200, timeout=20)
    finally:
        redis_child.stop()


def test_two_workers_split_partitions_and_score_every_event_once(make_workers, services):
    workers = make_workers(partitions=4)
    settings = workers.settings
    redis = Redis.from_url(services.redis_url)
    plan = Plan(f"so-{uuid.uuid4().hex[:6]}", contacts=40)
    try:
        workers.start("w1")
        assert workers.readyz("w1")[1]["partitions"] == [0, 1, 2, 3]
        asyncio.run(produce(services.broker_url, settings.events_topic, 4, plan.wave(0, 2)))

        workers.start("w2", wait=False)

        def split():
            answers = {name: workers.readyz(name) for name in ("w1", "w2")}
            if any(status != 200 for status, _ in answers.values()):
                return None
            owned = {name: set(body["partitions"]) for name, (_, body) in answers.items()}
            return owned if owned["w1"] and owned["w2"] and owned["w1"] | owned["w2"] == {0, 1, 2, 3} \
                and not owned["w1"] & owned["w2"] else None

        owned = ops_support.eventually("the two workers to split the 4 partitions", split, timeout=60)
        asyncio.run(produce(services.broker_url, settings.events_topic, 4, plan.wave(1, 2), per_record=3))

        wait_all_applied(redis, plan, workers=workers)
        check_triggers(redis, plan)
        # Both workers scored, and together exactly once per event: replays after the
        # rebalance are skipped by position, never applied again.
        scored = {name: ops_support.total(workers.metrics(name), "leadpulse_events_scored_total") for name in ("w1", "w2")}
        assert scored["w2"] > 0 and sum(scored.values()) == plan.total, (scored, plan.total, owned)
        lag_partitions = {name: ops_support.label_values(workers.metrics(name), "leadpulse_consumer_lag", "partition")
                          for name in ("w1", "w2")}
        assert not lag_partitions["w1"] & lag_partitions["w2"]
    finally:
        redis.close()


def test_sigterm_finishes_the_batch_flushes_sinks_and_commits(make_workers, services):
    receiver = ops_support.WebhookReceiver(default=200)
    workers = make_workers(partitions=2, webhook_urls=[receiver.url])
    settings = workers.settings
    redis = Redis.from_url(services.redis_url)
    plan = Plan(f"gs-{uuid.uuid4().hex[:6]}", contacts=400)
    try:
        workers.start("w1")
        # Many small records so the SIGTERM lands while the worker is busy with them.
        asyncio.run(produce(services.broker_url, settings.events_topic, 2, plan.wave(0, 2)))
        # On a loaded machine the worker may not have fetched anything yet when the
        # produce returns: stop it only once it is scoring, so the SIGTERM meets work.
        ops_support.eventually("the first worker to score", lambda: ops_support.total(
            workers.metrics("w1"), "leadpulse_events_scored_total") > 0, timeout=30, interval=0.05)
        assert workers.stop("w1") == 0  # SIGTERM: clean exit, no kill needed

        workers.start("w1b")
        asyncio.run(produce(services.broker_url, settings.events_topic, 2, plan.wave(1, 2)))
        wait_all_applied(redis, plan, workers=workers)
        triggers = check_triggers(redis, plan)
        # The restarted worker found the first worker's offsets committed: it replayed nothing.
        metrics = workers.metrics("w1b")
        assert ops_support.total(metrics, "leadpulse_events_duplicate_total") == 0
        first_scored = plan.total - ops_support.total(metrics, "leadpulse_events_scored_total")
        assert first_scored > 0  # the first worker did score part of the traffic

        # Every trigger went to the triggers topic once (no batch was re-run) and the
        # webhook received each exactly once.
        expected_ids = {t["trigger_id"] for t in triggers}
        records = asyncio.run(read_until(services.broker_url, settings.triggers_topic,
                                         lambda rs: {v["trigger_id"] for _, v in rs} >= expected_ids))
        on_topic = Counter(v["trigger_id"] for _, v in records if v["contact_id"].startswith(plan.prefix))
        assert set(on_topic) == expected_ids and max(on_topic.values()) == 1
        ops_support.eventually("the webhook to receive every trigger",
                               lambda: set(receiver.ids()) >= expected_ids, timeout=30,
                               detail=lambda: f"missing {sorted(expected_ids - set(receiver.ids()))}")
        delivered = Counter(receiver.ids())
        assert max(delivered.values()) == 1
    finally:
        receiver.close()
        redis.close()
