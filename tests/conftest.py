"""Shared fixtures: real services for the integration layers, fresh names per test.

The broker and Redis are started once per session: testcontainers when a Docker
engine answers, otherwise the embedded Tansu broker and redis-server (the same
children ``leadpulse up`` starts). If neither can start, integration tests are
skipped with the reason. Every test gets its own topic prefix and consumer group,
because reusing the group of a killed process stalls Tansu for ~30 s.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from isolated import isolated_settings
from ops.settings import Settings


@dataclass
class Services:
    broker_url: str
    redis_url: str
    kind: str


def _docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=5).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory):
    if _docker_answers():
        from testcontainers.kafka import KafkaContainer
        from testcontainers.redis import RedisContainer

        with KafkaContainer() as kafka, RedisContainer() as redis:
            host, port = redis.get_container_host_ip(), redis.get_exposed_port(6379)
            yield Services(kafka.get_bootstrap_server(), f"redis://{host}:{port}/0", "containers")
        return
    from ops.embedded import EmbeddedError, EmbeddedServices

    embedded = EmbeddedServices(tmp_path_factory.mktemp("embedded"))
    try:
        embedded.start()
    except EmbeddedError as exc:
        pytest.skip(f"no broker/Redis for integration tests: no Docker engine and embedded services failed: {exc}")
    try:
        yield Services(embedded.broker_url, embedded.redis_url, "embedded")
    finally:
        embedded.stop()


@pytest.fixture
def make_settings(services: Services, tmp_path: Path):
    """Settings pointing at the session services with names no other test uses."""

    def build(**overrides: object) -> Settings:
        return isolated_settings(services, tmp_path / "data", "test", **overrides)

    return build
