"""The worker's writer: output is written in the order it was queued, a round merges what queued
up (newest view of a contact wins), a drain waits for all, and a failed write stops the worker
instead of letting a later commit skip it."""

from __future__ import annotations

import asyncio

from ops.settings import load_settings
from rules import default_model
from streams.app import ScoreApp, StreamConfig, _PendingWrite
from streams.processor import BatchOutcome


def _score_app(tmp_path, published: list) -> ScoreApp:
    async def publish(out: BatchOutcome) -> None:
        await asyncio.sleep(0.02)  # a round trip: more output queues up meanwhile
        published.append(({key: view["score"] for key, view in out.views.items()}, [t["trigger_id"] for t in out.triggers]))

    settings = load_settings(data_dir=tmp_path, app_id="t-writer")
    return ScoreApp(StreamConfig.from_settings(settings, "127.0.0.1:9"), default_model(), publish)


def _batch(views: dict[str, float], triggers: list[str] = ()) -> BatchOutcome:
    out = BatchOutcome()
    out.views = {key: {"score": score} for key, score in views.items()}
    out.triggers = [{"trigger_id": t} for t in triggers]
    return out


def test_output_is_written_in_order_merged_per_round_and_drain_waits_for_all(tmp_path):
    async def run() -> tuple[list, list]:
        published: list = []
        app = _score_app(tmp_path, published)
        written: list[str] = []
        acked = asyncio.get_running_loop().create_future()
        app._enqueue_write(_PendingWrite(_batch({"a": 1.0}, ["t1"]), [acked], lambda: written.append("first")))
        app._enqueue_write(_PendingWrite(_batch({"a": 2.0, "b": 5.0}, ["t2"]), [], lambda: written.append("second")))
        app._enqueue_write(_PendingWrite(_batch({"a": 3.0}), [], lambda: written.append("third")))
        await asyncio.sleep(0.05)
        assert published == [] and written == []  # nothing is written before its broker acks
        acked.set_result(None)
        await app.drain()
        return published, written

    published, written = asyncio.run(run())
    assert written == ["first", "second", "third"]
    # One round for everything queued while it waited: each contact once, at its newest view.
    assert published == [({"a": 3.0, "b": 5.0}, ["t1", "t2"])]


def test_output_queued_during_a_round_goes_in_the_next_one(tmp_path):
    async def run() -> list:
        published: list = []
        app = _score_app(tmp_path, published)
        app._enqueue_write(_PendingWrite(_batch({"a": 1.0}), []))
        await asyncio.sleep(0.005)  # the first round is writing
        app._enqueue_write(_PendingWrite(_batch({"a": 2.0}), []))
        await app.drain()
        return published

    assert asyncio.run(run()) == [({"a": 1.0}, []), ({"a": 2.0}, [])]


def test_a_failed_write_stops_the_worker_and_nothing_after_it_is_written(tmp_path):
    async def run() -> tuple[list, list, BaseException | None]:
        published: list = []
        app = _score_app(tmp_path, published)
        stopped: list[str] = []
        app.stop_without_commit = lambda what, exc: stopped.append(f"{what}: {exc}")
        lost = asyncio.get_running_loop().create_future()
        lost.set_exception(ConnectionError("broker gone"))
        app._enqueue_write(_PendingWrite(_batch({"a": 1.0}, ["t1"]), [lost]))
        app._enqueue_write(_PendingWrite(_batch({"b": 1.0}), []))
        error = None
        try:
            await app.drain()
        except ConnectionError as exc:
            error = exc
        return stopped, published, error

    stopped, published, error = asyncio.run(run())
    assert stopped and "broker gone" in stopped[0]
    assert published == [] and isinstance(error, ConnectionError)
