"""How the score agent takes batches from its faust stream: whatever is ready, as soon as it is free.

faust's ``Stream.take_events(max_, within)`` waits ``within`` after every batch unless
``max_`` records are already buffered, so at a steady rate every batch pays that wait
and the agent idles while records sit in the buffer (measured at 10k events/s offered:
~25 batches a second, ~0.3-0.5 s of each second spent waiting). :func:`take_ready`
keeps faust's buffering and acking (the same passive drainer and manual acks) but
hands the agent the buffer as soon as it holds a record, after an optional short
``linger`` to let a burst fill it. Under load the batches grow by themselves (records
arrive while the last batch is processed); when idle a record waits for nothing.
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncGenerator


async def take_ready(
    stream: Any, max_: int, linger: float = 0.0, poll: float = 1.0, ack: bool = True,
) -> AsyncGenerator[list[Any], None]:
    """Yield lists of up to ``max_`` events: what the stream buffered, once it holds at least one.

    ``linger`` (seconds): after the first record of a batch, wait at most this long for
    the buffer to fill (0: do not wait). ``poll``: how often an idle agent checks for a
    stop. Events are acked after the caller is done with their batch, as in faust's
    ``take_events``; with ``ack=False`` the caller acks them (``stream.ack``) when it
    chooses, and faust commits no offset past an event not acked yet.
    """
    buffer: list[Any] = []
    has_records = asyncio.Event()
    is_full = asyncio.Event()
    consumed = asyncio.Event()
    reading: asyncio.Future | None = None
    saved_enable_acks = stream.enable_acks

    async def add_to_buffer(value: Any) -> Any:
        nonlocal reading
        if reading is not None:  # the agent is taking the buffer: add after it
            try:
                await reading
            finally:
                reading = None
        event = stream.current_event
        if event is None:
            raise RuntimeError("take_ready found current_event is None")
        buffer.append(event)
        has_records.set()
        if len(buffer) >= max_:
            is_full.set()
            consumed.clear()
            await stream.wait(consumed)  # never more than max_ per batch
        return value

    stream.enable_acks = False  # acked here, after the agent is done with the batch
    stream.add_processor(add_to_buffer)
    stream._enable_passive(stream.channel)  # noqa: SLF001 - the drainer faust's take_events uses
    try:
        while not stream.should_stop:
            # (mode reports a timeout as "stopped" too: should_stop is what says stop.)
            await stream.wait_for_stopped(has_records, timeout=poll)
            if not buffer:
                continue
            if linger > 0 and len(buffer) < max_:
                await stream.wait_for_stopped(is_full, timeout=linger)
            reading = asyncio.get_running_loop().create_future()
            events = list(buffer)
            try:
                yield events
            finally:
                buffer.clear()
                has_records.clear()
                is_full.clear()
                if ack:
                    for event in events:
                        await stream.ack(event)
                if not reading.done():
                    reading.set_result(None)
                consumed.set()
    finally:
        stream.enable_acks = saved_enable_acks
        stream._processors.remove(add_to_buffer)  # noqa: SLF001
