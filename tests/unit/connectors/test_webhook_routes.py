"""The aiohttp routes end to end against a fake Intake: status codes, reasons, DLQ records, metrics."""

from __future__ import annotations

import json

import orjson
import pytest
from _webhook_support import (
    MAILGUN_KEY,
    NOW_MS,
    POSTMARK_PASSWORD,
    POSTMARK_USER,
    FakeIntake,
    backpressure,
    basic,
    broker_down,
    counter,
    fixture,
    fixture_bytes,
    iso,
    mailgun_signed,
    make_settings,
    sendgrid_headers,
    sns_notification,
    sns_signer,
)

from connectors.webhooks.replay import InMemoryReplayGuard

RECEIVED = "leadpulse_events_received_total"
REJECTED = "leadpulse_events_rejected_total"


async def post_sendgrid(h, body: bytes, **kw):
    return await h.client.post("/webhooks/sendgrid", data=body, headers=sendgrid_headers(body, **kw))


async def post_mailgun(h, body):
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return await h.client.post("/webhooks/mailgun", data=raw, headers={"Content-Type": "application/json"})


async def post_sns(h, message, content_type="text/plain; charset=UTF-8"):
    headers = {"Content-Type": content_type, "x-amz-sns-message-type": message.get("Type", "")}
    return await h.client.post("/webhooks/ses", data=orjson.dumps(message), headers=headers)


# --- happy paths -----------------------------------------------------------------------------


async def test_sendgrid_batch_is_submitted_with_metrics(make_harness):
    h = await make_harness()
    resp = await post_sendgrid(h, fixture_bytes("sendgrid", "events.json"))
    assert resp.status == 200, await resp.text()
    assert await resp.json() == {"success": True, "accepted": 10, "ignored": 3}
    assert len(h.intake.submitted) == 10 and h.intake.dead == []
    assert {e["received_at"] for e in h.intake.submitted} == {NOW_MS}
    assert counter(h.metrics, RECEIVED, source="sendgrid", type="email_open") == 2
    assert counter(h.metrics, RECEIVED, source="sendgrid", type="email_bounce") == 3
    assert counter(h.metrics, REJECTED, source="sendgrid", reason="ignored_processed") == 1


async def test_mailgun_event_is_submitted(make_harness):
    h = await make_harness()
    resp = await post_mailgun(h, mailgun_signed("opened_apple_mpp.json"))
    assert resp.status == 200, await resp.text()
    (event,) = h.intake.submitted
    assert event["type"] == "email_open" and event["properties"]["machine_open"] is True


async def test_postmark_record_is_submitted(make_harness):
    h = await make_harness()
    resp = await h.client.post("/webhooks/postmark", data=fixture_bytes("postmark", "bounce.json"), headers=basic(POSTMARK_USER, POSTMARK_PASSWORD))
    assert resp.status == 200, await resp.text()
    assert h.intake.submitted[0]["properties"]["bounce_type"] == "hard"


async def test_ses_notification_is_submitted(make_harness):
    h = await make_harness()
    resp = await post_sns(h, sns_notification("click.json", version="2"))
    assert resp.status == 200, await resp.text()
    assert h.intake.submitted[0]["type"] == "email_click"


async def test_ses_subscription_confirmation_returns_the_url(make_harness):
    h = await make_harness()
    message = fixture("ses", "sns_subscription_confirmation.json")
    message["Timestamp"] = iso(NOW_MS)
    message = sns_signer().sign(message)
    resp = await post_sns(h, message)
    assert resp.status == 200
    body = await resp.json()
    assert body["subscribe_url"] == message["SubscribeURL"] and body["accepted"] == 0
    assert h.intake.submitted == [] and h.intake.dead == []


async def test_crm_batch_with_write_key_in_body(make_harness):
    h = await make_harness()
    resp = await h.client.post("/v1/crm/events", data=fixture_bytes("crm", "batch.json"), headers={"Content-Type": "application/json"})
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["accepted"] == 4
    assert counter(h.metrics, RECEIVED, source="crm", type="sales_feedback") == 2


async def test_crm_single_object_with_basic_key_and_text_plain(make_harness):
    h = await make_harness()
    headers = {**basic("plain-key", ""), "Content-Type": "text/plain"}
    resp = await h.client.post("/v1/crm/events", data=fixture_bytes("crm", "stage_change.json"), headers=headers)
    assert resp.status == 200, await resp.text()
    assert h.intake.submitted[0]["id"] == "sf-opp-0065g00000XyZ-closed_won"


