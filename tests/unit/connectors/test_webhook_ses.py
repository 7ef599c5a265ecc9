"""Amazon SES via SNS: certificate URL rules, pinned certificates, signature v1/v2, SES event mapping."""

from __future__ import annotations

import datetime as dt
import json

import orjson
import pytest
from _webhook_support import CERT_NAME, NOW_MS, fixture, iso, sns_notification, sns_signer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from connectors.webhooks.common import AuthFailure, PayloadError
from connectors.webhooks.ses import SesReceiver, canonical_string, cert_file_name, parse_ses_record

RECEIVED = NOW_MS + 5


def receiver(cert_dir, now: int = NOW_MS, **kwargs) -> SesReceiver:
    return SesReceiver(cert_dir, now_ms=lambda: now, **kwargs)


async def receive(cert_dir, message, **kwargs):
    return await receiver(cert_dir, **kwargs).receive({"x-amz-sns-message-type": message.get("Type", "")}, orjson.dumps(message), RECEIVED)


@pytest.mark.parametrize(
    "url",
    [
        "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-abc123.pem",
        "https://sns.eu-central-1.amazonaws.com/SimpleNotificationService-01d088a6f77103d0fe307c0069e40ed6.pem",
        "https://sns.us-gov-west-1.amazonaws.com/SimpleNotificationService-abc.pem",
        "https://sns.cn-north-1.amazonaws.com.cn/SimpleNotificationService-abc.pem",
        "https://sns.us-east-1.amazonaws.com:443/SimpleNotificationService-abc.pem",
    ],
)
def test_sns_certificate_urls(url):
    assert cert_file_name(url).startswith("SimpleNotificationService-")


@pytest.mark.parametrize(
    "url",
    [
        "http://sns.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem",
        "https://sns.us-east-1.amazonaws.com.evil.com/SimpleNotificationService-abc.pem",
        "https://evil.com/sns.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem",
        "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem?x=1",
        "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem#frag",
        "https://user@sns.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem",
        "https://sns.us-east-1.amazonaws.com:8443/SimpleNotificationService-abc.pem",
        "https://sns.us-east-1.amazonaws.com/../SimpleNotificationService-abc.pem",
        "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-../../etc/passwd.pem",
        "https://sns.us-east-1.amazonaws.com/other.pem",
        "https://s3.amazonaws.com/SimpleNotificationService-abc.pem",
        "https://sns.us-east-1.amazonaws.com:99999999/SimpleNotificationService-abc.pem",
        "",
        None,
    ],
)
def test_refused_certificate_urls(url):
    with pytest.raises(AuthFailure):
        cert_file_name(url)


def test_canonical_string_for_notification_and_confirmation():
    note = {"Type": "Notification", "Message": "m", "MessageId": "i", "Timestamp": "t", "TopicArn": "a", "Subject": "s", "Extra": "x"}
    assert canonical_string(note) == b"Message\nm\nMessageId\ni\nSubject\ns\nTimestamp\nt\nTopicArn\na\nType\nNotification\n"
    del note["Subject"]
    assert canonical_string(note) == b"Message\nm\nMessageId\ni\nTimestamp\nt\nTopicArn\na\nType\nNotification\n"
    confirm = {"Type": "SubscriptionConfirmation", "Message": "m", "MessageId": "i", "SubscribeURL": "u", "Timestamp": "t", "Token": "k", "TopicArn": "a"}
    assert canonical_string(confirm) == (
        b"Message\nm\nMessageId\ni\nSubscribeURL\nu\nTimestamp\nt\nToken\nk\nTopicArn\na\nType\nSubscriptionConfirmation\n"
    )


@pytest.mark.parametrize("version", ["1", "2"])
async def test_signature_versions_1_and_2(cert_dir, version):
    outcome = await receive(cert_dir, sns_notification("bounce.json", version=version))
    assert [e["type"] for e in outcome.events] == ["email_bounce"]


async def test_tampered_message_is_refused(cert_dir):
    message = sns_notification("bounce.json")
    message["Message"] = message["Message"].replace("Permanent", "Transient")
    with pytest.raises(AuthFailure) as err:
        await receive(cert_dir, message)
    assert err.value.code == "bad_signature"


