"""CRM and sales feedback: schema, mapping to crm_update / sales_feedback, ids, write-key auth."""

from __future__ import annotations

import base64

import orjson
import pytest
from _webhook_support import NOW_MS, fixture

from connectors.crm import CrmReceiver, parse_body, to_event
from connectors.webhooks.common import AuthFailure, ItemRejected, PayloadError
from streams.events import event_problem

RECEIVED = NOW_MS + 5
KEYS = {"crm-key": "hubspot", "plain-key": "segment"}


def test_stage_change_fixture():
    e = to_event(fixture("crm", "stage_change.json"), RECEIVED)
    assert e["type"] == "crm_update" and e["source"] == "crm"
    assert e["id"] == "sf-opp-0065g00000XyZ-closed_won"
    assert e["contact_id"] == "jane.doe@example.edu"
    assert e["traits"] == {"lifecycle_stage": "closed_won"}
    assert e["ts"] == 1714555800000
    assert event_problem(e) is None


@pytest.mark.parametrize(
    "stage, expected",
    [("lead", "lead"), ("Opportunity", "opportunity"), ("closed-lost", "closed_lost"), ("Closed  Won", "closed_won"), ("won", "closed_won"), ("CUSTOMER", "customer")],
)
def test_stage_names_are_normalised(stage, expected):
    e = to_event({"type": "stage_change", "contact_id": "c1", "stage": stage, "timestamp": 1714555800000}, RECEIVED)
    assert e["traits"]["lifecycle_stage"] == expected


def test_customer_stage_sets_customer_flag_unless_given():
    e = to_event({"type": "stage_change", "contact_id": "c1", "stage": "customer", "timestamp": 1714555800000}, RECEIVED)
    assert e["traits"] == {"lifecycle_stage": "customer", "customer": True}
    e = to_event({"type": "stage_change", "contact_id": "c1", "stage": "customer", "customer": False, "timestamp": 1714555800000}, RECEIVED)
    assert e["traits"]["customer"] is False


def test_batch_fixture_maps_every_type():
    outcome = parse_body(fixture("crm", "batch.json"), RECEIVED, origin="hubspot")
    assert not outcome.problems
    conversation, customer, reject, accept = outcome.events
    assert conversation["traits"] == {"in_sales_conversation": True} and conversation["ts"] == 1714555800000
    assert customer["traits"] == {"customer": True} and customer["ts"] == 1714550400000  # 10:00+02:00 = 08:00Z
    assert reject["type"] == "sales_feedback"
    assert reject["properties"] == {
        "decision": "reject",
        "reason": "student, no budget",
        "trigger_id": "mql:lead-42:3f2a",
        "by": "sdr.anna@example.com",
        "origin": "hubspot",
    }
    assert reject["ts"] == 1714561200250
    assert accept["properties"] == {"decision": "accept", "origin": "hubspot"}
    assert all(e["id"].startswith("crm:") for e in outcome.events)


def test_derived_ids_are_deterministic_and_distinct():
    item = {"type": "sales_conversation", "contact_id": "c1", "active": True, "timestamp": 1714555800000}
    assert to_event(item, RECEIVED)["id"] == to_event(dict(item), RECEIVED + 1000)["id"]
    assert to_event(item, RECEIVED)["id"] != to_event(dict(item, active=False), RECEIVED)["id"]
    assert to_event(item, RECEIVED)["id"] != to_event(dict(item, timestamp=1714555800001), RECEIVED)["id"]
    assert to_event(item, RECEIVED)["id"] != to_event(dict(item, contact_id="c2"), RECEIVED)["id"]


def test_iso_and_epoch_ms_timestamps_agree():
    a = to_event({"type": "customer", "contact_id": "c", "timestamp": "2024-05-01T09:30:00Z"}, RECEIVED)
    b = to_event({"type": "customer", "contact_id": "c", "timestamp": 1714555800000}, RECEIVED)
    c = to_event({"type": "customer", "contact_id": "c", "timestamp": "1714555800000"}, RECEIVED)
    d = to_event({"type": "customer", "contact_id": "c", "timestamp": "2024-05-01T09:30:00"}, RECEIVED)
    assert a["ts"] == b["ts"] == c["ts"] == d["ts"] == 1714555800000


