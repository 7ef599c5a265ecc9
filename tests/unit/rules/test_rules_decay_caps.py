"""Decay math, per-window caps (proportional, order-independent), lateness, bounded state, negative rules."""

from __future__ import annotations

import math

import orjson
import pytest
from _rules_support import DAY, HOUR, PERFECT, T0, ev, run

from rules import default_model
from rules.engine import apply_event, new_state, score_at, view

M = default_model()


def beh(state, t):
    return view(state, M, t)["behaviour"]


@pytest.mark.parametrize("days,factor", [(0, 1.0), (30, 0.5), (60, 0.25), (15, 2 ** -0.5), (300, 2 ** -10)])
def test_demo_request_halves_every_30_days(days, factor):
    state, _ = run([ev("demo_request")])
    assert score_at(state, M, T0 + days * DAY) == pytest.approx(25 * 0.6 * factor, rel=1e-12)


def test_web_and_email_half_life_is_14_days():
    state, _ = run([ev("email_click")])
    assert score_at(state, M, T0 + 14 * DAY) == pytest.approx(8 * 0.6 / 2, rel=1e-12)


def test_decay_is_exact_across_later_events():
    # Two demo requests 30 days apart read 30 days after the second: 25/4 + 25/2.
    state, _ = run([ev("demo_request", ts=T0), ev("demo_request", ts=T0 + 30 * DAY)])
    assert score_at(state, M, T0 + 60 * DAY) == pytest.approx((25 / 4 + 25 / 2) * 0.6, rel=1e-12)


def test_reading_before_the_last_event_never_grows():
    state, _ = run([ev("demo_request", ts=T0 + 10 * DAY)])
    assert score_at(state, M, T0) == pytest.approx(15.0)


def test_far_future_timestamps_do_not_overflow():
    far = 4_000_000_000_000  # year 2096
    state, _ = run([ev("page_view", ts=1_000), ev("page_view", ts=far)])
    value = score_at(state, M, far)
    assert math.isfinite(value) and value == pytest.approx(3.0)
    assert orjson.loads(orjson.dumps(state)) == state


def test_page_views_capped_at_30_points_per_7_day_window():
    state, _ = run([ev("page_view", ts=T0 + i * HOUR) for i in range(10)])  # 50 raw in one window
    assert state["b"]["page_view"][4][0][1] == 50  # raw total kept for exact proportional capping
    # read at the last event: the 10 events decayed a little, each counting 30/50 of its points
    expected = sum(5 * 0.6 * (30 / 50) * 2 ** (-(9 - i) * HOUR / (14 * DAY)) for i in range(10))
    assert score_at(state, M, T0 + 9 * HOUR) == pytest.approx(expected, rel=1e-12)


def test_cap_applies_per_window_not_across_windows():
    # T0 starts a 7d epoch-aligned window: 7 views in each of two consecutive windows.
    first = [ev("page_view", ts=T0 + i) for i in range(7)]
    second = [ev("page_view", ts=T0 + 7 * DAY + i) for i in range(7)]
    state, _ = run(first + second)
    t = T0 + 7 * DAY + 10
    expected = 30 * 0.5 ** ((7 * DAY) / (14 * DAY)) + 30
    assert score_at(state, M, t) == pytest.approx(expected * 0.6, rel=1e-6)


def test_capped_score_is_the_same_in_reverse_order():
    events = [ev("email_open", ts=T0 + i * 3 * HOUR) for i in range(9)]
    a, _ = run(events)
    b, _ = run(list(reversed(events)))
    t = T0 + 2 * DAY
    assert score_at(a, M, t) == pytest.approx(score_at(b, M, t), abs=1e-9)


def test_event_later_than_allowed_lateness_into_a_closed_window_counts_zero():
    state, _ = run([ev("page_view", ts=T0 + 30 * DAY), ev("page_view", ts=T0)])
    entry = state["b"]["page_view"]
    assert entry[5] == 1  # counted as too late
    assert score_at(state, M, T0 + 30 * DAY) == pytest.approx(3.0)


def test_state_stays_bounded_over_a_year_of_daily_activity():
    model = M
    state = new_state("c1")
    for day in range(365):
        for signal in ("page_view", "email_open", "demo_request"):
            apply_event(state, ev(signal, ts=T0 + day * DAY), model)
    for rid in ("page_view", "email_open", "demo_request"):
        assert len(state["b"][rid][4]) <= 3
    assert len(orjson.dumps(state)) < 3000


def test_uncapped_rule_has_no_windows():
    state, _ = run([ev("unsubscribe")])
    assert state["b"]["unsubscribe"][4] is None


@pytest.mark.parametrize(
    "event,raw",
    [
        (ev("unsubscribe"), -20),
        (ev("email_bounce", properties={"bounce_type": "hard"}), -10),
        (ev("email_bounce", properties={"bounce_type": "soft"}), 0),
        (ev("spam_report"), -30),
        (ev("page_view", properties={"path": "/careers/open-roles"}), 5 - 10),
        (ev("page_view", properties={"url": "https://example.com/jobs?x=1"}), 5 - 10),
        (ev("page_view", properties={"path": "/pricing"}), 5),
    ],
)
def test_negative_rules(event, raw):
    state, _ = run([ev("identify", traits=PERFECT), event])
    assert score_at(state, M, T0) == pytest.approx(40 + raw * 0.6)


def test_opt_out_penalties_do_not_decay():
    state, _ = run([ev("identify", traits=PERFECT), ev("unsubscribe")])
    assert score_at(state, M, T0 + 365 * DAY) == pytest.approx(40 - 12)


@pytest.mark.parametrize("email,raw", [("jane@gmail.com", -5), ("Jane@Hotmail.COM", -5), ("jane@uni.edu", 0)])
def test_free_mail_domain_penalty(email, raw):
    state, _ = run([ev("identify", traits=dict(PERFECT, email=email))])
    assert score_at(state, M, T0) == pytest.approx(40 + raw * 0.6)


def test_behaviour_below_zero_pulls_the_score_down_but_not_below_zero():
    state, _ = run([ev("spam_report"), ev("unsubscribe")])
    v = view(state, M, T0)
    assert v["behaviour"] == -30.0 and v["score"] == 0.0 and v["band"] == "cold"
