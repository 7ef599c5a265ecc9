"""The score agent's batcher: takes what is buffered at once, never more than max_, acks after the batch."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from streams.batching import take_ready


@dataclass
class FakeEvent:
    value: int


class FakeStream:
    """The part of faust's Stream that take_ready uses, fed from a queue by a drainer task."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue = asyncio.Queue()
        self.enable_acks = True
        self.current_event: FakeEvent | None = None
        self._processors: list = []
        self.channel = object()
        self.should_stop = False
        self.acked: list[int] = []
        self._drainer: asyncio.Task | None = None

    def add_processor(self, processor: Any) -> None:
        self._processors.append(processor)

    def _enable_passive(self, channel: Any) -> None:
        self._drainer = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        while True:
            value = await self.queue.get()
            self.current_event = FakeEvent(value)
            for processor in self._processors:
                await processor(value)

    async def wait(self, event: asyncio.Event) -> None:
        await event.wait()

    async def wait_for_stopped(self, event: asyncio.Event, timeout: float | None = None) -> bool:
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except asyncio.TimeoutError:
            pass
        return self.should_stop

    async def ack(self, event: FakeEvent) -> None:
        self.acked.append(event.value)


async def _collect(stream: FakeStream, batches: int, linger: float = 0.0, max_: int = 3) -> list[list[int]]:
    got: list[list[int]] = []
    async for batch in take_ready(stream, max_, linger=linger, poll=0.05):
        got.append([event.value for event in batch])
        # Nothing of this batch is acked while the agent still works on it.
        assert not set(got[-1]) & set(stream.acked)
        await asyncio.sleep(0.01)
        if len(got) == batches:
            break
    return got


def test_buffered_records_come_at_once_in_batches_of_at_most_max_and_are_acked_after():
    async def run() -> tuple[list[list[int]], list[int]]:
        stream = FakeStream()
        for value in range(7):
            stream.queue.put_nowait(value)
        got = await asyncio.wait_for(_collect(stream, batches=3), timeout=5)
        return got, stream.acked

    got, acked = asyncio.run(run())
    assert got == [[0, 1, 2], [3, 4, 5], [6]]
    assert acked[:6] == [0, 1, 2, 3, 4, 5]


def test_an_idle_agent_gets_a_late_record_without_waiting_for_more():
    async def run() -> list[list[int]]:
        stream = FakeStream()

        async def feed() -> None:
            await asyncio.sleep(0.12)  # longer than the idle poll
            stream.queue.put_nowait(1)
            await asyncio.sleep(0.3)
            stream.queue.put_nowait(2)

        feeder = asyncio.ensure_future(feed())
        got = await asyncio.wait_for(_collect(stream, batches=2), timeout=5)
        await feeder
        return got

    assert asyncio.run(run()) == [[1], [2]]


def test_linger_lets_a_burst_fill_the_batch():
    async def run(linger: float) -> list[list[int]]:
        stream = FakeStream()

        async def feed() -> None:
            stream.queue.put_nowait(1)
            await asyncio.sleep(0.05)
            stream.queue.put_nowait(2)

        feeder = asyncio.ensure_future(feed())
        got = await asyncio.wait_for(_collect(stream, batches=1, linger=linger), timeout=5)
        await feeder
        return got

    assert asyncio.run(run(0.5)) == [[1, 2]]
    assert asyncio.run(run(0.0)) == [[1]]
