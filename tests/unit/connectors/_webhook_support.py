"""Test support for the webhook connectors: vendor fixtures, generated keys and signers, a fake Intake.

Keys are generated per test session (EC P-256 for SendGrid, RSA + a self-signed certificate for
SNS) and the fixtures in tests/fixtures/<vendor>/ are signed at test time, exactly the way each
vendor signs them.
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import hashlib
import hmac
import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import orjson
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from connectors.types import Backpressure, BrokerUnavailable
from connectors.webhooks.ses import canonical_string
from ops.metrics import Metrics
from ops.settings import Settings

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"

# A fixed "now" for every test: 2024-05-01T12:00:00Z.
NOW_MS = 1_714_564_800_000
CERT_NAME = "SimpleNotificationService-f3ecfb7224c7233fe7bb5f59f96de52f.pem"
CERT_URL = f"https://sns.us-west-2.amazonaws.com/{CERT_NAME}"
MAILGUN_KEY = "key-3ax6xnjp29jd6fds4gc373sgvjxteol0"
POSTMARK_USER, POSTMARK_PASSWORD = "postmark", "s3cret-pässword"


def fixture(vendor: str, name: str) -> Any:
    return json.loads((FIXTURES / vendor / name).read_text(encoding="utf-8"))


def fixture_bytes(vendor: str, name: str) -> bytes:
    return (FIXTURES / vendor / name).read_bytes()


# --- SendGrid ---------------------------------------------------------------------------


@lru_cache(maxsize=1)
def sendgrid_private_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def sendgrid_public_key_b64() -> str:
    """The key as the SendGrid UI shows it: base64 of the DER SubjectPublicKeyInfo."""
    der = sendgrid_private_key().public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode()


def sendgrid_public_key_pem() -> str:
    return (
        sendgrid_private_key()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def sendgrid_headers(body: bytes, timestamp_s: int | None = None, key: ec.EllipticCurvePrivateKey | None = None) -> dict[str, str]:
    timestamp = str(NOW_MS // 1000 if timestamp_s is None else timestamp_s)
    signature = (key or sendgrid_private_key()).sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    return {
        "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
        "X-Twilio-Email-Event-Webhook-Timestamp": timestamp,
        "Content-Type": "application/json",
    }


# --- Mailgun ----------------------------------------------------------------------------


def mailgun_signed(name: str, *, timestamp_s: int | None = None, token: str | None = None, key: str = MAILGUN_KEY) -> dict[str, Any]:
    """A Mailgun fixture with a fresh signature block, as Mailgun signs it."""
    body = fixture("mailgun", name)
    timestamp = str(NOW_MS // 1000 if timestamp_s is None else timestamp_s)
    token = token or hashlib.sha256(f"{name}{timestamp}".encode()).hexdigest()[:50]
    signature = hmac.new(key.encode(), (timestamp + token).encode(), hashlib.sha256).hexdigest()
    body["signature"] = {"timestamp": timestamp, "token": token, "signature": signature}
    return body


# --- Postmark ---------------------------------------------------------------------------


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}", "Content-Type": "application/json"}


# --- SNS --------------------------------------------------------------------------------


@dataclass
class SnsSigner:
    key: rsa.RSAPrivateKey
    cert_pem: bytes

    def sign(self, message: dict[str, Any], version: str = "1") -> dict[str, Any]:
        message = dict(message)
        message["SignatureVersion"] = version
        algorithm = hashes.SHA1() if version == "1" else hashes.SHA256()
        signature = self.key.sign(canonical_string(message), padding.PKCS1v15(), algorithm)
        message["Signature"] = base64.b64encode(signature).decode()
        return message


@lru_cache(maxsize=1)
def sns_signer() -> SnsSigner:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
    now = dt.datetime.fromtimestamp(NOW_MS / 1000, tz=dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=30))
        .not_valid_after(now + dt.timedelta(days=365))
        .sign(key, hashes.SHA256())
    )
    return SnsSigner(key, cert.public_bytes(serialization.Encoding.PEM))


def sns_notification(record_name: str | None = None, *, record: Any = None, version: str = "1", **overrides: Any) -> dict[str, Any]:
    """An SNS Notification carrying an SES event record, signed with the test certificate."""
    message = fixture("ses", "sns_notification.json")
    if record is None:
        record = fixture("ses", record_name) if record_name else {}
    message["Message"] = record if isinstance(record, str) else json.dumps(record)
    message["Timestamp"] = iso(NOW_MS - 1000)
    message.update(overrides)
    return sns_signer().sign(message, version)


def iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


# --- Intake, settings, metrics ----------------------------------------------------------


@dataclass
class FakeIntake:
    """In-memory Intake: records submissions and DLQ records; can be told to refuse."""

    submitted: list[dict[str, Any]] = field(default_factory=list)
    dead: list[tuple[Any, str, str]] = field(default_factory=list)
    fail_with: Exception | None = None

    async def submit(self, events: list[dict[str, Any]]) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        # The broker sees bytes: prove every event survives orjson.
        self.submitted.extend(orjson.loads(orjson.dumps(copy.deepcopy(events))))

    async def dead_letter(self, payload: Any, reason: str, source: str) -> None:
        orjson.dumps(payload, default=str)
        self.dead.append((payload, reason, source))


def backpressure() -> Exception:
    return Backpressure(retry_after=2)


def broker_down() -> Exception:
    return BrokerUnavailable("no ack within 10s", retry_after=7)


def make_settings(cert_dir: Path | None = None, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "_env_file": None,
        "sendgrid_public_key": sendgrid_public_key_b64(),
        "mailgun_signing_key": MAILGUN_KEY,
        "postmark_webhook_user": POSTMARK_USER,
        "postmark_webhook_password": POSTMARK_PASSWORD,
        "ses_cert_dir": cert_dir,
        "write_keys": "crm-key:hubspot,plain-key",
    }
    values.update(overrides)
    return Settings(**values)


def write_cert_dir(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CERT_NAME).write_bytes(sns_signer().cert_pem)
    return directory


def counter(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0
