"""The Segment-compatible routes of connectors.collector against a fake Intake (no broker, no Redis)."""

from __future__ import annotations

import base64
import gzip
import uuid
import zlib

import orjson
import pytest
from _webhook_support import FakeIntake, backpressure, broker_down
from aiohttp.test_utils import TestClient, TestServer

from connectors.collector import Collector, build_app
from ops.metrics import Metrics
from ops.settings import Settings


def auth(key: str = "demo") -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


def call(**fields):
    return {"type": "track", "messageId": str(uuid.uuid4()), "userId": "u-1", "event": "Demo Requested", **fields}


@pytest.fixture
async def harness():
    clients = []

    async def build(intake: FakeIntake | None = None, **overrides):
        intake = intake or FakeIntake()
        settings = Settings(_env_file=None, write_keys="demo,web-key:website", **overrides)
        collector = Collector(settings, intake=intake, redis=None, metrics=Metrics(), current_model=lambda: None)
        client = TestClient(TestServer(build_app(collector)))
        await client.start_server()
        clients.append(client)
        return client, intake

    yield build
    for client in clients:
        await client.close()


async def post(client, path, body, headers=None, content_type="application/json"):
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    response = await client.post(path, data=data, headers={"Content-Type": content_type, **(headers or {})})
    return response, await response.json()


# --- what real clients send ---------------------------------------------------------------


async def test_gzip_batch_as_segment_and_rudder_clients_send_it(harness):
    client, intake = await harness()
    body = {"batch": [call(), call(type="identify", traits={"title": "Professor"})], "sentAt": "2026-01-01T00:00:00Z",
            "writeKey": "demo"}
    resp, out = await post(client, "/v1/batch", gzip.compress(orjson.dumps(body)), {**auth(), "Content-Encoding": "gzip"})
    assert resp.status == 200 and out == {"success": True, "accepted": 2, "rejected": []}
    assert [e["type"] for e in intake.submitted] == ["track", "identify"]


async def test_deflate_body(harness):
    client, intake = await harness()
    resp, _ = await post(client, "/v1/track", zlib.compress(orjson.dumps(call())), {**auth(), "Content-Encoding": "deflate"})
    assert resp.status == 200 and len(intake.submitted) == 1


async def test_text_plain_short_path_with_write_key_in_body(harness):
    client, intake = await harness()
    resp, _ = await post(client, "/v1/t", call(writeKey="web-key"), content_type="text/plain")
    assert resp.status == 200 and intake.submitted[0]["source"] == "website"


async def test_large_batch_read_in_several_chunks(harness):
    # ~400 KB arrives in many TCP chunks: the whole body must be read, not the first chunk only
    client, intake = await harness()
    batch = [call(properties={"pad": "x" * 300}) for _ in range(900)]
    resp, out = await post(client, "/v1/batch", {"batch": batch}, auth())
    assert resp.status == 200, out
    assert out["accepted"] == 900 and len(intake.submitted) == 900


async def test_cors_preflight_and_headers(harness):
    client, _ = await harness()
    resp = await client.options("/v1/t", headers={"Origin": "https://site", "Access-Control-Request-Method": "POST"})
    assert resp.status == 204 and resp.headers["Access-Control-Allow-Origin"] == "*"
    assert "Content-Encoding" in resp.headers["Access-Control-Allow-Headers"]


# --- refusals --------------------------------------------------------------------------------


async def test_error_bodies_carry_code_and_message_for_client_libraries(harness):
    client, _ = await harness()
    resp, out = await post(client, "/v1/track", call(userId=None))
    assert resp.status == 401 and out["code"] == "unauthorized" and out["message"] == out["error"]
    resp, out = await post(client, "/v1/track", b"{nope", auth())
    assert resp.status == 400 and out["code"] == "bad_request" and out["field"] == "body"


async def test_unknown_basic_key_is_refused_before_reading_and_never_dead_lettered(harness):
    client, intake = await harness()
    resp, out = await post(client, "/v1/track", b"{nope", auth("stolen"))
    assert resp.status == 401 and out["field"] == "writeKey"
    resp, out = await post(client, "/v1/track", call(writeKey="stolen"))
    assert resp.status == 401
    assert intake.dead == [] and intake.submitted == []


async def test_invalid_json_is_dead_lettered_only_for_a_known_sender(harness):
    client, intake = await harness()
    resp, _ = await post(client, "/v1/track", b"{nope", content_type="text/plain")
    assert resp.status == 400 and intake.dead == []
    resp, out = await post(client, "/v1/track", b"{nope", auth())
    assert resp.status == 400 and out["error"].startswith("invalid JSON")
    [(payload, reason, source)] = intake.dead
    assert payload == "{nope" and reason.startswith("invalid JSON") and source == "segment"


