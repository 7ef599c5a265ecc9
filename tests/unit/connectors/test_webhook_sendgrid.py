"""SendGrid Event Webhook: ECDSA verification on the raw body and mapping of every documented event."""

from __future__ import annotations

import json

import pytest
from _webhook_support import NOW_MS, fixture, fixture_bytes, sendgrid_headers, sendgrid_public_key_b64, sendgrid_public_key_pem
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from connectors.webhooks.common import AuthFailure, PayloadError
from connectors.webhooks.sendgrid import SendGridReceiver, load_public_key, map_event, parse_events

RECEIVED = NOW_MS + 5


def receiver(key: str | None = None, now: int = NOW_MS) -> SendGridReceiver:
    return SendGridReceiver(key or sendgrid_public_key_b64(), now_ms=lambda: now)


@pytest.mark.parametrize("key", [sendgrid_public_key_b64, sendgrid_public_key_pem])
async def test_valid_signature_accepted_with_base64_der_or_pem_key(key):
    body = fixture_bytes("sendgrid", "events.json")
    outcome = await receiver(key()).receive(sendgrid_headers(body), body, RECEIVED)
    assert len(outcome.events) == 10
    assert outcome.ignored == {"ignored_processed": 1, "ignored_deferred": 1, "ignored_group_resubscribe": 1}
    assert outcome.problems == []


def test_lowercase_header_names_work_on_plain_dicts():
    body = b"[]"
    headers = {k.lower(): v for k, v in sendgrid_headers(body).items()}
    receiver().verify(headers, body)


def test_tampered_body_is_refused():
    body = fixture_bytes("sendgrid", "events.json")
    headers = sendgrid_headers(body)
    with pytest.raises(AuthFailure) as err:
        receiver().verify(headers, body.replace(b"example@test.com", b"attacker@test.com", 1))
    assert err.value.code == "bad_signature" and err.value.status == 403


def test_signature_from_another_key_is_refused():
    body = b"[]"
    other = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(AuthFailure) as err:
        receiver().verify(sendgrid_headers(body, key=other), body)
    assert err.value.code == "bad_signature"


