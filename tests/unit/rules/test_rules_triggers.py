"""Thresholds with hysteresis and cooldown, routing, track mapping, suppression, lead state, health."""

from __future__ import annotations

import itertools

import pytest
from _rules_support import DAY, HOUR, PERFECT, T0, ev, run, types

from rules import default_model
from rules.engine import apply_event, new_state, trigger_id, view

M = default_model()
HOT_PATH = ["demo_request", "webinar_attended", "whitepaper_download", "email_reply"]  # 75 raw -> 45: 85 with fit 40


def to_mql(ts: int) -> list[dict]:
    return [ev(s, ts=ts) for s in HOT_PATH]


def test_mql_fires_once_then_rearms_only_below_threshold_minus_hysteresis():
    state, first = run([ev("identify", traits=PERFECT)] + to_mql(T0))
    assert types(first).count("mql") == 1
    mql_id = next(t["trigger_id"] for t in first if t["type"] == "mql")
    assert mql_id == trigger_id("c1", "mql", 1)
    # Rejected by sales: back to nurture, but the score is still above 80 - 10: no new mql.
    out = apply_event(state, ev("sales_feedback", ts=T0 + HOUR, properties={"decision": "reject", "reason": "student"}),
                      M)
    assert out == [] and state["lead_state"] == "nurture" and state["rejection"] == {"reason": "student",
                                                                                       "at": T0 + HOUR}
    out = apply_event(state, ev("page_view", ts=T0 + 2 * DAY), M)
    assert "mql" not in types(out)
    # 60 days later behaviour has decayed (score < 70): the next event re-arms, the next burst fires again.
    out = apply_event(state, ev("page_view", ts=T0 + 60 * DAY), M)
    assert "mql" not in types(out) and "mql" not in state["disarmed"]
    out = []
    for e in to_mql(T0 + 60 * DAY + 1):
        out += apply_event(state, e, M)
    mqls = [t for t in out if t["type"] == "mql"]
    assert len(mqls) == 1 and mqls[0]["trigger_id"] == trigger_id("c1", "mql", 2) != mql_id


def test_cooldown_blocks_a_second_crossing_within_24h():
    model = M
    state, _ = run([ev("identify", traits=PERFECT)] + to_mql(T0))
    state["lead_state"] = "nurture"
    state["disarmed"].clear()  # as if the score had dipped below the re-arm level
    out = apply_event(state, ev("page_view", ts=T0 + 2 * HOUR), model)
    assert "mql" not in types(out)
    out = apply_event(state, ev("page_view", ts=T0 + 25 * HOUR), model)
    assert "mql" in types(out)


def test_hot_lead_fires_when_rising_into_hot_and_rearms_below_41():
    traits = {"title": "Psychologist", "company": {"industry": "University", "employee_count": 200}}  # fit 30
    state, out = run([ev("identify", traits=traits), ev("demo_request"), ev("time_on_site")])  # 51
    assert types(out) == ["route_to_sales", "hot_lead"] and out[1]["band"] == "hot"
    assert out[1]["previous_score"] == 45.0 and out[1]["score"] == 51.0
    out = apply_event(state, ev("page_view", ts=T0 + 45 * DAY), M)  # ~36 by then: re-armed
    assert out == [] and "hot_lead" not in state["disarmed"]
    out = apply_event(state, ev("demo_request", ts=T0 + 45 * DAY + 1), M)
    assert "hot_lead" in types(out)


def test_route_to_sales_needs_fit_25():
    low = {"title": "Psychologist", "company": {"industry": "University"}}  # raw 45 -> 22.5
    high = dict(low, address={"country": "US"})  # raw 60 -> 30
    _, out = run([ev("identify", traits=low), ev("demo_request")])
    assert "route_to_sales" not in types(out)
    _, out = run([ev("identify", traits=high), ev("demo_request")])
    assert "route_to_sales" in types(out)


def test_route_to_sales_from_a_segment_track_call_and_cooldown():
    events = [ev("identify", traits=PERFECT), ev("track", name="Demo Requested"),
              ev("track", ts=T0 + HOUR, name="Demo Requested"), ev("track", ts=T0 + 25 * HOUR, name="Demo Requested")]
    _, out = run(events)
    assert types(out).count("route_to_sales") == 2


@pytest.mark.parametrize(
    "name,props,raw",
    [("Demo Requested", {}, 25), ("Whitepaper Downloaded", {}, 15), ("Webinar Attended", {}, 20),
     ("Time On Site", {"seconds": 120}, 10), ("Email Opened", {}, 3), ("Email Link Clicked", {}, 8),
     ("Email Replied", {}, 15), ("demo requested", {}, 25), ("Product Viewed", {}, 0), (None, {}, 0)],
)
def test_track_names_map_to_signals(name, props, raw):
    state, _ = run([ev("track", name=name, properties=props)])
    assert view(state, M, T0)["behaviour"] == pytest.approx(raw * 0.6)


SUPPRESSORS = [
    ("sales_conversation", ev("crm_update", traits={"in_sales_conversation": True})),
    ("unsubscribed", ev("unsubscribe")),
    ("customer", ev("crm_update", traits={"lifecycle_stage": "customer"})),
    ("customer", ev("crm_update", traits={"customer": "true"})),
    ("hard_bounced", ev("email_bounce", properties={"bounce_type": "hard"})),
    ("spam_report", ev("spam_report")),
]


