"""The engine micro-benchmark feeds the worker order as the score agent does, and prints both orders."""

from __future__ import annotations

import orjson
import pytest

from benchmarks import engine_bench
from benchmarks.workload import WorkloadSpec, generate
from rules import default_model
from streams.events import contact_key


def _recorded_run(monkeypatch, encoded: list[bytes], batch: int) -> tuple[engine_bench.Run, list[tuple[str, int, str]]]:
    calls: list[tuple[str, int, str]] = []

    def recording_apply(state, event, model):
        calls.append((state["contact_id"], event["ts"], event["id"]))
        return []

    monkeypatch.setattr(engine_bench, "apply_event", recording_apply)
    return engine_bench._run_worker_order(encoded, batch, default_model()), calls


def test_worker_order_applies_each_distinct_event_once(monkeypatch) -> None:
    workload = generate(WorkloadSpec(events=3_000, seed=7), now_ms=engine_bench.START)
    assert workload.duplicates > 0  # the workload re-sends some ids: the order must drop them
    run, calls = _recorded_run(monkeypatch, [orjson.dumps(e) for e in workload.events], 500)

    distinct = {e["id"] for e in workload.events}
    assert run.applied == len(calls) == len(distinct)
    assert {event_id for _, _, event_id in calls} == distinct
    assert set(run.states) == {contact_key(e) for e in workload.events}


def test_worker_order_applies_a_contacts_events_together_in_event_time(monkeypatch) -> None:
    workload = generate(WorkloadSpec(events=3_000, seed=7), now_ms=engine_bench.START)
    assert workload.out_of_order > 0  # arrival order alone would not be event-time order
    encoded = [orjson.dumps(e) for e in workload.events]
    _, calls = _recorded_run(monkeypatch, encoded, len(encoded))  # one batch: one run per contact

    runs = [key for i, (key, _, _) in enumerate(calls) if i == 0 or calls[i - 1][0] != key]
    assert len(runs) == len(set(runs))
    for previous, current in zip(calls, calls[1:]):
        if previous[0] == current[0]:
            assert previous[1] <= current[1]


def test_both_orders_are_printed_with_their_own_figures(capsys: pytest.CaptureFixture[str]) -> None:
    assert engine_bench.main(["--events", "2000", "--contacts", "300", "--batch", "400", "--check"]) == 0
    out = capsys.readouterr().out
    for order in ("[uniform]", "[worker, batches of 400]"):
        assert f"{order} events/s (one core)" in out
        assert f"{order} triggers" in out
    assert "triggers sha256" in out and "states sha256" in out
    assert "rules.engine runs" in out


def test_bad_sizes_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        engine_bench.main(["--batch", "0"])
    assert exit_info.value.code == 2
    assert "--events, --contacts and --batch must be at least 1" in capsys.readouterr().err
