"""Outbound delivery: per-sink queues, retries, dead-lettering and exactly-once by trigger id.

This module owns everything between "the worker decided a trigger" and "a sink
(:class:`connectors.sinks.base.Sink`) delivered it":

* :class:`SinkRunner` gives each sink its own bounded queue and asyncio task, so a
  slow or failing sink never blocks scoring or the other sinks.
* Retries use exponential backoff with full jitter and honour a server's
  ``Retry-After`` (a sink raises :class:`RetryAfter`). After ``max_attempts`` the
  remaining triggers go to the ``dead_letter`` callable (the worker points it at
  the DLQ topic) and count as outcome ``dead_letter``. A :class:`PermanentError`
  (e.g. HTTP 400/404 from the endpoint) skips the retry loop.
* Idempotency by ``trigger_id`` through a :class:`DeliveryLedger`: ids are
  ``claim``-ed (filtered to those not yet delivered) before a write and marked
  delivered after it succeeded. With :class:`RedisLedger` this survives a worker
  restart, so a replayed batch (offsets not yet committed) is not sent again.

  The one remaining window: a crash after the endpoint accepted a write and
  before ``mark_delivered`` finished re-sends that batch after the restart. The
  id stays the same (webhook-id header = trigger_id), which is why webhook
  receivers must dedupe on ``webhook-id``; Slack cannot dedupe, so at worst one
  duplicate alert appears after such a crash.

Metrics: every trigger ends as exactly one of ``delivered``, ``duplicate`` (the
ledger or the batch already had it) or ``dead_letter``; ``failed`` counts trigger
attempts that failed and were retried, and ``sink_retries`` counts retried batches.
Dead-lettered ids are not marked delivered, so a redrive of the DLQ can send them.

Queue policy (nothing is dropped): :meth:`SinkRunner.offer` never blocks and
returns ``False`` when the queue is full, leaving the batch with the caller;
:meth:`SinkRunner.put` waits for room (backpressure). The worker calls
``await runner.flush(timeout)`` before committing offsets: if it returns ``False``
the worker must not commit, so anything undelivered is replayed after a restart.

Worker usage::

    runners = build_runners(settings, metrics=metrics, redis=redis, dead_letter=to_dlq)
    for r in runners: r.start()          # inside the running loop
    ... for each batch of triggers: for r in runners: await r.put(triggers)
    ... before committing offsets: ok = all([await r.flush(5.0) for r in runners])
    ... at shutdown: for r in runners: await r.close()
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from connectors.sinks.base import Sink

if TYPE_CHECKING:
    from ops.metrics import Metrics
    from ops.settings import Settings

log = logging.getLogger(__name__)

DeadLetter = Callable[[str, list[dict[str, Any]], str], Awaitable[None]]

DEFAULT_LEDGER_TTL_MS = 7 * 86_400_000


# --------------------------------------------------------------------------- errors


class DeliveryError(Exception):
    """What a sink raises when a batch was not (fully) delivered.

    ``delivered``: trigger ids that did reach the endpoint (they are marked and not
    sent again); ``rejected``: ids the endpoint refused for good (dead-lettered now);
    every other id of the batch is retried, unless ``permanent`` is set, in which
    case they are dead-lettered too. ``retry_after`` (seconds) is the least time to
    wait before the next attempt. Any other exception from a sink is treated as a
    retryable failure of the whole batch.
    """

    def __init__(
        self,
        reason: str,
        *,
        delivered: Iterable[str] = (),
        rejected: Iterable[str] = (),
        retry_after: float | None = None,
        permanent: bool = False,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.delivered = set(delivered)
        self.rejected = set(rejected)
        self.retry_after = retry_after
        self.permanent = permanent


class RetryAfter(DeliveryError):
    """The endpoint asked us to slow down (HTTP 429 / 503 with Retry-After)."""

    def __init__(
        self, seconds: float, reason: str = "rate limited", *, delivered: Iterable[str] = (), rejected: Iterable[str] = ()
    ) -> None:
        super().__init__(
            f"{reason} (retry after {seconds:g}s)", delivered=delivered, rejected=rejected, retry_after=max(0.0, seconds)
        )
        self.seconds = max(0.0, seconds)


class PermanentError(DeliveryError):
    """Retrying cannot help (HTTP 4xx other than 408/429): dead-letter the rest now."""

    def __init__(self, reason: str, *, delivered: Iterable[str] = ()) -> None:
        super().__init__(reason, delivered=delivered, permanent=True)


def parse_retry_after(value: str | None, *, now_s: float | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    now = time.time() if now_s is None else now_s
    return max(0.0, when.timestamp() - now)


# --------------------------------------------------------------------------- ledgers


class DeliveryLedger(Protocol):
    """Remembers which trigger ids each sink has delivered."""

    async def claim(self, sink: str, trigger_ids: list[str]) -> list[str]:
        """The ids of ``trigger_ids`` not yet delivered by ``sink``, in the given order."""

    async def mark_delivered(self, sink: str, trigger_ids: list[str]) -> None:
        """Record that ``sink`` delivered ``trigger_ids``."""


class InMemoryLedger:
    """A per-process ledger that forgets the oldest ids beyond ``max_entries`` per sink.

    Good for tests and single-process runs; it does not survive a restart.
    """

    def __init__(self, max_entries: int = 100_000) -> None:
        self.max_entries = max_entries
        self._seen: dict[str, OrderedDict[str, None]] = {}

    async def claim(self, sink: str, trigger_ids: list[str]) -> list[str]:
        seen = self._seen.get(sink)
        if not seen:
            return list(trigger_ids)
        return [t for t in trigger_ids if t not in seen]

    async def mark_delivered(self, sink: str, trigger_ids: list[str]) -> None:
        seen = self._seen.setdefault(sink, OrderedDict())
        for tid in trigger_ids:
            seen[tid] = None
            seen.move_to_end(tid)
        while len(seen) > self.max_entries:
            seen.popitem(last=False)


class RedisLedger:
    """A ledger in Redis: one key ``leadpulse:delivered:{sink}:{trigger_id}`` per delivery.

    A key per id (rather than one set per sink) lets each entry expire on its own
    (``SET NX PX``), so the ledger stays bounded without a sweeper. Both calls are a
    single pipelined round trip per batch.
    """

    def __init__(self, redis: Any, *, ttl_ms: int = DEFAULT_LEDGER_TTL_MS, prefix: str = "leadpulse:delivered") -> None:
        self.redis = redis
        self.ttl_ms = ttl_ms
        self.prefix = prefix

    def key(self, sink: str, trigger_id: str) -> str:
        return f"{self.prefix}:{sink}:{trigger_id}"

    async def claim(self, sink: str, trigger_ids: list[str]) -> list[str]:
        if not trigger_ids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for tid in trigger_ids:
            pipe.exists(self.key(sink, tid))
        found = await pipe.execute()
        return [tid for tid, n in zip(trigger_ids, found) if not n]

    async def mark_delivered(self, sink: str, trigger_ids: list[str]) -> None:
        if not trigger_ids:
            return
        pipe = self.redis.pipeline(transaction=False)
        for tid in trigger_ids:
            pipe.set(self.key(sink, tid), b"1", nx=True, px=self.ttl_ms)
        await pipe.execute()


# --------------------------------------------------------------------------- runner


@dataclass
class _Item:
    seq: int
    triggers: list[dict[str, Any]]
    offered_at: float


class RunnerClosed(RuntimeError):
    """Raised by ``offer``/``put`` after ``close`` began."""


class SinkRunner:
    """One sink's queue, worker task, retry loop and dead-letter path.

    ``offer`` is non-blocking and FIFO; the task takes whatever is queued (up to
    ``max_batch`` triggers) as one batch, which lets a sink such as Slack coalesce a
    burst into one message. ``clock``, ``sleep`` and ``rng`` are injectable so tests
    run without real waiting.
    """

    def __init__(
        self,
        sink: Sink,
        *,
        metrics: Metrics | None = None,
        ledger: DeliveryLedger | None = None,
        max_attempts: int = 8,
        base_delay_ms: int = 200,
        max_delay_ms: int = 30_000,
        max_retry_after_ms: int = 300_000,
        dead_letter: DeadLetter | None = None,
        max_pending: int = 10_000,
        max_batch: int = 100,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.sink = sink
        self.name = sink.name
        self.metrics = metrics
        self.ledger = ledger
        self.max_attempts = max_attempts
        self.base_delay = base_delay_ms / 1000
        self.max_delay = max_delay_ms / 1000
        self.max_retry_after = max_retry_after_ms / 1000
        self.dead_letter = dead_letter
        self.max_pending = max_pending
        self.max_batch = max_batch
        self.clock = clock
        self.sleep = sleep
        self.rng = rng or random.Random()
        # A sink may declare which triggers it cares about (Slack alerts on a few
        # types); the rest never occupy the queue or count as deliveries.
        self._wants: Callable[[dict[str, Any]], bool] | None = getattr(sink, "wants", None)

        self._queue: deque[_Item] = deque()
        self._pending = 0  # triggers queued or in flight
        self._offered_seq = 0
        self._done_seq = 0
        self._has_work = asyncio.Event()  # set by offer, awaited by the delivery task
        self._changed = asyncio.Condition()  # progress: room freed, batches done
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._in_flight: list[_Item] = []

    # -- producer side ------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Triggers offered and not yet delivered or dead-lettered."""
        return self._pending

    def oldest_pending_s(self) -> float:
        """Age in seconds of the oldest undelivered batch (0 when idle): a health signal."""
        first = self._in_flight[0] if self._in_flight else (self._queue[0] if self._queue else None)
        return 0.0 if first is None else max(0.0, self.clock() - first.offered_at)

    def start(self) -> None:
        """Start the delivery task; must be called inside the running loop (``offer`` does it lazily)."""
        if self._task is None and not self._closing:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"sink-{self.name}")

    def offer(self, triggers: list[dict[str, Any]]) -> bool:
        """Queue ``triggers`` without waiting; ``False`` (nothing queued) when the queue is full.

        A batch larger than ``max_pending`` is still accepted into an empty queue, so
        no batch can be refused forever.
        """
        if self._closing:
            raise RunnerClosed(f"sink runner {self.name} is closed")
        if self._wants is not None:
            triggers = [t for t in triggers if self._wants(t)]
        if not triggers:
            return True
        if self._pending and self._pending + len(triggers) > self.max_pending:
            return False
        self.start()
        self._offered_seq += 1
        self._queue.append(_Item(self._offered_seq, list(triggers), self.clock()))
        self._pending += len(triggers)
        self._has_work.set()
        return True

    async def put(self, triggers: list[dict[str, Any]], timeout: float | None = None) -> None:
        """Queue ``triggers``, waiting for room: backpressure to the caller. Raises TimeoutError."""

        async def wait_for_room() -> None:
            async with self._changed:
                while not self.offer(triggers):
                    await self._changed.wait()

        await asyncio.wait_for(wait_for_room(), timeout)

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything offered so far is delivered or dead-lettered; ``False`` on timeout."""
        target = self._offered_seq

        async def drained() -> None:
            async with self._changed:
                while self._done_seq < target:
                    if self._task is not None and self._task.done():
                        # Surface a crashed delivery task instead of waiting forever.
                        self._task.result()
                        return
                    await self._changed.wait()

        try:
            await asyncio.wait_for(drained(), timeout)
        except (TimeoutError, asyncio.TimeoutError):
            return False
        return self._done_seq >= target

    async def close(self, timeout: float = 5.0) -> None:
        """Stop accepting, deliver what is queued for up to ``timeout`` seconds, then close the sink.

        What is still undelivered then is left for the replay after restart (the
        worker did not commit those offsets, since its last flush did not succeed).
        """
        self._closing = True
        if self._task is not None:
            if not await self.flush(timeout):
                log.warning("sink %s closing with %d undelivered triggers", self.name, self._pending)
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            except Exception:  # already logged by the task
                pass
        await self.sink.close()

    # -- delivery task --------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            while not self._queue:
                self._has_work.clear()
                await self._has_work.wait()
            batch: list[_Item] = [self._queue.popleft()]
            size = len(batch[0].triggers)
            while self._queue and size + len(self._queue[0].triggers) <= self.max_batch:
                item = self._queue.popleft()
                size += len(item.triggers)
                batch.append(item)
            self._in_flight = batch
            triggers = [t for item in batch for t in item.triggers]
            try:
                await self._deliver(triggers)
            except asyncio.CancelledError:
                # Put the batch back so pending() stays truthful; it is replayed after restart.
                self._queue.extendleft(reversed(batch))
                self._in_flight = []
                raise
            except Exception:
                # _deliver handles sink errors itself; reaching here is a bug, but
                # it must not silently stop this sink forever.
                log.exception("sink %s: delivery task error; retrying the batch", self.name)
                self._queue.extendleft(reversed(batch))
                self._in_flight = []
                await self.sleep(self.max_delay)
                continue
            self._in_flight = []
            async with self._changed:
                self._pending -= size
                self._done_seq = batch[-1].seq
                self._changed.notify_all()

    def _count(self, outcome: str, n: int) -> None:
        if self.metrics is not None and n:
            self.metrics.sink_deliveries.labels(sink=self.name, outcome=outcome).inc(n)

    def backoff(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(max_delay, base * 2**(attempt-1))] seconds."""
        cap = min(self.max_delay, self.base_delay * (2 ** (attempt - 1)))
        return self.rng.uniform(0, cap)

    async def _deliver(self, triggers: list[dict[str, Any]]) -> None:
        # Dedupe inside the batch too: the same trigger may be offered twice
        # (replay) before the first copy was delivered.
        by_id: dict[str, dict[str, Any]] = {}
        for t in triggers:
            by_id.setdefault(str(t["trigger_id"]), t)
        duplicates = len(triggers) - len(by_id)
        ids = list(by_id)
        if self.ledger is not None:
            try:
                fresh = await self.ledger.claim(self.name, ids)
            except Exception:
                # Fail open: an alert late or twice beats no alert; receivers dedupe on webhook-id.
                log.warning("sink %s: delivery ledger unavailable, sending without dedupe", self.name, exc_info=True)
                fresh = ids
            duplicates += len(ids) - len(fresh)
            ids = fresh
        self._count("duplicate", duplicates)

        attempt = 0
        while ids:
            attempt += 1
            batch = [by_id[i] for i in ids]
            try:
                await self.sink.write(batch)
            except asyncio.CancelledError:
                raise
            except DeliveryError as exc:
                done = [i for i in ids if i in exc.delivered]
                await self._mark(done)
                rejected = [i for i in ids if i in exc.rejected and i not in exc.delivered]
                if rejected:
                    await self._dead_letter([by_id[i] for i in rejected], f"rejected: {exc.reason}")
                gone = set(done) | set(rejected)
                ids = [i for i in ids if i not in gone]
                if not ids:
                    return
                if exc.permanent:
                    await self._dead_letter([by_id[i] for i in ids], f"permanent failure: {exc.reason}")
                    return
                reason, retry_after = exc.reason, exc.retry_after
            except Exception as exc:
                reason, retry_after = f"{type(exc).__name__}: {exc}", None
            else:
                await self._mark(ids)
                return
            if attempt >= self.max_attempts:
                await self._dead_letter(
                    [by_id[i] for i in ids], f"gave up after {attempt} attempts: {reason}"
                )
                return
            delay = self.backoff(attempt)
            if retry_after is not None:
                delay = max(delay, min(retry_after, self.max_retry_after))
            log.info("sink %s: attempt %d failed (%s); retrying in %.2fs", self.name, attempt, reason, delay)
            self._count("failed", len(ids))
            if self.metrics is not None:
                self.metrics.sink_retries.labels(sink=self.name).inc()
            await self.sleep(delay)

    async def _mark(self, ids: list[str]) -> None:
        if not ids:
            return
        self._count("delivered", len(ids))
        if self.ledger is None:
            return
        try:
            await self.ledger.mark_delivered(self.name, ids)
        except Exception:
            # The write happened; failing here only widens the duplicate window.
            log.warning("sink %s: could not record %d deliveries", self.name, len(ids), exc_info=True)

    async def _dead_letter(self, triggers: list[dict[str, Any]], reason: str) -> None:
        self._count("dead_letter", len(triggers))
        if self.dead_letter is None:
            log.error(
                "sink %s: dead-lettered %d triggers (%s): %s",
                self.name, len(triggers), reason, [t.get("trigger_id") for t in triggers],
            )
            return
        attempt = 0
        while True:
            attempt += 1
            try:
                await self.dead_letter(self.name, triggers, reason)
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                # Never drop: keep trying; meanwhile flush() stays false and offsets stay uncommitted.
                log.exception("sink %s: dead-letter write failed (attempt %d)", self.name, attempt)
                await self.sleep(max(self.backoff(min(attempt, 30)), self.base_delay))


