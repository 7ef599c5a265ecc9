"""The worker's ordered I/O chain: writes land in the order they were made, a drain waits for all,
and a failed write stops the worker instead of letting a later commit skip it."""

from __future__ import annotations

import asyncio

from ops.settings import load_settings
from rules import default_model
from streams.app import ScoreApp, StreamConfig


async def _nothing(out) -> None:
    return None


def _score_app(tmp_path) -> ScoreApp:
    settings = load_settings(data_dir=tmp_path, app_id="t-io-chain")
    return ScoreApp(StreamConfig.from_settings(settings, "127.0.0.1:9"), default_model(), _nothing)


def test_links_finish_in_order_and_drain_waits_for_all(tmp_path):
    async def run() -> list[str]:
        app = _score_app(tmp_path)
        done: list[str] = []

        def write(name: str, seconds: float):
            async def work() -> None:
                await asyncio.sleep(seconds)
                done.append(name)
            return work

        app._chain(write("slow checkpoint", 0.1))
        app._chain(write("quick batch", 0.0))
        app._chain(write("next checkpoint", 0.02))
        assert done == []  # chaining does not wait
        await app.drain()
        return done

    assert asyncio.run(run()) == ["slow checkpoint", "quick batch", "next checkpoint"]


def test_a_failed_write_stops_the_worker_and_nothing_after_it_runs(tmp_path):
    async def run() -> tuple[list[str], list[str]]:
        app = _score_app(tmp_path)
        stopped: list[str] = []
        app.stop_without_commit = lambda what, exc: stopped.append(f"{what}: {exc}")
        done: list[str] = []

        async def broken() -> None:
            raise ConnectionError("broker gone")

        async def later() -> None:
            done.append("later")

        app._chain(broken)
        app._chain(later)
        try:
            await app.drain()
        except ConnectionError:
            pass
        return stopped, done

    stopped, done = asyncio.run(run())
    assert stopped and "broker gone" in stopped[0]
    assert done == []
