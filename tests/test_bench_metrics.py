"""Benchmark metrics on hand-made records: every number a table shows, recomputed by hand."""

from __future__ import annotations

import math

import pytest

from ppdecode.bench.methods import _accept_lengths
from ppdecode.bench.metrics import (
    OVERALL,
    SAME_TEXT,
    Record,
    first_difference,
    group_order,
    histogram,
    median,
    overhead,
    same_text_questions,
    speedup,
    summarise,
    tau,
    tokens_per_s,
)


def rec(method: str, qid: str, tokens: int, seconds: float, category: str = "c", **kw: object) -> Record:
    return Record(method=method, question_id=qid, category=category, new_tokens=tokens, seconds=seconds, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ([], [], None),
        ([1, 2, 3], [1, 2, 3], None),
        ([1, 2, 3], [1, 5, 3], 1),
        ([9], [1], 0),
        ([1, 2], [1, 2, 3], 2),  # a prefix differs at the first missing position
        ([1, 2, 3], [1, 2], 2),
        ([], [4], 0),
    ],
)
def test_first_difference(a: list[int], b: list[int], expected: int | None) -> None:
    assert first_difference(a, b) == expected


@pytest.mark.parametrize(
    ("lengths", "expected_tau", "expected_hist"),
    [
        ([], 0.0, {}),
        ([1, 1, 1], 1.0, {1: 3}),
        ([3, 1, 2, 2], 2.0, {1: 1, 2: 2, 3: 1}),
        ([4], 4.0, {4: 1}),
    ],
)
def test_tau_and_histogram(lengths: list[int], expected_tau: float, expected_hist: dict[int, int]) -> None:
    assert tau(lengths) == expected_tau
    assert histogram(lengths) == expected_hist
    assert list(histogram(reversed(lengths))) == sorted(expected_hist)


@pytest.mark.parametrize(("tokens", "seconds", "expected"), [(10, 2.0, 5.0), (0, 1.0, 0.0), (5, 0.0, 0.0)])
def test_tokens_per_s(tokens: int, seconds: float, expected: float) -> None:
    assert tokens_per_s(tokens, seconds) == expected


def test_median() -> None:
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert median([1.0, 4.0]) == 2.5
    with pytest.raises(ValueError):
        median([])


@pytest.mark.parametrize(
    ("mine", "base", "mean", "total", "n"),
    [
        # equal work, twice as fast on both questions
        ([("a", 10, 1.0), ("b", 10, 2.0)], [("a", 10, 2.0), ("b", 10, 4.0)], 2.0, 2.0, 2),
        # ratios 4 and 1: mean of ratios 2.5; totals (10+100)/(1+10) vs (10+100)/(4+10)
        ([("a", 10, 1.0), ("b", 100, 10.0)], [("a", 10, 4.0), ("b", 100, 10.0)], 2.5, 14 / 11, 2),
        # only shared questions count
        ([("a", 10, 1.0), ("x", 10, 100.0)], [("a", 10, 2.0)], 2.0, 2.0, 1),
        # different token counts: per-question tokens/s, not time
        ([("a", 20, 2.0)], [("a", 10, 2.0)], 2.0, 2.0, 1),
    ],
)
def test_speedup(
    mine: list[tuple[str, int, float]], base: list[tuple[str, int, float]], mean: float, total: float, n: int
) -> None:
    up = speedup([rec("m", q, t, s) for q, t, s in mine], [rec("b", q, t, s) for q, t, s in base])
    assert up.mean == pytest.approx(mean)
    assert up.total == pytest.approx(total)
    assert up.questions == n


def test_speedup_without_shared_questions_is_nan() -> None:
    up = speedup([rec("m", "a", 1, 1.0)], [rec("b", "z", 1, 1.0)])
    assert math.isnan(up.mean) and math.isnan(up.total) and up.questions == 0


def test_summarise_groups_and_pooled_tau() -> None:
    records = [
        rec("base", "q1", 10, 2.0, "x", accept_lengths=[1] * 9, steps=9),
        rec("base", "q2", 10, 1.0, "y", accept_lengths=[1] * 9, steps=9),
        rec("ppd", "q1", 10, 1.0, "x", accept_lengths=[3, 3, 3], steps=3, equal=True),
        rec("ppd", "q2", 10, 1.0, "y", accept_lengths=[1, 2, 2, 1, 3], steps=5, equal=False, first_diff=4),
        rec("hf", "q1", 10, 4.0, "x", accept_lengths=None, steps=6, equal=True),
        rec("hf", "q2", 10, 1.0, "y", accept_lengths=None, steps=6, equal=True),
    ]
    groups = summarise(records, "base")
    assert list(groups) == ["x", "y", OVERALL, SAME_TEXT]  # ppd wrote another text on q2
    assert list(groups[OVERALL]) == ["base", "ppd", "hf"]
    x = groups["x"]["ppd"]
    assert (x.questions, x.new_tokens, x.tau, x.steps) == (1, 10, 3.0, 3)
    assert x.speedup_mean == pytest.approx(2.0) and x.equal_rate == 1.0
    overall = groups[OVERALL]["ppd"]
    assert overall.tau == pytest.approx((9 + 9) / 8)  # pooled over steps, not a mean of means
    assert overall.tau_histogram == {1: 2, 2: 2, 3: 4}
    assert overall.speedup_mean == pytest.approx((2.0 + 1.0) / 2)
    assert overall.speedup_total == pytest.approx((20 / 2.0) / (20 / 3.0))
    assert overall.tokens_per_s_mean == pytest.approx(10.0)
    assert overall.equal_rate == 0.5 and overall.first_diffs == [4]
    assert groups[OVERALL]["hf"].tau is None  # unknown τ stays unknown
    assert groups[OVERALL]["base"].equal_rate is None  # never compared
    assert groups[OVERALL]["base"].speedup_total == pytest.approx(1.0)


