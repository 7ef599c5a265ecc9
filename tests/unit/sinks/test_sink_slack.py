"""SlackSink against a local receiver: layout, pacing, coalescing, 429/5xx/4xx handling."""

from __future__ import annotations

import random

import orjson

from connectors.sinks.delivery import SinkRunner
from connectors.sinks.slack import SlackSink
from ops.metrics import Metrics
from sink_receiver import Answer, FakeTime, receiver, trigger  # noqa: F401  (fixture)

HOOK = "/services/T000/B000/XXXX"


def jane(n=1, type_="hot_lead", **extra):
    return trigger(
        n,
        type_,
        contact={"traits": {"name": "Jane <Doe>", "company": {"name": "Acme & Co"}, "title": "Professor"}},
        **extra,
    )


def make(receiver, ft: FakeTime, **kw) -> SlackSink:
    return SlackSink(receiver.url(HOOK), base_url="http://leads.local:8088/", clock=ft.clock, sleep=ft.sleep, **kw)


def make_runner(sink, ft, **kw) -> SinkRunner:
    return SinkRunner(sink, clock=ft.clock, sleep=ft.sleep, rng=random.Random(1), **kw)


def all_text(message) -> str:
    return orjson.dumps(message).decode()


def test_single_message_layout():
    sink = SlackSink("https://hooks.example/x", base_url="http://leads.local:8088/")
    msg = sink.single_message(jane())
    blocks = msg["blocks"]
    assert blocks[0]["type"] == "header"
    assert "Hot lead" in blocks[0]["text"]["text"] and "Jane <Doe>" in blocks[0]["text"]["text"]  # plain_text: no escaping
    fields = " ".join(f["text"] for f in blocks[1]["fields"])
    for needle in ("Acme &amp; Co", "Professor", "*Score*\n82", "*Band*\nsql", "*Previous score*\n64"):
        assert needle in fields
    why = blocks[2]["text"]["text"]
    assert why.index("demo_request +25") < why.index("email_click +8") < why.index("page_view +5")
    button = blocks[3]["elements"][0]
    assert button["url"] == "http://leads.local:8088/?contact=c1"
    hint = blocks[4]["elements"][0]["text"]
    assert "/v1/crm/events" in hint and "accept" in hint and "reject" in hint and '"c1"' in hint
    assert "Jane <Doe>" in msg["text"] and "82" in msg["text"]


def test_digest_lists_every_lead_with_links_and_escaping():
    sink = SlackSink("https://hooks.example/x", base_url="http://leads.local")
    msg = sink.digest_message([jane(1), trigger(2, "mql"), trigger("x/y", "sla_breach")])
    text = all_text(msg)
    assert "3 lead alerts" in text
    assert "<http://leads.local/?contact=c1|Jane &lt;Doe&gt;>" in msg["blocks"][1]["text"]["text"]
    assert "c2" in text and "http://leads.local/?contact=cx%2Fy" in text
    assert len({b["accessory"]["action_id"] for b in msg["blocks"][1:-1]}) == 3


def test_contact_without_traits_falls_back_to_the_id():
    sink = SlackSink("https://hooks.example/x", base_url="http://leads.local")
    msg = sink.single_message(trigger(9, "mql", reasons=[]))
    assert "c9" in msg["blocks"][0]["text"]["text"]
    assert all(b["type"] != "section" or "fields" in b for b in msg["blocks"])  # no empty "Why"


async def test_delivers_one_message_per_lead_paced(receiver):
    ft = FakeTime()
    sink = make(receiver, ft)
    r = make_runner(sink, ft)
    for i in range(3):
        r.offer([jane(i)])
        assert await r.flush(5)
    got = receiver.got(HOOK)
    assert len(got) == 3
    assert [g.json()["blocks"][3]["elements"][0]["url"].rsplit("=", 1)[1] for g in got] == ["c0", "c1", "c2"]
    # Paced: each post after the first waited for the 1 s interval (fake clock, no real waiting).
    assert len(ft.sleeps) == 2 and all(abs(s - 1.0) < 1e-9 for s in ft.sleeps)
    await r.close()


