"""Property tests: whatever JSON an authenticated sender posts, the mappers answer with events or typed errors."""

from __future__ import annotations

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.crm import parse_body
from connectors.webhooks.common import PayloadError
from connectors.webhooks.mailgun import parse_event_data
from connectors.webhooks.postmark import parse_record
from connectors.webhooks.sendgrid import parse_events
from connectors.webhooks.ses import parse_ses_record
from streams.events import event_problem

RECEIVED = 1_714_564_800_000

scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False) | st.text(max_size=20)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=20)

# Vendor-shaped objects: the right keys with arbitrary values reach deeper into the mappers.
sendgrid_items = st.fixed_dictionaries(
    {"event": st.sampled_from(["open", "click", "bounce", "dropped", "delivered", "processed"]) | scalars},
    optional={"email": st.sampled_from(["a@b.co", "A@B.CO"]) | scalars, "timestamp": scalars, "sg_event_id": scalars, "type": scalars, "category": json_values, "sg_machine_open": scalars, "asm_group_id": scalars},
)
mailgun_data = st.fixed_dictionaries(
    {"event": st.sampled_from(["opened", "clicked", "failed", "delivered", "complained"]) | scalars},
    optional={"id": scalars, "recipient": st.just("a@b.co") | scalars, "timestamp": scalars, "severity": scalars, "client-info": json_values, "delivery-status": json_values, "message": json_values, "tags": json_values, "user-variables": json_values},
)
postmark_records = st.fixed_dictionaries(
    {"RecordType": st.sampled_from(["Open", "Click", "Bounce", "SpamComplaint", "SubscriptionChange", "Delivery"]) | scalars},
    optional={"MessageID": scalars, "Recipient": st.just("a@b.co") | scalars, "Email": st.just("a@b.co") | scalars, "ReceivedAt": st.just("2024-05-01T12:00:00Z") | scalars, "BouncedAt": scalars, "ID": scalars, "OriginalLink": scalars, "SuppressSending": scalars, "Metadata": json_values},
)
ses_records = st.fixed_dictionaries(
    {"eventType": st.sampled_from(["Bounce", "Complaint", "Delivery", "Open", "Click", "Send"]) | scalars},
    optional={"mail": json_values | st.just({"messageId": "m", "destination": ["a@b.co"]}), "bounce": json_values, "open": json_values | st.just({"timestamp": "2024-05-01T12:00:00Z"}), "click": json_values},
)
crm_bodies = st.fixed_dictionaries(
    {"type": st.sampled_from(["stage_change", "sales_conversation", "customer", "feedback"]) | scalars},
    optional={"contact_id": scalars, "timestamp": scalars, "stage": scalars, "active": scalars, "decision": scalars, "reason": scalars, "properties": json_values, "id": scalars},
)


def check(outcome) -> None:
    for event in outcome.events:
        assert event_problem(event) is None, event
        orjson.dumps(event)  # the broker must be able to carry it
    for problem in outcome.problems:
        orjson.dumps(problem.payload, default=str)


fuzz = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@fuzz
@given(st.lists(sendgrid_items | json_values, max_size=5) | json_values)
def test_sendgrid(payload):
    try:
        check(parse_events(payload, RECEIVED))
    except PayloadError:
        pass


@fuzz
@given(mailgun_data | json_values)
def test_mailgun(data):
    try:
        check(parse_event_data(data, RECEIVED))
    except PayloadError:
        pass


@fuzz
@given(postmark_records | json_values)
def test_postmark(record):
    try:
        check(parse_record(record, RECEIVED))
    except PayloadError:
        pass


@fuzz
@given(ses_records | json_values)
def test_ses(record):
    try:
        check(parse_ses_record(record, RECEIVED))
    except PayloadError:
        pass


@fuzz
@given(crm_bodies | st.fixed_dictionaries({"batch": st.lists(crm_bodies | json_values, max_size=4)}) | json_values)
def test_crm(body):
    try:
        check(parse_body(body, RECEIVED))
    except PayloadError:
        pass


def test_implausible_times_are_rejected_not_overflowing():
    items = [
        {"event": "open", "email": "a@b.co", "sg_event_id": "x", "timestamp": 18446744073709551615},
        {"event": "open", "email": "a@b.co", "sg_event_id": "y", "timestamp": float("inf")},
        {"event": "open", "email": "a@b.co", "sg_event_id": "z", "timestamp": -5},
    ]
    outcome = parse_events(items, RECEIVED)
    assert outcome.events == [] and [p.field for p in outcome.problems] == ["timestamp"] * 3
    crm = parse_body({"type": "customer", "contact_id": "c", "timestamp": 18446744073709551615}, RECEIVED)
    assert crm.events == [] and crm.problems[0].field == "timestamp"
