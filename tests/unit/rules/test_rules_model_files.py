"""Bad model files fail with file, line and field; load_model never returns a half-valid model."""

from __future__ import annotations

from pathlib import Path

import pytest

from rules import ModelError, load_model
from rules.model import DEFAULT_MODEL_PATH

DEFAULT_TEXT = DEFAULT_MODEL_PATH.read_text()
HEALTH_TEXT = (DEFAULT_MODEL_PATH.parent / "health.yaml").read_text()


def write(tmp_path: Path, text: str, health: str | None = HEALTH_TEXT) -> Path:
    if health is not None:
        (tmp_path / "health.yaml").write_text(health)
    path = tmp_path / "model.yaml"
    path.write_text(text)
    return path


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def test_default_model_file_loads(tmp_path):
    model = load_model(write(tmp_path, DEFAULT_TEXT))
    assert model.version == "2026.11-seed-2" and model.health_version == "2026.11-health-seed-002"


@pytest.mark.parametrize(
    "old,new,field,words",
    [
        ("half_life: 30d}\n    - {id: whitepaper", "half_life: 30 days}\n    - {id: whitepaper",
         "behaviour.rules.2.half_life", "not a duration"),
        ("points: 25, cap", "pionts: 25, cap", "behaviour.rules.2.pionts", "Extra inputs are not permitted"),
        ("{type: mql, score: 80,", "{type: mql, score: 180,", "thresholds.0.score", "less than or equal to 100"),
        ("{name: hot, min: 51}", "{name: hot, min: 20}", "", "bands: band 'hot' must start above band 'warm'"),
        ("regex: '\\b(prof|", "regex: '\\b((prof|", "fit.categories.0.options.1.regex", "invalid regular expression"),
        ("{type: hot_lead, band: hot,", "{type: hot_lead, band: tepid,", "", "unknown band 'tepid'"),
        ("signal: webinar_attended, points: 20", "signal: webinar_attendance, points: 20", "",
         "unknown signal 'webinar_attendance'"),
    ],
)
def test_errors_name_file_line_and_field(tmp_path, old, new, field, words):
    assert old in DEFAULT_TEXT, old
    text = DEFAULT_TEXT.replace(old, new, 1)
    path = write(tmp_path, text)
    with pytest.raises(ModelError) as err:
        load_model(path)
    message = str(err.value)
    assert str(path) in message and words in message
    if field:
        assert f": {field}: " in message
        expected_line = line_of(text, new.split("\n")[0])
        assert f"{path}:{expected_line}:" in message


def test_missing_version_and_weights_that_do_not_add_up(tmp_path):
    text = DEFAULT_TEXT.replace('version: "2026.11-seed-2"\n', "").replace("weight: 60 ", "weight: 50 ")
    with pytest.raises(ModelError) as err:
        load_model(write(tmp_path, text))
    message = str(err.value)
    assert "version: Field required" in message


def test_yaml_syntax_error_has_a_line(tmp_path):
    text = DEFAULT_TEXT.replace("mql_threshold: 80", "mql_threshold: [80")
    path = write(tmp_path, text)
    with pytest.raises(ModelError) as err:
        load_model(path)
    assert "YAML syntax" in str(err.value) and f"{path}:" in str(err.value)


def test_norway_problem_is_caught(tmp_path):
    text = DEFAULT_TEXT.replace('"NO"', "NO")
    with pytest.raises(ModelError, match="quote values such as 'NO'"):
        load_model(write(tmp_path, text))


def test_missing_or_bad_health_model_fails_the_whole_load(tmp_path):
    with pytest.raises(ModelError, match="health_model: file not found"):
        load_model(write(tmp_path, DEFAULT_TEXT, health=None))
    bad = HEALTH_TEXT.replace("weight: 0.25", "weight: 0.35")
    with pytest.raises(ModelError, match="weights must add up to 1"):
        load_model(write(tmp_path, DEFAULT_TEXT, health=bad))


def test_unreadable_file_and_non_mapping(tmp_path):
    with pytest.raises(ModelError, match="cannot read"):
        load_model(tmp_path / "nope.yaml")
    with pytest.raises(ModelError, match="must be a YAML mapping"):
        load_model(write(tmp_path, "- just\n- a list\n"))


def test_custom_model_with_property_filters(tmp_path):
    from _rules_support import T0, ev, run

    from rules.engine import view

    text = DEFAULT_TEXT.replace(
        "  negative_rules:\n",
        "    - {id: pricing_page, signal: page_view, where: {path: {prefix: /pricing}}, points: 10}\n"
        "    - {id: long_visit, signal: time_on_site, where: {seconds: {range: {gte: 120}}}, points: 5}\n"
        "  negative_rules:\n",
    )
    model = load_model(write(tmp_path, text))
    state, _ = run([ev("page_view", properties={"path": "/Pricing/teams"}), ev("time_on_site",
                   properties={"seconds": 300}), ev("time_on_site", properties={"seconds": 30})], model=model)
    assert view(state, model, T0)["behaviour"] == pytest.approx((5 + 10 + 10 + 5 + 10) * 0.6)
