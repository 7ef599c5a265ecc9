"""Machine traffic that is counted but never scored.

- ``user_agent``: crawlers, headless browsers and HTTP libraries, by user-agent pattern;
- ``machine_open``: email opens the ESP marks as machine opens (Apple Mail Privacy
  Protection pre-fetches every image, so its opens say nothing about the reader);
- ``link_scanner``: security gateways that click links for malware checks: a click within
  ``scanner_window_ms`` of the message's delivery, or ``scanner_burst`` clicks by one
  contact within ``burst_window_ms`` (people do not click four links in two seconds).

The per-contact memory this needs (recent deliveries and click times) lives in the
contact's stream record, bounded to a few entries.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

DEFAULT_BOT_AGENTS = (
    r"bot\b|crawler|spider|slurp|headless|phantomjs|python-requests|python-urllib|curl/|wget/|"
    r"go-http-client|java/|okhttp|axios/|libwww|scrapy|facebookexternalhit|preview"
)
MAX_DELIVERIES = 16
MAX_CLICKS = 16


@dataclass(frozen=True)
class BotRules:
    user_agents: str = DEFAULT_BOT_AGENTS
    scanner_window_ms: int = 5_000
    scanner_burst: int = 4
    burst_window_ms: int = 2_000
    _pattern: re.Pattern = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_pattern", re.compile(self.user_agents, re.IGNORECASE) if self.user_agents else None)

    def classify(self, event: dict[str, Any], memory: dict[str, Any]) -> str | None:
        """The bot kind of ``event`` or None; updates ``memory`` (the record's bot state)."""
        props = event.get("properties") or {}
        agent = props.get("user_agent") or (event.get("context") or {}).get("user_agent")
        if agent and self._pattern is not None and self._pattern.search(str(agent)):
            return "user_agent"
        kind = event["type"]
        if kind == "email_delivered":
            message = _message_key(props)
            if message:
                deliveries = memory.setdefault("d", {})
                deliveries[message] = event["ts"]
                if len(deliveries) > MAX_DELIVERIES:
                    del deliveries[min(deliveries, key=deliveries.__getitem__)]
            return None
        if kind == "email_open" and (props.get("machine_open") is True):
            return "machine_open"
        if kind == "email_click":
            if props.get("machine_click") is True:
                return "link_scanner"
            ts = event["ts"]
            delivered = (memory.get("d") or {}).get(_message_key(props) or "")
            if delivered is not None and 0 <= ts - delivered <= self.scanner_window_ms:
                return "link_scanner"
            clicks = [t for t in memory.get("c", []) if abs(ts - t) <= self.burst_window_ms]
            clicks.append(ts)
            memory["c"] = clicks[-MAX_CLICKS:]
            if len(clicks) >= self.scanner_burst:
                return "link_scanner"
        return None


def _message_key(props: dict[str, Any]) -> str | None:
    value = props.get("message_id") or props.get("sg_message_id")
    return str(value) if value else None


# Last: run the compiled twin of this module when it was built from this exact file (rules/native.py).
from rules.native import adopt  # noqa: E402

adopt(globals())
