"""Batch benchmarks (METHOD §8) as pure functions: batches of prompts, per-batch records, summaries.

The batch mode of ``ppd bench`` (``--batch 1,2,4,8,16``) decodes the same prompts in consecutive
batches of B rows with each method, and asks where PPD stops paying as B grows: a forward over B
rows of n inputs turns compute-bound, so the guesses that were free at batch 1 start to cost.

Vocabulary (docs/benchmarks.md, "Batches"):
- a batch: B prompts decoded together by one call; a row: one prompt of a batch.
- throughput of a batch: Σ new tokens over its rows / the wall time of the call (tokens/s).
- speed-up of a method over another at one B: the median over batches of the paired ratio of
  their throughputs on the same batch (``median``), and Σ tokens / Σ seconds of one over the
  same of the other (``total``).
- τ of a batch: Σ accept lengths / Σ steps over all its rows (pooled, bonus included).
- equal: a row's tokens are the reference method's (our vanilla) tokens on the same row.
Nothing here touches a model: every number can be recomputed from the JSON lines.
"""

from __future__ import annotations

import enum
import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ppdecode.bench.metrics import first_difference, tau, tokens_per_s

BATCH_FAMILIES = ("vanilla", "ppd", "hf-greedy")
REFERENCE = "vanilla"
# (method, over): the speed-ups the table shows; PPD pays at a batch size while ppd/vanilla > 1
RATIOS = (("ppd", "vanilla"), ("vanilla", "hf-greedy"), ("ppd", "hf-greedy"))


class Remainder(str, enum.Enum):
    """What happens to the prompts left over when B does not divide their number."""

    WRAP = "wrap"  # the last batch is filled up from the first prompts: every batch has B rows
    DROP = "drop"  # the last, partial batch is not run

    @classmethod
    def of(cls, value: str) -> Remainder:
        try:
            return cls(value)
        except ValueError:
            choices = ", ".join(r.value for r in cls)
            raise ValueError(f"--remainder {value!r}: choose {choices}") from None


def parse_batch_sizes(text: str | Sequence[str]) -> tuple[int, ...]:
    """``"1,2,4"`` (or several such strings) → (1, 2, 4): positive, distinct, in the order given."""
    parts = [p.strip() for value in ([text] if isinstance(text, str) else text) for p in value.split(",")]
    parts = [p for p in parts if p]
    if not parts:
        raise ValueError("--batch needs at least one batch size, e.g. --batch 1,2,4,8,16")
    try:
        sizes = tuple(int(p) for p in parts)
    except ValueError:
        raise ValueError(
            f"--batch takes whole numbers separated by commas, got {','.join(parts)!r}"
        ) from None
    if any(b < 1 for b in sizes) or len(set(sizes)) != len(sizes):
        raise ValueError(f"batch sizes must be distinct and >= 1, got {list(sizes)}")
    return sizes


