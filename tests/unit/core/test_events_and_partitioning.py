import orjson
import pytest
from aiokafka.partitioner import DefaultPartitioner
from hypothesis import given
from hypothesis import strategies as st

from streams.events import contact_key, decode_record, encode_envelope, event_problem
from streams.partitioning import partition_for
from streams.state import ContactRecord, fingerprint

GOOD = {"id": "e1", "type": "page_view", "contact_id": "c1", "anonymous_id": None, "ts": 1_700_000_000_000,
        "received_at": 1_700_000_000_000, "source": "segment", "traits": {}, "properties": {}}


@given(st.text(min_size=1, max_size=40), st.integers(min_value=1, max_value=64))
def test_partition_matches_kafka_default_partitioner(key, partitions):
    expected = DefaultPartitioner()(key.encode(), list(range(partitions)), list(range(partitions)))
    assert partition_for(key, partitions) == expected


def test_contact_key_prefers_contact_id():
    assert contact_key({"contact_id": "c1", "anonymous_id": "a1"}) == "c1"
    assert contact_key({"contact_id": None, "anonymous_id": "a1"}) == "anon:a1"


def test_envelope_round_trip_and_single_event():
    assert decode_record(encode_envelope([GOOD, GOOD])) == [GOOD, GOOD]
    assert decode_record(orjson.dumps(GOOD)) == [GOOD]
    with pytest.raises(orjson.JSONDecodeError):
        decode_record(b"{not json")


@pytest.mark.parametrize(
    "change, problem",
    [
        ({"id": ""}, "id"),
        ({"type": "teleport"}, "type"),
        ({"contact_id": None}, "contact_id/anonymous_id"),
        ({"ts": "yesterday"}, "ts"),
        ({"ts": True}, "ts"),
        ({"ts": 0}, "ts"),
        ({"ts": 253_402_300_800_000}, "ts"),  # the year 10000: beyond the engine's bound
        ({"ts": 2**64}, "ts"),
        ({"properties": [1]}, "properties"),
    ],
)
def test_event_problem_names_the_field(change, problem):
    assert event_problem({**GOOD, **change}).startswith(problem)


def test_good_event_has_no_problem():
    assert event_problem(GOOD) is None
    assert event_problem("text") == "event is not a JSON object"


def test_record_positions_and_dedupe():
    record = ContactRecord("c1", {"x": 1})
    assert record.pos == [-1, -1]  # nothing applied yet
    record.pos = [5, 2]
    assert record.remember("a", 1_700_000_000_000, 7 * 86_400_000)
    assert not record.remember("a", 1_700_000_000_000, 7 * 86_400_000)
    copy = ContactRecord.decode("c1", record.encode())
    assert copy.pos == [5, 2] and not copy.remember("a", 1_700_000_000_000, 7 * 86_400_000)
    # A newer bucket more than the window later makes the old one expire.
    assert copy.remember("b", 1_700_000_000_000 + 9 * 86_400_000, 7 * 86_400_000)
    copy.forget_before(7 * 86_400_000)
    assert copy.remember("a", 1_700_000_000_000 + 9 * 86_400_000, 7 * 86_400_000)


def test_fingerprint_is_stable_across_processes():
    # A fixed value: Python's hash() is salted per process, this must not be.
    assert fingerprint("msg-1") == fingerprint("msg-1") == __import__("hashlib").blake2b(b"msg-1", digest_size=6).digest()


def test_records_are_compact_msgpack_and_earlier_json_records_still_read():
    from rules import default_model
    from rules.engine import apply_event, new_state
    from streams.state import read_record

    state = new_state("c7")
    apply_event(state, {"id": "e1", "type": "page_view", "contact_id": "c7", "anonymous_id": None, "ts": 1_790_000_000_000,
                        "received_at": 1_790_000_000_000, "source": "segment", "traits": {}, "properties": {}},
                default_model())
    record = ContactRecord("c7", state)
    assert record.remember("e1", 1_790_000_000_000, 7 * 86_400_000)
    raw = record.encode()
    assert raw[:1] != b"{" and b"c7" not in raw  # MessagePack; the key is not repeated inside
    back = ContactRecord.decode("c7", raw)
    assert back.state == state and list(back.state) == list(state)  # defaults restored, engine key order
    assert not back.remember("e1", 1_790_000_000_000, 7 * 86_400_000)
    # A record written as JSON by an earlier version (fingerprints as ints).
    legacy = orjson.dumps({"s": state, "pos": [3, 0], "seen": {"20717": [int.from_bytes(fingerprint("e1"), "big")]}})
    old = ContactRecord.decode("c7", legacy)
    assert old.state == state and old.pos == [3, 0] and not old.remember("e1", 1_790_000_000_000, 7 * 86_400_000)
    assert read_record(raw, "c7")["s"] == state
