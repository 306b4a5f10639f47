"""Where training prompts come from: a user's files, or built-in sources that need no network.

User files: ShareGPT/FastChat (``conversations``: the first human turn), Alpaca (``instruction`` plus
optional ``input``), JSONL with ``prompt``, as JSON lines or one JSON array; plain text files give one
prompt per paragraph. Built-in sources:

- ``python-docs``: paragraphs of the Python documentation (reStructuredText sources shipped by the
  Debian package ``python3.11-doc``), wrapped in "explain / summarise" instructions;
- ``python-stdlib``: functions of the Python standard library's own sources ("Explain what this
  function does", "Continue this code", ...);
- ``self-instruct``: instructions the chat model writes itself (see ``data.self_instruct_prompts``);
  this module only holds the meta-prompts.
"""

from __future__ import annotations

import ast
import glob
import json
import logging
import random
import re
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

BUILTIN_SOURCES = ("self-instruct", "python-docs", "python-stdlib")
TEXT_SUFFIXES = (".txt", ".md", ".rst")
DOCS_CANDIDATES = (
    "/usr/share/doc/python3.11/html/_sources",
    "/usr/share/doc/python3/html/_sources",
    "/usr/share/doc/python3*-doc/html/_sources",
    "/usr/share/doc/python3*/html/_sources",
)


@dataclass(frozen=True)
class Prompt:
    text: str
    source: str  # "file:<name>", "python-docs", "python-stdlib" or "self-instruct"


# ---- user files ----------------------------------------------------------------------------------
def _record_prompt(record: object) -> str:
    """The prompt of one dataset record; raises ValueError naming what is wrong."""
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    if "conversations" in record:
        turns = record["conversations"]
        if not isinstance(turns, list):
            raise ValueError("'conversations' is not a list")
        for turn in turns:
            if isinstance(turn, dict) and turn.get("from", turn.get("role")) in ("human", "user"):
                value = turn.get("value", turn.get("content"))
                if isinstance(value, str) and value.strip():
                    return value.strip()
        raise ValueError("'conversations' holds no non-empty human/user turn")
    if "instruction" in record:
        instruction, extra = record["instruction"], record.get("input") or ""
        if not isinstance(instruction, str) or not isinstance(extra, str) or not instruction.strip():
            raise ValueError("'instruction' (and 'input', if given) must be non-empty strings")
        return f"{instruction.strip()}\n\n{extra.strip()}" if extra.strip() else instruction.strip()
    if "prompt" in record:
        if not isinstance(record["prompt"], str) or not record["prompt"].strip():
            raise ValueError("'prompt' must be a non-empty string")
        return record["prompt"].strip()
    raise ValueError("no 'conversations' (ShareGPT), 'instruction' (Alpaca) or 'prompt' field")


