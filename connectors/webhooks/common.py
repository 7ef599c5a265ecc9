"""What every webhook receiver shares: typed rejections, the outcome of one request, parsing helpers.

A receiver either raises or returns an :class:`Outcome`:

- :class:`AuthFailure`: the sender could not be authenticated (missing, wrong or stale
  signature, replayed token). Answered 401/403/406 with a reason; counted in
  ``events_rejected{source,reason}`` but never dead-lettered, because the payload is
  not trusted and an anonymous sender must not be able to fill the DLQ topic.
- :class:`PayloadError`: the request as a whole is unusable (not UTF-8, not JSON, wrong
  shape). Answered 400 with the field; dead-lettered when ``trusted`` (the sender was
  authenticated before the payload was read).
- :class:`Outcome`: the events to submit, the per-item problems (dead-lettered, reported in
  the answer) and the counted items that are deliberately not turned into events.

Times are integer epoch milliseconds everywhere.
"""

from __future__ import annotations

import math
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import orjson

from connectors.types import BadInput
from streams.events import event_problem

# An e-mail address is the contact id of ESP events; RFC 5321 caps a path at 256 octets,
# so anything longer is garbage rather than a contact.
MAX_EMAIL_CHARS = 320
MAX_ID_CHARS = 512
# Year 3000: event times beyond it are garbage, and they would overflow 64-bit JSON integers.
MAX_TS_MS = 32_503_680_000_000

_ISO_RE = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|z|[+-]\d{2}:?\d{2})?$")
_FRACTION_RE = re.compile(r"\.(\d+)")


class AuthFailure(BadInput):
    """The sender is not who it claims to be; ``code`` is the low-cardinality metrics reason."""

    def __init__(self, reason: str, *, code: str, status: int = 401, field: str | None = None) -> None:
        super().__init__(reason, field=field, status=status)
        self.code = code


class NotConfigured(BadInput):
    """The vendor has no secret in the settings: unsigned traffic is never accepted (404)."""

    def __init__(self, vendor: str, *settings: str) -> None:
        names = " and ".join(f"LEADPULSE_{name.upper()}" for name in settings)
        super().__init__(f"{vendor} webhooks are not configured (set {names})", status=404)
        self.code = "not_configured"


class PayloadError(BadInput):
    """The whole request body is unusable; dead-lettered when the sender was authenticated."""

    def __init__(
        self,
        reason: str,
        *,
        code: str,
        field: str | None = None,
        status: int = 400,
        trusted: bool = True,
        payload: Any = None,
    ) -> None:
        super().__init__(reason, field=field, status=status)
        self.code = code
        self.trusted = trusted
        self.payload = payload


@dataclass
class ItemProblem:
    """One item of a request that could not become an event (dead-lettered with ``reason``)."""

    index: int | None
    reason: str
    code: str
    field: str | None = None
    payload: Any = None

    def as_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.reason}
        if self.index is not None:
            body["index"] = self.index
        if self.field:
            body["field"] = self.field
        return body


@dataclass
class Outcome:
    """What one authenticated request produced."""

    events: list[dict[str, Any]] = field(default_factory=list)
    problems: list[ItemProblem] = field(default_factory=list)
    # code -> count of items deliberately not turned into events (e.g. SendGrid "processed"):
    # counted in metrics so that nothing disappears silently, not dead-lettered because
    # nothing is wrong with them.
    ignored: dict[str, int] = field(default_factory=dict)
    # Extra fields for the JSON answer (SNS SubscriptionConfirmation returns its SubscribeURL).
    reply: dict[str, Any] = field(default_factory=dict)
    # Called when the broker refused the events (429/503): undoes side effects such as a
    # recorded replay token, so that the vendor's retry of the same request is accepted.
    release: Callable[[], Awaitable[None]] | None = None

    def ignore(self, code: str) -> None:
        self.ignored[code] = self.ignored.get(code, 0) + 1

    def keep(self, mapped: dict[str, Any] | str) -> None:
        """Take a mapper's result: an event dict is kept, a string is the code of an ignored item."""
        if isinstance(mapped, str):
            self.ignore(mapped)
        else:
            self.events.append(mapped)


class ItemRejected(Exception):
    """Raised inside a per-item mapper; the caller turns it into an :class:`ItemProblem`."""

    def __init__(self, reason: str, *, field: str | None = None, code: str = "invalid_event") -> None:
        super().__init__(reason)
        self.reason = reason
        self.field = field
        self.code = code


def header(headers: Mapping[str, str], name: str) -> str | None:
    """Case-insensitive header lookup that also works on plain dicts (unit tests, other servers)."""
    value = headers.get(name)
    if value is None:
        lowered = name.lower()
        for key, item in headers.items():
            if key.lower() == lowered:
                return item
    return value


