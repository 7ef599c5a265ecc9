"""Fixtures for the webhook/CRM route tests: an aiohttp test server with a fake Intake."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from _webhook_support import NOW_MS, FakeIntake, make_settings, write_cert_dir
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from connectors.webhook_routes import add_webhook_routes
from ops.metrics import Metrics


@dataclass
class Harness:
    client: TestClient
    intake: FakeIntake
    metrics: Metrics


@pytest.fixture
def cert_dir(tmp_path):
    return write_cert_dir(tmp_path / "sns-certs")


@pytest.fixture
async def make_harness(cert_dir):
    started: list[TestClient] = []

    async def build(
        settings: Any = None,
        *,
        intake: FakeIntake | None = None,
        replay_guard: Any = None,
        now_ms: Callable[[], int] = lambda: NOW_MS,
    ) -> Harness:
        intake = intake or FakeIntake()
        metrics = Metrics()
        app = web.Application()
        add_webhook_routes(
            app,
            intake=intake,
            settings=settings or make_settings(cert_dir),
            metrics=metrics,
            replay_guard=replay_guard,
            now_ms=now_ms,
        )
        client = TestClient(TestServer(app))
        await client.start_server()
        started.append(client)
        return Harness(client, intake, metrics)

    yield build
    for client in started:
        await client.close()
