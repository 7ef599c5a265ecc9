"""The matching helpers that rules/normalize builds for the model compiler: the str memo and the path prefix filter."""

from __future__ import annotations

from rules import normalize


def test_memo_asks_once_per_string_and_forgets_everything_when_full() -> None:
    asked: list[object] = []

    def is_professor(value: object) -> bool:
        asked.append(value)
        return isinstance(value, str) and "professor" in value.lower()

    memo = normalize.memo_str(is_professor, size=2)
    assert memo("Professor of Psychology") is True
    assert memo("Professor of Psychology") is True
    assert memo("Therapist") is False
    assert asked == ["Professor of Psychology", "Therapist"]
    memo("Office Manager")  # the memo is full: it is cleared, then holds this answer only
    memo("Professor of Psychology")
    assert asked == ["Professor of Psychology", "Therapist", "Office Manager", "Professor of Psychology"]


def test_memo_always_asks_for_values_that_are_not_exact_strings() -> None:
    asked: list[object] = []

    def positive(value: object) -> bool:
        asked.append(value)
        return isinstance(value, (int, float)) and value > 0

    memo = normalize.memo_str(positive)
    assert [memo(0.0), memo(-0.0), memo(3), memo(3)] == [False, False, True, True]
    assert asked == [0.0, -0.0, 3, 3]


def test_prefix_filter_reads_the_path_or_else_the_url() -> None:
    careers = normalize.prefix_where("path", ["/careers", " /JOBS "])
    assert careers({"path": "/Careers/open-roles"})
    assert careers({"url": "https://example.com/jobs/12?ref=x#top"})
    assert not careers({"path": "/pricing", "url": "https://example.com/jobs"})  # the path wins
    assert not careers({"url": 42})
    assert not careers({})
    assert normalize.url_path("https://example.com") == "/"
    assert normalize.url_path("example.com/a/b?q=1") == "/a/b"


def test_prefix_filter_on_another_property_never_reads_the_url() -> None:
    campaign = normalize.prefix_where("campaign", "spring")
    assert campaign({"campaign": "Spring-2026"})
    assert not campaign({"url": "https://example.com/spring"})


def test_prefix_filter_answers_the_same_from_its_memory() -> None:
    careers = normalize.prefix_where("path", "/careers")
    paths = ["/careers", "/Careers/x", "/pricing", "/careers", "/pricing"] + [f"/p{i}" for i in range(5000)]
    first = [careers({"path": p}) for p in paths]
    again = [careers({"path": p}) for p in paths]  # remembered, then forgotten past 4,096 paths
    assert first == again == [p.lower().startswith("/careers") for p in paths]

    class Path(str):
        pass

    assert careers({"path": Path("/careers/y")}) and not careers({"path": Path("/jobs")})  # not remembered
