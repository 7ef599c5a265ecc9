"""Segment call normalisation (connectors.segment): each call type, clock-skew correction, validation."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from connectors import segment
from connectors.types import BadInput

RECEIVED = 1_795_428_010_000  # 2026-11-23T10:00:10Z


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def norm(call_type, payload, received_at=RECEIVED):
    return segment.normalise(call_type, payload, received_at=received_at, source="segment")


def base(**fields):
    return {"messageId": "m-1", "userId": "u-1", **fields}


# --- clock skew ------------------------------------------------------------------------------


def test_skew_correction_moves_a_fast_client_clock_back():
    # The phone is one hour ahead: it stamped the event at T+1h and sent it 5 s later at T+1h+5s.
    hour = 3_600_000
    event = norm("track", base(event="E", timestamp=iso(RECEIVED + hour - 5_000), sentAt=iso(RECEIVED + hour)))
    assert event["ts"] == RECEIVED - 5_000
    assert event["received_at"] == RECEIVED


def test_skew_correction_moves_a_slow_client_clock_forward():
    day = 86_400_000
    event = norm("page", base(timestamp=iso(RECEIVED - day - 30_000), sentAt=iso(RECEIVED - day)))
    assert event["ts"] == RECEIVED - 30_000


def test_original_timestamp_is_what_gets_corrected_when_present():
    # A call that already went through Segment: timestamp is corrected, originalTimestamp is the device's.
    call = base(event="E", originalTimestamp=iso(RECEIVED + 60_000 - 2_000), timestamp=iso(RECEIVED - 2_000),
                sentAt=iso(RECEIVED + 60_000))
    assert norm("track", call)["ts"] == RECEIVED - 2_000


def test_without_sent_at_the_given_time_is_used_as_is():
    historical = iso(RECEIVED - 3 * 86_400_000)
    assert norm("track", base(event="E", timestamp=historical))["ts"] == RECEIVED - 3 * 86_400_000
    assert norm("track", base(event="E", originalTimestamp=historical))["ts"] == RECEIVED - 3 * 86_400_000
    # timestamp (already corrected) beats originalTimestamp when nothing can be corrected
    both = base(event="E", timestamp=iso(RECEIVED - 1_000), originalTimestamp=iso(RECEIVED - 9_000))
    assert norm("track", both)["ts"] == RECEIVED - 1_000


def test_no_time_at_all_means_received_now():
    assert norm("track", base(event="E"))["ts"] == RECEIVED
    assert norm("track", base(event="E", sentAt=iso(RECEIVED + 999_000)))["ts"] == RECEIVED


def test_naive_and_offset_timestamps():
    assert norm("track", base(event="E", timestamp="2026-11-23T10:00:00"))["ts"] == RECEIVED - 10_000
    assert norm("track", base(event="E", timestamp="2026-11-23T11:00:00+01:00"))["ts"] == RECEIVED - 10_000
    # analytics-python / rudder-sdk-python send isoformat() with microseconds and +00:00
    assert norm("track", base(event="E", timestamp="2026-11-23T10:00:00.123456+00:00"))["ts"] == RECEIVED - 10_000 + 123


def test_a_correction_before_1970_is_refused():
    with pytest.raises(BadInput) as err:
        norm("track", base(event="E", timestamp="1970-01-01T00:00:01Z", sentAt="2026-11-23T10:00:10Z"), received_at=5_000)
    assert err.value.field == "sentAt"


def test_bad_timestamp_names_the_field():
    with pytest.raises(BadInput) as err:
        norm("track", base(event="E", timestamp="yesterday"))
    assert err.value.field == "timestamp" and err.value.status == 400
    with pytest.raises(BadInput) as err:
        norm("track", base(event="E", originalTimestamp="soon"))
    assert err.value.field == "originalTimestamp"


# --- call types -------------------------------------------------------------------------------


def test_track():
    event = norm("track", base(event="Demo Requested", properties={"plan": "team"}, anonymousId="a-1"))
    assert event["type"] == "track" and event["name"] == "Demo Requested"
    assert event["contact_id"] == "u-1" and event["anonymous_id"] == "a-1"
    assert event["properties"] == {"plan": "team"} and event["id"] == "m-1" and event["source"] == "segment"


def test_track_needs_an_event_name():
    for bad in ({}, {"event": ""}, {"event": None}):
        with pytest.raises(BadInput) as err:
            norm("track", base(**bad))
        assert err.value.field == "event"


def test_page_takes_name_category_and_context_page():
    event = norm("page", base(name="Pricing", category="Docs", context={"page": {"path": "/pricing", "url": "https://x/pricing",
                                                                                  "title": "Pricing", "referrer": "https://g"}}))
    assert event["type"] == "page_view"
    assert event["properties"] == {"path": "/pricing", "url": "https://x/pricing", "title": "Pricing", "referrer": "https://g",
                                   "name": "Pricing", "category": "Docs"}


def test_page_properties_win_over_context_page():
    event = norm("page", base(properties={"path": "/a"}, context={"page": {"path": "/b"}}))
    assert event["properties"]["path"] == "/a"


def test_screen_is_a_page_view():
    event = norm("screen", base(name="Home"))
    assert event["type"] == "page_view" and event["properties"] == {"name": "Home", "screen": True}


def test_identify_traits_top_level_and_in_context():
    event = norm("identify", base(traits={"title": "Professor", "company": {"name": "Uni"}}))
    assert event["type"] == "identify" and event["traits"]["title"] == "Professor"
    # RudderStack's identify sends traits only in context.traits
    event = norm("identify", base(context={"traits": {"title": "Student"}}))
    assert event["traits"] == {"title": "Student"}
    # both: merged, top-level wins
    event = norm("identify", base(traits={"title": "Professor", "company": {"industry": "University"}},
                                  context={"traits": {"title": "Student", "company": {"name": "Uni"}, "email": "a@b"}}))
    assert event["traits"] == {"title": "Professor", "company": {"name": "Uni", "industry": "University"}, "email": "a@b"}


def test_identify_with_only_an_anonymous_id():
    event = norm("identify", {"messageId": "m", "anonymousId": "anon-1", "traits": {"email": "x@y"}})
    assert event["contact_id"] is None and event["anonymous_id"] == "anon-1"


def test_alias_links_previous_id():
    event = norm("alias", base(previousId="anon-9"))
    assert event["type"] == "alias" and event["contact_id"] == "u-1" and event["anonymous_id"] == "anon-9"
    assert event["properties"]["previous_id"] == "anon-9"
    with pytest.raises(BadInput) as err:
        norm("alias", base())
    assert err.value.field == "previousId"
    with pytest.raises(BadInput) as err:
        norm("alias", {"messageId": "m", "previousId": "p"})
    assert err.value.field == "userId"


def test_group_keeps_group_id_and_traits():
    event = norm("group", base(groupId=42, traits={"industry": "Healthcare", "employees": 420}))
    assert event["type"] == "group" and event["properties"]["group_id"] == "42"
    assert event["traits"] == {"industry": "Healthcare", "employees": 420}
    with pytest.raises(BadInput) as err:
        norm("group", base(traits={"industry": "Healthcare"}))
    assert err.value.field == "groupId"


def test_numeric_ids_are_strings_and_blank_ids_are_missing():
    event = norm("track", {"messageId": "m", "userId": 123, "event": "E"})
    assert event["contact_id"] == "123"
    with pytest.raises(BadInput) as err:
        norm("track", {"messageId": "m", "userId": "  ", "anonymousId": "", "event": "E"})
    assert err.value.field == "userId"


def test_context_ip_and_user_agent_are_kept():
    event = norm("track", base(event="E", context={"ip": "1.2.3.4", "userAgent": "UA", "library": {"name": "x"}}))
    assert event["context"] == {"ip": "1.2.3.4", "user_agent": "UA"}


def test_path_names_the_type_for_single_calls():
    # POST /v1/track with a body that says page is still a track call
    assert norm("track", base(type="page", event="E"))["type"] == "track"


def test_batch_items_need_a_known_type():
    with pytest.raises(BadInput) as err:
        norm(None, base(event="E"))
    assert err.value.field == "type"
    with pytest.raises(BadInput) as err:
        norm(None, base(type="purchase", event="E"))
    assert err.value.field == "type"
    assert norm(None, base(type="identify"))["type"] == "identify"


@pytest.mark.parametrize(
    "payload, field",
    [
        ({"userId": "u", "event": "E"}, "messageId"),
        ({"messageId": "", "userId": "u", "event": "E"}, "messageId"),
        ({"messageId": "m" * 201, "userId": "u", "event": "E"}, "messageId"),
        ({"messageId": 5, "userId": "u", "event": "E"}, "messageId"),
        ({"messageId": "m", "event": "E"}, "userId"),
        ({"messageId": "m", "userId": ["u"], "event": "E"}, "userId"),
        ({"messageId": "m", "userId": "u", "event": "E", "properties": [1, 2]}, "properties"),
        ({"messageId": "m", "userId": "u", "event": "E", "traits": "x"}, "traits"),
    ],
)
def test_invalid_calls_name_the_field(payload, field):
    with pytest.raises(BadInput) as err:
        norm("track", payload)
    assert err.value.field == field and err.value.status == 400 and err.value.reason.startswith(field)


def test_not_an_object():
    with pytest.raises(BadInput):
        norm("track", ["not", "an", "object"])


def test_deep_nesting_is_refused_before_it_reaches_the_broker():
    deep: dict = {}
    for _ in range(40):
        deep = {"a": deep}
    with pytest.raises(BadInput) as err:
        norm("track", base(event="E", properties=deep))
    assert err.value.field == "properties" and "nested deeper" in err.value.reason
    shallow: dict = {}
    for _ in range(15):  # 30 levels inside properties: within the 32 allowed
        shallow = {"a": [shallow]}
    assert norm("track", base(event="E", properties=shallow))["properties"] == shallow


def test_batch_item_merges_context_and_sent_at():
    batch = {"sentAt": "2026-01-01T00:00:00Z", "context": {"device": {"type": "phone", "name": "X"}, "ip": "1.1.1.1"}}
    item = segment.batch_item({"type": "track", "context": {"device": {"name": "Y"}}, "sentAt": "2026-01-02T00:00:00Z"}, batch)
    assert item["context"] == {"device": {"type": "phone", "name": "Y"}, "ip": "1.1.1.1"}
    assert item["sentAt"] == "2026-01-02T00:00:00Z"
    item = segment.batch_item({"type": "track"}, batch)
    assert item["context"] == batch["context"] and item["sentAt"] == "2026-01-01T00:00:00Z"
    assert segment.batch_item("junk", batch) == "junk"


def test_batch_level_sent_at_corrects_skew():
    hour = 3_600_000
    batch = {"sentAt": iso(RECEIVED + hour)}
    item = segment.batch_item(base(type="track", event="E", timestamp=iso(RECEIVED + hour - 7_000)), batch)
    assert norm(None, item)["ts"] == RECEIVED - 7_000
