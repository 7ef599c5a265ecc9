"""Mailgun webhooks: HMAC signature, staleness, replayed tokens, replay guards and event-data mapping."""

from __future__ import annotations

import orjson
import pytest
from _webhook_support import MAILGUN_KEY, NOW_MS, fixture, mailgun_signed

from connectors.webhooks.common import AuthFailure, PayloadError
from connectors.webhooks.mailgun import MailgunReceiver, compute_signature, parse_event_data
from connectors.webhooks.replay import InMemoryReplayGuard, RedisReplayGuard

RECEIVED = NOW_MS + 5


def receiver(guard=None, now: int = NOW_MS) -> MailgunReceiver:
    return MailgunReceiver(
        MAILGUN_KEY, replay_guard=guard if guard is not None else InMemoryReplayGuard(now_ms=lambda: now), now_ms=lambda: now
    )


def raw(body) -> bytes:
    return orjson.dumps(body)


def test_signature_matches_mailgun_documented_algorithm():
    # HMAC-SHA256(key, timestamp + token), hex digest.
    import hashlib
    import hmac

    expected = hmac.new(b"k", b"1529006854" + b"tok", hashlib.sha256).hexdigest()
    assert compute_signature("k", "1529006854", "tok") == expected


async def test_valid_request_is_accepted():
    outcome = await receiver().receive({}, raw(mailgun_signed("delivered.json")), RECEIVED)
    assert [e["type"] for e in outcome.events] == ["email_delivered"]
    assert outcome.release is not None


async def test_bad_signature():
    body = mailgun_signed("delivered.json", key="another-key")
    with pytest.raises(AuthFailure) as err:
        await receiver().receive({}, raw(body), RECEIVED)
    assert err.value.code == "bad_signature" and err.value.status == 403


async def test_signature_does_not_cover_a_swapped_token():
    body = mailgun_signed("delivered.json")
    body["signature"]["token"] = "x" * 50
    with pytest.raises(AuthFailure) as err:
        await receiver().receive({}, raw(body), RECEIVED)
    assert err.value.code == "bad_signature"


