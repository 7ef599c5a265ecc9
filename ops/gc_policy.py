"""The garbage-collector policy of the processes that score events (worker, benchmarks).

Decoding a batch allocates hundreds of thousands of small dicts that live until the
batch ends, so CPython's default thresholds (700, 10, 10) run a collection every few
events and a full one (over every cached contact record) every few batches: measured
here, a third of the decode time and 20 % of the processor's. Contact states are
acyclic and freed by reference counting; the cycle collector only has faust's and
asyncio's few cycles to find, so it runs far less often.
"""

from __future__ import annotations

import gc

SCORING_GC_THRESHOLDS = (50_000, 20, 1_000)


def tune_garbage_collector() -> tuple[int, int, int]:
    """Apply :data:`SCORING_GC_THRESHOLDS` to this process; returns them."""
    gc.set_threshold(*SCORING_GC_THRESHOLDS)
    return SCORING_GC_THRESHOLDS
