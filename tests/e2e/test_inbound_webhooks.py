"""End to end: signed ESP webhooks and CRM events -> real collector -> broker -> worker -> contact state and triggers.

The stack is the real one (``leadpulse collector`` and ``leadpulse worker`` child processes on the
session's broker and Redis), configured with keys generated for this run: a SendGrid ECDSA public
key, a Mailgun signing key, Postmark Basic credentials and a directory with a pinned SNS signing
certificate. The vendor fixtures (tests/fixtures/) get fresh recipients, ids and times, and are
signed exactly the way each vendor signs them.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import datetime as dt
import hashlib
import hmac
import time
import uuid
from functools import lru_cache
from typing import Any, Callable

import aiohttp
import orjson
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from redis.asyncio import Redis
from unit.connectors._webhook_support import (
    CERT_NAME,
    MAILGUN_KEY,
    POSTMARK_PASSWORD,
    POSTMARK_USER,
    SnsSigner,
    basic,
    fixture,
    iso,
    sendgrid_headers,
    sendgrid_public_key_b64,
)

from isolated import isolated_settings
from ops.supervisor import Stack

pytestmark = pytest.mark.e2e

TRIGGER_STREAM = "leadpulse:triggers"
CRM_AUTH = {"Authorization": "Basic " + base64.b64encode(b"crm-key:").decode(), "Content-Type": "application/json"}
SEGMENT_AUTH = {"Authorization": "Basic " + base64.b64encode(b"demo:").decode()}


@lru_cache(maxsize=1)
def sns_signer() -> SnsSigner:
    """A signing certificate valid around the wall clock (the unit tests' one is valid around 2024)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    return SnsSigner(key, cert.public_bytes(serialization.Encoding.PEM))


def write_cert_dir(directory):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CERT_NAME).write_bytes(sns_signer().cert_pem)
    return directory


