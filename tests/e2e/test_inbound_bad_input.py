"""Bad input against a real ``leadpulse collector`` process: the right 4xx with a reason, a DLQ record where an event
from a known sender was involved, and a collector that keeps serving.

DLQ policy checked here: what a sender with a valid write key sent and we refused is on the DLQ
topic with the reason; a request without a valid key (401) is answered and counted, never
dead-lettered, so an anonymous sender cannot fill the topic.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import pytest

from ops.embedded import free_port
from ops.settings import Settings, settings_env
from streams.topics import ensure_topics
from topic_reader import read_until
from isolated import isolated_settings

pytestmark = pytest.mark.e2e

AUTH = {"Authorization": "Basic " + base64.b64encode(b"demo:").decode()}
JSON = {"Content-Type": "application/json"}


@dataclass
class Collector:
    """A real ``leadpulse collector`` child process (no worker: nothing here needs scoring)."""

    settings: Settings
    services: Any
    process: subprocess.Popen
    base_url: str

    def problems(self) -> list[str]:
        return [] if self.process.poll() is None else [f"collector exited ({self.process.returncode})"]


@pytest.fixture(scope="module")
def stack(services, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("inbound-bad")
    settings = isolated_settings(
        services,
        data_dir,
        "bad",
        http_port=free_port(),
    )
    asyncio.run(ensure_topics(services.broker_url, [settings.events_topic, settings.triggers_topic, settings.dlq_topic], 2))
    with open(data_dir / "collector.log", "ab") as log:
        process = subprocess.Popen([sys.executable, "-m", "ops.cli", "collector"], env={**os.environ, **settings_env(settings)},
                                   stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    running = Collector(settings, services, process, f"http://127.0.0.1:{settings.http_port}")
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, f"collector exited; see {data_dir / 'collector.log'}"
            try:
                with urllib.request.urlopen(f"{running.base_url}/readyz", timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"collector not ready; see {data_dir / 'collector.log'}"
            time.sleep(0.1)
        yield running
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()


def call(**fields: Any) -> dict[str, Any]:
    return {"type": "track", "messageId": str(uuid.uuid4()), "userId": "bad-input-user", "event": "Demo Requested", **fields}


def dumps(value: Any) -> bytes:
    return orjson.dumps(value)


@dataclass
class Case:
    name: str
    path: str
    body: bytes
    headers: dict[str, str]
    status: int
    field: str | None = None
    error: str = ""  # the reason starts with this
    dlq: str | None = None  # a DLQ reason starting with this is expected (None: no DLQ record)


def deep_json(levels: int) -> bytes:
    return b'{"a":' * levels + b"{}" + b"}" * levels


def cases() -> list[Case]:
    too_deep_for_orjson = b'{"type":"track","properties":' + b"[" * 1100 + b"]" * 1100 + b"}"
    too_deep_for_us = dumps(call())[:-1] + b',"properties":' + deep_json(300) + b"}"
    big_batch = dumps({"batch": [call(properties={"pad": "x" * 1000}) for _ in range(600)]})
    bomb = gzip.compress(b'{"batch": [' + b" " * 20_000_000 + b"]}")
    return [
        Case("invalid JSON", "/v1/track", b"{not json", {**AUTH, **JSON}, 400, "body", "invalid JSON", "invalid JSON"),
        Case("wrong content type", "/v1/track", dumps(call()), {**AUTH, "Content-Type": "application/xml"}, 415,
             "Content-Type", "Content-Type: expected", "Content-Type: expected"),
        Case("unknown content encoding", "/v1/track", dumps(call()), {**AUTH, **JSON, "Content-Encoding": "compress"}, 415,
             "Content-Encoding", "Content-Encoding: expected", "Content-Encoding: expected"),
        Case("not gzip", "/v1/track", b"plain bytes", {**AUTH, **JSON, "Content-Encoding": "gzip"}, 400,
             "Content-Encoding", "Content-Encoding: body is not valid gzip", "Content-Encoding: body is not valid gzip"),
        Case("oversize event", "/v1/track", dumps(call(properties={"blob": "x" * 40_000})), {**AUTH, **JSON}, 413,
             "body", "body is larger than 32768", "body is larger than 32768"),
        Case("oversize batch", "/v1/batch", big_batch, {**AUTH, **JSON}, 413, "body", "body is larger than 512000",
             "body is larger than 512000"),
        Case("gzip bomb", "/v1/batch", bomb, {**AUTH, **JSON, "Content-Encoding": "gzip"}, 413, "body",
             "decompressed body is larger than 512000", "decompressed body is larger than 512000"),
        Case("huge batch", "/v1/batch", dumps({"batch": [{"type": "page"}] * 3000}), {**AUTH, **JSON}, 413, "batch",
             "batch: 3000 calls", "batch: 3000 calls"),
        Case("missing userId", "/v1/track", dumps(call(userId=None)), {**AUTH, **JSON}, 400, "userId",
             "userId or anonymousId is required", "userId or anonymousId is required"),
        Case("missing messageId", "/v1/page", dumps({"userId": "u"}), {**AUTH, **JSON}, 400, "messageId",
             "messageId:", "messageId:"),
        Case("non-UTF-8", "/v1/track", b'{"type":"track","event":"\xff\xfe"}', {**AUTH, **JSON}, 400, "body",
             "invalid JSON", "invalid JSON: str is not valid UTF-8"),
        Case("nested beyond orjson's limit", "/v1/track", too_deep_for_orjson, {**AUTH, **JSON}, 400, "body",
             "invalid JSON", "invalid JSON: depth limit exceeded"),
        Case("nested beyond 32 levels", "/v1/track", too_deep_for_us, {**AUTH, **JSON}, 400, "properties",
             "properties: nested deeper than 32 levels", "properties: nested deeper than 32 levels"),
        Case("batch without batch array", "/v1/batch", dumps([call()]), {**AUTH, **JSON}, 400, "batch",
             "batch: expected an object", "batch: expected an object"),
        Case("batch item without type", "/v1/batch", dumps({"batch": [{k: v for k, v in call().items() if k != "type"}]}),
             {**AUTH, **JSON}, 400, None, "no valid event in batch", "batch[0]: type: every call in a batch needs a type"),
        Case("unknown write key (Basic)", "/v1/track", dumps(call()), {"Authorization": "Basic " + base64.b64encode(b"nope:").decode(),
             **JSON}, 401, "writeKey", "unknown write key"),
        Case("unknown write key (body)", "/v1/t", dumps(call(writeKey="nope")), {"Content-Type": "text/plain"}, 401, "writeKey",
             "unknown write key"),
        Case("no write key", "/v1/track", dumps(call()), JSON, 401, "writeKey", "missing write key"),
        Case("invalid JSON without a key", "/v1/track", b"{not json", JSON, 400, "body", "invalid JSON"),
    ]


async def test_each_bad_request_gets_its_4xx_reason_and_dlq_record(stack: Collector):
    expected_dlq: list[str] = []
    async with aiohttp.ClientSession() as http:
        for case in cases():
            async with http.post(f"{stack.base_url}{case.path}", data=case.body, headers=case.headers) as response:
                body = await response.json()
                assert response.status == case.status, (case.name, body)
            assert body["success"] is False, case.name
            assert body["error"].startswith(case.error), (case.name, body)
            assert body["message"] == body["error"] and body["code"], (case.name, body)
            if case.field is not None:
                assert body.get("field") == case.field, (case.name, body)
            if case.dlq is not None:
                expected_dlq.append(case.dlq)

        # still serving, and still accepting good events
        async with http.get(f"{stack.base_url}/healthz") as response:
            assert response.status == 200
        async with http.post(f"{stack.base_url}/v1/track", json=call(), headers=AUTH) as response:
            assert response.status == 200, await response.text()
    assert stack.problems() == []

    def reasons(records: list) -> list[str]:
        return [v.get("reason", "") for _, v in records]

    def all_there(records: list) -> bool:
        got = reasons(records)
        return all(any(r.lower().startswith(want.lower()) for r in got) for want in expected_dlq)

    records = await read_until(stack.services.broker_url, stack.settings.dlq_topic, all_there)
    got = reasons(records)
    missing = [want for want in expected_dlq if not any(r.lower().startswith(want.lower()) for r in got)]
    assert missing == [], f"no DLQ record for {missing}; have {got}"
    # one record per refused request, nothing for the 401s and the anonymous invalid JSON
    assert len(records) == len(expected_dlq), got
    for _, value in records:
        assert value["stage"] == "collector" and value["source"] == "segment"
        orjson.dumps(value)  # bounded: deep payloads were cut, not dropped
    deep = next(v for _, v in records if v["reason"].startswith("properties: nested"))
    assert deep["payload"]["userId"] == "bad-input-user"


async def test_a_batch_with_good_and_bad_calls_keeps_the_good_ones(stack: Collector):
    good = call(type="page", properties={"path": "/"})
    too_big = call(properties={"blob": "y" * 40_000})
    no_id = call(userId=None)
    async with aiohttp.ClientSession(headers=AUTH) as http:
        async with http.post(f"{stack.base_url}/v1/batch", json={"batch": [good, too_big, no_id]}) as response:
            assert response.status == 200
            body = await response.json()
    assert body["accepted"] == 1
    assert [(r["index"], r["field"]) for r in body["rejected"]] == [(1, None), (2, "userId")]
    assert body["rejected"][0]["error"] == "event is larger than 32768 bytes"
    records = await read_until(stack.services.broker_url, stack.settings.events_topic,
                               lambda rs: any(_has_id(v, good["messageId"]) for _, v in rs))
    assert any(_has_id(v, good["messageId"]) for _, v in records)
    assert not any(_has_id(v, too_big["messageId"]) or _has_id(v, no_id["messageId"]) for _, v in records)


def _has_id(value: Any, event_id: str) -> bool:
    events = value if isinstance(value, list) else [value]
    return any(isinstance(e, dict) and e.get("id") == event_id for e in events)
