"""The worker's checkpoint runs inside faust's commit, after the offsets are chosen and before they are committed."""

from __future__ import annotations

import asyncio
import types

import pytest
from faust.transport.consumer import Consumer
from faust.types import TP

from streams.app import use_checkpoint_before_commit

TOPIC_PARTITION = TP("events", 0)


class FakeApp:
    def __init__(self, log: list, with_hook: bool = True) -> None:
        self.log = log
        self._attachments = self
        self.producer = None
        if with_hook:
            self.before_commit = self._checkpoint

    async def _checkpoint(self) -> None:
        self.log.append("checkpoint")

    async def publish_for_tp_offset(self, tp: TP, offset: int) -> list:
        return []


class FakeConsumer:
    """Only what faust's ``Consumer._commit_tps`` calls; the real ``_handle_attached`` runs."""

    def __init__(self, app: FakeApp) -> None:
        self.app = app
        self._handle_attached = types.MethodType(Consumer._handle_attached, self)

    def _filter_committable_offsets(self, tps: list[TP]) -> dict[TP, int]:
        self.app.log.append("choose offsets")
        return {tp: 42 for tp in tps}

    async def _commit_offsets(self, offsets: dict[TP, int], start_new_transaction: bool = True) -> bool:
        self.app.log.append(("commit", dict(offsets)))
        return True


def _commit(app: FakeApp) -> bool:
    consumer = FakeConsumer(app)
    return asyncio.run(Consumer._commit_tps(consumer, [TOPIC_PARTITION], start_new_transaction=False))


def test_the_checkpoint_runs_between_choosing_and_committing_offsets():
    use_checkpoint_before_commit()
    log: list = []
    assert _commit(FakeApp(log))
    assert log == ["choose offsets", "checkpoint", ("commit", {TOPIC_PARTITION: 42})]


def test_a_failed_checkpoint_commits_nothing():
    use_checkpoint_before_commit()
    log: list = []
    app = FakeApp(log)

    async def broken() -> None:
        raise ConnectionError("broker gone")

    app.before_commit = broken
    with pytest.raises(ConnectionError):
        _commit(app)
    assert "choose offsets" in log and not any(isinstance(entry, tuple) and entry[0] == "commit" for entry in log)


def test_apps_without_a_checkpoint_commit_as_before_and_the_patch_applies_once():
    use_checkpoint_before_commit()
    use_checkpoint_before_commit()
    log: list = []
    assert _commit(FakeApp(log, with_hook=False))
    assert log == ["choose offsets", ("commit", {TOPIC_PARTITION: 42})]
