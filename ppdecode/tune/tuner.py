"""``tune``: measure this device, choose the tree budget, store the hardware profile (METHOD §5).

1. Build one tree per budget from the accuracy table (expected τ and depth shares: hardware-free).
2. Profile the forward latency L_fp(n) for every input size the trees use (quick: a few, interpolated).
3. Measure the decode loop's overhead outside the forward by decoding one held-out prompt briefly.
4. Predict each budget's tokens/s and speed-up; the best prediction is the candidate choice.
5. Optionally confirm: decode held-out prompts with the best few trees and with vanilla decoding;
   a budget measured faster than the predicted best by more than the noise tolerance takes its place.
   Given a draft model, the confirmation decodes with it in the mix and the profile is keyed by it.
6. For each larger batch size served (METHOD §8), profile forwards of B rows x n inputs and choose the
   budget with the best predicted throughput Σ τ / L(B·n), or vanilla decoding where no tree pays.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ppdecode.config import GenerationConfig
from ppdecode.models import LoadedModel
from ppdecode.prompt_tokens import PromptTokens, packaged_tokens_path
from ppdecode.proposers.draft import DraftProposer
from ppdecode.tree.builder import Accuracy, build_tree_family
from ppdecode.tree.spec import TreeSpec
from ppdecode.tune.choice import (
    BudgetOption,
    best_few,
    best_predicted,
    choose_confirmed,
    default_budgets,
    latency_sizes,
    predict_all,
    tree_pays,
)
from ppdecode.tune.decode import DecodeMeasurement, held_out_prompts, measure_decoding
from ppdecode.tune.latency import LatencyProfile, measure_forward_latency
from ppdecode.tune.store import (
    BatchChoice,
    BudgetRow,
    HardwareKey,
    HardwareProfile,
    artifact_identity,
    current_key,
    draft_identity,
    now,
    tokens_identity,
)

logger = logging.getLogger(__name__)

VANILLA = "vanilla"


@dataclass(frozen=True)
class TuneConfig:
    """How thoroughly to measure. ``quick()`` takes seconds; the defaults take a minute or two on a CPU."""

    budgets: tuple[int, ...] = ()  # empty: default_budgets for the device
    quick: bool = False  # profile ~8 sizes and interpolate, instead of every size the trees use
    cache_length: int = 256  # committed rows under the profiled forwards (a mid-conversation cache)
    repeats: int = 5
    warmup: int = 1
    overhead_tokens: int = 48  # length of the decode that measures the loop's overhead
    confirm: int = 0  # decode held-out prompts with the best `confirm` budgets and vanilla
    prompts: int = 6
    max_new_tokens: int = 128
    confirm_repeats: int = 1  # runs of each confirmation generation; the fastest counts
    # confirm with the proposer mix `ppd generate` runs (prompt lookup joined to the prompt tokens),
    # so the tree chosen is the fastest in that mix; False: the prompt tokens alone
    lookup: bool = True
    top_k: int | None = None  # cap on candidate ranks for the builder
    batch_sizes: tuple[int, ...] = (1, 2, 4, 8)  # active rows to choose a tree for (1 always)
    progress: bool = True

    def __post_init__(self) -> None:
        if self.confirm < 0:
            raise ValueError(f"--confirm must be >= 0 (0 = no confirmation), got {self.confirm}")
        if self.repeats < 1 or self.warmup < 0:
            raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {self.repeats} and {self.warmup}")
        if min(self.max_new_tokens, self.overhead_tokens, self.prompts, self.confirm_repeats) < 1:
            raise ValueError("max_new_tokens, overhead_tokens, prompts and confirm_repeats must be >= 1")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ValueError(f"batch sizes must be >= 1, got {list(self.batch_sizes)}")

    @classmethod
    def quick_preset(cls, **overrides: object) -> TuneConfig:
        settings: dict[str, object] = {
            "quick": True, "repeats": 3, "warmup": 1, "overhead_tokens": 16, "confirm": 0,
            "batch_sizes": (1, 4), **overrides
        }
        return cls(**settings)  # type: ignore[arg-type]


def accuracy_for(
    base: LoadedModel, tokens: PromptTokens, path: str | Path | Accuracy | None = None
) -> Accuracy | None:
    """The accuracy table of ``tokens``: the given file, the tokens' own record, or the shipped table.

    A given file measured for another number of prompt tokens is refused; the implicit sources are only
    used when they belong to these very tokens.
    """
    n = tokens.num_prompt_tokens
    if isinstance(path, Accuracy):
        return path.expected_for(n)
    if path is not None:
        return Accuracy.load(path).expected_for(n)
    recorded = _recorded_table(tokens)
    if recorded is not None:
        try:
            return Accuracy.from_dict(recorded, source="the prompt tokens' recorded accuracy").expected_for(n)
        except ValueError as err:
            logger.warning("ignoring %s", err)
    shipped = packaged_accuracy_path(base.name)
    packaged_tokens = packaged_tokens_path(base.name)
    if shipped.is_file() and artifact_identity(packaged_tokens) == tokens_identity(tokens):
        try:
            return Accuracy.load(shipped).expected_for(n)
        except ValueError as err:
            logger.warning("ignoring %s", err)
    return None


def _recorded_table(tokens: PromptTokens) -> dict[str, Any] | None:
    """The accuracy table in the tokens' training record: rank_probs, or the cumulative top-k accuracy."""
    record = tokens.config.record if isinstance(tokens.config.record, dict) else {}
    recorded = record.get("accuracy")
    if not isinstance(recorded, dict):
        return None
    if "rank_probs" in recorded:
        return recorded
    cumulative = recorded.get("topk_accuracy")
    if not isinstance(cumulative, list) or not cumulative:
        return None
    if not all(isinstance(row, list) and row for row in cumulative):
        return None
    # Exactly rank r = top-(r+1) − top-r; rounding in the record can make a difference slightly negative.
    rank_probs = [[max(0.0, b - a) for a, b in zip([0.0, *row[:-1]], row, strict=True)] for row in cumulative]
    return {"num_prompt_tokens": len(rank_probs), "top_k": len(rank_probs[0]), "rank_probs": rank_probs}


