"""Tree builder: a measured accuracy table → a dynamic sparse tree that fits an input budget (METHOD §4).

Vocabulary (one definition, used throughout):

- ``a[i][r]`` (``Accuracy.rank_probs``): probability that the true token at distance i+2 is exactly
  rank r of prompt token i+1. Ranks at or beyond K (and anything the table does not cover) are a miss.
- path probability ``p(c) = Π_i a[i][c_i]``: probability that candidate path c is accepted, under the
  usual assumption that the prompt tokens' hits are independent.
- ``f(d, T)``: expected number of accepted candidates of the best tree of T nodes at depth d, i.e. the
  sum of p over the top-T paths of length ≤ d.
- ``q_c = p(c) − Σ_children p(child)``: probability that c is the *last* accepted node. The next step
  then has depth n_c (the slots of c); when nothing is accepted the root's ``root_slots`` apply.
- expected τ: the depth of the next step only depends on the last accepted node, so depths form a
  Markov chain with transitions q. With π its stationary distribution, τ = 1 + Σ_d π_d f(d, T_d)
  (the 1 is the bonus token). Depth 0 (a node with no slots accepted last) is a root-only step.

The search (``build_tree``) chooses, for every depth, a tree size T_d and a slot allocation:

1. the nodes of a depth-d tree of size T are the top-T paths (``best_paths``);
2. slots follow METHOD §4: every node starts with N slots and, while the step is over budget, the node
   whose removal loses the least, ``q_c · (f(n_c) − f(n_c − 1))``, gives one up. Here ``f(n)`` is the
   yield of the tree the *current configuration* uses at depth n (not the best tree of the same size),
   because that is what a step at depth n will actually verify; for the depth being resized we use the
   candidate tree's own f, which depends only on its nodes, not on their slots;
3. the sizes are found by policy iteration: each depth's tree is the "action" of a Markov decision
   process over depths. Evaluate the current configuration (τ, and the relative value h(d) of being at
   depth d), then give every depth the size T, with its slots from rule 2, that maximises
   f(d, T) + Σ_c q_c h(n_c) + q_root h(root_slots); keep the new configuration while its exact τ rises.
   Unlike coordinate ascent on τ itself, this also improves depths the current configuration never
   visits (π_d = 0), which would otherwise keep their first guess. On the tables we tried it comes
   within 0.1% of the optimum over top-T trees with free slot allocation (policy iteration with an
   exact knapsack on h in place of rule 2).
"""

from __future__ import annotations

import heapq
import itertools
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ppdecode.tree.spec import TreeNode, TreeSpec

logger = logging.getLogger(__name__)

RankPath = tuple[int, ...]
_ROW_SUM_TOLERANCE = 1e-6
_MAX_ROUNDS = 20


