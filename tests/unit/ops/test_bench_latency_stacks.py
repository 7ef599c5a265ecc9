"""The latency step gives each offered rate its own stack unless told to share one."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from benchmarks import latency
from benchmarks.common import Progress


@pytest.mark.parametrize("shared, stacks", [(False, 3), (True, 1)])
def test_stacks_per_rate(monkeypatch, tmp_path: Path, shared: bool, stacks: int) -> None:
    started: list[str] = []
    measured: list[tuple[str, float]] = []

    @asynccontextmanager
    async def fake_stack(broker, redis, partitions, work_dir, progress):
        started.append(f"stack{len(started)}")
        yield object(), object(), started[-1]

    async def fake_rate(stack, watch, prefix, rate, duration, work_dir, progress, settle_s):
        measured.append((prefix, rate))
        return {"offered_eps": rate}

    monkeypatch.setattr(latency, "_fresh_stack", fake_stack)
    monkeypatch.setattr(latency, "_measure_rate", fake_rate)
    result = asyncio.run(latency.measure("b", "r", 4, [1000.0, 5000.0, 10000.0], 1.0, tmp_path,
                                         Progress(), shared_stack=shared))
    assert list(result) == ["1000", "5000", "10000"]
    assert len(started) == stacks
    assert [rate for _, rate in measured] == [1000.0, 5000.0, 10000.0]
    assert len({prefix for prefix, _ in measured}) == stacks
