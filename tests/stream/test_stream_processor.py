"""The stream layer without a broker: dedupe, replay, order, holds, identity, bots, DLQ."""

from __future__ import annotations

import random

import pytest
from stream_harness import FIT, T0, Harness, event

from rules.engine import view
from streams.processor import StreamLimits
from streams.state import read_record

SECOND = 1000


def journey(contact: str = "c1", anon: str | None = None, start: int = T0) -> list[dict]:
    return [
        event(f"{contact}-id", "identify", start, contact, anon, traits=FIT),
        event(f"{contact}-p1", "page_view", start + 1 * SECOND, contact, properties={"path": "/pricing"}),
        event(f"{contact}-w", "track", start + 2 * SECOND, contact, name="Webinar Attended"),
        event(f"{contact}-wp", "track", start + 3 * SECOND, contact, name="Whitepaper Downloaded"),
        event(f"{contact}-ck", "track", start + 3 * SECOND + 200, contact, name="Email Link Clicked"),
        event(f"{contact}-d", "track", start + 4 * SECOND, contact, name="Demo Requested"),
    ]


def score(h: Harness, key: str, at: int) -> float:
    return view(h.state(key), h.processor.model, at)["score"]


def test_scores_and_triggers_from_envelopes_and_single_records():
    a, b = Harness(), Harness()
    a.produce(journey(), envelope=True)
    b.produce(journey(), envelope=False)
    a.run(T0 + 10 * SECOND)
    b.run(T0 + 10 * SECOND)
    assert score(a, "c1", T0 + 10 * SECOND) == score(b, "c1", T0 + 10 * SECOND) >= 80
    assert {t["type"] for t in a.triggers} >= {"hot_lead", "mql", "route_to_sales"}
    assert [t["trigger_id"] for t in a.triggers] == [t["trigger_id"] for t in b.triggers]


def test_duplicate_ids_count_once_within_and_across_batches():
    h = Harness()
    events = journey()
    h.produce(events + [dict(events[2])])  # same id twice in one envelope
    h.run(T0 + 10 * SECOND)
    h.produce([dict(events[3]), dict(events[3])])  # retried in a later request
    h.run(T0 + 11 * SECOND)
    once = Harness()
    once.produce(journey())
    once.run(T0 + 10 * SECOND)
    assert score(h, "c1", T0 + 20 * SECOND) == score(once, "c1", T0 + 20 * SECOND)
    assert sum(o.duplicates["segment"] for o in h.outcomes) == 3
    assert len(h.triggers) == len(once.triggers)


def test_replay_after_crash_applies_nothing_twice_and_repeats_trigger_ids():
    h = Harness()
    h.produce(journey())
    h.run(T0 + 10 * SECOND)
    before = score(h, "c1", T0 + 20 * SECOND)
    first_ids = [t["trigger_id"] for t in h.triggers]
    # The changelog had the state but the offsets were not committed: everything comes again.
    h.replay_from([0] * h.partitions)
    h.run(T0 + 12 * SECOND)
    assert score(h, "c1", T0 + 20 * SECOND) == before
    assert [t["trigger_id"] for t in h.triggers] == first_ids  # nothing new emitted


def test_lost_changelog_recomputes_the_same_trigger_ids():
    h = Harness()
    h.produce(journey())
    h.run(T0 + 10 * SECOND)
    ids = [t["trigger_id"] for t in h.triggers]
    again = Harness()  # crash before the changelog write: state gone, records replayed
    again.produce(journey())
    again.run(T0 + 10 * SECOND)
    assert [t["trigger_id"] for t in again.triggers] == ids


def test_the_stored_position_is_the_batch_high_mark_whatever_the_event_time_order():
    h = Harness(partitions=1)
    late, early = event("e-late", "page_view", T0 + 5 * SECOND), event("e-early", "page_view", T0)
    h.produce([late], envelope=False)
    h.produce([early], envelope=False)  # offset 1 holds the earlier event: applied first
    h.run(T0 + 10 * SECOND)
    assert read_record(h.table["c1"], "c1")["pos"] == [1, 0]
    h.replay_from([0])  # both records again: both at or before the stored position
    h.run(T0 + 10 * SECOND)
    assert sum(out.applied for out in h.outcomes) == 2 and h.outcomes[-2].duplicates["segment"] == 2