@dataclass(frozen=True)
class Accuracy:
    """Per-rank hit probabilities of the prompt tokens, as written by the accuracy tool."""

    num_prompt_tokens: int
    top_k: int
    rank_probs: tuple[tuple[float, ...], ...]  # [N, K]: a[i][r]
    topk_accuracy: tuple[tuple[float, ...], ...] = ()  # [N, *]: cumulative, informational only
    base_model: str = ""
    num_samples: int = 0
    source: str = field(default="accuracy table", compare=False)

    def __post_init__(self) -> None:
        where, n, k = self.source, self.num_prompt_tokens, self.top_k
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"{where}: num_prompt_tokens must be an integer >= 1, got {n!r}")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"{where}: top_k must be an integer >= 1, got {k!r}")
        if len(self.rank_probs) != n:
            raise ValueError(
                f"{where}: rank_probs has {len(self.rank_probs)} rows but num_prompt_tokens is {n}; "
                "it needs one row per prompt token (re-measure the accuracies or fix num_prompt_tokens)"
            )
        for i, row in enumerate(self.rank_probs):
            if len(row) != k:
                raise ValueError(f"{where}: rank_probs[{i}] has {len(row)} entries, expected top_k = {k}")
            _check_probs(row, f"{where}: rank_probs[{i}]")
            total = sum(row)
            if total > 1 + _ROW_SUM_TOLERANCE:
                raise ValueError(
                    f"{where}: rank_probs[{i}] sums to {total:.6f} > 1; each entry must be the probability "
                    "of *exactly* that rank (cumulative top-k values belong in topk_accuracy)"
                )
        if self.topk_accuracy and len(self.topk_accuracy) != n:
            raise ValueError(
                f"{where}: topk_accuracy has {len(self.topk_accuracy)} rows, "
                f"expected one per prompt token ({n})"
            )
        for i, row in enumerate(self.topk_accuracy):
            _check_probs(row, f"{where}: topk_accuracy[{i}]")

    @classmethod
    def from_dict(cls, data: Any, source: str = "accuracy table") -> Accuracy:
        if not isinstance(data, dict):
            raise ValueError(f"{source}: expected a JSON object, got {type(data).__name__}")
        missing = [key for key in ("num_prompt_tokens", "top_k", "rank_probs") if key not in data]
        if missing:
            raise ValueError(f"{source}: missing key(s) {missing}; is this the accuracy tool's output?")
        return cls(
            num_prompt_tokens=data["num_prompt_tokens"],
            top_k=data["top_k"],
            rank_probs=_as_table(data["rank_probs"], f"{source}: rank_probs"),
            topk_accuracy=_as_table(data.get("topk_accuracy") or [], f"{source}: topk_accuracy"),
            base_model=str(data.get("base_model", "")),
            num_samples=int(data.get("num_samples", 0)),
            source=source,
        )

    @classmethod
    def load(cls, path: str | Path) -> Accuracy:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"accuracy file {path} does not exist; measure it with the accuracy tool first")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"accuracy file {path} is not valid JSON: {err}") from None
        return cls.from_dict(data, source=f"accuracy file {path}")

    def expected_for(self, num_prompt_tokens: int) -> Accuracy:
        """Return self if it was measured for ``num_prompt_tokens`` prompt tokens; refuse otherwise."""
        if num_prompt_tokens != self.num_prompt_tokens:
            raise ValueError(
                f"{self.source} was measured for {self.num_prompt_tokens} prompt tokens, but the tree is "
                f"requested for {num_prompt_tokens}; measure accuracies with the prompt tokens you will "
                f"decode with, or build for num_prompt_tokens = {self.num_prompt_tokens}"
            )
        return self

    def path_prob(self, path: RankPath) -> float:
        """p(c) = Π_i a[i][c_i]; ranks the table does not cover have probability 0."""
        prob = 1.0
        for i, rank in enumerate(path):
            prob *= self.rank_probs[i][rank] if 0 <= rank < self.top_k else 0.0
        return prob


def _as_table(raw: Any, where: str) -> tuple[tuple[float, ...], ...]:
    if not isinstance(raw, list) or not all(isinstance(row, list) for row in raw):
        raise ValueError(f"{where} must be a list of lists of numbers")
    for row in raw:
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in row):
            raise ValueError(f"{where} must contain only numbers, got {row!r}")
    return tuple(tuple(float(x) for x in row) for row in raw)


def _check_probs(row: Sequence[float], where: str) -> None:
    bad = [x for x in row if not 0.0 <= x <= 1.0]  # also catches NaN
    if bad:
        raise ValueError(f"{where} has value(s) {bad} outside [0, 1]")


def min_budget(num_prompt_tokens: int) -> int:
    """Smallest useful step: the root, its prompt slots (root_slots = N) and one candidate."""
    return 1 + num_prompt_tokens + 1


# ---- paths ---------------------------------------------------------------------------------------


class ScoredPath(NamedTuple):
    path: RankPath
    prob: float  # p(path)


def _rank_limits(acc: Accuracy, top_k: int | Sequence[int] | None) -> tuple[int, ...]:
    """Per prompt token, how many ranks the builder may use (the table's K, or fewer if asked)."""
    n = acc.num_prompt_tokens
    if top_k is None:
        return (acc.top_k,) * n
    given = (top_k,) * n if isinstance(top_k, int) else tuple(top_k)
    if len(given) != n or any(k < 1 for k in given):
        raise ValueError(f"top_k must be an int >= 1 or {n} ints >= 1 (one per prompt token), got {top_k!r}")
    return tuple(min(k, acc.top_k) for k in given)


def best_paths(
    acc: Accuracy, depth: int, size: int, top_k: int | Sequence[int] | None = None
) -> list[ScoredPath]:
    """The ``size`` most probable paths of length ≤ ``depth``, most probable first.

    Heap expansion from the root: a child is pushed when its parent is popped. p never increases along
    a path and equal p is broken by the lexicographic path (a prefix sorts before its extensions), so
    the pop order is a total order in which every prefix of ``size`` paths is prefix-closed.
    """
    if depth < 0 or size < 0:
        raise ValueError(f"depth and size must be >= 0, got depth={depth}, size={size}")
    limits = _rank_limits(acc, top_k)
    heap: list[tuple[float, RankPath]] = []
    if depth >= 1:
        heap = [(-acc.rank_probs[0][r], (r,)) for r in range(limits[0])]
        heapq.heapify(heap)
    out: list[ScoredPath] = []
    while heap and len(out) < size:
        neg_prob, path = heapq.heappop(heap)
        out.append(ScoredPath(path, -neg_prob))
        i = len(path)
        if i < depth:
            for r in range(limits[i]):
                heapq.heappush(heap, (neg_prob * acc.rank_probs[i][r], (*path, r)))
    return out


