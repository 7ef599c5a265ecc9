"""Alerts that reach people, end to end on the real broker and Redis (issue 7).

One module-scoped stack (``leadpulse collector`` + ``leadpulse worker`` child processes, as
``leadpulse up`` runs them) with its Slack and webhook URLs pointing at a local aiohttp
receiver on 127.0.0.1 that can answer 429 (Retry-After) and 500 on demand. The scoring model
is the default one with a 4 s handoff SLA. The tests run in file order; the last one restarts
the worker and then checks every delivery the module caused.
"""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import aiohttp
import orjson
import pytest
from aiohttp import web
from redis import Redis as SyncRedis
from redis.asyncio import Redis

from connectors.sinks.slack import TYPE_LABELS
from connectors.sinks.standard_webhooks import verify
from ops.settings import settings_env
from ops.supervisor import Stack
from rules.model import DEFAULT_MODEL_PATH
from isolated import isolated_settings

pytestmark = pytest.mark.e2e

AUTH = {"Authorization": "Basic " + base64.b64encode(b"demo:").decode()}
TAG = uuid.uuid4().hex[:6]  # every contact of this module carries it
SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
PM_USER, PM_PASSWORD = "pm-user", "pm-" + secrets.token_hex(8)
SLA_MS = 4_000  # long enough for the accept below to land first, even once a tick fires breaches
STREAM = "leadpulse:triggers"


# --------------------------------------------------------------------------- the receiver


@dataclass
class Hit:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int


@dataclass
class Answer:
    status: int
    headers: dict[str, str] = field(default_factory=dict)


class ThreadReceiver:
    """An aiohttp server on its own loop and thread: it outlives each test's event loop."""

    def __init__(self) -> None:
        self.hits: list[Hit] = []
        self.script: dict[str, deque[Answer]] = defaultdict(deque)
        self.lock = threading.Lock()
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self._runner: web.AppRunner | None = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def answer(self, path: str, *answers: Answer) -> None:
        with self.lock:
            self.script[path].extend(answers)

    def got(self, path: str, ok: bool | None = True) -> list[Hit]:
        with self.lock:
            return [h for h in self.hits if h.path == path and (ok is None or (200 <= h.status < 300) == ok)]

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        with self.lock:
            script = self.script[request.path]
            answer = script.popleft() if script else Answer(200)
            self.hits.append(Hit(request.path, dict(request.headers), body, answer.status))
        return web.Response(status=answer.status, text="ok" if answer.status < 300 else "no", headers=answer.headers)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # noqa: SLF001 - port 0 was asked for

    def start(self) -> "ThreadReceiver":
        threading.Thread(target=self.loop.run_forever, daemon=True, name="receiver").start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)


# --------------------------------------------------------------------------- the stack


@pytest.fixture(scope="module")
def receiver():
    rec = ThreadReceiver().start()
    yield rec
    rec.stop()


@pytest.fixture(scope="module")
def stack(services, tmp_path_factory, receiver):
    data_dir = tmp_path_factory.mktemp("alerts")
    rules_dir = data_dir / "rules"
    rules_dir.mkdir()
    text = DEFAULT_MODEL_PATH.read_text()
    assert "sla: 4h" in text
    (rules_dir / "model.yaml").write_text(text.replace("sla: 4h", f"sla: {SLA_MS}ms"))
    (rules_dir / "health.yaml").write_text((DEFAULT_MODEL_PATH.parent / "health.yaml").read_text())
    # Its own Redis database: the band listing and the trigger stream are global, and other
    # modules sharing the session's Redis leave hot contacts and triggers of their own.
    redis_url = services.redis_url.rsplit("/", 1)[0] + "/4"
    with SyncRedis.from_url(redis_url) as fresh:
        fresh.flushdb()
    settings = isolated_settings(
        services,
        data_dir,
        "alerts",
        redis_url=redis_url,
        rules=str(rules_dir / "model.yaml"),
        slack_webhook_url=receiver.url("/slack"),
        lateness=1_000,  # handoff triggers wait for the watermark (event time - lateness): keep it short here
        slack_min_interval=100,  # Slack's real pace is 1/s; the test receiver does not need it
        webhook_urls=[receiver.url("/hook")],
        webhook_secret=SECRET,
        postmark_webhook_user=PM_USER,
        postmark_webhook_password=PM_PASSWORD,
    )
    running = Stack(settings).start(ready_timeout=90)
    yield running
    running.stop()


