"""The metric catalog on real processes: a collector and a worker (``Stack``) get traffic
with a duplicate, bad events and a failing webhook, and both /metrics pages must show
every family of the issue's list with non-trivial samples. The same stack runs with
``LEADPULSE_LOG_JSON=true``: every line either process wrote is one JSON object.

Not checked here: ``leadpulse_events_late_total`` and ``leadpulse_events_bot_total``
are counted by the stream layer (reorder buffer, bot rules), which is being built
in streams/; see ``STREAM_LAYER_FAMILIES``.
"""

from __future__ import annotations

import importlib.util
import json
import uuid
from pathlib import Path

import pytest

from isolated import isolated_settings
from ops.supervisor import Stack

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("_ops_support", REPO / "tests" / "unit" / "ops" / "_ops_support.py")
ops_support = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ops_support)

STREAM_LAYER_FAMILIES = {"leadpulse_events_late_total", "leadpulse_events_bot_total"}


@pytest.fixture(scope="module")
def receiver():
    # One 503 (retried), then 400 for good: the webhook sink retries, then dead-letters.
    webhook = ops_support.WebhookReceiver(default=400, statuses=(503,))
    yield webhook
    webhook.close()


@pytest.fixture(scope="module")
def stack(services, tmp_path_factory, receiver):
    settings = isolated_settings(
        services,
        tmp_path_factory.mktemp("ops-metrics"),
        "ops",
        webhook_urls=[receiver.url],
        log_json=True,
        log_level="INFO",
    )
    running = Stack(settings).start(ready_timeout=90)
    yield running
    running.stop()


def send_traffic(stack: Stack) -> dict[str, int]:
    """Good, duplicate, bad-at-the-edge and bad-at-the-worker events; returns what was sent."""
    base, auth = stack.base_url, ops_support.DEMO_AUTH
    contact = f"ada-{uuid.uuid4().hex[:6]}"
    calls = ops_support.qualified_lead_calls(contact)
    status, _ = ops_support.post(f"{base}/v1/batch", {"batch": calls}, auth)
    assert status == 200
    click = {"type": "track", "messageId": f"dup-{uuid.uuid4()}", "userId": f"{contact}-b", "event": "Email Link Clicked"}
    for _ in range(2):  # a tracker retrying: the second copy is a duplicate
        assert ops_support.post(f"{base}/v1/track", click, auth)[0] == 200
    # Refused at the edge: no event name, and a body that is not JSON.
    assert ops_support.post(f"{base}/v1/track", {"type": "track", "messageId": "x", "userId": "u"}, auth)[0] == 400
    assert ops_support.post(f"{base}/v1/track", None, auth, raw=b"{not json")[0] == 400
    # Accepted by the collector, dead-lettered by the worker: event times out of bounds.
    odd = [
        {"type": "track", "messageId": f"f-{uuid.uuid4()}", "userId": f"{contact}-c", "event": "Demo Requested",
         "timestamp": "2099-01-01T00:00:00Z"},
        {"type": "track", "messageId": f"p-{uuid.uuid4()}", "userId": f"{contact}-c", "event": "Demo Requested",
         "timestamp": "2001-01-01T00:00:00Z"},
    ]
    assert ops_support.post(f"{base}/v1/batch", {"batch": odd}, auth)[0] == 200
    return {"accepted": len(calls) + 2 + len(odd), "contacts": 2}


