"""The rules CLI: validate exit codes and messages, diff in words, explain from a state file."""

from __future__ import annotations

import argparse

import orjson
from _rules_support import DAY, PERFECT, T0, ev, run

from ops.rules_commands import add_rules_commands
from rules import default_model, load_model
from rules.diff import diff_models
from rules.model import DEFAULT_MODEL_PATH

DEFAULT_TEXT = DEFAULT_MODEL_PATH.read_text()


def cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="leadpulse")
    add_rules_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return args.func(args)


def copy_model(tmp_path, text: str, name: str = "new.yaml"):
    (tmp_path / "health.yaml").write_text((DEFAULT_MODEL_PATH.parent / "health.yaml").read_text())
    path = tmp_path / name
    path.write_text(text)
    return path


def test_validate_ok(capsys):
    assert cli("rules", "validate", str(DEFAULT_MODEL_PATH)) == 0
    assert capsys.readouterr().out.startswith("ok: version 2026.11-seed-2")


def test_validate_bad_file_exits_1_with_located_errors(tmp_path, capsys):
    path = copy_model(tmp_path, DEFAULT_TEXT.replace("cooldown: 24h}\n  - {type: hot_lead", "cooldown: soon}\n  - "
                                                     "{type: hot_lead"))
    assert cli("rules", "validate", str(path)) == 1
    err = capsys.readouterr().err
    assert f"{path}:" in err and "thresholds.0.cooldown: not a duration: 'soon'" in err


def test_diff_in_words(tmp_path, capsys):
    text = (
        DEFAULT_TEXT.replace('version: "2026.11-seed-2"', 'version: "2026.12"')
        .replace("{id: page_view, signal: page_view, points: 5,", "{id: page_view, signal: page_view, points: 7,")
        .replace("mql_threshold: 80", "mql_threshold: 75")
        .replace("{type: mql, score: 80, hysteresis: 10", "{type: mql, score: 75, hysteresis: 5")
        .replace("{name: hot, min: 51}", "{name: hot, min: 55}")
        .replace("    - {id: twitter_engagement, signal: twitter_engagement, points: 3, cap: {points: 9, window: 7d}, "
                 "half_life: 14d}\n", "")
        .replace("  negative_rules:\n", "    - {id: pricing_page, signal: page_view, where: {path: {prefix: /pricing}},"
                 " points: 10}\n  negative_rules:\n")
        .replace("half_life: 30d}\n    - {id: whitepaper", "half_life: 21d}\n    - {id: whitepaper")
    )
    new = copy_model(tmp_path, text)
    assert cli("rules", "diff", str(DEFAULT_MODEL_PATH), str(new)) == 0
    out = capsys.readouterr().out
    for sentence in [
        "version '2026.11-seed-2' -> '2026.12'",
        "behaviour rule 'page_view': points 5 -> 7",
        "behaviour rule 'demo_request': half_life 30d -> 3w",
        "removed behaviour rule 'twitter_engagement'",
        "added behaviour rule 'pricing_page'",
        "band 'hot' starts at 51 -> 55",
        "mql_threshold 80 -> 75",
        "threshold 'mql': score 80 -> 75",
        "threshold 'mql': hysteresis 10 -> 5",
    ]:
        assert sentence in out, sentence


def test_diff_of_identical_models_says_so(capsys):
    assert diff_models(default_model(), load_model(DEFAULT_MODEL_PATH)) == []
    assert cli("rules", "diff", str(DEFAULT_MODEL_PATH), str(DEFAULT_MODEL_PATH)) == 0
    assert "no changes" in capsys.readouterr().out


def test_explain_from_a_state_file(tmp_path, capsys):
    state, _ = run([ev("identify", traits=dict(PERFECT, email="x@gmail.com")), ev("demo_request"), ev("page_view"),
                    ev("unsubscribe")])
    path = tmp_path / "state.json"
    path.write_bytes(orjson.dumps(state))
    assert cli("rules", "explain", "c1", "--state-file", str(path), "--rules", str(DEFAULT_MODEL_PATH),
               "--at", str(T0 + 30 * DAY)) == 0
    out = capsys.readouterr().out
    assert "contact c1" in out and "model 2026.11-seed-2" in out
    assert "title         Psychologist      +20 raw = +10.00" in out
    assert "+7.50  (raw +12.50, +25 each; 1 event" in out
    assert "free_mail_domain" in out and "SUPPRESSED: unsubscribed" in out


def test_explain_rejects_a_non_state(tmp_path, capsys):
    path = tmp_path / "x.json"
    path.write_bytes(b"[1,2]")
    assert cli("rules", "explain", "c1", "--state-file", str(path), "--rules", str(DEFAULT_MODEL_PATH)) == 1
