"""The MQL handoff SLA timer (due_triggers / next_due) and the nurture_exit trigger."""

from __future__ import annotations

import copy
from pathlib import Path

import orjson
import pytest
from _rules_support import HOUR, MIN, PERFECT, T0, ev, run, types
from hypothesis import given, settings
from hypothesis import strategies as st

from rules import ModelError, default_model, load_model
from rules.diff import diff_models
from rules.engine import apply_event, due_triggers, merge_state, new_state, next_due, trigger_id, view
from rules.model import DEFAULT_MODEL_PATH

M = default_model()
SLA = 4 * HOUR
HOT_PATH = ["demo_request", "webinar_attended", "whitepaper_download", "email_reply"]
DEFAULT_TEXT = DEFAULT_MODEL_PATH.read_text()
HEALTH_TEXT = (DEFAULT_MODEL_PATH.parent / "health.yaml").read_text()


def mql_state(ts: int = T0, contact: str = "c1") -> tuple[dict, list[dict]]:
    return run([ev("identify", ts=ts, contact=contact, traits=PERFECT)]
               + [ev(s, ts=ts, contact=contact) for s in HOT_PATH], contact=contact)


def feedback(decision: str, ts: int, reason: str | None = None) -> dict:
    props = {"decision": decision} | ({"reason": reason} if reason else {})
    return ev("sales_feedback", ts=ts, properties=props)


def model_from(tmp_path: Path, text: str):
    (tmp_path / "health.yaml").write_text(HEALTH_TEXT)
    path = tmp_path / "model.yaml"
    path.write_text(text)
    return load_model(path)


# --- the timer ------------------------------------------------------------------------


def test_mql_arms_one_timer_at_mql_time_plus_sla():
    state, out = mql_state()
    mql = next(t for t in out if t["type"] == "mql")
    assert M.sla_ms == SLA and next_due(state, M) == T0 + SLA
    assert state["sla"]["mql_trigger_id"] == mql["trigger_id"] and state["sla"]["mql"] == 1
    assert view(state, M, T0)["sla_due"] == T0 + SLA
    assert next_due(new_state("x"), M) is None


def test_no_answer_breaches_exactly_once_at_the_deadline():
    state, out = mql_state()
    mql = next(t for t in out if t["type"] == "mql")
    assert due_triggers(state, M, T0 + SLA - 1) == [] and next_due(state, M) == T0 + SLA
    breach = due_triggers(state, M, T0 + SLA)
    assert types(breach) == ["sla_breach"]
    b = breach[0]
    assert b["trigger_id"] == trigger_id("c1", "sla_breach", 1)
    assert b["event_ts"] == T0 + SLA == b["sla_due"] and b["mql_at"] == T0
    assert b["mql_trigger_id"] == mql["trigger_id"] and b["route"] == "escalation"
    assert b["previous_score"] == mql["score"] and 80 <= b["score"] <= mql["score"]  # a little decay in 4 h
    assert b["band"] == "sql" and b["rules_version"] == M.version
    assert b["reasons"][0]["signal"] == "handoff.sla" and len(b["reasons"]) == 4
    assert next_due(state, M) is None
    assert due_triggers(state, M, T0 + SLA) == [] and due_triggers(state, M, T0 + 100 * HOUR) == []
    assert state["lead_state"] == "mql"  # still waiting for sales: escalated, not moved


def test_accept_before_the_deadline_means_no_breach():
    state, _ = mql_state()
    assert apply_event(state, feedback("accept", T0 + SLA - 1), M) == []
    assert state["lead_state"] == "sql" and state["sql_at"] == T0 + SLA - 1
    assert next_due(state, M) is None and due_triggers(state, M, T0 + 10 * SLA) == []


