"""The score agent acks a batch's events (and so lets faust commit their offsets) only once
every contact the batch changed has been written by a checkpoint, its own output included."""

from __future__ import annotations

import asyncio

from ops.settings import load_settings
from rules import default_model
from streams.app import ScoreApp, StreamConfig
from streams.events import encode_envelope
from streams.processor import BatchOutcome

T0 = 1_795_000_000_000


def _page_view(eid: str, contact: str) -> bytes:
    return encode_envelope([{"id": eid, "type": "page_view", "contact_id": contact, "ts": T0, "received_at": T0,
                             "source": "segment", "traits": {}, "properties": {"path": "/blog"}}])


class Clock:
    def __init__(self) -> None:
        self.now = T0


def _score_app(tmp_path) -> tuple[ScoreApp, list, Clock]:
    """A worker without a broker: the changelog write and the acks go to a log; the clock is the test's."""
    log: list = []
    clock = Clock()

    async def publish(out: BatchOutcome) -> None:
        log.append(("read side", sorted(out.docs)))

    settings = load_settings(data_dir=tmp_path, app_id="t-acks", checkpoint_interval="1s", partitions=1)
    app = ScoreApp(StreamConfig.from_settings(settings, "127.0.0.1:9"), default_model(), publish)
    app._rebuilt = {0}  # no broker here: nothing to rebuild the table from

    async def write_changelog(writes: dict[int, dict[str, bytes]]) -> None:
        await asyncio.sleep(0.01)  # the broker's ack takes a moment
        log.append(("changelog", sorted(k for records in writes.values() for k in records if not k.startswith("__"))))

    async def ack(event: str) -> None:
        log.append(("ack", event))

    app._write_changelog = write_changelog
    app._ack = ack
    app._now_ms = lambda: clock.now
    return app, log, clock


async def _handle(app: ScoreApp, clock: Clock, at_ms: int, offset: int, contact: str, event: str) -> None:
    clock.now = T0 + at_ms
    app._last_rolling = float("-inf")  # let the rolling checkpoint run after this batch
    await app.handle([(0, offset, _page_view(f"e{offset}", contact))], [event])
    await app.drain()


def _acks(log: list) -> list[str]:
    return [entry[1] for entry in log if entry[0] == "ack"]


def test_a_batch_is_acked_after_the_rolling_checkpoint_that_writes_its_contacts(tmp_path):
    async def run() -> list:
        app, log, clock = _score_app(tmp_path)
        await _handle(app, clock, 0, 0, "alice", "batch-1")
        await _handle(app, clock, 500, 1, "bob", "batch-2")
        assert _acks(log) == []  # alice and bob are dirty, not written yet
        await _handle(app, clock, 1_100, 2, "carol", "batch-3")  # alice has been dirty for 1 s
        assert _acks(log) == ["batch-1"]
        assert log.index(("changelog", ["alice"])) < log.index(("ack", "batch-1"))
        await app.checkpoint()  # as before a revoke or at shutdown: everything
        assert _acks(log) == ["batch-1", "batch-2", "batch-3"]
        assert not app._unacked
        return log

    log = asyncio.run(run())
    # (Checkpoints that wrote only the partition's timer list are left out.)
    assert [entry[1] for entry in log if entry[0] == "changelog" and entry[1]] == [["alice"], ["bob", "carol"]]


def test_a_batch_that_changes_nothing_waits_for_the_batches_before_it_only(tmp_path):
    async def run() -> list:
        app, log, clock = _score_app(tmp_path)
        await _handle(app, clock, 0, 0, "alice", "batch-1")
        await _handle(app, clock, 100, 0, "alice", "replayed")  # same record again: nothing changes
        assert _acks(log) == []  # offsets are committed in order: it waits behind batch-1
        await _handle(app, clock, 1_100, 1, "bob", "batch-3")
        assert _acks(log) == ["batch-1", "replayed"]  # alice was written after batch-3; bob was not
        await _handle(app, clock, 1_200, 1, "bob", "replayed-again")
        assert _acks(log) == ["batch-1", "replayed"]
        await _handle(app, clock, 2_200, 2, "alice", "batch-5")  # bob is written, alice dirty again
        return _acks(log)

    assert asyncio.run(run()) == ["batch-1", "replayed", "batch-3", "replayed-again"]