def _records_written(h: Harness, key: str) -> int:
    return sum(key in writes for out in h.outcomes for writes in out.writes.values())


def test_a_contact_touched_by_many_batches_is_written_once_per_checkpoint():
    h = Harness()
    h.checkpoints = False
    for ev in journey():
        h.produce([ev])
        h.run(T0 + 10 * SECOND, batch=1)
    assert len(h.outcomes) == 6 and _records_written(h, "c1") == 0 and "c1" not in h.table
    h.checkpoint(T0 + 10 * SECOND)
    assert _records_written(h, "c1") == 1
    assert score(h, "c1", T0 + 10 * SECOND) >= 80
    assert not h.processor.dirty
    h.checkpoint(T0 + 11 * SECOND)  # nothing dirty: nothing written
    assert _records_written(h, "c1") == 1


def test_a_rolling_checkpoint_writes_only_contacts_dirty_for_the_whole_interval():
    h = Harness(partitions=1)
    h.checkpoints = False
    h.produce(journey("c1"))
    h.run(T0 + 10 * SECOND)  # c1 dirty since T0 + 10 s
    h.produce(journey("c2"))
    h.run(T0 + 10 * SECOND + 600)  # c2 since 600 ms later
    h.produce([event("c1-again", "page_view", T0 + 5 * SECOND, "c1", properties={"path": "/pricing"})])
    h.run(T0 + 10 * SECOND + 900)  # touching c1 again does not make it younger
    h.checkpoint(T0 + 11 * SECOND, dirty_since=T0 + 10 * SECOND + 100)
    assert _records_written(h, "c1") == 1 and _records_written(h, "c2") == 0
    assert "c1" in h.outcomes[-1].views and "c2" not in h.outcomes[-1].views
    assert read_record(h.table["c1"], "c1")["pos"] == [2, 0]  # its newest event is in the record
    h.produce([event("c1-later", "page_view", T0 + 6 * SECOND, "c1", properties={"path": "/pricing"})])
    h.run(T0 + 11 * SECOND + 100)  # c1 dirty again, from now on
    h.checkpoint(T0 + 11 * SECOND + 200, dirty_since=T0 + 10 * SECOND + 700)
    assert _records_written(h, "c1") == 1 and _records_written(h, "c2") == 1
    h.checkpoint(T0 + 11 * SECOND + 300)  # full: the rest
    assert _records_written(h, "c1") == 2 and not h.processor.dirty and not h.processor.dirty_since


def test_crash_before_the_checkpoint_replays_onto_the_last_one_with_the_same_result():
    whole = Harness()
    whole.produce(journey(), envelope=False)
    whole.run(T0 + 10 * SECOND, batch=1)
    h = Harness()
    h.checkpoints = False
    h.produce(journey(), envelope=False)  # one record per event
    h.run(T0 + 10 * SECOND, batch=1, rounds=2)  # identify, page view
    h.checkpoint(T0 + 10 * SECOND)
    committed = list(h.read)  # faust commits only what the checkpoint covers
    h.run(T0 + 10 * SECOND, batch=1)  # the rest: scored, triggers sent, never checkpointed
    sent_before_crash = [t["trigger_id"] for t in h.triggers]
    h.replay_from(committed)
    h.run(T0 + 10 * SECOND, batch=1)
    h.checkpoint(T0 + 10 * SECOND)
    assert score(h, "c1", T0 + 20 * SECOND) == score(whole, "c1", T0 + 20 * SECOND)
    # The replay fired the same triggers again, with the same ids: the sinks drop the repeats.
    replayed = [t["trigger_id"] for t in h.triggers[len(sent_before_crash):]]
    assert replayed == sent_before_crash[-len(replayed):] and replayed
    assert {t["trigger_id"] for t in h.triggers} == {t["trigger_id"] for t in whole.triggers}


