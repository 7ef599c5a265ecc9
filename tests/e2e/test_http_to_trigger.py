"""End to end: HTTP POST to the collector -> broker -> worker -> trigger in Redis and on the topic.

Runs the real processes (``leadpulse collector`` and ``leadpulse worker`` as children,
as ``leadpulse up`` does) against the session's real broker and Redis.
"""

from __future__ import annotations

import asyncio
import base64
import time
import uuid

import aiohttp
import orjson
import pytest
from redis.asyncio import Redis

from isolated import isolated_settings
from ops.supervisor import Stack
from topic_reader import read_until

pytestmark = pytest.mark.e2e

AUTH = {"Authorization": "Basic " + base64.b64encode(b"demo:").decode()}
NOW_ISO = "2026-01-01T00:00:00Z"


@pytest.fixture(scope="module")
def stack(services, tmp_path_factory):
    settings = isolated_settings(services, tmp_path_factory.mktemp("e2e"), "e2e")
    running = Stack(settings).start(ready_timeout=90)
    yield running
    running.stop()


def calls_for(contact: str) -> list[dict]:
    def call(kind: str, **fields) -> dict:
        return {"type": kind, "messageId": str(uuid.uuid4()), "userId": contact, **fields}

    return [
        call("identify", traits={"name": "Ada Adler", "title": "Clinical Psychologist",
                                 "company": {"name": "Northfield University", "industry": "University", "employee_count": 12000},
                                 "address": {"country": "US"}}),
        call("page", name="Pricing", properties={"path": "/pricing"}),
        call("track", event="Whitepaper Downloaded"),
        call("track", event="Webinar Attended"),
        call("track", event="Email Link Clicked"),
        call("track", event="Demo Requested", properties={"plan": "team"}),
    ]


async def wait_for_triggers(redis: Redis, contact: str, types: set[str], timeout: float = 20.0) -> list[dict]:
    found: list[dict] = []
    deadline = time.monotonic() + timeout
    last = "0"
    while time.monotonic() < deadline and not types <= {t["type"] for t in found}:
        entries = await redis.xread({"leadpulse:triggers": last}, block=200, count=500)
        for _stream, items in entries or []:
            for entry_id, fields in items:
                last = entry_id
                trigger = orjson.loads(fields[b"trigger"])
                if trigger["contact_id"] == contact:
                    found.append(trigger)
    return found


async def test_post_to_trigger_in_redis_topic_and_read_api(stack: Stack):
    contact = f"ada-{uuid.uuid4().hex[:6]}@northfield.example"
    redis = Redis.from_url(stack.services.redis_url)
    async with aiohttp.ClientSession(headers=AUTH) as http:
        started = time.monotonic()
        async with http.post(f"{stack.base_url}/v1/batch", json={"batch": calls_for(contact)}) as response:
            assert response.status == 200, await response.text()
            assert (await response.json())["success"] is True
        acked = time.monotonic()
        triggers = await wait_for_triggers(redis, contact, {"mql", "hot_lead", "route_to_sales"})
        seen = time.monotonic()
        print(f"\nPOST ack {1000 * (acked - started):.0f} ms; POST -> mql trigger in Redis {1000 * (seen - started):.0f} ms")

        by_type = {t["type"]: t for t in triggers}
        assert {"mql", "hot_lead", "route_to_sales"} <= set(by_type)
        mql = by_type["mql"]
        assert mql["score"] >= 80 and mql["previous_score"] < 80
        assert mql["band"] == "sql" and mql["rules_version"]
        assert "demo_request" in {reason["signal"] for reason in mql["reasons"]}
        assert all(reason["points"] > 0 for reason in mql["reasons"])
        assert mql["contact"]["traits"]["name"] == "Ada Adler"

        async with http.get(f"{stack.base_url}/v1/contacts/{contact}") as response:
            assert response.status == 200
            body = await response.json()
        assert body["contact_id"] == contact
        assert body["score"] == pytest.approx(mql["score"], abs=1.0)  # a little decay since the event
        assert body["fit"] == 40 and body["band"] == "sql" and body["state"] == "mql"
        assert body["suppressed"] is False and body["reasons"]

        async with http.get(f"{stack.base_url}/v1/contacts/nobody-{uuid.uuid4().hex}") as response:
            assert response.status == 404
    await redis.aclose()

    records = await read_until(stack.services.broker_url, stack.settings.triggers_topic,
                               lambda rs: any(v["trigger_id"] == mql["trigger_id"] for _, v in rs))
    on_topic = {value["trigger_id"]: (key, value) for key, value in records}
    key, value = on_topic[mql["trigger_id"]]
    assert key == contact.encode() and value["score"] == mql["score"] and value["type"] == "mql"


