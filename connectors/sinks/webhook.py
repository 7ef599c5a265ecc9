"""Generic outbound webhooks, signed per Standard Webhooks (see ``standard_webhooks``).

This module owns :class:`WebhookSink`: one HTTP POST per trigger per URL, the JSON
body being the trigger dict of DESIGN.md section 5, with the headers
``webhook-id`` (= trigger_id), ``webhook-timestamp`` and ``webhook-signature``.

What a receiver sees
--------------------
* Answer 2xx quickly (within 10 s) once you have stored the event; do the work later.
* 429, 408, 5xx, a timeout or a connection error mean "try again"; ``Retry-After``
  (seconds or an HTTP date) on a 429/503 is honoured (up to 5 minutes).
* Any other answer (3xx, 4xx) is final: the trigger goes to leadpulse's dead-letter
  topic and is not retried.
* Retries reuse the same ``webhook-id`` with a fresh timestamp and signature. The
  same id may also arrive twice after a leadpulse crash (between your 2xx and our
  delivery record), so dedupe on ``webhook-id``.
* Triggers for one URL are sent one after another in the order they were decided;
  a failed trigger holds back the ones after it until it succeeds or is dead-lettered.

Retry schedule (the :class:`~connectors.sinks.delivery.SinkRunner` defaults:
8 attempts, exponential backoff from 200 ms capped at 30 s, full jitter): the wait
before attempt n+1 is uniform in [0, min(30 s, 0.2 s * 2**(n-1))], i.e. at most
0.2, 0.4, 0.8, 1.6, 3.2, 6.4 and 12.8 s, so a trigger is dead-lettered no later
than ~25 s (plus request time and any Retry-After) after its first attempt.
Longer outages are handled by redriving the dead-letter topic, not by holding
the worker's offsets for hours.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
from pydantic import SecretStr

from connectors.sinks.delivery import DeliveryError, parse_retry_after
from connectors.sinks.standard_webhooks import decode_secret, webhook_headers

log = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({408, 425, 429})


class _Outcome:
    __slots__ = ("ok", "permanent", "retry_after", "reason")

    def __init__(self, ok: bool, *, permanent: bool = False, retry_after: float | None = None, reason: str = "") -> None:
        self.ok = ok
        self.permanent = permanent
        self.retry_after = retry_after
        self.reason = reason


class WebhookSink:
    """POSTs each trigger to every URL, signed with ``secret`` (``whsec_...``; None sends unsigned).

    A batch counts as delivered per trigger: a trigger is done once every URL
    answered 2xx. Which URL already got which trigger is remembered between
    attempts, so a retry does not re-send to a URL that already accepted it. A
    final refusal (4xx) from any URL dead-letters the trigger for all of them, which
    is one reason :func:`~connectors.sinks.delivery.build_runners` gives each URL
    its own sink and runner.
    """

    def __init__(
        self,
        urls: Sequence[str],
        secret: str | SecretStr | None,
        session: aiohttp.ClientSession | None = None,
        *,
        name: str = "webhook",
        timeout_s: float = 10.0,
        wall_clock: Callable[[], float] = time.time,
        user_agent: str = "leadpulse-webhooks/1",
    ) -> None:
        if not urls:
            raise ValueError("WebhookSink needs at least one URL")
        self.urls = list(urls)
        raw = secret.get_secret_value() if isinstance(secret, SecretStr) else secret
        # Decode once and fail at start-up, not on the first trigger.
        self._key = decode_secret(raw) if raw else None
        self.name = name
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.wall_clock = wall_clock
        self.user_agent = user_agent
        self._session = session
        self._owns_session = session is None
        # trigger_id -> URLs that already answered 2xx, for triggers not yet done everywhere.
        self._partial: OrderedDict[str, set[str]] = OrderedDict()

    async def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        return self._session

    async def write(self, triggers: list[dict[str, Any]]) -> None:
        bodies = [(str(t["trigger_id"]), orjson.dumps(t)) for t in triggers]
        per_url = await asyncio.gather(*(self._send_all(url, bodies) for url in self.urls))

        delivered: list[str] = []
        rejected: list[str] = []
        reasons: list[str] = []
        retry_after: float | None = None
        for tid, _ in bodies:
            outcomes = [results.get(tid) for results in per_url]
            if all(o is not None and o.ok for o in outcomes):
                delivered.append(tid)
                self._partial.pop(tid, None)
                continue
            failed = [o for o in outcomes if o is not None and not o.ok]
            if any(o.permanent for o in failed):
                rejected.append(tid)
                self._partial.pop(tid, None)
            for o in failed:
                reasons.append(o.reason)
                if o.retry_after is not None:
                    retry_after = max(retry_after or 0.0, o.retry_after)
        if len(delivered) == len(bodies):
            return
        # Keep the partial-delivery memory bounded; forgetting only risks a re-send.
        while len(self._partial) > 10_000:
            self._partial.popitem(last=False)
        raise DeliveryError(
            "; ".join(dict.fromkeys(reasons)) or "not delivered",
            delivered=delivered,
            rejected=rejected,
            retry_after=retry_after,
        )

    async def _send_all(self, url: str, bodies: list[tuple[str, bytes]]) -> dict[str, _Outcome]:
        """Send in order to one URL; stop at the first retryable failure to keep the order."""
        results: dict[str, _Outcome] = {}
        for tid, body in bodies:
            if url in self._partial.get(tid, ()):
                results[tid] = _Outcome(True)
                continue
            outcome = await self._post(url, tid, body)
            results[tid] = outcome
            if outcome.ok:
                self._partial.setdefault(tid, set()).add(url)
            elif not outcome.permanent:
                break
        return results

    async def _post(self, url: str, tid: str, body: bytes) -> _Outcome:
        headers = webhook_headers(self._key, tid, int(self.wall_clock()), body)
        headers["content-type"] = "application/json"
        headers["user-agent"] = self.user_agent
        session = await self._http()
        try:
            async with session.post(url, data=body, headers=headers, allow_redirects=False, timeout=self.timeout) as resp:
                status = resp.status
                retry_after = parse_retry_after(resp.headers.get("Retry-After"))
                await resp.read()
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            return _Outcome(False, reason=f"{type(exc).__name__} from {self._label(url)}")
        if 200 <= status < 300:
            return _Outcome(True)
        reason = f"HTTP {status} from {self._label(url)}"
        if status in RETRYABLE_STATUS or status >= 500:
            return _Outcome(False, retry_after=retry_after, reason=reason)
        return _Outcome(False, permanent=True, reason=reason)

    @staticmethod
    def _label(url: str) -> str:
        # Reasons end up in logs and the DLQ: never include credentials, a path or a query.
        parts = urlsplit(url)
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{parts.hostname}{port}"

    async def close(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None
