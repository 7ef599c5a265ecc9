"""Standard Webhooks signing/verification and the WebhookSink against a local receiver."""

from __future__ import annotations

import base64
import doctest
import random

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

import connectors.sinks.standard_webhooks as sw
from connectors.sinks.delivery import InMemoryLedger, SinkRunner
from connectors.sinks.standard_webhooks import WebhookVerificationError, sign, verify, webhook_headers
from connectors.sinks.webhook import WebhookSink
from ops.metrics import Metrics
from sink_receiver import Answer, FakeTime, receiver, trigger  # noqa: F401  (fixture)

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
OTHER_SECRET = "whsec_" + base64.b64encode(b"another secret of 24 bytes!").decode()
NOW = 1_700_000_000


# ---------------------------------------------------------------- standard_webhooks


def test_spec_test_vector():
    sig = sign(SECRET, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, '{"test": 2432232314}')
    assert sig == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    # The reference libraries accept the secret without its prefix too.
    assert sign(SECRET.removeprefix("whsec_"), "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}') == sig


def test_module_docstring_example_runs():
    result = doctest.testmod(sw)
    assert result.attempted >= 5 and result.failed == 0


def test_round_trip_and_case_insensitive_headers():
    body = b'{"trigger_id": "t1"}'
    headers = webhook_headers(SECRET, "t1", NOW, body)
    verify(SECRET, headers, body, now_s=NOW)
    verify(SECRET, {k.title(): v for k, v in headers.items()}, body, now_s=NOW)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda h, b: (h, b + b"x"), "no matching signature"),
        (lambda h, b: ({**h, "webhook-id": "t2"}, b), "no matching signature"),
        (lambda h, b: ({**h, "webhook-signature": "v1,AAAA"}, b), "no matching signature"),
        (lambda h, b: ({**h, "webhook-signature": "v1a,abc"}, b), "no v1 signature"),
        (lambda h, b: ({k: v for k, v in h.items() if k != "webhook-signature"}, b), "missing header webhook-signature"),
        (lambda h, b: ({k: v for k, v in h.items() if k != "webhook-id"}, b), "missing header webhook-id"),
        (lambda h, b: ({**h, "webhook-timestamp": "12.5"}, b), "not integer seconds"),
    ],
)
def test_verify_failures(mutate, message):
    body = b'{"trigger_id": "t1"}'
    headers, body = mutate(webhook_headers(SECRET, "t1", NOW, body), body)
    with pytest.raises(WebhookVerificationError, match=message):
        verify(SECRET, headers, body, now_s=NOW)


def test_wrong_secret_fails():
    body = b"{}"
    with pytest.raises(WebhookVerificationError, match="no matching signature"):
        verify(OTHER_SECRET, webhook_headers(SECRET, "t1", NOW, body), body, now_s=NOW)


def test_stale_and_future_timestamps_fail():
    body = b"{}"
    headers = webhook_headers(SECRET, "t1", NOW, body)
    verify(SECRET, headers, body, now_s=NOW + 300)
    with pytest.raises(WebhookVerificationError, match="too old"):
        verify(SECRET, headers, body, now_s=NOW + 301)
    with pytest.raises(WebhookVerificationError, match="future"):
        verify(SECRET, headers, body, now_s=NOW - 301)
    verify(SECRET, headers, body, now_s=NOW + 3000, tolerance_s=3600)


def test_any_of_several_signatures_may_match():
    body = b"{}"
    ours = sign(SECRET, "t1", NOW, body)
    rotated = sign(OTHER_SECRET, "t1", NOW, body)
    headers = {"webhook-id": "t1", "webhook-timestamp": str(NOW), "webhook-signature": f"v1a,xyz {rotated} {ours}"}
    verify(SECRET, headers, body, now_s=NOW)
    verify(OTHER_SECRET, headers, body, now_s=NOW)


def test_bad_secret_is_refused():
    with pytest.raises(ValueError, match="base64"):
        sign("whsec_not base64!", "t1", NOW, b"{}")
    with pytest.raises(ValueError):
        WebhookSink(["http://x"], "whsec_***")