def expected_accepted(
    acc: Accuracy, depth: int, size: int, top_k: int | Sequence[int] | None = None
) -> float:
    """f(depth, size): expected accepted candidates (bonus excluded) of the best tree of that size."""
    return sum(scored.prob for scored in best_paths(acc, depth, size, top_k))


def last_accepted_probs(paths: Sequence[RankPath], probs: Sequence[float]) -> list[float]:
    """q_c = p(c) − Σ_children p(child) for a prefix-closed set of paths (clamped at 0 for rounding)."""
    index = {path: i for i, path in enumerate(paths)}
    q = list(probs)
    for path, prob in zip(paths, probs, strict=True):
        if len(path) > 1:
            q[index[path[:-1]]] -= prob
    return [max(0.0, x) for x in q]


def allocate_slots(last_probs: Sequence[float], f_by_depth: Sequence[float], slot_budget: int) -> list[int]:
    """Slots per node: start at N = len(f_by_depth) − 1 each, then remove the cheapest until they fit.

    Removing a slot from c (n_c → n_c − 1) loses ``q_c · (f[n_c] − f[n_c − 1])`` expected tokens of the
    next step (METHOD §4). Ties go to the later (less probable) node so the result is deterministic.
    """
    n = len(f_by_depth) - 1
    if slot_budget < 0:
        raise ValueError(f"slot_budget must be >= 0, got {slot_budget}")
    slots = [n] * len(last_probs)
    excess = n * len(last_probs) - slot_budget
    if excess <= 0:
        return slots

    def loss(i: int) -> float:
        return last_probs[i] * (f_by_depth[slots[i]] - f_by_depth[slots[i] - 1])

    heap = [(loss(i), -i) for i in range(len(last_probs))]
    heapq.heapify(heap)
    for _ in range(excess):
        _, neg_i = heapq.heappop(heap)
        slots[-neg_i] -= 1
        if slots[-neg_i] > 0:
            heapq.heappush(heap, (loss(-neg_i), neg_i))
    return slots


# ---- the depth Markov chain ------------------------------------------------------------------------


def _transition_row(
    last_probs: Sequence[float], slots: Sequence[int], root_last: float, root_slots: int, n: int
) -> np.ndarray:
    row = np.zeros(n + 1)  # [N + 1]: probability of each next depth
    np.add.at(row, np.asarray(slots, dtype=np.int64), np.asarray(last_probs, dtype=np.float64))
    row[root_slots] += root_last
    return row


def _long_run_depths(trans: np.ndarray, start: int) -> np.ndarray:
    """Long-run share of steps at each depth, starting at ``start``. trans: [N + 1, N + 1]."""
    size = trans.shape[0]
    if np.all(trans[:, start] > 0):
        # Every depth returns to `start` in one step: one closed class, so π(I − P) = 0, Σπ = 1 is regular.
        system = (np.eye(size) - trans).T
        system[-1, :] = 1.0
        rhs = np.zeros(size)
        rhs[-1] = 1.0
        return np.clip(np.linalg.solve(system, rhs), 0.0, None)
    # Degenerate tables (a row of `a` fully covered by the tree): Cesàro limit from `start`, via powers
    # of the lazy chain (same limit, aperiodic), renormalised so rounding cannot drift.
    lazy = (trans + np.eye(size)) / 2
    for _ in range(64):
        lazy = lazy @ lazy
        lazy /= lazy.sum(axis=1, keepdims=True)
    return np.asarray(lazy[start])


def _tau(trans: np.ndarray, f: np.ndarray, root_slots: int) -> tuple[float, np.ndarray]:
    pi = _long_run_depths(trans, root_slots)
    return 1.0 + float(pi @ f), pi


def expected_tau(acc: Accuracy, spec: TreeSpec) -> float:
    """Expected τ (tokens per forward pass, bonus included) of ``spec`` under the table ``acc``."""
    acc.expected_for(spec.num_prompt_tokens)
    n = spec.num_prompt_tokens
    trans = np.zeros((n + 1, n + 1))  # [N + 1, N + 1]: depth → next depth
    f = np.zeros(n + 1)  # [N + 1]: expected accepted candidates at each depth
    trans[0, spec.root_slots] = 1.0
    for depth in range(1, n + 1):
        nodes = spec.tree(depth)
        paths = [node.path for node in nodes]
        probs = [acc.path_prob(path) for path in paths]
        root_last = max(0.0, 1.0 - sum(p for path, p in zip(paths, probs, strict=True) if len(path) == 1))
        trans[depth] = _transition_row(
            last_accepted_probs(paths, probs), [node.slots for node in nodes], root_last, spec.root_slots, n
        )
        f[depth] = sum(probs)
    return _tau(trans, f, spec.root_slots)[0]