def test_a_dirty_record_evicted_from_the_cache_is_not_reloaded_stale():
    h = Harness(partitions=1)
    h.checkpoints = False
    h.processor.cache_size = 2
    h.produce([event("a-1", "page_view", T0, "a", properties={"path": "/pricing"})])
    h.run(T0 + SECOND)
    # Two other contacts push "a" out of the cache before any checkpoint.
    h.produce([event("b-1", "page_view", T0, "b"), event("c-1", "page_view", T0, "c")])
    h.run(T0 + SECOND)
    assert "a" not in h.processor.cache and "a" not in h.table
    h.produce([event("a-2", "page_view", T0 + 1, "a", properties={"path": "/pricing"}),
               event("a-1", "page_view", T0, "a", properties={"path": "/pricing"})])  # a-1 again: a duplicate
    h.run(T0 + SECOND)
    h.checkpoint(T0 + SECOND)
    assert h.outcomes[-2].duplicates["segment"] + h.outcomes[-2].duplicates["unknown"] == 1
    assert read_record(h.table["a"], "a")["s"]["b"]["page_view"][3] == 2  # both page views counted once


def test_a_trigger_goes_out_with_the_view_of_its_contact_before_the_checkpoint():
    h = Harness()
    h.checkpoints = False
    h.produce(journey())
    h.run(T0 + 10 * SECOND)
    fired = [out for out in h.outcomes if out.triggers]
    assert fired and not any(out.writes for out in h.outcomes)
    for out in fired:
        assert {t["contact_id"] for t in out.triggers} <= set(out.views) <= set(out.docs)


@pytest.mark.parametrize("seed", range(5))
def test_shuffled_arrival_gives_the_same_score_and_trigger_ids(seed):
    ordered, shuffled = Harness(), Harness()
    events = journey() + journey("c2", start=T0 + 500)
    ordered.produce(events)
    mixed = list(events)
    random.Random(seed).shuffle(mixed)
    for ev in mixed:  # one record per request, in shuffled arrival order
        shuffled.produce([ev])
    ordered.run(T0 + 30 * SECOND)
    shuffled.run(T0 + 30 * SECOND, batch=1)
    for key in ("c1", "c2"):
        assert score(shuffled, key, T0 + 60 * SECOND) == pytest.approx(score(ordered, key, T0 + 60 * SECOND), abs=1e-6)
    assert {t["trigger_id"] for t in shuffled.triggers if t["type"] == "mql"} == {
        t["trigger_id"] for t in ordered.triggers if t["type"] == "mql"}


def test_mql_waits_for_the_watermark_and_a_late_unsubscribe_vetoes_it():
    limits = StreamLimits(lateness_ms=10 * SECOND)
    h = Harness(limits=limits)
    events = journey()
    h.produce(events)
    h.run(T0 + 5 * SECOND)
    assert "hot_lead" in {t["type"] for t in h.triggers}  # alerts go out at once
    assert "mql" not in {t["type"] for t in h.triggers}  # handoff waits for the watermark
    # The unsubscribe happened before the demo request but arrives late.
    h.produce([event("unsub", "unsubscribe", T0 + 3 * SECOND + 500)])
    h.run(T0 + 6 * SECOND)
    h.tick(T0 + 30 * SECOND)
    types = [t["type"] for t in h.triggers]
    assert "suppress" in types and "mql" not in types and "route_to_sales" not in types
    assert sum(o.vetoed for o in h.outcomes) >= 1


def test_held_mql_is_released_by_the_idle_tick_and_survives_a_restart():
    limits = StreamLimits(lateness_ms=10 * SECOND)
    h = Harness(limits=limits)
    h.produce(journey())
    h.run(T0 + 5 * SECOND)
    assert "mql" not in {t["type"] for t in h.triggers}
    # A new worker takes over: only the table survives.
    restarted = Harness(limits=limits)
    restarted.table.update(h.table)
    restarted.tick(T0 + 8 * SECOND)
    assert not restarted.triggers  # not yet due
    restarted.tick(T0 + 16 * SECOND)
    assert {t["type"] for t in restarted.triggers} == {"mql", "route_to_sales"}
    restarted.tick(T0 + 17 * SECOND)
    assert len(restarted.triggers) == 2  # released once


