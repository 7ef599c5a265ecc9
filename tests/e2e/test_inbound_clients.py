"""End to end with the official client libraries: segment-analytics-python and rudder-sdk-python.

Both are pointed at the real collector (child process) unchanged, only their host set to it. What
they send (read from their sources in .venv): POST {host}/v1/batch, JSON ``{"batch": [...],
"sentAt": ..., "writeKey": ...}``, the write key as HTTP Basic user; analytics-python gzips when
``gzip=True`` (off by default), rudder-sdk-python gzips by default and puts identify traits only
in ``context.traits``. The events must come out scored: fit from the identify traits, behaviour
from the page and track calls.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Callable

import pytest
import requests

from isolated import isolated_settings
from ops.supervisor import Stack

pytestmark = pytest.mark.e2e

TRAITS = {
    "name": "Grace Hopper",
    "email": "grace@northfield.example",
    "title": "Professor of Psychology",
    "company": {"name": "Northfield University", "industry": "University", "employee_count": 12000},
    "address": {"country": "US"},
}


@pytest.fixture(scope="module")
def stack(services, tmp_path_factory):
    settings = isolated_settings(
        services,
        tmp_path_factory.mktemp("inbound-clients"),
        "cl",
        write_keys="demo,rudder-key:rudderstack",
    )
    running = Stack(settings).start(ready_timeout=90)
    yield running
    running.stop()


def contact_when(stack: Stack, contact: str, ok: Callable[[dict], bool], timeout: float = 20.0) -> dict[str, Any]:
    body: dict[str, Any] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = requests.get(f"{stack.base_url}/v1/contacts/{contact}", timeout=5)
        if response.status_code == 200:
            body = response.json()
            if ok(body):
                return body
        time.sleep(0.1)
    return body


def assert_scored(stack: Stack, contact: str) -> dict[str, Any]:
    """Fit from the identify traits, behaviour from both page views (the anonymous one stitched in), whitepaper and demo."""
    wanted = {"demo_request", "whitepaper_download"}
    body = contact_when(stack, contact, lambda b: b["fit"] > 0 and b["behaviour"] >= 29.5
                        and wanted <= {r["signal"] for r in b["reasons"]})
    assert body, f"{contact} never appeared"
    # Professor + University + 1000+ employees + target country: 75 of 80 fit points -> 37.5 of 40
    assert body["fit"] == pytest.approx(37.5), body
    # 2 page views (5 each) + whitepaper 15 + demo 25 = 50 behaviour points -> 30 of 60
    assert body["behaviour"] == pytest.approx(30.0, abs=0.5), body
    assert wanted <= {r["signal"] for r in body["reasons"]}, body
    assert any(r["signal"].startswith("fit.") for r in body["reasons"]), body
    return body


def send_journey(client: Any, contact: str, anonymous: str) -> None:
    client.page(anonymous_id=anonymous, name="Pricing", properties={"path": "/pricing", "url": "https://site.example/pricing"})
    client.identify(contact, TRAITS, anonymous_id=anonymous)
    client.page(contact, name="Docs", properties={"path": "/docs"})
    client.track(contact, "Whitepaper Downloaded", {"title": "Lead scoring 101"})
    client.track(contact, "Demo Requested", {"plan": "team"})


def test_segment_analytics_python_module_api_async_queue(stack):
    import segment.analytics as analytics

    errors: list = []
    analytics.write_key = "demo"
    analytics.host = stack.base_url
    analytics.on_error = lambda error, batch: errors.append(error)
    analytics.sync_mode = False
    analytics.default_client = None
    contact = f"seg-{uuid.uuid4().hex[:8]}"
    try:
        send_journey(analytics, contact, f"anon-{uuid.uuid4().hex[:8]}")
        analytics.flush()
    finally:
        analytics.shutdown()
        analytics.default_client = None
    assert errors == []
    body = assert_scored(stack, contact)
    assert body["contact_id"] == contact and body["suppressed"] is False


def test_segment_analytics_python_client_sync_gzip(stack):
    from segment.analytics import Client

    errors: list = []
    client = Client(write_key="demo", host=stack.base_url, sync_mode=True, gzip=True,
                    on_error=lambda error, batch: errors.append(error))
    contact = f"seg-gz-{uuid.uuid4().hex[:8]}"
    send_journey(client, contact, f"anon-{uuid.uuid4().hex[:8]}")
    assert errors == []
    assert_scored(stack, contact)


def test_segment_client_sees_a_bad_call_as_a_non_retryable_api_error(stack):
    from segment.analytics import Client
    from segment.analytics.request import APIError

    client = Client(write_key="wrong-key", host=stack.base_url, sync_mode=True)
    with pytest.raises(APIError) as err:
        client.track("someone", "Demo Requested")
    assert err.value.status == 401 and err.value.code == "unauthorized" and "write key" in err.value.message


def test_rudder_sdk_python_gzip_and_context_traits(stack):
    import rudderstack.analytics as rudder_analytics

    errors: list = []
    rudder_analytics.write_key = "rudder-key"
    rudder_analytics.dataPlaneUrl = stack.base_url
    rudder_analytics.on_error = lambda error, batch: errors.append(error)
    rudder_analytics.default_client = None
    contact = f"rs-{uuid.uuid4().hex[:8]}"
    try:
        send_journey(rudder_analytics, contact, f"anon-{uuid.uuid4().hex[:8]}")
        rudder_analytics.flush()
    finally:
        rudder_analytics.shutdown()
        rudder_analytics.default_client = None
    assert errors == []
    assert rudder_analytics.gzip is True  # the default: the collector inflated what it got
    assert_scored(stack, contact)


def test_rudder_client_sync_mode(stack):
    from rudderstack.analytics.client import Client

    client = Client(write_key="rudder-key", host=stack.base_url, sync_mode=True)
    contact = f"rs-sync-{uuid.uuid4().hex[:8]}"
    send_journey(client, contact, f"anon-{uuid.uuid4().hex[:8]}")
    assert_scored(stack, contact)
