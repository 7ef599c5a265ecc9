"""Helpers of the engine's fast paths give exactly what the straightforward computation gives.

* ``top_reasons`` / ``contributions`` rank tuples (``_ranked``) instead of sorting row dicts with a
  key function: same rows, same order (ties broken as the stable sort of the documented key did).
* ``_flat`` skips ``normalize.flatten`` for an already flat trait dict.
* The quiet-step bound in ``apply_event`` only skips work that decides nothing: with the bound
  disabled (``quiet_below = -inf`` makes every step exact) the states and triggers are bit-for-bit
  the same.
* ``_thresholds_stay`` (a disarmed contact's step that moves no threshold skips ``_decide``) says
  yes only when ``_decide`` would fire nothing and re-arm nothing.
"""

from __future__ import annotations

import copy
import math

import orjson
from _rules_support import DAY, HOUR, PERFECT, T0, ev
from hypothesis import given, settings
from hypothesis import strategies as st

from rules import default_model, normalize
from rules.engine import _decide, _flat, _term, _thresholds_stay, apply_event, contributions, new_state, top_reasons

M = default_model()
EXACT = copy.copy(M)
EXACT.quiet_below = -math.inf  # no step is quiet: every step takes the exact path

KINDS = ["page_view", "careers", "time_on_site", "demo_request", "whitepaper_download", "webinar_attended",
         "email_open", "email_click", "email_reply", "linkedin_engagement", "unsubscribe", "hard_bounce",
         "identify", "perfect", "crm", "accept", "reject"]


@st.composite
def events(draw, span_ms: int = 20 * DAY):
    out = []
    for _ in range(draw(st.integers(1, 40))):
        ts = T0 + draw(st.integers(0, span_ms))
        kind = draw(st.sampled_from(KINDS))
        if kind == "careers":
            out.append(ev("page_view", ts=ts, properties={"path": "/careers"}))
        elif kind == "hard_bounce":
            out.append(ev("email_bounce", ts=ts, properties={"bounce_type": "hard"}))
        elif kind == "identify":
            out.append(ev("identify", ts=ts, traits={"title": draw(st.sampled_from(["Psychologist", "Student", "CEO"])),
                                                      "email": draw(st.sampled_from(["a@gmail.com", "a@uni.edu"]))}))
        elif kind == "perfect":
            out.append(ev("identify", ts=ts, traits=PERFECT))
        elif kind == "crm":
            out.append(ev("crm_update", ts=ts, traits={"in_sales_conversation": draw(st.booleans()),
                                                        "lifecycle_stage": draw(st.sampled_from(["lead", "customer"]))}))
        elif kind in ("accept", "reject"):
            out.append(ev("sales_feedback", ts=ts, properties={"decision": kind, "reason": "timing"}))
        else:
            out.append(ev(kind, ts=ts))
    return sorted(out, key=lambda e: e["ts"]) if draw(st.booleans()) else out


def _run(evs, model):
    state = new_state("c1")
    fired = [apply_event(state, e, model) for e in evs]
    return orjson.dumps(state), orjson.dumps(fired)


@settings(max_examples=300, deadline=None)
@given(evs=events())
def test_quiet_steps_give_the_results_of_exact_steps(evs):
    assert _run(evs, M) == _run(evs, EXACT)


def _reference_contributions(state, model, now_ms):
    """The documented ranking: every non-zero contribution as a row, stable-sorted by (-points, -at, signal)."""
    rows = []
    for category, (label, points, path) in state["fit_detail"].items():
        rows.append({"signal": f"fit.{category}={label}", "points": round(points * model.fit_scale, 2),
                     "at": state["trait_ts"].get(path, 0)})
    for pid, points in state["penalty_detail"].items():
        fields = next(f for p, f, _, _ in model.penalties if p == pid)
        rows.append({"signal": pid, "points": round(points * model.beh_scale, 2),
                     "at": max((state["trait_ts"].get(f, 0) for f in fields), default=0)})
    for rid, entry in state["b"].items():
        value = _term(entry, model.rule_k[rid], now_ms) * model.beh_scale
        if abs(value) >= 0.005:
            rows.append({"signal": rid, "points": round(value, 2), "at": entry[0]})
    rows.sort(key=lambda r: (-r["points"], -r["at"], r["signal"]))
    return rows