def test_reject_keeps_the_reason_returns_to_nurture_and_no_breach():
    state, _ = mql_state()
    out = apply_event(state, feedback("reject", T0 + HOUR, "wrong persona"), M)
    assert out == [] and state["lead_state"] == "nurture"
    assert state["rejection"] == {"reason": "wrong persona", "at": T0 + HOUR}
    assert next_due(state, M) is None and due_triggers(state, M, T0 + SLA) == []
    # Still above 80 - 10: no new mql (hysteresis), so no new timer.
    out = apply_event(state, ev("page_view", ts=T0 + 2 * HOUR), M)
    assert "mql" not in types(out) and next_due(state, M) is None


def test_a_second_mql_after_rearming_gets_its_own_timer_and_breach_id():
    state, _ = mql_state()
    apply_event(state, feedback("reject", T0 + HOUR, "not now"), M)
    apply_event(state, ev("page_view", ts=T0 + 60 * 24 * HOUR), M)  # decayed below 70: re-armed
    out = []
    for s in HOT_PATH:
        out += apply_event(state, ev(s, ts=T0 + 60 * 24 * HOUR + 1), M)
    assert "mql" in types(out) and state["sla"]["mql"] == 2
    due = T0 + 60 * 24 * HOUR + 1 + SLA
    assert next_due(state, M) == due
    breach = due_triggers(state, M, due)
    assert breach[0]["trigger_id"] == trigger_id("c1", "sla_breach", 2) != trigger_id("c1", "sla_breach", 1)


def test_an_event_past_the_deadline_fires_the_breach_first():
    state, _ = mql_state()
    out = apply_event(state, ev("page_view", ts=T0 + SLA + MIN), M)
    assert types(out) == ["sla_breach"] and out[0]["event_ts"] == T0 + SLA
    assert due_triggers(state, M, T0 + SLA + HOUR) == []
    # The answer at or after the deadline is late: the breach stands, the lead still moves.
    state2, _ = mql_state()
    out = apply_event(state2, feedback("accept", T0 + SLA), M)
    assert types(out) == ["sla_breach"] and state2["lead_state"] == "sql"
    assert out[0]["trigger_id"] == breach_id()


def breach_id(contact: str = "c1", mql: int = 1) -> str:
    return trigger_id(contact, "sla_breach", mql)


def test_a_late_answer_after_the_tick_moves_the_lead_but_fires_nothing_more():
    state, _ = mql_state()
    assert types(due_triggers(state, M, T0 + SLA + 10_000)) == ["sla_breach"]
    assert apply_event(state, feedback("accept", T0 + SLA - MIN), M) == []  # stamped in time, arrived late
    assert state["lead_state"] == "sql" and next_due(state, M) is None


@pytest.mark.parametrize(
    "event",
    [
        ev("unsubscribe", ts=T0 + HOUR),
        ev("crm_update", ts=T0 + HOUR, traits={"in_sales_conversation": True}),
        ev("crm_update", ts=T0 + HOUR, traits={"lifecycle_stage": "opportunity"}),
        ev("crm_update", ts=T0 + HOUR, traits={"lifecycle_stage": "customer"}),
        ev("crm_update", ts=T0 + HOUR, traits={"lifecycle_stage": "closed_lost"}),
    ],
    ids=["unsubscribed", "sales_conversation", "opportunity", "customer", "closed_lost"],
)
def test_suppression_and_crm_stage_changes_cancel_the_timer(event):
    state, _ = mql_state()
    apply_event(state, event, M)
    assert next_due(state, M) is None and due_triggers(state, M, T0 + 2 * SLA) == []


def test_the_timer_survives_a_round_trip_through_storage_and_replays_give_the_same_id():
    state, _ = mql_state()
    stored = orjson.dumps(state)
    # Restart: the decoded state still carries the timer.
    restored = orjson.loads(stored)
    assert next_due(restored, M) == T0 + SLA
    first = due_triggers(restored, M, T0 + SLA)
    # A crash after the trigger was sent and before the state was written: the tick runs again on
    # the stored state and re-emits the same id (the sinks drop it).
    again = due_triggers(orjson.loads(stored), M, T0 + SLA + 5 * MIN)
    assert [t["trigger_id"] for t in again] == [t["trigger_id"] for t in first] == [breach_id()]
    # Replaying the whole history from scratch recomputes the same timer and the same breach.
    replay, _ = mql_state()
    assert replay["sla"] == state["sla"]
    assert due_triggers(replay, M, T0 + SLA)[0] == first[0]


