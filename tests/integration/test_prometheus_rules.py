"""A real Prometheus scrapes a running collector and worker and evaluates ops/prometheus/alerts.yml.

The scrape targets are the `scrape_target` fixture: a real `Stack` (collector and
worker processes on the session's broker and Redis) whose worker has one webhook
sink pointing at a local endpoint that answers 400. `provoke` sends a lead that
crosses MQL through the collector, so the worker dead-letters the webhook
deliveries and LeadpulseSinkDeadLetters fires; `send_future_events` makes the worker
dead-letter events (reason `future`), so LeadpulseDLQRateHigh goes pending (its
`for: 10m` is too long to wait for). The rules are the production ones, unchanged.
"""

from __future__ import annotations

import importlib.util
import json
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pytest
import yaml

from connectors.sinks.delivery import webhook_sink_name
from ops.settings import Settings
from ops.supervisor import Stack

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
ALERTS = REPO / "ops" / "prometheus" / "alerts.yml"

# Shared with tests/unit/ops; loaded by path because tests/ has no shared conftest.
_spec = importlib.util.spec_from_file_location("_ops_support", REPO / "tests" / "unit" / "ops" / "_ops_support.py")
_ops_support = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_ops_support)

WAIT_LIMIT_S = 90.0


@dataclass
class ScrapeTarget:
    """Running leadpulse processes to scrape, and ways to make them misbehave."""

    targets: dict[str, str]  # job -> host:port
    provoke: Callable[[], None]  # after this, leadpulse_sink_deliveries_total{outcome="dead_letter"} rises
    sink: str  # the sink label the provoked dead letter carries
    send_future_events: Callable[[int], None]  # the worker dead-letters them with reason "future"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def scrape_target(services, tmp_path: Path) -> Iterator[ScrapeTarget]:
    receiver = _ops_support.WebhookReceiver(default=400)
    unique = uuid.uuid4().hex[:8]
    settings = Settings(
        _env_file=None,
        broker_url=services.broker_url,
        redis_url=services.redis_url,
        app_id=f"lp-prom-{unique}",
        topic_prefix=f"lp-prom-{unique}",
        data_dir=tmp_path / "stack",
        http_port=0,
        worker_http_port=0,
        partitions=2,
        webhook_urls=[receiver.url],
    )
    stack = Stack(settings)
    try:
        stack.start(ready_timeout=90)

        def post_batch(batch: list[dict]) -> None:
            status, body = _ops_support.post(f"{stack.base_url}/v1/batch", {"batch": batch}, _ops_support.DEMO_AUTH)
            assert status == 200, body

        def provoke() -> None:
            post_batch(_ops_support.qualified_lead_calls(f"prom-{uuid.uuid4().hex[:6]}"))

        def send_future_events(n: int) -> None:
            post_batch([{"type": "track", "messageId": f"fut-{uuid.uuid4()}", "userId": f"clock-{i}",
                         "event": "Demo Requested", "timestamp": "2099-01-01T00:00:00Z"} for i in range(n)])

        yield ScrapeTarget(
            targets={"leadpulse-collector": f"127.0.0.1:{stack.http_port}",
                     "leadpulse-worker": f"127.0.0.1:{stack.worker_port}"},
            provoke=provoke,
            sink=webhook_sink_name(receiver.url),
            send_future_events=send_future_events,
        )
    finally:
        stack.stop()
        receiver.close()


@dataclass
class PrometheusServer:
    url: str
    process: subprocess.Popen
    log: Path

    def api(self, path: str, **params: str) -> dict:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=5) as response:
            payload = json.loads(response.read())
        assert payload["status"] == "success", payload
        return payload["data"]

    def wait_for(self, what: str, check: Callable[[], object]) -> object:
        """Poll `check` until it returns something truthy; fail with Prometheus's log if it never does."""
        deadline = time.monotonic() + WAIT_LIMIT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"prometheus exited with {self.process.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                result = check()
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                result = None
            if result:
                return result
            time.sleep(0.25)
        pytest.fail(f"gave up waiting for {what}; prometheus log:\n{self.log.read_text()[-3000:]}")