async def test_signature_made_with_version_1_does_not_verify_as_version_2(cert_dir):
    message = sns_notification("bounce.json", version="1")
    message["SignatureVersion"] = "2"
    with pytest.raises(AuthFailure):
        await receive(cert_dir, message)


async def test_unknown_signature_version(cert_dir):
    message = sns_notification("bounce.json")
    message["SignatureVersion"] = "3"
    with pytest.raises(AuthFailure) as err:
        await receive(cert_dir, message)
    assert err.value.field == "SignatureVersion"


async def test_certificate_not_pinned(cert_dir):
    message = sns_notification("bounce.json", SigningCertURL="https://sns.us-west-2.amazonaws.com/SimpleNotificationService-other.pem")
    with pytest.raises(AuthFailure) as err:
        await receive(cert_dir, message)
    assert err.value.code == "unpinned_cert"


async def test_a_pinned_certificate_of_another_key_does_not_verify(tmp_path):
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
    now = dt.datetime.fromtimestamp(NOW_MS / 1000, tz=dt.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(other_key.public_key())
        .serial_number(1).not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=1))
        .sign(other_key, hashes.SHA256())
    )
    (tmp_path / CERT_NAME).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(AuthFailure) as err:
        await receive(tmp_path, sns_notification("bounce.json"))
    assert err.value.code == "bad_signature"


async def test_expired_certificate(cert_dir):
    with pytest.raises(AuthFailure) as err:
        await receiver(cert_dir, now=NOW_MS + 400 * 86_400_000).receive({}, orjson.dumps(sns_notification("bounce.json")), RECEIVED)
    assert err.value.code == "expired_cert"


async def test_garbage_in_the_pinned_file(tmp_path):
    (tmp_path / CERT_NAME).write_text("not a certificate")
    with pytest.raises(AuthFailure) as err:
        await receive(tmp_path, sns_notification("bounce.json"))
    assert err.value.code == "unpinned_cert"


@pytest.mark.parametrize("age_ms, ok", [(3_599_000, True), (3_601_000, False), (-299_000, True), (-301_000, False)])
async def test_message_age(cert_dir, age_ms, ok):
    message = sns_notification("delivery.json", Timestamp=iso(NOW_MS - age_ms))
    message = sns_signer().sign(message)
    if ok:
        assert (await receive(cert_dir, message)).events
    else:
        with pytest.raises(AuthFailure) as err:
            await receive(cert_dir, message)
        assert err.value.code == "stale_timestamp"


async def test_topic_allow_list(cert_dir):
    message = sns_notification("delivery.json")
    assert (await receive(cert_dir, message, topic_arns=[message["TopicArn"]])).events
    with pytest.raises(AuthFailure) as err:
        await receive(cert_dir, message, topic_arns=["arn:aws:sns:us-east-1:1:Other"])
    assert err.value.code == "unexpected_topic"


async def test_message_type_header_must_match(cert_dir):
    message = sns_notification("delivery.json")
    with pytest.raises(PayloadError):
        await receiver(cert_dir).receive({"x-amz-sns-message-type": "SubscriptionConfirmation"}, orjson.dumps(message), RECEIVED)


async def test_missing_signature(cert_dir):
    message = sns_notification("delivery.json")
    del message["Signature"]
    with pytest.raises(AuthFailure) as err:
        await receive(cert_dir, message)
    assert err.value.status == 401


@pytest.mark.parametrize("body", [b"[]", b'{"Type": "Weird"}', b"nope"])
async def test_not_an_sns_message_is_untrusted(cert_dir, body):
    with pytest.raises(PayloadError) as err:
        await receiver(cert_dir).receive({}, body, RECEIVED)
    assert not err.value.trusted


async def test_subscription_confirmation_is_answered_not_fetched(cert_dir, caplog):
    message = fixture("ses", "sns_subscription_confirmation.json")
    message["Timestamp"] = iso(NOW_MS)
    message = sns_signer().sign(message, "2")
    outcome = await receive(cert_dir, message)
    assert outcome.events == []
    assert outcome.reply["subscribe_url"] == message["SubscribeURL"]
    assert outcome.reply["subscription"] == "pending_confirmation"
    assert message["SubscribeURL"] in caplog.text


