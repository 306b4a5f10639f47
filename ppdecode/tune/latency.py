"""Forward latency L_fp(n) of n step inputs on top of a realistic cache, measured on this device (METHOD §5).

The measured forward is the engine's own: ``step.build_inputs`` and ``step.run_forward`` with token and
prompt-slot embeddings, tree positions, a tree-shaped attention mask over the committed cache, and (for
deep prompt tokens) the per-layer vectors at the slot positions, for a batch of rows. Only the tree's
shape is synthetic: a root carrying min(N, n − 1) prompt slots plus a star of n − 1 − slots candidates,
which has exactly n inputs. The mask's contents do not change the cost of a dense attention kernel; its
size does.

Sizes are measured round-robin (every size once per round, in a fresh order each round, rounds repeated)
so that a burst of load from another process, or a slower clock after the largest forwards, spreads over
all sizes instead of distorting one, and each size keeps the median.
"""

from __future__ import annotations

import logging
import random
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ppdecode.cache import KVCache
from ppdecode.models import LoadedModel
from ppdecode.planner import VANILLA, VANILLA_TREE
from ppdecode.prompt_tokens import PromptTokens
from ppdecode.step import RowPlan, build_inputs, run_forward
from ppdecode.tree.buffers import build_buffers
from ppdecode.tree.spec import TreeNode, TreeSpec
from ppdecode.verify import greedy_tokens

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LatencyProfile:
    """What one decoding step costs on this device, as a function of its input size n.

    ``forward_ms[i]`` is the median forward latency of ``sizes[i]`` inputs on top of ``cache_length``
    committed rows. The overheads are the decode loop's time per step outside the forward (candidates,
    embeddings, verification, commit), measured by decoding: ``step_overhead_ms`` with a tree,
    ``vanilla_overhead_ms`` without one. With prompt lookup in the mix, a share ``chain_share`` of the
    tree steps (measured by the same decoding) carries a chain that fills the step to the tree's largest
    step plus ``chain_inputs`` (the planner's room): where a few more inputs cross a step in the latency
    curve (a matrix unit's tile of 16 rows, say), that decides between neighbouring budgets.
    """

    sizes: tuple[int, ...]
    forward_ms: tuple[float, ...]
    cache_length: int
    repeats: int
    step_overhead_ms: float = 0.0
    vanilla_overhead_ms: float = 0.0
    chain_share: float = 0.0  # share of tree steps with a chain past the tree (for a batch: any row's)
    chain_inputs: int = 0  # inputs such a chain adds to the tree's largest step

    def __post_init__(self) -> None:
        if not self.sizes or len(self.sizes) != len(self.forward_ms):
            raise ValueError("latency profile: needs one latency per size, and at least one size")
        if list(self.sizes) != sorted(set(self.sizes)) or self.sizes[0] < 1:
            raise ValueError(f"latency profile: sizes must be increasing and >= 1, got {list(self.sizes)}")
        if any(not ms > 0 for ms in self.forward_ms):
            raise ValueError(f"latency profile: latencies must be > 0 ms, got {list(self.forward_ms)}")
        if not 0.0 <= self.chain_share <= 1.0 or self.chain_inputs < 0:
            raise ValueError(
                f"latency profile: chain_share must be in [0, 1] and chain_inputs >= 0, got "
                f"{self.chain_share}, {self.chain_inputs}"
            )

    @property
    def smoothed_ms(self) -> tuple[float, ...]:
        """The medians fitted by the closest non-decreasing curve (isotonic regression).

        More inputs never make a forward faster; a measured dip (L(8) > L(9), say) is noise of a few
        percent that would otherwise decide between neighbouring budgets, so it is pooled away.
        """
        return isotonic(self.forward_ms)

    def forward_at(self, n: float) -> float:
        """L_fp(n) in ms: the smoothed medians, linear between sizes, extended with the last slope."""
        xs, ys = self.sizes, self.smoothed_ms
        if n > xs[-1] and len(xs) >= 2:
            slope = max(0.0, (ys[-1] - ys[-2]) / (xs[-1] - xs[-2]))
            return ys[-1] + slope * (n - xs[-1])
        return float(np.interp(n, xs, ys))

    def step_ms(self, n: int) -> float:
        """Predicted time of one decoding step with n inputs: the forward plus the loop's overhead."""
        if n <= 1:
            return self.forward_at(1) + self.vanilla_overhead_ms
        return self.forward_at(n) + self.step_overhead_ms

    def tree_step_ms(self, inputs: Sequence[int], shares: Sequence[float]) -> float:
        """Expected time of one step of a tree whose step at depth d has ``inputs[d]`` inputs and comes
        a share ``shares[d]`` of the time; a share ``chain_share`` of the steps carries a chain instead,
        which fills the step to the largest plus ``chain_inputs``."""
        plain = sum(p * self.step_ms(n) for p, n in zip(shares, inputs, strict=True))
        if not self.chain_share:
            return plain
        chained = self.step_ms(max(inputs) + self.chain_inputs)
        return (1.0 - self.chain_share) * plain + self.chain_share * chained

    def to_dict(self) -> dict[str, Any]:
        return {
            "sizes": list(self.sizes),
            "forward_ms": [round(ms, 4) for ms in self.forward_ms],
            "cache_length": self.cache_length,
            "repeats": self.repeats,
            "step_overhead_ms": round(self.step_overhead_ms, 4),
            "vanilla_overhead_ms": round(self.vanilla_overhead_ms, 4),
            "chain_share": round(self.chain_share, 4),
            "chain_inputs": self.chain_inputs,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatencyProfile:
        return cls(
            sizes=tuple(int(n) for n in data["sizes"]),
            forward_ms=tuple(float(ms) for ms in data["forward_ms"]),
            cache_length=int(data["cache_length"]),
            repeats=int(data["repeats"]),
            step_overhead_ms=float(data.get("step_overhead_ms", 0.0)),
            vanilla_overhead_ms=float(data.get("vanilla_overhead_ms", 0.0)),
            chain_share=float(data.get("chain_share", 0.0)),
            chain_inputs=int(data.get("chain_inputs", 0)),
        )


def isotonic(values: Sequence[float]) -> tuple[float, ...]:
    """Least-squares non-decreasing fit (pool adjacent violators), equal weights."""
    blocks: list[list[float]] = []  # [mean, count]
    for value in values:
        blocks.append([float(value), 1.0])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            mean, count = blocks.pop()
            previous = blocks[-1]
            previous[0] = (previous[0] * previous[1] + mean * count) / (previous[1] + count)
            previous[1] += count
    return tuple(mean for mean, count in blocks for _ in range(int(count)))


def probe_tree(n: int, num_prompt_tokens: int) -> tuple[TreeSpec, int]:
    """A tree spec and depth whose step has exactly ``n`` >= 2 inputs (root slots first, then a star)."""
    if n < 2:
        raise ValueError(f"a tree step has at least 2 inputs, got {n}")
    slots = min(num_prompt_tokens, n - 1)
    nodes = n - 1 - slots
    rest: tuple[tuple[TreeNode, ...], ...] = ((TreeNode((0,), 0),),) * (num_prompt_tokens - 1)
    spec = TreeSpec(
        num_prompt_tokens=num_prompt_tokens,
        top_k=(max(nodes, 1),) + (1,) * (num_prompt_tokens - 1),
        trees=(tuple(TreeNode((r,), 0) for r in range(max(nodes, 1))), *rest),
        root_slots=slots,
    )
    return spec, 1 if nodes else 0


def probe_plans(
    tokens: PromptTokens | None, vocab: int, cache_length: int, n: int, batch: int = 1
) -> list[RowPlan]:
    """``batch`` rows of one synthetic step of ``n`` inputs each, on top of ``cache_length`` rows."""
    if n == 1:
        buffers = VANILLA
    elif tokens is None:  # token inputs only: a causal chain under the root, the shape of a lookup chain
        buffers = build_buffers(VANILLA_TREE, 0, 1, 0, n - 1)
    else:
        spec, depth = probe_tree(n, tokens.num_prompt_tokens)
        # Ensemble members are just more slot inputs: one member keeps the step at exactly n inputs.
        buffers = build_buffers(spec, depth, 1)
    generator = torch.Generator().manual_seed(n)
    ids = torch.randint(vocab, (batch, 1 + buffers.num_nodes), generator=generator).tolist()
    return [RowPlan(cache_length, tuple(row), buffers) for row in ids]


@torch.inference_mode()
def measure_forward_latency(
    base: LoadedModel,
    tokens: PromptTokens | None,
    sizes: Sequence[int],
    cache_length: int = 256,
    repeats: int = 5,
    warmup: int = 1,
    progress: bool = False,
    batch: int = 1,
) -> dict[int, float]:
    """Median forward latency in ms of each input size per row, ``batch`` rows on ``cache_length`` each."""
    sizes = sorted(set(sizes))
    if not sizes or sizes[0] < 1:
        raise ValueError(f"sizes must be >= 1, got {sizes}")
    if repeats < 1 or warmup < 0 or batch < 1:
        raise ValueError(
            f"repeats and batch must be >= 1 and warmup >= 0, got repeats={repeats}, batch={batch}, "
            f"warmup={warmup}"
        )
    if cache_length < 1 or cache_length + sizes[-1] > base.context_length:
        raise ValueError(
            f"cache_length {cache_length} plus the largest size {sizes[-1]} must fit the model's context "
            f"({base.context_length}); lower --budgets or the cache length"
        )
    vocab = base.model.get_input_embeddings().num_embeddings
    cache = KVCache(base.model, batch, cache_length + sizes[-1])
    generator = torch.Generator().manual_seed(0)
    context = torch.randint(vocab, (batch, cache_length), generator=generator).tolist()  # [B, C]
    fill = [RowPlan(0, (row[-1],), VANILLA, tuple(row[:-1])) for row in context]
    run_forward(base, build_inputs(base, tokens, fill), cache)  # C committed rows each
    probes = {
        n: build_inputs(base, tokens, probe_plans(tokens, vocab, cache_length, n, batch)) for n in sizes
    }
    times: dict[int, list[float]] = {n: [] for n in sizes}
    rounds = warmup + repeats
    desc = f"forward latency (batch {batch})"
    with tqdm(total=rounds * len(sizes), desc=desc, unit="fwd", disable=not progress) as bar:
        for round_ in range(rounds):
            # a fresh order each round: what a forward leaves behind (a slower clock after a large
            # matrix-unit step, say) must not fall on the sizes that follow the largest every time
            for n in random.Random(round_).sample(sizes, len(sizes)):
                inputs = probes[n]
                start = time.perf_counter()
                # written past the committed rows, never committed; the output layer as verification runs it
                hidden = run_forward(base, inputs, cache)
                greedy_tokens(base, hidden.reshape(-1, hidden.shape[-1]))
                if base.device.type == "cuda":
                    torch.cuda.synchronize(base.device)
                if round_ >= warmup:
                    times[n].append(time.perf_counter() - start)
                bar.update()
    medians = {n: 1000 * statistics.median(samples) for n, samples in times.items()}
    logger.info(
        "forward latency on %s (%s, batch %d): %s",
        base.device,
        base.dtype,
        batch,
        {n: round(ms, 2) for n, ms in medians.items()},
    )
    return medians