# --- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path, setting",
    [
        ("/webhooks/sendgrid", "sendgrid_public_key"),
        ("/webhooks/mailgun", "mailgun_signing_key"),
        ("/webhooks/postmark", "postmark_webhook_password"),
        ("/webhooks/ses", "ses_cert_dir"),
    ],
)
async def test_unconfigured_vendor_answers_404(make_harness, path, setting):
    h = await make_harness(make_settings(**{setting: None}))
    resp = await h.client.post(path, data=b"[]", headers={"Content-Type": "application/json"})
    assert resp.status == 404
    assert setting.upper() in (await resp.json())["error"]
    assert h.intake.submitted == [] and h.intake.dead == []


async def test_ses_cert_dir_that_does_not_exist_answers_404(make_harness, tmp_path):
    h = await make_harness(make_settings(tmp_path / "missing"))
    resp = await post_sns(h, sns_notification("click.json"))
    assert resp.status == 404


def test_malformed_sendgrid_key_fails_at_startup():
    from aiohttp import web

    from connectors.webhook_routes import add_webhook_routes
    from ops.metrics import Metrics

    with pytest.raises(ValueError):
        add_webhook_routes(web.Application(), intake=FakeIntake(), settings=make_settings(sendgrid_public_key="bogus"), metrics=Metrics())


# --- authentication failures: 401/403/406, counted, never dead-lettered ---------------------


async def test_bad_sendgrid_signature(make_harness):
    h = await make_harness()
    body = fixture_bytes("sendgrid", "events.json")
    headers = sendgrid_headers(body)
    resp = await h.client.post("/webhooks/sendgrid", data=body + b" ", headers=headers)
    assert resp.status == 403
    body_json = await resp.json()
    assert body_json["success"] is False and "signature" in body_json["error"]
    assert h.intake.submitted == [] and h.intake.dead == []
    assert counter(h.metrics, REJECTED, source="sendgrid", reason="bad_signature") == 1