async def test_forged_subscription_confirmation_is_refused(cert_dir):
    message = fixture("ses", "sns_subscription_confirmation.json")
    message["Timestamp"] = iso(NOW_MS)
    message = sns_signer().sign(message)
    message["SubscribeURL"] = "https://evil.example/confirm"
    with pytest.raises(AuthFailure):
        await receive(cert_dir, message)


async def test_notification_with_non_json_message_is_trusted_payload_error(cert_dir):
    with pytest.raises(PayloadError) as err:
        await receive(cert_dir, sns_notification(record="this is not JSON"))
    assert err.value.trusted and err.value.field == "Message"


def mapped(name: str):
    outcome = parse_ses_record(fixture("ses", name), RECEIVED, sns_message_id="sns-1")
    assert not outcome.problems, outcome.problems
    return outcome


def test_bounce_permanent_is_hard():
    (e,) = mapped("bounce.json").events
    assert e["type"] == "email_bounce" and e["properties"]["bounce_type"] == "hard"
    assert e["contact_id"] == "recipient@example.com"
    assert e["ts"] == 1501893662669
    assert e["id"] == "EXAMPLE7c191be45-e9aedb9a-02f9-4d12-a87d-dd0099a07f8a-000000:Bounce:1501893662669"
    assert e["properties"]["sns_message_id"] == "sns-1"


def test_transient_bounce_with_two_recipients_is_soft_with_per_recipient_ids():
    events = mapped("bounce_transient.json").events
    assert [e["contact_id"] for e in events] == ["one@example.com", "two@example.com"]
    assert {e["properties"]["bounce_type"] for e in events} == {"soft"}
    assert len({e["id"] for e in events}) == 2


def test_complaint_delivery_open_click():
    assert mapped("complaint.json").events[0]["type"] == "spam_report"
    delivery = mapped("delivery.json").events[0]
    assert delivery["type"] == "email_delivered" and delivery["ts"] == 1476919264133
    opened = mapped("open.json").events[0]
    assert opened["type"] == "email_open" and opened["properties"]["ip"] == "192.0.2.1"
    assert "ambiguous_recipient" not in opened["properties"]
    click = mapped("click.json").events[0]
    assert click["type"] == "email_click"
    assert click["properties"]["url"] == "http://docs.aws.amazon.com/ses/latest/DeveloperGuide/send-email-smtp.html"


def test_open_with_several_destinations_is_marked_ambiguous():
    record = fixture("ses", "open.json")
    record["mail"]["destination"] = ["a@x.io", "b@x.io"]
    events = parse_ses_record(record, RECEIVED).events
    assert len(events) == 2 and all(e["properties"]["ambiguous_recipient"] for e in events)


def test_send_is_ignored_and_notification_type_is_understood():
    assert mapped("send.json").ignored == {"ignored_send": 1}
    legacy = fixture("ses", "bounce.json")
    legacy["notificationType"] = legacy.pop("eventType")
    assert mapped_record(legacy).events[0]["type"] == "email_bounce"


def mapped_record(record):
    return parse_ses_record(json.loads(json.dumps(record)), RECEIVED)


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda r: r.pop("eventType"), "eventType"),
        (lambda r: r["mail"].pop("messageId"), "mail.messageId"),
        (lambda r: r.pop("bounce"), "bounce"),
        (lambda r: r["bounce"].update(timestamp="later"), "bounce.timestamp"),
        (lambda r: r["bounce"].update(bouncedRecipients=[]), "bounce.bouncedRecipients"),
        (lambda r: r["bounce"].update(bouncedRecipients=[{"emailAddress": "nope"}]), "bounce.bouncedRecipients[0]"),
    ],
)
def test_bad_records(mutate, field):
    record = fixture("ses", "bounce.json")
    mutate(record)
    outcome = parse_ses_record(record, RECEIVED)
    assert outcome.events == [] and outcome.problems[0].field == field