def group_batches(count: int, batch_size: int, remainder: Remainder = Remainder.WRAP) -> list[list[int]]:
    """Consecutive batches of ``batch_size`` prompt indices out of ``count`` prompts.

    ``WRAP`` fills the last batch up with the first prompts, so every prompt runs and every batch has
    ``batch_size`` rows; ``DROP`` leaves the partial batch out.
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    if batch_size > count:
        raise ValueError(
            f"batch size {batch_size} needs at least {batch_size} prompts, but there are {count}; "
            "raise --limit, choose more --categories, or leave that size out of --batch"
        )
    remainder = Remainder.of(remainder)
    full, left = divmod(count, batch_size)
    batches = [list(range(i * batch_size, (i + 1) * batch_size)) for i in range(full)]
    if left and remainder is Remainder.WRAP:
        batches.append([*range(full * batch_size, count), *range(batch_size - left)])
    return batches


@dataclass
class BatchRow:
    """One row (prompt) of a batch, as one method decoded it."""

    question_id: str
    category: str
    new_tokens: int  # up to and including EOS; padding after it is not counted
    steps: int  # forward passes of this row after the prefill
    accept_lengths: list[int] | None  # τ of each of its steps; None when the method cannot tell
    finish_reason: str
    token_ids: list[int]
    text: str = ""
    equal: bool | None = None  # tokens == the reference method's on the same row (None: not compared)
    first_diff: int | None = None


@dataclass
class BatchRecord:
    """One method on one batch: the wall time of the call (median over repeats) and its rows."""

    method: str
    batch_size: int
    batch_index: int
    seconds: float
    rows: list[BatchRow]
    seconds_repeats: list[float] = field(default_factory=list)
    peak_rss_bytes: int | None = None
    cache: dict[str, Any] | None = None  # the engine's cache report after the call (our engine only)

    @property
    def new_tokens(self) -> int:
        return sum(r.new_tokens for r in self.rows)

    @property
    def tokens_per_s(self) -> float:
        return tokens_per_s(self.new_tokens, self.seconds)

    @property
    def accept_lengths(self) -> list[int] | None:
        if any(r.accept_lengths is None for r in self.rows):
            return None
        return [length for r in self.rows for length in r.accept_lengths or []]

    @property
    def tau(self) -> float | None:
        lengths = self.accept_lengths
        return None if lengths is None else tau(lengths)

    @property
    def equal_rate(self) -> float | None:
        compared = [r.equal for r in self.rows if r.equal is not None]
        return sum(compared) / len(compared) if compared else None

    def to_json(self) -> dict[str, Any]:
        data = {"kind": "batch", **asdict(self)}
        data.update(new_tokens=self.new_tokens, tokens_per_s=self.tokens_per_s, tau=self.tau)
        data["question_ids"] = [r.question_id for r in self.rows]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BatchRecord:
        names = cls.__dataclass_fields__.keys()
        fields = {key: value for key, value in data.items() if key in names}
        fields["rows"] = [BatchRow(**row) for row in data["rows"]]
        return cls(**fields)


def compare_rows(records: Sequence[BatchRecord], reference: str = REFERENCE) -> None:
    """Mark every row of every other method equal or not to the reference's row on the same batch."""
    expected = {(r.batch_size, r.batch_index): r for r in records if r.method == reference}
    for record in records:
        ref = expected.get((record.batch_size, record.batch_index))
        if record.method == reference or ref is None:
            continue
        for row, ref_row in zip(record.rows, ref.rows, strict=True):
            row.first_diff = first_difference(row.token_ids, ref_row.token_ids)
            row.equal = row.first_diff is None


@dataclass(frozen=True)
class Ratio:
    median: float  # median over batches of the paired throughput ratios
    total: float  # (Σ tokens / Σ seconds) over (Σ tokens / Σ seconds) of the other method
    batches: int  # batches both methods ran


def ratio(mine: Sequence[BatchRecord], theirs: Sequence[BatchRecord]) -> Ratio:
    """Throughput of ``mine`` over ``theirs``, paired by batch; NaN when they share no batch."""
    other = {(r.batch_size, r.batch_index): r for r in theirs}
    pairs = [
        (r, other[(r.batch_size, r.batch_index)]) for r in mine if (r.batch_size, r.batch_index) in other
    ]
    ratios = [a.tokens_per_s / b.tokens_per_s for a, b in pairs if b.tokens_per_s > 0]
    if not ratios:
        return Ratio(math.nan, math.nan, 0)
    a_total = tokens_per_s(sum(a.new_tokens for a, _ in pairs), sum(a.seconds for a, _ in pairs))
    b_total = tokens_per_s(sum(b.new_tokens for _, b in pairs), sum(b.seconds for _, b in pairs))
    return Ratio(statistics.median(ratios), a_total / b_total if b_total > 0 else math.nan, len(pairs))


