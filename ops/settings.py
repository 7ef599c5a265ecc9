"""The one settings model: every knob of leadpulse, read from ``LEADPULSE_*`` and ``.env``.

Built once at start (``Settings()`` or :func:`load_settings`), validated with readable
errors, frozen, and passed down to the collector, the worker and the sinks. Nothing
else in the code base reads the environment.

Durations are written for people ("10s", "4h", "7d") and stored as integer
milliseconds; secrets are ``SecretStr`` so they never appear in logs or reprs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import BeforeValidator, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from rules.durations import parse_duration

DEMO_WRITE_KEY = "demo"

Duration = Annotated[int, BeforeValidator(parse_duration)]


def _parse_write_keys(value: object) -> dict[str, str]:
    """``"k1,k2:sendgrid"`` -> ``{"k1": "segment", "k2": "sendgrid"}``; empty -> the demo key."""
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    text = str(value or "").strip()
    if not text:
        return {DEMO_WRITE_KEY: "segment"}
    keys: dict[str, str] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        key, _, source = item.partition(":")
        if not key:
            raise ValueError(f"empty write key in {item!r}")
        keys[key] = source.strip() or "segment"
    return keys


def _parse_csv(value: object) -> list[str]:
    if isinstance(value, (list, tuple)):
        return [str(v).strip() for v in value if str(v).strip()]
    return [part.strip() for part in str(value or "").split(",") if part.strip()]


class Settings(BaseSettings):
    """All configuration; see the settings table in README.md."""

    model_config = SettingsConfigDict(
        env_prefix="LEADPULSE_", env_file=".env", env_file_encoding="utf-8", extra="ignore", frozen=True
    )

    # --- services ---------------------------------------------------------------
    broker_url: str = Field("", description="Kafka bootstrap servers (host:port,...); empty starts the embedded Tansu broker")
    redis_url: str = Field("", description="redis://host:port/db; empty starts an embedded redis-server")
    rules: str = Field("", description="scoring model YAML file; empty uses the built-in default model")
    data_dir: Path = Field(Path(".leadpulse"), description="worker table state and embedded service files")

    # --- HTTP ---------------------------------------------------------------------
    http_host: str = Field("127.0.0.1", description="address the collector and read API bind to")
    http_port: int = Field(8088, ge=0, le=65535, description="collector and read API port")
    worker_http_port: int = Field(8089, ge=0, le=65535, description="worker /metrics, /healthz, /readyz port (0 = off)")
    write_keys: Annotated[dict[str, str], NoDecode, BeforeValidator(_parse_write_keys)] = Field(
        default_factory=lambda: {DEMO_WRITE_KEY: "segment"},
        description='comma-separated write keys, each optionally "key:source"; "demo" when unset',
    )

    # --- topics and stream ----------------------------------------------------------
    app_id: str = Field("leadpulse", description="faust app id = consumer group of the workers")
    topic_prefix: str = Field("leadpulse", description="topics are <prefix>-events, <prefix>-triggers, <prefix>-dlq")
    partitions: int = Field(4, ge=1, le=1024, description="partitions of the events/triggers topics")
    envelope_linger: Duration = Field(20, description="collector waits this long to pack events per partition (one broker record batch per partition per wait)")
    envelope_max_events: int = Field(500, ge=1, description="most events in one envelope record")
    batch_max: int = Field(1000, ge=1, description="most records the score agent takes per batch")
    batch_within: Duration = Field(5, description="after the first record of a batch, how long the score agent waits for more (0: it takes what is buffered)")
    checkpoint_interval: Duration = Field(1_000, description="how long a changed contact waits before its state is written to the table and Redis (0: after every batch)")
    lateness: Duration = Field(10_000, description="how late an event may arrive and still veto handoff triggers (mql, route_to_sales wait this long; alerts do not)")
    late_limit: Duration = Field(30 * 86_400_000, description="events older than this go to the DLQ")
    future_skew: Duration = Field(300_000, description="events further in the future than this go to the DLQ")
    dedupe_window: Duration = Field(7 * 86_400_000, description="how long event ids are remembered for dedupe")
    session_timeout: Duration = Field(6_000, description="consumer group session timeout")
    worker_instance_id: str = Field("", description="static group membership id of this worker (a restart reclaims its partitions at once)")
    standby_replicas: int = Field(0, ge=0, le=8, description="standby copies of each contacts-table partition kept by other workers (faster takeover, but every worker also reads the others' changelogs)")
    bot_user_agents: str = Field("", description="regex of user agents counted as bots (empty: the built-in list)")
    scanner_click_window: Duration = Field(5_000, description="a click this soon after delivery is a link scanner")
    scanner_burst: int = Field(4, ge=2, description="this many clicks within 2 s by one contact is a link scanner")
    fetch_max_wait: Duration = Field(100, description="longest a worker's fetch waits for data (bounds latency on Tansu)")
    max_event_bytes: int = Field(32 * 1024, description="largest accepted event (HTTP 413 above)")
    max_batch_bytes: int = Field(500 * 1024, description="largest accepted batch request (HTTP 413 above)")
    max_pending_events: int = Field(50_000, ge=1, description="collector backpressure bound: 429 above it")
    produce_timeout: Duration = Field(10_000, description="collector gives up waiting for a broker ack (503)")

    # --- inbound secrets ------------------------------------------------------------
    sendgrid_public_key: SecretStr | None = Field(None, description="SendGrid Event Webhook ECDSA public key (base64 DER or PEM)")
    mailgun_signing_key: SecretStr | None = Field(None, description="Mailgun webhook signing key")
    postmark_webhook_user: str | None = Field(None, description="Basic-auth user expected on Postmark webhooks")
    postmark_webhook_password: SecretStr | None = Field(None, description="Basic-auth password expected on Postmark webhooks")
    ses_cert_dir: Path | None = Field(None, description="directory of pinned SNS signing certificates (PEM)")
    ses_topic_arns: Annotated[list[str], NoDecode, BeforeValidator(_parse_csv)] = Field(
        default_factory=list, description="SNS TopicArns accepted on /webhooks/ses (empty: any topic signed by a pinned certificate)"
    )
    webhook_tolerance: Duration = Field(300_000, description="largest clock difference accepted on signed ESP webhooks")
    sns_max_age: Duration = Field(3_600_000, description="oldest SNS message Timestamp accepted (SNS retries resend it)")

    # --- outbound -------------------------------------------------------------------
    slack_webhook_url: SecretStr | None = Field(None, description="Slack incoming-webhook URL for hot-lead alerts")
    webhook_urls: Annotated[list[str], NoDecode, BeforeValidator(_parse_csv)] = Field(
        default_factory=list, description="comma-separated URLs that receive signed trigger webhooks"
    )
    webhook_secret: SecretStr | None = Field(None, description='Standard Webhooks secret, "whsec_<base64>"')
    slack_min_interval: Duration = Field(1_000, description="least time between two Slack messages (Slack allows ~1/s per webhook)")
    trigger_stream_maxlen: int = Field(100_000, ge=1, description="approximate MAXLEN of the Redis trigger stream")
    public_url: str = Field("", description="base URL used in links to contact pages (default http://host:port)")

    # --- logging --------------------------------------------------------------------
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING, ERROR")
    log_json: bool = Field(False, description="one JSON object per log line")

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        upper = value.upper()
        if upper not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return upper

    @field_validator("rules")
    @classmethod
    def _rules_file_exists(cls, value: str) -> str:
        if value and not Path(value).is_file():
            raise ValueError(f"no such scoring model file: {value}")
        return value

    @property
    def events_topic(self) -> str:
        return f"{self.topic_prefix}-events"

    @property
    def triggers_topic(self) -> str:
        return f"{self.topic_prefix}-triggers"

    @property
    def dlq_topic(self) -> str:
        return f"{self.topic_prefix}-dlq"

    @property
    def base_url(self) -> str:
        return self.public_url or f"http://{self.http_host}:{self.http_port}"


class SettingsError(SystemExit):
    """Raised with a readable, multi-line message when the environment is invalid."""


def load_settings(**overrides: object) -> Settings:
    """Build the settings once, turning validation errors into one readable message."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = ["invalid leadpulse settings:"]
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"]) or "?"
            lines.append(f"  LEADPULSE_{field.upper()}: {err['msg']} (got {err.get('input')!r})")
        raise SettingsError("\n".join(lines)) from None


def settings_env(settings: Settings) -> dict[str, str]:
    """The ``LEADPULSE_*`` variables that rebuild ``settings`` in a child process."""
    env: dict[str, str] = {}
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        elif isinstance(value, dict):
            value = ",".join(f"{k}:{v}" for k, v in value.items())
        elif isinstance(value, list):
            value = ",".join(value)
        elif isinstance(value, bool):
            value = "true" if value else "false"
        env[f"LEADPULSE_{name.upper()}"] = str(value)
    return env
