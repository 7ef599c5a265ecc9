"""Summarise a py-spy ``--format raw`` profile (collapsed stacks) of the leadpulse worker.

    python -m benchmarks.profile FILE [--top 25]

Prints (and returns, for the suite's JSON):

- samples per thread (py-spy ``--threads`` puts the thread first in each stack);
- time by layer: each sample is charged to the innermost frame that belongs to a
  known layer (redis-py, leadpulse's Redis sink, rules engine, streams, faust tables,
  faust/mode, aiokafka, prometheus, asyncio), so "rules engine" is scoring itself and
  "faust/mode" is the per-record stream machinery around it. orjson is C code and is
  not sampled by py-spy: its time shows as self time of the Python line that calls it
  (``decode_record``, ``ContactRecord.encode``, ...), listed in the self-time table;
- the top functions by self time and by inclusive time.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path
from typing import Any

# (layer, pattern on "function (file:line)") in the order they are tried for each frame.
LAYERS: list[tuple[str, re.Pattern[str]]] = [
    ("orjson encode/decode (C, seen at its Python caller)", re.compile(r"^(decode_record|encode_envelope|encode_event) \(streams/events|^(ContactRecord\.)?(encode|decode) \(streams/state")),
    ("redis-py client", re.compile(r"\((redis|hiredis)/")),
    ("leadpulse Redis sink", re.compile(r"\(connectors/sinks/redis_sink")),
    ("rules engine (scoring)", re.compile(r"\(rules/")),
    ("streams processor/state (dedupe, grouping, records)", re.compile(r"\(streams/(processor|state|events|bots)")),
    ("streams app (agent, table writes, sends)", re.compile(r"\(streams/app")),
    ("faust tables/changelog", re.compile(r"\(faust/(tables|stores)/")),
    ("faust producer/send", re.compile(r"\(faust/(transport/producer|topics|channels)|\(faust/transport/drivers/aiokafka.*(send|produce)")),
    ("faust consumer/stream machinery", re.compile(r"\(faust/")),
    ("mode (faust's service layer)", re.compile(r"\(mode/")),
    ("aiokafka client", re.compile(r"\(aiokafka/|\(kafka/")),
    ("prometheus metrics", re.compile(r"\(prometheus_client/")),
    ("worker glue (ops)", re.compile(r"\(ops/")),
    ("aiohttp", re.compile(r"\(aiohttp/")),
    ("asyncio / event loop", re.compile(r"\((asyncio|uvloop|selectors)/")),
]
_FILE = re.compile(r"\((?:.*?site-packages/|.*?/lib/python3\.\d+/|.*?/main/)?([^:)]+):?\d*\)")


def _short(frame: str) -> str:
    """``func (/abs/.../site-packages/faust/x.py:12)`` -> ``func (faust/x.py:12)``."""
    frame = re.sub(r"\(/[^()]*?site-packages/", "(", frame)
    frame = re.sub(r"\(/[^()]*?/lib/python3\.\d+/", "(", frame)
    frame = re.sub(r"\(/work/[^()]*?/(streams|rules|connectors|ops|benchmarks)/", r"(\1/", frame)
    return frame


def _no_line(frame: str) -> str:
    return re.sub(r":\d+\)$", ")", frame)


def parse(path: Path) -> list[tuple[list[str], int]]:
    stacks = []
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        stacks.append(([_short(f) for f in stack.split(";")], int(count)))
    return stacks


def summarise(path: Path, top: int = 25, seconds: float | None = None, rate: int | None = None) -> dict[str, Any]:
    stacks = parse(path)
    total = sum(c for _, c in stacks) or 1
    threads: Counter = Counter()
    layers: Counter = Counter()
    self_time: Counter = Counter()
    inclusive: Counter = Counter()
    for frames, count in stacks:
        if frames and (frames[0].startswith("thread ") or frames[0].startswith("process ")):
            thread, frames = frames[0], frames[1:]
            if frames and frames[0].startswith("thread "):
                thread, frames = frames[0], frames[1:]
            threads[re.sub(r"0x[0-9A-Fa-f]+", "", thread).strip()] += count
        if not frames:
            continue
        self_time[_no_line(frames[-1])] += count
        for name in {_no_line(f) for f in frames}:
            inclusive[name] += count
        for frame in reversed(frames):
            layer = next((name for name, pattern in LAYERS if pattern.search(frame)), None)
            if layer is not None:
                layers[layer] += count
                break
        else:
            layers["other"] += count

    def pct(rows: Counter, n: int) -> list[list[Any]]:
        return [[name, round(100.0 * c / total, 1)] for name, c in rows.most_common(n)]

    out = {
        "file": str(path),
        "samples": total,
        "threads": pct(threads, 10),
        "layers": pct(layers, 20),
        "self": pct(self_time, top),
        "inclusive": pct(inclusive, top),
    }
    if seconds and rate:
        out["active_share"] = round(total / (seconds * rate), 2)
    return out


def format_summary(summary: dict[str, Any], top: int = 20) -> str:
    lines = [f"py-spy profile {summary['file']}: {summary['samples']:,} samples"
             + (f", {summary['active_share']:.0%} of wall time active" if "active_share" in summary else "")]
    if summary["threads"]:
        lines.append("threads: " + ", ".join(f"{name} {p}%" for name, p in summary["threads"]))
    lines.append("time by layer (innermost known frame):")
    lines += [f"  {p:5.1f}%  {name}" for name, p in summary["layers"]]
    lines.append("top self time:")
    lines += [f"  {p:5.1f}%  {name}" for name, p in summary["self"][:top]]
    lines.append("top inclusive time:")
    lines += [f"  {p:5.1f}%  {name}" for name, p in summary["inclusive"][:top]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile")
    parser.add_argument("file", type=Path)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    print(format_summary(summarise(args.file, args.top), args.top))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