def test_every_metric_family_is_updated_by_the_running_processes(stack: Stack, receiver):
    sent = send_traffic(stack)
    worker_metrics = f"{stack.worker_url()}/metrics"

    seen: dict[str, object] = {}

    def worker_done():
        samples = ops_support.scrape(worker_metrics)
        seen.update({
            "mql": ops_support.total(samples, "leadpulse_triggers_total", type="mql"),
            "dead_letter": ops_support.total(samples, "leadpulse_sink_deliveries_total", outcome="dead_letter"),
            "duplicates": ops_support.total(samples, "leadpulse_events_duplicate_total"),
            "dlq_future": ops_support.total(samples, "leadpulse_dlq_total", reason="future"),
            "dlq_too_late": ops_support.total(samples, "leadpulse_dlq_total", reason="too_late"),
            # the lag timer ran after the last batch was committed
            "lag_partitions": ops_support.label_values(samples, "leadpulse_consumer_lag", "partition"),
            "lag": ops_support.total(samples, "leadpulse_consumer_lag"),
        })
        done = all(seen[k] >= 1 for k in ("mql", "dead_letter", "duplicates", "dlq_future", "dlq_too_late"))
        return samples if done and seen["lag_partitions"] == {"0", "1"} and seen["lag"] == 0 else None

    w = ops_support.eventually("the worker to score everything", worker_done, timeout=45, detail=lambda: seen)
    c = ops_support.scrape(f"{stack.base_url}/metrics")
    total = ops_support.total

    # Collector: intake, rejects, HTTP, model version.
    assert total(c, "leadpulse_events_received_total", source="segment") == sent["accepted"]
    assert {"identify", "page_view", "track"} <= ops_support.label_values(
        c, "leadpulse_events_received_total", "type")
    assert total(c, "leadpulse_events_rejected_total", reason="invalid_event") >= 1
    assert total(c, "leadpulse_events_rejected_total", reason="invalid_json") >= 1
    assert total(c, "leadpulse_http_requests_total", code="200") >= 4
    assert all("{" not in r or r.startswith("/v1/") for r in ops_support.label_values(c, "leadpulse_http_requests_total", "route"))
    assert total(c, "leadpulse_http_requests_total", code="400") >= 2
    assert total(c, "leadpulse_http_request_duration_seconds_count") >= 5
    assert [v for (n, _), v in c.items() if n == "leadpulse_rules_info"] == [1.0]

    # Worker: scoring, dedupe, DLQ, triggers, latency, batches, lag, contacts, sinks, model.
    assert total(w, "leadpulse_events_scored_total") == sent["accepted"] - 1 - 2  # minus the duplicate and 2 DLQ'd
    assert total(w, "leadpulse_events_duplicate_total", source="segment") == 1
    assert total(w, "leadpulse_dlq_total", reason="sink") >= 1  # the webhook gave up
    assert {"mql", "hot_lead", "route_to_sales"} <= {
        t for t in ops_support.label_values(w, "leadpulse_triggers_total", "type")
        if total(w, "leadpulse_triggers_total", type=t) > 0}
    triggers = total(w, "leadpulse_triggers_total")
    assert total(w, "leadpulse_event_to_trigger_seconds_count") == triggers
    assert total(w, "leadpulse_event_to_trigger_seconds_bucket", le="+Inf") == triggers
    assert total(w, "leadpulse_batch_duration_seconds_count") >= 1
    assert total(w, "leadpulse_batch_size_sum") == sent["accepted"]
    assert total(w, "leadpulse_contacts") >= sent["contacts"]
    assert total(w, "leadpulse_sink_deliveries_total", sink="redis", outcome="delivered") == triggers
    webhook_sinks = {s for s in ops_support.label_values(w, "leadpulse_sink_deliveries_total", "sink") if s.startswith("webhook:")}
    assert len(webhook_sinks) == 1
    (webhook,) = webhook_sinks
    assert total(w, "leadpulse_sink_deliveries_total", sink=webhook, outcome="failed") >= 1  # the 503
    assert total(w, "leadpulse_sink_retries_total", sink=webhook) >= 1
    assert total(w, "leadpulse_sink_deliveries_total", sink=webhook, outcome="dead_letter") >= 1
    assert receiver.received  # the sink really called the endpoint
    assert [v for (n, _), v in w.items() if n == "leadpulse_rules_info"] == [1.0]

    # Every family of the catalog is exported by one of the two processes.
    families = {name for name, _ in list(c) + list(w)}
    catalog = {name for name in ops_support.exported_series()}
    missing = {name for name in catalog - families if not name.endswith("_created")}
    assert missing <= {f"{name}" for name in STREAM_LAYER_FAMILIES}


def test_logs_are_one_json_object_per_line(stack: Stack):
    # Traffic first, so the logs hold more than the start-up lines.
    send_traffic(stack)
    for role in ("collector", "worker"):
        lines = (stack.log_dir / f"{role}.log").read_text().splitlines()
        assert lines, f"{role} wrote no log line"
        for line in lines:
            record = json.loads(line)  # fails on any plain-text line
            assert isinstance(record, dict)
            assert {"ts", "level", "logger", "message"} <= set(record), line


def test_no_log_line_per_event(stack: Stack):
    worker_metrics = f"{stack.worker_url()}/metrics"
    taken = ops_support.total(ops_support.scrape(worker_metrics), "leadpulse_batch_size_sum")
    before = {role: len((stack.log_dir / f"{role}.log").read_text().splitlines()) for role in ("collector", "worker")}
    base, auth = stack.base_url, ops_support.DEMO_AUTH
    batch = [{"type": "page", "messageId": f"hp-{uuid.uuid4()}", "userId": f"hot-{i % 20}", "properties": {"path": "/"}}
             for i in range(400)]
    assert ops_support.post(f"{base}/v1/batch", {"batch": batch}, auth)[0] == 200
    for i in range(20):
        assert ops_support.post(f"{base}/v1/page", batch[i] | {"messageId": f"hp1-{uuid.uuid4()}"}, auth)[0] == 200

    def scored() -> bool:
        return ops_support.total(ops_support.scrape(worker_metrics), "leadpulse_batch_size_sum") >= taken + 420

    ops_support.eventually("the worker to take the 420 events", scored)
    for role, count in before.items():
        grown = len((stack.log_dir / f"{role}.log").read_text().splitlines()) - count
        assert grown < 10, f"{role} logged {grown} lines for 420 events"
