"""Benchmark metrics as pure functions of per-question records (definitions: docs/benchmarks.md).

A ``Record`` is what one method did on one question (all its turns): new tokens, the median time
over repeats, the forward passes after the prefill ("steps"), and τ of each step. Nothing here
touches a model, so every number in a table can be recomputed from the JSON lines.

Vocabulary:
- tokens/s of a question: new tokens / seconds (all turns together, median seconds over repeats).
- speed-up over a baseline: ``mean`` = mean over questions of (tokens/s of the method / tokens/s
  of the baseline on the same question); ``total`` = (Σ tokens / Σ seconds) of the method divided
  by the same ratio of the baseline, over the questions both ran.
- τ: tokens committed per forward pass after the prefill, bonus included (vanilla = 1), pooled
  over all steps: Σ accept lengths / Σ steps.
- same text: the questions on which every method compared with the reference wrote the reference's
  text. In bf16 a method that verifies several tokens per forward can round its way to another
  answer, and then two methods time different texts; on these questions they time the same one.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

OVERALL = "overall"
SAME_TEXT = "same text"


@dataclass
class Record:
    """One method on one question (every turn), timed as the median over repeats."""

    method: str
    question_id: str
    category: str
    new_tokens: int
    seconds: float  # median over repeats of the time of all turns
    steps: int = 0  # forward passes after the prefill, all turns
    accept_lengths: list[int] | None = None  # τ of each step; None when the method cannot tell
    greedy: bool = True
    equal: bool | None = None  # output == the reference method's output (greedy methods only)
    first_diff: int | None = None  # first differing position in the concatenated turns, None if equal
    seconds_repeats: list[float] = field(default_factory=list)
    peak_rss_bytes: int | None = None
    peak_alloc_bytes: int | None = None  # CUDA only
    turns: list[dict[str, Any]] = field(default_factory=list)  # per-turn text, token ids, finish reason
    draft_steps: int | None = None  # forwards of the draft model, all turns (methods with a draft)

    @property
    def tokens_per_s(self) -> float:
        return tokens_per_s(self.new_tokens, self.seconds)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["tokens_per_s"] = self.tokens_per_s
        data["tau"] = tau(self.accept_lengths or []) if self.accept_lengths is not None else None
        data["tau_histogram"] = histogram(self.accept_lengths or [])
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Record:
        names = cls.__dataclass_fields__.keys()
        return cls(**{key: value for key, value in data.items() if key in names})


def tokens_per_s(tokens: int, seconds: float) -> float:
    return tokens / seconds if seconds > 0 else 0.0


def median(values: Sequence[float]) -> float:
    if not values:
        raise ValueError("median of no values")
    return float(statistics.median(values))


def tau(accept_lengths: Sequence[int]) -> float:
    """Mean tokens committed per forward pass (bonus included); 0.0 when there were no steps."""
    return sum(accept_lengths) / len(accept_lengths) if accept_lengths else 0.0


def histogram(accept_lengths: Iterable[int]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for length in accept_lengths:
        counts[length] = counts.get(length, 0) + 1
    return dict(sorted(counts.items()))


def first_difference(a: Sequence[int], b: Sequence[int]) -> int | None:
    """The first position where two token sequences differ (a length mismatch counts); None if equal."""
    for index, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return index
    return None if len(a) == len(b) else min(len(a), len(b))


@dataclass(frozen=True)
class Speedup:
    mean: float  # mean of per-question tokens/s ratios
    total: float  # ratio of total tokens / total seconds
    questions: int  # questions both methods ran


def speedup(records: Sequence[Record], baseline: Sequence[Record]) -> Speedup:
    """Speed-up of ``records`` over ``baseline``, paired by question; NaN when they share no question."""
    base = {r.question_id: r for r in baseline}
    pairs = [(r, base[r.question_id]) for r in records if r.question_id in base]
    ratios = [r.tokens_per_s / b.tokens_per_s for r, b in pairs if b.tokens_per_s > 0]
    if not pairs or not ratios:
        return Speedup(math.nan, math.nan, 0)
    mine = tokens_per_s(sum(r.new_tokens for r, _ in pairs), sum(r.seconds for r, _ in pairs))
    theirs = tokens_per_s(sum(b.new_tokens for _, b in pairs), sum(b.seconds for _, b in pairs))
    return Speedup(sum(ratios) / len(ratios), mine / theirs if theirs > 0 else math.nan, len(pairs))


@dataclass(frozen=True)
class MethodSummary:
    """One method over one group of questions (a category or all of them)."""

    method: str
    group: str
    questions: int
    new_tokens: int
    seconds: float
    tokens_per_s_mean: float  # mean of per-question tokens/s
    tokens_per_s_total: float  # Σ tokens / Σ seconds
    speedup_mean: float
    speedup_total: float
    tau: float | None  # pooled over all steps; None when the method cannot tell
    steps: int
    tau_histogram: dict[int, int]
    equal_rate: float | None  # share of questions whose output equals the reference; None: not compared
    first_diffs: list[int]  # first differing positions of the unequal questions
    draft_steps_per_step: float | None = None  # draft-model forwards per target step (with a draft)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def summarise_group(
    method: str, group: str, records: Sequence[Record], baseline: Sequence[Record]
) -> MethodSummary:
    if not records:
        raise ValueError(f"no records of {method} in {group}")
    up = speedup(records, baseline)
    known = [r for r in records if r.accept_lengths is not None]
    lengths = [length for r in known for length in r.accept_lengths or []]
    compared = [r for r in records if r.equal is not None]
    drafted = [r for r in records if r.draft_steps is not None]
    steps = sum(r.steps for r in drafted)
    return MethodSummary(
        method=method,
        group=group,
        questions=len(records),
        new_tokens=sum(r.new_tokens for r in records),
        seconds=sum(r.seconds for r in records),
        tokens_per_s_mean=sum(r.tokens_per_s for r in records) / len(records),
        tokens_per_s_total=tokens_per_s(sum(r.new_tokens for r in records), sum(r.seconds for r in records)),
        speedup_mean=up.mean,
        speedup_total=up.total,
        tau=tau(lengths) if known else None,
        steps=sum(r.steps for r in records),
        tau_histogram=histogram(lengths),
        equal_rate=sum(bool(r.equal) for r in compared) / len(compared) if compared else None,
        first_diffs=[r.first_diff for r in compared if not r.equal and r.first_diff is not None],
        draft_steps_per_step=sum(r.draft_steps or 0 for r in drafted) / steps if drafted and steps else None,
    )


def summarise(records: Sequence[Record], baseline: str) -> dict[str, dict[str, MethodSummary]]:
    """Summaries per category, ``overall`` and, where some texts differ from the reference's, the
    ``same text`` questions: {group: {method: summary}}, categories in first-seen order."""
    methods = list(dict.fromkeys(r.method for r in records))
    if baseline not in methods:
        raise ValueError(f"baseline {baseline!r} has no records; methods run: {', '.join(methods)}")
    members: dict[str, set[str]] = {}  # group -> its questions
    for r in records:
        members.setdefault(r.category, set()).add(r.question_id)
    members[OVERALL] = {r.question_id for r in records}
    same = same_text_questions(records)
    if same and same != members[OVERALL]:
        members[SAME_TEXT] = same
    out: dict[str, dict[str, MethodSummary]] = {}
    for group, questions in members.items():
        in_group = [r for r in records if r.question_id in questions]
        base = [r for r in in_group if r.method == baseline]
        out[group] = {}
        for method in methods:
            mine = [r for r in in_group if r.method == method]
            if mine:
                out[group][method] = summarise_group(method, group, mine, base)
    return out


def same_text_questions(records: Sequence[Record]) -> set[str]:
    """Questions on which every record compared with the reference equals it (none compared: none)."""
    compared: dict[str, bool] = {}
    for r in records:
        if r.equal is not None:
            compared[r.question_id] = compared.get(r.question_id, True) and r.equal
    return {question for question, equal in compared.items() if equal}


def group_order(groups: Iterable[str]) -> list[str]:
    """Categories first, then ``overall``, then ``same text`` where there is one."""
    groups = list(groups)
    tail = [g for g in (OVERALL, SAME_TEXT) if g in groups]
    return [g for g in groups if g not in tail] + tail


@dataclass(frozen=True)
class Overhead:
    bytes: int
    percent: float  # of the reference size


def overhead(measured: int, baseline: int, reference: int) -> Overhead:
    """Extra bytes of ``measured`` over ``baseline``, and that as a percentage of ``reference``."""
    if reference <= 0:
        raise ValueError(f"reference size must be positive, got {reference}")
    extra = measured - baseline
    return Overhead(extra, 100.0 * extra / reference)
