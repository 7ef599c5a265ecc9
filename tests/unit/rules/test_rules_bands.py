"""Band edges 25/26, 50/51, 75/76 and the MQL edge 79/80 on the default model."""

from __future__ import annotations

import pytest
from _rules_support import T0, ev, run, types

from rules import default_model
from rules.engine import view

def profile(title=None, org=None, size=None, country=None) -> dict:
    traits: dict = {"company": {}}
    if title:
        traits["title"] = title
    if org:
        traits["company"]["industry"] = org
    if size is not None:
        traits["company"]["employee_count"] = size
    if country:
        traits["address"] = {"country": country}
    return traits


CASES = [
    # (fit traits, behaviour events, expected score, band)
    (profile(org="University", country="US", size=10), [], 25.0, "cold"),  # 25+15+10 = 50 raw -> 25
    (profile(title="Psychologist", size=10, country="Germany"), ["page_view"] * 2, 26.0, "warm"),  # 20 + 6
    (profile("Psychologist", "University", 10, "US"), ["demo_request"], 50.0, "warm"),  # 35 + 15
    (profile("Psychologist", "University", 200), ["demo_request", "time_on_site"], 51.0, "hot"),  # 30 + 21
    (profile("Psychologist", "University", 200), ["demo_request"] * 2 + ["webinar_attended", "page_view"], 75.0, "hot"),
    (profile("Psychologist", "University", 5000, "US"), ["demo_request", "webinar_attended", "whitepaper_download"],
     76.0, "sql"),  # 40 + 36
    (profile("Psychologist", "University", 5000, "US"),
     ["demo_request", "webinar_attended", "whitepaper_download", "page_view"], 79.0, "sql"),  # 40 + 39
    (profile("Psychologist", "University", 10, "US"),
     ["demo_request", "demo_request", "webinar_attended", "page_view"], 80.0, "sql"),  # 35 + 45
]


@pytest.mark.parametrize("traits,signals,score,band", CASES)
def test_band_edges(traits, signals, score, band):
    events = [ev("identify", traits=traits)] + [ev(s) for s in signals]
    state, triggers = run(events)
    v = view(state, default_model(), T0)
    assert v["score"] == score
    assert v["band"] == band
    assert ("mql" in types(triggers)) == (score >= 80)
    assert ("hot_lead" in types(triggers)) == (score >= 51)
    assert v["state"] == ("mql" if score >= 80 else "nurture")


def test_score_is_clipped_to_100_and_behaviour_to_60():
    events = [ev("identify", traits=profile("Psychologist", "University", 5000, "US"))]
    events += [ev(s, ts=T0 + i) for i, s in enumerate(["demo_request", "webinar_attended", "whitepaper_download",
                                                         "email_reply", "time_on_site", "page_view"] * 3)]
    state, _ = run(events)
    v = view(state, default_model(), T0 + 100)
    assert v["behaviour"] == 60.0 and v["score"] == 100.0