def decode_text(raw: bytes, *, trusted: bool) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PayloadError(
            f"body is not valid UTF-8 (byte {exc.start})",
            code="not_utf8",
            field="body",
            trusted=trusted,
            payload=raw.decode("utf-8", errors="backslashreplace"),
        ) from None


def decode_json(raw: bytes, *, trusted: bool) -> Any:
    """UTF-8 then JSON; orjson refuses nesting deeper than 1024 levels, so no recursion blow-up."""
    text = decode_text(raw, trusted=trusted)
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise PayloadError(
            f"body is not valid JSON: {exc}", code="invalid_json", field="body", trusted=trusted, payload=text
        ) from None


def require_str(obj: dict[str, Any], key: str, *, path: str | None = None, max_chars: int = MAX_ID_CHARS) -> str:
    value = obj.get(key)
    name = path or key
    if not isinstance(value, str) or not value.strip():
        raise ItemRejected(f"{name}: missing or not a non-empty string", field=name, code="missing_field")
    if len(value) > max_chars:
        raise ItemRejected(f"{name}: longer than {max_chars} characters", field=name, code="invalid_field")
    return value


def email_contact(value: Any, field_name: str) -> str:
    """The contact id of an ESP event: the recipient address, trimmed and lowercased."""
    if not isinstance(value, str) or not value.strip():
        raise ItemRejected(f"{field_name}: missing recipient address", field=field_name, code="missing_field")
    address = value.strip().lower()
    if len(address) > MAX_EMAIL_CHARS or "@" not in address:
        raise ItemRejected(f"{field_name}: not an e-mail address", field=field_name, code="invalid_field")
    return address


def seconds_to_ms(value: Any, field_name: str) -> int:
    """Vendor epoch seconds (int or float, e.g. Mailgun 1521472262.908181) -> epoch ms."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        if isinstance(value, str) and value.strip().replace(".", "", 1).isdigit():
            value = float(value)
        else:
            raise ItemRejected(f"{field_name}: missing or not epoch seconds", field=field_name, code="missing_field")
    seconds = float(value)
    if not math.isfinite(seconds) or not 0 < seconds * 1000 < MAX_TS_MS:
        raise ItemRejected(f"{field_name}: not a plausible epoch time", field=field_name, code="invalid_field")
    return int(round(seconds * 1000))


def iso_to_ms(value: Any, field_name: str) -> int:
    """ISO-8601 (any number of fraction digits, Z or offset; naive means UTC) -> epoch ms."""
    if not isinstance(value, str) or not _ISO_RE.match(value.strip()):
        raise ItemRejected(f"{field_name}: missing or not an ISO-8601 time", field=field_name, code="invalid_field")
    text = value.strip()
    # Postmark sends seven fraction digits (.NET ticks); datetime wants at most six.
    text = _FRACTION_RE.sub(lambda m: "." + m.group(1)[:6].ljust(6, "0"), text, count=1)
    if text[-1] in "Zz":
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ItemRejected(f"{field_name}: not an ISO-8601 time", field=field_name, code="invalid_field") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    ms = int(parsed.timestamp() * 1000)
    if not 0 < ms < MAX_TS_MS:
        raise ItemRejected(f"{field_name}: not a positive epoch time", field=field_name, code="invalid_field")
    return ms


def scalar_dict(value: Any, *, max_keys: int = 50, max_chars: int = 1000) -> dict[str, Any] | None:
    """Keep vendor metadata only when it is a small flat object of scalars (no nesting games)."""
    if not isinstance(value, dict):
        return None
    kept: dict[str, Any] = {}
    for key, item in value.items():
        if len(kept) >= max_keys:
            break
        if isinstance(item, (str, int, float, bool)) or item is None:
            if isinstance(item, str) and len(item) > max_chars:
                item = item[:max_chars]
            kept[str(key)[:200]] = item
    return kept


def short_str(value: Any, max_chars: int = 2000) -> str | None:
    """A vendor string worth keeping (user agent, reason, URL), bounded in size."""
    if isinstance(value, str) and value:
        return value[:max_chars]
    return None


def make_event(
    *,
    event_id: str,
    event_type: str,
    contact_id: str,
    ts: int,
    received_at: int,
    source: str,
    properties: dict[str, Any],
    traits: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Build a normalised event; ``None`` properties are dropped so absent means unknown."""
    event = {
        "id": event_id,
        "type": event_type,
        "contact_id": contact_id,
        "anonymous_id": None,
        "ts": ts,
        "received_at": received_at,
        "source": source,
        "traits": traits or {},
        "properties": {k: v for k, v in properties.items() if v is not None},
    }
    problem = event_problem(event)
    if problem:
        # The mappers validate first; this guards the contract with the stream layer.
        raise ItemRejected(problem, field=problem.split(":", 1)[0], code="invalid_event")
    return event
