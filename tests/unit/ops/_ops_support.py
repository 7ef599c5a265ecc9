"""Shared helpers for the operations tests: the Prometheus tools and the metric catalog.

Used by tests/unit/ops and tests/integration/test_prometheus_rules.py (loaded by path
there, since tests/ has no conftest to share fixtures through).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client.metrics import MetricWrapperBase

from ops.metrics import Metrics

REPO = Path(__file__).resolve().parents[3]
OPS = REPO / "ops"

# Labels Prometheus adds itself (target labels) or that histograms carry.
SERVER_LABELS = frozenset({"job", "instance", "le"})

_APT_ENV = {"DEBIAN_FRONTEND": "noninteractive", "APT_LISTCHANGES_FRONTEND": "none"}
_install_attempted: dict[str, str] = {}


def require_prometheus_binary(name: str) -> str:
    """Path of ``promtool``/``prometheus``; installs Debian's package if it is missing.

    CI runs on a fresh machine as root without stdin, so the tools are installed
    here rather than by hand. Skips (with the reason) only when installing is not
    possible: not root, no apt-get, or apt failing.
    """
    found = shutil.which(name)
    if found:
        return found
    if "prometheus" not in _install_attempted:
        _install_attempted["prometheus"] = _install_prometheus_package()
    found = shutil.which(name)
    if found:
        return found
    pytest.skip(f"{name} is not on PATH and could not be installed: {_install_attempted['prometheus']}")


def _install_prometheus_package() -> str:
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "not running as root, so apt-get install prometheus is not possible"
    if not shutil.which("apt-get"):
        return "no apt-get on this machine (install Prometheus >= 2.42 so promtool is on PATH)"
    env = {**os.environ, **_APT_ENV}
    install = ["apt-get", "install", "-y", "--no-install-recommends", "prometheus"]
    result = _run(install, env)
    if result.returncode != 0:
        # Fresh images ship without package lists: refresh them once and retry.
        update = _run(["apt-get", "update"], env)
        if update.returncode != 0:
            return f"apt-get update failed: {update.stderr.strip()[-500:]}"
        result = _run(install, env)
    if result.returncode != 0:
        return f"apt-get install prometheus failed: {result.stderr.strip()[-500:]}"
    return "installed"


def _run(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return subprocess.CompletedProcess(cmd, 1, "", str(exc))


def exported_series() -> dict[str, frozenset[str]]:
    """Every series name ``Metrics()`` exports, with its label names.

    Labelled metrics only export samples once a child exists, so one child of each
    is created first; histograms then show ``_bucket``/``_sum``/``_count`` and
    counters ``_total``, exactly as a scrape sees them.
    """
    metrics = Metrics()
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase) and value._labelnames:
            value.labels(*["x"] * len(value._labelnames))
    series: dict[str, set[str]] = {}
    for family in metrics.registry.collect():
        for sample in family.samples:
            series.setdefault(sample.name, set()).update(sample.labels)
    return {name: frozenset(labels) for name, labels in series.items()}


_METRIC = re.compile(r"\b(leadpulse_[A-Za-z0-9_]+)")
_SELECTOR = re.compile(r"\b(leadpulse_[A-Za-z0-9_]+)\s*\{([^}]*)\}")
_MATCHER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")


def metrics_in(expr: str) -> set[str]:
    return set(_METRIC.findall(expr))


def label_problems(expr: str, series: dict[str, frozenset[str]]) -> list[str]:
    """Label names in matchers and grouping clauses that no queried metric has."""
    problems = []
    for name, matchers in _SELECTOR.findall(expr):
        for label in _MATCHER.findall(matchers):
            if label not in series.get(name, frozenset()) | SERVER_LABELS:
                problems.append(f"{name} has no label {label!r}")
    known = set(SERVER_LABELS)
    for name in metrics_in(expr):
        known |= series.get(name, frozenset())
    for group in _GROUPING.findall(expr):
        for label in filter(None, (part.strip() for part in group.split(","))):
            if label not in known:
                problems.append(f"grouping label {label!r} is on none of {sorted(metrics_in(expr))}")
    return problems


# --------------------------------------------------------------------------------------
# Helpers for the integration tests that run real leadpulse processes
# (tests/integration/test_ops_*.py and test_prometheus_rules.py load this file by path).

import base64 as _base64
import json as _json
import threading as _threading
import time as _time
import urllib.error as _urlerror
import urllib.request as _urlrequest
from http.server import BaseHTTPRequestHandler as _Handler, ThreadingHTTPServer as _Server

DEMO_AUTH = {"Authorization": "Basic " + _base64.b64encode(b"demo:").decode()}


class WebhookReceiver:
    """A local webhook endpoint: answers ``statuses`` in order, then ``default``; records each request.

    ``received`` holds ``(webhook-id header, decoded JSON body)`` per request, in order.
    """

    def __init__(self, default: int = 200, statuses: tuple[int, ...] = ()) -> None:
        self.default = default
        self.statuses = list(statuses)
        self.received: list[tuple[str | None, object]] = []
        self._lock = _threading.Lock()
        receiver = self

        class Handler(_Handler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver._lock:
                    try:
                        payload = _json.loads(body or b"null")
                    except ValueError:
                        payload = body.decode("utf-8", "replace")
                    receiver.received.append((self.headers.get("webhook-id"), payload))
                    status = receiver.statuses.pop(0) if receiver.statuses else receiver.default
                self.send_response(status)
                if status in (429, 503):
                    self.send_header("Retry-After", "0")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/leadpulse"
        self._thread = _threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def ids(self) -> list[str | None]:
        with self._lock:
            return [webhook_id for webhook_id, _ in self.received]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)


def post(url: str, body: object, headers: dict[str, str] | None = None, raw: bytes | None = None) -> tuple[int, dict]:
    """POST JSON (or ``raw`` bytes) and return (status, JSON answer)."""
    data = raw if raw is not None else _json.dumps(body).encode()
    request = _urlrequest.Request(url, data=data, method="POST",
                                  headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with _urlrequest.urlopen(request, timeout=15) as response:
            return response.status, _json.loads(response.read() or b"{}")
    except _urlerror.HTTPError as exc:
        return exc.code, _json.loads(exc.read() or b"{}")


def scrape(url: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of a /metrics page: ``(sample name, frozenset(labels.items())) -> value``."""
    from prometheus_client.parser import text_string_to_metric_families

    with _urlrequest.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    samples: dict[tuple[str, frozenset], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def total(samples: dict[tuple[str, frozenset], float], name: str, **labels: str) -> float:
    """Sum of the samples named ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


def label_values(samples: dict[tuple[str, frozenset], float], name: str, label: str) -> set[str]:
    return {dict(ls)[label] for (n, ls), _ in samples.items() if n == name and label in dict(ls)}


def eventually(what: str, check, timeout: float = 30.0, interval: float = 0.2, detail=None):
    """Poll ``check`` until it returns something truthy; fail with ``what`` and ``detail()`` (or the last value)."""
    deadline = _time.monotonic() + timeout
    last = None
    while _time.monotonic() < deadline:
        last = check()
        if last:
            return last
        _time.sleep(interval)
    pytest.fail(f"gave up waiting for {what} after {timeout:.0f}s (last: {detail() if detail else last!r})")


def qualified_lead_calls(contact: str, prefix: str = "m") -> list[dict]:
    """Segment calls that take a contact past MQL (identify with full fit, then strong behaviour)."""
    import uuid as _uuid

    def call(kind: str, **fields) -> dict:
        return {"type": kind, "messageId": f"{prefix}-{_uuid.uuid4()}", "userId": contact, **fields}

    return [
        call("identify", traits={"name": "Ada Adler", "title": "Clinical Psychologist",
                                 "company": {"name": "Northfield University", "industry": "University",
                                             "employee_count": 12000},
                                 "address": {"country": "US"}}),
        call("page", name="Pricing", properties={"path": "/pricing"}),
        call("track", event="Whitepaper Downloaded"),
        call("track", event="Webinar Attended"),
        call("track", event="Email Link Clicked"),
        call("track", event="Demo Requested", properties={"plan": "team"}),
    ]