def test_timestamp_is_part_of_the_signed_content():
    body = b"[]"
    headers = sendgrid_headers(body)
    headers["X-Twilio-Email-Event-Webhook-Timestamp"] = str(NOW_MS // 1000 + 1)
    with pytest.raises(AuthFailure) as err:
        receiver().verify(headers, body)
    assert err.value.code == "bad_signature"


@pytest.mark.parametrize("offset_s", [-301, 301, -86_400])
def test_stale_or_future_timestamps_are_refused(offset_s):
    body = b"[]"
    headers = sendgrid_headers(body, timestamp_s=NOW_MS // 1000 + offset_s)
    with pytest.raises(AuthFailure) as err:
        receiver().verify(headers, body)
    assert err.value.code == "stale_timestamp"


def test_timestamp_within_tolerance_is_accepted():
    body = b"[]"
    receiver().verify(sendgrid_headers(body, timestamp_s=NOW_MS // 1000 - 299), body)


@pytest.mark.parametrize(
    "drop, code",
    [("X-Twilio-Email-Event-Webhook-Signature", "missing_signature"), ("X-Twilio-Email-Event-Webhook-Timestamp", "missing_signature")],
)
def test_missing_headers(drop, code):
    body = b"[]"
    headers = sendgrid_headers(body)
    del headers[drop]
    with pytest.raises(AuthFailure) as err:
        receiver().verify(headers, body)
    assert err.value.code == code and err.value.status == 401 and err.value.field == drop


@pytest.mark.parametrize("signature, timestamp", [("not base64!!", None), ("AAAA", None), (None, "12ab"), (None, "9" * 20)])
def test_malformed_signature_or_timestamp(signature, timestamp):
    body = b"[]"
    headers = sendgrid_headers(body)
    if signature is not None:
        headers["X-Twilio-Email-Event-Webhook-Signature"] = signature
    if timestamp is not None:
        headers["X-Twilio-Email-Event-Webhook-Timestamp"] = timestamp
    with pytest.raises(AuthFailure):
        receiver().verify(headers, body)


def test_key_must_be_p256():
    other = ec.generate_private_key(ec.SECP384R1()).public_key()
    pem = other.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    with pytest.raises(ValueError, match="P-256"):
        load_public_key(pem)
    with pytest.raises(ValueError, match="base64 DER or PEM"):
        load_public_key("definitely not a key")


def _by_id(events):
    return {e["id"]: e for e in events}


def test_mapping_of_every_documented_event():
    outcome = parse_events(fixture("sendgrid", "events.json"), RECEIVED)
    events = _by_id(outcome.events)
    for event in outcome.events:
        assert event["source"] == "sendgrid"
        assert event["received_at"] == RECEIVED
        assert event["contact_id"] == event["contact_id"].lower()
        assert event["properties"]["sg_message_id"].startswith("14c5d75ce93")

    delivered = events["ZGVsaXZlcmVkLTEyMzQ1"]
    assert delivered["type"] == "email_delivered" and delivered["ts"] == 1513299569000
    assert delivered["properties"]["category"] == ["cat facts"]

    human_open = events["b3Blbi0xMjM0NQ=="]
    assert human_open["type"] == "email_open"
    assert human_open["properties"]["machine_open"] is False
    assert human_open["properties"]["ip"] == "255.255.255.255"
    assert human_open["properties"]["useragent"].startswith("Mozilla/4.0")

    machine_open = events["b3Blbi1tYWNoaW5lLTEyMzQ1"]
    assert machine_open["properties"]["machine_open"] is True
    assert machine_open["properties"]["category"] == ["cat facts", "newsletter"]

    click = events["Y2xpY2stMTIzNDU="]
    assert click["type"] == "email_click" and click["properties"]["url"] == "http://www.sendgrid.com/"
    assert click["ts"] == 1513299572000

    hard = events["Ym91bmNlLTEyMzQ1"]
    assert hard["type"] == "email_bounce" and hard["properties"]["bounce_type"] == "hard"
    assert hard["contact_id"] == "hard@test.com"
    assert hard["properties"]["bounce_classification"] == "Invalid Address"

    blocked = events["YmxvY2tlZC0xMjM0NQ=="]
    assert blocked["type"] == "email_bounce" and blocked["properties"]["bounce_type"] == "soft"

    dropped = events["ZHJvcHBlZC0xMjM0NQ=="]
    assert dropped["type"] == "email_bounce"
    assert dropped["properties"].items() >= {"bounce_type": "soft", "dropped": True, "reason": "Bounced Address"}.items()

    assert events["c3BhbXJlcG9ydC0xMjM0NQ=="]["type"] == "spam_report"
    assert events["dW5zdWJzY3JpYmUtMTIzNDU="]["type"] == "unsubscribe"
    group = events["Z3JvdXBfdW5zdWJzY3JpYmUtMTIzNDU="]
    assert group["type"] == "unsubscribe" and group["properties"]["asm_group_id"] == 10


def test_contact_id_is_lowercased():
    event = map_event({"event": "open", "email": "  Mixed@Case.COM ", "timestamp": 1, "sg_event_id": "x"}, RECEIVED)
    assert event["contact_id"] == "mixed@case.com"


@pytest.mark.parametrize(
    "item, field",
    [
        ({"event": "open", "email": "a@b.c", "timestamp": 1513299569}, "sg_event_id"),
        ({"event": "open", "email": "a@b.c", "timestamp": 1513299569, "sg_event_id": ""}, "sg_event_id"),
        ({"event": "open", "timestamp": 1513299569, "sg_event_id": "x"}, "email"),
        ({"event": "open", "email": "not-an-address", "timestamp": 1513299569, "sg_event_id": "x"}, "email"),
        ({"event": "open", "email": "a@b.c", "sg_event_id": "x"}, "timestamp"),
        ({"event": "open", "email": "a@b.c", "timestamp": True, "sg_event_id": "x"}, "timestamp"),
        ({"email": "a@b.c", "timestamp": 1, "sg_event_id": "x"}, "event"),
    ],
)
def test_bad_items_are_rejected_alone(item, field):
    good = {"event": "delivered", "email": "ok@b.c", "timestamp": 1513299569, "sg_event_id": "good"}
    outcome = parse_events([good, item, "not an object"], RECEIVED)
    assert [e["id"] for e in outcome.events] == ["good"]
    assert [p.index for p in outcome.problems] == [1, 2]
    assert outcome.problems[0].field == field
    assert outcome.problems[0].payload == item


def test_unknown_events_are_counted_not_dropped_silently():
    outcome = parse_events([{"event": "something_new", "sg_event_id": "x"}], RECEIVED)
    assert outcome.events == [] and outcome.ignored == {"unknown_event": 1}


@pytest.mark.parametrize("body", [{"event": "open"}, "text", 42, None])
def test_body_must_be_an_array(body):
    with pytest.raises(PayloadError) as err:
        parse_events(body, RECEIVED)
    assert err.value.field == "body" and err.value.trusted


async def test_non_utf8_after_valid_signature_is_a_trusted_payload_error():
    body = b'[{"email": "\xff\xfe"}]'
    with pytest.raises(PayloadError) as err:
        await receiver().receive(sendgrid_headers(body), body, RECEIVED)
    assert err.value.code == "not_utf8" and err.value.trusted
    assert "\\xff" in err.value.payload


async def test_invalid_json_after_valid_signature():
    body = b'[{"email": '
    with pytest.raises(PayloadError) as err:
        await receiver().receive(sendgrid_headers(body), body, RECEIVED)
    assert err.value.code == "invalid_json" and err.value.payload == body.decode()


def test_large_arrays_keep_order_and_ids():
    items = [
        {"event": "click", "email": f"u{i}@x.io", "timestamp": 1513299569 + i, "sg_event_id": f"id-{i}", "url": "https://x.io"}
        for i in range(500)
    ]
    outcome = parse_events(json.loads(json.dumps(items)), RECEIVED)
    assert [e["id"] for e in outcome.events] == [f"id-{i}" for i in range(500)]