@settings(max_examples=150, deadline=None)
@given(evs=events(), later=st.integers(0, 30 * DAY), n=st.integers(0, 12))
def test_top_reasons_are_the_first_rows_of_the_documented_ranking(evs, later, n):
    state = new_state("c1")
    for e in evs:
        apply_event(state, e, M)
    now = max(e["ts"] for e in evs) + later
    reference = _reference_contributions(state, M, now)
    assert orjson.dumps(contributions(state, M, now)) == orjson.dumps(reference)
    assert orjson.dumps(top_reasons(state, M, now, n)) == orjson.dumps(reference[:n])


def test_full_ties_keep_the_order_rows_are_produced_in():
    # Two rules with the same points at the same time: the signal decides; equal rows keep their order.
    state = new_state("c1")
    apply_event(state, ev("email_open", ts=T0), M)
    apply_event(state, ev("twitter_engagement", ts=T0), M)  # also 3 points
    assert [r["signal"] for r in top_reasons(state, M, T0 + HOUR, 5)] == ["email_open", "twitter_engagement"]


leaves = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=5), st.just({}), st.lists(st.integers()))
traits = st.recursive(
    st.dictionaries(st.text(max_size=4), leaves, max_size=4),
    lambda inner: st.dictionaries(st.text(max_size=4), st.one_of(leaves, inner), max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(t=traits)
def test_flat_is_flatten(t):
    flat = _flat(t)
    assert list(flat.items()) == list(normalize.flatten(t).items())
    if all(not (isinstance(v, dict) and v) for v in t.values()):
        assert flat is t


# --- _thresholds_stay: the shortcut for a disarmed contact's step that decides nothing ----------

# Mostly the edges the 0.01 margins guard: each level and re-arm level, give or take two rounding steps.
near = st.one_of(
    st.floats(0.0, 100.0),
    st.tuples(st.sampled_from([80.0, 70.0, 51.0, 41.0]), st.integers(-200, 200)).map(lambda p: p[0] + p[1] * 1e-4),
    st.tuples(st.sampled_from([80.0, 70.0, 51.0, 41.0]), st.floats(-0.02, 0.02)).map(lambda p: p[0] + p[1]),
)


def _decide_leaves_thresholds(disarmed_types, total, prev_fit, prev_decayed, prev_penalty):
    """What _decide (the reference) does to the thresholds of a plain step: fired triggers and the disarmed map."""
    state = new_state("c1")
    state["disarmed"] = {t: T0 for t in disarmed_types}
    state["lead_state"] = "mql" if "mql" in disarmed_types else "nurture"
    before = dict(state["disarmed"])
    decisions = []
    _decide(state, M, "page_view", {}, T0 + DAY, round(total, 2), total, {}, None, None, state["disarmed"],
            prev_fit, prev_decayed, prev_penalty, None, decisions)
    return decisions == [] and state["disarmed"] == before


@settings(max_examples=1500, deadline=None)
@given(
    disarmed_types=st.sets(st.sampled_from(["mql", "hot_lead"]), min_size=1),
    total=near,
    prev_total=near,
    prev_fit=st.floats(0.0, 80.0),
)
def test_thresholds_stay_only_when_decide_changes_nothing(disarmed_types, total, prev_total, prev_fit):
    # Previous score = prev_fit on the fit scale (clipped at fit_max) + behaviour making up prev_total.
    fit_part = min(M.fit_max, prev_fit * M.fit_scale)
    prev_decayed = (prev_total - fit_part) / M.beh_scale
    disarmed = {t: T0 for t in disarmed_types}
    if _thresholds_stay(M, disarmed, total, prev_fit, prev_decayed, 0.0):
        assert _decide_leaves_thresholds(disarmed_types, total, prev_fit, prev_decayed, 0.0)


def test_thresholds_stay_answers_both_ways():
    both = {"mql": T0, "hot_lead": T0}
    mid_fit, mid_beh = 60.0, 50.0  # 30 + 30 = 60 on the 0-100 scale
    assert _thresholds_stay(M, both, 75.0, 80.0, 80.0, 0.0)  # 40 + 48 = 88 before, 75 now: both stay disarmed
    assert not _thresholds_stay(M, both, 69.995, 80.0, 80.0, 0.0)  # within the margin of re-arming mql: _decide decides
    assert not _thresholds_stay(M, {"hot_lead": T0}, 79.995, 80.0, 80.0, 0.0)  # mql is armed and may fire
    assert _thresholds_stay(M, {"hot_lead": T0}, 60.0, mid_fit, mid_beh, 0.0)
    assert not _thresholds_stay(M, {"hot_lead": T0}, 60.0, 0.0, 10.0, 0.0)  # previous 6: hot_lead re-arms