def simulate_tau(acc: Accuracy, spec: TreeSpec, steps: int, seed: int = 0) -> float:
    """Monte-Carlo mean τ of the dynamic-tree process, as an independent check of ``expected_tau``.

    Each step draws, per distance, an independent true rank r_i ~ a[i] (−1 = not in the top-K), accepts
    the longest tree path that matches them, and moves to the depth of the last accepted node.
    """
    acc.expected_for(spec.num_prompt_tokens)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    rng = np.random.default_rng(seed)
    n, k = acc.num_prompt_tokens, acc.top_k
    outcomes = np.arange(-1, k)  # -1 = miss
    draws = np.empty((steps, n), dtype=np.int64)  # [steps, N]
    for i, row in enumerate(acc.rank_probs):
        probs = np.array([max(0.0, 1.0 - sum(row)), *row])
        draws[:, i] = rng.choice(outcomes, size=steps, p=probs / probs.sum())
    trees: list[dict[RankPath, int]] = [
        {node.path: node.slots for node in spec.tree(d)} for d in range(n + 1)
    ]
    depth, total = spec.root_slots, 0
    for ranks in draws.tolist():
        tree = trees[depth]
        node: RankPath = ()
        for i in range(depth):
            child = (*node, ranks[i])
            if child not in tree:
                break
            node = child
        total += len(node) + 1
        depth = tree[node] if node else spec.root_slots
    return total / steps


# ---- the search ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Ranked:
    """The best paths of one depth in acceptance order: the best tree of size T is the first T."""

    paths: tuple[RankPath, ...]
    probs: tuple[float, ...]
    parents: tuple[int, ...]  # index of each path's parent, -1 for depth-1 nodes
    cum: tuple[float, ...]  # cum[T] = f(d, T), cum[0] = 0

    @classmethod
    def of(cls, scored: list[ScoredPath]) -> _Ranked:
        index = {s.path: i for i, s in enumerate(scored)}
        cum = [0.0]
        for s in scored:
            cum.append(cum[-1] + s.prob)
        return cls(
            paths=tuple(s.path for s in scored),
            probs=tuple(s.prob for s in scored),
            parents=tuple(index[s.path[:-1]] if len(s.path) > 1 else -1 for s in scored),
            cum=tuple(cum),
        )

    def last_probs(self, size: int) -> tuple[list[float], float]:
        """(q of each of the first ``size`` nodes, probability that nothing is accepted)."""
        q = list(self.probs[:size])
        root_last = 1.0
        for j in range(size):
            parent = self.parents[j]
            if parent >= 0:
                q[parent] -= self.probs[j]
            else:
                root_last -= self.probs[j]
        return [max(0.0, x) for x in q], max(0.0, root_last)


@dataclass
class _Choice:
    size: int
    slots: list[int]
    row: np.ndarray  # [N + 1]


def _choose(ranked: _Ranked, size: int, f: np.ndarray, slot_budget: int, root_slots: int) -> _Choice:
    q, root_last = ranked.last_probs(size)
    slots = allocate_slots(q, f.tolist(), slot_budget)
    return _Choice(size, slots, _transition_row(q, slots, root_last, root_slots, len(f) - 1))


def _bias(trans: np.ndarray, f: np.ndarray, gain: float, root_slots: int) -> np.ndarray:
    """Relative value h of starting at each depth: h = f − g + P h, pinned by h[root_slots] = 0. [N + 1]"""
    system = np.eye(len(f)) - trans
    rhs = f - gain
    system[root_slots] = 0.0
    system[root_slots, root_slots] = 1.0
    rhs[root_slots] = 0.0
    return np.asarray(np.linalg.lstsq(system, rhs, rcond=None)[0])