async def test_burst_is_coalesced_without_drops(receiver):
    ft = FakeTime()
    sink = make(receiver, ft, max_leads_per_message=20)
    r = make_runner(sink, ft, max_batch=100)
    for i in range(45):
        assert r.offer([trigger(i)])
    assert await r.flush(5)
    got = receiver.got(HOOK)
    assert len(got) == 3  # 20 + 20 + 5, not 45 messages
    text = " ".join(all_text(g.json()) for g in got)
    for i in range(45):
        assert f"?contact=c{i}|" in text
    assert len(ft.sleeps) == 2
    await r.close()


async def test_429_retry_after_is_honoured_then_delivered_once(receiver):
    ft, metrics = FakeTime(), Metrics()
    receiver.answer(HOOK, Answer(429, {"Retry-After": "3"}, "rate_limited"))
    sink = make(receiver, ft)
    r = make_runner(sink, ft, metrics=metrics)
    r.offer([jane(1)])
    assert await r.flush(5)
    assert len(receiver.got(HOOK, None)) == 2 and len(receiver.got(HOOK)) == 1
    assert sum(ft.sleeps) >= 3
    assert metrics.sink_deliveries.labels(sink="slack", outcome="delivered")._value.get() == 1
    assert metrics.sink_retries.labels(sink="slack")._value.get() == 1
    await r.close()


async def test_500_is_retried(receiver):
    ft = FakeTime()
    receiver.answer(HOOK, Answer(500, body="rollup_error"), Answer(503))
    r = make_runner(make(receiver, ft), ft)
    r.offer([jane(1)])
    assert await r.flush(5)
    assert [g.status for g in receiver.got(HOOK, None)] == [500, 503, 200]
    await r.close()


async def test_400_is_dead_lettered_without_retry(receiver):
    ft, dead = FakeTime(), []

    async def dlq(sink, triggers, reason):
        dead.append((sink, [t["trigger_id"] for t in triggers], reason))

    receiver.answer(HOOK, Answer(400, body="invalid_payload"))
    r = make_runner(make(receiver, ft), ft, dead_letter=dlq)
    r.offer([jane(1)])
    assert await r.flush(5)
    assert len(receiver.got(HOOK, None)) == 1
    assert dead == [("slack", ["t1"], dead[0][2])] and "invalid_payload" in dead[0][2]
    await r.close()


async def test_a_rejected_message_does_not_hold_back_the_next(receiver):
    ft, dead = FakeTime(), []

    async def dlq(sink, triggers, reason):
        dead.extend(t["trigger_id"] for t in triggers)

    receiver.answer(HOOK, Answer(400, body="invalid_payload"))
    sink = make(receiver, ft, max_leads_per_message=2)
    r = make_runner(sink, ft, dead_letter=dlq)
    r.offer([trigger(i) for i in range(4)])
    assert await r.flush(5)
    assert dead == ["t0", "t1"]
    assert len(receiver.got(HOOK)) == 1 and "c3" in all_text(receiver.got(HOOK)[0].json())
    await r.close()


async def test_only_alert_types_reach_slack(receiver):
    ft = FakeTime()
    r = make_runner(make(receiver, ft), ft)
    r.offer([trigger(1, "suppress"), trigger(2, "nurture_exit"), trigger(3, "route_to_sales")])
    assert await r.flush(5)
    got = receiver.got(HOOK)
    assert len(got) == 1 and "c3" in all_text(got[0].json()) and "c1" not in all_text(got[0].json())
    custom = make(receiver, ft, alert_types={"suppress"})
    assert custom.wants(trigger(1, "suppress")) and not custom.wants(trigger(1, "mql"))
    await r.close()
    await custom.close()


async def test_redelivery_after_restart_is_deduped_by_the_ledger(receiver):
    from connectors.sinks.delivery import InMemoryLedger

    ledger = InMemoryLedger()
    receiver.answer(HOOK, Answer(500))
    for _ in range(2):  # two worker lifetimes replaying the same uncommitted batch
        ft = FakeTime()
        r = make_runner(make(receiver, ft), ft, ledger=ledger)
        r.offer([jane(1), jane(2)])
        r.offer([jane(1)])
        assert await r.flush(5)
        await r.close()
    got = receiver.got(HOOK)
    assert len(got) == 1
    assert "2 lead alerts" in all_text(got[0].json())