@dataclass(frozen=True)
class BatchSummary:
    """One method at one batch size, over all its batches."""

    method: str
    batch_size: int
    batches: int
    rows: int
    new_tokens: int
    seconds: float
    tokens_per_s_median: float  # median over batches of the batch throughput
    tokens_per_s_total: float  # Σ tokens / Σ seconds
    tokens_per_s_batches: list[float]
    tau: float | None  # pooled over every step of every row; None when the method cannot tell
    steps: int
    equal_rate: float | None  # share of rows equal to the reference's; None: not compared
    first_diffs: list[int]  # first differing positions of the unequal rows
    over: dict[str, dict[str, float]]  # {other method: {"median", "total", "batches"}}
    cache: dict[str, Any] | None  # the engine's last cache report at this batch size
    peak_rss_bytes: int | None  # median over batches

    def to_json(self) -> dict[str, Any]:
        return {"kind": "summary", **asdict(self)}


def summarise_batches(records: Sequence[BatchRecord]) -> list[BatchSummary]:
    """One summary per (method, batch size), batch sizes and methods in first-seen order."""
    sizes = list(dict.fromkeys(r.batch_size for r in records))
    methods = list(dict.fromkeys(r.method for r in records))
    out: list[BatchSummary] = []
    for size in sizes:
        at_size = {m: [r for r in records if r.batch_size == size and r.method == m] for m in methods}
        for method, mine in at_size.items():
            if mine:
                out.append(_summary(method, size, mine, at_size))
    return out


def _summary(
    method: str, size: int, mine: list[BatchRecord], at_size: dict[str, list[BatchRecord]]
) -> BatchSummary:
    rows = [row for r in mine for row in r.rows]
    known = all(r.accept_lengths is not None for r in mine)
    lengths = [length for r in mine for length in r.accept_lengths or []]
    compared = [row for row in rows if row.equal is not None]
    caches = [r.cache for r in mine if r.cache is not None]
    rss = [r.peak_rss_bytes for r in mine if r.peak_rss_bytes is not None]
    over = {
        other: asdict(ratio(mine, theirs)) for other, theirs in at_size.items() if other != method and theirs
    }
    per_batch = [r.tokens_per_s for r in mine]
    return BatchSummary(
        method=method,
        batch_size=size,
        batches=len(mine),
        rows=len(rows),
        new_tokens=sum(r.new_tokens for r in mine),
        seconds=sum(r.seconds for r in mine),
        tokens_per_s_median=statistics.median(per_batch),
        tokens_per_s_total=tokens_per_s(sum(r.new_tokens for r in mine), sum(r.seconds for r in mine)),
        tokens_per_s_batches=per_batch,
        tau=tau(lengths) if known else None,
        steps=sum(row.steps for row in rows),
        equal_rate=sum(bool(row.equal) for row in compared) / len(compared) if compared else None,
        first_diffs=[row.first_diff for row in compared if not row.equal and row.first_diff is not None],
        over=over,
        cache=caches[-1] if caches else None,
        peak_rss_bytes=int(statistics.median(rss)) if rss else None,
    )


def speedup_at(summaries: Sequence[dict[str, Any]], method: str, over: str) -> dict[int, float]:
    """{batch size: median speed-up of ``method`` over ``over``} from summary records (JSON form)."""
    return {
        s["batch_size"]: s["over"][over]["median"]
        for s in summaries
        if s["method"] == method and over in s["over"]
    }


def ppd_not_faster(summaries: Sequence[dict[str, Any]]) -> list[int]:
    """Batch sizes at which PPD's median speed-up over vanilla is at most 1 (or unknown), smallest first."""
    ups = speedup_at(summaries, "ppd", "vanilla")
    return sorted(size for size, up in ups.items() if not up > 1.0)  # NaN counts as not faster


def ppd_stops_paying(summaries: Sequence[dict[str, Any]]) -> int | None:
    """The smallest B from which on PPD is no faster than vanilla, at every larger B too; None: no such B."""
    sizes = sorted(speedup_at(summaries, "ppd", "vanilla"))
    slow = set(ppd_not_faster(summaries))
    return next((size for i, size in enumerate(sizes) if slow.issuperset(sizes[i:])), None)
