"""Slack alerts for SDRs through an incoming webhook, with Block Kit messages.

This module owns :class:`SlackSink`: which trigger types alert (hot_lead, mql,
route_to_sales and sla_breach by default), what a message looks like (who, company,
title, score and band with the previous score, top reasons, a button to the
contact page, and how to accept or reject the lead), and Slack's rate limit.

Slack allows about one message per second per incoming webhook and answers 429
with Retry-After beyond that. The sink paces its own posts to ``min_interval_ms``
and never drops: the runner hands it everything queued as one batch, and a batch
of several leads becomes one message listing them (up to ``max_leads_per_message``
per message), so a burst costs a few messages rather than a queue of hundreds.

Answers map to the delivery framework: 2xx delivered; 429 -> :class:`RetryAfter`;
5xx, timeouts and connection errors -> retry; any other 4xx (invalid_payload,
channel_not_found, action_prohibited, ...) -> rejected, dead-lettered, no retry.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson

from connectors.sinks.delivery import DeliveryError, RetryAfter, parse_retry_after

DEFAULT_ALERT_TYPES = frozenset({"hot_lead", "mql", "route_to_sales", "sla_breach"})

TYPE_LABELS = {
    "hot_lead": ":fire: Hot lead",
    "mql": ":white_check_mark: MQL",
    "route_to_sales": ":telephone_receiver: Route to sales",
    "sla_breach": ":alarm_clock: SLA breach (no accept/reject in time)",
    "suppress": ":no_entry: Suppressed",
    "unsuppress": ":arrow_forward: Unsuppressed",
    "nurture_exit": ":seedling: Nurture exit",
    "health_red": ":red_circle: Customer health red",
}

# Slack's documented Block Kit limits.
HEADER_MAX = 150
TEXT_MAX = 3000
FIELD_MAX = 2000


def _escape(text: Any) -> str:
    # mrkdwn treats &, < and > as control characters (links, mentions).
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _num(value: Any) -> str:
    if isinstance(value, (int, float)):
        return f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}"
    return "?" if value is None else str(value)


def _traits(trigger: dict[str, Any]) -> dict[str, Any]:
    contact = trigger.get("contact") or {}
    traits = contact.get("traits") if isinstance(contact, dict) else None
    return traits if isinstance(traits, dict) else {}


def contact_name(trigger: dict[str, Any]) -> str:
    t = _traits(trigger)
    name = t.get("name") or " ".join(str(p) for p in (t.get("first_name") or t.get("firstName"), t.get("last_name") or t.get("lastName")) if p)
    return str(name or t.get("email") or trigger.get("contact_id") or "unknown contact")


def company_name(trigger: dict[str, Any]) -> str | None:
    company = _traits(trigger).get("company")
    if isinstance(company, dict):
        company = company.get("name")
    return str(company) if company else None


def top_reasons(trigger: dict[str, Any], limit: int = 3) -> list[str]:
    reasons = [r for r in trigger.get("reasons") or [] if isinstance(r, dict)]
    reasons.sort(key=lambda r: abs(float(r.get("points") or 0)), reverse=True)
    out = []
    for r in reasons[:limit]:
        points = float(r.get("points") or 0)
        out.append(f"{r.get('signal', '?')} {'+' if points >= 0 else '−'}{_num(abs(points))}")
    return out


class SlackSink:
    """Posts alert messages to one Slack incoming webhook, paced to ``min_interval_ms``."""

    def __init__(
        self,
        webhook_url: str,
        *,
        base_url: str,
        session: aiohttp.ClientSession | None = None,
        min_interval_ms: int = 1000,
        alert_types: Iterable[str] = DEFAULT_ALERT_TYPES,
        max_leads_per_message: int = 20,
        timeout_s: float = 10.0,
        name: str = "slack",
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        self.webhook_url = webhook_url
        self.base_url = base_url.rstrip("/")
        self.min_interval = min_interval_ms / 1000
        self.alert_types = frozenset(alert_types)
        self.max_leads = max(1, min(max_leads_per_message, 45))  # 50 blocks per message
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.name = name
        self.clock = clock
        self.sleep = sleep
        self._session = session
        self._owns_session = session is None
        self._next_at = 0.0

    def wants(self, trigger: dict[str, Any]) -> bool:
        """Only these types alert people; the runner does not queue the rest for Slack."""
        return trigger.get("type") in self.alert_types

    def contact_url(self, contact_id: Any) -> str:
        return f"{self.base_url}/?contact={quote(str(contact_id), safe='')}"

    # -- message layout ------------------------------------------------------------

    def feedback_hint(self, trigger: dict[str, Any] | None) -> str:
        """How the SDR answers the 4-hour MQL handoff: POST /v1/crm/events."""
        cid = _escape(trigger.get("contact_id") if trigger else "<contact_id>")
        return (
            f"Accept or reject within the SLA: `POST {_escape(self.base_url)}/v1/crm/events` with "
            f'`{{"type": "sales_feedback", "contact_id": "{cid}", "decision": "accept"}}` '
            f'or `"decision": "reject", "reason": "..."`'
        )

    def single_message(self, trigger: dict[str, Any]) -> dict[str, Any]:
        label = TYPE_LABELS.get(str(trigger.get("type")), str(trigger.get("type")))
        who = contact_name(trigger)
        company = company_name(trigger)
        title = _traits(trigger).get("title")
        header = f"{label}: {who}" + (f" ({company})" if company else "")
        fields = [
            f"*Company*\n{_escape(company or '—')}",
            f"*Title*\n{_escape(title or '—')}",
            f"*Score*\n{_num(trigger.get('score'))}",
            f"*Band*\n{_escape(trigger.get('band') or '—')}",
            f"*Previous score*\n{_num(trigger.get('previous_score'))}",
            f"*Contact*\n`{_escape(trigger.get('contact_id'))}`",
        ]
        reasons = top_reasons(trigger, 5)
        blocks: list[dict[str, Any]] = [
            {"type": "header", "text": {"type": "plain_text", "text": _cut(header, HEADER_MAX), "emoji": True}},
            {"type": "section", "fields": [{"type": "mrkdwn", "text": _cut(f, FIELD_MAX)} for f in fields]},
        ]
        if reasons:
            why = "*Why:*\n" + "\n".join(f"• {_escape(r)}" for r in reasons)
            blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": _cut(why, TEXT_MAX)}})
        blocks.append(
            {
                "type": "actions",
                "elements": [
                    {
                        "type": "button",
                        "text": {"type": "plain_text", "text": "Open contact"},
                        "url": self.contact_url(trigger.get("contact_id")),
                        "action_id": "open_contact",
                    }
                ],
            }
        )
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": _cut(self.feedback_hint(trigger), TEXT_MAX)}]})
        text = f"{label}: {who}" + (f" ({company})" if company else "") + f", score {_num(trigger.get('score'))}"
        return {"text": text, "blocks": blocks}

    def digest_message(self, triggers: list[dict[str, Any]]) -> dict[str, Any]:
        """Several leads in one message: a burst is coalesced, never dropped."""
        blocks: list[dict[str, Any]] = [
            {"type": "header", "text": {"type": "plain_text", "text": f":fire: {len(triggers)} lead alerts", "emoji": True}}
        ]
        names = []
        for t in triggers:
            label = TYPE_LABELS.get(str(t.get("type")), str(t.get("type")))
            who = contact_name(t)
            names.append(who)
            company = company_name(t)
            title = _traits(t).get("title")
            line1 = f"*<{self.contact_url(t.get('contact_id'))}|{_escape(who)}>*" + "".join(
                f" · {_escape(x)}" for x in (company, title) if x
            )
            line2 = f"{label} · score *{_num(t.get('score'))}* (was {_num(t.get('previous_score'))}) · {_escape(t.get('band') or '—')}"
            reasons = top_reasons(t)
            text = line1 + "\n" + line2 + (f"\nWhy: {_escape(', '.join(reasons))}" if reasons else "")
            blocks.append(
                {
                    "type": "section",
                    "text": {"type": "mrkdwn", "text": _cut(text, TEXT_MAX)},
                    "accessory": {
                        "type": "button",
                        "text": {"type": "plain_text", "text": "Open"},
                        "url": self.contact_url(t.get("contact_id")),
                        "action_id": f"open_contact_{len(blocks)}",
                    },
                }
            )
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": self.feedback_hint(None)}]})
        return {"text": f"{len(triggers)} lead alerts: " + ", ".join(names), "blocks": blocks}

    def messages(self, triggers: list[dict[str, Any]]) -> list[tuple[list[str], dict[str, Any]]]:
        """The messages for a batch, each with the trigger ids it carries."""
        out = []
        for i in range(0, len(triggers), self.max_leads):
            chunk = triggers[i : i + self.max_leads]
            message = self.single_message(chunk[0]) if len(chunk) == 1 else self.digest_message(chunk)
            out.append(([str(t["trigger_id"]) for t in chunk], message))
        return out

    # -- delivery ------------------------------------------------------------------

    async def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        return self._session

    async def _pace(self) -> None:
        wait = self._next_at - self.clock()
        if wait > 0:
            await self.sleep(wait)

    async def write(self, triggers: list[dict[str, Any]]) -> None:
        wanted = [t for t in triggers if self.wants(t)]
        # Types that do not alert are trivially done for this sink.
        delivered = [str(t["trigger_id"]) for t in triggers if not self.wants(t)]
        rejected: list[str] = []
        reasons: list[str] = []
        session = await self._http()
        for ids, message in self.messages(wanted):
            await self._pace()
            try:
                async with session.post(
                    self.webhook_url,
                    data=orjson.dumps(message),
                    headers={"content-type": "application/json"},
                    timeout=self.timeout,
                ) as resp:
                    status = resp.status
                    body = (await resp.text())[:200]
                    retry_after = parse_retry_after(resp.headers.get("Retry-After"))
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                self._next_at = self.clock() + self.min_interval
                raise DeliveryError(f"slack: {type(exc).__name__}", delivered=delivered, rejected=rejected) from exc
            self._next_at = self.clock() + self.min_interval
            if 200 <= status < 300:
                delivered.extend(ids)
                continue
            if status == 429:
                wait = 1.0 if retry_after is None else retry_after
                self._next_at = self.clock() + max(wait, self.min_interval)
                raise RetryAfter(wait, "slack: HTTP 429", delivered=delivered, rejected=rejected)
            if status >= 500 or status == 408:
                raise DeliveryError(
                    f"slack: HTTP {status} {body}", delivered=delivered, rejected=rejected, retry_after=retry_after
                )
            # invalid_payload, channel_not_found, ...: the same message will fail again.
            rejected.extend(ids)
            reasons.append(f"slack: HTTP {status} {body}")
        if rejected:
            raise DeliveryError("; ".join(reasons), delivered=delivered, rejected=rejected)

    async def close(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None
