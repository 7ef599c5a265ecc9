"""The collector's durability contract against a real broker (connectors.intake.KafkaIntake).

- Memory is bounded: more than ``max_pending`` events in flight -> Backpressure -> HTTP 429 with
  Retry-After, instead of buffering.
- A broker that stops answering -> BrokerUnavailable -> HTTP 503 with Retry-After, bounded by
  ``produce_timeout``.
- Nothing acknowledged is lost: every event answered 200 is on the events topic.

The outage is a network cut: a second Tansu broker is started that advertises a TCP proxy owned
by the test as its address, so every client connection (bootstrap and partition leaders) goes
through the proxy; cutting it makes the broker unreachable while its in-memory log survives, so
the acknowledged events can be counted afterwards.
"""

from __future__ import annotations

import asyncio
import base64
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from connectors.collector import Collector, build_app
from connectors.intake import KafkaIntake
from connectors.types import Backpressure, BrokerUnavailable
from ops.embedded import ChildService, EmbeddedError, free_port, kafka_metadata_ok, tansu_binary
from ops.metrics import Metrics
from ops.settings import Settings
from streams.topics import ensure_topics
from topic_reader import read_until

pytestmark = pytest.mark.integration

AUTH = {"Authorization": "Basic " + base64.b64encode(b"demo:").decode()}


def event(contact: str | None = None) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()), "type": "page_view", "contact_id": contact or f"c-{uuid.uuid4().hex[:6]}",
        "anonymous_id": None, "ts": 1_700_000_000_000, "received_at": 1_700_000_000_000, "source": "test",
        "traits": {}, "properties": {},
    }


def call() -> dict[str, Any]:
    return {"type": "page", "messageId": str(uuid.uuid4()), "userId": f"c-{uuid.uuid4().hex[:6]}"}


def ids_on(records: list) -> set[str]:
    found: set[str] = set()
    for _key, value in records:
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, dict) and "id" in item:
                found.add(item["id"])
    return found


async def collector_client(intake: KafkaIntake) -> TestClient:
    settings = Settings(_env_file=None)
    collector = Collector(settings, intake=intake, redis=None, metrics=Metrics(), current_model=lambda: None)
    client = TestClient(TestServer(build_app(collector)))
    await client.start_server()
    return client


# --- backpressure ---------------------------------------------------------------------------


async def test_backpressure_beyond_max_pending(make_settings):
    settings = make_settings()
    await ensure_topics(settings.broker_url, [settings.events_topic, settings.dlq_topic], settings.partitions)
    # a long linger keeps the first events in flight (unacknowledged) while the next ones arrive
    intake = KafkaIntake(settings.broker_url, settings.events_topic, settings.dlq_topic, settings.partitions,
                         linger_ms=1000, max_pending=3)
    await intake.start()
    client = await collector_client(intake)
    try:
        with pytest.raises(Backpressure):
            await intake.submit([event() for _ in range(4)])  # more than the bound at once
        first = [event() for _ in range(3)]
        in_flight = asyncio.create_task(intake.submit(first))
        while intake.pending < 3:
            await asyncio.sleep(0.005)
        with pytest.raises(Backpressure) as busy:
            await intake.submit([event()])
        assert busy.value.retry_after >= 1

        response = await client.post("/v1/track", json={**call(), "type": "track", "event": "E"}, headers=AUTH)
        assert response.status == 429 and int(response.headers["Retry-After"]) >= 1
        assert (await response.json())["code"] == "rate_limited"

        await in_flight  # the first events are acknowledged after all
        assert intake.pending == 0
        intake.linger = 0.005  # back to the default packing delay
        later = event()
        await intake.submit([later])
        response = await client.post("/v1/batch", json={"batch": [call(), call()]}, headers=AUTH)
        assert response.status == 200
    finally:
        await client.close()
        await intake.stop()
    wanted = {e["id"] for e in first} | {later["id"]}
    records = await read_until(settings.broker_url, settings.events_topic, lambda rs: wanted <= ids_on(rs))
    assert wanted <= ids_on(records)
    assert len(ids_on(records)) == 3 + 1 + 2  # nothing refused with 429 was written


# --- broker outage ---------------------------------------------------------------------------


