"""Amazon SES event publishing via SNS: SNS signature verification with pinned certificates.

SNS posts a JSON document (``Content-Type: text/plain``) to the HTTPS subscription. Like Mailgun,
the signature is inside the body, so the JSON is parsed (size- and depth-bounded) before the
sender is known; nothing is dead-lettered before the signature checks out.

Verification, per the AWS guide "Verifying the signatures of Amazon SNS messages":

1. ``SigningCertURL`` must be ``https://sns.<region>.amazonaws.com[.cn]/SimpleNotificationService-<hash>.pem``
   (no port, user info, query or fragment).
2. There is no internet here, so certificates are never downloaded: the URL's file name must be
   present in ``ses_cert_dir`` (operators pin the PEM files they trust), and the certificate
   must be within its validity period.
3. The canonical string is ``"<Name>\\n<value>\\n"`` for, in this order, Message, MessageId,
   Subject (only when present), Timestamp, TopicArn, Type for a ``Notification``; Message,
   MessageId, SubscribeURL, Timestamp, Token, TopicArn, Type for ``SubscriptionConfirmation`` and
   ``UnsubscribeConfirmation``.
4. ``Signature`` (base64) is RSA PKCS#1 v1.5 over it: SHA1 for ``SignatureVersion`` "1",
   SHA256 for "2".
5. ``Timestamp`` must be at most ``max_age_ms`` old (default 1 h: SNS retries a delivery with
   the same signed message for a while) and not more than the webhook tolerance in the future;
   ``TopicArn`` must be in ``topic_arns`` when that allow-list is set.

``SubscriptionConfirmation``: the SubscribeURL is NOT fetched (no internet, and fetching a URL on
an inbound request is an SSRF risk anyway). It is logged at WARNING and returned in the JSON
answer (``subscribe_url``) with 200 so an operator can confirm the subscription by hand.

``Notification``: ``Message`` is the SES event record (``eventType``, or ``notificationType`` for
identity feedback notifications). Mapping (``contact_id`` = recipient address lowercased):

- Bounce -> email_bounce per ``bouncedRecipients``; ``bounce_type`` "hard" when ``bounceType``
  is Permanent, "soft" for Transient/Undetermined.
- Complaint -> spam_report per ``complainedRecipients``.
- Delivery -> email_delivered per ``delivery.recipients``.
- Open / Click -> email_open / email_click (``url`` = ``click.link``) per ``mail.destination``;
  SES cannot tell which of several recipients opened, so with more than one destination each
  gets the event with ``ambiguous_recipient`` true (scoring can ignore those).
- Send, Reject, DeliveryDelay, Rendering Failure, Subscription -> counted as ignored.

``id`` = ``mail.messageId:eventType:<event time ms>``, plus ``:recipient`` when the record names
several recipients, so retries of one SNS message map to identical ids.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from connectors.webhooks.common import (
    AuthFailure,
    ItemProblem,
    ItemRejected,
    Outcome,
    PayloadError,
    decode_json,
    email_contact,
    header,
    iso_to_ms,
    make_event,
    short_str,
)

log = logging.getLogger(__name__)

SOURCE = "ses"
DEFAULT_MAX_AGE_MS = 60 * 60_000
DEFAULT_FUTURE_TOLERANCE_MS = 5 * 60_000

_HOST_RE = re.compile(r"^sns\.[a-z]{2}(-gov)?-[a-z]+-\d+\.amazonaws\.com(\.cn)?$")
_PATH_RE = re.compile(r"^/(SimpleNotificationService-[A-Za-z0-9]{1,128}\.pem)$")

_NOTIFICATION_FIELDS = ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type")
_CONFIRMATION_FIELDS = ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type")
_CONFIRMATION_TYPES = ("SubscriptionConfirmation", "UnsubscribeConfirmation")
_HASHES = {"1": hashes.SHA1, "2": hashes.SHA256}

_TYPE = {
    "Bounce": "email_bounce",
    "Complaint": "spam_report",
    "Delivery": "email_delivered",
    "Open": "email_open",
    "Click": "email_click",
}


def cert_file_name(url: Any) -> str:
    """The pinned file name for a SigningCertURL, or AuthFailure if the URL is not an SNS one."""
    if not isinstance(url, str) or not url:
        raise AuthFailure("SigningCertURL: missing", code="missing_signature", status=401, field="SigningCertURL")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise AuthFailure("SigningCertURL: not a URL", code="bad_cert_url", status=403, field="SigningCertURL") from None
    match = _PATH_RE.match(parts.path)
    if (
        parts.scheme != "https"
        or port not in (None, 443)
        or parts.username is not None
        or parts.password is not None
        or parts.query
        or parts.fragment
        or not parts.hostname
        or not _HOST_RE.match(parts.hostname)
        or match is None
    ):
        raise AuthFailure("SigningCertURL: not an Amazon SNS certificate URL", code="bad_cert_url", status=403, field="SigningCertURL")
    return match.group(1)


class PinnedCertificates:
    """SNS signing certificates an operator placed in a directory, looked up by file name."""

    def __init__(self, cert_dir: Path, now_ms: Callable[[], int]) -> None:
        self._dir = Path(cert_dir)
        self._now = now_ms
        self._cache: dict[str, x509.Certificate] = {}

    def public_key(self, file_name: str) -> rsa.RSAPublicKey:
        cert = self._cache.get(file_name)
        if cert is None:
            path = self._dir / file_name
            # file_name matched _PATH_RE, so it cannot climb out of the directory.
            if not path.is_file():
                raise AuthFailure(
                    f"SigningCertURL: certificate {file_name} is not pinned in ses_cert_dir",
                    code="unpinned_cert",
                    status=403,
                    field="SigningCertURL",
                )
            try:
                cert = x509.load_pem_x509_certificate(path.read_bytes())
            except ValueError:
                log.error("pinned SNS certificate %s is not a PEM certificate", path)
                raise AuthFailure("pinned certificate is unreadable", code="unpinned_cert", status=403, field="SigningCertURL") from None
            self._cache[file_name] = cert
        now_s = self._now() / 1000
        if not (cert.not_valid_before_utc.timestamp() <= now_s <= cert.not_valid_after_utc.timestamp()):
            raise AuthFailure("signing certificate is expired or not yet valid", code="expired_cert", status=403, field="SigningCertURL")
        key = cert.public_key()
        if not isinstance(key, rsa.RSAPublicKey):
            raise AuthFailure("signing certificate does not hold an RSA key", code="unpinned_cert", status=403, field="SigningCertURL")
        return key


def canonical_string(message: Mapping[str, Any]) -> bytes:
    """The bytes SNS signed, per message type; raises PayloadError when a signed field is missing."""
    kind = message.get("Type")
    fields = _NOTIFICATION_FIELDS if kind == "Notification" else _CONFIRMATION_FIELDS
    parts: list[str] = []
    for name in fields:
        value = message.get(name)
        if value is None and name == "Subject":
            continue
        if not isinstance(value, str):
            raise PayloadError(f"{name}: missing from the SNS message", code="missing_field", field=name, trusted=False)
        parts.append(f"{name}\n{value}\n")
    return "".join(parts).encode("utf-8")


class SesReceiver:
    """Verifies SNS messages and maps the SES events they carry."""

    source = SOURCE
    content_types = ("text/plain", "application/json")

    def __init__(
        self,
        cert_dir: Path,
        *,
        now_ms: Callable[[], int],
        max_age_ms: int = DEFAULT_MAX_AGE_MS,
        future_tolerance_ms: int = DEFAULT_FUTURE_TOLERANCE_MS,
        topic_arns: Iterable[str] | None = None,
    ) -> None:
        self._certs = PinnedCertificates(cert_dir, now_ms)
        self._now = now_ms
        self._max_age = max_age_ms
        self._future = future_tolerance_ms
        self._topics = frozenset(topic_arns or ())

    def verify(self, message: Any, headers: Mapping[str, str]) -> None:
        if not isinstance(message, dict):
            raise PayloadError("body must be an SNS message (JSON object)", code="invalid_payload", field="body", trusted=False)
        kind = message.get("Type")
        if kind != "Notification" and kind not in _CONFIRMATION_TYPES:
            raise PayloadError(f"Type: unsupported SNS message type {str(kind)[:40]!r}", code="invalid_payload", field="Type", trusted=False)
        announced = header(headers, "x-amz-sns-message-type")
        if announced is not None and announced != kind:
            raise PayloadError("x-amz-sns-message-type does not match Type", code="invalid_payload", field="Type", trusted=False)
        signature_b64, version = message.get("Signature"), message.get("SignatureVersion")
        if not isinstance(signature_b64, str) or not signature_b64:
            raise AuthFailure("Signature: missing", code="missing_signature", status=401, field="Signature")
        hash_cls = _HASHES.get(str(version))
        if hash_cls is None:
            raise AuthFailure("SignatureVersion: must be 1 or 2", code="bad_signature", status=403, field="SignatureVersion")
        key = self._certs.public_key(cert_file_name(message.get("SigningCertURL")))
        signed = canonical_string(message)
        try:
            signature = base64.b64decode(signature_b64, validate=True)
            key.verify(signature, signed, padding.PKCS1v15(), hash_cls())
        except (InvalidSignature, binascii.Error, ValueError):
            raise AuthFailure("signature does not match", code="bad_signature", status=403, field="Signature") from None
        try:
            sent_at = iso_to_ms(message.get("Timestamp"), "Timestamp")
        except ItemRejected as exc:
            raise AuthFailure(exc.reason, code="bad_timestamp", status=403, field="Timestamp") from None
        now = self._now()
        if now - sent_at > self._max_age or sent_at - now > self._future:
            raise AuthFailure("Timestamp outside the allowed window", code="stale_timestamp", status=403, field="Timestamp")
        if self._topics and message.get("TopicArn") not in self._topics:
            raise AuthFailure("TopicArn is not an allowed topic", code="unexpected_topic", status=403, field="TopicArn")

    async def receive(self, headers: Mapping[str, str], raw: bytes, received_at: int) -> Outcome:
        message = decode_json(raw, trusted=False)
        self.verify(message, headers)
        kind = message["Type"]
        if kind in _CONFIRMATION_TYPES:
            return confirmation_outcome(message)
        try:
            record = decode_json(message["Message"].encode("utf-8"), trusted=True)
        except PayloadError as exc:
            raise PayloadError(
                f"Message: {exc.reason}", code=exc.code, field="Message", payload=message
            ) from None
        return parse_ses_record(record, received_at, sns_message_id=message.get("MessageId"))


def confirmation_outcome(message: Mapping[str, Any]) -> Outcome:
    url = message.get("SubscribeURL")
    topic = message.get("TopicArn")
    if message["Type"] == "SubscriptionConfirmation":
        # Never fetched from here: an operator confirms by opening the URL (or with
        # `aws sns confirm-subscription --token`), which also keeps this handler SSRF-free.
        log.warning("SNS subscription to %s awaits confirmation: open %s", topic, url)
        reply = {"subscription": "pending_confirmation", "topic_arn": topic, "subscribe_url": url}
    else:
        log.warning("SNS subscription to %s was removed (UnsubscribeConfirmation); resubscribe at %s", topic, url)
        reply = {"subscription": "unsubscribed", "topic_arn": topic, "subscribe_url": url}
    return Outcome(reply=reply)


def parse_ses_record(record: Any, received_at: int, *, sns_message_id: Any = None) -> Outcome:
    if not isinstance(record, dict):
        raise PayloadError("Message: not an SES event record", code="invalid_payload", field="Message", payload=record)
    outcome = Outcome()
    name = record.get("eventType") or record.get("notificationType")
    if not isinstance(name, str) or not name:
        outcome.problems.append(ItemProblem(None, "eventType: missing", "missing_field", "eventType", record))
        return outcome
    if name not in _TYPE:
        outcome.ignore("ignored_" + re.sub(r"[^a-z]+", "_", name.lower())[:40])
        return outcome
    mail = record.get("mail")
    message_id = mail.get("messageId") if isinstance(mail, dict) else None
    if not isinstance(message_id, str) or not message_id:
        outcome.problems.append(ItemProblem(None, "mail.messageId: missing", "missing_field", "mail.messageId", record))
        return outcome
    detail_key = name.lower()
    detail = record.get(detail_key)
    if not isinstance(detail, dict):
        outcome.problems.append(ItemProblem(None, f"{detail_key}: missing", "missing_field", detail_key, record))
        return outcome
    try:
        ts = iso_to_ms(detail.get("timestamp"), f"{detail_key}.timestamp")
    except ItemRejected as exc:
        outcome.problems.append(ItemProblem(None, exc.reason, exc.code, exc.field, record))
        return outcome

    properties: dict[str, Any] = {"esp_event": name, "ses_message_id": message_id, "sns_message_id": short_str(sns_message_id, 128)}
    if name == "Bounce":
        recipients = [(r.get("emailAddress") if isinstance(r, dict) else None) for r in _list(detail.get("bouncedRecipients"))]
        properties.update(
            {
                "bounce_type": "hard" if detail.get("bounceType") == "Permanent" else "soft",
                "ses_bounce_type": short_str(detail.get("bounceType"), 32),
                "bounce_sub_type": short_str(detail.get("bounceSubType"), 64),
            }
        )
        path = "bounce.bouncedRecipients"
    elif name == "Complaint":
        recipients = [(r.get("emailAddress") if isinstance(r, dict) else None) for r in _list(detail.get("complainedRecipients"))]
        properties["complaint_feedback_type"] = short_str(detail.get("complaintFeedbackType"), 64)
        path = "complaint.complainedRecipients"
    elif name == "Delivery":
        recipients = list(_list(detail.get("recipients")))
        properties["smtp_response"] = short_str(detail.get("smtpResponse"), 500)
        path = "delivery.recipients"
    else:  # Open / Click: SES only knows the message, not which recipient engaged.
        recipients = list(_list(mail.get("destination")))
        properties["ip"] = short_str(detail.get("ipAddress"), 64)
        properties["user_agent"] = short_str(detail.get("userAgent"))
        if name == "Click":
            properties["url"] = short_str(detail.get("link"), 4000)
        if len(recipients) > 1:
            properties["ambiguous_recipient"] = True
        path = "mail.destination"
    if not recipients:
        outcome.problems.append(ItemProblem(None, f"{path}: no recipients", "missing_field", path, record))
        return outcome
    several = len(recipients) > 1
    for index, address in enumerate(recipients[:50]):
        try:
            contact_id = email_contact(address, f"{path}[{index}]")
            event_id = f"{message_id}:{name}:{ts}" + (f":{contact_id}" if several else "")
            outcome.events.append(
                make_event(
                    event_id=event_id,
                    event_type=_TYPE[name],
                    contact_id=contact_id,
                    ts=ts,
                    received_at=received_at,
                    source=SOURCE,
                    properties=dict(properties),
                )
            )
        except ItemRejected as exc:
            outcome.problems.append(ItemProblem(index, exc.reason, exc.code, exc.field, record))
    return outcome


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []
