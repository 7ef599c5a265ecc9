"""Before a revoke and at shutdown faust waits until every event handed to an agent is acked;
the worker's hook writes everything and acks it first, so that wait ends and commits it all."""

from __future__ import annotations

import asyncio
import types

from faust.transport.consumer import Consumer

from streams.app import use_flush_in_wait_empty


class FakeMessage:
    def __init__(self, offset: int) -> None:
        self.offset = offset
        self.acked = False


class FakeApp:
    def __init__(self, log: list, messages: list[FakeMessage], with_hook: bool = True) -> None:
        self.log = log
        self.messages = messages
        if with_hook:
            self.before_wait_empty = self._flush

    async def _flush(self) -> None:
        self.log.append("flush")
        for message in self.messages:
            message.acked = True


class FakeConsumer:
    """What faust's ``Consumer.wait_empty`` uses; the real method runs after the hook."""

    def __init__(self, app: FakeApp) -> None:
        self.app = app
        self.should_stop = False
        self.log = types.SimpleNamespace(dev=lambda *a: None, warning=lambda *a: None, info=lambda *a: None)
        self._unacked_messages = set(app.messages)
        self._clean_unacked_messages = types.MethodType(Consumer._clean_unacked_messages, self)

    async def commit(self, start_new_transaction: bool = True) -> bool:
        self.app.log.append(("commit", sorted(m.offset for m in self.app.messages if m.acked)))
        return True

    async def commit_and_end_transactions(self) -> None:
        await self.commit(start_new_transaction=False)

    async def _wait_for_ack(self, timeout: float) -> None:
        self.app.log.append("faust waits for acks")
        await asyncio.sleep(0)


def _wait_empty(consumer: FakeConsumer) -> None:
    asyncio.run(asyncio.wait_for(Consumer.wait_empty(consumer), timeout=5))


def test_the_hook_acks_everything_before_faust_commits_and_faust_does_not_wait():
    use_flush_in_wait_empty()
    log: list = []
    app = FakeApp(log, [FakeMessage(7), FakeMessage(8)])
    _wait_empty(FakeConsumer(app))
    assert log[0] == "flush"
    assert "faust waits for acks" not in log
    assert log[-1] == ("commit", [7, 8])


def test_a_batch_in_hand_during_the_first_flush_is_acked_by_the_next_one():
    use_flush_in_wait_empty()
    log: list = []
    late = FakeMessage(9)
    app = FakeApp(log, [FakeMessage(7)])
    consumer = FakeConsumer(app)
    consumer._unacked_messages.add(late)  # handed to the agent, not handled yet
    original_flush = app._flush

    async def flush_then_handle() -> None:
        await original_flush()
        if late not in app.messages:
            app.messages.append(late)  # the agent finishes its batch; the next flush acks it

    app.before_wait_empty = flush_then_handle
    _wait_empty(consumer)
    assert log.count("flush") == 2
    assert log[-1] == ("commit", [7, 9])


def test_apps_without_the_hook_wait_as_before_and_the_patch_applies_once():
    use_flush_in_wait_empty()
    use_flush_in_wait_empty()
    assert not hasattr(Consumer.wait_empty.__wrapped__, "__wrapped__")
    log: list = []
    message = FakeMessage(3)
    app = FakeApp(log, [message], with_hook=False)
    consumer = FakeConsumer(app)

    async def ack_later() -> None:
        await asyncio.sleep(0.01)
        message.acked = True

    async def run() -> None:
        task = asyncio.ensure_future(ack_later())
        await Consumer.wait_empty(consumer)
        await task

    asyncio.run(asyncio.wait_for(run(), timeout=5))
    assert "flush" not in log and "faust waits for acks" in log
    assert log[-1] == ("commit", [3])
