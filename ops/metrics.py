"""The Prometheus metric catalog of leadpulse, one registry per process.

Each process (collector, worker) builds one :class:`Metrics` and serves it on its
own ``/metrics``; nothing is shared between processes, so there is no multiprocess
mode to get wrong. Names follow Prometheus conventions: ``leadpulse_`` prefix, base
units, ``_total`` counters, ``_seconds`` durations, and never a contact id in a label.
Hot paths update metrics once per batch, not per event.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Label values known in advance (declared at 0 by the worker).
DLQ_REASONS = ("invalid_json", "invalid_event", "too_late", "future", "sink")
SINK_OUTCOMES = ("delivered", "duplicate", "dead_letter", "failed")
BATCH_SIZE_BUCKETS = (1, 5, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 50000)


class Metrics:
    """Every metric leadpulse exports; construct once per process and pass it down."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events_received = Counter(
            "leadpulse_events_received_total", "Events accepted by the collector", ["source", "type"], registry=r
        )
        self.events_rejected = Counter(
            "leadpulse_events_rejected_total", "Events refused at the edge", ["source", "reason"], registry=r
        )
        self.events_duplicate = Counter(
            "leadpulse_events_duplicate_total", "Events skipped as already applied", ["source"], registry=r
        )
        self.events_late = Counter("leadpulse_events_late_total", "Events that arrived after the watermark", registry=r)
        self.events_bot = Counter("leadpulse_events_bot_total", "Machine events counted but not scored", ["kind"], registry=r)
        self.events_scored = Counter("leadpulse_events_scored_total", "Events applied to contact state", registry=r)
        self.dlq = Counter("leadpulse_dlq_total", "Records written to the dead-letter topic", ["reason"], registry=r)
        self.triggers = Counter("leadpulse_triggers_total", "Triggers emitted", ["type"], registry=r)
        self.event_to_trigger = Histogram(
            "leadpulse_event_to_trigger_seconds",
            "Time from the collector receiving an event to its trigger being produced",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_duration = Histogram(
            "leadpulse_batch_duration_seconds", "Time from taking a batch to its triggers acknowledged and on the read side", buckets=LATENCY_BUCKETS, registry=r
        )
        self.batch_size = Histogram(
            "leadpulse_batch_size", "Events per score-agent batch", buckets=BATCH_SIZE_BUCKETS, registry=r
        )
        self.consumer_lag = Gauge(
            "leadpulse_consumer_lag", "Records behind the end of the events topic", ["partition"], registry=r
        )
        self.contacts = Gauge("leadpulse_contacts", "Contacts held by this worker", registry=r)
        self.offset_gaps = Counter(
            "leadpulse_consumer_offset_gaps_total",
            "Jumps in the offsets a worker read: records counted as processed that were never delivered to it",
            registry=r,
        )
        self.checkpoint_duration = Histogram(
            "leadpulse_checkpoint_duration_seconds",
            "Time to write the dirty contacts of one checkpoint (read side and changelog)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.state_writes = Counter(
            "leadpulse_state_writes_total", "Contact records written to the table at checkpoints", registry=r
        )
        self.sink_deliveries = Counter(
            "leadpulse_sink_deliveries_total", "Trigger deliveries by sink and outcome", ["sink", "outcome"], registry=r
        )
        self.sink_retries = Counter("leadpulse_sink_retries_total", "Delivery retries by sink", ["sink"], registry=r)
        self.http_requests = Counter(
            "leadpulse_http_requests_total", "HTTP requests by route and status code", ["route", "code"], registry=r
        )
        self.http_duration = Histogram(
            "leadpulse_http_request_duration_seconds", "HTTP request latency", ["route"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.rules_info = Gauge("leadpulse_rules_info", "Scoring model version in use (value 1)", ["version"], registry=r)

    def declare_worker_series(self, sinks: list[str]) -> None:
        """Create the worker's labelled series at 0 before anything happens.

        Prometheus sees an increase only from a sample it already has: a counter
        that first appears at 3 shows no ``increase()``, so an alert such as
        LeadpulseSinkDeadLetters would miss the first dead letter after a restart.
        """
        for reason in DLQ_REASONS:
            self.dlq.labels(reason=reason)
        for sink in sinks:
            for outcome in SINK_OUTCOMES:
                self.sink_deliveries.labels(sink=sink, outcome=outcome)
            self.sink_retries.labels(sink=sink)

    def set_rules_version(self, version: str) -> None:
        self.rules_info.clear()
        self.rules_info.labels(version=version).set(1)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type, for a /metrics handler."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