@pytest.mark.parametrize("offset_s", [-301, 400])
async def test_stale_timestamp(offset_s):
    body = mailgun_signed("delivered.json", timestamp_s=NOW_MS // 1000 + offset_s)
    with pytest.raises(AuthFailure) as err:
        await receiver().receive({}, raw(body), RECEIVED)
    assert err.value.code == "stale_timestamp"


async def test_replayed_token_is_refused_with_406():
    guard = InMemoryReplayGuard(now_ms=lambda: NOW_MS)
    body = raw(mailgun_signed("opened.json"))
    await receiver(guard).receive({}, body, RECEIVED)
    with pytest.raises(AuthFailure) as err:
        await receiver(guard).receive({}, body, RECEIVED)
    assert err.value.code == "replayed" and err.value.status == 406


async def test_release_forgets_the_token_so_a_vendor_retry_is_accepted():
    guard = InMemoryReplayGuard(now_ms=lambda: NOW_MS)
    body = raw(mailgun_signed("opened.json"))
    outcome = await receiver(guard).receive({}, body, RECEIVED)
    await outcome.release()
    again = await receiver(guard).receive({}, body, RECEIVED)
    assert again.events[0]["id"] == outcome.events[0]["id"]


async def test_bad_signature_does_not_record_the_token():
    guard = InMemoryReplayGuard(now_ms=lambda: NOW_MS)
    body = mailgun_signed("opened.json", key="wrong")
    with pytest.raises(AuthFailure):
        await receiver(guard).receive({}, raw(body), RECEIVED)
    assert len(guard) == 0


@pytest.mark.parametrize(
    "mutate, code",
    [
        (lambda b: b.pop("signature"), "missing_signature"),
        (lambda b: b["signature"].pop("token"), "missing_signature"),
        (lambda b: b["signature"].update(timestamp="soon"), "bad_signature"),
        (lambda b: b["signature"].update(token="t" * 300), "bad_signature"),
        (lambda b: b.update(signature="abc"), "missing_signature"),
    ],
)
async def test_malformed_signature_blocks(mutate, code):
    body = mailgun_signed("delivered.json")
    mutate(body)
    with pytest.raises(AuthFailure) as err:
        await receiver().receive({}, raw(body), RECEIVED)
    assert err.value.code == code


async def test_integer_timestamp_is_accepted():
    body = mailgun_signed("delivered.json")
    body["signature"]["timestamp"] = int(body["signature"]["timestamp"])
    outcome = await receiver().receive({}, raw(body), RECEIVED)
    assert len(outcome.events) == 1


async def test_invalid_json_is_not_trusted():
    with pytest.raises(PayloadError) as err:
        await receiver().receive({}, b"{not json", RECEIVED)
    assert err.value.code == "invalid_json" and not err.value.trusted


async def test_missing_event_data_after_valid_signature_is_trusted():
    body = mailgun_signed("delivered.json")
    del body["event-data"]
    with pytest.raises(PayloadError) as err:
        await receiver().receive({}, raw(body), RECEIVED)
    assert err.value.field == "event-data" and err.value.trusted


def one(name: str):
    outcome = parse_event_data(fixture("mailgun", name)["event-data"], RECEIVED)
    assert not outcome.problems, outcome.problems
    return outcome.events[0] if outcome.events else outcome


def test_opened():
    event = one("opened.json")
    assert event["type"] == "email_open" and event["id"] == "Ase7i2zsRYeDXztHGENqRA"
    assert event["contact_id"] == "alice@example.com"
    assert event["ts"] == 1521243339874
    props = event["properties"]
    assert props["machine_open"] is False and "bot" not in props
    assert props["client_type"] == "browser" and props["ip"] == "50.56.129.169"
    assert props["message_id"] == "20130503182626.18666.16540@sandbox.mailgun.org"
    assert props["tags"] == ["my_tag_1", "my_tag_2"]
    assert props["user_variables"] == {"my_var_1": "Mailgun Variable #1", "my-var-2": "awesome"}


def test_apple_mpp_open_is_flagged_as_machine_open():
    event = one("opened_apple_mpp.json")
    assert event["properties"]["machine_open"] is True and event["properties"]["bot"] == "apple"


def test_clicked():
    event = one("clicked.json")
    assert event["type"] == "email_click" and event["properties"]["url"] == "https://example.com/pricing"
    assert event["properties"]["machine_click"] is False


def test_delivered():
    event = one("delivered.json")
    assert event["type"] == "email_delivered" and event["ts"] == 1521472262908


def test_failed_permanent_is_a_hard_bounce():
    event = one("failed_permanent.json")
    assert event["type"] == "email_bounce"
    assert event["properties"]["bounce_type"] == "hard"
    assert event["properties"]["smtp_code"] == 605
    assert event["properties"]["reason"] == "suppress-bounce"


def test_failed_temporary_is_a_soft_bounce():
    event = one("failed_temporary.json")
    assert event["properties"]["bounce_type"] == "soft" and event["properties"]["severity"] == "temporary"


def test_complained_and_unsubscribed():
    assert one("complained.json")["type"] == "spam_report"
    assert one("unsubscribed.json")["type"] == "unsubscribe"


def test_accepted_is_counted_as_ignored():
    outcome = one("accepted.json")
    assert outcome.events == [] and outcome.ignored == {"ignored_accepted": 1}


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda d: d.pop("id"), "event-data.id"),
        (lambda d: d.pop("recipient"), "event-data.recipient"),
        (lambda d: d.update(timestamp="yesterday"), "event-data.timestamp"),
        (lambda d: d.update(severity="sometimes"), "event-data.severity"),
        (lambda d: d.pop("event"), "event-data.event"),
    ],
)
def test_bad_event_data_is_a_problem_with_its_field(mutate, field):
    data = fixture("mailgun", "failed_permanent.json")["event-data"]
    mutate(data)
    outcome = parse_event_data(data, RECEIVED)
    assert outcome.events == [] and outcome.problems[0].field == field


# --- replay guards -----------------------------------------------------------------------


async def test_in_memory_guard_expires_tokens():
    now = [1_000]
    guard = InMemoryReplayGuard(now_ms=lambda: now[0])
    assert await guard.seen("a", 100) is False
    assert await guard.seen("a", 100) is True
    now[0] = 1_100
    assert await guard.seen("a", 100) is False
    assert len(guard) == 1


async def test_in_memory_guard_is_bounded():
    guard = InMemoryReplayGuard(max_tokens=3, now_ms=lambda: 0)
    for token in "abcd":
        assert await guard.seen(token, 1_000) is False
    assert len(guard) == 3
    assert await guard.seen("a", 1_000) is False  # evicted oldest
    assert await guard.seen("d", 1_000) is True


class FakeRedis:
    """Just the two commands the guard uses, with redis-py's return values."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.data: dict[str, bytes] = {}

    async def set(self, key, value, nx=False, px=None):
        self.calls.append(("set", key, value, nx, px))
        if nx and key in self.data:
            return None
        self.data[key] = value
        return True

    async def delete(self, key):
        self.calls.append(("delete", key))
        return 1 if self.data.pop(key, None) is not None else 0


async def test_redis_guard_uses_set_nx_px():
    redis = FakeRedis()
    guard = RedisReplayGuard(redis, prefix="p:")
    assert await guard.seen("tok", 660_000) is False
    assert await guard.seen("tok", 660_000) is True
    assert redis.calls[0] == ("set", "p:tok", b"1", True, 660_000)
    await guard.forget("tok")
    assert await guard.seen("tok", 660_000) is False


async def test_redis_guard_plugs_into_the_receiver():
    guard = RedisReplayGuard(FakeRedis())
    body = raw(mailgun_signed("clicked.json"))
    await receiver(guard).receive({}, body, RECEIVED)
    with pytest.raises(AuthFailure):
        await receiver(guard).receive({}, body, RECEIVED)