# --------------------------------------------------------------------------- wiring


def webhook_sink_name(url: str) -> str:
    """A stable, secret-free sink name for one webhook URL: its host plus a short hash.

    Stable across restarts because the Redis ledger is keyed by it; never the full
    URL, which may carry a token in its path or query.
    """
    host = urlsplit(url).hostname or "endpoint"
    return f"webhook:{host}:{hashlib.sha256(url.encode()).hexdigest()[:8]}"


def build_runners(
    settings: Settings,
    *,
    metrics: Metrics | None,
    redis: Any | None,
    dead_letter: DeadLetter | None,
    session: Any | None = None,
    **runner_options: Any,
) -> list[SinkRunner]:
    """Runners for the Slack and webhook sinks configured in ``settings`` (none when unset).

    One runner per webhook URL, so one slow receiver does not hold back another.
    ``redis`` (a ``redis.asyncio`` client) backs the delivery ledger; without it the
    ledger is in memory and dedupe does not survive a restart.
    """
    from connectors.sinks.slack import SlackSink
    from connectors.sinks.webhook import WebhookSink

    ledger: DeliveryLedger = RedisLedger(redis) if redis is not None else InMemoryLedger()
    runners: list[SinkRunner] = []
    if settings.slack_webhook_url is not None and settings.slack_webhook_url.get_secret_value():
        sink = SlackSink(
            settings.slack_webhook_url.get_secret_value(),
            base_url=settings.base_url,
            session=session,
            min_interval_ms=int(getattr(settings, "slack_min_interval", 1000)),
        )
        runners.append(SinkRunner(sink, metrics=metrics, ledger=ledger, dead_letter=dead_letter, **runner_options))
    secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret is not None else None
    if settings.webhook_urls and not secret:
        log.warning("LEADPULSE_WEBHOOK_URLS is set without LEADPULSE_WEBHOOK_SECRET: webhooks are sent unsigned")
    for url in settings.webhook_urls:
        sink = WebhookSink([url], secret, session=session, name=webhook_sink_name(url))
        runners.append(SinkRunner(sink, metrics=metrics, ledger=ledger, dead_letter=dead_letter, **runner_options))
    return runners