@pytest.fixture(scope="module")
def stack(services, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("inbound-webhooks")
    settings = isolated_settings(
        services,
        data_dir,
        "wh",
        write_keys="demo,crm-key:hubspot",
        lateness="1s",  # handoff triggers wait for the watermark: keep the wait short here
        sendgrid_public_key=sendgrid_public_key_b64(),
        mailgun_signing_key=MAILGUN_KEY,
        postmark_webhook_user=POSTMARK_USER,
        postmark_webhook_password=POSTMARK_PASSWORD,
        ses_cert_dir=write_cert_dir(data_dir / "sns-certs"),
    )
    running = Stack(settings).start(ready_timeout=90)
    yield running
    running.stop()


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


def now_ms() -> int:
    return int(time.time() * 1000)


def new_contact(vendor: str) -> str:
    return f"{vendor}-{uuid.uuid4().hex[:8]}@lakeside.example"


async def contact_when(http: aiohttp.ClientSession, stack: Stack, contact: str, ok: Callable[[dict], bool],
                       timeout: float = 20.0) -> dict[str, Any]:
    """GET /v1/contacts/{contact} until ``ok(body)``; returns the last body seen (or {} if never found)."""
    body: dict[str, Any] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        async with http.get(f"{stack.base_url}/v1/contacts/{contact}") as response:
            if response.status == 200:
                body = await response.json()
                if ok(body):
                    return body
        await asyncio.sleep(0.1)
    return body


async def triggers_for(stack: Stack, contact: str, kind: str, timeout: float = 20.0) -> list[dict]:
    redis = Redis.from_url(stack.services.redis_url)
    found: list[dict] = []
    last = "0"
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and not any(t["type"] == kind for t in found):
            for _stream, items in await redis.xread({TRIGGER_STREAM: last}, block=200, count=1000) or []:
                for entry_id, fields in items:
                    last = entry_id
                    trigger = orjson.loads(fields[b"trigger"])
                    if trigger["contact_id"] == contact:
                        found.append(trigger)
    finally:
        await redis.aclose()
    return found


async def assert_suppressed(http, stack: Stack, contact: str, reason: str) -> None:
    body = await contact_when(http, stack, contact, lambda b: b.get("suppressed") is True)
    assert body.get("suppressed") is True, body
    triggers = await triggers_for(stack, contact, "suppress")
    suppress = [t for t in triggers if t["type"] == "suppress"]
    assert suppress, f"no suppress trigger for {contact}: {triggers}"
    assert reason in orjson.dumps(suppress[0]).decode()


# --- SendGrid ------------------------------------------------------------------------------


def sendgrid_event(kind: str, contact: str, **extra: Any) -> dict[str, Any]:
    template = next(e for e in fixture("sendgrid", "events.json") if e["event"] == kind and not e.get("sg_machine_open"))
    event = copy.deepcopy(template)
    event.update(email=contact, timestamp=now_ms() // 1000 - 1, sg_event_id=uuid.uuid4().hex, **extra)
    return event


async def post_sendgrid(http, stack, events: list[dict], key=None):
    body = orjson.dumps(events)
    headers = sendgrid_headers(body, timestamp_s=now_ms() // 1000, key=key)
    async with http.post(f"{stack.base_url}/webhooks/sendgrid", data=body, headers=headers) as response:
        return response.status, await response.json()


async def test_sendgrid_click_scores_and_unsubscribe_suppresses(stack, http):
    contact = new_contact("sg")
    status, body = await post_sendgrid(http, stack, [sendgrid_event("open", contact), sendgrid_event("click", contact)])
    assert status == 200 and body["accepted"] == 2, body
    scored = await contact_when(http, stack, contact, lambda b: b["behaviour"] > 0)
    assert scored["behaviour"] > 0 and scored["suppressed"] is False
    assert {"email_open", "email_click"} <= {r["signal"] for r in scored["reasons"]}

    status, body = await post_sendgrid(http, stack, [sendgrid_event("unsubscribe", contact)])
    assert status == 200 and body["accepted"] == 1
    await assert_suppressed(http, stack, contact, "unsubscribed")


async def test_sendgrid_bad_signature_is_refused(stack, http):
    contact = new_contact("sg-forged")
    status, body = await post_sendgrid(http, stack, [sendgrid_event("click", contact)], key=ec.generate_private_key(ec.SECP256R1()))
    assert status == 403 and body["success"] is False and body["error"]
    async with http.get(f"{stack.base_url}/v1/contacts/{contact}") as response:
        assert response.status == 404


# --- Mailgun --------------------------------------------------------------------------------


def mailgun_body(name: str, contact: str, *, key: str = MAILGUN_KEY) -> dict[str, Any]:
    body = fixture("mailgun", name)
    body["event-data"].update(recipient=contact, timestamp=now_ms() / 1000 - 1, id=uuid.uuid4().hex)
    timestamp, token = str(now_ms() // 1000), uuid.uuid4().hex + uuid.uuid4().hex[:18]
    signature = hmac.new(key.encode(), (timestamp + token).encode(), hashlib.sha256).hexdigest()
    body["signature"] = {"timestamp": timestamp, "token": token, "signature": signature}
    return body


async def post_json(http, url: str, body: Any, headers: dict[str, str] | None = None):
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    async with http.post(url, data=raw, headers={"Content-Type": "application/json", **(headers or {})}) as response:
        return response.status, await response.json()


async def test_mailgun_click_replay_bad_signature_and_hard_bounce(stack, http):
    contact = new_contact("mg")
    url = f"{stack.base_url}/webhooks/mailgun"
    clicked = mailgun_body("clicked.json", contact)
    status, body = await post_json(http, url, clicked)
    assert status == 200 and body["accepted"] == 1, body
    scored = await contact_when(http, stack, contact, lambda b: b["behaviour"] > 0)
    assert scored["behaviour"] > 0

    # the same signed request again: the token is remembered in Redis (shared by all collectors)
    status, body = await post_json(http, url, clicked)
    assert status == 406 and "replay" in body["error"].lower()
    redis = Redis.from_url(stack.services.redis_url)
    try:
        assert await redis.exists(f"{stack.settings.topic_prefix}:webhook-token:{clicked['signature']['token']}")
    finally:
        await redis.aclose()

    status, body = await post_json(http, url, mailgun_body("clicked.json", contact, key="key-wrong"))
    assert status == 403 and body["success"] is False

    status, body = await post_json(http, url, mailgun_body("failed_permanent.json", contact))
    assert status == 200 and body["accepted"] == 1, body
    await assert_suppressed(http, stack, contact, "hard_bounced")


# --- Postmark --------------------------------------------------------------------------------


def postmark_record(name: str, contact: str, time_field: str, recipient_field: str) -> dict[str, Any]:
    record = fixture("postmark", name)
    record[recipient_field] = contact
    record[time_field] = iso(now_ms() - 1000)
    record["MessageID"] = str(uuid.uuid4())
    if "ID" in record:
        record["ID"] = int(uuid.uuid4().int % 10**15)
    return record


async def test_postmark_click_bad_auth_and_hard_bounce(stack, http):
    contact = new_contact("pm")
    url = f"{stack.base_url}/webhooks/postmark"
    click = postmark_record("click.json", contact, "ReceivedAt", "Recipient")
    status, body = await post_json(http, url, click, basic(POSTMARK_USER, POSTMARK_PASSWORD))
    assert status == 200 and body["accepted"] == 1, body
    scored = await contact_when(http, stack, contact, lambda b: b["behaviour"] > 0)
    assert scored["behaviour"] > 0

    status, body = await post_json(http, url, click, basic(POSTMARK_USER, "wrong"))
    assert status == 401 and body["field"] == "Authorization"

    bounce = postmark_record("bounce.json", contact, "BouncedAt", "Email")
    status, body = await post_json(http, url, bounce, basic(POSTMARK_USER, POSTMARK_PASSWORD))
    assert status == 200 and body["accepted"] == 1, body
    await assert_suppressed(http, stack, contact, "hard_bounced")


# --- SES via SNS -----------------------------------------------------------------------------


def sns_message(record_name: str, contact: str, version: str = "2") -> dict[str, Any]:
    record = fixture("ses", record_name)
    at = iso(now_ms() - 1000)
    record["mail"].update(destination=[contact], messageId=f"ses-{uuid.uuid4().hex}", timestamp=at)
    detail = record[record["eventType"].lower()]
    detail["timestamp"] = at
    if "complainedRecipients" in detail:
        detail["complainedRecipients"] = [{"emailAddress": contact}]
    message = fixture("ses", "sns_notification.json")
    message.update(Message=orjson.dumps(record).decode(), Timestamp=at, MessageId=str(uuid.uuid4()))
    return sns_signer().sign(message, version)


async def post_sns(http, stack, message: dict) -> tuple[int, dict]:
    headers = {"Content-Type": "text/plain; charset=UTF-8", "x-amz-sns-message-type": message["Type"]}
    async with http.post(f"{stack.base_url}/webhooks/ses", data=orjson.dumps(message), headers=headers) as response:
        return response.status, await response.json()


async def test_ses_click_and_complaint_via_signed_sns(stack, http):
    contact = new_contact("ses")
    status, body = await post_sns(http, stack, sns_message("click.json", contact, version="1"))
    assert status == 200 and body["accepted"] == 1, body
    scored = await contact_when(http, stack, contact, lambda b: b["behaviour"] > 0)
    assert scored["behaviour"] > 0

    tampered = sns_message("click.json", contact)
    tampered["Message"] = tampered["Message"].replace("Click", "Open")
    status, body = await post_sns(http, stack, tampered)
    assert status == 403

    status, body = await post_sns(http, stack, sns_message("complaint.json", contact))
    assert status == 200 and body["accepted"] == 1, body
    await assert_suppressed(http, stack, contact, "spam_report")


async def test_ses_subscription_confirmation(stack, http):
    message = fixture("ses", "sns_subscription_confirmation.json")
    message["Timestamp"] = iso(now_ms() - 1000)
    status, body = await post_sns(http, stack, sns_signer().sign(message))
    assert status == 200 and body["subscription"] == "pending_confirmation"
    assert body["subscribe_url"].startswith("https://sns.us-west-2.amazonaws.com/")


# --- CRM and sales feedback --------------------------------------------------------------------


async def test_crm_sales_conversation_suppresses(stack, http):
    contact = new_contact("crm")
    url = f"{stack.base_url}/v1/crm/events"
    status, body = await post_json(
        http, url, {"type": "sales_conversation", "contact_id": contact, "active": True, "timestamp": now_ms() - 1000},
        CRM_AUTH,
    )
    assert status == 200 and body["accepted"] == 1, body
    await assert_suppressed(http, stack, contact, "sales_conversation")


def mql_calls(contact: str) -> list[dict]:
    def call(kind: str, **fields) -> dict:
        return {"type": kind, "messageId": str(uuid.uuid4()), "userId": contact, **fields}

    return [
        call("identify", traits={"title": "Clinical Psychologist",
                                 "company": {"industry": "University", "employee_count": 12000}, "address": {"country": "US"}}),
        call("page", name="Pricing", properties={"path": "/pricing"}),
        call("track", event="Whitepaper Downloaded"),
        call("track", event="Webinar Attended"),
        call("track", event="Email Link Clicked"),
        call("track", event="Demo Requested"),
    ]


async def test_sales_feedback_accept_after_mql_makes_sql(stack, http):
    contact = new_contact("sdr")
    async with http.post(f"{stack.base_url}/v1/batch", json={"batch": mql_calls(contact)}, headers=SEGMENT_AUTH) as response:
        assert response.status == 200
    mql = [t for t in await triggers_for(stack, contact, "mql") if t["type"] == "mql"]
    assert mql, f"no MQL trigger: {await contact_when(http, stack, contact, lambda b: True, timeout=1)}"
    assert (await contact_when(http, stack, contact, lambda b: b["state"] == "mql"))["state"] == "mql"

    feedback = {"type": "feedback", "contact_id": contact, "decision": "accept", "trigger_id": mql[0]["trigger_id"],
                "by": "sdr.anna@example.com", "timestamp": now_ms()}
    status, body = await post_json(http, f"{stack.base_url}/v1/crm/events", feedback, CRM_AUTH)
    assert status == 200 and body["accepted"] == 1, body
    after = await contact_when(http, stack, contact, lambda b: b["state"] == "sql")
    assert after["state"] == "sql" and after["suppressed"] is False


async def test_crm_unknown_key_and_bad_item(stack, http):
    url = f"{stack.base_url}/v1/crm/events"
    event = {"type": "customer", "contact_id": new_contact("crm"), "timestamp": now_ms()}
    status, _ = await post_json(http, url, event, {"Authorization": "Basic " + base64.b64encode(b"nope:").decode()})
    assert status == 401
    status, body = await post_json(http, url, {"type": "stage_change", "contact_id": "x@y.example", "timestamp": now_ms()}, CRM_AUTH)
    assert status == 400 and body["success"] is False and body["error"]