def test_unsubscribe_after_the_mql_does_not_veto_it():
    h = Harness(limits=StreamLimits(lateness_ms=10 * SECOND))
    h.produce(journey() + [event("unsub", "unsubscribe", T0 + 8 * SECOND)])
    h.run(T0 + 9 * SECOND)
    h.tick(T0 + 30 * SECOND)
    assert {"mql", "suppress"} <= {t["type"] for t in h.triggers}


def test_anonymous_history_moves_to_the_contact_with_concurrent_page_views():
    h = Harness(partitions=4)
    anon_views = [event(f"a{i}", "page_view", T0 + i * SECOND, None, "visitor-1", properties={"path": "/pricing"})
                  for i in range(4)]
    h.produce(anon_views)
    h.run(T0 + 5 * SECOND)
    assert "anon:visitor-1" in h.table
    h.produce([event("ident", "identify", T0 + 5 * SECOND, "c9", "visitor-1", traits=FIT)])
    # A page view under the anonymous id lands while the link is in flight.
    h.produce([event("a-late", "page_view", T0 + 6 * SECOND, None, "visitor-1", properties={"path": "/pricing"})])
    h.run(T0 + 7 * SECOND)
    merged = Harness(partitions=1)
    merged.produce([{**e, "contact_id": "c9", "anonymous_id": None} for e in anon_views]
                   + [event("ident", "identify", T0 + 5 * SECOND, "c9", traits=FIT),
                      event("a-late", "page_view", T0 + 6 * SECOND, "c9", properties={"path": "/pricing"})])
    merged.run(T0 + 7 * SECOND)
    assert score(h, "c9", T0 + 10 * SECOND) == pytest.approx(score(merged, "c9", T0 + 10 * SECOND), abs=1e-6)
    assert read_record(h.table["anon:visitor-1"], "anon:visitor-1")["redirect"] == "c9"
    # A later anonymous event is forwarded too, and a repeated identify merges nothing twice.
    h.produce([event("a-later", "page_view", T0 + 8 * SECOND, None, "visitor-1"),
               event("ident-2", "identify", T0 + 9 * SECOND, "c9", "visitor-1")])
    h.run(T0 + 10 * SECOND)
    merged.produce([event("a-later", "page_view", T0 + 8 * SECOND, "c9"), event("ident-2", "identify", T0 + 9 * SECOND, "c9")])
    merged.run(T0 + 10 * SECOND)
    assert score(h, "c9", T0 + 12 * SECOND) == pytest.approx(score(merged, "c9", T0 + 12 * SECOND), abs=1e-6)


def test_a_replayed_link_merges_the_anonymous_history_once():
    h = Harness(partitions=2)
    h.produce([event(f"a{i}", "page_view", T0 + i * SECOND, None, "v-2", properties={"path": "/pricing"}) for i in range(3)])
    h.run(T0 + 4 * SECOND)
    anon_record = h.table["anon:v-2"]
    h.produce([event("id-2", "identify", T0 + 5 * SECOND, "c2", "v-2", traits=FIT)])
    h.run(T0 + 6 * SECOND)
    once = score(h, "c2", T0 + 10 * SECOND)
    # Crash before the visitor's record (with its redirect) reached the changelog: a new
    # process finds the old record and consumes the link_out again, sending the history again.
    h.table["anon:v-2"] = anon_record
    h.processor.cache.clear()
    h.produce([{"type": "__link_out", "key": "anon:v-2", "contact": "c2", "ts": T0 + 5 * SECOND}])
    h.run(T0 + 7 * SECOND)
    assert score(h, "c2", T0 + 10 * SECOND) == once


def test_merge_that_crosses_a_threshold_fires_a_trigger():
    h = Harness(partitions=3)
    h.produce([event(f"v{i}", kind, T0 + i * SECOND, None, "v-7", name=name)
               for i, (kind, name) in enumerate([("track", "Demo Requested"), ("track", "Webinar Attended"),
                                                 ("track", "Whitepaper Downloaded"), ("page_view", None),
                                               ("track", "Email Link Clicked")])])
    h.run(T0 + 5 * SECOND)
    h.produce([event("id-7", "identify", T0 + 6 * SECOND, "c7", "v-7", traits=FIT)])
    h.run(T0 + 7 * SECOND)
    fired = {t["type"] for t in h.triggers if t["contact_id"] == "c7"}
    assert "mql" in fired


