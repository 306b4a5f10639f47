"""Measured decoding: τ, time per step and tokens/s of real generations on held-out prompts.

Used twice by the tuner: a short run measures the decode loop's overhead outside the forward, and the
confirmation run decodes held-out prompts with the best few trees and vanilla. Variants are interleaved
per prompt, in an order that rotates from prompt to prompt, so that load from other processes and the
warming of caches fall on every variant alike. Rates are decode rates: the prefill (and the first token
it yields) is excluded, because the tree does not change it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ppdecode.config import GenerationConfig
from ppdecode.engine import Engine
from ppdecode.models import LoadedModel
from ppdecode.prompt_tokens import PromptTokens
from ppdecode.proposers.draft import DraftProposer
from ppdecode.tree.spec import TreeSpec

logger = logging.getLogger(__name__)

# Used when the package's built-in benchmark set is missing. Written for this module, so they are in no
# training set; varied on purpose: explanation, code, maths, lists, rewriting, open writing.
HELD_OUT_PROMPTS: tuple[str, ...] = (
    "Explain in a few sentences why the sky looks blue during the day and red at sunset.",
    "Write a Python function that returns the n-th Fibonacci number iteratively, with a docstring.",
    "A train leaves at 9:40 and arrives at 13:15. How long is the journey? Show your steps.",
    "List five practical tips for keeping a small vegetable garden healthy in a dry summer.",
    "Rewrite this sentence to sound more formal: 'hey, the meeting got moved to friday, ok?'",
    "What is the difference between a list and a tuple in Python? Give a short example of each.",
    "Describe how a bicycle's gears make it easier to ride uphill.",
    "Write a short, friendly email inviting a colleague to a lunch on Thursday.",
    "Summarise the water cycle for a ten-year-old in one paragraph.",
    "Give three reasons why regular sleep matters for learning, one sentence each.",
    "How do I reverse a string in JavaScript? Explain the code briefly.",
    "Write a four-line poem about autumn leaves.",
)


@dataclass(frozen=True)
class DecodeMeasurement:
    """Totals of greedy generations with one tree (or vanilla), over all prompts."""

    steps: int  # decode steps (forward passes after the prefill)
    committed: int  # Σ τ of those steps (the bonus tokens included)
    tokens: int  # new tokens they delivered (less than ``committed`` where max_new_tokens cut a step)
    decode_s: float  # wall time of those steps
    forward_s: float  # of which inside the model's forward
    chain_steps: int = 0  # of the steps, those that verified a chain past the tree (prompt lookup, a draft)

    @property
    def tau(self) -> float:
        return self.committed / self.steps if self.steps else 0.0

    @property
    def chain_share(self) -> float:
        """Share of the steps that carried a chain past the tree."""
        return self.chain_steps / self.steps if self.steps else 0.0

    @property
    def ms_per_step(self) -> float:
        return 1000 * self.decode_s / self.steps if self.steps else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.decode_s if self.decode_s > 0 else 0.0

    @property
    def overhead_ms_per_step(self) -> float:
        """Time per step outside the forward: candidates, embeddings, verification, commit."""
        return 1000 * max(0.0, self.decode_s - self.forward_s) / self.steps if self.steps else 0.0

    def __add__(self, other: DecodeMeasurement) -> DecodeMeasurement:
        return DecodeMeasurement(
            self.steps + other.steps,
            self.committed + other.committed,
            self.tokens + other.tokens,
            self.decode_s + other.decode_s,
            self.forward_s + other.forward_s,
            self.chain_steps + other.chain_steps,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "committed": self.committed,
            "tokens": self.tokens,
            "decode_s": round(self.decode_s, 6),
            "forward_s": round(self.forward_s, 6),
            "chain_steps": self.chain_steps,
            "tau": round(self.tau, 4),
            "ms_per_step": round(self.ms_per_step, 4),
            "tokens_per_s": round(self.tokens_per_s, 4),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DecodeMeasurement:
        return cls(
            int(data["steps"]), int(data["committed"]), int(data["tokens"]),
            float(data["decode_s"]), float(data["forward_s"]), int(data.get("chain_steps", 0)),
        )


EMPTY = DecodeMeasurement(0, 0, 0, 0.0, 0.0)


def builtin_prompts_path() -> Path:
    return Path(str(resources.files("ppdecode.data").joinpath("prompts", "builtin.jsonl")))


def _builtin_first_turns(path: Path) -> list[str]:
    """First turns of the built-in benchmark set, taking categories in turn (chat, code, maths, ...)."""
    by_category: dict[str, list[str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            record = json.loads(line)
            by_category.setdefault(str(record["category"]), []).append(str(record["turns"][0]))
    columns = list(by_category.values())
    rows = max(map(len, columns), default=0)
    return [column[i] for i in range(rows) for column in columns if i < len(column)]


def held_out_prompts(count: int) -> list[str]:
    """``count`` prompts outside the prompt tokens' training data: the built-in benchmark set if present.

    Prompt tokens train on self-instructed and documentation prompts (``ppdecode.train``), never on the
    benchmark set, which is kept for evaluation.
    """
    path = builtin_prompts_path()
    prompts: list[str] = list(HELD_OUT_PROMPTS)
    if path.is_file():
        try:
            prompts = _builtin_first_turns(path)
        except (json.JSONDecodeError, KeyError, IndexError, TypeError) as err:
            logger.warning("cannot read the built-in prompts %s (%s); using the tuner's own list", path, err)
    if not 1 <= count <= len(prompts):
        raise ValueError(f"the number of held-out prompts must be in 1..{len(prompts)}, got {count}")
    return prompts[:count]


def _one(
    engine: Engine, ids: list[int], max_new_tokens: int, use_ppd: bool, lookup: bool = False
) -> DecodeMeasurement:
    # lookup=False: the prompt tokens' guesses alone, the process the expected τ models; True: the
    # mix `ppd generate` runs (prompt lookup joins them, its chains grow on long copies).
    config = GenerationConfig(max_new_tokens=max_new_tokens, use_ppd=use_ppd, lookup=lookup)
    result = engine.generate_ids(ids, config)
    stats = result.stats
    decode_s = stats.total_s - stats.prefill_s
    return DecodeMeasurement(
        steps=stats.steps,
        committed=sum(stats.accept_lengths),
        tokens=max(0, stats.new_tokens - 1),  # the prefill yields the first token, the steps the rest
        decode_s=decode_s,
        forward_s=decode_s * (1.0 - stats.overhead_share),
        chain_steps=stats.chain_steps,
    )


def measure_decoding(
    base: LoadedModel,
    tokens: PromptTokens | None,
    variants: Mapping[str, TreeSpec | None],
    prompts: Sequence[str],
    max_new_tokens: int,
    progress: bool = False,
    warmup: bool = True,
    repeats: int = 1,
    lookup: bool = False,
    draft: Callable[[], DraftProposer] | None = None,
) -> dict[str, DecodeMeasurement]:
    """Greedy-decode every prompt with every variant (a tree, or None for vanilla); totals per variant.

    With ``repeats`` > 1 every (variant, prompt) generation runs that many times, in separate rounds, and
    the fastest run counts: greedy decoding repeats the same tokens and steps, so the runs differ only
    by interference from other processes, which the minimum removes best. ``lookup`` decodes with
    prompt lookup joined to the prompt tokens (the proposer mix of ``ppd generate``); ``draft`` makes
    a draft proposer for each tree's engine (the mix of ``ppd generate --draft``; vanilla stays plain).
    """
    if not variants or not prompts:
        raise ValueError("measure_decoding needs at least one variant and one prompt")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    engines = {
        name: Engine(base) if spec is None else Engine(base, tokens, spec, draft=draft() if draft else None)
        for name, spec in variants.items()
    }
    names = list(engines)
    encoded = [engines[names[0]].encode(prompt) for prompt in prompts]
    if warmup:  # the first generation pays for allocations and lazy initialisation
        for name in names:
            _one(engines[name], encoded[0], 4, variants[name] is not None)
    best: dict[tuple[str, int], DecodeMeasurement] = {}
    total_runs = repeats * len(names) * len(encoded)
    with tqdm(total=total_runs, desc="decoding", unit="gen", disable=not progress) as bar:
        for round_ in range(repeats):
            for i, ids in enumerate(encoded):
                for j in range(len(names)):
                    name = names[(i + j + round_) % len(names)]
                    run = _one(engines[name], ids, max_new_tokens, variants[name] is not None, lookup)
                    if (name, i) not in best or run.decode_s < best[name, i].decode_s:
                        best[name, i] = run
                    bar.update()
    totals = dict.fromkeys(names, EMPTY)
    for (name, _), run in sorted(best.items()):
        totals[name] = totals[name] + run
    for name, total in totals.items():
        logger.info("decoded with %s: tau %.3f, %.2f ms/step, %.1f tokens/s",
                    name, total.tau, total.ms_per_step, total.tokens_per_s)
    return totals