async def test_stale_sendgrid_signature(make_harness):
    h = await make_harness()
    resp = await post_sendgrid(h, b"[]", timestamp_s=NOW_MS // 1000 - 3600)
    assert resp.status == 403 and (await resp.json())["field"] == "X-Twilio-Email-Event-Webhook-Timestamp"


async def test_missing_sendgrid_signature(make_harness):
    h = await make_harness()
    resp = await h.client.post("/webhooks/sendgrid", data=b"[]", headers={"Content-Type": "application/json"})
    assert resp.status == 401


async def test_replayed_mailgun_request(make_harness):
    guard = InMemoryReplayGuard(now_ms=lambda: NOW_MS)
    h = await make_harness(replay_guard=guard)
    body = mailgun_signed("clicked.json")
    assert (await post_mailgun(h, body)).status == 200
    resp = await post_mailgun(h, body)
    assert resp.status == 406
    assert "replayed" in (await resp.json())["error"]
    assert len(h.intake.submitted) == 1 and h.intake.dead == []
    assert counter(h.metrics, REJECTED, source="mailgun", reason="replayed") == 1


async def test_bad_mailgun_signature(make_harness):
    h = await make_harness()
    resp = await post_mailgun(h, mailgun_signed("clicked.json", key=MAILGUN_KEY + "x"))
    assert resp.status == 403 and h.intake.dead == []


async def test_postmark_wrong_password_asks_for_basic_auth(make_harness):
    h = await make_harness()
    resp = await h.client.post("/webhooks/postmark", data=b"{}", headers=basic(POSTMARK_USER, "guess"))
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"].startswith("Basic")


async def test_forged_sns_message(make_harness):
    h = await make_harness()
    message = sns_notification("bounce.json")
    message["Message"] = message["Message"].replace("recipient@example.com", "victim@example.com")
    resp = await post_sns(h, message)
    assert resp.status == 403 and h.intake.dead == []


async def test_crm_unknown_write_key(make_harness):
    h = await make_harness()
    resp = await h.client.post("/v1/crm/events", data=fixture_bytes("crm", "stage_change.json"), headers=basic("stolen", ""))
    assert resp.status == 401 and (await resp.json())["field"] == "writeKey"


# --- bad input: 4xx with a reason, DLQ when an authenticated payload was involved --------------


@pytest.mark.parametrize("content_type", ["text/html", "application/x-www-form-urlencoded", None])
async def test_wrong_content_type(make_harness, content_type):
    h = await make_harness()
    body = fixture_bytes("sendgrid", "events.json")
    headers = sendgrid_headers(body)
    if content_type is None:
        del headers["Content-Type"]
    else:
        headers["Content-Type"] = content_type
    resp = await h.client.post("/webhooks/sendgrid", data=body, headers=headers)
    assert resp.status == 400
    assert (await resp.json())["field"] == "Content-Type"
    assert counter(h.metrics, REJECTED, source="sendgrid", reason="wrong_content_type") == 1


async def test_oversize_body_is_413_and_not_buffered(make_harness, cert_dir):
    h = await make_harness(make_settings(cert_dir, max_batch_bytes=1024))
    body = json.dumps([{"event": "open", "pad": "x" * 2000}]).encode()
    resp = await post_sendgrid(h, body)
    assert resp.status == 413 and "1024" in (await resp.json())["error"]
    assert counter(h.metrics, REJECTED, source="sendgrid", reason="too_large") == 1


async def test_oversize_chunked_body_without_content_length(make_harness, cert_dir):
    h = await make_harness(make_settings(cert_dir, max_batch_bytes=1024))

    async def chunks():
        for _ in range(10):
            yield b"x" * 500

    resp = await h.client.post("/v1/crm/events", data=chunks(), headers={"Content-Type": "application/json"})
    assert resp.status == 413


async def test_invalid_json_after_signature_is_dead_lettered(make_harness):
    h = await make_harness()
    resp = await post_sendgrid(h, b'[{"event": "open",')
    assert resp.status == 400
    assert (await resp.json())["field"] == "body"
    ((payload, reason, source),) = h.intake.dead
    assert payload == '[{"event": "open",' and "not valid JSON" in reason and source == "sendgrid"


async def test_invalid_json_without_authentication_is_not_dead_lettered(make_harness):
    h = await make_harness()
    resp = await post_mailgun(h, b"{broken")
    assert resp.status == 400 and h.intake.dead == []
    assert counter(h.metrics, REJECTED, source="mailgun", reason="invalid_json") == 1


async def test_non_utf8_body(make_harness):
    h = await make_harness()
    resp = await post_sendgrid(h, b'[{"email": "\xc3\x28"}]')
    assert resp.status == 400 and "UTF-8" in (await resp.json())["error"]
    assert len(h.intake.dead) == 1 and h.intake.dead[0][2] == "sendgrid"


async def test_non_utf8_postmark_body(make_harness):
    h = await make_harness()
    resp = await h.client.post("/webhooks/postmark", data=b'{"RecordType": "\xff"}', headers=basic(POSTMARK_USER, POSTMARK_PASSWORD))
    assert resp.status == 400 and len(h.intake.dead) == 1


async def test_deeply_nested_payload(make_harness):
    h = await make_harness()
    body = b"[" * 5000 + b"]" * 5000
    resp = await post_sendgrid(h, body)
    assert resp.status == 400 and len(h.intake.dead) == 1


async def test_deeply_nested_crm_properties(make_harness):
    h = await make_harness()
    nested = {"type": "customer", "contact_id": "c", "timestamp": 1714555800000, "writeKey": "plain-key", "properties": {}}
    cursor = nested["properties"]
    for _ in range(50):
        cursor["x"] = {}
        cursor = cursor["x"]
    resp = await h.client.post("/v1/crm/events", data=orjson.dumps(nested), headers={"Content-Type": "application/json"})
    assert resp.status == 400
    body = await resp.json()
    assert body["field"] == "properties" and "nested" in body["error"]
    assert len(h.intake.dead) == 1


async def test_missing_ids_in_every_item(make_harness):
    h = await make_harness()
    items = [{"event": "open", "email": "a@b.co", "timestamp": 1513299569}, {"event": "click", "email": "c@d.co", "timestamp": 1513299569}]
    resp = await post_sendgrid(h, json.dumps(items).encode())
    assert resp.status == 400
    body = await resp.json()
    assert body["field"] == "sg_event_id" and len(body["rejected"]) == 2
    assert [d[0] for d in h.intake.dead] == items
    assert counter(h.metrics, REJECTED, source="sendgrid", reason="missing_field") == 2


async def test_one_bad_item_does_not_sink_the_batch(make_harness):
    h = await make_harness()
    items = fixture("sendgrid", "events.json")
    del items[2]["sg_event_id"]
    resp = await post_sendgrid(h, json.dumps(items).encode())
    assert resp.status == 200
    body = await resp.json()
    assert body["accepted"] == 9 and body["rejected"] == [{"error": "[2] sg_event_id: missing or not a non-empty string", "index": 2, "field": "sg_event_id"}]
    assert len(h.intake.dead) == 1


async def test_missing_mailgun_event_id(make_harness):
    h = await make_harness()
    body = mailgun_signed("delivered.json")
    del body["event-data"]["id"]
    resp = await post_mailgun(h, body)
    assert resp.status == 400 and (await resp.json())["field"] == "event-data.id"
    assert len(h.intake.dead) == 1 and h.intake.dead[0][0]["event"] == "delivered"


async def test_missing_postmark_message_id(make_harness):
    h = await make_harness()
    record = fixture("postmark", "open.json")
    del record["MessageID"]
    resp = await h.client.post("/webhooks/postmark", data=orjson.dumps(record), headers=basic(POSTMARK_USER, POSTMARK_PASSWORD))
    assert resp.status == 400 and (await resp.json())["field"] == "MessageID"
    assert len(h.intake.dead) == 1


async def test_ses_message_not_json_is_dead_lettered(make_harness):
    h = await make_harness()
    resp = await post_sns(h, sns_notification(record="{not json"))
    assert resp.status == 400 and (await resp.json())["field"] == "Message"
    assert len(h.intake.dead) == 1


async def test_oversize_single_event_is_rejected_alone(make_harness, cert_dir):
    h = await make_harness(make_settings(cert_dir, max_event_bytes=600))
    items = [
        {"event": "click", "email": "a@b.co", "timestamp": 1513299569, "sg_event_id": "small", "url": "https://x.io"},
        {"event": "click", "email": "a@b.co", "timestamp": 1513299569, "sg_event_id": "big", "url": "https://x.io/" + "p" * 1000},
    ]
    resp = await post_sendgrid(h, json.dumps(items).encode())
    assert resp.status == 200
    assert [e["id"] for e in h.intake.submitted] == ["small"]
    assert counter(h.metrics, REJECTED, source="sendgrid", reason="too_large") == 1


# --- broker trouble: 429 / 503 with Retry-After, nothing dead-lettered, token released ---------


async def test_backpressure_is_429_with_retry_after_and_mailgun_retry_is_accepted(make_harness):
    intake = FakeIntake(fail_with=backpressure())
    h = await make_harness(intake=intake)
    body = mailgun_signed("opened.json")
    resp = await post_mailgun(h, body)
    assert resp.status == 429 and resp.headers["Retry-After"] == "2"
    assert counter(h.metrics, REJECTED, source="mailgun", reason="backpressure") == 1
    intake.fail_with = None
    resp = await post_mailgun(h, body)  # Mailgun retries the very same signed request
    assert resp.status == 200 and len(intake.submitted) == 1


async def test_broker_unavailable_is_503_and_nothing_dead_lettered(make_harness):
    intake = FakeIntake(fail_with=broker_down())
    h = await make_harness(intake=intake)
    items = fixture("sendgrid", "events.json")
    del items[0]["email"]  # a bad item must not be dead-lettered twice when the vendor retries
    resp = await post_sendgrid(h, json.dumps(items).encode())
    assert resp.status == 503 and resp.headers["Retry-After"] == "7"
    assert intake.dead == [] and counter(h.metrics, RECEIVED, source="sendgrid", type="email_open") == 0


async def test_requests_with_nothing_to_submit_do_not_call_the_broker(make_harness):
    intake = FakeIntake(fail_with=broker_down())
    h = await make_harness(intake=intake)
    resp = await post_sendgrid(h, json.dumps([fixture("sendgrid", "events.json")[0]]).encode())
    assert resp.status == 200 and (await resp.json()) == {"success": True, "accepted": 0, "ignored": 1}


# --- robustness --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["/webhooks/sendgrid", "/webhooks/mailgun", "/webhooks/postmark", "/webhooks/ses", "/v1/crm/events"],
)
@pytest.mark.parametrize("body", [b"", b"null", b"0", b'"x"', b"{}", b"[]", b"[null]", b'{"batch": null}', b"\x00\x01"])
async def test_odd_bodies_never_crash(make_harness, path, body):
    h = await make_harness()
    headers = {"Content-Type": "application/json"}
    if path == "/webhooks/sendgrid":
        headers = sendgrid_headers(body)
    elif path == "/webhooks/postmark":
        headers = basic(POSTMARK_USER, POSTMARK_PASSWORD)
    elif path == "/v1/crm/events":
        headers = {**basic("plain-key", ""), "Content-Type": "application/json"}
    resp = await h.client.post(path, data=body, headers=headers)
    assert resp.status < 500, await resp.text()
    assert (await resp.json())["success"] in (True, False)
