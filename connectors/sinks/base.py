"""The sink interface: a sink takes batches of trigger dicts (DESIGN.md section 5).

A sink's ``write`` delivers one batch or raises; retries, backoff, dead-lettering
and idempotency by ``trigger_id`` are the delivery framework's job, not each sink's.
"""

from __future__ import annotations

from typing import Any, Protocol


class Sink(Protocol):
    name: str

    async def write(self, triggers: list[dict[str, Any]]) -> None:
        """Deliver every trigger in ``triggers`` or raise; may be called again with the same batch."""

    async def close(self) -> None:
        """Release connections; called once at shutdown after the last write."""
