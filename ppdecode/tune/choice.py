"""The hardware-aware choice of a tree budget (METHOD §5): pure functions of τ and a latency profile.

A tree family holds one tree per input budget b, each with its expected τ_b (from the accuracy table,
hardware-independent) and its long-run share π_d of steps at each depth d (whose step has n_d inputs).
Tokens per second follow the renewal-reward rule — expected tokens per step over expected time per step:

    rate(b) = τ_b / Σ_d π_d · step_ms(n_d),    step_ms(n) = L_fp(n) + loop overhead,

and vanilla decoding runs at 1 / step_ms(1). The chosen budget maximises rate(b); a confirmation run
that decodes real prompts may overrule it when a measured rate beats the predicted best by more than
the noise tolerance.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ppdecode.tree.builder import min_budget
from ppdecode.tree.spec import TreeSpec
from ppdecode.tune.latency import LatencyProfile

# Measured rates within this fraction of each other are a tie: keep the predicted best, so that
# re-running the tuner under different background load does not flip the choice.
CONFIRM_TOLERANCE = 0.02
# Predicted speed-up over vanilla a tree needs to be chosen, for one active row or a batch. Measured τ
# runs 6-10 % below the expected τ of the accuracy table (docs/trees.md), and a batch step pays for
# padding to its widest row, so a tree predicted only slightly faster is slower in practice (measured:
# budget 8 at B = 2, predicted 1.08x, decoded at 0.92x of vanilla).
TREE_MARGIN = 1.10


def step_inputs(spec: TreeSpec, depth: int, ensemble: int = 1) -> int:
    """Inputs of one step at ``depth``: root and candidates, plus ``ensemble`` inputs per prompt slot."""
    nodes = spec.tree(depth)
    return 1 + len(nodes) + ensemble * (spec.root_slots + sum(node.slots for node in nodes))


@dataclass(frozen=True)
class BudgetOption:
    """What the choice needs to know about one tree of a family."""

    budget: int
    expected_tau: float
    depth_share: tuple[float, ...]  # [N + 1]: π_d, long-run share of steps at depth d = 0..N
    input_sizes: tuple[int, ...]  # [N + 1]: inputs of a step at depth d = 0..N

    def __post_init__(self) -> None:
        if len(self.depth_share) != len(self.input_sizes):
            raise ValueError("budget option: depth_share and input_sizes need one entry per depth 0..N")
        if abs(sum(self.depth_share) - 1.0) > 1e-3:
            raise ValueError(
                f"budget option {self.budget}: depth shares sum to {sum(self.depth_share)}, not 1"
            )

    @classmethod
    def of(cls, spec: TreeSpec, ensemble: int = 1) -> BudgetOption:
        """From a tree made by ``build_tree`` (its meta holds the budget, expected τ and depth shares)."""
        missing = [key for key in ("budget", "expected_tau", "depth_share") if key not in spec.meta]
        if missing:
            raise ValueError(
                f"the tree lacks meta {missing}: only trees made by the builder (`ppd build-tree`) can be "
                "tuned, since the choice needs their expected τ and depth shares"
            )
        n = spec.num_prompt_tokens
        return cls(
            budget=int(spec.meta["budget"]),
            expected_tau=float(spec.meta["expected_tau"]),
            depth_share=tuple(float(x) for x in spec.meta["depth_share"]),
            input_sizes=tuple(step_inputs(spec, d, ensemble) for d in range(n + 1)),
        )

    @property
    def mean_inputs(self) -> float:
        return sum(p * n for p, n in zip(self.depth_share, self.input_sizes, strict=True))


@dataclass(frozen=True)
class Prediction:
    budget: int
    expected_tau: float
    step_ms: float  # expected time of one step, Σ_d π_d step_ms(n_d), chains included (LatencyProfile)
    tokens_per_s: float
    speedup: float  # over vanilla decoding on the same profile

    def to_dict(self) -> dict[str, Any]:
        return {
            "budget": self.budget,
            "expected_tau": round(self.expected_tau, 6),
            "step_ms": round(self.step_ms, 4),
            "tokens_per_s": round(self.tokens_per_s, 4),
            "speedup": round(self.speedup, 4),
        }


def vanilla_tokens_per_s(latency: LatencyProfile) -> float:
    return 1000.0 / latency.step_ms(1)


def predict(option: BudgetOption, latency: LatencyProfile) -> Prediction:
    step_ms = latency.tree_step_ms(option.input_sizes, option.depth_share)
    rate = 1000.0 * option.expected_tau / step_ms
    return Prediction(option.budget, option.expected_tau, step_ms, rate, rate / vanilla_tokens_per_s(latency))


def predict_all(options: Sequence[BudgetOption], latency: LatencyProfile) -> list[Prediction]:
    return [predict(option, latency) for option in options]


def best_predicted(predictions: Sequence[Prediction]) -> Prediction:
    """The fastest predicted budget; an exact tie goes to the smaller budget (less work per step)."""
    if not predictions:
        raise ValueError("no budgets to choose from")
    return max(predictions, key=lambda p: (p.tokens_per_s, -p.budget))


def best_few(predictions: Sequence[Prediction], count: int) -> list[int]:
    """Budgets of the ``count`` fastest predictions, fastest first."""
    ranked = sorted(predictions, key=lambda p: (-p.tokens_per_s, p.budget))
    return [p.budget for p in ranked[:count]]


def choose_confirmed(
    predicted_best: int, measured_rates: Mapping[int, float], tolerance: float = CONFIRM_TOLERANCE
) -> int:
    """Keep the predicted best unless a measured budget is faster by more than ``tolerance``."""
    if not measured_rates:
        return predicted_best
    fastest = max(measured_rates, key=lambda b: (measured_rates[b], -b))
    kept = measured_rates.get(predicted_best, 0.0)
    return predicted_best if kept >= (1 - tolerance) * measured_rates[fastest] else fastest


def tree_pays(predicted_speedup: float, measured_speedup: float | None = None) -> bool:
    """Whether a tree is worth its inputs over decoding one token per row: measured faster where it
    was decoded beside vanilla, else predicted faster by more than ``TREE_MARGIN``."""
    if measured_speedup is not None:
        return measured_speedup > 1.0
    return predicted_speedup > TREE_MARGIN


def parse_budgets(text: str, num_prompt_tokens: int | None = None) -> list[int]:
    """Budgets from ``"16"``, a list ``"8,12,16"``, inclusive ranges ``"8:32:4"`` (step 1 if left out), or a
    mix (``"5:16,20:48:4"``); sorted, without repeats."""
    budgets: set[int] = set()
    try:
        for item in text.split(","):
            parts = [int(p) for p in item.strip().split(":")]
            if len(parts) == 1:
                budgets.add(parts[0])
                continue
            if len(parts) not in (2, 3):
                raise ValueError
            start, stop, step = parts[0], parts[1], parts[2] if len(parts) == 3 else 1
            if step < 1 or stop < start:
                raise ValueError
            budgets.update(range(start, stop + 1, step))
    except ValueError:
        raise ValueError(
            f"cannot read budgets {text!r}: give one budget (16), a list (8,12,16), an inclusive range "
            "start:stop[:step] (8:32:4), or a list of these"
        ) from None
    ordered = sorted(budgets)
    if num_prompt_tokens is not None and ordered[0] < min_budget(num_prompt_tokens):
        raise ValueError(
            f"budget {ordered[0]} is too small: with {num_prompt_tokens} prompt tokens a step needs the "
            f"root, its {num_prompt_tokens} prompt slots and one candidate, so use budgets >= "
            f"{min_budget(num_prompt_tokens)}"
        )
    return ordered


def default_budgets(device_type: str, num_prompt_tokens: int) -> list[int]:
    """Budgets worth trying: every size up to 48 on a CPU (latency grows with n), a wider grid on a GPU."""
    start = min_budget(num_prompt_tokens)
    if device_type == "cpu":
        return list(range(start, 49))
    return sorted({*range(start, 33), *range(40, 129, 8), *range(160, 321, 32)})


def latency_sizes(
    options: Sequence[BudgetOption], quick: bool, points: int = 8, chain_inputs: int = 0
) -> list[int]:
    """Input sizes to profile: every size the family uses (with a step that carries a chain of
    ``chain_inputs`` past the largest), or (quick) about ``points`` spread over them."""
    steps = {n for option in options for n in option.input_sizes}
    if chain_inputs:
        steps |= {max(option.input_sizes) + chain_inputs for option in options}
    needed = sorted(steps | {1})
    if not quick or len(needed) <= points + 1:
        return needed
    low, high = needed[1], needed[-1]
    grid = {round(low + (high - low) * i / (points - 1)) for i in range(points)}
    return sorted(grid | {1})
