"""Golden results of the scoring engine: the hot path may be rewritten for speed, never its results.

A fixed pseudo-random workload (every event type of the default model, traits, out-of-order and
days-late events, group traits, url-only page views) is folded into contact states; the triggers,
the stored states (as the worker serialises them, orjson), views, merges and timers are hashed and
compared with digests recorded from the reference implementation (the engine before the speed
work of issue 4; states with their keys sorted). Floats are compared bit for bit through their shortest repr, so an
"algebraically equivalent" reformulation that moves the last bit fails here on purpose.

If a change of the model or of the documented semantics moves these digests, re-pin them in the
same commit and say why.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any

import orjson

from rules import default_model
from rules.engine import apply_event, due_triggers, merge_state, new_state, next_due, view

DAY = 86_400_000
START = 1_767_225_600_000

_MIX = [
    ("page_view", 38), ("email_open", 18), ("email_click", 7), ("time_on_site", 7), ("email_delivered", 5),
    ("linkedin_engagement", 4), ("twitter_engagement", 3), ("track", 4), ("identify", 3),
    ("whitepaper_download", 2.5), ("webinar_attended", 1.5), ("demo_request", 1.5), ("email_reply", 2),
    ("crm_update", 1), ("email_bounce", 0.6), ("unsubscribe", 0.4), ("spam_report", 0.1), ("sales_feedback", 0.4),
    ("group", 0.5),
]
_PATHS = ["/", "/pricing", "/features", "/blog/therapy-notes", "/careers", "/docs", "/about", "/jobs/1"]
_TRACK = ["Demo Requested", "Whitepaper Downloaded", "webinar_attended", "Time On Site", "Product Viewed", "Email Replied"]
_TITLES = ["Clinical Psychologist", "Professor of Psychology", "PhD Student", "Therapist", "Office Manager", None]
_INDUSTRIES = ["Higher Education", "Healthcare", "Private Practice", "Software", "Retail"]
_COUNTRIES = ["US", "United Kingdom", "Canada", "Germany", "India", "France"]


def _events(n: int, contacts: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    kinds = [k for k, _ in _MIX]
    weights = [w for _, w in _MIX]
    out = []
    for i, etype in enumerate(rng.choices(kinds, weights=weights, k=n)):
        ts = START + (40 * DAY * i) // n - rng.randrange(0, 600_000)
        if rng.random() < 0.05:
            ts -= rng.randrange(0, 20 * DAY)  # days late: closed cap windows, reads before the reference
        cid = f"c{rng.randrange(contacts)}"
        event: dict[str, Any] = {"id": f"e{i}", "type": etype, "contact_id": cid, "anonymous_id": None, "ts": ts,
                                 "received_at": ts + 50, "source": "golden", "traits": {}, "properties": {}}
        if etype == "page_view":
            path = rng.choice(_PATHS)
            event["properties"] = {"path": path} if rng.random() < 0.8 else {"url": f"https://x.org{path}?q=1"}
        elif etype == "time_on_site":
            event["properties"] = {"seconds": rng.randrange(10, 900)}
        elif etype == "track":
            event["name"] = rng.choice(_TRACK)
        elif etype == "identify":
            event["traits"] = {
                "email": f"{cid}@{rng.choice(['uni.edu', 'gmail.com', 'clinic.org'])}",
                "title": rng.choice(_TITLES),
                "company": {"industry": rng.choice(_INDUSTRIES), "employee_count": rng.choice([5, 40, 300, 4000])},
                "address": {"country": rng.choice(_COUNTRIES)},
            }
        elif etype == "group":
            event["traits"] = {"industry": rng.choice(_INDUSTRIES), "employees": rng.choice(["1,000+", "50-99"])}
        elif etype == "crm_update":
            event["traits"] = {"in_sales_conversation": rng.random() < 0.3,
                               "lifecycle_stage": rng.choice(["lead", "opportunity", "customer", "recycled"])}
        elif etype == "email_bounce":
            event["properties"] = {"bounce_type": rng.choice(["hard", "soft", "soft"])}
        elif etype == "sales_feedback":
            event["properties"] = {"decision": rng.choice(["accept", "reject"]), "reason": "timing"}
        out.append(event)
    return out


def _state_bytes(state: dict[str, Any]) -> bytes:
    """A state as orjson writes it, with its keys sorted: the engine may order a state's keys as it
    likes (readers look fields up by name), its values are what is pinned."""
    return orjson.dumps(state, option=orjson.OPT_SORT_KEYS)


def _run() -> dict[str, str]:
    model = default_model()
    states: dict[str, dict[str, Any]] = {}
    triggers = hashlib.sha256()
    for event in _events(6000, 120, 20261123):
        state = states.setdefault(event["contact_id"], new_state(event["contact_id"]))
        triggers.update(orjson.dumps(apply_event(state, orjson.loads(orjson.dumps(event)), model)))
    reads = hashlib.sha256()
    ordered = [states[k] for k in sorted(states)]
    for state in ordered:
        for t in (state["updated_at"] - DAY, state["updated_at"], state["updated_at"] + 45 * DAY):
            reads.update(orjson.dumps(view(state, model, t)))
        reads.update(orjson.dumps(next_due(state, model)))
        if state["sla"] is not None:
            copy = orjson.loads(orjson.dumps(state))
            reads.update(orjson.dumps(due_triggers(copy, model, copy["sla"]["due"])))
    for a, b in zip(ordered[0::2], ordered[1::2]):
        into, other = orjson.loads(orjson.dumps(a)), orjson.loads(orjson.dumps(b))
        merge_state(into, other, model)
        probe = {"id": "p", "type": "page_view", "contact_id": into["contact_id"], "ts": into["updated_at"] + 1,
                 "traits": {}, "properties": {"path": "/pricing"}}
        reads.update(orjson.dumps(apply_event(into, probe, model)) + _state_bytes(into))
    stored = hashlib.sha256(b"".join(_state_bytes(s) for s in ordered))
    return {"triggers": triggers.hexdigest(), "states": stored.hexdigest(), "reads": reads.hexdigest()}


GOLDEN = {
    "triggers": "462045645fc6c90bb6df31cbb4ea3403d478249b52fe33fcf632aa803c734244",
    "states": "a9b723071f75f184f379f9db5854980479a97ffc6b3c019f1eb20cbc60ee269d",
    "reads": "adc2afb8b9651ff66eb04ab26c417a4e9550b632234d3b2b8325a4c0e228e874",
}


def test_engine_results_are_bit_for_bit_the_reference_ones() -> None:
    assert _run() == GOLDEN


if __name__ == "__main__":  # print the digests (to re-pin after a deliberate change of results)
    print(_run())


def test_summary_is_the_scalar_part_of_view():
    from rules import default_model
    from rules.engine import apply_event, new_state, summary, view

    model = default_model()
    state = new_state("c1")
    t0 = 1_790_000_000_000
    events = [("identify", {"title": "Clinical Psychologist", "company": {"industry": "University", "employee_count": 1200}}),
              ("page_view", {}), ("demo_request", {}), ("email_click", {})]
    for n, (kind, traits) in enumerate(events):
        apply_event(state, {"id": f"e{n}", "type": kind, "contact_id": "c1", "anonymous_id": None, "ts": t0 + n * 1000,
                            "received_at": t0 + n * 1000, "source": "segment", "traits": traits,
                            "properties": {"path": "/pricing"}}, model)
    for at in (t0 + 5_000, t0 + 40 * 86_400_000):  # before and after weeks of decay
        scalars, full = summary(state, model, at), view(state, model, at)
        assert scalars == {key: full[key] for key in scalars}
        assert set(scalars) == {"contact_id", "score", "fit", "behaviour", "band", "state", "suppressed",
                                "rules_version", "updated_at"}
    assert summary(state, model, t0 + 5_000)["score"] > summary(state, model, t0 + 40 * 86_400_000)["score"]