def restart_worker(stack: Stack, timeout: float = 60.0) -> None:
    """SIGTERM the worker and start a new one exactly as ops.supervisor.Stack.start does."""
    old = stack.processes["worker"]
    old.send_signal(signal.SIGTERM)
    assert old.wait(timeout=30) is not None
    settings = stack.settings
    env = {
        **os.environ,
        **settings_env(settings),
        "LEADPULSE_BROKER_URL": stack.services.broker_url,
        "LEADPULSE_REDIS_URL": stack.services.redis_url,
        "LEADPULSE_HTTP_PORT": str(stack.http_port),
        "LEADPULSE_WORKER_HTTP_PORT": str(stack.worker_port),
        "LEADPULSE_DATA_DIR": str(settings.data_dir),
    }
    with open(Path(settings.data_dir) / "worker.log", "ab") as log:
        stack.processes["worker"] = subprocess.Popen(
            [sys.executable, "-m", "ops.cli", "worker"], env=env, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    deadline = time.monotonic() + timeout
    while True:
        assert stack.processes["worker"].poll() is None, "the new worker exited; see worker.log"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{stack.worker_port}/readyz", timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        assert time.monotonic() < deadline, "the restarted worker did not become ready"
        time.sleep(0.2)


# --------------------------------------------------------------------------- helpers


def contact_id(name: str) -> str:
    return f"{name}-{TAG}"


def mql_calls(contact: str, name: str = "Ada Adler") -> list[dict]:
    def call(kind: str, **fields) -> dict:
        return {"type": kind, "messageId": str(uuid.uuid4()), "userId": contact, **fields}

    return [
        call("identify", traits={"name": name, "title": "Clinical Psychologist",
                                 "company": {"name": "Northfield University", "industry": "University",
                                             "employee_count": 12000},
                                 "address": {"country": "US"}}),
        call("track", event="Whitepaper Downloaded"),
        call("track", event="Webinar Attended"),
        call("track", event="Email Link Clicked"),
        call("track", event="Demo Requested", properties={"plan": "team"}),
    ]


async def post_batch(http: aiohttp.ClientSession, stack: Stack, calls: list[dict]) -> None:
    async with http.post(f"{stack.base_url}/v1/batch", json={"batch": calls}, headers=AUTH) as response:
        assert response.status == 200, await response.text()


async def post_crm(http: aiohttp.ClientSession, stack: Stack, body: dict) -> None:
    body = {"timestamp": int(time.time() * 1000), "id": str(uuid.uuid4()), **body}
    async with http.post(f"{stack.base_url}/v1/crm/events", json=body, headers=AUTH) as response:
        assert response.status == 200, await response.text()


async def stream_triggers(redis: Redis, contacts: set[str] | None = None) -> list[dict]:
    """Every trigger of this module's contacts (or of ``contacts``) in the Redis stream, in order."""
    out = []
    for _id, fields in await redis.xrange(STREAM):
        trigger = orjson.loads(fields[b"trigger"])
        cid = trigger["contact_id"]
        if (contacts is None and cid.endswith(TAG)) or (contacts is not None and cid in contacts):
            out.append(trigger)
    return out


async def wait_until(check, timeout: float = 20.0, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(every)


def hook_deliveries(receiver: ThreadReceiver) -> Counter:
    """webhook-id -> number of 2xx-answered deliveries."""
    return Counter(h.headers["webhook-id"] for h in receiver.got("/hook"))


def slack_alerts(receiver: ThreadReceiver) -> Counter:
    """(contact_id, trigger type) -> how many 2xx-answered Slack messages carried it."""
    label_type = {label: ttype for ttype, label in TYPE_LABELS.items()}
    found: Counter = Counter()
    for hit in receiver.got("/slack"):
        message = orjson.loads(hit.body)
        blocks = message["blocks"]
        if blocks[0]["text"]["text"].endswith("lead alerts"):  # a digest: one section per lead
            for block in blocks[1:]:
                if block["type"] != "section":
                    continue
                cid = parse_qs(urlsplit(block["accessory"]["url"]).query)["contact"][0]
                label = block["text"]["text"].split("\n")[1].split(" · ")[0]
                found[(cid, label_type[label])] += 1
        else:
            actions = next(b for b in blocks if b["type"] == "actions")
            cid = parse_qs(urlsplit(actions["elements"][0]["url"]).query)["contact"][0]
            header = blocks[0]["text"]["text"]
            label = next(lab for lab in label_type if header.startswith(lab + ": "))
            found[(cid, label_type[label])] += 1
    return found


# --------------------------------------------------------------------------- the tests


async def test_unsubscribe_and_sales_conversation_reach_redis_fast(stack: Stack):
    redis = Redis.from_url(stack.services.redis_url)
    unsub = f"unsub-{TAG}@example.org"
    talk = contact_id("talk")
    last = (await redis.xrevrange(STREAM, count=1) or [(b"0-0", None)])[0][0]
    payload = {
        "RecordType": "SubscriptionChange", "MessageID": str(uuid.uuid4()), "ServerID": 23,
        "MessageStream": "outbound", "ChangedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "Recipient": unsub, "Origin": "Recipient", "SuppressSending": True,
        "SuppressionReason": "ManualSuppression", "Tag": "t", "Metadata": {},
    }
    basic = "Basic " + base64.b64encode(f"{PM_USER}:{PM_PASSWORD}".encode()).decode()
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{stack.base_url}/webhooks/postmark", json=payload,
                             headers={"Authorization": basic}) as response:
            assert response.status == 200, await response.text()
        acked = time.monotonic()
        in_set = trigger_at = None
        seen: list[dict] = []
        deadline = acked + 10
        while (in_set is None or trigger_at is None) and time.monotonic() < deadline:
            if in_set is None and await redis.sismember("leadpulse:suppressed", unsub):
                in_set = time.monotonic()
            for _stream, items in await redis.xread({STREAM: last}, block=5, count=100) or []:
                for entry_id, fields in items:
                    last = entry_id
                    trigger = orjson.loads(fields[b"trigger"])
                    if trigger["contact_id"] == unsub:
                        seen.append(trigger)
                        if trigger["type"] == "suppress" and trigger_at is None:
                            trigger_at = time.monotonic()
        assert in_set is not None, "contact never appeared in leadpulse:suppressed"
        assert trigger_at is not None, "no suppress trigger in leadpulse:triggers"
        print(f"\nsuppression after the POST was acked: in leadpulse:suppressed {1000 * (in_set - acked):.0f} ms, "
              f"suppress trigger in leadpulse:triggers {1000 * (trigger_at - acked):.0f} ms")
        suppress = next(t for t in seen if t["type"] == "suppress")
        assert suppress["reasons"][0]["signal"] == "suppression.unsubscribed"

        # A trait-based suppression ends: unsuppress, and the contact leaves the set.
        await post_crm(http, stack, {"type": "sales_conversation", "contact_id": talk, "active": True})
        await wait_until(lambda: redis.sismember("leadpulse:suppressed", talk))
        await post_crm(http, stack, {"type": "sales_conversation", "contact_id": talk, "active": False})

        async def unsuppressed():
            return not await redis.sismember("leadpulse:suppressed", talk) and {"suppress", "unsuppress"} <= {
                t["type"] for t in await stream_triggers(redis, {talk})}

        await wait_until(unsuppressed)
    # Leaving nurture (here: by being suppressed) is reported once, right after the suppress.
    types = [t["type"] for t in await stream_triggers(redis, {unsub})]
    assert types == ["suppress", "nurture_exit"]
    await redis.aclose()


async def test_sse_stream_sees_a_new_trigger_and_the_hot_band_lists_the_contact(stack: Stack):
    hot = contact_id("hot")
    calls = [
        {"type": "identify", "messageId": str(uuid.uuid4()), "userId": hot,
         "traits": {"name": "Hal Hot", "title": "Psychologist",
                    "company": {"industry": "University", "employee_count": 200}}},  # fit 30
        {"type": "track", "messageId": str(uuid.uuid4()), "userId": hot, "event": "Demo Requested"},
        {"type": "track", "messageId": str(uuid.uuid4()), "userId": hot, "event": "Time On Site",
         "properties": {"seconds": 300}},  # 30 + 21 = 51: hot
    ]
    timeout = aiohttp.ClientTimeout(total=30, sock_read=20)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        async with http.get(f"{stack.base_url}/v1/triggers/stream") as sse:
            assert sse.status == 200 and sse.headers["Content-Type"].startswith("text/event-stream")
            await asyncio.sleep(0.3)  # let the server issue its blocking XREAD from "$" before we cause a trigger
            await post_batch(http, stack, calls)
            got: list[dict] = []
            event_ids: list[str] = []
            async for raw in sse.content:
                line = raw.decode().rstrip("\n")
                if line.startswith("id: "):
                    event_ids.append(line[4:])
                if line.startswith("data: "):
                    trigger = orjson.loads(line[6:])
                    if trigger["contact_id"] == hot:
                        got.append(trigger)
                        if trigger["type"] == "hot_lead":
                            break
        assert "hot_lead" in {t["type"] for t in got} and event_ids
        hot_lead = next(t for t in got if t["type"] == "hot_lead")
        assert hot_lead["band"] == "hot" and hot_lead["score"] == pytest.approx(51, abs=0.5)

        async with http.get(f"{stack.base_url}/v1/contacts", params={"band": "hot", "limit": "50"}) as response:
            assert response.status == 200
            listing = await response.json()
        assert listing["band"] == "hot"
        row = next(c for c in listing["contacts"] if c["contact_id"] == hot)
        assert 51 <= row["score"] < 76
        async with http.get(f"{stack.base_url}/v1/contacts", params={"band": "sql"}) as response:
            assert hot not in {c["contact_id"] for c in (await response.json())["contacts"]}


async def test_webhooks_signed_and_once_per_trigger_despite_429_and_500(stack: Stack, receiver: ThreadReceiver):
    receiver.answer("/hook", Answer(429, {"Retry-After": "1"}), Answer(500))
    receiver.answer("/slack", Answer(429, {"Retry-After": "1"}))
    ada = contact_id("ada")
    redis = Redis.from_url(stack.services.redis_url)
    async with aiohttp.ClientSession() as http:
        await post_batch(http, stack, mql_calls(ada))
    expected = {"mql", "hot_lead", "route_to_sales", "nurture_exit"}

    async def all_in_stream():
        found = await stream_triggers(redis, {ada})
        return found if expected <= {t["type"] for t in found} else None

    triggers = await all_in_stream() or await wait_until(all_in_stream)
    ids = {t["trigger_id"] for t in triggers}

    async def delivered():
        return ids <= set(hook_deliveries(receiver))

    await wait_until(delivered, timeout=30)
    # The scripted failures happened, and were retried.
    failed = receiver.got("/hook", ok=False)
    assert [h.status for h in failed][:2] == [429, 500]
    assert all(hook_deliveries(receiver)[h.headers["webhook-id"]] == 1 for h in failed)
    # Every delivery is signed per Standard Webhooks, and its body is the trigger named by webhook-id.
    for hit in receiver.got("/hook", ok=None):
        verify(SECRET, hit.headers, hit.body)
        assert orjson.loads(hit.body)["trigger_id"] == hit.headers["webhook-id"]
    by_id = {orjson.loads(h.body)["trigger_id"]: orjson.loads(h.body) for h in receiver.got("/hook")}
    assert by_id[next(t["trigger_id"] for t in triggers if t["type"] == "mql")]["score"] >= 80
    for tid in ids:
        assert hook_deliveries(receiver)[tid] == 1

    # Slack alerts on mql, hot_lead and route_to_sales (not nurture_exit), after its own 429.
    async def slack_done():
        return {(ada, t) for t in ("mql", "hot_lead", "route_to_sales")} <= set(slack_alerts(receiver))

    await wait_until(slack_done, timeout=30)
    assert receiver.got("/slack", ok=False)[0].status == 429
    assert (ada, "nurture_exit") not in slack_alerts(receiver)
    await redis.aclose()


async def test_sla_breach_fires_after_the_short_sla_unless_sales_answered(stack: Stack, receiver: ThreadReceiver):
    quiet, answered = contact_id("quiet"), contact_id("answered")
    redis = Redis.from_url(stack.services.redis_url)
    async with aiohttp.ClientSession() as http:
        await post_batch(http, stack, mql_calls(quiet, "Quinn Quiet") + mql_calls(answered, "Ann Answered"))

        async def both_mql():
            found = await stream_triggers(redis, {quiet, answered})
            return {t["contact_id"] for t in found if t["type"] == "mql"} == {quiet, answered} and found

        found = await wait_until(both_mql)
        mql_at = {t["contact_id"]: t["event_ts"] for t in found if t["type"] == "mql"}
        await post_crm(http, stack, {"type": "feedback", "contact_id": answered, "decision": "accept",
                                     "timestamp": mql_at[answered] + 1})
        # Event time passes the deadline: the next event of each contact carries it past.
        while time.time() * 1000 < max(mql_at.values()) + SLA_MS + 100:
            await asyncio.sleep(0.1)
        await post_batch(http, stack, [
            {"type": "page", "messageId": str(uuid.uuid4()), "userId": who, "properties": {"path": "/pricing"}}
            for who in (quiet, answered)
        ])

        async def breach():
            found = await stream_triggers(redis, {quiet, answered})
            return [t for t in found if t["type"] == "sla_breach"]

        breaches = await wait_until(breach)
        # The page view of `answered` was applied too (same batch), so no breach can still come for it.
        async with http.get(f"{stack.base_url}/v1/contacts/{answered}") as response:
            body = await response.json()
    assert body["state"] == "sql" and body["sla_due"] is None
    assert [t["contact_id"] for t in breaches] == [quiet]
    b = breaches[0]
    assert b["event_ts"] == mql_at[quiet] + SLA_MS and b["route"] == "escalation"

    async def escalated():  # the breach reaches the sinks like any trigger
        return b["trigger_id"] in hook_deliveries(receiver) and (quiet, "sla_breach") in slack_alerts(receiver)

    await wait_until(escalated, timeout=30)
    await redis.aclose()


async def test_worker_restart_delivers_no_trigger_twice(stack: Stack, receiver: ThreadReceiver):
    redis = Redis.from_url(stack.services.redis_url)

    async def everything_delivered():
        ids = {t["trigger_id"] for t in await stream_triggers(redis)}
        return ids and ids <= set(hook_deliveries(receiver))

    await wait_until(everything_delivered, timeout=30)
    before = len(receiver.got("/hook"))
    restart_worker(stack)
    bob = contact_id("bob")
    async with aiohttp.ClientSession() as http:
        await post_batch(http, stack, mql_calls(bob, "Bob Berg"))

        async def bob_delivered():
            found = {t["trigger_id"] for t in await stream_triggers(redis, {bob})}
            return len(found) >= 4 and found <= set(hook_deliveries(receiver))

        await wait_until(bob_delivered, timeout=60)
    # Give a replay (if any) after the restart the chance to show up as a duplicate.
    await wait_until(everything_delivered, timeout=30)
    counts = hook_deliveries(receiver)
    assert len(receiver.got("/hook")) > before
    duplicates = {tid: n for tid, n in counts.items() if n > 1}
    assert duplicates == {}
    # Everything of this module that reached the Redis stream reached the webhook exactly once.
    ours = {t["trigger_id"] for t in await stream_triggers(redis)}
    assert all(counts[tid] == 1 for tid in ours)
    # Slack is paced on its own queue, behind the webhook: wait for Bob's MQL there too.
    async def bob_mql_on_slack():
        return (bob, "mql") in slack_alerts(receiver)

    await wait_until(bob_mql_on_slack, timeout=30)
    assert all(n == 1 for n in slack_alerts(receiver).values())
    await redis.aclose()