@pytest.mark.parametrize(
    "ev, kind",
    [
        (event("b1", "page_view", T0, context={"user_agent": "Mozilla/5.0 (compatible; Googlebot/2.1)"}), "user_agent"),
        (event("b2", "email_open", T0, properties={"machine_open": True}), "machine_open"),
    ],
)
def test_machine_traffic_is_counted_not_scored(ev, kind):
    h = Harness()
    h.produce([ev])
    h.run(T0 + SECOND)
    assert h.outcomes[0].bots[kind] == 1 and h.outcomes[0].applied == 0
    assert h.state("c1")["b"] == {}


def test_link_scanner_clicks_do_not_score():
    h = Harness()
    delivered = event("dl", "email_delivered", T0, properties={"message_id": "m1"})
    scanner = event("ck1", "email_click", T0 + 2 * SECOND, properties={"message_id": "m1"})
    person = event("ck2", "email_click", T0 + 600 * SECOND, properties={"message_id": "m1"})
    h.produce([delivered, scanner, person])
    h.run(T0 + 601 * SECOND)
    assert h.outcomes[0].bots["link_scanner"] == 1
    burst = Harness()
    burst.produce([event(f"b{i}", "email_click", T0 + i * 100, properties={"url": f"https://x/{i}"}) for i in range(5)])
    burst.run(T0 + SECOND)
    assert burst.outcomes[0].bots["link_scanner"] == 2  # the 4th and 5th of a burst


def test_bad_records_go_to_the_dlq_with_a_reason_and_good_ones_still_apply():
    h = Harness(partitions=1)
    h.logs[0].append(b"{not json")
    h.produce([event("ok", "page_view", T0),
               {**event("old", "page_view", T0 - 40 * 86_400_000), "received_at": T0},
               {**event("fut", "page_view", T0 + 3_600_000), "received_at": T0},
               {"id": "x", "type": "teleport", "contact_id": "c1", "ts": T0}])
    h.run(T0 + SECOND)
    assert sorted(d["code"] for d in h.dead) == ["future", "invalid_event", "invalid_json", "too_late"]
    assert all(d["reason"] for d in h.dead)
    assert h.outcomes[-1].applied == 1 or sum(o.applied for o in h.outcomes) == 1


def test_unanswered_mql_breaches_its_sla_once_on_the_tick():
    h = Harness(limits=StreamLimits(lateness_ms=SECOND))
    h.produce(journey())
    h.run(T0 + 5 * SECOND)
    h.tick(T0 + 10 * SECOND)
    mql = [t for t in h.triggers if t["type"] == "mql"]
    assert mql, "the MQL should be out once the watermark passed it"
    sla = h.processor.model.sla_ms
    assert sla == 4 * 3_600_000  # the seed model's 4 h handoff
    h.tick(mql[0]["event_ts"] + sla - 10 * SECOND)
    assert "sla_breach" not in {t["type"] for t in h.triggers}
    h.tick(mql[0]["event_ts"] + sla + 10 * SECOND)
    h.tick(mql[0]["event_ts"] + sla + 20 * SECOND)
    breaches = [t for t in h.triggers if t["type"] == "sla_breach"]
    assert len(breaches) == 1 and breaches[0]["contact_id"] == "c1"


def test_accepted_mql_does_not_breach():
    h = Harness(limits=StreamLimits(lateness_ms=SECOND))
    h.produce(journey())
    h.run(T0 + 5 * SECOND)
    h.tick(T0 + 10 * SECOND)
    h.produce([event("fb", "sales_feedback", T0 + 60 * SECOND, properties={"decision": "accept"})])
    h.run(T0 + 61 * SECOND)
    h.tick(T0 + 6 * 3_600_000)
    assert "sla_breach" not in {t["type"] for t in h.triggers}
    assert h.state("c1")["lead_state"] == "sql"
