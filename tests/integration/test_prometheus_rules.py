"""A real Prometheus scrapes a leadpulse /metrics endpoint and evaluates ops/prometheus/alerts.yml.

The scrape target is the `scrape_target` fixture: today a small HTTP server serving
`Metrics().render()` that the test drives directly; pointing the test at a running
worker means replacing that fixture with one that starts the worker and whose
`provoke` makes a sink dead-letter a trigger. Everything else (the Prometheus
process, its config, the waiting) stays as it is.
"""

from __future__ import annotations

import importlib.util
import json
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Iterator

import pytest
import yaml

from ops.metrics import Metrics

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
    """Something serving leadpulse metrics, and a way to make it dead-letter a trigger."""

    job: str
    address: str  # host:port
    provoke: Callable[[], None]  # after this, leadpulse_sink_deliveries_total{outcome="dead_letter"} rises
    sink: str  # the sink label the provoked dead letter carries


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def scrape_target() -> Iterator[ScrapeTarget]:
    metrics = Metrics()
    metrics.set_rules_version("test")
    # Children exist at 0 from the first scrape, so the later rise is an increase
    # Prometheus can see (a series that appears already at 3 shows no increase).
    metrics.sink_deliveries.labels(sink="webhook", outcome="delivered").inc(5)
    dead = metrics.sink_deliveries.labels(sink="webhook", outcome="dead_letter")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if self.path != "/metrics":
                self.send_error(404)
                return
            body, content_type = metrics.render()
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass  # one line per scrape is noise

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield ScrapeTarget(
            job="leadpulse-worker", address=f"127.0.0.1:{server.server_address[1]}", provoke=lambda: dead.inc(3), sink="webhook"
        )
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


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
        "scrape_configs": [{"job_name": scrape_target.job, "static_configs": [{"targets": [scrape_target.address]}]}],
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

    # The target is scraped and its dead-letter counter is seen at 0.
    def dead_letters_at_zero() -> bool:
        result = prometheus.api(
            "/api/v1/query", query=f'leadpulse_sink_deliveries_total{{sink="{scrape_target.sink}",outcome="dead_letter"}}'
        )["result"]
        return bool(result) and float(result[0]["value"][1]) == 0.0

    prometheus.wait_for("the first scrape", dead_letters_at_zero)
    assert not _alerts(prometheus).get("LeadpulseSinkDeadLetters")

    scrape_target.provoke()

    def dead_letter_alert_firing() -> list[dict]:
        return [a for a in _alerts(prometheus).get("LeadpulseSinkDeadLetters", []) if a["state"] == "firing"]

    (alert,) = prometheus.wait_for("LeadpulseSinkDeadLetters to fire", dead_letter_alert_firing)
    assert alert["labels"]["sink"] == scrape_target.sink
    assert alert["labels"]["severity"] == "warning"
    assert alert["annotations"]["summary"] == f"leadpulse gave up delivering triggers to {scrape_target.sink}"

    # A rule with `for:` is held pending: no event was ever received, so the ingest
    # counter is absent, but not yet for 30 minutes.
    absent = _alerts(prometheus).get("LeadpulseIngestAbsent", [])
    assert [a["state"] for a in absent] == ["pending"]
    # Never having had traffic is not "ingest stopped", and the healthy target is not down.
    assert "LeadpulseIngestStopped" not in _alerts(prometheus)
    assert "LeadpulseTargetDown" not in _alerts(prometheus)
