"""The batch benchmark: batches, throughput and speed-up math, summaries and table rows on hand-made
records, then one tiny real run on the default model in float32 (where every greedy row must agree)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner

from ppdecode.bench.batch import (
    BatchRecord,
    BatchRow,
    Remainder,
    compare_rows,
    group_batches,
    parse_batch_sizes,
    ppd_not_faster,
    ppd_stops_paying,
    ratio,
    summarise_batches,
)
from ppdecode.bench.batch_runner import BatchBenchConfig, run_batch_bench
from ppdecode.bench.methods import _until_eos
from ppdecode.bench.plots import save_batch_plots
from ppdecode.bench.report import batch_columns, batch_rows, batch_tables, build_batch_summary
from ppdecode.cli import app
from ppdecode.models import LoadedModel


# ---- batches -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1,2,4,8,16", (1, 2, 4, 8, 16)),
        (" 4 , 1 ", (4, 1)),  # the order given is the order run
        (["1,2", "8"], (1, 2, 8)),  # a repeated option
        ("3,", (3,)),
    ],
)
def test_parse_batch_sizes(text: str | list[str], expected: tuple[int, ...]) -> None:
    assert parse_batch_sizes(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [("", "at least one"), ("1,x", "whole numbers"), ("0,2", ">= 1"), ("2,2", "distinct"), ("-1", ">= 1")],
)
def test_parse_batch_sizes_refuses(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_batch_sizes(text)


@pytest.mark.parametrize(
    ("count", "size", "remainder", "expected"),
    [
        (4, 1, Remainder.WRAP, [[0], [1], [2], [3]]),
        (4, 2, Remainder.WRAP, [[0, 1], [2, 3]]),
        (4, 4, Remainder.DROP, [[0, 1, 2, 3]]),
        (5, 2, Remainder.WRAP, [[0, 1], [2, 3], [4, 0]]),  # filled up from the first prompts
        (5, 2, Remainder.DROP, [[0, 1], [2, 3]]),
        (7, 3, "wrap", [[0, 1, 2], [3, 4, 5], [6, 0, 1]]),
        (7, 3, "drop", [[0, 1, 2], [3, 4, 5]]),
        (3, 3, Remainder.WRAP, [[0, 1, 2]]),
    ],
)
def test_group_batches(count: int, size: int, remainder: Remainder | str, expected: list[list[int]]) -> None:
    batches = group_batches(count, size, Remainder(remainder))
    assert batches == expected
    assert all(len(b) == size for b in batches)


def test_group_batches_refuses() -> None:
    with pytest.raises(ValueError, match="needs at least 8 prompts, but there are 5"):
        group_batches(5, 8)
    with pytest.raises(ValueError, match=">= 1"):
        group_batches(5, 0)


@pytest.mark.parametrize(
    ("tokens", "expected", "finish"),
    [
        ([5, 6, 2, 2, 2], [5, 6, 2], "eos"),  # the padding after EOS is not counted
        ([5, 6, 7], [5, 6, 7], "length"),
        ([2, 9], [2], "eos"),
        ([], [], "length"),
    ],
)
def test_until_eos(tokens: list[int], expected: list[int], finish: str) -> None:
    assert _until_eos(tokens, (2,)) == (expected, finish)


# ---- records, ratios, summaries ------------------------------------------------------------------------
def row(qid: str, tokens: list[int], lengths: list[int] | None = None) -> BatchRow:
    steps = len(lengths) if lengths is not None else 0
    return BatchRow(qid, "chat", len(tokens), steps, lengths, "length", tokens)


def batch(method: str, size: int, index: int, seconds: float, rows: list[BatchRow]) -> BatchRecord:
    return BatchRecord(method, size, index, seconds, rows)


def test_record_throughput_tau_and_json() -> None:
    r = batch("ppd", 2, 0, 0.5, [row("a", [1, 2, 3, 4], [1, 3]), row("b", [5, 6], [2])])
    assert r.new_tokens == 6 and r.tokens_per_s == pytest.approx(12.0)
    assert r.accept_lengths == [1, 3, 2] and r.tau == pytest.approx(2.0)  # pooled over rows
    data = r.to_json()
    assert data["kind"] == "batch" and data["question_ids"] == ["a", "b"] and data["tokens_per_s"] == 12.0
    assert BatchRecord.from_json(json.loads(json.dumps(data))) == r
    unknown = batch("x", 2, 0, 1.0, [row("a", [1], [1]), row("b", [2], None)])
    assert unknown.accept_lengths is None and unknown.tau is None
    assert batch("x", 1, 0, 0.0, [row("a", [1])]).tokens_per_s == 0.0


def test_compare_rows_with_vanilla_on_the_same_batch() -> None:
    records = [
        batch("vanilla", 2, 0, 1.0, [row("a", [1, 2, 3]), row("b", [4, 5])]),
        batch("ppd", 2, 0, 1.0, [row("a", [1, 2, 3]), row("b", [4, 9])]),
        batch("hf-greedy", 2, 0, 1.0, [row("a", [1, 2]), row("b", [4, 5])]),
        batch("ppd", 1, 0, 1.0, [row("a", [7])]),  # no vanilla batch to compare with
    ]
    compare_rows(records)
    assert [(r.equal, r.first_diff) for r in records[0].rows] == [(None, None), (None, None)]
    assert [(r.equal, r.first_diff) for r in records[1].rows] == [(True, None), (False, 1)]
    assert [(r.equal, r.first_diff) for r in records[2].rows] == [(False, 2), (True, None)]
    assert records[1].equal_rate == 0.5 and records[3].equal_rate is None


@pytest.mark.parametrize(
    ("mine", "theirs", "median", "total"),
    [
        ([(10, 1.0), (10, 1.0)], [(10, 2.0), (10, 2.0)], 2.0, 2.0),
        ([(10, 1.0), (30, 1.0), (10, 1.0)], [(10, 1.0), (10, 1.0), (10, 2.0)], 2.0, 50 / 3 / (30 / 4)),
        ([(8, 1.0)], [(8, 1.0)], 1.0, 1.0),
    ],
)
def test_ratio_pairs_by_batch(
    mine: list[tuple[int, float]], theirs: list[tuple[int, float]], median: float, total: float
) -> None:
    a = [batch("ppd", 2, i, s, [row("q", [0] * n)]) for i, (n, s) in enumerate(mine)]
    b = [batch("vanilla", 2, i, s, [row("q", [0] * n)]) for i, (n, s) in enumerate(theirs)]
    up = ratio(a, b)
    assert (up.median, up.total, up.batches) == (pytest.approx(median), pytest.approx(total), len(mine))


def test_ratio_without_shared_batches_is_nan() -> None:
    up = ratio([batch("ppd", 2, 0, 1.0, [row("q", [1])])], [batch("vanilla", 4, 0, 1.0, [row("q", [1])])])
    assert math.isnan(up.median) and math.isnan(up.total) and up.batches == 0


def hand_made_records() -> list[BatchRecord]:
    """B = 1 (two batches) and B = 2 (one batch): PPD pays at B = 1, not at B = 2."""
    records = []
    for index, qid, ppd_seconds in ((0, "a", 0.5), (1, "b", 0.4)):
        records += [
            batch("vanilla", 1, index, 1.0, [row(qid, [1, 2, 3, 4], [1, 1, 1])]),
            batch("ppd", 1, index, ppd_seconds, [row(qid, [1, 2, 3, 4], [2, 2])]),
            batch("hf-greedy", 1, index, 1.0, [row(qid, [1, 2, 3, 4], [1, 1, 1])]),
        ]
    records += [
        batch("vanilla", 2, 0, 1.0, [row("a", [1, 2, 3, 4], [1, 1, 1]), row("b", [1, 2, 3, 4], [1, 1, 1])]),
        batch("ppd", 2, 0, 1.6, [row("a", [1, 2, 3, 4], [2, 2]), row("b", [1, 2, 3, 9], [3, 1])]),
        batch("hf-greedy", 2, 0, 2.0, [row("a", [1, 2, 3, 4], [1, 1, 1]), row("b", [1, 2, 3, 4], [1, 1, 1])]),
    ]
    compare_rows(records)
    return records


def test_summaries_per_method_and_batch_size() -> None:
    summaries = summarise_batches(hand_made_records())
    assert [(s.method, s.batch_size) for s in summaries] == [
        (m, b) for b in (1, 2) for m in ("vanilla", "ppd", "hf-greedy")
    ]
    by = {(s.method, s.batch_size): s for s in summaries}
    ppd1 = by[("ppd", 1)]
    assert ppd1.batches == 2 and ppd1.rows == 2 and ppd1.new_tokens == 8
    assert ppd1.tokens_per_s_batches == [8.0, 10.0] and ppd1.tokens_per_s_median == 9.0
    assert ppd1.tokens_per_s_total == pytest.approx(8 / 0.9)
    assert ppd1.tau == 2.0 and ppd1.steps == 4 and ppd1.equal_rate == 1.0
    assert ppd1.over["vanilla"]["median"] == pytest.approx(2.25)  # median of 2.0 and 2.5
    assert ppd1.over["hf-greedy"]["total"] == pytest.approx(2 / 0.9)
    ppd2 = by[("ppd", 2)]
    assert ppd2.over["vanilla"]["median"] == pytest.approx(1 / 1.6) and ppd2.equal_rate == 0.5
    assert ppd2.first_diffs == [3] and ppd2.tau == 2.0
    assert by[("vanilla", 2)].over["hf-greedy"]["median"] == 2.0
    assert by[("vanilla", 1)].equal_rate is None and by[("hf-greedy", 2)].equal_rate == 1.0
    data = ppd2.to_json()
    assert data["kind"] == "summary" and data["batch_size"] == 2


@pytest.mark.parametrize(
    ("ups", "not_faster", "stop"),
    [
        ({1: 1.3, 2: 1.1, 4: 0.9, 8: 0.8}, [4, 8], 4),
        ({1: 1.3, 2: 1.1}, [], None),
        ({1: 0.9, 2: 1.1, 4: 1.05}, [1], None),  # slower once, then faster again: no point of no return
        ({1: 1.2, 2: 1.0, 4: math.nan}, [2, 4], 2),  # exactly 1 does not pay, nor does an unknown
        ({}, [], None),
    ],
)
def test_where_ppd_stops_paying(ups: dict[int, float], not_faster: list[int], stop: int | None) -> None:
    summaries = [
        {"method": "ppd", "batch_size": b, "over": {"vanilla": {"median": up}}} for b, up in ups.items()
    ]
    summaries.append({"method": "vanilla", "batch_size": 1, "over": {"ppd": {"median": 1.0}}})
    assert ppd_not_faster(summaries) == not_faster
    assert ppd_stops_paying(summaries) == stop


# ---- summary, table rows, plot -------------------------------------------------------------------------
ENV = {
    "model": "m",
    "device": "cpu",
    "dtype": "bfloat16",
    "threads": 2,
    "git": "abc",
    "model_weight_bytes": 1000,
}


def summary_of(records: list[BatchRecord], memory: dict[str, Any] | None = None) -> dict[str, Any]:
    methods = {m: {"extra_parameters": 0} for m in dict.fromkeys(r.method for r in records)}
    config = {"max_new_tokens": 4}
    return build_batch_summary(summarise_batches(records), config, ENV, methods, memory or {})


def test_summary_and_table_rows() -> None:
    summary = summary_of(hand_made_records())
    assert summary["mode"] == "batch" and summary["batch_sizes"] == [1, 2]
    assert summary["ppd_not_faster_at"] == [2] and summary["ppd_stops_paying_at"] == 2
    assert batch_columns(summary) == [
        "B",
        "batches",
        "tok/s vanilla",
        "tok/s ppd",
        "tok/s hf",
        "ppd/vanilla",
        "vanilla/hf",
        "ppd/hf",
        "τ ppd",
        "ppd = vanilla",
        "hf = vanilla",
        "PPD pays",
    ]
    assert batch_rows(summary) == [
        ["1", "2", "4.0", "9.0", "4.0", "2.25×", "1.00×", "2.25×", "2.00", "100%", "100%", "yes"],
        ["2", "1", "8.0", "5.0", "4.0", "0.62×", "2.00×", "1.25×", "2.00", "50%", "100%", "no"],
    ]


def test_table_rows_without_ppd() -> None:
    records = [r for r in hand_made_records() if r.method != "ppd"]
    summary = summary_of(records)
    assert batch_columns(summary) == [
        "B",
        "batches",
        "tok/s vanilla",
        "tok/s hf",
        "vanilla/hf",
        "hf = vanilla",
    ]
    assert batch_rows(summary)[1] == ["2", "1", "8.0", "4.0", "2.00×", "100%"]
    assert summary["ppd_stops_paying_at"] is None


def test_tables_plot_and_show(tmp_path: Path) -> None:
    memory = {
        "method": "tensor accounting",
        "model_weight_bytes": 1000,
        "by_batch_size": {"1": {"peak_tensor_bytes": {"vanilla": 10, "ppd": 30}, "overhead_bytes": 25}},
    }
    records = hand_made_records()
    records[0].cache = {"bytes": 4096, "rows": 16}
    summary = summary_of(records, memory)
    console = Console(width=250, record=True)
    console.print(batch_tables(summary))
    text = console.export_text()
    assert "PPD no faster than vanilla from B = 2 on" in text and "batch memory" in text
    assert "4.10 kB" in text  # the engine's cache report
    files = save_batch_plots(summary, tmp_path)
    if files:  # matplotlib is optional
        assert files["batch_throughput"].stat().st_size > 1000
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    result = CliRunner().invoke(app, ["bench", "--show", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "PPD pays" in result.output and "batch memory" in result.output
    result = CliRunner().invoke(app, ["bench", "--show", str(tmp_path), "--categories", "chat"])
    assert result.exit_code != 0 and "one at a time" in str(result.exception)


def test_config_refuses_misuse() -> None:
    with pytest.raises(ValueError, match="do not run in batches"):
        BatchBenchConfig(methods=("hf-lookup",))
    with pytest.raises(ValueError, match="batch sizes"):
        BatchBenchConfig(batch_sizes=(0,))
    with pytest.raises(ValueError, match="--remainder 'sometimes': choose wrap, drop"):
        BatchBenchConfig(remainder="sometimes")  # type: ignore[arg-type]
    result = CliRunner().invoke(app, ["bench", "--batch", "1,2", "--temperature", "0.7"])
    assert result.exit_code != 0 and "drop --tree" in str(result.exception)


# ---- a real run ----------------------------------------------------------------------------------------
QUESTIONS = [
    {"question_id": 1, "category": "chat", "turns": ["Name a colour.", "Now name a fruit of that colour."]},
    {"question_id": 2, "category": "math", "turns": ["What is 3 + 4?"]},
]


@pytest.mark.slow
def test_a_real_batch_run(smollm_f32: LoadedModel, tmp_path: Path) -> None:
    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    config = BatchBenchConfig(
        prompts=str(questions),
        batch_sizes=(1, 2),
        max_new_tokens=8,
        warmup=0,
        memory_probes=1,
        threads=1,  # the machine is shared: more threads than free cores slows every forward down
        output_dir=tmp_path / "out",
    )
    result = run_batch_bench(config, base=smollm_f32)
    out = tmp_path / "out"
    lines = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    batches = [r for r in lines if r["kind"] == "batch"]
    methods = ["vanilla", "ppd", "hf-greedy"]
    assert [(r["method"], r["batch_size"], r["batch_index"]) for r in batches] == [
        (m, b, i) for b, n in ((1, 2), (2, 1)) for i in range(n) for m in methods
    ]
    assert [(r["method"], r["batch_size"]) for r in lines if r["kind"] == "summary"] == [
        (m, b) for b in (1, 2) for m in methods
    ]
    for r in batches:
        assert len(r["rows"]) == r["batch_size"] and r["seconds"] > 0 and r["tokens_per_s"] > 0
        assert all(0 < row["new_tokens"] <= 8 for row in r["rows"])
        if r["method"] != "vanilla":
            # float32: transformers' batched greedy (left padding) and PPD write vanilla's tokens
            assert all(row["equal"] is True for row in r["rows"]), (r["method"], r["batch_size"])
    vanilla = {
        (r["batch_size"], row["question_id"]): row["token_ids"]
        for r in batches
        if r["method"] == "vanilla"
        for row in r["rows"]
    }
    assert vanilla[(2, "1")] == vanilla[(1, "1")] and vanilla[(2, "2")] == vanilla[(1, "2")]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "batch" and summary["environment"]["dtype"] == "float32"
    assert {s["method"] for s in summary["summaries"]} == set(methods)
    assert summary["memory"]["by_batch_size"]["2"]["overhead_bytes"] > 0
    assert "1" in summary["methods"]["ppd"]["trees_by_batch_size"]  # the tree the engine decodes with
    assert summary["methods"]["ppd"]["extra_buffer_bytes"] > 0
    caches = [s["cache"] for s in summary["summaries"] if s["method"] in ("vanilla", "ppd")]
    assert all(c["max_rows"] == 2 and c["bytes"] > 0 for c in caches)  # engines hold the largest B
    assert result.files["records"] == out / "records.jsonl"