def read_prompt_file(path: str | Path, skip_bad: bool = False) -> list[Prompt]:
    """Prompts of one user file. Malformed records are listed with their line numbers and refused,
    unless ``skip_bad``, which skips them with a warning."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"prompt file {path} does not exist")
    source = f"file:{path.name}"
    text = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix in TEXT_SUFFIXES:
        return [Prompt(p, source) for p in _paragraphs(text)]
    records: list[tuple[int, object]] = []
    bad: list[str] = []
    stripped = text.lstrip()
    if path.suffix == ".json" or stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
        if not isinstance(data, list):
            raise ValueError(f"{path}: a .json prompt file must hold a list of records")
        records = [(index + 1, record) for index, record in enumerate(data)]
        where = "record"
    else:
        where = "line"
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append((number, json.loads(line)))
            except json.JSONDecodeError as err:
                bad.append(f"{path}:{number}: not valid JSON ({err.msg})")
    prompts = []
    for number, record in records:
        try:
            prompts.append(Prompt(_record_prompt(record), source))
        except ValueError as err:
            bad.append(f"{path}:{number}: {err}" if where == "line" else f"{path} record {number}: {err}")
    if bad and not skip_bad:
        shown = "\n  ".join(bad[:10]) + (f"\n  ... and {len(bad) - 10} more" if len(bad) > 10 else "")
        raise ValueError(f"{len(bad)} malformed {where}s in {path}:\n  {shown}\nfix them, or pass --skip-bad")
    if bad:
        logger.warning("skipped %d malformed %ss in %s (first: %s)", len(bad), where, path, bad[0])
    return prompts


def _paragraphs(text: str, min_chars: int = 20) -> list[str]:
    return [p.strip() for p in re.split(r"\n\s*\n", text) if len(p.strip()) >= min_chars]


# ---- python-docs ---------------------------------------------------------------------------------
DOC_TEMPLATES = (
    "Explain this passage from the Python documentation in simple words:\n\n{}",
    "Summarize the following text in a few sentences:\n\n{}",
    "What are the key points of this text?\n\n{}",
    "Give a short Python example that illustrates this:\n\n{}",
    "{}\n\nExplain this to a beginner.",
)
_ROLE = re.compile(r":[a-z:]+:`~?!?([^`<]*?)(?:\s*<[^>]*>)?`")


def find_docs_dir(docs_dir: str | Path | None = None) -> Path:
    """The reStructuredText sources of the Python documentation, or a ValueError saying how to get them."""
    candidates = [str(docs_dir)] if docs_dir else list(DOCS_CANDIDATES)
    for pattern in candidates:
        for found in sorted(glob.glob(pattern)):
            if Path(found).is_dir() and any(Path(found).rglob("*.rst.txt")):
                return Path(found)
    raise ValueError(
        "the python-docs source needs the Python documentation sources (*.rst.txt), which were not found "
        f"in {', '.join(candidates)}; install them with "
        "`apt-get update && apt-get install -y python3.11-doc` "
        "(Debian/Ubuntu), point --docs-dir at an html/_sources folder, or drop python-docs from --source"
    )


def _clean_rst(paragraph: str) -> str:
    text = _ROLE.sub(r"\1", paragraph)
    text = text.replace("``", "`").replace("**", "")
    return re.sub(r"[ \t]+", " ", text).strip()


def python_docs_prompts(rng: random.Random, docs_dir: str | Path | None = None) -> list[Prompt]:
    """Prose paragraphs of the Python docs, each wrapped in an instruction (deterministic given ``rng``)."""
    root = find_docs_dir(docs_dir)
    prompts = []
    for path in sorted(root.rglob("*.rst.txt")):
        if "whatsnew" in path.parts or "c-api" in path.parts:
            continue  # changelogs and C API listings make poor, repetitive prompts
        for paragraph in _paragraphs(path.read_text(encoding="utf-8", errors="replace"), 200):
            lines = paragraph.splitlines()
            if any(line.startswith(("..", "   ", "\t", "+", "=", "-", "*")) for line in lines[:1]):
                continue  # directives, tables, headings, indented code
            text = _clean_rst(" ".join(line.strip() for line in lines))
            if 200 <= len(text) <= 1200 and text.count("|") < 3:
                prompts.append(Prompt(rng.choice(DOC_TEMPLATES).format(text), "python-docs"))
    return prompts


# ---- python-stdlib -------------------------------------------------------------------------------
CODE_TEMPLATES = (
    "Explain what this function does:\n\n```python\n{}\n```",
    "Write a docstring for this Python function:\n\n```python\n{}\n```",
    "Suggest improvements to this Python code:\n\n```python\n{}\n```",
    "Write a unit test for this function:\n\n```python\n{}\n```",
)
CONTINUE_TEMPLATE = "Continue this code:\n\n```python\n{}\n```"


def _functions(path: Path) -> Iterator[str]:
    try:
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source)
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return
    lines = source.splitlines()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno is not None:
            length = node.end_lineno - node.lineno + 1
            if 6 <= length <= 40:
                body = lines[node.lineno - 1 : node.end_lineno]
                indent = len(body[0]) - len(body[0].lstrip())
                yield "\n".join(line[indent:] for line in body)


def python_stdlib_prompts(rng: random.Random, limit_files: int = 400) -> list[Prompt]:
    """Functions of the standard library's sources, in "explain / continue / document" prompts."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = [
        p
        for p in sorted(root.glob("**/*.py"))
        if not {"test", "tests", "site-packages", "idle_test", "lib2to3"} & set(p.relative_to(root).parts)
    ]
    rng.shuffle(files)
    prompts = []
    for path in files[:limit_files]:
        for code in _functions(path):
            if rng.random() < 0.3:
                lines = code.splitlines()
                prompts.append(
                    Prompt(
                        CONTINUE_TEMPLATE.format("\n".join(lines[: max(3, len(lines) // 2)])), "python-stdlib"
                    )
                )
            else:
                prompts.append(Prompt(rng.choice(CODE_TEMPLATES).format(code), "python-stdlib"))
    return prompts


# ---- self-instruct (meta-prompts; the model's answers become prompts) -----------------------------
TOPICS = (
    "cooking",
    "travel",
    "personal finance",
    "history",
    "physics",
    "biology",
    "chemistry",
    "astronomy",
    "music",
    "painting",
    "literature",
    "poetry",
    "sports",
    "fitness",
    "nutrition",
    "sleep",
    "psychology",
    "philosophy",
    "economics",
    "climate",
    "gardening",
    "pets",
    "programming in Python",
    "JavaScript",
    "databases",
    "machine learning",
    "mathematics",
    "geometry",
    "statistics",
    "writing emails",
    "job interviews",
    "productivity",
    "parenting",
    "language learning",
    "movies",
    "video games",
    "architecture",
    "cars",
    "electronics",
    "photography",
    "oceans",
    "geography",
    "law",
    "medicine",
    "mental health",
    "friendship",
    "ethics",
    "space travel",
    "dinosaurs",
    "weather",
    "recycling",
    "small business",
    "marketing",
    "public speaking",
    "chess",
    "board games",
    "fashion",
    "coffee",
    "linux command line",
    "web development",
    "algorithms",
    "data structures",
    "cybersecurity",
)
TASKS = (
    "a question someone might ask an AI assistant about {}",
    "a request for a short explanation of a concept in {}",
    "a request for a list of tips about {}",
    "a how-to question about {}",
    "a request to write a short story or poem about {}",
    "a request to compare two things related to {}",
    "a simple math or logic problem involving {}",
)
SELF_INSTRUCT_TEMPLATE = (
    "Here are requests that users send to an AI assistant:\n"
    "- How do I make a simple tomato sauce?\n"
    "- Explain why the sky is blue in two sentences.\n"
    "- Write a Python function that reverses a string.\n"
    "Write one new request: {}. Reply with the request only."
)


def self_instruct_meta_prompts(rng: random.Random, count: int) -> list[str]:
    """``count`` meta-prompts asking the chat model to write an instruction (topic × task kind)."""
    return [SELF_INSTRUCT_TEMPLATE.format(rng.choice(TASKS).format(rng.choice(TOPICS))) for _ in range(count)]


def clean_instruction(text: str) -> str | None:
    """The instruction in a model's reply to a meta-prompt, or None if it is not usable."""
    line = next((line.strip() for line in text.strip().splitlines() if line.strip()), "")
    line = re.sub(r"^(?:request|question|instruction|prompt)\s*:\s*", "", line, flags=re.IGNORECASE)
    line = line.lstrip("-*0123456789. ").strip().strip('"“”').strip()
    if line.lower().startswith(("sure", "here", "what a ", "i'm sorry", "as an ai", "certainly")):
        return None
    return line if 15 <= len(line) <= 300 and any(c.isalpha() for c in line) else None