def _search(ranked: list[_Ranked], budget: int, n: int) -> tuple[list[_Choice], float, np.ndarray]:
    """Policy iteration over the tree size of each depth; see the module docstring."""
    root_slots = n
    base = 1 + root_slots  # the root and its slots are in every step
    f = np.array([0.0] + [r.cum[1] for r in ranked])  # [N + 1]
    trans = np.zeros((n + 1, n + 1))  # [N + 1, N + 1]
    trans[0, root_slots] = 1.0
    choices = [_choose(r, 1, f, budget - base - 1, root_slots) for r in ranked]
    trans[1:] = [choice.row for choice in choices]
    tau, pi = _tau(trans, f, root_slots)
    for round_ in range(_MAX_ROUNDS):
        h = _bias(trans, f, tau - 1.0, root_slots)
        new_choices = []
        for d, ranks in enumerate(ranked, start=1):
            f_try = f.copy()
            best: tuple[float, _Choice] | None = None
            for size in range(1, min(budget - base, len(ranks.paths)) + 1):
                f_try[d] = ranks.cum[size]  # the candidate's f does not depend on its slots
                choice = _choose(ranks, size, f_try, budget - base - size, root_slots)
                score = ranks.cum[size] + float(choice.row @ h)
                if best is None or score > best[0] + 1e-12:
                    best = (score, choice)
            assert best is not None
            new_choices.append(best[1])
        new_f = np.array([0.0] + [r.cum[c.size] for r, c in zip(ranked, new_choices, strict=True)])
        new_trans = trans.copy()
        new_trans[1:] = [choice.row for choice in new_choices]
        new_tau, new_pi = _tau(new_trans, new_f, root_slots)
        logger.debug("tree search round %d: expected tau %.5f -> %.5f", round_, tau, new_tau)
        if new_tau <= tau + 1e-12:
            break
        choices, trans, f, tau, pi = new_choices, new_trans, new_f, new_tau, new_pi
    return choices, tau, pi


def build_tree(
    acc: Accuracy,
    budget: int,
    top_k: int | Sequence[int] | None = None,
    num_prompt_tokens: int | None = None,
) -> TreeSpec:
    """The tree that maximises expected τ with at most ``budget`` inputs per step at every depth.

    ``top_k`` (one int, or one per prompt token) caps the ranks the tree may use and becomes the spec's
    top_k; by default the spec's top_k is the highest rank used + 1. ``num_prompt_tokens``, if given,
    must match the table's (a tree for another N cannot be built from it).
    """
    if num_prompt_tokens is not None:
        acc.expected_for(num_prompt_tokens)
    n = acc.num_prompt_tokens
    if budget < min_budget(n):
        raise ValueError(
            f"budget {budget} is too small: with {n} prompt tokens a step needs at least {min_budget(n)} "
            f"inputs (the root, its {n} prompt slots and one candidate); use a budget >= {min_budget(n)}"
        )
    limits = _rank_limits(acc, top_k)
    max_nodes = budget - 1 - n
    ranked = [_Ranked.of(best_paths(acc, d, max_nodes, limits)) for d in range(1, n + 1)]
    choices, tau, pi = _search(ranked, budget, n)
    trees: list[tuple[TreeNode, ...]] = []
    for ranks, choice in zip(ranked, choices, strict=True):
        nodes = [TreeNode(ranks.paths[j], choice.slots[j]) for j in range(choice.size)]
        trees.append(tuple(sorted(nodes, key=lambda node: (len(node.path), node.path))))
    if top_k is None:
        used = [1] * n  # the spec needs top_k >= 1 even for a prompt token no path reaches
        for node in itertools.chain.from_iterable(trees):
            for i, rank in enumerate(node.path):
                used[i] = max(used[i], rank + 1)
        spec_top_k = tuple(used)
    else:
        spec_top_k = (top_k,) * n if isinstance(top_k, int) else tuple(top_k)
    f_by_depth = [ranks.cum[choice.size] for ranks, choice in zip(ranked, choices, strict=True)]
    spec = TreeSpec(
        num_prompt_tokens=n,
        top_k=spec_top_k,
        trees=tuple(trees),
        root_slots=n,
        meta={
            "expected_tau": round(tau, 6),
            "budget": budget,
            "expected_accepted": [round(x, 6) for x in f_by_depth],  # f(d, T_d) for d = 1..N
            "depth_share": [round(float(x), 6) for x in pi],  # π_d for d = 0..N
            "base_model": acc.base_model,
            "accuracy_source": acc.source,
        },
    )
    logger.info(
        "built tree for budget %d: expected tau %.4f, input sizes %s",
        budget,
        tau,
        [spec.input_size(d) for d in range(1, n + 1)],
    )
    return spec


def build_tree_family(
    acc: Accuracy,
    budgets: Sequence[int],
    top_k: int | Sequence[int] | None = None,
    num_prompt_tokens: int | None = None,
) -> list[TreeSpec]:
    """One tree per budget, in the given order (for the hardware-aware choice of METHOD §5)."""
    return [build_tree(acc, budget, top_k, num_prompt_tokens) for budget in budgets]