@given(msg_id=st.text(min_size=1, max_size=40), body=st.binary(max_size=512), ts=st.integers(0, 2**33))
def test_sign_verify_round_trip_property(msg_id, body, ts):
    headers = {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": sign(SECRET, msg_id, ts, body)}
    verify(SECRET, headers, body, now_s=ts)


# ---------------------------------------------------------------- WebhookSink


def make_runner(sink, ft, **kw):
    return SinkRunner(sink, clock=ft.clock, sleep=ft.sleep, rng=random.Random(3), **kw)


async def test_posts_signed_trigger_json(receiver):
    ft = FakeTime()
    sink = WebhookSink([receiver.url("/hook")], SECRET, wall_clock=lambda: NOW)
    r = make_runner(sink, ft)
    t = trigger(1)
    r.offer([t])
    assert await r.flush(5)
    (got,) = receiver.got("/hook")
    assert got.json() == t
    assert got.headers["webhook-id"] == "t1"
    assert got.headers["webhook-timestamp"] == str(NOW)
    assert got.headers["Content-Type"] == "application/json"
    verify(SECRET, got.headers, got.body, now_s=NOW)
    await r.close()


async def test_retries_keep_the_id_and_re_sign(receiver):
    ft, metrics = FakeTime(), Metrics()
    clock = iter(range(NOW, NOW + 100))
    receiver.answer("/hook", Answer(500), Answer(429, {"Retry-After": "2"}))
    sink = WebhookSink([receiver.url("/hook")], SECRET, wall_clock=lambda: next(clock))
    r = make_runner(sink, ft, metrics=metrics)
    r.offer([trigger(1)])
    assert await r.flush(5)
    attempts = receiver.got("/hook", None)
    assert [a.status for a in attempts] == [500, 429, 200]
    assert {a.headers["webhook-id"] for a in attempts} == {"t1"}
    assert len({a.headers["webhook-timestamp"] for a in attempts}) == 3
    for a in attempts:
        verify(SECRET, a.headers, a.body, now_s=int(a.headers["webhook-timestamp"]))
    assert ft.sleeps[1] >= 2  # Retry-After honoured
    assert metrics.sink_deliveries.labels(sink="webhook", outcome="delivered")._value.get() == 1
    assert metrics.sink_retries.labels(sink="webhook")._value.get() == 2
    await r.close()


async def test_client_error_is_permanent_and_does_not_block_other_triggers(receiver):
    ft, dead = FakeTime(), []

    async def dlq(sink, triggers, reason):
        dead.append(([t["trigger_id"] for t in triggers], reason))

    receiver.answer("/hook", Answer(400, body="bad"))
    url = receiver.url("/hook?token=s3cret")
    r = make_runner(WebhookSink([url], SECRET), ft, dead_letter=dlq)
    r.offer([trigger(1), trigger(2)])
    assert await r.flush(5)
    assert [a.status for a in receiver.got("/hook", None)] == [400, 200]
    assert [d[0] for d in dead] == [["t1"]]
    assert "HTTP 400" in dead[0][1] and "s3cret" not in dead[0][1]
    assert ft.sleeps == []
    await r.close()


async def test_failure_holds_back_later_triggers_to_keep_order(receiver):
    ft = FakeTime()
    receiver.answer("/hook", Answer(503))
    r = make_runner(WebhookSink([receiver.url("/hook")], SECRET), ft)
    r.offer([trigger(1), trigger(2), trigger(3)])
    assert await r.flush(5)
    ok = [a.headers["webhook-id"] for a in receiver.got("/hook")]
    assert ok == ["t1", "t2", "t3"]
    assert len(receiver.got("/hook", None)) == 4  # t2 and t3 were not sent during the failed attempt
    await r.close()


async def test_dead_letter_after_n_attempts(receiver):
    ft, dead = FakeTime(), []

    async def dlq(sink, triggers, reason):
        dead.append(([t["trigger_id"] for t in triggers], reason))

    receiver.answer("/hook", *[Answer(500)] * 4)
    r = make_runner(WebhookSink([receiver.url("/hook")], SECRET), ft, max_attempts=4, dead_letter=dlq)
    r.offer([trigger(1)])
    assert await r.flush(5)
    assert len(receiver.got("/hook", None)) == 4
    assert dead[0][0] == ["t1"] and "gave up after 4 attempts" in dead[0][1] and "HTTP 500" in dead[0][1]
    await r.close()


async def test_timeout_is_retried(receiver):
    ft = FakeTime()
    receiver.answer("/hook", Answer(200, delay=1.0))
    r = make_runner(WebhookSink([receiver.url("/hook")], SECRET, timeout_s=0.05), ft)
    r.offer([trigger(1)])
    assert await r.flush(10)
    assert len(ft.sleeps) == 1  # one retry after the timed-out attempt
    await r.close()


async def test_exactly_once_despite_retries_reoffers_and_restart(receiver):
    ledger = InMemoryLedger()
    receiver.answer("/hook", Answer(500), Answer(500))
    batch = [trigger(1), trigger(2)]
    for lifetime in range(2):  # worker restart: same durable ledger, the batch replayed
        ft = FakeTime()
        r = make_runner(WebhookSink([receiver.url("/hook")], SECRET), ft, ledger=ledger)
        r.offer(batch)
        r.offer(batch)
        r.offer([trigger(10 + lifetime)])
        assert await r.flush(5)
        await r.close()
    delivered = [a.headers["webhook-id"] for a in receiver.got("/hook")]
    assert sorted(delivered) == ["t1", "t10", "t11", "t2"]


async def test_multiple_urls_do_not_resend_to_a_url_that_accepted(receiver):
    ft = FakeTime()
    receiver.answer("/b", Answer(500))
    sink = WebhookSink([receiver.url("/a"), receiver.url("/b")], SECRET)
    r = make_runner(sink, ft)
    r.offer([trigger(1)])
    assert await r.flush(5)
    assert len(receiver.got("/a", None)) == 1
    assert [a.status for a in receiver.got("/b", None)] == [500, 200]
    await r.close()


async def test_unsigned_when_no_secret(receiver):
    ft = FakeTime()
    r = make_runner(WebhookSink([receiver.url("/hook")], None), ft)
    r.offer([trigger(1)])
    assert await r.flush(5)
    (got,) = receiver.got("/hook")
    assert "webhook-signature" not in {k.lower() for k in got.headers}
    assert got.headers["webhook-id"] == "t1"
    assert orjson.loads(got.body)["trigger_id"] == "t1"
    await r.close()


async def test_slow_webhook_does_not_block_slack(receiver):
    import asyncio

    from connectors.sinks.slack import SlackSink

    gate = asyncio.Event()
    receiver.answer("/slow", Answer(200, gate=gate))
    hook = SinkRunner(WebhookSink([receiver.url("/slow")], SECRET))
    slack = SinkRunner(SlackSink(receiver.url("/slack"), base_url="http://x", min_interval_ms=0))
    batch = [trigger(1)]
    hook.offer(batch)
    slack.offer(batch)
    assert await slack.flush(5)
    assert len(receiver.got("/slack")) == 1
    assert not await hook.flush(0.05)
    gate.set()
    assert await hook.flush(5)
    await hook.close()
    await slack.close()
