"""Where the worker starts reading after an assignment (streams.app recovery patch)."""

from __future__ import annotations

import asyncio
from collections import defaultdict

from faust.types import TP

from streams.app import _seek_uncommitted_to_earliest


class FakeConsumer:
    """Only what the seek helper touches: faust's committed map, earliest offsets, seek."""

    def __init__(self, committed: dict[TP, int | None], earliest: dict[TP, int]) -> None:
        self._committed_offset = defaultdict(lambda: None, committed)
        self.earliest = earliest
        self.asked: list[TP] = []
        self.seeks: dict[TP, int] = {}

    async def earliest_offsets(self, *tps: TP) -> dict[TP, int]:
        self.asked.extend(tps)
        return {tp: self.earliest[tp] for tp in tps}

    async def seek(self, tp: TP, offset: int) -> None:
        self.seeks[tp] = offset


def test_partitions_without_a_commit_go_back_to_their_first_offset():
    committed_tp, never, zero = TP("triggers", 0), TP("triggers", 1), TP("events", 0)
    consumer = FakeConsumer({committed_tp: 17, zero: 0}, {committed_tp: 0, never: 0, zero: 3})
    asyncio.run(_seek_uncommitted_to_earliest(consumer, {committed_tp, never, zero}))
    # A committed partition keeps the committed position; the others restart at the log start
    # (faust maps a committed 0 to "none", which means the same thing: nothing processed).
    assert consumer.seeks == {never: 0, zero: 3}
    assert committed_tp not in consumer.asked


def test_nothing_to_do_when_every_partition_has_a_commit():
    tp = TP("events", 0)
    consumer = FakeConsumer({tp: 5}, {tp: 0})
    asyncio.run(_seek_uncommitted_to_earliest(consumer, {tp}))
    assert consumer.seeks == {} and consumer.asked == []