def packaged_accuracy_path(model_name: str) -> Path:
    return Path(str(resources.files("ppdecode.data").joinpath("accuracy", f"{model_name}.json")))


def tune(
    base: LoadedModel,
    tokens: PromptTokens,
    accuracy: Accuracy,
    config: TuneConfig | None = None,
    key: HardwareKey | None = None,
    log: Callable[[str], None] | None = None,
    draft: Callable[[], DraftProposer] | None = None,
) -> HardwareProfile:
    """Measure this device and choose the tree; returns the profile (the caller decides where it goes).

    ``draft`` (``ppdecode.draft_proposers``): the confirmation decodes with a draft model in the mix, and
    the profile is keyed by that draft, so ``load(draft=...)`` finds it. The predictions model the prompt
    tokens' guesses alone; what the draft adds is measured, so a draft needs ``confirm``.
    """
    config = config or TuneConfig()
    say = log or logger.info
    n = tokens.num_prompt_tokens
    accuracy.expected_for(n)
    if draft is not None and not config.confirm:
        raise ValueError(
            "tuning with a draft needs --confirm N: what the draft adds to a tree is measured by decoding"
        )
    key = key or current_key(base, tokens, draft_identity(draft()) if draft else "")
    budgets = list(config.budgets) or default_budgets(base.device.type, n)
    say(f"building {len(budgets)} trees (budgets {budgets[0]}..{budgets[-1]}) from {accuracy.source}")
    family = build_tree_family(accuracy, budgets, top_k=config.top_k)
    options = [BudgetOption.of(spec, tokens.ensemble) for spec in family]

    # with prompt lookup, a step may carry a chain past the tree (the planner's room, lookup_chain inputs)
    chain_inputs = GenerationConfig().lookup_chain if config.lookup else 0
    sizes = latency_sizes(options, config.quick, chain_inputs=chain_inputs)
    say(f"profiling the forward at {len(sizes)} input sizes on {key.device_name} ({key.dtype}, "
        f"{key.threads} threads) over a {config.cache_length}-token cache")
    medians = measure_forward_latency(
        base, tokens, sizes, config.cache_length, config.repeats, config.warmup, config.progress
    )
    mid = family[len(family) // 2]
    overhead = measure_decoding(
        base, tokens, {VANILLA: None, "tree": mid}, held_out_prompts(1), config.overhead_tokens,
        config.progress, lookup=config.lookup,
    )
    latency = LatencyProfile(
        sizes=tuple(sorted(medians)),
        forward_ms=tuple(medians[s] for s in sorted(medians)),
        cache_length=config.cache_length,
        repeats=config.repeats,
        step_overhead_ms=overhead["tree"].overhead_ms_per_step,
        vanilla_overhead_ms=overhead[VANILLA].overhead_ms_per_step,
        chain_share=overhead["tree"].chain_share,
        chain_inputs=chain_inputs,
    )
    predictions = predict_all(options, latency)
    predicted = best_predicted(predictions).budget
    say(f"predicted best budget: {predicted} ({best_predicted(predictions).speedup:.2f}x over vanilla)")

    measured: dict[int, DecodeMeasurement] = {}
    vanilla: DecodeMeasurement | None = None
    if config.confirm:
        chosen_few = best_few(predictions, config.confirm)
        say(f"confirming budgets {chosen_few} on {config.prompts} held-out prompts")
        specs = {spec.meta["budget"]: spec for spec in family}
        variants: dict[str, TreeSpec | None] = {VANILLA: None, **{str(b): specs[b] for b in chosen_few}}
        results = measure_decoding(
            base, tokens, variants, held_out_prompts(config.prompts), config.max_new_tokens, config.progress,
            repeats=config.confirm_repeats, lookup=config.lookup, draft=draft,
        )
        vanilla = results[VANILLA]
        measured = {b: results[str(b)] for b in chosen_few}
    chosen = choose_confirmed(predicted, {b: m.tokens_per_s for b, m in measured.items()})
    predicted_speedup = next(p.speedup for p in predictions if p.budget == chosen)
    confirmed = measured.get(chosen)
    measured_speedup = None
    if confirmed is not None and vanilla is not None and vanilla.tokens_per_s > 0:
        measured_speedup = confirmed.tokens_per_s / vanilla.tokens_per_s
    pays = tree_pays(predicted_speedup, measured_speedup)
    if not pays:
        how = "predicted" if measured_speedup is None else "measured"
        say(f"one row: vanilla, no tree pays on {key.device_name} ({key.isa}, {key.dtype}): budget {chosen} "
            f"{how} at {measured_speedup or predicted_speedup:.2f}x over vanilla; so for every batch size")

    tree = family[budgets.index(chosen)]
    tree = TreeSpec(
        tree.num_prompt_tokens, tree.top_k, tree.trees, tree.root_slots,
        meta={**tree.meta, "tuned_for": key.to_dict()},
    )
    rows = tuple(
        BudgetRow(p, o.input_sizes, measured.get(p.budget)) for p, o in zip(predictions, options, strict=True)
    )
    # A tree that does not pay for one row does not pay for more, where each of its inputs costs more;
    # so a batch takes no larger tree than a smaller batch does (a noisy profile must not grow it), and
    # from the first batch size that decodes vanilla on, every larger one does.
    batch: list[BatchChoice] = []
    cap = chosen if pays else 0
    for size in sorted(set(config.batch_sizes) - {1}):
        if not cap:
            break
        kept = [i for i, option in enumerate(options) if option.budget <= cap]
        kept_options = [options[i] for i in kept]
        choice = _batch_choice(
            base, tokens, kept_options, [family[i] for i in kept],
            latency_sizes(kept_options, config.quick, chain_inputs=chain_inputs), latency, size, config, say,
        )
        batch.append(choice)
        cap = choice.budget
    return HardwareProfile(
        key=key, latency=latency, rows=rows, vanilla=vanilla, predicted_budget=predicted,
        chosen_budget=chosen, tree=tree, quick=config.quick, accuracy_source=accuracy.source, created=now(),
        batch=tuple(batch), tree_pays=pays,
    )


def _batch_choice(
    base: LoadedModel,
    tokens: PromptTokens,
    options: list[BudgetOption],
    family: list[TreeSpec],
    sizes: list[int],
    single: LatencyProfile,
    batch: int,
    config: TuneConfig,
    say: Callable[[str], None],
) -> BatchChoice:
    """The tree for ``batch`` active rows: each row's τ is the batch-1 τ, the forward costs L(B·n)."""
    medians = measure_forward_latency(
        base, tokens, sizes, config.cache_length, config.repeats, config.warmup, config.progress, batch
    )
    latency = LatencyProfile(
        sizes=tuple(sorted(medians)),
        forward_ms=tuple(medians[s] for s in sorted(medians)),
        cache_length=config.cache_length,
        repeats=config.repeats,
        # the loop's work outside the forward is per row
        step_overhead_ms=single.step_overhead_ms * batch,
        vanilla_overhead_ms=single.vanilla_overhead_ms * batch,
        # a batch step is as wide as its widest row: one row's chain widens every row's step
        chain_share=1.0 - (1.0 - single.chain_share) ** batch,
        chain_inputs=single.chain_inputs,
    )
    choice = choose_for_batch(batch, options, family, latency)
    say(
        f"batch {batch}: "
        + (f"budget {choice.budget}" if choice.tree is not None else "vanilla (no tree pays)")
        + f" (best tree predicted at {choice.speedup:.2f}x over vanilla)"
    )
    return choice


def choose_for_batch(
    batch: int, options: list[BudgetOption], family: list[TreeSpec], latency: LatencyProfile
) -> BatchChoice:
    """The budget with the best predicted throughput on this batch's latency, or vanilla (budget 0)
    where no tree is predicted clearly faster (``tree_pays``) than decoding one token per row."""
    best = best_predicted(predict_all(options, latency))
    if not tree_pays(best.speedup):
        return BatchChoice(batch, latency, 0, best.speedup, None)
    tree = family[[o.budget for o in options].index(best.budget)]
    return BatchChoice(batch, latency, best.budget, best.speedup, tree)


def family_of(profile: HardwareProfile, accuracy: Accuracy, top_k: int | None = None) -> list[TreeSpec]:
    """The trees of every budget the profile tried, rebuilt from the same table (deterministic)."""
    return build_tree_family(accuracy, [row.budget for row in profile.rows], top_k=top_k)
