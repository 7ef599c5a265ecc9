"""Postmark webhooks: Basic auth on the URL and mapping of every RecordType, with distinct ids."""

from __future__ import annotations

import base64

import orjson
import pytest
from _webhook_support import NOW_MS, POSTMARK_PASSWORD, POSTMARK_USER, basic, fixture

from connectors.webhooks.common import AuthFailure, PayloadError
from connectors.webhooks.postmark import PostmarkReceiver, parse_record

RECEIVED = NOW_MS + 5


def receiver() -> PostmarkReceiver:
    return PostmarkReceiver(POSTMARK_USER, POSTMARK_PASSWORD)


async def test_valid_credentials():
    outcome = await receiver().receive(basic(POSTMARK_USER, POSTMARK_PASSWORD), orjson.dumps(fixture("postmark", "delivery.json")), RECEIVED)
    assert [e["type"] for e in outcome.events] == ["email_delivered"]


@pytest.mark.parametrize(
    "headers, code",
    [
        ({}, "missing_credentials"),
        ({"Authorization": "Bearer abc"}, "missing_credentials"),
        ({"Authorization": "Basic !!!"}, "bad_credentials"),
        ({"Authorization": "Basic " + base64.b64encode(b"no-colon").decode()}, "bad_credentials"),
        (basic(POSTMARK_USER, "wrong"), "bad_credentials"),
        (basic("wrong", POSTMARK_PASSWORD), "bad_credentials"),
        (basic(POSTMARK_USER, POSTMARK_PASSWORD + "x"), "bad_credentials"),
    ],
)
def test_refused_credentials(headers, code):
    with pytest.raises(AuthFailure) as err:
        receiver().verify(headers)
    assert err.value.code == code and err.value.status == 401


def test_credentials_must_be_configured():
    with pytest.raises(ValueError):
        PostmarkReceiver("user", "")


def event(name: str):
    outcome = parse_record(fixture("postmark", name), RECEIVED)
    assert not outcome.problems, outcome.problems
    return outcome.events[0] if outcome.events else outcome


def test_open():
    e = event("open.json")
    assert e["type"] == "email_open" and e["contact_id"] == "john@example.com"
    assert e["ts"] == 1572971634907
    assert e["id"] == "00000000-0000-0000-0000-000000000000:Open:john@example.com:2019-11-05T16:33:54.9070259Z"
    assert e["properties"]["first_open"] is True
    assert e["properties"]["platform"] == "WebMail"
    assert e["properties"]["read_seconds"] == 5
    assert e["properties"]["metadata"] == {"example": "value", "example_2": "value"}
    assert "machine_open" not in e["properties"]  # Postmark does not report it: absent = unknown


def test_click():
    e = event("click.json")
    assert e["type"] == "email_click" and e["properties"]["url"] == "https://example.com/pricing"
    assert "https://example.com/pricing" in e["id"]


def test_two_opens_of_one_message_have_distinct_ids():
    first = fixture("postmark", "open.json")
    second = dict(first, ReceivedAt="2019-11-05T17:00:00Z", FirstOpen=False)
    ids = {parse_record(r, RECEIVED).events[0]["id"] for r in (first, second)}
    assert len(ids) == 2


def test_two_links_clicked_have_distinct_ids():
    first = fixture("postmark", "click.json")
    second = dict(first, OriginalLink="https://example.com/demo")
    ids = {parse_record(r, RECEIVED).events[0]["id"] for r in (first, second)}
    assert len(ids) == 2


def test_the_same_record_twice_has_the_same_id():
    record = fixture("postmark", "click.json")
    assert parse_record(record, RECEIVED).events[0]["id"] == parse_record(record, RECEIVED + 99).events[0]["id"]


def test_hard_and_soft_bounce():
    hard = event("bounce.json")
    assert hard["type"] == "email_bounce" and hard["properties"]["bounce_type"] == "hard"
    assert hard["id"].endswith(":4323372036854775807")
    soft = event("bounce_soft.json")
    assert soft["properties"]["bounce_type"] == "soft" and soft["properties"]["postmark_type"] == "SoftBounce"
    assert soft["contact_id"] == "jane@example.com"


def test_spam_complaint():
    e = event("spam_complaint.json")
    assert e["type"] == "spam_report" and "bounce_type" not in e["properties"]


def test_subscription_change_suppress_is_unsubscribe():
    e = event("subscription_change.json")
    assert e["type"] == "unsubscribe" and e["ts"] == 1580554414416
    assert e["properties"]["suppression_reason"] == "ManualSuppression"


def test_reactivation_is_counted_as_ignored():
    outcome = event("subscription_reactivated.json")
    assert outcome.events == [] and outcome.ignored == {"ignored_reactivation": 1}


def test_manual_suppression_without_message_id():
    record = dict(fixture("postmark", "subscription_change.json"), MessageID=None)
    e = parse_record(record, RECEIVED).events[0]
    assert e["id"].startswith("manual:SubscriptionChange:")


def test_unknown_record_type_is_ignored():
    outcome = parse_record({"RecordType": "Inbound"}, RECEIVED)
    assert outcome.ignored == {"unknown_record_type": 1}


@pytest.mark.parametrize(
    "name, drop, field",
    [
        ("open.json", "MessageID", "MessageID"),
        ("open.json", "Recipient", "Recipient"),
        ("open.json", "ReceivedAt", "ReceivedAt"),
        ("bounce.json", "ID", "ID"),
        ("bounce.json", "Email", "Email"),
        ("click.json", "OriginalLink", "OriginalLink"),
        ("open.json", "RecordType", "RecordType"),
    ],
)
def test_missing_fields(name, drop, field):
    record = fixture("postmark", name)
    del record[drop]
    outcome = parse_record(record, RECEIVED)
    assert outcome.events == [] and outcome.problems[0].field == field


def test_body_must_be_an_object():
    with pytest.raises(PayloadError):
        parse_record([fixture("postmark", "open.json")], RECEIVED)