def test_same_text_compares_methods_on_the_questions_where_they_wrote_the_same_answer() -> None:
    """Where a method's text differs from the reference's, ``same text`` keeps only the questions on
    which every compared method wrote the reference's text; it is left out when all (or none) did."""
    records = [
        rec("base", "q1", 10, 2.0, "x"),
        rec("base", "q2", 10, 2.0, "x"),
        rec("base", "q3", 10, 2.0, "y"),
        rec("ppd", "q1", 10, 1.0, "x", equal=True),
        rec("ppd", "q2", 40, 1.0, "x", equal=False, first_diff=3),  # a longer, other answer
        rec("ppd", "q3", 10, 0.5, "y", equal=True),
        rec("lookup", "q1", 10, 0.5, "x", equal=True),
        rec("lookup", "q2", 10, 1.0, "x", equal=True),
        rec("lookup", "q3", 10, 2.0, "y", equal=False, first_diff=1),
        rec("sampled", "q3", 10, 1.0, "y", greedy=False),  # never compared: no say in the group
    ]
    assert same_text_questions(records) == {"q1"}
    groups = summarise(records, "base")
    assert list(groups) == ["x", "y", OVERALL, SAME_TEXT]
    assert group_order(["x", SAME_TEXT, OVERALL, "y"]) == ["x", "y", OVERALL, SAME_TEXT]
    same = groups[SAME_TEXT]
    assert set(same) == {"base", "ppd", "lookup"} and all(s.questions == 1 for s in same.values())
    assert same["ppd"].speedup_total == pytest.approx(2.0)
    assert same["lookup"].speedup_total == pytest.approx(4.0)
    # overall, the other (longer) text counts
    assert groups[OVERALL]["ppd"].speedup_total == pytest.approx((60 / 2.5) / (30 / 6.0))
    all_equal = [r for r in records if r.question_id == "q1"]
    assert SAME_TEXT not in summarise(all_equal, "base")
    assert SAME_TEXT not in summarise([r for r in records if r.equal is None], "base")


def test_summarise_unknown_baseline() -> None:
    with pytest.raises(ValueError, match="baseline 'nope'"):
        summarise([rec("m", "a", 1, 1.0)], "nope")


def test_record_json_round_trip() -> None:
    record = rec("ppd", "q", 12, 3.0, accept_lengths=[2, 2, 1], steps=3, equal=False, first_diff=7)
    data = record.to_json()
    assert data["tokens_per_s"] == 4.0 and data["tau"] == pytest.approx(5 / 3)
    assert data["tau_histogram"] == {1: 1, 2: 2}
    assert Record.from_json(data) == record


@pytest.mark.parametrize(
    ("measured", "baseline", "reference", "extra", "percent"),
    [(110, 100, 1000, 10, 1.0), (100, 100, 50, 0, 0.0), (90, 100, 1000, -10, -1.0)],
)
def test_overhead(measured: int, baseline: int, reference: int, extra: int, percent: float) -> None:
    result = overhead(measured, baseline, reference)
    assert result.bytes == extra and result.percent == pytest.approx(percent)


def test_overhead_needs_a_reference() -> None:
    with pytest.raises(ValueError):
        overhead(1, 0, 0)


@pytest.mark.parametrize(
    ("starts", "prompt", "new", "expected"),
    [
        ([0, 5, 6, 7], 5, 4, [1, 1, 1]),  # greedy: prefill + one forward per further token
        ([0], 5, 1, []),  # only the prefill
        ([0, 5, 8, 9], 5, 7, [3, 1, 2]),  # assisted: the cache grows by what each step committed
        ([0, 7, 9], 5, 8, [2, 3]),  # assisted: the prefill already verified a draft (3 tokens)
        ([0, -1], 5, 2, None),  # a forward without a cache: unknown
        ([], 5, 0, None),
    ],
)
def test_accept_lengths_from_cache_lengths(
    starts: list[int], prompt: int, new: int, expected: list[int] | None
) -> None:
    lengths = _accept_lengths(starts, prompt, new)
    assert lengths == expected
    if lengths:
        prefill_commits = starts[1] - prompt + 1
        assert sum(lengths) == new - prefill_commits
