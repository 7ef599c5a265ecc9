"""Interfaces between the HTTP edge and the broker: what a route hands its events to.

Routes (Segment API, ESP webhooks, CRM) validate and normalise; then they call an
:class:`Intake`, which answers only once the broker has acknowledged every event
(the durability contract in DESIGN.md section 6). Errors map to HTTP answers:
:class:`BadInput` -> 400/401/413 with a reason, :class:`Backpressure` -> 429 with
Retry-After, :class:`BrokerUnavailable` -> 503 with Retry-After.
"""

from __future__ import annotations

from typing import Any, Protocol


class BadInput(Exception):
    """The sender's fault: answered with ``status`` and a JSON reason naming the field."""

    def __init__(self, reason: str, *, field: str | None = None, status: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.field = field
        self.status = status

    def as_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"success": False, "error": self.reason}
        if self.field:
            body["field"] = self.field
        return body


class Backpressure(Exception):
    """Too much is in flight; the sender should retry after ``retry_after`` seconds."""

    def __init__(self, retry_after: int = 1) -> None:
        super().__init__(f"collector is busy, retry after {retry_after}s")
        self.retry_after = retry_after


class BrokerUnavailable(Exception):
    """The broker did not acknowledge in time; nothing was accepted."""

    def __init__(self, detail: str, retry_after: int = 5) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class Intake(Protocol):
    """Where HTTP routes deliver normalised events (see ``streams.events``)."""

    async def submit(self, events: list[dict[str, Any]]) -> None:
        """Resolve after the broker acknowledged all ``events``; raise Backpressure/BrokerUnavailable."""

    async def dead_letter(self, payload: Any, reason: str, source: str) -> None:
        """Record a rejected input with its reason on the DLQ topic (best effort, never raises)."""