@pytest.mark.parametrize("reason,suppressor", SUPPRESSORS)
def test_suppression_wins_whatever_the_order(reason, suppressor):
    # Every arrival order of the same events at the same event time: never an mql, hot_lead or routing.
    base = [ev("identify", traits=PERFECT)] + to_mql(T0) + [ev("email_click")]
    for perm in itertools.islice(itertools.permutations(range(len(base) + 1)), 0, None, 97):
        events = [(base + [dict(suppressor, ts=T0)])[i] for i in perm]
        state, out = run(events)
        fired = types(out)
        if perm[0] == len(base):  # suppressed before anything else: no score trigger at all
            assert not {"mql", "hot_lead", "route_to_sales"} & set(fired)
        assert fired.count("suppress") == 1 and reason in state["suppressed"]
        assert view(state, M, T0)["suppressed"] is True


def test_suppression_decided_in_the_same_step_as_a_crossing():
    # One CRM update both completes the profile (crossing 80) and opens a sales conversation.
    state, out = run([ev(s) for s in HOT_PATH])
    out = apply_event(state, ev("crm_update", ts=T0 + 1, traits=dict(PERFECT, in_sales_conversation=True)), M)
    assert types(out) == ["suppress", "nurture_exit"]
    assert view(state, M, T0 + 1)["score"] >= 80 and state["lead_state"] == "nurture"


def test_unsuppress_when_the_last_reason_ends_then_mql_can_fire():
    state, out = run([ev("crm_update", traits={"in_sales_conversation": True}), ev("identify", traits=PERFECT)]
                     + to_mql(T0))
    assert types(out) == ["suppress", "nurture_exit"]
    out = apply_event(state, ev("crm_update", ts=T0 + HOUR, traits={"in_sales_conversation": False}), M)
    assert types(out) == ["unsuppress", "mql", "hot_lead"]  # nurture was already left when suppressed
    assert out[0]["reasons"][0]["signal"] == "suppression.sales_conversation"


def test_sticky_reasons_keep_the_contact_suppressed():
    state, _ = run([ev("crm_update", traits={"in_sales_conversation": True}), ev("unsubscribe")])
    out = apply_event(state, ev("crm_update", ts=T0 + HOUR, traits={"in_sales_conversation": False}), M)
    assert out == [] and state["suppressed"] == ["unsubscribed"]


def test_lead_state_machine():
    state, _ = run([ev("identify", traits=PERFECT)] + to_mql(T0))
    assert view(state, M, T0)["state"] == "mql" and state["mql_at"] == T0
    apply_event(state, ev("sales_feedback", ts=T0 + HOUR, properties={"decision": "accept"}), M)
    assert view(state, M, T0)["state"] == "sql" and state["sql_at"] == T0 + HOUR
    apply_event(state, ev("crm_update", ts=T0 + 2 * HOUR, traits={"lifecycle_stage": "customer"}), M)
    v = view(state, M, T0 + 2 * HOUR)
    assert v["state"] == "customer" and v["suppression_reasons"] == ["customer"]


def test_crm_opportunity_is_sql_and_closed_lost_back_to_nurture():
    state, _ = run([ev("crm_update", traits={"lifecycle_stage": "opportunity"})])
    assert state["lead_state"] == "sql"
    apply_event(state, ev("crm_update", ts=T0 + 1, traits={"lifecycle_stage": "closed_lost"}), M)
    assert state["lead_state"] == "nurture" and state["rejection"]["reason"] == "closed_lost"


def health(u=None, s=None, b=None, ts=T0) -> dict:
    traits = {k: v for k, v in (("health_usage", u), ("health_success", s), ("health_business", b)) if v is not None}
    return ev("crm_update", ts=ts, traits=traits)


@pytest.mark.parametrize(
    "u,s,b,score,band",
    [(100, 100, 100, 100, "green"), (80, 80, 80, 80, "green"), (79, 80, 80, 79.6, "yellow"),
     (60, 60, 60, 60, "yellow"), (59, 60, 60, 59.6, "red"), (100, 0, 0, 40, "red"), (0, 100, 0, 35, "red"),
     (0, 0, 100, 25, "red"), (100, None, None, 100, "green")],
)
def test_health_weights_and_bands(u, s, b, score, band):
    state, _ = run([health(u, s, b)])
    h = view(state, M, T0)["health"]
    assert h["score"] == pytest.approx(score) and h["band"] == band


def test_health_red_fires_on_entering_red_even_for_suppressed_customers():
    state, out = run([ev("crm_update", traits={"customer": True}), health(90, 90, 90)])
    assert types(out) == ["suppress", "nurture_exit"]
    out = apply_event(state, health(u=20, s=40, ts=T0 + DAY), M)  # 8 + 14 + 22.5
    assert types(out) == ["health_red"] and out[0]["band"] == "red" and out[0]["previous_score"] == 90
    assert apply_event(state, health(u=10, ts=T0 + 2 * DAY), M) == []  # still red: no repeat
    apply_event(state, health(u=95, ts=T0 + 3 * DAY), M)
    out = apply_event(state, health(u=0, s=0, ts=T0 + 4 * DAY), M)
    assert types(out) == ["health_red"] and out[0]["trigger_id"] == trigger_id("c1", "health_red", 2)


def test_every_trigger_names_the_model_version_and_event_time():
    _, out = run([ev("identify", traits=PERFECT)] + to_mql(T0 + 5) + [ev("unsubscribe", ts=T0 + 6)])
    assert out and all(t["rules_version"] == M.version for t in out)
    assert {t["event_ts"] for t in out} == {T0 + 5, T0 + 6}
    base = {"trigger_id", "type", "contact_id", "score", "previous_score", "band", "reasons", "rules_version",
            "event_ts"}
    extra = {"nurture_exit": {"to"}}
    assert all(set(t) == base | extra.get(t["type"], set()) for t in out)


def test_new_state_applies_to_a_fresh_contact():
    state = new_state("c9")
    out = apply_event(state, ev("demo_request", contact="c9"), M)
    assert out == [] and state["contact_id"] == "c9" and state["updated_at"] == T0