def test_the_deadline_does_not_move_when_the_model_changes(tmp_path):
    state, _ = mql_state()
    shorter = model_from(tmp_path, DEFAULT_TEXT.replace("sla: 4h", "sla: 30m").replace("seed-2", "seed-3"))
    assert shorter.sla_ms == 30 * MIN
    assert due_triggers(state, shorter, T0 + 30 * MIN) == [] and next_due(state, shorter) == T0 + SLA


def test_short_and_disabled_sla_from_the_model_file(tmp_path):
    short = model_from(tmp_path, DEFAULT_TEXT.replace("sla: 4h", "sla: 2s"))
    state, _ = run([ev("identify", traits=PERFECT)] + [ev(s) for s in HOT_PATH], model=short)
    assert next_due(state, short) == T0 + 2_000
    assert types(due_triggers(state, short, T0 + 2_000)) == ["sla_breach"]
    off = model_from(tmp_path, DEFAULT_TEXT.replace("sla: 4h", "sla: null"))
    state, out = run([ev("identify", traits=PERFECT)] + [ev(s) for s in HOT_PATH], model=off)
    assert "mql" in types(out) and next_due(state, off) is None and due_triggers(state, off, T0 + 99 * SLA) == []


@pytest.mark.parametrize("value,words", [("0s", "sla must be longer than 0"), ("4 hours", "not a duration")])
def test_bad_sla_values_are_located(tmp_path, value, words):
    with pytest.raises(ModelError) as err:
        model_from(tmp_path, DEFAULT_TEXT.replace("sla: 4h", f"sla: {value}"))
    line = next(i for i, text in enumerate(DEFAULT_TEXT.splitlines(), 1) if "sla: 4h" in text)
    assert f"model.yaml:{line}: handoff.sla: " in str(err.value) and words in str(err.value)


def test_diff_names_the_handoff_change(tmp_path):
    other = model_from(tmp_path, DEFAULT_TEXT.replace("sla: 4h", "sla: 2h").replace("seed-2", "seed-3"))
    assert "handoff: sla 4h -> 2h" in diff_models(M, other)


def test_merge_keeps_the_timer_from_either_side_symmetrically():
    known, _ = mql_state(contact="c1")
    anon = new_state("anon-1")
    apply_event(anon, ev("page_view", contact="anon-1", ts=T0 + 1), M)
    a = copy.deepcopy(known)
    merge_state(a, anon, M)
    b = copy.deepcopy(anon)
    b["contact_id"] = "c1"
    merge_state(b, known, M)
    assert a["sla"] == b["sla"] == known["sla"]
    assert a["in_nurture"] is b["in_nurture"] is False  # the exit was already reported once


def test_a_state_stored_before_timers_existed_does_not_report_a_stale_exit():
    state, _ = mql_state()
    del state["sla"], state["in_nurture"]
    out = apply_event(state, ev("page_view", ts=T0 + HOUR), M)
    assert "nurture_exit" not in types(out) and next_due(state, M) is None
    assert due_triggers(state, M, T0 + SLA) == []