async def test_duplicates_are_scored_once(stack: Stack):
    contact = f"dup-{uuid.uuid4().hex[:6]}"
    click = {"type": "track", "messageId": f"m-{uuid.uuid4()}", "userId": contact, "event": "Email Link Clicked"}
    single = {"type": "track", "messageId": f"m-{uuid.uuid4()}", "userId": f"{contact}-ref", "event": "Email Link Clicked"}
    async with aiohttp.ClientSession(headers=AUTH) as http:
        for _ in range(3):  # a tracker retrying the same message
            async with http.post(f"{stack.base_url}/v1/track", json=click) as response:
                assert response.status == 200
        async with http.post(f"{stack.base_url}/v1/batch", json={"batch": [click, click, single]}) as response:
            assert response.status == 200
        deadline = time.monotonic() + 20
        bodies = {}
        while time.monotonic() < deadline and len(bodies) < 2:
            for who in (contact, f"{contact}-ref"):
                async with http.get(f"{stack.base_url}/v1/contacts/{who}") as response:
                    if response.status == 200:
                        bodies[who] = await response.json()
            await asyncio.sleep(0.2)
    assert set(bodies) == {contact, f"{contact}-ref"}
    assert bodies[contact]["behaviour"] == pytest.approx(bodies[f"{contact}-ref"]["behaviour"], abs=0.05)


@pytest.mark.parametrize(
    "path, body, headers, status, field",
    [
        ("/v1/track", b"{not json", AUTH, 400, None),
        ("/v1/track", orjson.dumps({"type": "track", "messageId": "x", "event": "E"}), AUTH, 400, "userId"),
        ("/v1/track", orjson.dumps({"messageId": "x", "userId": "u", "event": 5}), AUTH, 400, "event"),
        ("/v1/track", orjson.dumps({"userId": "u", "event": "E"}), AUTH, 400, "messageId"),
        ("/v1/page", orjson.dumps({"messageId": "x", "userId": "u", "timestamp": "yesterday"}), AUTH, 400, "timestamp"),
        ("/v1/track", orjson.dumps({"messageId": "x", "userId": "u", "event": "E"}), {}, 401, "writeKey"),
        ("/v1/track", orjson.dumps({"messageId": "x", "userId": "u", "event": "E", "writeKey": "wrong"}), {}, 401, "writeKey"),
        ("/v1/track", orjson.dumps({"messageId": "x", "userId": "u", "event": "E", "properties": {"blob": "x" * 40_000}}), AUTH, 413, None),
    ],
)
async def test_bad_input_gets_a_clear_4xx(stack: Stack, path, body, headers, status, field):
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{stack.base_url}{path}", data=body,
                             headers={**headers, "Content-Type": "application/json"}) as response:
            assert response.status == status
            payload = await response.json()
    assert payload["success"] is False and payload["error"]
    if field:
        assert payload.get("field") == field


async def test_batch_accepts_good_events_and_reports_bad_ones(stack: Stack):
    good = {"type": "page", "messageId": str(uuid.uuid4()), "anonymousId": "v-1", "properties": {"path": "/"}}
    bad = {"type": "track", "messageId": str(uuid.uuid4()), "userId": "u"}  # no event name
    async with aiohttp.ClientSession(headers=AUTH) as http:
        async with http.post(f"{stack.base_url}/v1/batch", json={"batch": [good, bad]}) as response:
            assert response.status == 200
            body = await response.json()
        assert body["accepted"] == 1
        assert body["rejected"] == [{"index": 1, "error": "event: a track call needs an event name", "field": "event"}]
        async with http.post(f"{stack.base_url}/v1/batch", json={"batch": [bad]}) as response:
            assert response.status == 400

    expected = "batch[1]: event: a track call needs an event name"
    records = await read_until(stack.services.broker_url, stack.settings.dlq_topic,
                               lambda rs: any(v.get("reason") == expected for _, v in rs))
    dead = [v for _, v in records if v.get("reason") == expected]
    assert dead and dead[0]["payload"] == bad and dead[0]["source"] == "segment"


async def test_health_and_metrics(stack: Stack):
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{stack.base_url}/healthz") as response:
            assert response.status == 200
        async with http.get(f"{stack.base_url}/readyz") as response:
            assert response.status == 200
            assert (await response.json())["rules_version"]
        async with http.get(f"{stack.base_url}/metrics") as response:
            text = await response.text()
        assert "leadpulse_http_requests_total" in text and "leadpulse_rules_info{" in text
        async with http.get(f"http://127.0.0.1:{stack.worker_port}/metrics") as response:
            text = await response.text()
        assert "leadpulse_batch_duration_seconds_bucket" in text
