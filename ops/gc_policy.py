"""The garbage-collector policy of the processes that score events (worker, benchmarks).

Decoding a batch allocates hundreds of thousands of small dicts that live until the
batch ends, so CPython's default thresholds (700, 10, 10) run a collection every few
events and a full one (over every cached contact record) every few batches: measured
here, a third of the decode time and 20 % of the processor's. Contact states are
acyclic and freed by reference counting; the cycle collector only has faust's and
asyncio's few cycles to find, so it runs far less often.

The youngest generation's threshold is well above what one batch allocates (measured on
the bench workload: decoding 100 records of ~9k events makes ~28k containers, and the
batch leaves ~27k more alive in the processor's cache): with 50,000 a young collection
ran every batch or two, over the batch's live events, and moved them to the middle
generation, which then traversed them again. Measured at 500,000
(ABAB, 1M-event throughput step, one worker): 49,969 / 51,283 / 51,058 events/s
against 48,762 / 45,388 / 41,417 at 50,000; the processor alone 13.8-14.9 against
15.8-16.8 us per event; 10k/s latency (30 s) p50/p99 75.8/381 ms against 104/417.
The cycles it leaves for later are bounded by the threshold: a few MB at most.
"""

from __future__ import annotations

import gc

SCORING_GC_THRESHOLDS = (500_000, 20, 1_000)


def tune_garbage_collector() -> tuple[int, int, int]:
    """Apply :data:`SCORING_GC_THRESHOLDS` to this process; returns them."""
    gc.set_threshold(*SCORING_GC_THRESHOLDS)
    return SCORING_GC_THRESHOLDS