@settings(max_examples=150, deadline=None)
@given(
    answer=st.sampled_from([None, "accept", "reject"]),
    answer_at=st.integers(0, 2 * SLA),
    ticks=st.lists(st.integers(0, 3 * SLA), max_size=6),
    tick_first=st.booleans(),
)
def test_breach_iff_no_answer_before_the_deadline_and_never_twice(answer, answer_at, ticks, tick_first):
    state, _ = mql_state()
    fired: list[dict] = []
    answer_event = feedback(answer, T0 + answer_at, "r") if answer else None
    steps = sorted(ticks)
    if answer_event is not None:
        # The answer is applied before or after the ticks that share its time, in event-time order.
        steps_with = [("tick", t) for t in steps] + [("answer", answer_at)]
        steps_with.sort(key=lambda s: (s[1], 0 if (s[0] == "tick") == tick_first else 1))
    else:
        steps_with = [("tick", t) for t in steps]
    for kind, at in steps_with:
        if kind == "tick":
            fired += due_triggers(state, M, T0 + at)
        else:
            fired += [t for t in apply_event(state, answer_event, M) if t["type"] == "sla_breach"]
    fired += due_triggers(state, M, T0 + 10 * SLA)  # a last tick long after
    answered_in_time = answer is not None and answer_at < SLA
    assert len(fired) <= 1
    assert (len(fired) == 1) == (not answered_in_time)
    assert all(t["trigger_id"] == breach_id() for t in fired)


# --- nurture exit -------------------------------------------------------------------------


def test_nurture_exit_follows_the_mql_in_the_same_step_once():
    state, out = mql_state()
    assert types(out)[-2:] == ["mql", "nurture_exit"]
    exit_ = out[-1]
    assert exit_["to"] == "mql" and exit_["reasons"][0]["signal"] == "nurture_exit.mql"
    assert exit_["trigger_id"] == trigger_id("c1", "nurture_exit", 1) and exit_["event_ts"] == T0
    out = apply_event(state, feedback("accept", T0 + HOUR), M)
    assert out == []  # mql -> sql is not another exit


def test_nurture_exit_on_suppression_and_again_after_returning_to_nurture():
    state, out = run([ev("identify", traits={"title": "Student"}), ev("unsubscribe", ts=T0 + 1)])
    assert types(out) == ["suppress", "nurture_exit"]
    assert out[1]["to"] == "suppressed" and out[1]["reasons"][0]["signal"] == "nurture_exit.suppressed.unsubscribed"
    assert out[1]["reasons"][0]["at"] == T0 + 1
    state, out = run([ev("crm_update", traits={"in_sales_conversation": True})])
    assert types(out) == ["suppress", "nurture_exit"]
    out = apply_event(state, ev("crm_update", ts=T0 + HOUR, traits={"in_sales_conversation": False}), M)
    assert types(out) == ["unsuppress"]  # back in nurture: re-armed, nothing to report
    out = apply_event(state, ev("crm_update", ts=T0 + 2 * HOUR, traits={"lifecycle_stage": "opportunity"}), M)
    assert types(out) == ["nurture_exit"] and out[0]["to"] == "sql"
    assert out[0]["trigger_id"] == trigger_id("c1", "nurture_exit", 2)


def test_a_rejected_lead_that_requalifies_exits_nurture_again():
    state, _ = mql_state()
    apply_event(state, feedback("reject", T0 + HOUR, "later"), M)
    assert state["in_nurture"] is True
    apply_event(state, ev("page_view", ts=T0 + 60 * 24 * HOUR), M)
    out = []
    for s in HOT_PATH:
        out += apply_event(state, ev(s, ts=T0 + 60 * 24 * HOUR + 1), M)
    assert types(out).count("nurture_exit") == 1


def test_nurture_exit_can_be_turned_off(tmp_path):
    off = model_from(tmp_path, DEFAULT_TEXT.replace("nurture_exit: true", "nurture_exit: false"))
    _, out = run([ev("identify", traits=PERFECT)] + [ev(s) for s in HOT_PATH] + [ev("unsubscribe", ts=T0 + 1)],
                 model=off)
    assert "nurture_exit" not in types(out) and {"mql", "suppress"} <= set(types(out))


def test_replaying_the_same_history_gives_the_same_exit_and_breach_ids():
    events = [ev("identify", traits=PERFECT)] + [ev(s) for s in HOT_PATH] + [ev("page_view", ts=T0 + SLA)]
    _, first = run(events)
    _, again = run(events)
    assert [t["trigger_id"] for t in first] == [t["trigger_id"] for t in again]
    assert {"nurture_exit", "sla_breach"} <= set(types(first))
