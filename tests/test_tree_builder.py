"""Tree builder (METHOD §4): accuracy tables → trees; expected τ checked against a Monte-Carlo run.

Pure and fast: no model, no torch tensors. Simulations use a fixed seed.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import time
from pathlib import Path

import pytest

from ppdecode.tree.builder import (
    Accuracy,
    allocate_slots,
    best_paths,
    build_tree,
    build_tree_family,
    expected_accepted,
    expected_tau,
    last_accepted_probs,
    min_budget,
    simulate_tau,
)
from ppdecode.tree.spec import TreeNode, TreeSpec

# Held-out rank probabilities of a small model with deep prompt tokens: top-10 ≈ 0.71 / 0.52 / 0.44.
REALISTIC = [
    [0.30, 0.12, 0.07, 0.05, 0.04, 0.035, 0.03, 0.025, 0.02, 0.02],
    [0.15, 0.08, 0.06, 0.05, 0.045, 0.04, 0.035, 0.025, 0.02, 0.015],
    [0.11, 0.07, 0.05, 0.045, 0.04, 0.035, 0.03, 0.025, 0.02, 0.015],
]
# A stronger model (Vicuna-7B-like top-1 0.48 / 0.26 / 0.16) and a two-token, five-rank table.
STRONG = [
    [0.48, 0.14, 0.07, 0.045, 0.035, 0.025, 0.02, 0.015, 0.01, 0.01],
    [0.26, 0.11, 0.06, 0.04, 0.03, 0.025, 0.02, 0.015, 0.01, 0.01],
    [0.16, 0.08, 0.05, 0.035, 0.03, 0.025, 0.02, 0.015, 0.01, 0.01],
]
SHORT = [[0.35, 0.15, 0.08, 0.05, 0.03], [0.2, 0.1, 0.06, 0.04, 0.03]]


def table(rows: list[list[float]], **extra: object) -> Accuracy:
    return Accuracy.from_dict(
        {"num_prompt_tokens": len(rows), "top_k": len(rows[0]), "rank_probs": rows, **extra}
    )


def all_slots_tree(acc: Accuracy, budget: int) -> TreeSpec:
    """Baseline (a): every node keeps all N slots, so fewer nodes fit."""
    n = acc.num_prompt_tokens
    size = (budget - 1 - n) // (n + 1)
    trees = tuple(tuple(TreeNode(s.path, n) for s in best_paths(acc, d, size)) for d in range(1, n + 1))
    return TreeSpec(n, (acc.top_k,) * n, trees)


def random_allocation(spec: TreeSpec, seed: int) -> TreeSpec:
    """Baseline (b): the same nodes and the same number of slots per depth, spread at random."""
    rng = random.Random(seed)
    n = spec.num_prompt_tokens
    trees = []
    for nodes in spec.trees:
        slots = [0] * len(nodes)
        for i in rng.sample([i for i in range(len(nodes)) for _ in range(n)], sum(x.slots for x in nodes)):
            slots[i] += 1
        trees.append(tuple(TreeNode(node.path, s) for node, s in zip(nodes, slots, strict=True)))
    return TreeSpec(n, spec.top_k, tuple(trees))


# ---- expected τ against simulation ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rows", "budget"),
    [
        (REALISTIC, 5),
        (REALISTIC, 8),
        (REALISTIC, 16),
        (REALISTIC, 32),
        (STRONG, 12),
        (STRONG, 48),
        (SHORT, 10),
    ],
)
def test_expected_tau_matches_simulation(rows: list[list[float]], budget: int) -> None:
    acc = table(rows)
    spec = build_tree(acc, budget)
    tau = spec.meta["expected_tau"]
    assert tau == pytest.approx(expected_tau(acc, spec), abs=1e-5)
    assert simulate_tau(acc, spec, steps=60_000, seed=budget) == pytest.approx(tau, rel=0.02)


def test_expected_tau_by_hand() -> None:
    # N = 1, a = [0.5, 0.2]. Budget 3: node (0) without slots; depth 1 → (p 0.5) depth 0 → depth 1,
    # so π = (1/3, 2/3) and τ = 1 + 2/3 · 0.5. Budget 4: give (0) its slot: always depth 1, τ = 1.5.
    acc = table([[0.5, 0.2]])
    small, larger = build_tree(acc, 3), build_tree(acc, 4)
    assert small.trees == ((TreeNode((0,), 0),),)
    assert small.meta["expected_tau"] == pytest.approx(4 / 3, abs=1e-6)
    assert small.meta["depth_share"] == pytest.approx([1 / 3, 2 / 3], abs=1e-6)
    assert larger.trees == ((TreeNode((0,), 1),),)
    assert larger.meta["expected_tau"] == pytest.approx(1.5, abs=1e-6)


def test_chain_that_never_returns_to_the_root() -> None:
    # Row 0 sums to 1 and both ranks carry one slot: after the first step the process stays at depth 1.
    acc = table([[0.6, 0.4], [0.5, 0.1]])
    tree1 = (TreeNode((0,), 1), TreeNode((1,), 1))
    spec = TreeSpec(2, (2, 2), (tree1, (TreeNode((0,), 1), TreeNode((1,), 1), TreeNode((0, 0), 0))))
    assert expected_tau(acc, spec) == pytest.approx(2.0, abs=1e-9)
    assert simulate_tau(acc, spec, steps=5_000, seed=0) == pytest.approx(2.0, abs=1e-3)


# ---- the builder beats simpler allocations ---------------------------------------------------------


@pytest.mark.parametrize("budget", [8, 12, 16, 24, 32, 48])
def test_pruned_tree_beats_all_slots_tree(budget: int) -> None:
    acc = table(REALISTIC)
    built, baseline = build_tree(acc, budget), all_slots_tree(acc, budget)
    assert all(baseline.input_size(d) <= budget for d in range(4))
    assert built.meta["expected_tau"] > expected_tau(acc, baseline) + 0.01


@pytest.mark.parametrize("budget", [12, 16, 24, 32, 48])
def test_pruned_tree_beats_random_allocation(budget: int) -> None:
    acc = table(REALISTIC)
    built = build_tree(acc, budget)
    randoms = [expected_tau(acc, random_allocation(built, seed)) for seed in range(20)]
    assert all(built.input_size(d) == random_allocation(built, 0).input_size(d) for d in range(4))
    assert built.meta["expected_tau"] >= max(randoms) - 1e-9
    assert built.meta["expected_tau"] > sum(randoms) / len(randoms) + 0.01


def test_larger_budget_never_lowers_tau() -> None:
    budgets = [5, 8, 12, 16, 24, 32, 48, 64]
    specs = build_tree_family(table(REALISTIC), budgets)
    assert [spec.meta["budget"] for spec in specs] == budgets
    taus = [spec.meta["expected_tau"] for spec in specs]
    assert taus == sorted(taus)


# ---- the built spec --------------------------------------------------------------------------------


@pytest.mark.parametrize("budget", [5, 9, 16, 33, 64])
def test_built_tree_is_valid_and_fits(budget: int, tmp_path: Path) -> None:
    acc = table(REALISTIC, base_model="tiny")
    spec = build_tree(acc, budget, num_prompt_tokens=3)
    assert all(spec.input_size(d) <= budget for d in range(4))
    assert spec.root_slots == 3
    used = [
        max((n.path[i] + 1 for t in spec.trees for n in t if len(n.path) > i), default=1) for i in range(3)
    ]
    assert list(spec.top_k) == used
    assert set(spec.meta) >= {"expected_tau", "budget", "expected_accepted", "depth_share"}
    assert len(spec.meta["expected_accepted"]) == 3 and spec.meta["base_model"] == "tiny"
    spec.save(tmp_path / "tree.json")
    assert TreeSpec.load(tmp_path / "tree.json") == spec  # validated again on load


def test_given_top_k_caps_ranks() -> None:
    spec = build_tree(table(REALISTIC), 48, top_k=3)
    assert spec.top_k == (3, 3, 3)
    assert all(rank < 3 for nodes in spec.trees for node in nodes for rank in node.path)
    assert build_tree(table(REALISTIC), 48, top_k=[10, 4, 2]).top_k == (10, 4, 2)
    with pytest.raises(ValueError, match="top_k"):
        build_tree(table(REALISTIC), 48, top_k=[10, 4])


def test_build_is_fast() -> None:
    acc = table(STRONG)
    start = time.perf_counter()
    build_tree(acc, 64)
    assert time.perf_counter() - start < 1.0


# ---- paths and slots -------------------------------------------------------------------------------


def test_best_paths_match_brute_force() -> None:
    acc = table(SHORT)
    everything = [(r,) for r in range(5)] + list(itertools.product(range(5), range(5)))
    ranked = sorted(everything, key=lambda path: (-acc.path_prob(path), path))
    got = best_paths(acc, 2, 12)
    assert [s.path for s in got] == ranked[:12]
    assert [s.prob for s in got] == pytest.approx([acc.path_prob(path) for path in ranked[:12]])
    assert expected_accepted(acc, 2, 12) == pytest.approx(sum(acc.path_prob(p) for p in ranked[:12]))
    assert len(best_paths(acc, 1, 100)) == 5  # only five paths of length 1 exist
    assert best_paths(acc, 0, 3) == []


def test_best_paths_are_prefix_closed_with_deterministic_ties() -> None:
    acc = table([[0.2, 0.2, 0.2], [0.5, 0.5, 0.0]])
    for size in range(1, 13):
        paths = {s.path for s in best_paths(acc, 2, size)}
        assert all(path[:-1] in paths for path in paths if len(path) > 1)
    assert [s.path for s in best_paths(acc, 2, 6)] == [(0,), (1,), (2,), (0, 0), (0, 1), (1, 0)]


@pytest.mark.parametrize(
    ("q", "f", "slot_budget", "expected"),
    [
        ([0.5, 0.2], [0.0, 0.3, 0.5], 4, [2, 2]),  # fits: everyone keeps N
        ([0.5, 0.2], [0.0, 0.3, 0.5], 2, [2, 0]),  # the rarely-last node gives up its slots first
        ([0.5, 0.2], [0.0, 0.3, 0.5], 3, [2, 1]),  # 0.2 · (0.5 − 0.3) is the cheapest loss
        ([0.3, 0.3], [0.0, 0.4], 1, [1, 0]),  # a tie goes to the later node
        ([0.3, 0.3], [0.0, 0.4], 0, [0, 0]),
    ],
)
def test_allocate_slots(q: list[float], f: list[float], slot_budget: int, expected: list[int]) -> None:
    assert allocate_slots(q, f, slot_budget) == expected


def test_last_accepted_probs() -> None:
    q = last_accepted_probs([(0,), (1,), (0, 0), (0, 1)], [0.5, 0.2, 0.25, 0.1])
    assert q == pytest.approx([0.15, 0.2, 0.25, 0.1])


# ---- validation ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"num_prompt_tokens": 4}, "has 3 rows but num_prompt_tokens is 4"),
        ({"rank_probs": [[0.3, -0.1], [0.1, 0.1], [0.1, 0.1]], "top_k": 2}, r"outside \[0, 1\]"),
        ({"rank_probs": [[0.3, 1.5], [0.1, 0.1], [0.1, 0.1]], "top_k": 2}, r"outside \[0, 1\]"),
        ({"rank_probs": [[0.3, math.nan], [0.1, 0.1], [0.1, 0.1]], "top_k": 2}, r"outside \[0, 1\]"),
        ({"rank_probs": [[0.6, 0.5], [0.1, 0.1], [0.1, 0.1]], "top_k": 2}, "sums to 1.1"),
        ({"top_k": 0}, "top_k must be an integer >= 1"),
        ({"top_k": 4}, "expected top_k = 4"),
        ({"rank_probs": "0.3"}, "list of lists"),
    ],
)
def test_accuracy_validation(change: dict[str, object], message: str, tmp_path: Path) -> None:
    data = {"num_prompt_tokens": 3, "top_k": 10, "rank_probs": REALISTIC, **change}
    path = tmp_path / "acc.json"
    path.write_text(json.dumps(data))  # json writes NaN as a bare NaN
    with pytest.raises(ValueError, match=message) as err:
        Accuracy.load(path)
    assert str(path) in str(err.value)


def test_accuracy_load_full_file(tmp_path: Path) -> None:
    cumulative = [list(itertools.accumulate(row)) for row in REALISTIC]
    data = {
        "num_prompt_tokens": 3,
        "top_k": 10,
        "rank_probs": REALISTIC,
        "topk_accuracy": cumulative,
        "base_model": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "num_samples": 2048,
    }
    (tmp_path / "acc.json").write_text(json.dumps(data))
    acc = Accuracy.load(tmp_path / "acc.json")
    assert acc.top_k == 10 and acc.num_samples == 2048 and acc.base_model.startswith("HuggingFaceTB")
    assert acc.path_prob((0, 1)) == pytest.approx(0.30 * 0.08)
    with pytest.raises(ValueError, match="does not exist"):
        Accuracy.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        Accuracy.load(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text(json.dumps({"top_k": 10}))
    with pytest.raises(ValueError, match="missing key"):
        Accuracy.load(tmp_path / "other.json")


def test_wrong_number_of_prompt_tokens_is_refused() -> None:
    acc = table(REALISTIC)
    assert acc.expected_for(3) is acc
    with pytest.raises(ValueError, match="measured for 3 prompt tokens, but the tree is requested for 4"):
        build_tree(acc, 16, num_prompt_tokens=4)
    with pytest.raises(ValueError, match="measured for 2 prompt tokens"):
        expected_tau(table(SHORT), build_tree(acc, 16))


def test_budget_too_small() -> None:
    assert min_budget(3) == 5
    with pytest.raises(ValueError, match="at least 5 inputs"):
        build_tree(table(REALISTIC), 4)
    assert build_tree(table(REALISTIC), 5).trees[0] == (TreeNode((0,), 0),)