@pytest.fixture
def prometheus(scrape_target: ScrapeTarget, tmp_path: Path) -> Iterator[PrometheusServer]:
    binary = _ops_support.require_prometheus_binary("prometheus")
    config = {
        # One-second scrapes and evaluations keep the wait short; the rules are the
        # production ones, unchanged.
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": [address]}]} for job, address in scrape_target.targets.items()
        ],
    }
    config_file = tmp_path / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config))
    port = _free_port()
    log = tmp_path / "prometheus.log"
    with log.open("w") as log_fh:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config_file}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log_fh,
            stderr=subprocess.STDOUT,
        )
    server = PrometheusServer(url=f"http://127.0.0.1:{port}", process=process, log=log)
    try:
        server.wait_for("prometheus to be ready", lambda: _http_ok(f"{server.url}/-/ready"))
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except urllib.error.HTTPError:
        return False


def _alerts(server: PrometheusServer) -> dict[str, list[dict]]:
    by_name: dict[str, list[dict]] = {}
    for alert in server.api("/api/v1/alerts")["alerts"]:
        by_name.setdefault(alert["labels"]["alertname"], []).append(alert)
    return by_name


def test_real_prometheus_evaluates_the_alert_rules(prometheus: PrometheusServer, scrape_target: ScrapeTarget):
    # Prometheus loaded our rule file, all of it.
    groups = prometheus.api("/api/v1/rules")["groups"]
    loaded = {rule["name"] for group in groups for rule in group["rules"]}
    expected = {rule["alert"] for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]}
    assert loaded == expected

    # Both processes are scraped, and the worker's dead-letter counter is seen at 0
    # (the worker declares its sink series at start, so the first dead letter is an increase).
    def both_up() -> bool:
        result = prometheus.api("/api/v1/query", query='up{job=~"leadpulse.*"}')["result"]
        return {r["metric"]["job"]: r["value"][1] for r in result} == {job: "1" for job in scrape_target.targets}

    prometheus.wait_for("both targets to be up", both_up)

    def dead_letters_at_zero() -> bool:
        result = prometheus.api(
            "/api/v1/query", query=f'leadpulse_sink_deliveries_total{{sink="{scrape_target.sink}",outcome="dead_letter"}}'
        )["result"]
        return bool(result) and float(result[0]["value"][1]) == 0.0

    prometheus.wait_for("the first scrape", dead_letters_at_zero)
    # The collector has accepted nothing yet: the ingest counter is absent, held pending by `for: 30m`.
    absent = prometheus.wait_for(
        "LeadpulseIngestAbsent to be pending", lambda: _alerts(prometheus).get("LeadpulseIngestAbsent", [])
    )
    assert [a["state"] for a in absent] == ["pending"]
    assert not _alerts(prometheus).get("LeadpulseSinkDeadLetters")

    scrape_target.provoke()

    def dead_letter_alert_firing() -> list[dict]:
        return [a for a in _alerts(prometheus).get("LeadpulseSinkDeadLetters", []) if a["state"] == "firing"]

    (alert,) = prometheus.wait_for("LeadpulseSinkDeadLetters to fire", dead_letter_alert_firing)
    assert alert["labels"]["sink"] == scrape_target.sink
    assert alert["labels"]["severity"] == "warning"
    assert alert["annotations"]["summary"] == f"leadpulse gave up delivering triggers to {scrape_target.sink}"

    # Events with a clock far in the future: the worker dead-letters them (reason
    # "future"), well above 5 % of intake, so the DLQ rule matches and is held pending.
    scrape_target.send_future_events(40)

    def dlq_rule_pending() -> list[dict]:
        return [a for a in _alerts(prometheus).get("LeadpulseDLQRateHigh", []) if a["labels"].get("reason") == "future"]

    (dlq_alert,) = prometheus.wait_for("LeadpulseDLQRateHigh{reason=future} to be pending", dlq_rule_pending)
    assert dlq_alert["state"] == "pending"

    # Events were received now, so the absent rule let go; traffic never stopped and no target is down.
    alerts = _alerts(prometheus)
    assert "LeadpulseIngestAbsent" not in alerts
    assert "LeadpulseIngestStopped" not in alerts
    assert "LeadpulseTargetDown" not in alerts
    assert "LeadpulseHTTPErrors" not in alerts
