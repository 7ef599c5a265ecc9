"""Property tests: arrival order and identity merges do not change the score read at a time t."""

from __future__ import annotations

import copy

import orjson
from _rules_support import DAY, HOUR, T0, ev
from hypothesis import given, settings
from hypothesis import strategies as st

from rules import default_model
from rules.engine import _groups_decayed, _rules_decayed, apply_event, merge_state, new_state, score_at, view
from rules.model import DEFAULT_MODEL_PATH, compile_spec
from rules.schema import HealthSpec, ModelSpec, parse_yaml

M = default_model()
# Same model with a year of allowed lateness, so that arbitrarily late events still count exactly.
LONG = compile_spec(
    parse_yaml(DEFAULT_MODEL_PATH.read_text().replace("allowed_lateness: 7d", "allowed_lateness: 400d"), ModelSpec),
    parse_yaml((DEFAULT_MODEL_PATH.parent / "health.yaml").read_text(), HealthSpec),
)

SIGNALS = ["page_view", "time_on_site", "demo_request", "whitepaper_download", "webinar_attended", "email_open",
           "email_click", "email_reply", "linkedin_engagement", "twitter_engagement", "unsubscribe", "spam_report"]
TITLES = ["Psychologist", "Professor", "Student", "CEO"]


@st.composite
def event_lists(draw, span_ms: int):
    n = draw(st.integers(1, 25))
    events = []
    for _ in range(n):
        ts = T0 + draw(st.integers(0, span_ms))
        kind = draw(st.sampled_from(SIGNALS + ["careers", "identify", "hard_bounce"]))
        if kind == "careers":
            events.append(ev("page_view", ts=ts, properties={"path": "/careers"}))
        elif kind == "identify":
            events.append(ev("identify", ts=ts, traits={"title": draw(st.sampled_from(TITLES)),
                                                         "company": {"employee_count": draw(st.integers(1, 3000))}}))
        elif kind == "hard_bounce":
            events.append(ev("email_bounce", ts=ts, properties={"bounce_type": "hard"}))
        else:
            events.append(ev(kind, ts=ts))
    return events


def apply_all(events, model, contact="c1"):
    state = new_state(contact)
    for e in events:
        apply_event(state, e, model)
    return state


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_arrival_order_does_not_change_the_score_within_allowed_lateness(data):
    events = data.draw(event_lists(span_ms=6 * DAY))
    shuffled = data.draw(st.permutations(events))
    a = apply_all(events, M)
    b = apply_all(shuffled, M)
    end = max(e["ts"] for e in events)
    for t in (end, end + 3 * HOUR, end + 20 * DAY):
        assert abs(score_at(a, M, t) - score_at(b, M, t)) < 1e-6
    assert a["traits"] == b["traits"] and a["suppressed"] == b["suppressed"]
    assert view(a, M, end)["band"] == view(b, M, end)["band"] or abs(score_at(a, M, end) - 51) < 1e-6


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_arrival_order_over_months_with_long_lateness(data):
    events = data.draw(event_lists(span_ms=200 * DAY))
    shuffled = data.draw(st.permutations(events))
    a = apply_all(sorted(events, key=lambda e: e["ts"]), LONG)
    b = apply_all(shuffled, LONG)
    end = max(e["ts"] for e in events)
    assert abs(score_at(a, LONG, end) - score_at(b, LONG, end)) < 1e-6
    assert abs(score_at(a, LONG, end + 60 * DAY) - score_at(b, LONG, end + 60 * DAY)) < 1e-6


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_group_sums_match_rule_by_rule_sums(data):
    events = data.draw(event_lists(span_ms=30 * DAY))
    state = apply_all(data.draw(st.permutations(events)), M)
    t = max(e["ts"] for e in events) + data.draw(st.integers(0, 90 * DAY))
    assert abs(_groups_decayed(state["g"], t) - _rules_decayed(state["b"], M.rule_k, t)) < 1e-6
    assert orjson.loads(orjson.dumps(state)) == state


@settings(max_examples=120, deadline=None)
@given(data=st.data())
def test_merge_state_is_order_independent_and_equals_one_history(data):
    events = data.draw(event_lists(span_ms=6 * DAY))
    split = [data.draw(st.booleans()) for _ in events]
    known = [e for e, s in zip(events, split) if s]
    anon = [e for e, s in zip(events, split) if not s]
    a = apply_all(known, M, "c1")
    b = apply_all(anon, M, "anon:x")
    ab = copy.deepcopy(a)
    merge_state(ab, copy.deepcopy(b), M)
    ba = copy.deepcopy(b)
    merge_state(ba, copy.deepcopy(a), M)
    whole = apply_all(events, M)
    end = max(e["ts"] for e in events)
    for t in (end, end + 10 * DAY):
        assert abs(score_at(ab, M, t) - score_at(whole, M, t)) < 1e-6
        assert abs(score_at(ba, M, t) - score_at(whole, M, t)) < 1e-6
        assert abs(_groups_decayed(ab["g"], t) - _rules_decayed(ab["b"], M.rule_k, t)) < 1e-6
    assert ab["traits"] == ba["traits"] == whole["traits"]
    assert ab["suppressed"] == ba["suppressed"] == whole["suppressed"]
    assert ab["contact_id"] == "c1" and ba["contact_id"] == "anon:x"
    assert orjson.loads(orjson.dumps(ab)) == ab


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_replay_gives_identical_triggers(data):
    events = data.draw(event_lists(span_ms=20 * DAY))
    events = sorted(events, key=lambda e: e["ts"])

    def triggers():
        state = new_state("c1")
        return [t for e in events for t in apply_event(state, e, M)]

    assert triggers() == triggers()


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_a_suppressed_contact_never_gets_score_triggers(data):
    events = data.draw(event_lists(span_ms=20 * DAY))
    suppressor = data.draw(st.sampled_from([
        ev("unsubscribe", ts=T0), ev("spam_report", ts=T0), ev("crm_update", ts=T0, traits={"customer": True}),
        ev("crm_update", ts=T0, traits={"in_sales_conversation": "true"}),
        ev("email_bounce", ts=T0, properties={"bounce_type": "hard"}),
    ]))
    boost = [ev("identify", ts=T0 + 1, traits={"title": "Psychologist", "company": {"industry": "University",
                                                "employee_count": 5000}, "address": {"country": "US"}})]
    boost += [ev(s, ts=T0 + 2) for s in ("demo_request", "webinar_attended", "whitepaper_download", "email_reply")]
    state = new_state("c1")
    fired = []
    for e in [suppressor] + data.draw(st.permutations(events + boost)):
        fired += [t["type"] for t in apply_event(state, e, M)]
    assert fired[0] == "suppress"
    assert not {"mql", "hot_lead", "route_to_sales", "unsuppress"} & set(fired)
    assert state["lead_state"] in ("nurture", "customer")
