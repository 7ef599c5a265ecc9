"""Test helpers for the sink tests: a local HTTP receiver and a fake sleep/clock.

The receiver stands in for Slack and webhook endpoints on 127.0.0.1 (port 0). Each
path answers 200 unless a scripted answer is queued for it (429 with Retry-After,
500, 400, a delay); every request is recorded with its raw body and headers.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int

    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass
class Answer:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: str = "ok"
    delay: float = 0.0
    gate: asyncio.Event | None = None


class Receiver:
    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.script: dict[str, deque[Answer]] = defaultdict(deque)
        self.server: TestServer | None = None

    def answer(self, path: str, *answers: Answer) -> None:
        """Queue answers for the next requests to ``path`` (then 200 again)."""
        self.script[path].extend(answers)

    def url(self, path: str) -> str:
        assert self.server is not None
        return str(self.server.make_url(path))

    def got(self, path: str, status: int | None = 200) -> list[Received]:
        return [r for r in self.requests if r.path == path and (status is None or r.status == status)]

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        script = self.script[request.path]
        answer = script.popleft() if script else Answer()
        if answer.gate is not None:
            await answer.gate.wait()
        if answer.delay:
            await asyncio.sleep(answer.delay)
        self.requests.append(Received(request.path, dict(request.headers), body, answer.status))
        return web.Response(status=answer.status, text=answer.body, headers=answer.headers)


@pytest.fixture
async def receiver():
    rec = Receiver()
    app = web.Application()
    app.router.add_route("POST", "/{tail:.*}", rec.handle)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    rec.server = server
    try:
        yield rec
    finally:
        await server.close()


class FakeTime:
    """A clock that only moves when something sleeps on it: no real waiting, no wall-clock asserts."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += max(0.0, seconds)
        await asyncio.sleep(0)


def trigger(n: int | str, type_: str = "hot_lead", **extra: Any) -> dict[str, Any]:
    t = {
        "trigger_id": f"t{n}",
        "type": type_,
        "contact_id": f"c{n}",
        "score": 82.0,
        "previous_score": 64.0,
        "band": "sql",
        "reasons": [
            {"signal": "demo_request", "points": 25.0, "at": 1_700_000_000_000},
            {"signal": "page_view", "points": 5.0, "at": 1_700_000_000_500},
            {"signal": "email_click", "points": 8.0, "at": 1_700_000_001_000},
        ],
        "rules_version": "2024-01",
        "event_ts": 1_700_000_001_000,
        "emitted_at": 1_700_000_001_200,
    }
    t.update(extra)
    return t
