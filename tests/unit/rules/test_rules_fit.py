"""Fit rules: every seed weight, normalisation and synonyms, trait spellings, one match per category."""

from __future__ import annotations

import pytest
from _rules_support import DAY, T0, ev, run

from rules import default_model
from rules.engine import view


def fit_of(traits: dict, etype: str = "identify") -> tuple[float, dict]:
    state, _ = run([ev(etype, traits=traits)])
    return view(state, default_model(), T0)["fit"], state["fit_detail"]


@pytest.mark.parametrize(
    "title,raw",
    [
        ("Psychologist", 20), ("Clinical Psychologist", 20), ("psychologist", 20), ("Professor", 15),
        ("Prof.", 15), ("professor of psychology", 15), ("Associate Professor", 15), ("Student", 10),
        ("PhD Student", 10), ("Marketing Manager", 0), ("", 0),
    ],
)
def test_title_weights_and_synonyms(title, raw):
    fit, _ = fit_of({"title": title})
    assert fit == pytest.approx(raw / 2)


@pytest.mark.parametrize(
    "traits,raw",
    [
        ({"company": {"industry": "University"}}, 25),
        ({"company.industry": "Higher Education"}, 25),
        ({"industry": "healthcare"}, 20),
        ({"company": {"industry": "Hospital & Health Care"}}, 20),
        ({"company": {"industry": "Private Practice"}}, 15),
        ({"company": {"industry": "Retail"}}, 0),
    ],
)
def test_organisation_weights_and_trait_spellings(traits, raw):
    fit, _ = fit_of(traits)
    assert fit == pytest.approx(raw / 2)


@pytest.mark.parametrize(
    "count,raw",
    [(5000, 20), (1000, 20), ("1,000+", 20), (999, 15), (100, 15), ("100-999", 15), (99, 10), (1, 10), (0, 0),
     ("unknown", 0)],
)
def test_size_buckets(count, raw):
    fit, _ = fit_of({"company": {"employee_count": count}})
    assert fit == pytest.approx(raw / 2)


@pytest.mark.parametrize(
    "country,raw",
    [("US", 15), ("United States", 15), ("ca", 15), ("United Kingdom", 15), ("UK", 15), ("Germany", 10),
     ("NL", 10), ("Australia", 10), ("India", 0), ("BR", 0)],
)
def test_geography_target_and_secondary(country, raw):
    fit, _ = fit_of({"address": {"country": country}})
    assert fit == pytest.approx(raw / 2)


def test_perfect_profile_raw_80_is_40_and_one_match_per_category():
    fit, detail = fit_of(
        {"title": "Professor and Clinical Psychologist", "company": {"industry": "University hospital",
         "employee_count": 20000}, "address": {"country": "US"}}
    )
    assert fit == 40.0
    # Highest option first: Psychologist beats Professor, University beats Healthcare.
    assert detail["title"][0] == "Psychologist" and detail["organisation"][0] == "University"


def test_group_traits_are_company_traits():
    fit, detail = fit_of({"industry": "Healthcare", "employees": 250}, etype="group")
    assert fit == pytest.approx((20 + 15) / 2)
    assert detail["organisation"][2] == "company.industry"


def test_crm_update_traits_also_feed_fit():
    fit, _ = fit_of({"title": "Student"}, etype="crm_update")
    assert fit == 5.0


def test_fit_does_not_decay():
    state, _ = run([ev("identify", traits={"title": "Psychologist"})])
    assert view(state, default_model(), T0 + 400 * DAY)["fit"] == 10.0


def test_latest_trait_by_event_time_wins_in_any_order():
    old = ev("identify", ts=T0, traits={"title": "Student"})
    new = ev("identify", ts=T0 + DAY, traits={"title": "Psychologist"})
    a, _ = run([old, new])
    b, _ = run([new, old])
    assert a["traits"] == b["traits"] == {"title": "Psychologist"}
    assert a["fit"] == b["fit"] == 20
