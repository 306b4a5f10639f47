"""What a time budget buys: the number of prompts, training steps and how thorough a tune (pure).

The default recipe (docs/training.md) spends its time as 1,149 prompts answered with 112 tokens each,
three epochs of training at 4 sequences × 32 cuts per step, held-out accuracy on 64 prompts, then a
tune. ``make_plan`` keeps that shape and scales its size to the budget with two measured rates
(``Throughput``, from a probe of a few seconds):

    cost of one prompt   c_p = (prefill + max_new_tokens · decode step) / data batch
                               + ½ · 1.3 · (prefill + 48 · decode step) / data batch   (self-instruct)
    cost of one step     c_s = one training step
    prompts              P   = (1 − reserve) · budget / (c_p + epochs · train share · c_s / train batch)
    steps                S   = epochs · train share · P / train batch

so that the data and three epochs of training fill the budget less a reserve (15 %) for accuracy,
tuning and the summary. P is kept in [24, 4000]; S is at least 10. Small datasets keep more of their
prompts for held-out accuracy (12 prompts expected, 10–30 %). The tune gets more thorough with the
budget (``tune_plan``).
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

SELF_INSTRUCT = "self-instruct"
PYTHON_DOCS = "python-docs"
PYTHON_STDLIB = "python-stdlib"
SELF_INSTRUCT_TOKENS = 48  # replies sampled per self-instruct meta-prompt (train.data)
SELF_INSTRUCT_OVERSAMPLE = 1.3  # meta-prompts asked per instruction wanted (train.data)
SELF_INSTRUCT_SHARE = 0.5  # of the built-in prompts, for a chat model
RESERVE = 0.15  # of the budget, left for accuracy, tuning and the summary
MIN_PROMPTS, MAX_PROMPTS = 24, 4000
MIN_STEPS = 10
HELDOUT_PROMPTS = 12  # wanted on average in the held-out split
MIN_HELDOUT_PERCENT, MAX_HELDOUT_PERCENT = 10.0, 30.0
ACCURACY_PROMPTS = 64  # held-out prompts the accuracy stage measures at most
ACCURACY_BATCH, ACCURACY_CUTS = 4, 128  # train.accuracy.measure's rows and cuts per forward

_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?")


def parse_duration(text: str) -> float:
    """Seconds in ``90s``, ``45m``, ``2h``, ``1h30m`` or a plain number of minutes (``60``)."""
    value = text.strip().lower().replace(" ", "")
    try:
        minutes = float(value)
    except ValueError:
        match = _DURATION.fullmatch(value)
        if not value or match is None:
            raise ValueError(
                f"time budget {text!r}: write it like 90s, 45m, 2h or 1h30m (a plain number is minutes)"
            ) from None
        hours, mins, secs = (float(part) if part else 0.0 for part in match.groups())
        seconds = 3600 * hours + 60 * mins + secs
    else:
        seconds = 60 * minutes
    if seconds <= 0:
        raise ValueError(f"time budget {text!r} must be positive")
    return seconds


@dataclass(frozen=True)
class Recipe:
    """The shape of a preparation, fixed whatever the budget (the default recipe's choices)."""

    num_prompt_tokens: int = 3
    max_new_tokens: int = 112
    max_prompt_tokens: int = 128
    cuts: int = 32  # cut points stored per answer and used per sequence and step
    data_batch_size: int = 32  # prompts answered together
    train_batch_size: int = 4  # sequences per training step
    epochs: float = 3.0

    def __post_init__(self) -> None:
        if self.num_prompt_tokens < 1:
            raise ValueError(f"num_prompt_tokens must be >= 1, got {self.num_prompt_tokens}")
        if self.max_new_tokens <= self.num_prompt_tokens + 1:
            raise ValueError(
                f"max_new_tokens ({self.max_new_tokens}) must exceed N + 1 = {self.num_prompt_tokens + 1}"
            )
        if min(self.max_prompt_tokens, self.cuts, self.data_batch_size, self.train_batch_size) < 1:
            raise ValueError("max_prompt_tokens, cuts and the batch sizes must be >= 1")
        if self.epochs <= 0:
            raise ValueError(f"epochs must be > 0, got {self.epochs}")

    @property
    def sequence_length(self) -> int:
        """The longest training sequence: a cut prompt (plus its chat template) and a full answer."""
        return self.max_prompt_tokens + self.max_new_tokens + 64


@dataclass(frozen=True)
class Throughput:
    """Measured rates the plan scales by (``probe.probe_throughput``)."""

    batch: int  # rows answered together
    prefill_s: float  # prefill of one batch of prompts
    decode_step_s: float  # one batched decode step (``batch`` new tokens)
    single_step_s: float  # one decode step of a single row (what tuning and the summary decode)
    train_step_s: float  # one training step of the recipe

    def prompt_s(self, recipe: Recipe, self_instruct_share: float) -> float:
        """Seconds of data generation per prompt: its answer and its share of self-instruct."""
        answer = (self.prefill_s + recipe.max_new_tokens * self.decode_step_s) / self.batch
        meta = (self.prefill_s + SELF_INSTRUCT_TOKENS * self.decode_step_s) / self.batch
        return answer + self_instruct_share * SELF_INSTRUCT_OVERSAMPLE * meta

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TunePlan:
    """How thoroughly ``tune`` measures (the ``TuneConfig`` fields the plan sets)."""

    quick: bool
    confirm: int  # best predicted budgets decoded against vanilla on held-out prompts
    prompts: int
    max_new_tokens: int
    batch_sizes: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "batch_sizes", tuple(self.batch_sizes))