async def test_non_utf8_body(harness):
    client, intake = await harness()
    resp, out = await post(client, "/v1/track", b'{"messageId": "\xff\xfe", "userId": "u", "event": "E"}', auth())
    assert resp.status == 400 and "UTF-8" in out["error"]
    assert intake.dead and "\ufffd" in intake.dead[0][0]


async def test_nesting_beyond_orjson_limit_and_beyond_ours(harness):
    client, intake = await harness()
    resp, out = await post(client, "/v1/track", b'{"properties":' + b"[" * 2000 + b"]" * 2000 + b"}", auth())
    assert resp.status == 400 and "invalid JSON" in out["error"]
    deep = b'{"a":' * 300 + b"{}" + b"}" * 300  # parses, but orjson could not write it back
    single = orjson.dumps(call())[:-1] + b',"properties":' + deep + b"}"
    resp, out = await post(client, "/v1/track", single, auth())
    assert resp.status == 400 and out["field"] == "properties"
    resp, out = await post(client, "/v1/batch", b'{"batch":[' + single + b"," + orjson.dumps(call()) + b"]}", auth())
    assert resp.status == 200 and out["accepted"] == 1 and out["rejected"][0]["field"] == "properties"
    assert len(intake.dead) == 3
    orjson.dumps(intake.dead[-1][0], default=str)  # the fake checks serialisability; the real intake bounds depth


async def test_wrong_content_type_and_encoding(harness):
    client, intake = await harness()
    resp, out = await post(client, "/v1/track", orjson.dumps(call()), auth(), content_type="application/x-www-form-urlencoded")
    assert resp.status == 415 and out["field"] == "Content-Type"
    resp, out = await post(client, "/v1/track", orjson.dumps(call()), {**auth(), "Content-Encoding": "br2"})
    assert resp.status == 415 and out["field"] == "Content-Encoding"
    resp, out = await post(client, "/v1/track", b"not gzip at all", {**auth(), "Content-Encoding": "gzip"})
    assert resp.status == 400 and out["field"] == "Content-Encoding"
    assert [r for _, r, _ in intake.dead][:2] == [
        "Content-Type: expected application/json or text/plain, got application/x-www-form-urlencoded",
        "Content-Encoding: expected gzip, deflate or identity, got br2",
    ]
    assert intake.submitted == []


async def test_oversize_event_batch_and_gzip_bomb(harness):
    client, intake = await harness()
    resp, out = await post(client, "/v1/track", call(properties={"blob": "x" * 40_000}), auth())
    assert resp.status == 413 and out["code"] == "payload_too_large"
    resp, out = await post(client, "/v1/batch", {"batch": [call(properties={"pad": "x" * 1000}) for _ in range(600)]}, auth())
    assert resp.status == 413
    bomb = gzip.compress(b'{"batch": [' + b" " * 50_000_000 + b"]}")  # 50 MB of spaces in ~50 KB
    assert len(bomb) < 100_000
    resp, out = await post(client, "/v1/batch", bomb, {**auth(), "Content-Encoding": "gzip"})
    assert resp.status == 413 and out["error"].startswith("decompressed body is larger")
    assert len(intake.dead) == 3 and intake.submitted == []


async def test_oversize_event_inside_a_batch_is_rejected_alone(harness):
    client, intake = await harness()
    resp, out = await post(client, "/v1/batch", {"batch": [call(properties={"blob": "x" * 40_000}), call()]}, auth())
    assert resp.status == 200 and out["accepted"] == 1 and out["rejected"][0]["index"] == 0
    resp, out = await post(client, "/v1/batch", {"batch": [call(properties={"blob": "x" * 40_000})]}, auth())
    assert resp.status == 413


async def test_too_many_calls_in_one_batch(harness):
    client, intake = await harness()
    resp, out = await post(client, "/v1/batch", {"batch": [{"type": "track"}] * 2501}, auth())
    assert resp.status == 413 and "2501 calls" in out["error"]
    assert len(intake.dead) == 1 and intake.submitted == []


async def test_batch_shape_and_missing_type(harness):
    client, intake = await harness()
    resp, out = await post(client, "/v1/batch", [call()], auth())
    assert resp.status == 400 and out["field"] == "batch"
    item = call()
    del item["type"]
    resp, out = await post(client, "/v1/batch", {"batch": [item]}, auth())
    assert resp.status == 400 and out["rejected"][0]["field"] == "type"


async def test_backpressure_and_broker_down_answer_with_retry_after(harness):
    client, _ = await harness(FakeIntake(fail_with=backpressure()))
    resp, out = await post(client, "/v1/track", call(), auth())
    assert resp.status == 429 and resp.headers["Retry-After"] == "2" and out["code"] == "rate_limited"
    client, _ = await harness(FakeIntake(fail_with=broker_down()))
    resp, out = await post(client, "/v1/batch", {"batch": [call()]}, auth())
    assert resp.status == 503 and resp.headers["Retry-After"] == "7" and out["code"] == "unavailable"