class CuttableProxy:
    """TCP proxy 127.0.0.1:port -> 127.0.0.1:target that can be cut (refuse + drop) and restored."""

    def __init__(self, port: int, target: int) -> None:
        self.port, self.target = port, target
        self.server: asyncio.AbstractServer | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port, reuse_address=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.close()
            return
        self.writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self.writers -= {writer, up_writer}

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in list(self.writers):
            writer.transport.abort()
        self.writers.clear()
        await self.server.wait_closed()
        self.server = None

    async def restore(self) -> None:
        await self.start()

    async def stop(self) -> None:
        if self.server is not None:
            await self.cut()


@pytest.fixture
async def proxied_broker(tmp_path: Path):
    """A private Tansu broker reachable only through a CuttableProxy; yields (bootstrap, proxy)."""
    try:
        binary = tansu_binary()
    except EmbeddedError as exc:
        pytest.skip(f"no embedded broker: {exc}")
    real, public = free_port(), free_port()
    proxy = CuttableProxy(public, real)
    await proxy.start()
    broker = ChildService(
        "tansu broker (proxied)",
        [str(binary), "broker", "--listener-url", f"tcp://127.0.0.1:{real}",
         "--advertised-listener-url", f"tcp://127.0.0.1:{public}", "--storage-engine", "memory://tansu/"],
        real, tmp_path / "tansu.log", kafka_metadata_ok,
    )
    await asyncio.to_thread(broker.start)
    try:
        yield f"127.0.0.1:{public}", proxy
    finally:
        await proxy.stop()
        await asyncio.to_thread(broker.stop)


async def test_broker_outage_gives_503_and_loses_nothing_acknowledged(proxied_broker):
    bootstrap, proxy = proxied_broker
    events_topic, dlq_topic = f"lp-out-{uuid.uuid4().hex[:6]}-events", f"lp-out-{uuid.uuid4().hex[:6]}-dlq"
    await ensure_topics(bootstrap, [events_topic, dlq_topic], 2)
    produce_timeout_ms = 1000
    intake = KafkaIntake(bootstrap, events_topic, dlq_topic, 2, linger_ms=5, produce_timeout_ms=produce_timeout_ms)
    await intake.start()
    client = await collector_client(intake)
    acked: set[str] = set()
    refused: list[tuple[int, str]] = []
    # a request must be answered within produce_timeout (plus slack for the HTTP round trip)
    limit = aiohttp.ClientTimeout(total=produce_timeout_ms / 1000 + 5)

    async def send() -> None:
        calls = [call(), call()]
        response = await client.post("/v1/batch", json={"batch": calls}, headers=AUTH, timeout=limit)
        if response.status == 200:
            acked.update(c["messageId"] for c in calls)
        else:
            refused.append((response.status, response.headers.get("Retry-After", "")))

    try:
        for _ in range(20):
            await send()
        assert len(acked) == 40 and refused == []

        # cut the network while a burst is in flight: each request is either acked (200) or refused (503)
        burst = [asyncio.create_task(send()) for _ in range(30)]
        await asyncio.sleep(0)
        await proxy.cut()
        await asyncio.gather(*burst)
        for _ in range(2):  # the broker is unreachable now: every request is refused
            await send()
        assert refused, "no request was refused during the outage"
        assert {status for status, _ in refused} == {503}
        assert all(int(retry) >= 1 for _, retry in refused)
        with pytest.raises(BrokerUnavailable):
            await intake.submit([event()])

        await proxy.restore()
        recovered = False
        for _ in range(30):  # aiokafka reconnects on its own; no restart of the collector
            response = await client.post("/v1/batch", json={"batch": [call()]}, headers=AUTH, timeout=limit)
            if response.status == 200:
                recovered = True
                break
            await asyncio.sleep(0.2)
        assert recovered, "the intake did not recover after the broker came back"
    finally:
        await client.close()
        await intake.stop()

    records = await read_until(bootstrap, events_topic, lambda rs: acked <= ids_on(rs), timeout=30)
    missing = acked - ids_on(records)
    assert not missing, f"{len(missing)} acknowledged events are not on the topic"
    print(f"\nacked {len(acked)} events, refused {len(refused)} requests with 503, all acked events on the topic")