def tune_plan(budget_s: float) -> TunePlan:
    """Under 10 min: a quick tune for one row; under 45: quick, two batch sizes; else the full tune."""
    if budget_s < 600:
        return TunePlan(quick=True, confirm=1, prompts=2, max_new_tokens=32, batch_sizes=(1,))
    if budget_s < 2700:
        return TunePlan(quick=True, confirm=2, prompts=4, max_new_tokens=64, batch_sizes=(1, 4))
    return TunePlan(quick=False, confirm=3, prompts=6, max_new_tokens=96, batch_sizes=(1, 2, 4, 8))


@dataclass(frozen=True)
class Plan:
    """Every size the stages use; stored in the work folder so that a resumed run does the same."""

    recipe: Recipe
    prompts: int  # asked for in all (user files first, then the built-in sources)
    sources: dict[str, int]  # built-in source -> prompts
    heldout_percent: float
    steps: int
    accuracy_prompts: int  # at most this many held-out prompts are measured
    tune: TunePlan
    estimates: dict[str, float] = field(default_factory=dict)  # stage -> seconds (empty: not probed)
    throughput: Throughput | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        throughput = data.get("throughput")
        return cls(
            recipe=Recipe(**data["recipe"]),
            prompts=int(data["prompts"]),
            sources={str(k): int(v) for k, v in data["sources"].items()},
            heldout_percent=float(data["heldout_percent"]),
            steps=int(data["steps"]),
            accuracy_prompts=int(data["accuracy_prompts"]),
            tune=TunePlan(**data["tune"]),
            estimates={str(k): float(v) for k, v in data.get("estimates", {}).items()},
            throughput=None if throughput is None else Throughput(**throughput),
        )


def split_sources(count: int, chat: bool, docs: bool) -> dict[str, int]:
    """Built-in prompts by source: half self-instruct for a chat model, the rest Python docs and code.

    Without a chat template the model cannot write instructions, so its prompts are plain text (docs and
    code); without the Python docs on this machine their share goes to the standard library's code.
    """
    if count <= 0:
        return {}
    instruct = round(count * SELF_INSTRUCT_SHARE) if chat else 0
    rest = count - instruct
    doc_share = rest // 2 if docs else 0
    sources = {SELF_INSTRUCT: instruct, PYTHON_DOCS: doc_share, PYTHON_STDLIB: rest - doc_share}
    return {name: n for name, n in sources.items() if n > 0}


def heldout_percent(prompts: int) -> float:
    return min(MAX_HELDOUT_PERCENT, max(MIN_HELDOUT_PERCENT, 100.0 * HELDOUT_PROMPTS / max(prompts, 1)))


def make_plan(
    budget_s: float,
    recipe: Recipe,
    throughput: Throughput | None,
    chat: bool,
    docs: bool,
    file_prompts: int = 0,
    prompts: int | None = None,
    steps: int | None = None,
) -> Plan:
    """The plan for ``budget_s`` seconds (see the module docstring); ``prompts``/``steps`` override it.

    ``throughput`` is needed unless ``prompts`` is given; ``file_prompts`` is how many prompts the
    user's files hold (they are used first, the built-in sources fill up the rest).
    """
    if budget_s <= 0:
        raise ValueError(f"the time budget must be positive, got {budget_s} s")
    if prompts is not None and prompts < 1:
        raise ValueError(f"--prompts must be >= 1, got {prompts}")
    if steps is not None and steps < 1:
        raise ValueError(f"--steps must be >= 1, got {steps}")
    share = SELF_INSTRUCT_SHARE if chat else 0.0
    if prompts is None:
        if throughput is None:
            raise ValueError("a plan from a time budget needs the throughput probe")
        train_share = 1.0 - MIN_HELDOUT_PERCENT / 100
        per_prompt = throughput.prompt_s(recipe, share) + (
            recipe.epochs * train_share * throughput.train_step_s / recipe.train_batch_size
        )
        prompts = int(min(MAX_PROMPTS, max(MIN_PROMPTS, (1 - RESERVE) * budget_s / per_prompt)))
    held = heldout_percent(prompts)
    train_prompts = prompts * (1 - held / 100)
    if steps is None:
        steps = max(MIN_STEPS, math.ceil(recipe.epochs * train_prompts / recipe.train_batch_size))
    accuracy_prompts = min(ACCURACY_PROMPTS, max(1, math.ceil(prompts * held / 100)))
    tune = tune_plan(budget_s)
    estimates: dict[str, float] = {}
    if throughput is not None:
        step = throughput.train_step_s
        measured = accuracy_prompts / ACCURACY_BATCH * step * max(1.0, recipe.max_new_tokens / recipe.cuts)
        decode = (tune.confirm + 1) * tune.prompts * tune.max_new_tokens * throughput.single_step_s
        forwards = (36 if tune.quick else 264) * sum(tune.batch_sizes)  # latency profile: sizes x rounds
        estimates = {
            "data": prompts * throughput.prompt_s(recipe, share),
            "train": steps * step,
            # trained and untrained tokens, every position, forwards without a backward (about half)
            "accuracy": 2 * 0.5 * measured,
            "tune": decode + forwards * throughput.single_step_s,
        }
    return Plan(
        recipe=recipe,
        prompts=prompts,
        sources=split_sources(prompts - file_prompts, chat, docs),
        heldout_percent=round(held, 2),
        steps=steps,
        accuracy_prompts=accuracy_prompts,
        tune=tune,
        estimates={name: round(seconds, 1) for name, seconds in estimates.items()},
        throughput=throughput,
    )
