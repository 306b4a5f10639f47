"""Prompt-set readers: question files, HumanEval, the built-in set, and the category/limit selection."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from ppdecode.bench.prompts import (
    HUMANEVAL,
    BenchPrompt,
    load_prompt_set,
    read_builtin,
    read_humaneval,
    read_question_file,
    select,
)

GOOD = [
    {"question_id": 81, "category": "writing", "turns": ["Write a poem.", "Now make it rhyme."]},
    {"question_id": "q2", "category": "math", "turns": ["What is 2 + 2?"]},
]


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_question_file(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "q.jsonl", [json.dumps(GOOD[0]), "", json.dumps(GOOD[1])])
    prompts = read_question_file(path)
    assert prompts == [
        BenchPrompt("81", "writing", ("Write a poem.", "Now make it rhyme.")),
        BenchPrompt("q2", "math", ("What is 2 + 2?",)),
    ]
    assert all(p.chat for p in prompts)
    assert load_prompt_set(str(path)) == prompts


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ('{"question_id": 1, "category": "x", "turns": ["a"]', "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"category": "x", "turns": ["a"]}', "missing 'question_id'"),
        ('{"question_id": true, "category": "x", "turns": ["a"]}', "'question_id' must be"),
        ('{"question_id": 3, "turns": ["a"]}', "'category' must be"),
        ('{"question_id": 3, "category": "x", "turns": []}', "'turns' must be a non-empty list"),
        ('{"question_id": 3, "category": "x", "turns": "a"}', "'turns' must be a non-empty list"),
        ('{"question_id": 3, "category": "x", "turns": ["a", 7]}', "turn 2 must be a non-empty string"),
        ('{"question_id": 3, "category": "x", "turns": ["  "]}', "turn 1 must be a non-empty string"),
        ('{"question_id": 81, "category": "x", "turns": ["a"]}', "appears twice"),
    ],
)
def test_question_file_malformed_line_names_its_number(tmp_path: Path, bad_line: str, message: str) -> None:
    # line 1 good, line 2 blank, line 3 good, line 4 bad: the error must say ":4:"
    path = write_lines(tmp_path / "q.jsonl", [json.dumps(GOOD[0]), "", json.dumps(GOOD[1]), bad_line])
    with pytest.raises(ValueError, match=message) as err:
        read_question_file(path)
    assert f"{path}:4:" in str(err.value)


def test_question_file_missing_or_empty(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        read_question_file(tmp_path / "nope.jsonl")
    with pytest.raises(ValueError, match="holds no questions"):
        read_question_file(write_lines(tmp_path / "empty.jsonl", ["", "  "]))
    with pytest.raises(ValueError, match="unknown prompt set"):
        load_prompt_set(str(tmp_path / "nope.jsonl"))


def test_builtin_set() -> None:
    prompts = read_builtin()
    assert len(prompts) >= 60
    assert len({p.question_id for p in prompts}) == len(prompts)
    categories = {p.category for p in prompts}
    expected = {"chat", "explanation", "coding", "math", "summarisation", "translation", "rewriting"}
    assert expected <= categories
    assert any(len(p.turns) > 1 for p in prompts)  # multi-turn conversations are covered
    lengths = [len(p.turns[0]) for p in prompts]
    assert min(lengths) < 80 and max(lengths) > 500  # varied lengths, passages to summarise
    assert load_prompt_set("builtin") == prompts


def test_humaneval_from_the_package() -> None:
    prompts = read_humaneval()
    assert len(prompts) == 164
    first = prompts[0]
    assert first.question_id == "HumanEval/0" and first.category == HUMANEVAL
    assert not first.chat and len(first.turns) == 1 and first.turns[0].startswith("from typing import List")
    assert load_prompt_set("humaneval")[:3] == prompts[:3]


def write_gz(path: Path, lines: list[str]) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    return path


def test_humaneval_file_and_malformed_lines(tmp_path: Path) -> None:
    good = json.dumps({"task_id": "T/0", "prompt": "def f():\n", "entry_point": "f"})
    path = write_gz(tmp_path / "he.jsonl.gz", [good, ""])
    assert read_humaneval(path) == [BenchPrompt("T/0", HUMANEVAL, ("def f():\n",), chat=False)]
    assert load_prompt_set(f"humaneval:{path}") == read_humaneval(path)

    broken = write_gz(tmp_path / "broken.jsonl.gz", [good, "", '{"task_id": "T/1", "prompt":'])
    with pytest.raises(ValueError, match=r"broken\.jsonl\.gz:3: not valid JSON"):
        read_humaneval(broken)
    missing = write_lines(tmp_path / "missing.jsonl", [good, "", good, json.dumps({"task_id": "T/2"})])
    with pytest.raises(ValueError, match=r"missing\.jsonl:4: a HumanEval record needs"):
        read_humaneval(missing)
    with pytest.raises(ValueError, match="does not exist"):
        read_humaneval(tmp_path / "nope.jsonl.gz")


def test_raw_prompts_have_one_turn() -> None:
    with pytest.raises(ValueError, match="exactly one turn"):
        BenchPrompt("x", "c", ("a", "b"), chat=False)
    with pytest.raises(ValueError, match="no turns"):
        BenchPrompt("x", "c", ())


def p(qid: str, category: str) -> BenchPrompt:
    return BenchPrompt(qid, category, ("t",))


@pytest.mark.parametrize(
    ("categories", "limit", "expected"),
    [
        (None, None, ["a1", "a2", "a3", "b1", "c1", "c2"]),
        (None, 3, ["a1", "b1", "c1"]),  # balanced: one per category first
        (None, 4, ["a1", "a2", "b1", "c1"]),  # then the second of each, in file order
        (None, 5, ["a1", "a2", "b1", "c1", "c2"]),
        (None, 99, ["a1", "a2", "a3", "b1", "c1", "c2"]),
        (["c", "a"], None, ["a1", "a2", "a3", "c1", "c2"]),
        (["a"], 2, ["a1", "a2"]),
    ],
)
def test_select(categories: list[str] | None, limit: int | None, expected: list[str]) -> None:
    prompts = [p("a1", "a"), p("a2", "a"), p("a3", "a"), p("b1", "b"), p("c1", "c"), p("c2", "c")]
    assert [x.question_id for x in select(prompts, categories, limit)] == expected


def test_select_errors() -> None:
    prompts = [p("a1", "a")]
    with pytest.raises(ValueError, match=r"unknown categories \['z'\]; this prompt set has: a"):
        select(prompts, ["z"])
    with pytest.raises(ValueError, match="--limit must be >= 1"):
        select([p("a1", "a"), p("a2", "a")], None, 0)
