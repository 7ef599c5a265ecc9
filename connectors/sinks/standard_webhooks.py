"""Standard Webhooks signing and verification (https://www.standardwebhooks.com).

This module owns the signature scheme of leadpulse's outbound webhooks, for the
sender (:func:`sign`, :func:`webhook_headers`) and for anyone writing a receiver
(:func:`verify`). Every request carries three headers:

* ``webhook-id``: the trigger_id; the same on every retry, so dedupe on it;
* ``webhook-timestamp``: integer seconds since the epoch of this attempt;
* ``webhook-signature``: ``v1,<base64 HMAC-SHA256>`` over ``f"{id}.{timestamp}.{body}"``
  keyed with the base64-decoded part of the ``whsec_...`` secret. Several
  space-separated signatures may appear (secret rotation); one match is enough.

A receiver verifies on the raw body, before parsing it:

>>> secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
>>> body = b'{"test": 2432232314}'
>>> headers = webhook_headers(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body)
>>> headers["webhook-signature"]
'v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE='
>>> verify(secret, headers, body, now_s=1614265330 + 10)   # returns quietly when valid
>>> verify(secret, headers, body + b" ", now_s=1614265330)
Traceback (most recent call last):
...
connectors.sinks.standard_webhooks.WebhookVerificationError: no matching signature: the body or the secret differs
>>> verify(secret, headers, body, now_s=1614265330 + 3600)
Traceback (most recent call last):
...
connectors.sinks.standard_webhooks.WebhookVerificationError: timestamp too old: 3600s outside the 300s tolerance

The example above is the published test vector of the specification, so a
receiver that reproduces it is compatible with the reference libraries.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Mapping

SECRET_PREFIX = "whsec_"
SIGNATURE_VERSION = "v1"


class WebhookVerificationError(ValueError):
    """The request is not an authentic, fresh webhook; the message says which check failed."""


def decode_secret(secret: str) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret (the prefix is optional, as in the reference libraries)."""
    raw = secret[len(SECRET_PREFIX):] if secret.startswith(SECRET_PREFIX) else secret
    try:
        key = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("webhook secret must be 'whsec_' followed by base64") from exc
    if not key:
        raise ValueError("webhook secret is empty")
    return key


def _as_bytes(body: bytes | str) -> bytes:
    return body.encode("utf-8") if isinstance(body, str) else body


def sign(secret: str | bytes, msg_id: str, timestamp_s: int, body: bytes | str) -> str:
    """``"v1,<base64 HMAC-SHA256>"`` of ``f"{msg_id}.{timestamp_s}.{body}"``.

    ``secret`` is the ``whsec_`` string or the already-decoded key bytes.
    """
    key = secret if isinstance(secret, bytes) else decode_secret(secret)
    content = f"{msg_id}.{int(timestamp_s)}.".encode() + _as_bytes(body)
    digest = hmac.new(key, content, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode()}"


def webhook_headers(secret: str | bytes | None, msg_id: str, timestamp_s: int, body: bytes | str) -> dict[str, str]:
    """The three Standard Webhooks headers for one attempt (no signature without a secret)."""
    headers = {"webhook-id": msg_id, "webhook-timestamp": str(int(timestamp_s))}
    if secret:
        headers["webhook-signature"] = sign(secret, msg_id, timestamp_s, body)
    return headers


def _header(headers: Mapping[str, str], name: str) -> str:
    value = headers.get(name)
    if value is None:
        # Plain dicts are case-sensitive; HTTP header names are not.
        lowered = {str(k).lower(): v for k, v in headers.items()}
        value = lowered.get(name)
    if not value:
        raise WebhookVerificationError(f"missing header {name}")
    return value


def verify(
    secret: str | bytes,
    headers: Mapping[str, str],
    body: bytes | str,
    *,
    tolerance_s: int = 300,
    now_s: float | None = None,
) -> None:
    """Check a received webhook; raise :class:`WebhookVerificationError` saying what is wrong.

    ``headers`` is any mapping (aiohttp's ``request.headers``, a dict, ...); ``body``
    the raw request body. The timestamp must be within ``tolerance_s`` of now in
    either direction, which bounds replays of a captured request.
    """
    key = secret if isinstance(secret, bytes) else decode_secret(secret)
    msg_id = _header(headers, "webhook-id")
    raw_ts = _header(headers, "webhook-timestamp")
    signatures = _header(headers, "webhook-signature")
    try:
        timestamp = int(raw_ts)
    except ValueError:
        raise WebhookVerificationError(f"webhook-timestamp is not integer seconds: {raw_ts!r}") from None
    now = int(time.time() if now_s is None else now_s)
    if timestamp < now - tolerance_s:
        raise WebhookVerificationError(f"timestamp too old: {now - timestamp}s outside the {tolerance_s}s tolerance")
    if timestamp > now + tolerance_s:
        raise WebhookVerificationError(f"timestamp in the future: {timestamp - now}s ahead, tolerance {tolerance_s}s")
    expected = sign(key, msg_id, timestamp, body).split(",", 1)[1].encode()
    seen_v1 = False
    for candidate in signatures.split():
        version, _, value = candidate.partition(",")
        if version != SIGNATURE_VERSION:
            # Other schemes (v1a asymmetric) may sit next to ours; they are not ours to check.
            continue
        seen_v1 = True
        if hmac.compare_digest(value.encode(), expected):
            return
    if not seen_v1:
        raise WebhookVerificationError("no v1 signature in webhook-signature")
    raise WebhookVerificationError("no matching signature: the body or the secret differs")