@pytest.mark.parametrize(
    "item, field",
    [
        ({"contact_id": "c", "timestamp": 1714555800000}, "type"),
        ({"type": "merge", "contact_id": "c", "timestamp": 1714555800000}, "type"),
        ({"type": "customer", "timestamp": 1714555800000}, "contact_id"),
        ({"type": "customer", "contact_id": "  ", "timestamp": 1714555800000}, "contact_id"),
        ({"type": "customer", "contact_id": "c"}, "timestamp"),
        ({"type": "customer", "contact_id": "c", "timestamp": 1714555800}, "timestamp"),
        ({"type": "customer", "contact_id": "c", "timestamp": "last tuesday"}, "timestamp"),
        ({"type": "customer", "contact_id": "c", "timestamp": True}, "timestamp"),
        ({"type": "stage_change", "contact_id": "c", "timestamp": 1714555800000}, "stage"),
        ({"type": "stage_change", "contact_id": "c", "stage": "prospect", "timestamp": 1714555800000}, "stage"),
        ({"type": "sales_conversation", "contact_id": "c", "timestamp": 1714555800000}, "active"),
        ({"type": "feedback", "contact_id": "c", "decision": "maybe", "timestamp": 1714555800000}, "decision"),
        ({"type": "feedback", "contact_id": "c", "decision": "reject", "timestamp": 1714555800000}, None),
        ({"type": "customer", "contact_id": "c", "timestamp": 1714555800000, "properties": [1]}, "properties"),
    ],
)
def test_invalid_objects_name_the_field(item, field):
    with pytest.raises(ItemRejected) as err:
        to_event(item, RECEIVED)
    if field:
        assert err.value.field == field, err.value.reason
    else:
        assert "reason is required" in err.value.reason


def test_deeply_nested_properties_are_refused():
    nested: dict = {}
    cursor = nested
    for _ in range(20):
        cursor["x"] = {}
        cursor = cursor["x"]
    with pytest.raises(ItemRejected) as err:
        to_event({"type": "customer", "contact_id": "c", "timestamp": 1714555800000, "properties": nested}, RECEIVED)
    assert err.value.field == "properties" and "nested deeper" in err.value.reason


def test_shallow_properties_pass_through():
    e = to_event({"type": "customer", "contact_id": "c", "timestamp": 1714555800000, "properties": {"deal": {"amount": 5000}}}, RECEIVED)
    assert e["properties"] == {"deal": {"amount": 5000}}


def test_batch_rejects_bad_items_alone():
    body = {"batch": [{"type": "customer", "contact_id": "c", "timestamp": 1714555800000}, {"type": "customer"}, 7]}
    outcome = parse_body(body, RECEIVED)
    assert len(outcome.events) == 1
    assert [(p.index, p.field) for p in outcome.problems] == [(1, "batch[1].contact_id"), (2, "batch[2]")]


@pytest.mark.parametrize("body", [[], "x", {"batch": []}, {"batch": {"type": "customer"}}])
def test_bad_bodies(body):
    with pytest.raises(PayloadError):
        parse_body(body, RECEIVED)


def test_huge_batches_are_refused():
    with pytest.raises(PayloadError) as err:
        parse_body({"batch": [{}] * 1001}, RECEIVED)
    assert err.value.status == 413


def basic(user: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:".encode()).decode()}


async def test_write_key_as_basic_user():
    body = orjson.dumps({"type": "customer", "contact_id": "c", "timestamp": 1714555800000})
    outcome = await CrmReceiver(KEYS).receive(basic("crm-key"), body, RECEIVED)
    assert outcome.events[0]["properties"] == {"origin": "hubspot"}
    outcome = await CrmReceiver(KEYS).receive(basic("plain-key"), body, RECEIVED)
    assert outcome.events[0]["properties"] == {}


async def test_write_key_in_the_body():
    body = orjson.dumps({"writeKey": "plain-key", "type": "customer", "contact_id": "c", "timestamp": 1714555800000})
    outcome = await CrmReceiver(KEYS).receive({}, body, RECEIVED)
    assert len(outcome.events) == 1


@pytest.mark.parametrize(
    "headers, body, code",
    [
        ({}, {"type": "customer"}, "missing_write_key"),
        (basic("nope"), {"type": "customer"}, "bad_write_key"),
        ({}, {"writeKey": "nope"}, "bad_write_key"),
        ({}, {"writeKey": 5}, "bad_write_key"),
        ({"Authorization": "Basic %%%"}, {}, "bad_credentials"),
    ],
)
async def test_refused_write_keys(headers, body, code):
    with pytest.raises(AuthFailure) as err:
        await CrmReceiver(KEYS).receive(headers, orjson.dumps(body), RECEIVED)
    assert err.value.code == code and err.value.status == 401


async def test_invalid_json_is_trusted_only_with_a_header_key():
    with pytest.raises(PayloadError) as err:
        await CrmReceiver(KEYS).receive(basic("crm-key"), b"{oops", RECEIVED)
    assert err.value.trusted
    with pytest.raises(PayloadError) as err:
        await CrmReceiver(KEYS).receive({}, b"{oops", RECEIVED)
    assert not err.value.trusted
