"""Engine basics: interface shape, seed weights on the 0-100 scale, triggers and their ids."""

from __future__ import annotations

import orjson
import pytest
from _rules_support import PERFECT, T0, ev, run, types

from rules import CompiledModel, default_model
from rules.engine import apply_event, new_state, top_reasons, view


def test_default_model_compiles_with_a_version():
    model = default_model()
    assert isinstance(model, CompiledModel)
    assert model.version == "2026.11-seed-2"


def test_state_round_trips_through_orjson():
    state, _ = run([ev("identify", traits=PERFECT), ev("page_view"), ev("demo_request"), ev("unsubscribe")])
    assert orjson.loads(orjson.dumps(state)) == state


def test_perfect_profile_is_fit_40():
    state, _ = run([ev("identify", traits=PERFECT)])
    v = view(state, default_model(), T0)
    assert v["fit"] == 40.0 and v["behaviour"] == 0.0 and v["score"] == 40.0
    assert v["band"] == "warm"


@pytest.mark.parametrize(
    "etype,raw",
    [
        ("page_view", 5), ("time_on_site", 10), ("demo_request", 25), ("whitepaper_download", 15),
        ("webinar_attended", 20), ("email_open", 3), ("email_click", 8), ("email_reply", 15),
        ("linkedin_engagement", 5), ("twitter_engagement", 3),
    ],
)
def test_behaviour_seed_weights(etype, raw):
    state, _ = run([ev(etype)])
    v = view(state, default_model(), T0)
    assert v["behaviour"] == pytest.approx(raw * 0.6)
    assert v["score"] == pytest.approx(raw * 0.6)


def test_mql_and_hot_lead_fire_once_with_deterministic_ids():
    events = [ev("identify", traits=PERFECT), ev("demo_request"), ev("webinar_attended"), ev("whitepaper_download"),
              ev("email_reply")]
    state, triggers = run(events)
    assert types(triggers) == ["hot_lead", "route_to_sales", "mql", "nurture_exit"]
    mql = triggers[2]
    assert mql["score"] == 85.0 and mql["previous_score"] == 76.0 and mql["band"] == "sql"
    assert mql["rules_version"] == default_model().version and mql["event_ts"] == T0
    assert len(mql["trigger_id"]) == 24 and len(mql["reasons"]) == 3
    assert view(state, default_model(), T0)["state"] == "mql" and state["mql_at"] == T0
    _, again = run(events)
    assert [t["trigger_id"] for t in again] == [t["trigger_id"] for t in triggers]
    _, other = run([dict(e, contact_id="c2") for e in events], contact="c2")
    assert {t["trigger_id"] for t in other}.isdisjoint(t["trigger_id"] for t in triggers)


def test_top_reasons_largest_first():
    state, _ = run([ev("identify", traits=PERFECT), ev("page_view"), ev("demo_request")])
    reasons = top_reasons(state, default_model(), T0, n=3)
    assert [r["signal"] for r in reasons] == ["demo_request", "fit.organisation=University", "fit.size=1000+"]
    assert reasons[0] == {"signal": "demo_request", "points": 15.0, "at": T0}


def test_apply_event_tolerates_missing_traits_and_properties():
    state = new_state("c1")
    event = {"id": "x", "type": "page_view", "contact_id": "c1", "anonymous_id": None, "ts": T0,
             "received_at": T0, "source": "t"}
    assert apply_event(state, event, default_model()) == []
    assert view(state, default_model(), T0)["score"] == 3.0
